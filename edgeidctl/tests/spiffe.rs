//! `edgeidctl spiffe` as a module runs it against workloadd's SPIFFE
//! socket, each answer checked by a second party: the files `fetch x509
//! --write` leaves pass `openssl verify` and the key is the certificate's;
//! the JWT `fetch jwt` writes validates for its audience only; `watch`
//! prints each rotation with a new serial; a caller who is no module, a
//! directory that cannot be written, a bad token and a socket that is not
//! there all exit 1 with a message. The test process's uid is `mod-a`.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use edgeid_testkit::workload::SpiffeFixture;
use edgeid_workloadapi::config::SpiffeConfig;
use serde_json::Value;

const TD: &str = "edge.test";

/// This suite's ways of starting a [`SpiffeFixture`].
struct Suite;

impl Suite {
    async fn start(svid_lifetime_secs: u64) -> SpiffeFixture {
        Suite::start_with(|s| s.svid_lifetime_secs = svid_lifetime_secs).await
    }

    async fn start_with(tune: impl FnOnce(&mut SpiffeConfig)) -> SpiffeFixture {
        let modules = [("mod-a", edgeid_common::current_uid())];
        SpiffeFixture::start(TD, &modules, |_, spiffe| tune(spiffe)).await
    }
}

fn spiffe_cmd(socket: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeidctl"));
    cmd.arg("spiffe")
        .args(args)
        .env("SPIFFE_ENDPOINT_SOCKET", format!("unix://{socket}"));
    cmd
}

