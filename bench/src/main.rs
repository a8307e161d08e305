//! `edgeid-bench keyd|pkcs11`: sign requests through keyd's socket from N
//! concurrent connections, next to the same operation done in-process with the
//! same library, so the cost of the daemon boundary is visible.
//!
//! - `keyd`: the software store, against aws-lc-rs in-process.
//! - `workload`: the workload API's sign of a running `edgeidctl dev`, beside
//!   keyd's HMAC with the same key and aws-lc-rs HMAC in-process.
//! - `spiffe`: the SPIFFE Workload API of a running `edgeidctl dev`: time to
//!   the first X.509-SVID on a fresh connection, FetchJWTSVID req/s.
//! - `load`: many connections (1000 by default) on the workload socket of a
//!   running `edgeidctl dev`, signing and asking for certificates for a
//!   set time: errors, latency percentiles, per-connection fairness, and the
//!   server's RSS before, during and after.
//! - `pkcs11`: a fresh SoftHSMv2 token (needs `softhsm2-util`), against raw
//!   cryptoki calls on the same token, one logged-in session per thread.
//!
//! Without `--socket`, it starts `edgeid-keyd` (from the same build directory)
//! on a temp dir as a separate process, and also reports keyd's RSS.

mod attest;
mod aziot;
mod count;
mod floor;
mod load;
mod pkcs11;
mod spiffe;
mod wire;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use edgeid_keyd::api::{KeyPairSpec, SignAlgorithm, SymmetricKeyType};
use edgeid_keyd::KeydClient;

#[derive(Parser)]
#[command(about = "Benchmarks edgeid daemons over their sockets against in-process baselines")]
struct Args {
    /// What to measure.
    #[arg(value_enum, default_value = "keyd")]
    target: Target,
    /// An already running keyd; by default one is started on a temp dir.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Concurrent connections (and in-process threads); repeat for several runs.
    #[arg(long = "concurrency", short = 'c', default_values_t = vec![1, 2, 16])]
    concurrency: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Operations to measure.
    #[arg(long = "op", value_enum, default_values_t = vec![Op::Ecdsa, Op::Hmac])]
    ops: Vec<Op>,
    /// `load`: connections held open at once.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// `load`: every Nth request of a connection asks for a server
    /// certificate (a new key and a CA signature); the others sign.
    #[arg(long, default_value_t = 20)]
    cert_every: u64,
    /// `trips`: how many requests.
    #[arg(long, default_value_t = 1000, hide = true)]
    requests: u64,
    /// `floor-server`: do the work with raw cryptoki on the bench token,
    /// through this PKCS#11 module.
    #[arg(long, hide = true)]
    pkcs11: Option<PathBuf>,
    /// `floor-server`: relay each request to the floor server on this
    /// socket instead of doing the work (the two-hop floor).
    #[arg(long, hide = true)]
    upstream: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Target {
    /// keyd on its software store.
    Keyd,
    /// keyd on a SoftHSMv2 token.
    Pkcs11,
    /// keyd on a swtpm.
    Tpm,
    /// keyd's TPM attestation on a swtpm: quote and certify, beside raw
    /// tss-esapi; opening a store whose master key is sealed to PCRs.
    Attest,
    /// The floor server alone (`--socket`, the first `--op`), which the
    /// `keyd` bench starts as its own process.
    #[value(hide = true)]
    FloorServer,
    /// The workload API's sign (IoT Edge's) of a running `edgeidctl dev`
    /// (`--socket DIR/workload.sock`), beside keyd's HMAC and in-process HMAC.
    Workload,
    /// The SPIFFE Workload API of a running `edgeidctl dev`
    /// (`--socket DIR/spiffe.sock`): time to the first X.509-SVID on a fresh
    /// connection, and FetchJWTSVID req/s, beside keyd's ECDSA sign.
    Spiffe,
    /// The aziot keys API's sign on the keyd or aziot-keyd at `--socket`,
    /// with keys made through that API.
    Aziot,
    /// Exactly `--requests` `/v1/sign` requests on one connection to the
    /// keyd at `--socket`, untimed: for instruction and allocation counts
    /// (`scripts/bench-instructions`).
    #[value(hide = true)]
    Trips,
    /// A load test of the workload socket of a running `edgeidctl dev`
    /// (`--socket DIR/workload.sock`): `--connections` clients signing and
    /// asking for server certificates for `--seconds`.
    Load,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Op {
    /// ECDSA P-256 sign (SHA-256) of a 32-byte message.
    Ecdsa,
    /// HMAC-SHA256 of a 32-byte message.
    Hmac,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Ecdsa => "ecdsa-p256 sign",
            Op::Hmac => "hmac-sha256 sign",
        })
    }
}

