//! The `edgeid-keyd` binary as systemd and operators run it: config errors,
//! SIGTERM while busy, socket activation.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgeid_keyd::api::{KeyPairSpec, SignAlgorithm};
use edgeid_keyd::KeydClient;

const BIN: &str = env!("CARGO_BIN_EXE_edgeid-keyd");

fn write_config(dir: &Path, socket: &Path) -> PathBuf {
    let config = dir.join("keyd.toml");
    let text = format!(
        "state_dir = \"{state}\"\n[server]\nsocket = \"{socket}\"\nsocket_mode = 0o600\n[software]\nmaster_key_file = \"{master}\"\n",
        state = dir.join("state").display(),
        socket = socket.display(),
        master = dir.join("secrets/master.key").display(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

use edgeid_testkit::process::{sigterm, wait_exit, wait_for_health};

fn spawn_keyd(config: &Path) -> std::process::Child {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .stderr(Stdio::null())
        .spawn()
        .expect("start edgeid-keyd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits_0() {
    let dir = edgeid_testkit::temp_dir();
    let socket = dir.path().join("keyd.sock");
    let config = write_config(dir.path(), &socket);
    let mut child = spawn_keyd(&config);
    let client = KeydClient::new(&socket);
    wait_for_health(&client, &mut child).await;

    // RSA-4096 generation takes a good fraction of a second each: these are in
    // flight when SIGTERM arrives.
    let requests: Vec<_> = (0..4)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let handle = client
                    .create_key_pair(&format!("slow-{i}"), KeyPairSpec::Rsa4096)
                    .await;
                (handle, Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let signalled = Instant::now();
    sigterm(&child);

    let mut finished_after_signal = 0;
    for r in requests {
        let (handle, done) = r.await.unwrap();
        handle.expect("an in-flight request completes after SIGTERM");
        if done > signalled {
            finished_after_signal += 1;
        }
    }
    assert!(
        finished_after_signal > 0,
        "no request was still in flight at SIGTERM; the test proves nothing"
    );
    let status = wait_exit(&mut child).await;
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    assert!(!socket.exists(), "socket file removed on shutdown");

    // Everything it created survives for the next start.
    let mut child = spawn_keyd(&config);
    wait_for_health(&client, &mut child).await;
    for i in 0..4 {
        let handle = client.key_pair(&format!("slow-{i}")).await.unwrap();
        client
            .sign(&handle, SignAlgorithm::RsaPssSha256, b"x", false)
            .await
            .unwrap();
    }
    sigterm(&child);
    assert_eq!(wait_exit(&mut child).await.code(), Some(0));
}

#[test]
fn config_errors_name_the_file_and_key() {
    let dir = edgeid_testkit::temp_dir();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "state_dir = \"/tmp/x\"\n[server]\nmax_body_bytes = -1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("server.max_body_bytes") && stderr.contains("line 3"),
        "{stderr}"
    );

    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_over_a_socket_from_systemd() {
    let dir = edgeid_testkit::temp_dir();
    // The config names another path: a socket-activated keyd must not bind it.
    let config = write_config(dir.path(), &dir.path().join("unused.sock"));
    let activated = dir.path().join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&activated).unwrap();
    let fd = listener.as_raw_fd();
    // As systemd does: the socket on descriptor 3, LISTEN_FDS=1, LISTEN_PID = the
    // daemon's pid ($$ of the shell that execs it).
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" --config \"$1\"",
    ])
    .arg(BIN)
    .arg(&config);
    cmd.stderr(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; it runs in the forked child before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(listener);
    let client = KeydClient::new(&activated);
    wait_for_health(&client, &mut child).await;
    let handle = client
        .create_key_pair("device-id", KeyPairSpec::EcP256)
        .await
        .unwrap();
    client
        .sign(&handle, SignAlgorithm::EcdsaSha256, b"x", false)
        .await
        .unwrap();
    assert!(
        !dir.path().join("unused.sock").exists(),
        "the configured path was bound too"
    );
    sigterm(&child);
    assert_eq!(wait_exit(&mut child).await.code(), Some(0));
    assert!(
        activated.exists(),
        "systemd's socket file is systemd's to remove"
    );
}