async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run edgeidctl"))
        .await
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fetch_write_validate_and_healthcheck_as_spire_agent_api_does() {
    let suite = Suite::start(3600).await;
    let socket = suite.socket();
    let id = format!("spiffe://{TD}/edge-1/mod-a");

    // fetch x509: spire-agent's text, and the files.
    let out_dir = suite.dir.path().join("svid");
    std::fs::create_dir(&out_dir).unwrap();
    let out = run(spiffe_cmd(
        &socket,
        &["fetch", "x509", "--write", out_dir.to_str().unwrap()],
    ))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("Received 1 svid after "), "{text}");
    assert!(text.contains(&format!("SPIFFE ID:\t\t{id}")), "{text}");
    assert!(
        text.contains("SVID Valid Until:\t") && text.contains(" +0000 UTC"),
        "{text}"
    );
    assert!(text.contains("CA #1 Valid After:\t"), "{text}");
    assert!(text.contains("Writing key #0 to file "), "{text}");
    let (chain, key, bundle) = (
        out_dir.join("svid.0.pem"),
        out_dir.join("svid.0.key"),
        out_dir.join("bundle.0.pem"),
    );
    assert_eq!(
        (mode(&chain), mode(&key), mode(&bundle)),
        (0o644, 0o600, 0o644)
    );
    let chain_pem = std::fs::read_to_string(&chain).unwrap();
    let bundle_pem = std::fs::read_to_string(&bundle).unwrap();
    for purpose in ["sslclient", "sslserver"] {
        edgeid_testkit::openssl::verify_chain(&bundle_pem, &chain_pem, purpose).unwrap();
    }
    edgeid_testkit::assert_leaf_certifies(
        &chain_pem,
        &std::fs::read_to_string(&key).unwrap(),
        "the files fetch x509 --write leaves",
    );

    // --output json: protobuf's JSON names, bytes in base64.
    let out = run(spiffe_cmd(&socket, &["fetch", "x509", "--output", "json"])).await;
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["svids"][0]["spiffe_id"], id.as_str());
    assert!(answer["svids"][0]["x509_svid_key"].as_str().unwrap().len() > 40);

    // fetch jwt --write, then validate: for its audience, not another.
    let out = run(spiffe_cmd(
        &socket,
        &[
            "fetch",
            "jwt",
            "--audience",
            "backend",
            "--write",
            out_dir.to_str().unwrap(),
        ],
    ))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!("token({id}):\n\t")),
        "{}",
        stdout(&out)
    );
    let token_file = out_dir.join("jwt_svid.0.token");
    assert_eq!(mode(&token_file), 0o600);
    assert_eq!(mode(&out_dir.join("jwt_bundle.0.json")), 0o644);
    let token = std::fs::read_to_string(&token_file).unwrap();
    let out = run(spiffe_cmd(
        &socket,
        &["validate", "jwt", "--audience", "backend", &token],
    ))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("SVID is valid.\nSPIFFE ID : {id}\n")),
        "{text}"
    );
    assert!(text.contains("\"aud\":[\"backend\"]"), "{text}");
    for (audience, token, why) in [
        ("someone-else", token.as_str(), "aud"),
        ("backend", "not.a-token", "not valid"),
    ] {
        let out = run(spiffe_cmd(
            &socket,
            &["validate", "jwt", "--audience", audience, "--svid", token],
        ))
        .await;
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("SVID is not valid: "),
            "{}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
    }

    // healthcheck, through SPIFFE_ENDPOINT_SOCKET alone.
    let out = run(spiffe_cmd(&socket, &["healthcheck"])).await;
    assert!(out.status.success(), "{}", stderr(&out));

    // Failures exit 1 and say what failed.
    let missing = suite.dir.path().join("no-such-dir");
    let blocked = suite.dir.path().join("a-file");
    std::fs::write(&blocked, b"").unwrap();
    // (A usage error is clap's exit 2, as spire-agent's flag parsing
    // exits non-zero; every failure of the request itself is 1.)
    for (args, said, code) in [
        (
            vec!["fetch", "x509", "--write", missing.to_str().unwrap()],
            "cannot write",
            1,
        ),
        (
            vec!["fetch", "x509", "--write", blocked.to_str().unwrap()],
            "cannot write",
            1,
        ),
        (
            vec!["--socket", "/nonexistent/spiffe.sock", "healthcheck"],
            "unhealthy",
            1,
        ),
        (
            vec!["--socket", "/nonexistent/spiffe.sock", "fetch", "x509"],
            "cannot reach the Workload API",
            1,
        ),
        (vec!["fetch", "jwt"], "--audience", 2),
    ] {
        let out = run(spiffe_cmd(&socket, &args)).await;
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        assert!(stderr(&out).contains(said), "{args:?}: {}", stderr(&out));
    }
    // --output json still writes the files --write asks for (it did not).
    let json_dir = suite.dir.path().join("svid-json");
    std::fs::create_dir(&json_dir).unwrap();
    let out = run(spiffe_cmd(
        &socket,
        &[
            "--output",
            "json",
            "fetch",
            "x509",
            "--write",
            json_dir.to_str().unwrap(),
        ],
    ))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(answer["svids"][0]["spiffe_id"], id);
    assert_eq!(
        std::fs::read_to_string(json_dir.join("svid.0.pem")).unwrap(),
        std::fs::read_to_string(&chain).unwrap(),
        "the same SVID, written"
    );
    assert_eq!(mode(&json_dir.join("svid.0.key")), 0o600);
    assert!(!missing.exists());

    // A local user who is no module gets nothing, and exit 1.
    if edgeid_testkit::is_root() {
        for args in [vec!["healthcheck"], vec!["fetch", "x509"]] {
            let mut cmd = spiffe_cmd(&socket, &args);
            cmd.uid(65534).gid(65534);
            let out = run(cmd).await;
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            assert!(
                stderr(&out).contains("PermissionDenied"),
                "{}",
                stderr(&out)
            );
            assert!(out.stdout.is_empty());
        }
    } else {
        eprintln!("not root: the stranger's refusal is tested by workloadapi/tests/spiffe.rs only");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_prints_each_rotation_with_its_serial() {
    // 4 s SVIDs renew after about 2 s.
    let suite = Suite::start(4).await;
    let mut cmd = spiffe_cmd(&suite.socket(), &["watch"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let serials = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut serials = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(serial) = line.strip_prefix("Serial:\t\t\t") {
                serials.push(serial.to_owned());
                if serials.len() == 2 {
                    break;
                }
            }
        }
        serials
    });
    let serials = tokio::time::timeout(std::time::Duration::from_secs(20), serials)
        .await
        .expect("two updates within 20 s")
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(serials.len(), 2);
    assert_ne!(serials[0], serials[1], "a rotation is a new certificate");
}

