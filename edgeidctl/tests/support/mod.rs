//! What the dev-mode tests share: starting `edgeidctl dev` as a person does.

// Each test file that includes this module uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `edgeidctl dev --dir DIR EXTRA...` with `env` added and its stderr
/// sent to `stderr`; returns the child and what it printed on stdout up to
/// and including its `Running;` line (all of it, if it never got there).
pub fn start_dev(
    dir: &Path,
    extra: &[&str],
    env: &[(String, String)],
    stderr: Stdio,
) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgeidctl"))
        .args(["dev", "--dir"])
        .arg(dir)
        .args(extra)
        .envs(env.iter().cloned())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start edgeidctl dev");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let done = line.starts_with("Running;");
        lines.push(line);
        if done {
            break;
        }
    }
    (child, lines.join("\n"))
}

/// A SPIFFE Workload API client on the endpoint a dev mode printed.
pub async fn spiffe_client(printed: &str) -> edgeid_workloadapi::spiffe::client::Client {
    let endpoint = printed
        .lines()
        .find_map(|l| l.strip_prefix("export SPIFFE_ENDPOINT_SOCKET="))
        .expect("SPIFFE_ENDPOINT_SOCKET printed");
    edgeid_workloadapi::spiffe::client::connect(endpoint)
        .await
        .expect("connect to the printed SPIFFE endpoint")
}

/// The first message of `FetchX509SVID`: the caller's SVIDs and bundle.
pub async fn first_x509_svid(
    client: &mut edgeid_workloadapi::spiffe::client::Client,
) -> edgeid_workloadapi::spiffe::proto::X509svidResponse {
    client
        .fetch_x509svid(edgeid_workloadapi::spiffe::proto::X509svidRequest {})
        .await
        .expect("FetchX509SVID")
        .into_inner()
        .message()
        .await
        .expect("a stream message")
        .expect("the stream's first message")
}

/// An `/etc/passwd` with the reference's users, as a device that ran
/// aziot-identity-service has them (and edgeid's workload user).
pub const AZIOT_USERS: &str = "root:x:0:0::/root:/bin/sh\n\
aziotks:x:994:994::/:/usr/sbin/nologin\n\
aziotcs:x:993:993::/:/usr/sbin/nologin\n\
aziotid:x:992:992::/:/usr/sbin/nologin\n\
edgeid-wl:x:991:991::/:/usr/sbin/nologin\n";

/// A throwaway root for `config apply --root`: its `/etc/passwd` names the
/// reference's users.
pub fn aziot_root() -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("edgeid-aziot-root-")
        .tempdir_in("/tmp")
        .expect("a temp root");
    std::fs::create_dir(root.path().join("etc")).expect("etc");
    std::fs::write(root.path().join("etc/passwd"), AZIOT_USERS).expect("passwd");
    root
}

/// `edgeidctl config apply --no-restart` of the packaged template under
/// `root`, with `extra` arguments: whether it succeeded, and all it said.
pub fn config_apply(root: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edgeidctl"))
        .args(["config", "apply", "--no-restart", "-c"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config.toml.template"))
        .arg("--root")
        .arg(root)
        .args(extra)
        .output()
        .expect("run edgeidctl config apply");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The reference's file name for `id` in its key or certificate store (its
/// ASCII letters and digits, `-`, the id's SHA-256 in hex, the extension),
/// computed here on its own.
pub fn reference_name(id: &str, ext: &str) -> String {
    let kept: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_bytes());
    format!("{kept}-{}.{ext}", hex::encode(digest.as_ref()))
}
