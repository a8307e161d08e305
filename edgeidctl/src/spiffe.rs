//! `edgeidctl spiffe`: what `spire-agent api` and `spire-agent healthcheck`
//! do, against any SPIFFE Workload API socket (edgeid's or SPIRE's): fetch
//! an X.509-SVID or JWT-SVID (and write them as files), validate a JWT-SVID,
//! watch rotations, check health. A failure exits 1, as spire-agent's do.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use edgeid_workloadapi::spiffe::client;
use edgeid_workloadapi::spiffe::proto::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509svid, X509svidRequest,
    X509svidResponse,
};
use serde_json::{json, Value};

use edgeid_workloadapi::spiffe::x509::{certificates, certificates_pem};
use time::OffsetDateTime;

/// Where the socket is unless `--socket` or `SPIFFE_ENDPOINT_SOCKET` say.
const DEFAULT_SOCKET: &str = "unix:///run/edgeid/spiffe.sock";

/// Options every `spiffe` command takes.
#[derive(clap::Args)]
pub struct SpiffeArgs {
    /// The Workload API socket (`unix:///path` or a path); default
    /// `$SPIFFE_ENDPOINT_SOCKET`, else /run/edgeid/spiffe.sock.
    #[arg(long, global = true)]
    socket: Option<String>,
    /// `text` or `json`.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    output: String,
    /// Seconds to wait for each answer (0: no limit), as spire-agent's `-timeout 5s`.
    #[arg(long, global = true, default_value_t = 5)]
    timeout: u64,
}