/// Polls `check` every 100 ms for up to `secs`.
async fn eventually(secs: u64, what: &str, check: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} within {secs} s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helper_rewrites_files_on_rotation_and_tells_each_consumer() {
    edgeid_testkit::require_tool("openssl", "openssl");
    let suite = Suite::start(4).await;
    let root = suite.dir.path();
    let (a, b) = (root.join("a"), root.join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    // Consumer a's command checks, at each rotation, that the key file is
    // the certificate file's key (openssl), reading the certificate first.
    let check = format!(
        "c=$(openssl x509 -noout -pubkey -in {a}/svid.pem); k=$(openssl pkey -pubout -in {a}/svid_key.pem); \
         s=$(openssl x509 -noout -serial -in {a}/svid.pem); \
         if [ \"$c\" = \"$k\" ]; then echo \"match $s\"; else echo \"MISMATCH $s\"; fi >> {a}/rotations",
        a = a.display()
    );
    // Consumer b is a process that reloads on SIGHUP.
    let hups = b.join("hups");
    let pid_file = b.join("server.pid");
    let mut server = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap 'echo hup >> {}' HUP; echo $$ > {}; while true; do sleep 0.1; done",
            hups.display(),
            pid_file.display()
        ))
        .spawn()
        .unwrap();
    eventually(5, "the server's pid file", || pid_file.exists()).await;
    let config = root.join("helper.toml");
    std::fs::write(
        &config,
        format!(
            "[[consumer]]\nname = \"a\"\ndir = \"{a}\"\ncombined_file = \"combined.pem\"\n\
             on_rotation = {{ command = [\"sh\", \"-c\", {check:?}] }}\n\
             [[consumer]]\nname = \"b\"\ndir = \"{b}\"\ncert_file = \"tls.crt\"\nkey_file = \"tls.key\"\n\
             on_rotation = {{ signal = \"SIGHUP\", pid_file = \"{pid}\" }}\n\
             [[consumer]]\nname = \"gone\"\ndir = \"{b}\"\ncert_file = \"g.crt\"\nkey_file = \"g.key\"\nbundle_file = \"g.pem\"\n\
             on_rotation = {{ signal = \"SIGHUP\", pid_file = \"{root}/no-such.pid\" }}\n",
            a = a.display(),
            b = b.display(),
            pid = pid_file.display(),
            root = root.display(),
        ),
    )
    .unwrap();
    let mut helper = spiffe_cmd(
        &suite.socket(),
        &["helper", "--config", config.to_str().unwrap()],
    );
    helper.stderr(Stdio::piped());
    let mut helper = helper.spawn().unwrap();
    let rotations = a.join("rotations");
    eventually(20, "three deliveries to consumer a", || {
        lines(&rotations).len() >= 3
    })
    .await;
    eventually(10, "consumer b's reloads", || lines(&hups).len() >= 2).await;
    let _ = helper.kill();
    let out = helper.wait_with_output().unwrap();
    let _ = server.kill();
    let _ = server.wait();

    let seen = lines(&rotations);
    assert!(seen.iter().all(|l| l.starts_with("match ")), "{seen:?}");
    let mut serials: Vec<&String> = seen.iter().collect();
    serials.dedup();
    assert!(serials.len() >= 2, "new certificates: {seen:?}");
    assert_eq!(mode(&a.join("svid_key.pem")), 0o600);
    assert_eq!(mode(&a.join("combined.pem")), 0o600);
    assert_eq!(mode(&b.join("tls.crt")), 0o644);
    let combined = std::fs::read_to_string(a.join("combined.pem")).unwrap();
    assert!(
        combined.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{combined}"
    );
    assert!(combined.contains("-----BEGIN CERTIFICATE-----"));
    // The consumer whose process is gone is named each time; the others go on.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("gone: cannot read pid file"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helper_refuses_configs_and_directories_it_cannot_use() {
    let suite = Suite::start(3600).await;
    let root = suite.dir.path();
    let dir = root.join("out");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.display();
    for (config, said) in [
        (format!("[[consumer]]\nname = \"x\"\ndir = \"{d}\"\nkey_mode = 0o644\n"), "lets every user read"),
        (format!("[[consumer]]\nname = \"x\"\ndir = \"{d}\"\nkey_file = \"../k\"\n"), "plain name"),
        (format!("[[consumer]]\nname = \"x\"\ndir = \"{d}\"\nrestart = true\n"), "restart"),
        (
            format!("[[consumer]]\nname = \"x\"\ndir = \"{d}\"\non_rotation = {{ signal = \"SIGKILL\", pid_file = \"/p\" }}\n"),
            "SIGKILL",
        ),
        (format!("[[consumer]]\nname = \"x\"\ndir = \"{d}/missing\"\n"), "cannot write"),
        // A directory that is there but takes no new files, even root's.
        ("[[consumer]]\nname = \"x\"\ndir = \"/proc\"\n".to_owned(), "cannot write consumer x's files in /proc"),
    ] {
        let path = root.join("helper.toml");
        std::fs::write(&path, &config).unwrap();
        let out = run(spiffe_cmd(&suite.socket(), &["helper", "--config", path.to_str().unwrap()])).await;
        assert_eq!(out.status.code(), Some(1), "{config}");
        assert!(stderr(&out).contains(said), "{config}: {}", stderr(&out));
    }
    // --once: the files, then exit 0.
    let path = root.join("helper.toml");
    std::fs::write(
        &path,
        format!("[[consumer]]\nname = \"x\"\ndir = \"{d}\"\n"),
    )
    .unwrap();
    let out = run(spiffe_cmd(
        &suite.socket(),
        &["helper", "--once", "--config", path.to_str().unwrap()],
    ))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    for name in ["svid.pem", "svid_key.pem", "svid_bundle.pem"] {
        assert!(dir.join(name).exists(), "{name}");
    }
    // A pid file whose process is gone: the files are written, the signal
    // fails and says why (ESRCH), and the helper goes on.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let pid_file = root.join("dead.pid");
    std::fs::write(&pid_file, format!("{dead}\n")).unwrap();
    std::fs::write(
        &path,
        format!(
            "[[consumer]]\nname = \"x\"\ndir = \"{d}\"\non_rotation = {{ signal = \"SIGHUP\", pid_file = \"{}\" }}\n",
            pid_file.display()
        ),
    )
    .unwrap();
    let out = run(spiffe_cmd(
        &suite.socket(),
        &["helper", "--once", "--config", path.to_str().unwrap()],
    ))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("cannot send SIGHUP to pid {dead}"))
            && stderr(&out).contains("No such process"),
        "{}",
        stderr(&out)
    );
}