/// Throughput and latency of one run.
#[derive(Clone, Copy)]
struct Measured {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let dir = tempfile::Builder::new()
        .prefix("edgeid-bench-")
        .tempdir_in("/tmp")
        .map_err(|e| e.to_string())?;
    // The token must exist, and SOFTHSM2_CONF be set, before any thread starts.
    let store = match args.target {
        Target::Workload => {
            let runtime = edgeid_common::runtime::build().map_err(|e| e.to_string())?;
            return runtime.block_on(bench_workload(&args));
        }
        Target::Spiffe => {
            let runtime = edgeid_common::runtime::build().map_err(|e| e.to_string())?;
            return runtime.block_on(spiffe::bench(&args));
        }
        Target::Aziot => {
            let runtime = edgeid_common::runtime::build().map_err(|e| e.to_string())?;
            return runtime.block_on(aziot::bench(&args));
        }
        Target::Load => {
            edgeid_common::runtime::raise_fd_limit().map_err(|e| e.to_string())?;
            let runtime = edgeid_common::runtime::build().map_err(|e| e.to_string())?;
            return runtime.block_on(load::run(&args));
        }
        Target::Trips => {
            let socket = args.socket.as_deref().ok_or("trips needs --socket")?;
            let op = args.ops.first().copied().unwrap_or(Op::Hmac);
            let runtime = edgeid_common::runtime::build().map_err(|e| e.to_string())?;
            return runtime.block_on(count::trips(socket, op, args.requests));
        }
        Target::FloorServer => {
            let socket = args
                .socket
                .as_deref()
                .ok_or("floor-server needs --socket")?;
            let op = args.ops.first().copied().unwrap_or(Op::Ecdsa);
            return match &args.upstream {
                Some(upstream) => floor::relay(socket, upstream),
                None => floor::serve(socket, op, args.pkcs11.as_deref()),
            };
        }
        Target::Attest => {
            let runtime = edgeid_common::runtime::build().map_err(|e| e.to_string())?;
            return runtime.block_on(attest::bench(&args, dir.path()));
        }
        Target::Keyd => Store::Software,
        Target::Pkcs11 => Store::Pkcs11(pkcs11::SoftHsmToken::create(dir.path())?),
        Target::Tpm => Store::Tpm(SwtpmProcess::start(dir.path())?),
    };
    let runtime = edgeid_common::runtime::build().map_err(|e| e.to_string())?;
    runtime.block_on(bench_keyd(&args, dir.path(), &store))
}

/// Where keyd keeps the keys in this run, and the in-process baseline for it.
enum Store {
    Software,
    Pkcs11(pkcs11::SoftHsmToken),
    Tpm(SwtpmProcess),
}

