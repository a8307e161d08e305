//! No secret in any log, at any level, nor in any error answer; and every
//! file and socket with the modes the security model promises.
//!
//! The whole suite runs in dev mode at `EDGEID_LOG=trace`, once on the
//! software store and once on a SoftHSM token, and is made to handle every
//! kind of secret it has: imported key bytes (and malformed imports), the
//! plaintext of an encryption, the private keys of module certificates and
//! of an X.509-SVID, the software store's master key and handle secret, the
//! token's PIN. Then its captured stderr and stdout, and every answer it
//! gave, are searched for each secret in every encoding it could be printed in.

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use edgeid_common::client::UdsClient;
use http::{Method, StatusCode};

/// A dev mode whose stderr goes to a file.
struct Dev {
    child: Child,
    dir: tempfile::TempDir,
    log: PathBuf,
    stdout: String,
    genid: String,
}

impl Dev {
    fn start(extra: &[&str], env: &[(String, String)], log_dir: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("edgeid-sec-")
            .tempdir_in("/tmp")
            .unwrap();
        let log = log_dir.join("dev.log");
        let mut env = env.to_vec();
        env.push(("EDGEID_LOG".into(), "trace".into()));
        let (child, stdout) = support::start_dev(
            dir.path(),
            extra,
            &env,
            Stdio::from(std::fs::File::create(&log).unwrap()),
        );
        assert!(
            stdout.contains("Running;"),
            "dev mode did not start: {stdout}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let genid = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export IOTEDGE_MODULEGENERATIONID="))
            .expect("generation id printed")
            .to_owned();
        Self {
            child,
            dir,
            log,
            stdout,
            genid,
        }
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Stops it with SIGINT and returns everything it wrote.
    async fn stop(mut self) -> String {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "dev mode did not stop on SIGINT");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        format!(
            "{}\n{}",
            self.stdout,
            std::fs::read_to_string(&self.log).unwrap()
        )
    }
}

/// What the run must never print, and what it did print.
#[derive(Default)]
struct Secrets {
    /// (what, bytes) pairs to look for.
    secrets: Vec<(String, Vec<u8>)>,
    /// Every answer the daemons gave, to search as well (but those that
    /// carry a secret to its owner by design).
    answers: Vec<String>,
}

impl Secrets {
    fn add(&mut self, what: &str, bytes: &[u8]) {
        self.secrets.push((what.to_owned(), bytes.to_vec()));
    }