/// `edgeidctl spiffe ...`
#[derive(clap::Subcommand)]
pub enum SpiffeAction {
    /// Fetch an SVID (and the bundles).
    Fetch {
        #[command(subcommand)]
        what: Fetch,
    },
    /// Validate a JWT-SVID through the Workload API.
    Validate {
        #[command(subcommand)]
        what: Validate,
    },
    /// Print every X.509-SVID update as it arrives (serial, not-after, the
    /// renewal to expect), until interrupted or the stream ends.
    Watch,
    /// Keep files of the caller's X.509-SVID up to date for programs that
    /// read only files, and tell them on every rotation (spiffe-helper).
    Helper {
        /// The helper's config (TOML: socket, [[consumer]] tables).
        #[arg(long)]
        config: PathBuf,
        /// Write the files once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Exit 0 when the socket serves this caller an X.509-SVID in time.
    Healthcheck {
        /// Say nothing on success.
        #[arg(long)]
        silent: bool,
    },
}

#[derive(clap::Subcommand)]
pub enum Fetch {
    /// The caller's X.509-SVIDs, their keys and the bundles.
    X509 {
        /// Write `svid.N.pem` (chain, 0644), `svid.N.key` (PKCS#8, 0600),
        /// `bundle.N.pem` (0644) and `federated_bundle.N.M.pem` into this
        /// directory, each atomically.
        #[arg(long)]
        write: Option<PathBuf>,
        /// Do not print the SVIDs (what is written is still said).
        #[arg(long)]
        silent: bool,
    },
    /// A JWT-SVID for the audiences, and the JWT bundles.
    Jwt {
        /// An audience; repeat, or separate with commas, for more.
        #[arg(long = "audience", required = true)]
        audiences: Vec<String>,
        /// The SPIFFE ID asked for (default: the caller's).
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Write `jwt_svid.N.token` (0600) and `jwt_bundle.N.json` (0644) here.
        #[arg(long)]
        write: Option<PathBuf>,
    },
}

#[derive(clap::Subcommand)]
pub enum Validate {
    /// A JWT-SVID, for an audience.
    Jwt {
        /// The audience it must be for.
        #[arg(long)]
        audience: String,
        /// The token (or as the argument).
        #[arg(long = "svid")]
        svid: Option<String>,
        /// The token.
        token: Option<String>,
    },
}

/// `edgeidctl spiffe ...`
pub async fn run(args: &SpiffeArgs, action: &SpiffeAction) -> Result<(), String> {
    let socket = args
        .socket
        .clone()
        .or_else(|| std::env::var("SPIFFE_ENDPOINT_SOCKET").ok())
        .unwrap_or_else(|| DEFAULT_SOCKET.to_owned());
    let timeout = match args.timeout {
        0 => Duration::MAX,
        secs => Duration::from_secs(secs),
    };
    let json = args.output == "json";
    // `--timeout` bounds the connection too: a socket whose server accepts
    // and never answers the HTTP/2 handshake would otherwise hang a script.
    let connect = || async {
        tokio::time::timeout(timeout, client::connect(&socket))
            .await
            .map_err(|_| timed_out(timeout))?
            .map_err(|e| {
                format!(
                    "cannot reach the Workload API at {socket}: {}",
                    edgeid_common::client::error_chain(&e)
                )
            })
    };
    match action {
        SpiffeAction::Fetch {
            what: Fetch::X509 { write, silent },
        } => {
            let started = Instant::now();
            let first = first_x509(connect().await?, timeout).await?;
            if json {
                // The files too, without the lines that would break the JSON.
                if let Some(dir) = write {
                    write_x509(dir, &first, false)?;
                }
                if !silent {
                    outln!("{}", x509_json(&first));
                }
                return Ok(());
            }
            if !silent {
                print_update(&first, started.elapsed())?;
            }
            if let Some(dir) = write {
                write_x509(dir, &first, true)?;
            }
            Ok(())
        }
        SpiffeAction::Fetch {
            what:
                Fetch::Jwt {
                    audiences,
                    spiffe_id,
                    write,
                },
        } => {
            let mut c = connect().await?;
            let svids = tokio::time::timeout(
                timeout,
                c.fetch_jwtsvid(JwtsvidRequest {
                    audience: audiences
                        .iter()
                        .flat_map(|a| a.split(','))
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    spiffe_id: spiffe_id.clone().unwrap_or_default(),
                }),
            )
            .await
            .map_err(|_| timed_out(timeout))?
            .map_err(|s| rpc_error("FetchJWTSVID", &s))?
            .into_inner()
            .svids;
            let mut stream = c
                .fetch_jwt_bundles(JwtBundlesRequest {})
                .await
                .map_err(|s| rpc_error("FetchJWTBundles", &s))?
                .into_inner();
            let bundles = tokio::time::timeout(timeout, stream.message())
                .await
                .map_err(|_| timed_out(timeout))?
                .map_err(|s| rpc_error("FetchJWTBundles", &s))?
                .map(|b| b.bundles)
                .unwrap_or_default();
            if let Some(dir) = write {
                for (i, svid) in svids.iter().enumerate() {
                    put(
                        dir,
                        &format!("jwt_svid.{i}.token"),
                        svid.svid.as_bytes(),
                        0o600,
                    )?;
                }
                for (i, set) in bundles.values().enumerate() {
                    put(dir, &format!("jwt_bundle.{i}.json"), set, 0o644)?;
                }
            }
            if json {
                // spire-agent's shape: the two responses, in an array.
                let svids: Vec<Value> = svids
                    .iter()
                    .map(|s| json!({ "hint": s.hint, "spiffe_id": s.spiffe_id, "svid": s.svid }))
                    .collect();
                let bundles: serde_json::Map<String, Value> = bundles
                    .iter()
                    .map(|(td, set)| (td.clone(), Value::String(STANDARD.encode(set))))
                    .collect();
                outln!("{}", json!([{ "svids": svids }, { "bundles": bundles }]));
            } else {
                for svid in &svids {
                    outln!("token({}):\n\t{}", svid.spiffe_id, svid.svid);
                    if !svid.hint.is_empty() {
                        outln!("hint({}):\n\t{}", svid.spiffe_id, svid.hint);
                    }
                }
                for (td, set) in &bundles {
                    outln!("bundle({td}):\n\t{}", String::from_utf8_lossy(set));
                }
            }
            Ok(())
        }
        SpiffeAction::Validate {
            what:
                Validate::Jwt {
                    audience,
                    svid,
                    token,
                },
        } => {
            let token = svid
                .clone()
                .or_else(|| token.clone())
                .ok_or("give the token: validate jwt --audience A TOKEN (or --svid TOKEN)")?;
            let answer = tokio::time::timeout(
                timeout,
                connect().await?.validate_jwtsvid(ValidateJwtsvidRequest {
                    audience: audience.clone(),
                    svid: token.trim().to_owned(),
                }),
            )
            .await
            .map_err(|_| timed_out(timeout))?
            .map_err(|s| {
                if s.code() == tonic::Code::InvalidArgument {
                    format!("SVID is not valid: {}", s.message())
                } else {
                    format!(
                        "unable to validate JWT SVID: {}",
                        rpc_error("ValidateJWTSVID", &s)
                    )
                }
            })?
            .into_inner();
            let claims = answer
                .claims
                .map(|c| struct_json(&c))
                .unwrap_or(Value::Null);
            if json {
                outln!(
                    "{}",
                    json!({ "claims": claims, "spiffe_id": answer.spiffe_id })
                );
            } else {
                outln!(
                    "SVID is valid.\nSPIFFE ID : {}\nClaims    : {claims}",
                    answer.spiffe_id
                );
            }
            Ok(())
        }
        SpiffeAction::Watch => watch(connect().await?, json).await,
        SpiffeAction::Helper { config, once } => {
            crate::spiffe_helper::run(config, args.socket.as_deref(), *once).await
        }
        SpiffeAction::Healthcheck { silent } => {
            let healthy = async { first_x509(connect().await?, timeout).await };
            match healthy.await {
                Ok(_) => {
                    if !silent {
                        outln!("Workload API is healthy: it serves this caller an SVID.");
                    }
                    Ok(())
                }
                Err(e) => Err(format!("Workload API is unhealthy: {e}")),
            }
        }
    }
}

/// The first X509SVIDResponse of a fresh stream.
async fn first_x509(mut c: client::Client, timeout: Duration) -> Result<X509svidResponse, String> {
    let first = async {
        let mut stream = c
            .fetch_x509svid(X509svidRequest {})
            .await
            .map_err(|s| rpc_error("FetchX509SVID", &s))?
            .into_inner();
        stream
            .message()
            .await
            .map_err(|s| rpc_error("FetchX509SVID", &s))?
            .ok_or_else(|| "the Workload API ended the stream before sending an SVID".to_owned())
    };
    let first = tokio::time::timeout(timeout, first)
        .await
        .map_err(|_| timed_out(timeout))??;
    if first.svids.is_empty() {
        return Err("the Workload API sent no SVID".into());
    }
    Ok(first)
}

/// Every update of the X.509 stream, as it comes.
async fn watch(mut c: client::Client, json: bool) -> Result<(), String> {
    let mut stream = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .map_err(|s| rpc_error("FetchX509SVID", &s))?
        .into_inner();
    let mut last = Instant::now();
    loop {
        let Some(update) = stream
            .message()
            .await
            .map_err(|s| rpc_error("FetchX509SVID", &s))?
        else {
            return Err("the Workload API ended the stream".into());
        };
        if json {
            for svid in &update.svids {
                let leaf = Leaf::of(svid)?;
                outln!(
                    "{}",
                    json!({
                        "spiffe_id": svid.spiffe_id,
                        "serial": leaf.serial,
                        "not_after": shown(leaf.not_after),
                        "expected_renewal": shown(leaf.expected_renewal()),
                        "since_last_update_ms": last.elapsed().as_millis(),
                    })
                );
            }
        } else {
            print_update(&update, last.elapsed())?;
            for svid in &update.svids {
                let leaf = Leaf::of(svid)?;
                let renews = leaf.expected_renewal();
                let until = renews - OffsetDateTime::now_utc();
                outln!(
                    "Serial:\t\t\t{}\nRenewal expected:\t{} (in about {}s)\n",
                    leaf.serial,
                    shown(renews),
                    until.whole_seconds().max(0)
                );
            }
        }
        last = Instant::now();
    }
}

/// What a watcher shows of an SVID's leaf certificate.
struct Leaf {
    serial: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl Leaf {
    fn of(svid: &X509svid) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(&svid.x509_svid)
            .map_err(|e| format!("the SVID for {} is not a certificate: {e}", svid.spiffe_id))?;
        Ok(Self {
            serial: cert.raw_serial_as_string(),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
        })
    }