impl Store {
    fn keyd_config(&self) -> String {
        match self {
            Store::Software => String::new(),
            Store::Pkcs11(t) => t.keyd_config(),
            Store::Tpm(t) => t.keyd_config(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Store::Software => {
                "every key in the software store; in-process = aws-lc-rs in this process".into()
            }
            Store::Pkcs11(t) => format!(
                "every key on a SoftHSMv2 token ({}); in-process = raw cryptoki on the same token",
                t.library().display()
            ),
            Store::Tpm(t) => format!(
                "every key in a swtpm ({}); in-process = raw tss-esapi on the same swtpm, \
                 at concurrency 1 (the TPM is one device that serves one client)",
                t.tcti()
            ),
        }
    }

    fn in_process(&self, op: Op, n: usize, seconds: u64) -> Result<Measured, String> {
        match self {
            Store::Software => in_process(op, n, seconds),
            Store::Pkcs11(t) => t.in_process(op, n, seconds),
            Store::Tpm(t) => t.in_process(op, seconds),
        }
    }
}

async fn bench_keyd(args: &Args, dir: &Path, store: &Store) -> Result<(), String> {
    let mut child = None;
    let socket = match &args.socket {
        Some(s) => s.clone(),
        None => {
            let socket = dir.join("keyd.sock");
            child = Some(KeydProcess::start(dir, &socket, &store.keyd_config())?);
            socket
        }
    };
    let client = KeydClient::new(&socket);
    wait_ready(&client).await?;
    if let Some(c) = &child {
        println!(
            "keyd idle RSS: {} KiB (pid {})",
            c.rss_kib().unwrap_or(0),
            c.child.id()
        );
    }

    let ec = client
        .create_key_pair("bench/ec", KeyPairSpec::EcP256)
        .await
        .map_err(|e| e.to_string())?;
    let mac = client
        .create_key("bench/mac", SymmetricKeyType::HmacSha256, None)
        .await
        .map_err(|e| e.to_string())?;
    let message = [7u8; 32];
    // The same keys as the aziot keys API names them, by bearer handles.
    let aziot_ec = client
        .bearer_key_pair("bench/ec")
        .await
        .map_err(|e| e.to_string())?;
    let aziot_mac = client
        .bearer_key("bench/mac")
        .await
        .map_err(|e| e.to_string())?;
    println!("{}", store.describe());
    println!("{} s per run", args.seconds);

    // Everything through keyd first; then keyd stops (a swtpm serves one client
    // at a time) and the in-process baselines run on a quiet machine.
    let mut through = Vec::new();
    let mut aziot = Vec::new();
    for op in &args.ops {
        let (handle, algorithm) = match op {
            Op::Ecdsa => (&ec, SignAlgorithm::EcdsaSha256),
            Op::Hmac => (&mac, SignAlgorithm::HmacSha256),
        };
        let body = serde_json::json!({
            "handle": handle.0,
            "algorithm": algorithm,
            "data": edgeid_common::encoding::to_base64(&message),
        })
        .to_string();
        let aziot_body = match op {
            Op::Ecdsa => serde_json::json!({ "keyHandle": aziot_ec.0, "algorithm": "ECDSA",
                "parameters": { "digest": edgeid_common::encoding::to_base64(&message) } }),
            Op::Hmac => serde_json::json!({ "keyHandle": aziot_mac.0, "algorithm": "HMAC-SHA256",
                "parameters": { "message": edgeid_common::encoding::to_base64(&message) } }),
        }
        .to_string();
        for &n in &args.concurrency {
            through.push((
                *op,
                n,
                through_socket(
                    &socket,
                    "/v1/sign",
                    Bytes::from(body.clone()),
                    n,
                    args.seconds,
                )
                .await?,
            ));
            aziot.push((
                *op,
                n,
                through_socket(
                    &socket,
                    "/sign?api-version=2021-05-01",
                    Bytes::from(aziot_body.clone()),
                    n,
                    args.seconds,
                )
                .await?,
            ));
        }
    }
    if let Some(c) = &child {
        println!("keyd RSS after load: {} KiB", c.rss_kib().unwrap_or(0));
    }
    drop(child);

    println!(
        "| operation | concurrency | aziot /sign req/s | p50 | p99 | /v1/sign req/s | p50 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for ((op, n, a), (_, _, v1)) in aziot.iter().zip(&through) {
        println!(
            "| {op} | {n} | {:.0} | {:.0} µs | {:.0} µs | {:.0} | {:.0} µs | {:.0} µs |",
            a.rate,
            micros(a.p50),
            micros(a.p99),
            v1.rate,
            micros(v1.p50),
            micros(v1.p99)
        );
    }
    println!();

    // The floor (issue 22): the same work behind a socket with nothing of
    // edgeid's: aws-lc for the software store, raw cryptoki on the same
    // token for PKCS#11 (raw + floor).
    let floor_of = |op: Op| match store {
        Store::Software => Some(floor::FloorServer::start(dir, op)),
        Store::Pkcs11(token) => Some(floor::FloorServer::start_with(
            dir,
            op,
            &[
                std::ffi::OsStr::new("--pkcs11"),
                token.library().as_os_str(),
            ],
        )),
        Store::Tpm(_) => None,
    };
    if !matches!(store, Store::Tpm(_)) {
        println!("| operation | concurrency | through keyd req/s | p50 | p99 | floor req/s | p50 | p99 | keyd/floor |");
        println!("|---|---|---|---|---|---|---|---|---|");
    }
    for op in &args.ops {
        let Some(server) = floor_of(*op) else { break };
        let server = server?;
        for (_, n, keyd) in through.iter().filter(|(o, _, _)| o == op) {
            let f = server.measure(*n, args.seconds)?;
            println!(
                "| {op} | {n} | {:.0} | {:.0} µs | {:.0} µs | {:.0} | {:.0} µs | {:.0} µs | {:.2} |",
                keyd.rate,
                micros(keyd.p50),
                micros(keyd.p99),
                f.rate,
                micros(f.p50),
                micros(f.p99),
                keyd.rate / f.rate
            );
        }
    }
    println!();

    println!("| operation | concurrency | through keyd req/s | p50 | p99 | in-process ops/s | p50 | p99 | ratio |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (op, n, through) in through {
        let local = store.in_process(op, n, args.seconds)?;
        println!(
            "| {op} | {n} | {:.0} | {:.0} µs | {:.0} µs | {:.0} | {:.1} µs | {:.1} µs | {:.2} |",
            through.rate,
            micros(through.p50),
            micros(through.p99),
            local.rate,
            micros(local.p50),
            micros(local.p99),
            through.rate / local.rate
        );
    }
    Ok(())
}

/// The workload API's sign for `dev-module` of a running dev mode, next to
/// keyd's HMAC with the same key and HMAC in this process.
async fn bench_workload(args: &Args) -> Result<(), String> {
    let socket = args.socket.clone().ok_or(
        "workload needs --socket DIR/workload.sock of a running `edgeidctl dev --dir DIR`",
    )?;
    let dir = socket.parent().unwrap_or(Path::new("."));
    let keyd_socket = dir.join("keyd.sock");
    let module = edgeid_identityd::IdentitydClient::new(dir.join("identityd.sock"))
        .module("dev-module")
        .await
        .map_err(|e| format!("identityd in {}: {e}", dir.display()))?;
    let handle = module
        .auth
        .key_handle
        .ok_or("dev-module has no SAS key (is [modules] auth x509?)")?;
    let data = edgeid_common::encoding::to_base64(&[7u8; 32]);
    let workload_body =
        serde_json::json!({"keyId": "primary", "algo": "HMACSHA256", "data": data}).to_string();
    let keyd_body =
        serde_json::json!({"handle": handle.0, "algorithm": "hmac-sha256", "data": data})
            .to_string();
    let uri = format!(
        "/modules/dev-module/genid/{}/sign?api-version=2022-08-03",
        module.generation_id
    );
    println!(
        "workload sign (HMACSHA256, 32 bytes) through {}; {} s per run",
        socket.display(),
        args.seconds
    );
    // The floors (issue 22): keyd's one hop, and the workload API's two (a
    // relay in front of the same work).
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let floor = floor::FloorServer::start(dir.path(), Op::Hmac)?;
    let two_hops = floor::FloorServer::relay(&floor)?;
    println!("| concurrency | workload req/s | p50 | p99 | two-hop floor req/s | p50 | p99 | workload/floor | keyd hmac req/s | p50 | p99 | floor req/s | keyd/floor | in-process ops/s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &args.concurrency {
        let w = through_socket(
            &socket,
            &uri,
            Bytes::from(workload_body.clone()),
            n,
            args.seconds,
        )
        .await?;
        let k = through_socket(
            &keyd_socket,
            "/v1/sign",
            Bytes::from(keyd_body.clone()),
            n,
            args.seconds,
        )
        .await?;
        let f2 = two_hops.measure(n, args.seconds)?;
        let f1 = floor.measure(n, args.seconds)?;
        let l = in_process(Op::Hmac, n, args.seconds)?;
        println!(
            "| {n} | {:.0} | {:.0} µs | {:.0} µs | {:.0} | {:.0} µs | {:.0} µs | {:.2} | {:.0} | {:.0} µs | {:.0} µs | {:.0} | {:.2} | {:.0} |",
            w.rate, micros(w.p50), micros(w.p99),
            f2.rate, micros(f2.p50), micros(f2.p99), w.rate / f2.rate,
            k.rate, micros(k.p50), micros(k.p99),
            f1.rate, k.rate / f1.rate,
            l.rate,
        );
    }
    Ok(())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn wait_ready(client: &KeydClient) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.health().await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("keyd does not answer: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// `n` connections, each sending `POST uri` back to back for `seconds`,
/// from the blocking client threads the floor's rows use too
/// ([`wire::drive`]): a ratio between the two compares servers.
async fn through_socket(
    socket: &Path,
    uri: &str,
    body: Bytes,
    n: usize,
    seconds: u64,
) -> Result<Measured, String> {
    let (socket, uri) = (socket.to_owned(), uri.to_owned());
    tokio::task::spawn_blocking(move || wire::post_loop(&socket, &uri, &body, n, seconds))
        .await
        .map_err(|e| e.to_string())?
}

/// Waits for the client tasks and summarizes the latencies they measured.
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<Duration>, String>>>,
    seconds: u64,
) -> Result<Measured, String> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok(summarize(all, seconds))
}

/// `n` threads doing the same operation directly with aws-lc-rs.
fn in_process(op: Op, n: usize, seconds: u64) -> Result<Measured, String> {
    wire::in_process(n, seconds, floor::software(op)?)
}

fn summarize(mut latencies: Vec<Duration>, seconds: u64) -> Measured {
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
    };
    Measured {
        rate: latencies.len() as f64 / seconds as f64,
        p50: at(0.50).copied().unwrap_or_default(),
        p99: at(0.99).copied().unwrap_or_default(),
    }
}

