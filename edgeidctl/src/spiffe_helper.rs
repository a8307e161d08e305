//! `edgeidctl spiffe helper --config FILE`: what spiffe-helper does, for
//! programs that read their TLS identity only from files. It runs as the
//! module's user, watches the caller's X.509-SVID, and on every update
//! rewrites each consumer's files and then tells the consumer: runs a
//! command, signals the process of a pid file, or nothing.
//!
//! Order of writing, per consumer: every file is first written whole and
//! synced under a temp name; only then are they renamed over the old ones,
//! the bundle, then the key, then the combined file, then the certificate
//! (and the directory synced). There is never a moment when the certificate
//! file is new and the key file old: a program that reads the certificate,
//! then the key, never pairs a new certificate with an old key. (One that
//! reads the key first may, in the microseconds between two renames, pair a
//! new key with the old certificate, and its TLS library refuses that pair
//! rather than use it: read the certificate first, or use the combined
//! file, key and chain in one rename, consistent whatever the order.)
//! This puts a private key on disk, readable by whoever can read the
//! directory and `key_mode` allows.
//!
//! ```toml
//! socket = "unix:///run/edgeid/spiffe.sock"   # else SPIFFE_ENDPOINT_SOCKET
//!
//! [[consumer]]
//! name = "nginx"
//! dir = "/run/nginx/tls"                      # must exist and be writable
//! cert_file = "svid.pem"                      # these four are the defaults
//! key_file = "svid_key.pem"
//! bundle_file = "svid_bundle.pem"
//! # combined_file = "svid_combined.pem"
//! cert_mode = 0o644
//! key_mode = 0o600
//! bundle_mode = 0o644
//! on_rotation = { signal = "SIGHUP", pid_file = "/run/nginx.pid" }
//! # or: on_rotation = { command = ["/usr/bin/systemctl", "reload", "nginx"] }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use edgeid_workloadapi::spiffe::client;
use edgeid_workloadapi::spiffe::proto::{X509svidRequest, X509svidResponse};
use serde::Deserialize;

use edgeid_workloadapi::spiffe::x509::certificates_pem;

/// The helper's config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HelperConfig {
    /// The Workload API socket; default `SPIFFE_ENDPOINT_SOCKET`.
    socket: Option<String>,
    #[serde(rename = "consumer")]
    consumers: Vec<Consumer>,
}

/// One program's files and how it is told of new ones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Consumer {
    name: String,
    dir: PathBuf,
    #[serde(default = "default_cert_file")]
    cert_file: String,
    #[serde(default = "default_key_file")]
    key_file: String,
    #[serde(default = "default_bundle_file")]
    bundle_file: String,
    combined_file: Option<String>,
    #[serde(default = "public_mode")]
    cert_mode: u32,
    #[serde(default = "private_mode")]
    key_mode: u32,
    #[serde(default = "public_mode")]
    bundle_mode: u32,
    on_rotation: Option<OnRotation>,
}

/// What is done once a consumer's files are new.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnRotation {
    /// Run this (program and arguments; no shell), and wait for it.
    command: Option<Vec<String>>,
    /// Send this signal (`SIGHUP`, `SIGUSR1`, ...) ...
    signal: Option<String>,
    /// ... to the process whose pid this file holds.
    pid_file: Option<PathBuf>,
}

fn default_cert_file() -> String {
    "svid.pem".into()
}
fn default_key_file() -> String {
    "svid_key.pem".into()
}
fn default_bundle_file() -> String {
    "svid_bundle.pem".into()
}
fn public_mode() -> u32 {
    0o644
}
fn private_mode() -> u32 {
    0o600
}