    /// A request whose answer is kept for the search.
    async fn request(
        &mut self,
        socket: &Path,
        method: Method,
        path: &str,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        let (status, bytes) = UdsClient::new(socket)
            .raw(method, path, Bytes::from(body.to_string()))
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        self.answers
            .push(String::from_utf8_lossy(&bytes).into_owned());
        let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, value)
    }

    /// Fails naming every secret found in `text`, and in which form.
    fn assert_absent(&self, text: &str, run: &str) {
        let b64 = base64::engine::general_purpose::STANDARD;
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut found = Vec::new();
        for (what, bytes) in &self.secrets {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let mut forms = vec![
                ("hex", hex.clone()),
                ("HEX", hex.to_uppercase()),
                ("base64", b64.encode(bytes).trim_end_matches('=').to_owned()),
                ("base64url", b64url.encode(bytes)),
                ("debug bytes", format!("{bytes:?}")),
            ];
            if let Ok(text) = std::str::from_utf8(bytes) {
                forms.push(("text", text.to_owned()));
            }
            for (form, needle) in forms {
                if needle.len() >= 8 && text.contains(&needle) {
                    found.push(format!("{what} as {form}"));
                }
            }
        }
        assert!(found.is_empty(), "{run}: secrets in the output: {found:?}");
    }

    /// Searches the log and every answer.
    fn check(&self, log: &str, run: &str) {
        assert!(
            log.contains("TRACE") || log.contains("DEBUG"),
            "{run}: the log was not captured at trace level"
        );
        self.assert_absent(log, run);
        self.assert_absent(&self.answers.join("\n"), &format!("{run} (answers)"));
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    bytes
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The DER inside a PEM block.
fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

/// Makes the running suite handle every kind of secret it can, and records them.
/// `on_token`: every key is on a PKCS#11 token, where the workload API's
/// encryption (a key derived outside the token) is refused, so it is skipped.
async fn exercise(dev: &Dev, secrets: &mut Secrets, on_token: bool) {
    let keyd = dev.socket("keyd.sock");
    let workload = dev.socket("workload.sock");

    // Imported key bytes: used, then refused in malformed imports.
    let imported = random_bytes(32);
    secrets.add("imported HMAC key", &imported);
    let (status, answer) = secrets
        .request(
            &keyd,
            Method::POST,
            "/v1/key",
            serde_json::json!({"id": "secret/imported", "type": "hmac-sha256", "import": b64(&imported)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = secrets
        .request(
            &keyd,
            Method::POST,
            "/v1/sign",
            serde_json::json!({"handle": answer["handle"], "algorithm": "hmac-sha256", "data": b64(b"x")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let short = random_bytes(20);
    secrets.add("AES key of a wrong length", &short);
    let not_base64 = "sekrit-NOT-base64-7f3a9c1e!!";
    secrets.add("an import that is not base64", not_base64.as_bytes());
    let unknown_field = random_bytes(32);
    secrets.add("an import beside an unknown field", &unknown_field);
    for body in [
        serde_json::json!({"id": "secret/short", "type": "aes-256-gcm", "import": b64(&short)}),
        serde_json::json!({"id": "secret/text", "type": "hmac-sha256", "import": not_base64}),
        serde_json::json!({"id": "secret/extra", "type": "hmac-sha256", "import": b64(&unknown_field), "bogus": 1}),
        serde_json::json!({"id": "secret/type", "type": "rot13", "import": b64(&unknown_field)}),
    ] {
        let (status, answer) = secrets.request(&keyd, Method::POST, "/v1/key", body).await;
        assert!(status.is_client_error(), "{status}: {answer}");
    }

    // A module's plaintext through the workload API.
    let genid = &dev.genid;
    if !on_token {
        encrypt(&workload, genid, secrets).await;
    }
    // Module certificates' private keys (handed to the module by design:
    // looked for in the log only).
    let mut handed_out = Vec::new();
    for (path, body) in [
        (
            "/modules/dev-module/certificate/identity?api-version=2022-08-03".to_owned(),
            serde_json::json!({}),
        ),
        (
            format!("/modules/dev-module/genid/{genid}/certificate/server?api-version=2022-08-03"),
            serde_json::json!({"commonName": "dev-module.local", "expiration": "2099-01-01T00:00:00Z"}),
        ),
    ] {
        let (status, answer) = secrets.request(&workload, Method::POST, &path, body).await;
        assert!(status.is_success(), "{path}: {status} {answer}");
        let key = answer["privateKey"]["bytes"].as_str().unwrap();
        handed_out.push(("module certificate key", pem_der(key)));
        secrets.answers.pop();
    }

    // An X.509-SVID's private key.
    let mut spiffe = support::spiffe_client(&dev.stdout).await;
    let svid = support::first_x509_svid(&mut spiffe).await;
    handed_out.push(("X.509-SVID key", svid.svids[0].x509_svid_key.clone()));
    for (what, der) in handed_out {
        secrets.add(what, &der);
    }
}

/// Encrypts and decrypts a secret plaintext as dev-module.
async fn encrypt(workload: &Path, genid: &str, secrets: &mut Secrets) {
    let plaintext = b"the module's secret plaintext 5d2b8e";
    secrets.add("encrypted plaintext", plaintext);
    let (status, answer) = secrets
        .request(
            workload,
            Method::POST,
            &format!("/modules/dev-module/genid/{genid}/encrypt?api-version=2022-08-03"),
            serde_json::json!({"plaintext": b64(plaintext), "initializationVector": b64(b"iv-0123456789")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = secrets
        .request(
            workload,
            Method::POST,
            &format!("/modules/dev-module/genid/{genid}/decrypt?api-version=2022-08-03"),
            serde_json::json!({"ciphertext": answer["ciphertext"], "initializationVector": b64(b"iv-0123456789")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["plaintext"], b64(plaintext));
    // That answer carries the plaintext by design; the log must not.
    secrets.answers.pop();
}

/// Files and sockets as the security model has them: state and secrets in
/// 0700 directories, every file in them 0600 (certificates and bundles,
/// which are public, may be readable), sockets not open to others.
fn check_modes(dir: &Path) {
    let mut bad = Vec::new();
    for sub in ["keyd", "certd", "identityd", "secrets"] {
        let root = dir.join(sub);
        if sub == "secrets" && !root.exists() {
            // Only the software store has a master key.
            continue;
        }
        assert!(root.is_dir(), "{} missing", root.display());
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            if mode != 0o700 {
                bad.push(format!("{} is {mode:o}, not 700", d.display()));
            }
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                let mode = meta.permissions().mode() & 0o777;
                if meta.is_dir() {
                    stack.push(path);
                } else if mode != 0o600 && !(is_public(&path) && mode == 0o644) {
                    bad.push(format!("{} is {mode:o}, not 600", path.display()));
                }
            }
        }
    }
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_socket() && meta.permissions().mode() & 0o007 != 0 {
            bad.push(format!(
                "socket {} is {:o}: open to every user",
                path.display(),
                meta.permissions().mode() & 0o777
            ));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

fn is_public(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "pem")
}

fn secret_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    ["secrets", "keyd"]
        .iter()
        .flat_map(|sub| edgeid_testkit::faults::snapshot(&dir.join(sub)))
        .map(|(path, bytes)| (format!("contents of {}", path.display()), bytes))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn software_store_no_secret_in_logs_or_answers_and_private_modes() {
    let logs = tempfile::tempdir().unwrap();
    let dev = Dev::start(&[], &[], logs.path());
    let mut secrets = Secrets::default();
    exercise(&dev, &mut secrets, false).await;
    check_modes(dev.dir.path());
    // The store's master key, its handle secret, and every key file.
    let files = secret_files(dev.dir.path());
    assert!(
        files.iter().any(|(what, _)| what.contains("master.key")),
        "no master key under secrets/: {:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for (what, bytes) in files {
        secrets.add(&what, &bytes);
    }
    let output = dev.stop().await;
    secrets.check(&output, "software store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_store_no_pin_or_secret_in_logs_or_answers() {
    let pin = "pin-4e7a19c3d2";
    let hsm = edgeid_testkit::SoftHsm::with_pin(pin);
    hsm.init_token("secrets");
    let logs = tempfile::tempdir().unwrap();
    let library = edgeid_testkit::SoftHsm::library();
    let pin_file = hsm.pin_file();
    let dev = Dev::start(
        &[
            "--backend",
            "pkcs11",
            "--pkcs11-lib",
            library.to_str().unwrap(),
            "--token",
            "secrets",
            "--pin-file",
            pin_file.to_str().unwrap(),
        ],
        &hsm.env(),
        logs.path(),
    );
    let mut secrets = Secrets::default();
    secrets.add("the token's PIN", pin.as_bytes());
    exercise(&dev, &mut secrets, true).await;
    check_modes(dev.dir.path());
    let output = dev.stop().await;
    secrets.check(&output, "pkcs11 store");
}