    /// Half of its lifetime, where edgeid (`renewal_threshold_percent`
    /// 50, ±10%) and SPIRE's agent renew by default; the server decides.
    fn expected_renewal(&self) -> OffsetDateTime {
        self.not_before + (self.not_after - self.not_before) / 2
    }
}

/// An X.509 update as `spire-agent api fetch x509` prints it.
fn print_update(update: &X509svidResponse, after: Duration) -> Result<(), String> {
    let n = update.svids.len();
    outln!(
        "Received {n} svid{} after {after:?}",
        if n == 1 { "" } else { "s" }
    );
    let mut federated: Vec<_> = update.federated_bundles.iter().collect();
    federated.sort();
    for svid in &update.svids {
        let leaf = Leaf::of(svid)?;
        outln!();
        outln!("SPIFFE ID:\t\t{}", svid.spiffe_id);
        if !svid.hint.is_empty() {
            outln!("Hint:\t\t\t{}", svid.hint);
        }
        outln!("SVID Valid After:\t{}", shown(leaf.not_before));
        outln!("SVID Valid Until:\t{}", shown(leaf.not_after));
        let chain = certificates(&svid.x509_svid)?;
        for (i, cert) in chain.iter().skip(1).enumerate() {
            validity(&format!("Intermediate #{}", i + 1), cert)?;
        }
        for (i, ca) in certificates(&svid.bundle)?.iter().enumerate() {
            validity(&format!("CA #{}", i + 1), ca)?;
        }
        for (td, bundle) in &federated {
            let name = td.strip_prefix("spiffe://").unwrap_or(td);
            for (i, ca) in certificates(bundle)?.iter().enumerate() {
                validity(&format!("[{name}] CA #{}", i + 1), ca)?;
            }
        }
    }
    outln!();
    Ok(())
}

fn validity(what: &str, der: &[u8]) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("{what} is not a certificate: {e}"))?;
    let v = cert.validity();
    outln!("{what} Valid After:\t{}", shown(v.not_before.to_datetime()));
    outln!("{what} Valid Until:\t{}", shown(v.not_after.to_datetime()));
    Ok(())
}