/// How long a rotation command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// `edgeidctl spiffe helper`: until the stream ends or fails (exit 1), or
/// after the first update with `once`.
pub async fn run(config: &Path, socket: Option<&str>, once: bool) -> Result<(), String> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    let parsed: HelperConfig =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    check(&parsed).map_err(|e| format!("{}: {e}", config.display()))?;
    let socket = socket
        .map(str::to_owned)
        .or(parsed.socket.clone())
        .or_else(|| std::env::var("SPIFFE_ENDPOINT_SOCKET").ok())
        .ok_or("no socket: set socket in the config, --socket or SPIFFE_ENDPOINT_SOCKET")?;
    let mut c = client::connect(&socket)
        .await
        .map_err(|e| format!("cannot reach the Workload API at {socket}: {e}"))?;
    let mut stream = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .map_err(|s| format!("FetchX509SVID: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let mut first = true;
    loop {
        let update = stream
            .message()
            .await
            .map_err(|s| format!("FetchX509SVID: {:?}: {}", s.code(), s.message()))?
            .ok_or("the Workload API ended the stream")?;
        for consumer in &parsed.consumers {
            match deliver(consumer, &update) {
                Ok(()) => {
                    errln!("edgeidctl: {}: wrote the new SVID", consumer.name);
                    if let Some(then) = &consumer.on_rotation {
                        if let Err(e) = tell(then).await {
                            errln!("edgeidctl: {}: {e}", consumer.name);
                        }
                    }
                }
                // At start, a directory that cannot be written is the
                // operator's to fix now; later, the next update tries again.
                Err(e) if first => return Err(format!("{}: {e}", consumer.name)),
                Err(e) => errln!(
                    "edgeidctl: {}: {e}; trying again at the next update",
                    consumer.name
                ),
            }
        }
        if once {
            return Ok(());
        }
        first = false;
    }
}

fn check(config: &HelperConfig) -> Result<(), String> {
    if config.consumers.is_empty() {
        return Err("no [[consumer]]".into());
    }
    for c in &config.consumers {
        let mut names = vec![&c.cert_file, &c.key_file, &c.bundle_file];
        names.extend(&c.combined_file);
        for name in &names {
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(format!(
                    "consumer {}: file name '{name}' must be a plain name in dir",
                    c.name
                ));
            }
        }
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != names.len() {
            return Err(format!("consumer {}: two files have one name", c.name));
        }
        for mode in [c.cert_mode, c.key_mode, c.bundle_mode] {
            if mode > 0o777 {
                return Err(format!(
                    "consumer {}: mode {mode:#o} is not a file mode",
                    c.name
                ));
            }
        }
        if c.key_mode & 0o007 != 0 {
            return Err(format!(
                "consumer {}: key_mode {:#o} lets every user read the private key",
                c.name, c.key_mode
            ));
        }
        if let Some(r) = &c.on_rotation {
            match (&r.command, &r.signal, &r.pid_file) {
                (Some(cmd), None, None) if !cmd.is_empty() => {}
                (None, Some(signal), Some(_)) => {
                    signal_number(signal)?;
                }
                _ => {
                    return Err(format!(
                        "consumer {}: on_rotation is either {{ command = [...] }} or {{ signal = \"SIGHUP\", pid_file = \"...\" }}",
                        c.name
                    ))
                }
            }
        }
    }
    Ok(())
}

/// Writes one consumer's files for the first SVID of `update`.
fn deliver(c: &Consumer, update: &X509svidResponse) -> Result<(), String> {
    let svid = update
        .svids
        .first()
        .ok_or("the Workload API sent no SVID")?;
    let chain = certificates_pem(&svid.x509_svid)?;
    let key = zeroize::Zeroizing::new(pem::encode(&pem::Pem::new(
        "PRIVATE KEY",
        svid.x509_svid_key.clone(),
    )));
    let bundle = certificates_pem(&svid.bundle)?;
    let combined = c.combined_file.as_ref().map(|name| {
        (
            c.dir.join(name),
            zeroize::Zeroizing::new(format!("{}{chain}", key.as_str())),
        )
    });
    let (bundle_path, key_path, cert_path) = (
        c.dir.join(&c.bundle_file),
        c.dir.join(&c.key_file),
        c.dir.join(&c.cert_file),
    );
    // All written and synced first, then renamed in this order.
    let mut files: Vec<(&Path, &[u8], u32)> = vec![
        (&bundle_path, bundle.as_bytes(), c.bundle_mode),
        (&key_path, key.as_bytes(), c.key_mode),
    ];
    if let Some((path, text)) = &combined {
        files.push((path, text.as_bytes(), c.key_mode));
    }
    files.push((&cert_path, chain.as_bytes(), c.cert_mode));
    edgeid_common::fs::write_atomic_all(&files).map_err(|e| {
        format!(
            "cannot write consumer {}'s files in {}: {e}",
            c.name,
            c.dir.display()
        )
    })
}

/// Runs the command, or signals the pid file's process.
async fn tell(then: &OnRotation) -> Result<(), String> {
    if let Some(cmd) = &then.command {
        let (program, args) = cmd.split_first().ok_or("on_rotation.command is empty")?;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        let status = tokio::time::timeout(COMMAND_TIMEOUT, child.wait())
            .await
            .map_err(|_| format!("{program} still runs after {COMMAND_TIMEOUT:?}; killed"))?
            .map_err(|e| format!("{program}: {e}"))?;
        if !status.success() {
            return Err(format!("{program} exited with {status}"));
        }
        return Ok(());
    }
    let (Some(signal), Some(pid_file)) = (&then.signal, &then.pid_file) else {
        return Ok(());
    };
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| format!("cannot read pid file {}: {e}", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| format!("pid file {} holds no pid", pid_file.display()))?;
    let number = signal_number(signal)?;
    // SAFETY: kill(2) with a pid read from the file and a known signal.
    if unsafe { libc::kill(pid, number) } != 0 {
        return Err(format!(
            "cannot send {signal} to pid {pid} (from {}): {}",
            pid_file.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn signal_number(name: &str) -> Result<i32, String> {
    Ok(match name.trim_start_matches("SIG") {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "TERM" => libc::SIGTERM,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "WINCH" => libc::SIGWINCH,
        _ => {
            return Err(format!(
            "signal '{name}': one of SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH"
        ))
        }
    })
}
