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