/// keyd started as its own process for the benchmark.
struct KeydProcess {
    child: Child,
}

impl KeydProcess {
    fn start(dir: &Path, socket: &Path, extra_config: &str) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let keyd = exe.with_file_name("edgeid-keyd");
        if !keyd.exists() {
            return Err(format!(
                "{} not found: build it first (cargo build --release -p edgeid-keyd)",
                keyd.display()
            ));
        }
        let config = dir.join("keyd.toml");
        let text = format!(
            "state_dir = \"{}\"\n{extra_config}\n[server]\nsocket = \"{}\"\n[software]\nmaster_key_file = \"{}\"\n",
            dir.join("state").display(),
            socket.display(),
            dir.join("master.key").display()
        );
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let child = Command::new(keyd)
            .arg("--config")
            .arg(&config)
            .env("EDGEID_LOG", "warn,tss_esapi=off,cryptoki=off")
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok(Self { child })
    }

    fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.child.id(), "VmRSS")
    }
}

/// A size field (`VmRSS`, `VmHWM`...) of `/proc/<pid>/status`, in KiB.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Drop for KeydProcess {
    /// SIGTERM, as systemd stops it (keyd then releases the TPM cleanly);
    /// SIGKILL if it has not exited within 10 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A swtpm started for the benchmark.