/// The next message of a FetchX509Bundles stream, within 10 s.
async fn next_bundles(
    stream: &mut tonic::Streaming<edgeid_workloadapi::spiffe::proto::X509BundlesResponse>,
) -> edgeid_workloadapi::spiffe::proto::X509BundlesResponse {
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
        .await
        .expect("a bundle update within 10 s")
        .unwrap()
        .unwrap()
}

/// A self-signed CA of `trust_domain`, PEM.
fn foreign_ca(trust_domain: &str) -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{trust_domain} CA"));
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn federated_bundles_and_hints_reach_the_module_and_follow_their_files() {
    let dir = edgeid_testkit::temp_dir();
    let other = dir.path().join("other.pem");
    let first = foreign_ca("other.test");
    std::fs::write(&other, &first).unwrap();
    let other_path = other.clone();
    let suite = Suite::start_with(move |s| {
        s.federation.insert("other.test".into(), other_path);
        s.hints.insert("mod-a".into(), "internal".into());
        s.bundle_refresh_secs = 1;
    })
    .await;
    let socket = suite.socket();
    let out_dir = suite.dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let fetch = || {
        spiffe_cmd(
            &socket,
            &["fetch", "x509", "--write", out_dir.to_str().unwrap()],
        )
    };
    let out = run(fetch()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("Hint:\t\t\tinternal"), "{text}");
    assert!(text.contains("[other.test] CA #1 Valid After:\t"), "{text}");
    let written = out_dir.join("federated_bundle.0.0.pem");
    let der = |pem_text: &str| pem::parse(pem_text).unwrap().contents().to_vec();
    assert_eq!(
        der(&std::fs::read_to_string(&written).unwrap()),
        der(&first)
    );
    assert_eq!(mode(&written), 0o644);
    let out = run(spiffe_cmd(&socket, &["fetch", "jwt", "--audience", "x"])).await;
    assert!(
        stdout(&out).contains("hint(spiffe://edge.test/edge-1/mod-a):\n\tinternal"),
        "{}",
        stdout(&out)
    );

    // An open FetchX509Bundles stream has both trust domains' bundles.
    let mut grpc = edgeid_workloadapi::spiffe::client::connect(&socket)
        .await
        .unwrap();
    let mut bundles = grpc
        .fetch_x509_bundles(edgeid_workloadapi::spiffe::proto::X509BundlesRequest {})
        .await
        .unwrap()
        .into_inner();
    let now = next_bundles(&mut bundles).await;
    assert_eq!(
        now.bundles.get("spiffe://other.test"),
        Some(&der(&first)),
        "{:?}",
        now.bundles.keys()
    );
    assert!(
        now.bundles.contains_key("spiffe://edge.test"),
        "{:?}",
        now.bundles.keys()
    );

    // The other trust domain rolls its CA: the next read of the file is
    // served, and pushed on the open stream.
    let second = foreign_ca("other.test");
    std::fs::write(&other, &second).unwrap();
    let pushed = next_bundles(&mut bundles).await;
    assert_eq!(
        pushed.bundles.get("spiffe://other.test"),
        Some(&der(&second)),
        "pushed"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let out = run(fetch()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        der(&std::fs::read_to_string(&written).unwrap()),
        der(&second)
    );
    // A file that goes bad keeps the last good bundle.
    std::fs::write(&other, "not a bundle").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let out = run(fetch()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        der(&std::fs::read_to_string(&written).unwrap()),
        der(&second)
    );
}
