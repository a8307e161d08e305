//! Dev mode as a module author and an operator meet it, with programs
//! nobody here wrote:
//! - the Azure IoT Python SDK, given the environment dev mode prints, at
//!   every api-version IoT Edge's runtime serves, and the Node.js SDK;
//! - `edgeidctl`'s one-shot commands writing into a pipe whose reader is
//!   gone (`edgeidctl status | head -1`): they finish, exit as they would
//!   have, and print no panic; dev mode keeps serving when its reader goes.
//!
//! The tokens the SDKs make here are checked against the workload API's own
//! digests; `workloadapi/tests/real_clients.rs` has the test hub check them
//! with the module's key.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgeid_common::client::UdsClient;
use edgeid_testkit::clients;
use http::{Method, StatusCode};
use serde_json::Value;

struct Dev {
    child: std::process::Child,
    printed: String,
    dir: tempfile::TempDir,
}

impl Dev {
    async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("edgeid-dev-")
            .tempdir_in("/tmp")
            .unwrap();
        let (child, printed) = tokio::task::spawn_blocking({
            let dir = dir.path().to_owned();
            move || support::start_dev(&dir, &[], &[], Stdio::null())
        })
        .await
        .unwrap();
        assert!(printed.contains("Running;"), "{printed}");
        Self {
            child,
            printed,
            dir,
        }
    }

    /// The `export NAME=value` lines dev mode printed, as a module's environment.
    fn module_env(&self) -> Vec<(String, String)> {
        self.printed
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| k.starts_with("IOTEDGE_"))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn var(&self, name: &str) -> String {
        self.module_env()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("{name} not printed: {}", self.printed))
    }

    /// The workload API's answer to a request as dev-module (this process).
    async fn workload(&self, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
        let (status, bytes) = UdsClient::new(self.dir.path().join("workload.sock"))
            .raw(method, path, Bytes::from(body.to_owned()))
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// What an SDK printed: its trust bundle is dev mode's and validates a
    /// server certificate; each token's signature is the workload API's
    /// digest of what the token says it signs, for dev-module's resource.
    async fn check_sdk_answer(&self, sdk: &str, answer: &Value) {
        let ca = answer["ca"].as_str().unwrap();
        let bundle_file =
            std::fs::read_to_string(self.dir.path().join("trust-bundle.pem")).unwrap();
        assert_eq!(ca, bundle_file, "{sdk}: the trust bundle");
        let genid = self.var("IOTEDGE_MODULEGENERATIONID");
        let (status, cert) = self
            .workload(
                Method::POST,
                &format!(
                    "/modules/dev-module/genid/{genid}/certificate/server?api-version=2022-08-03"
                ),
                r#"{"commonName":"localhost"}"#,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{cert}");
        edgeid_testkit::openssl::verify_chain(
            ca,
            cert["certificate"].as_str().unwrap(),
            "sslserver",
        )
        .unwrap_or_else(|e| panic!("{sdk}: {e}"));
        let resource = format!(
            "{}/devices/{}/modules/dev-module",
            self.var("IOTEDGE_IOTHUBHOSTNAME"),
            self.var("IOTEDGE_DEVICEID")
        );
        for token in ["sas", "renewed"] {
            let Some(sas) = answer[token].as_str() else {
                continue;
            };
            let field = |name: &str| {
                sas.trim_start_matches("SharedAccessSignature ")
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                    .map(|v| {
                        percent_encoding::percent_decode_str(v)
                            .decode_utf8()
                            .unwrap()
                            .into_owned()
                    })
                    .unwrap_or_else(|| panic!("{sdk}: no {name} in {sas}"))
            };
            assert_eq!(
                field("sr").to_lowercase(),
                resource.to_lowercase(),
                "{sdk}: {sas}"
            );
            let expiry: u64 = field("se").parse().unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            assert!(expiry > now, "{sdk}: {sas}");
            let signed = format!("{}\n{expiry}", edgeid_identityd::sas::encode(&resource));
            let (status, digest) = self
                .workload(
                    Method::POST,
                    &format!("/modules/dev-module/genid/{genid}/sign?api-version=2022-08-03"),
                    &serde_json::json!({ "data": base64(signed.as_bytes()) }).to_string(),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{digest}");
            assert_eq!(
                field("sig"),
                digest["digest"].as_str().unwrap(),
                "{sdk}: {sas}"
            );
        }
    }

    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}");
    }
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdks_run_unchanged_on_the_environment_dev_mode_prints() {
    let dev = Dev::start().await;
    let printed_version = dev.var("IOTEDGE_APIVERSION");
    assert!(
        edgeid_workloadapi::api::API_VERSIONS.contains(&printed_version.as_str()),
        "dev mode prints a version the runtime serves: {printed_version}"
    );
    // As printed, then at every version the runtime serves.
    let versions = std::iter::once(printed_version.as_str())
        .chain(edgeid_workloadapi::api::API_VERSIONS.iter().copied());
    for version in versions {
        let mut python = clients::python();
        python
            .arg(clients::script("python/edge_module.py"))
            .envs(dev.module_env())
            .env("IOTEDGE_APIVERSION", version);
        let (ok, answer, stderr) = tokio::task::spawn_blocking(move || clients::run_json(python))
            .await
            .unwrap();
        assert!(ok, "Python SDK at {version}: {answer} {stderr}");
        dev.check_sdk_answer(&format!("Python SDK at {version}"), &answer)
            .await;
    }
    let mut node = clients::node();
    node.arg(clients::script("node/edge_module.js"))
        .envs(dev.module_env());
    let (ok, answer, stderr) = tokio::task::spawn_blocking(move || clients::run_json(node))
        .await
        .unwrap();
    assert!(ok, "Node.js SDK: {answer} {stderr}");
    dev.check_sdk_answer("Node.js SDK", &answer).await;
    dev.stop();
}

/// Runs `edgeidctl ARGS` with its stdout a pipe nobody reads (closed before
/// it starts, so every write fails with EPIPE); its exit status and stderr.
fn in_a_closed_pipe(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_edgeidctl"))
        .args(args)
        .env("EDGEID_RUN_DIR", dir)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_commands_in_a_closed_pipe_finish_quietly() {
    let dev = Dev::start().await;
    let dir = dev.dir.path();
    let no_config = dir.join("no-such-config.toml");
    let no_config = no_config.to_str().unwrap();
    let run_dir = dir.to_str().unwrap();
    // (args, the exit status the command has with a reader)
    let commands: Vec<(Vec<&str>, i32)> = vec![
        (vec!["status"], 0),
        (vec!["identity", "list"], 0),
        (vec!["identity", "create", "piped"], 0),
        (vec!["identity", "delete", "piped"], 0),
        (vec!["key", "list"], 0),
        (vec!["cert", "list"], 0),
        (vec!["cert", "show", "device-id"], 0),
        (vec!["cert", "renew", "device-id"], 0),
        (vec!["reprovision"], 0),
        (vec!["factory", "verify"], 1),
        (
            vec![
                "check",
                "-c",
                no_config,
                "--root",
                run_dir,
                "--run-dir",
                run_dir,
            ],
            1,
        ),
        (
            vec![
                "check",
                "--output",
                "json",
                "-c",
                no_config,
                "--root",
                run_dir,
                "--run-dir",
                run_dir,
            ],
            1,
        ),
        (vec!["--help"], 0),
        (vec!["--version"], 0),
        (vec!["cert", "--help"], 0),
    ];
    for (args, expected) in &commands {
        let (code, stderr) = in_a_closed_pipe(dir, args);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert!(
            code == Some(*expected) || (*expected == 0 && code == Some(141)),
            "{args:?}: exit {code:?}, {stderr}"
        );
    }
    // The closed pipe did not stop the work: the identity came and went,
    // the certificate was renewed.
    let (status, modules) = dev
        .workload(Method::GET, "/modules?api-version=2022-08-03", "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!modules.to_string().contains("piped"), "{modules}");

    // As a person types it.
    let shell = Command::new("bash")
        .args(["-o", "pipefail", "-c"])
        .arg(format!(
            "'{}' status | head -1",
            env!("CARGO_BIN_EXE_edgeidctl")
        ))
        .env("EDGEID_RUN_DIR", dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&shell.stderr);
    assert!(shell.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&shell.stdout).lines().count(), 1);
    assert!(!stderr.contains("panicked"), "{stderr}");
    dev.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_keeps_serving_when_its_reader_goes() {
    let dir = tempfile::Builder::new()
        .prefix("edgeid-dev-")
        .tempdir_in("/tmp")
        .unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgeidctl"))
        .args(["dev", "--dir"])
        .arg(dir.path())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let workload = UdsClient::new(dir.path().join("workload.sock"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(h) = workload
            .get::<edgeid_common::server::Health>("/health")
            .await
        {
            assert_eq!(h.status, "ok", "{h:?}");
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "dev mode died when its output could not be written"
        );
        assert!(Instant::now() < deadline, "dev mode never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A module's requests are served (and a client that hangs up mid-way
    // does not stop it either).
    let (status, _) = workload
        .raw(
            Method::GET,
            "/trust-bundle?api-version=2022-08-03",
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    {
        use std::io::Write;
        let mut gone =
            std::os::unix::net::UnixStream::connect(dir.path().join("workload.sock")).unwrap();
        gone.write_all(b"POST /modules/dev-module/genid/x/sign?api-version=2022-08-03 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"da")
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(child.try_wait().unwrap().is_none(), "dev mode died");
    let health: edgeid_common::server::Health = workload.get("/health").await.unwrap();
    assert_eq!(health.status, "ok");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
