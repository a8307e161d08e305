//! `edgeidctl dev` as a person runs it: up within a second, every socket
//! answering health, the IoT Edge environment printed, the operator's
//! commands (`status`, `identity`, `cert`, `reprovision`) working against it,
//! and Ctrl-C leaving no socket or process behind.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgeid_common::client::UdsClient;
use edgeid_common::server::Health;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_starts_fast_serves_everything_and_stops_clean() {
    let dir = tempfile::Builder::new()
        .prefix("edgeid-dev-")
        .tempdir_in("/tmp")
        .unwrap();
    let started = Instant::now();
    let (mut child, text) = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || support::start_dev(&dir, &[], &[], Stdio::null())
    })
    .await
    .unwrap();
    let up = started.elapsed();
    assert!(text.contains("Running;"), "{text}");
    let ready_ms: u64 = text
        .split("(ready in ")
        .nth(1)
        .and_then(|r| r.split(" ms").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ready time in: {text}"));
    assert!(
        ready_ms < 1000,
        "ready in {ready_ms} ms (process up after {up:?})"
    );
    for var in [
        "IOTEDGE_WORKLOADURI=unix://",
        "IOTEDGE_MODULEID=dev-module",
        "IOTEDGE_MODULEGENERATIONID=",
        "IOTEDGE_DEVICEID=",
        "IOTEDGE_IOTHUBHOSTNAME=",
        "IOTEDGE_GATEWAYHOSTNAME=",
        "IOTEDGE_APIVERSION=",
        "IOTEDGE_AUTHSCHEME=sasToken",
        "SPIFFE_ENDPOINT_SOCKET=unix://",
    ] {
        assert!(
            text.contains(&format!("export {var}")),
            "{var} missing:\n{text}"
        );
    }
    for (socket, path) in [
        ("keyd.sock", "/v1/health"),
        ("certd.sock", "/v1/health"),
        ("identityd.sock", "/v1/health"),
        ("workload.sock", "/health"),
    ] {
        let health: Health = UdsClient::new(dir.path().join(socket))
            .get(path)
            .await
            .unwrap_or_else(|e| panic!("{socket}: {e}"));
        assert_eq!(health.status, "ok", "{socket}: {health:?}");
    }
    // The same daemons under the names aziot clients use, printed.
    assert!(
        text.contains("/aziot/{keyd,certd,identityd,tpmd}.sock"),
        "{text}"
    );
    let aziot = dir.path().join("aziot");
    // tpmd's is keyd's socket; dev mode has no TPM, and says so.
    let (status, none) = edgeid_testkit::aziot::call(
        &aziot.join("tpmd.sock"),
        http::Method::GET,
        "/get_tpm_keys?api-version=2020-09-01",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(status, http::StatusCode::NOT_FOUND, "{none}");
    let (status, me) = edgeid_testkit::aziot::call(
        &aziot.join("identityd.sock"),
        http::Method::GET,
        "/identities/identity?api-version=2020-09-01",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(status, http::StatusCode::OK, "{me}");
    assert_eq!(me["spec"]["auth"]["type"], "x509", "{me}");
    let cert_id = me["spec"]["auth"]["certId"].as_str().unwrap();
    let (status, cert) = edgeid_testkit::aziot::call(
        &aziot.join("certd.sock"),
        http::Method::GET,
        &format!("/certificates/{cert_id}?api-version=2020-09-01"),
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(status, http::StatusCode::OK, "{cert}");
    let (status, key) = edgeid_testkit::aziot::call(
        &aziot.join("keyd.sock"),
        http::Method::POST,
        "/parameters/algorithm?api-version=2020-09-01",
        serde_json::json!({ "keyHandle": me["spec"]["auth"]["keyHandle"] }),
    )
    .await;
    assert_eq!(status, http::StatusCode::OK, "{key}");
    // A SPIFFE client given the printed endpoint gets dev-module's SVID and a JWT-SVID.
    let mut spiffe = support::spiffe_client(&text).await;
    use edgeid_workloadapi::spiffe::proto::JwtsvidRequest;
    let first = support::first_x509_svid(&mut spiffe).await;
    assert!(
        first.svids[0]
            .spiffe_id
            .starts_with("spiffe://edgeid.local/")
            && first.svids[0].spiffe_id.ends_with("/dev-module"),
        "{}",
        first.svids[0].spiffe_id
    );
    let jwt = spiffe
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["dev".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwt.svids[0].spiffe_id, first.svids[0].spiffe_id);
    // The operator's commands against it.
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_edgeidctl"))
            .args(args)
            .env("EDGEID_RUN_DIR", dir.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = ctl(&["identity", "create", "sensor"]);
    assert!(
        ok && out.starts_with("sensor\t") && out.contains("\tsas"),
        "{out}{err}"
    );
    let (ok, out, err) = ctl(&["status"]);
    assert!(ok, "{out}{err}");
    for wanted in [
        "keyd       ok",
        "workloadd  ok",
        "state      provisioned",
        "credential x509",
        "dev-module",
        "sensor",
        "device-id",
    ] {
        assert!(out.contains(wanted), "status lacks '{wanted}':\n{out}");
    }
    let (ok, out, _) = ctl(&["cert", "show", "device-id"]);
    assert!(
        ok && out.contains("-----BEGIN CERTIFICATE-----") && out.contains("expires:"),
        "{out}"
    );
    let (ok, _, _) = ctl(&["identity", "delete", "sensor"]);
    assert!(ok);
    let (ok, out, _) = ctl(&["identity", "list"]);
    assert!(
        ok && out.contains("dev-module") && !out.contains("sensor"),
        "{out}"
    );
    let (ok, out, _) = ctl(&["reprovision"]);
    assert!(ok && out.contains("provisioned: device"), "{out}");
    let (ok, out, err) = ctl(&["key", "list"]);
    for wanted in [
        "device-ca\tec-p256\tsoftware",
        "device-id\tec-p256\tsoftware",
        "module-derivation\thmac-sha256\tsoftware",
    ] {
        assert!(
            ok && out.contains(wanted),
            "key list lacks {wanted}:\n{out}{err}"
        );
    }
    let (ok, out, err) = ctl(&["cert", "renew", "device-id"]);
    assert!(ok && out.contains("renewed 'device-id'"), "{out}{err}");
    let (ok, _, err) = ctl(&["cert", "show", "ghost"]);
    assert!(!ok && err.contains("ghost"), "{err}");
    // `check` against the running suite: the daemons, key store, clock and
    // certificates pass (the config files are not in this root: those fail).
    let out = Command::new(env!("CARGO_BIN_EXE_edgeidctl"))
        .args(["check", "--output", "json", "--root"])
        .arg(dir.path())
        .arg("--run-dir")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("no-such-config.toml"))
        .output()
        .unwrap();
    let findings: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = |check: &str| {
        findings
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == check)
            .map(|f| f["status"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("no '{check}' in {findings}"))
    };
    for check in [
        "keyd answers",
        "certd answers",
        "identityd answers",
        "workloadd answers",
        "key store software",
        "clock",
        "certificate device-id",
    ] {
        assert_eq!(status(check), "pass", "{check}: {findings}");
    }
    assert_eq!(status("config"), "fail");

    // Ctrl-C.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "dev mode did not stop on SIGINT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "sock"))
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "sockets left behind: {left:?}");
}

#[test]
fn status_with_nothing_running_says_so_and_fails() {
    let dir = tempfile::Builder::new()
        .prefix("edgeid-none-")
        .tempdir_in("/tmp")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edgeidctl"))
        .args(["status", "--run-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stdout.contains("keyd       unreachable"), "{stdout}");
    assert!(
        stderr.contains("not answering: keyd, certd, identityd, workloadd"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Issue 17, finding 8: `edgeidctl dev --dir` into a directory another user
/// prepared used the master key that user planted there (and left that user
/// able to swap its sockets). Now dev mode refuses such a directory, and a
/// secret in its own directory that is a link to someone else's file.
#[test]
fn dev_mode_refuses_a_directory_or_a_master_key_someone_else_prepared() {
    use std::os::unix::fs::PermissionsExt;
    assert!(
        edgeid_testkit::is_root(),
        "this test gives files to another uid: run it as root"
    );
    let top = edgeid_testkit::temp_dir();
    let run = |dir: &Path| {
        let (mut child, printed) = support::start_dev(dir, &[], &[], Stdio::piped());
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        let status = child.wait().unwrap();
        (status, printed, stderr)
    };

    // A directory of uid 4242's, with its master key waiting in it.
    let theirs = top.path().join("theirs");
    std::fs::create_dir_all(theirs.join("secrets")).unwrap();
    std::fs::write(theirs.join("secrets/keyd-master.key"), [7u8; 32]).unwrap();
    for p in [
        theirs.join("secrets/keyd-master.key"),
        theirs.join("secrets"),
        theirs.clone(),
    ] {
        std::os::unix::fs::chown(&p, Some(4242), Some(4242)).unwrap();
    }
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (status, printed, stderr) = run(&theirs);
    assert!(!status.success(), "{printed}");
    assert!(!printed.contains("Running;"), "{printed}");
    assert!(stderr.contains("owned by uid 4242"), "{stderr}");

    // Our own directory, but the master key a link to a file of theirs.
    let ours = top.path().join("ours");
    std::fs::create_dir_all(ours.join("secrets")).unwrap();
    std::fs::set_permissions(ours.join("secrets"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let planted = top.path().join("planted.key");
    std::fs::write(&planted, [7u8; 32]).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&planted, ours.join("secrets/keyd-master.key")).unwrap();
    let (status, printed, stderr) = run(&ours);
    assert!(!status.success(), "{printed}");
    assert!(stderr.contains("symbolic link"), "{stderr}");

    // Without the link, dev mode makes its own key and runs.
    std::fs::remove_file(ours.join("secrets/keyd-master.key")).unwrap();
    let (mut child, printed) = support::start_dev(&ours, &[], &[], Stdio::null());
    assert!(printed.contains("Running;"), "{printed}");
    edgeid_testkit::process::sigterm(&child);
    let _ = child.wait();
}