struct SwtpmProcess {
    port: u16,
    child: Child,
}

impl SwtpmProcess {
    fn start(dir: &Path) -> Result<Self, String> {
        let state = dir.join("tpm-state");
        std::fs::create_dir_all(&state).map_err(|e| e.to_string())?;
        for _ in 0..20 {
            let first = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let port = first.local_addr().map_err(|e| e.to_string())?.port();
            let Ok(second) = std::net::TcpListener::bind(("127.0.0.1", port.saturating_add(1)))
            else {
                continue;
            };
            drop((first, second));
            let mut child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--server"])
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--tpmstate")
                .arg(format!("dir={}", state.display()))
                .args(["--flags", "not-need-init,startup-clear"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("swtpm: {e} (sudo apt-get install -y swtpm swtpm-tools)"))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(Self { port, child });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        Err("swtpm did not start".into())
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    fn keyd_config(&self) -> String {
        format!(
            "[backend]\ndefault = \"tpm\"\n[tpm]\ntcti = \"{}\"\n",
            self.tcti()
        )
    }

    /// A raw tss-esapi connection to it, with keyd's storage key (made by
    /// keyd at 0x81000001) and a password session set.
    fn raw(&self) -> Result<(tss_esapi::Context, tss_esapi::handles::KeyHandle), String> {
        use std::str::FromStr;
        use tss_esapi::handles::{PersistentTpmHandle, TpmHandle};
        use tss_esapi::interface_types::session_handles::AuthSession;
        let err = |e: tss_esapi::Error| e.to_string();
        let tcti = tss_esapi::tcti_ldr::TctiNameConf::from_str(&self.tcti()).map_err(err)?;
        let mut ctx = tss_esapi::Context::new(tcti).map_err(err)?;
        let srk = PersistentTpmHandle::new(0x8100_0001).map_err(err)?;
        let primary = ctx
            .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::Persistent(srk)))
            .map_err(err)?
            .into();
        ctx.set_sessions((Some(AuthSession::Password), None, None));
        Ok((ctx, primary))
    }

    /// One thread doing what keyd does per request, straight on tss-esapi: hash
    /// with aws-lc and TPM2_Sign the digest with a loaded P-256 key, or
    /// TPM2_HMAC with a loaded HMAC key, both under keyd's storage key.
    fn in_process(&self, op: Op, seconds: u64) -> Result<Measured, String> {
        use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
        use tss_esapi::interface_types::algorithm::HashingAlgorithm;
        use tss_esapi::structures::{
            Digest, HashScheme, HashcheckTicket, MaxBuffer, SignatureScheme,
        };

        let err = |e: tss_esapi::Error| e.to_string();
        let (mut ctx, primary) = self.raw()?;
        // The very templates keyd uses, so both sides sign with the same kind of key.
        let template = match op {
            Op::Ecdsa => edgeid_keyd::backend::tpm::signing_template(KeyPairSpec::EcP256),
            Op::Hmac => edgeid_keyd::backend::tpm::hmac_template(true),
        }
        .map_err(|e| e.to_string())?;
        let created = ctx
            .create(primary, template, None, None, None, None)
            .map_err(err)?;
        let key = ctx
            .load(primary, created.out_private, created.out_public)
            .map_err(err)?;
        let message = [7u8; 32];
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut latencies = Vec::new();
        while Instant::now() < deadline {
            let started = Instant::now();
            match op {
                Op::Ecdsa => {
                    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &message);
                    let digest = Digest::try_from(digest.as_ref().to_vec()).map_err(err)?;
                    let ticket =
                        HashcheckTicket::try_from(tss_esapi::tss2_esys::TPMT_TK_HASHCHECK {
                            tag: TPM2_ST_HASHCHECK,
                            hierarchy: TPM2_RH_NULL,
                            digest: Default::default(),
                        })
                        .map_err(err)?;
                    let scheme = SignatureScheme::EcDsa {
                        hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
                    };
                    std::hint::black_box(ctx.sign(key, digest, scheme, ticket).map_err(err)?);
                }
                Op::Hmac => {
                    let data = MaxBuffer::try_from(message.to_vec()).map_err(err)?;
                    std::hint::black_box(
                        ctx.hmac(key.into(), data, HashingAlgorithm::Sha256)
                            .map_err(err)?,
                    );
                }
            }
            latencies.push(started.elapsed());
        }
        let _ = ctx.flush_context(key.into());
        Ok(summarize(latencies, seconds))
    }
}

impl Drop for SwtpmProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