/// `--write DIR` of `fetch x509`. The key is written before the chain, each
/// atomically: a reader that reads the chain, then the key, finds the new
/// chain's key already there (read the other way round, it may not).
/// Writes the SVIDs' files into `dir`; with `tell`, a line for each as
/// spire-agent prints them.
fn write_x509(dir: &Path, answer: &X509svidResponse, tell: bool) -> Result<(), String> {
    for (i, svid) in answer.svids.iter().enumerate() {
        let key = zeroize::Zeroizing::new(pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            svid.x509_svid_key.clone(),
        )));
        let say = |what: &str, name: &str| {
            if tell {
                outln!("Writing {what} #{i} to file {}.", dir.join(name).display());
            }
        };
        say("key", &format!("svid.{i}.key"));
        put(dir, &format!("svid.{i}.key"), key.as_bytes(), 0o600)?;
        say("SVID", &format!("svid.{i}.pem"));
        let chain = certificates_pem(&svid.x509_svid)?;
        put(dir, &format!("svid.{i}.pem"), chain.as_bytes(), 0o644)?;
        say("bundle", &format!("bundle.{i}.pem"));
        let bundle = certificates_pem(&svid.bundle)?;
        put(dir, &format!("bundle.{i}.pem"), bundle.as_bytes(), 0o644)?;
        let mut federated: Vec<_> = answer.federated_bundles.iter().collect();
        federated.sort();
        for (j, (td, bundle)) in federated.iter().enumerate() {
            let name = format!("federated_bundle.{i}.{j}.pem");
            if tell {
                outln!(
                    "Writing federated bundle #{j} for trust domain {td} to file {}.",
                    dir.join(&name).display()
                );
            }
            let pem = certificates_pem(bundle)?;
            put(dir, &name, pem.as_bytes(), 0o644)?;
        }
    }
    Ok(())
}

fn put(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), String> {
    let path = dir.join(name);
    edgeid_common::fs::write_atomic(&path, bytes, mode)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `fetch x509 --output json`: the response as protobuf's JSON mapping
/// has it (bytes base64).
fn x509_json(answer: &X509svidResponse) -> Value {
    let svids: Vec<Value> = answer
        .svids
        .iter()
        .map(|s| {
            json!({
                "spiffe_id": s.spiffe_id,
                "x509_svid": STANDARD.encode(&s.x509_svid),
                "x509_svid_key": STANDARD.encode(&s.x509_svid_key),
                "bundle": STANDARD.encode(&s.bundle),
                "hint": s.hint,
            })
        })
        .collect();
    let federated: serde_json::Map<String, Value> = answer
        .federated_bundles
        .iter()
        .map(|(td, b)| (td.clone(), Value::String(STANDARD.encode(b))))
        .collect();
    json!({ "crl": [], "federated_bundles": federated, "svids": svids })
}

/// A protobuf `Struct` as JSON.
fn struct_json(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect(),
    )
}

fn value_json(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        // JSON has no integers apart; claims such as exp are whole seconds.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => json!(*n as i64),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_json).collect()),
    }
}

/// A time as spire-agent prints it (Go's `2006-01-02 15:04:05 -0700 MST`, in UTC).
fn shown(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} +0000 UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn rpc_error(rpc: &str, status: &tonic::Status) -> String {
    format!("{rpc}: {:?}: {}", status.code(), status.message())
}

fn timed_out(after: Duration) -> String {
    format!("no answer from the Workload API within {after:?} (--timeout)")
}
