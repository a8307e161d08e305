//! The package on a booted Debian: a bookworm root file system
//! (`scripts/booted-rootfs`, cached under target/booted/) booted with
//! `systemd-nspawn -b`, commands run inside with `nsenter`. Inside it:
//! - the .deb installs with apt, its dependencies from the archive;
//! - every socket listens, `edgeidctl check` finds no failure, and each
//!   daemon runs as its own user;
//! - the reference's socket paths and unit names work: keys made through
//!   `/run/aziot/keyd.sock`, identities through `/run/aziot/identityd.sock`;
//! - a module user runs the unchanged azure-iot-device SDK against the
//!   workload socket and gets a SAS token keyd's aziot API confirms; a user
//!   who is no module is refused, and a user outside the socket's group
//!   cannot connect;
//! - after every unit restarts (some by the reference's names) and after the
//!   package is reinstalled, every key signs as before (HMAC: the same MAC;
//!   ECDSA: verified with the public key read before);
//! - the reference's `/etc/aziot/config.toml` (manual provisioning to a
//!   test hub) and a principal drop-in in `/etc/aziot/identityd/config.d`
//!   are honoured after `systemctl restart aziot-identityd`;
//! - `systemd-analyze security` rates every service at most 2.0 ("OK");
//! - purge removes state and config.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use edgeid_testkit::aziot::{b64, unb64};
use edgeid_testkit::require_tool;
use serde_json::{json, Value};

fn top() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// This build's binary directory: the package holds its edgeidctl.
fn bin_dir() -> PathBuf {
    let edgeidctl = edgeid_testkit::process::build_binary("edgeidctl");
    edgeidctl.parent().expect("a directory").to_owned()
}

/// A booted copy of the cached root file system.
struct Booted {
    nspawn: Child,
    leader: u32,
    _root: tempfile::TempDir,
}

impl Booted {
    fn boot(rootfs: &Path, files: &[(&Path, &str)]) -> Self {
        let root = edgeid_testkit::temp_dir();
        let tree = root.path().join("root");
        let out = Command::new("cp")
            .arg("-a")
            .arg(rootfs)
            .arg(&tree)
            .output()
            .unwrap();
        assert!(out.status.success(), "copy the rootfs: {}", text(&out));
        let dest = tree.join("opt/edgeid-test");
        std::fs::create_dir_all(&dest).unwrap();
        for (from, name) in files {
            std::fs::copy(from, dest.join(name))
                .unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        }
        let machine = format!("edgeid-booted-{}", std::process::id());
        let log = std::fs::File::create(root.path().join("console.log")).unwrap();
        // --keep-unit and --register=no: no host systemd or machined needed.
        let nspawn = Command::new("systemd-nspawn")
            .args(["-q", "-b", "--register=no", "--keep-unit"])
            .arg(format!("--machine={machine}"))
            .arg("-D")
            .arg(&tree)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run systemd-nspawn");
        let mut vm = Booted {
            leader: 0,
            nspawn,
            _root: root,
        };
        let started = Instant::now();
        vm.leader = loop {
            if let Some(pid) = vm.init_pid() {
                break pid;
            }
            if let Ok(Some(status)) = vm.nspawn.try_wait() {
                panic!("systemd-nspawn exited: {status}: {}", vm.console());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no init in the container: {}",
                vm.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        // Until systemd's own socket is up, systemctl cannot reach it.
        let state = loop {
            let out = vm.run(&["systemctl", "is-system-running", "--wait"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !state.is_empty() || started.elapsed() > Duration::from_secs(120) {
                break state;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(
            state,
            "running",
            "the container booted: {}",
            text(&vm.run(&["systemctl", "--failed", "--no-legend"]))
        );
        vm
    }

    /// The container's PID 1 (systemd), as seen from here.
    fn init_pid(&self) -> Option<u32> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.nspawn.id())).ok()?;
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for pid in children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
            {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "systemd" {
                    return Some(pid);
                }
            }
        }
        None
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self._root.path().join("console.log")).unwrap_or_default()
    }

    /// `argv` inside the container, with nothing of this environment but PATH.
    fn run(&self, argv: &[&str]) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.leader.to_string())
            .args([
                "-a",
                "--",
                "env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
            ])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// As `run`, which must succeed; its stdout.
    fn ok(&self, argv: &[&str]) -> String {
        let out = self.run(argv);
        assert!(out.status.success(), "{argv:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn sh(&self, script: &str) -> String {
        self.ok(&["sh", "-ec", script])
    }

    /// One HTTP request over `socket` as `user` (uds_http.py).
    fn http(
        &self,
        user: &str,
        socket: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let body = body.map(|b| b.to_string());
        let mut argv = vec![
            "runuser",
            "-u",
            user,
            "--",
            "python3",
            "/opt/edgeid-test/uds_http.py",
            socket,
            method,
            path,
        ];
        if let Some(b) = &body {
            argv.push(b);
        }
        let out = self.ok(&argv);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{argv:?}: {e}: {out}"))
    }

    /// As `http` as root, which must answer `status`; the body.
    fn call(
        &self,
        socket: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
        status: u64,
    ) -> Value {
        let answer = self.http("root", socket, method, path, body);
        assert_eq!(answer["status"], json!(status), "{method} {path}: {answer}");
        answer["body"].clone()
    }

    /// The last lines `service` logged.
    fn journal(&self, service: &str) -> String {
        text(&self.run(&["journalctl", "-q", "--no-pager", "-n", "30", "-u", service]))
    }

    fn main_pid(&self, service: &str) -> String {
        self.ok(&["systemctl", "show", "-p", "MainPID", "--value", service])
            .trim()
            .to_owned()
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        // SIGTERM: systemd-nspawn asks the container's systemd to power off.
        unsafe { libc::kill(self.nspawn.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

const KEYD: &str = "/run/aziot/keyd.sock";
const IDENTITYD: &str = "/run/aziot/identityd.sock";
const WORKLOAD: &str = "/run/edgeid/workload.sock";

/// What must sign as before after restarts and a reinstall.
struct Keys {
    hmac_handle: Value,
    mac: Vec<u8>,
    pair_id: &'static str,
    point: Vec<u8>,
    module_genid: String,
    module_digest: Value,
}

/// The EC point (aziot's `ec-point`) of key pair `id`, made if absent.
fn ec_point(vm: &Booted, id: &str) -> Vec<u8> {
    let pair = vm.call(
        KEYD,
        "POST",
        "/keypair?api-version=2020-09-01",
        Some(json!({ "keyId": id, "preferredAlgorithms": "ec-p256:*" })),
        200,
    );
    let point = vm.call(
        KEYD,
        "POST",
        "/parameters/ec-point?api-version=2020-09-01",
        Some(json!({ "keyHandle": pair["keyHandle"] })),
        200,
    );
    unb64(&point["value"])
}

fn make_keys(vm: &Booted, genid: &str) -> Keys {
    let key = vm.call(
        KEYD,
        "POST",
        "/key?api-version=2021-05-01",
        Some(json!({ "keyId": "booted-hmac", "keyBytes": b64(&[7; 32]), "usage": "sign" })),
        200,
    );
    let mac = sign_hmac(vm, &key["keyHandle"], b"booted");
    let point = ec_point(vm, "booted-pair");
    Keys {
        hmac_handle: key["keyHandle"].clone(),
        mac,
        pair_id: "booted-pair",
        point,
        module_genid: genid.to_owned(),
        module_digest: module_sign(vm, genid),
    }
}

fn sign_hmac(vm: &Booted, handle: &Value, message: &[u8]) -> Vec<u8> {
    let signed = vm.call(
        KEYD,
        "POST",
        "/sign?api-version=2020-09-01",
        Some(json!({ "keyHandle": handle, "algorithm": "HMAC-SHA256", "parameters": { "message": b64(message) } })),
        200,
    );
    unb64(&signed["signature"])
}

/// tempsensor's key asked to sign `data` through the workload API, by `user`.
fn module_sign_as(vm: &Booted, user: &str, genid: &str, data: &[u8]) -> Value {
    vm.http(
        user,
        WORKLOAD,
        "POST",
        &format!("/modules/tempsensor/genid/{genid}/sign?api-version=2019-01-30"),
        Some(json!({ "keyId": "primary", "algo": "HMACSHA256", "data": b64(data) })),
    )
}

/// The module's key through the workload API, as the module user.
fn module_sign(vm: &Booted, genid: &str) -> Value {
    let answer = module_sign_as(vm, "tempsensor", genid, b"booted");
    assert_eq!(answer["status"], json!(200), "{answer}");
    answer["body"]["digest"].clone()
}

fn keys_sign_as_before(vm: &Booted, keys: &Keys, when: &str) {
    assert_eq!(
        sign_hmac(vm, &keys.hmac_handle, b"booted"),
        keys.mac,
        "{when}: the HMAC key signs as before"
    );
    let pair = vm.call(
        KEYD,
        "GET",
        &format!("/keypair/{}?api-version=2020-09-01", keys.pair_id),
        None,
        200,
    );
    let digest: [u8; 32] = {
        use sha2::Digest as _;
        sha2::Sha256::digest(when.as_bytes()).into()
    };
    let signed = vm.call(
        KEYD,
        "POST",
        "/sign?api-version=2020-09-01",
        Some(json!({ "keyHandle": pair["keyHandle"], "algorithm": "ECDSA", "parameters": { "digest": b64(&digest) } })),
        200,
    );
    let verifier = p256::ecdsa::VerifyingKey::from_sec1_bytes(&keys.point).unwrap();
    let signature = p256::ecdsa::Signature::from_der(&unb64(&signed["signature"])).unwrap();
    use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
    verifier
        .verify_prehash(&digest, &signature)
        .unwrap_or_else(|e| panic!("{when}: the key pair is the one from before: {e}"));
    assert_eq!(
        module_sign(vm, &keys.module_genid),
        keys.module_digest,
        "{when}: the module's key signs as before"
    );
}

/// The reference's configuration on the device: `/etc/aziot/config.toml`
/// with manual provisioning (a connection string to the test hub, which
/// runs here on the host network the container shares) and a host
/// package's principal in `/etc/aziot/identityd/config.d`, honoured after
/// `systemctl restart aziot-identityd` alone: the device is the hub's, its
/// key (put in keyd through the reference's preloaded file) signs what the
/// hub verifies, and the drop-in's uid is its module and nothing more.
fn aziot_config_and_a_principal_drop_in(vm: &Booted) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cloud = rt.block_on(edgeid_testkit::cloud::CloudService::start(None));
    let key: Vec<u8> = (0u8..32).map(|b| b.wrapping_mul(7)).collect();
    cloud.add_sas_device("booted-dev", &key);
    vm.sh(&format!(
        "grep -qw localhost /etc/hosts 2>/dev/null || echo '127.0.0.1 localhost' >> /etc/hosts
         cat > /usr/local/share/ca-certificates/edgeid-test-cloud.crt <<'PEM'
{ca}
PEM
         update-ca-certificates >/dev/null
         useradd -r -G aziotid -s /usr/sbin/nologin hostmod
         useradd -r -G aziotid -s /usr/sbin/nologin hoststranger
         cat > /etc/aziot/config.toml <<'TOML'
hostname = \"booted-dev\"
[provisioning]
source = \"manual\"
connection_string = \"HostName={hub};DeviceId=booted-dev;SharedAccessKey={key}\"
TOML
         printf '[[principal]]\\nuid = %s\\nname = \"hostmod\"\\nidtype = [\"module\"]\\n' \"$(id -u hostmod)\" \\
             > /etc/aziot/identityd/config.d/50-hostmod.toml
         systemctl restart aziot-identityd",
        ca = cloud.tls_ca_pem,
        hub = cloud.hub,
        key = b64(&key),
    ));
    // Provisioning runs in the background: 503 until it is done.
    let until = Instant::now() + Duration::from_secs(60);
    let device = loop {
        let answer = vm.http(
            "root",
            IDENTITYD,
            "POST",
            "/identities/device?api-version=2020-09-01",
            Some(json!({ "type": "aziot" })),
        );
        if answer["status"] == json!(200) {
            break answer["body"].clone();
        }
        assert!(
            answer["status"] == json!(503) && Instant::now() < until,
            "{answer}\n{}\n{}",
            vm.journal("edgeid-identityd.service"),
            vm.journal("edgeid-keyd.service")
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let spec = &device["spec"];
    assert_eq!(
        spec["hubName"],
        json!(cloud.hub),
        "{device}\n{}",
        vm.journal("edgeid-identityd.service")
    );
    assert_eq!(spec["deviceId"], json!("booted-dev"), "{device}");
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(b"booted-dev\n1700000000");
    assert_eq!(
        sign_hmac(vm, &spec["auth"]["keyHandle"], b"booted-dev\n1700000000"),
        mac.finalize().into_bytes().to_vec(),
        "the device key is the connection string's, in keyd through /var/secrets/aziot/keyd/device-id"
    );
    let mode = vm.ok(&["stat", "-c", "%a %U", "/var/secrets/aziot/keyd/device-id"]);
    assert_eq!(mode.trim(), "600 aziotks", "as aziotctl writes it");
    // The drop-in's module, made by identityd itself (as the reference
    // makes an idtype module principal's) and registered with the hub (the
    // device's key signs what it verifies), read by the drop-in's uid as
    // its own identity; a module it is not, and a uid no drop-in names, refused.
    let until = Instant::now() + Duration::from_secs(30);
    while !cloud
        .modules_of("booted-dev")
        .contains(&"hostmod".to_owned())
    {
        assert!(
            Instant::now() < until,
            "identityd made no module for the drop-in's principal: {}",
            vm.journal("edgeid-identityd.service")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mine = vm.http(
        "hostmod",
        IDENTITYD,
        "GET",
        "/identities/identity?api-version=2020-09-01",
        None,
    );
    assert_eq!(mine["status"], json!(200), "{mine}");
    assert_eq!(mine["body"]["spec"]["moduleId"], json!("hostmod"), "{mine}");
    let other = vm.http(
        "hostmod",
        IDENTITYD,
        "GET",
        "/identities/modules/tempsensor?type=aziot&api-version=2020-09-01",
        None,
    );
    assert_eq!(other["status"], json!(403), "{other}");
    let stranger = vm.http(
        "hoststranger",
        IDENTITYD,
        "GET",
        "/identities/identity?api-version=2020-09-01",
        None,
    );
    assert_eq!(stranger["status"], json!(403), "{stranger}");
}

/// The reference's store file name of `id` (its ASCII letters and digits,
/// `-`, the id's SHA-256 in hex, the extension).
fn reference_name(id: &str, ext: &str) -> String {
    use sha2::Digest;
    let kept: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
    let hex: String = sha2::Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{kept}-{hex}.{ext}")
}

/// The Edge CA an aziot-identity-service left in `/var/lib/aziot`, owned by
/// its users as the reference's daemons kept it: after the units restart,
/// aziot-edged's key pair is that key (its EC point is the file's) and its
/// certificate that certificate.
fn the_edge_ca_aziot_left_is_taken_over(vm: &Booted, key: &Path, cert: &Path) {
    vm.sh(&format!(
        "install -d -o aziotks -g aziotks -m 0700 /var/lib/aziot/keyd /var/lib/aziot/keyd/keys
         install -o aziotks -g aziotks -m 0600 /opt/edgeid-test/aziot-edged-ca.key /var/lib/aziot/keyd/keys/{}
         install -d -o aziotcs -g aziotcs -m 0700 /var/lib/aziot/certd /var/lib/aziot/certd/certs
         install -o aziotcs -g aziotcs -m 0644 /opt/edgeid-test/aziot-edged-ca.cer /var/lib/aziot/certd/certs/{}
         systemctl restart aziot-keyd aziot-certd",
        reference_name("aziot-edged-ca", "key"),
        reference_name("aziot-edged-ca", "cer"),
    ));
    let point = ec_point(vm, "aziot-edged-ca");
    let spki = edgeid_testkit::openssl::run(&[
        "pkey",
        "-pubout",
        "-outform",
        "DER",
        "-in",
        key.to_str().unwrap(),
    ]);
    // A P-256 SubjectPublicKeyInfo ends with the 65-byte uncompressed point
    // (04 ‖ x ‖ y); the aziot API answers it compressed, as the reference
    // does (02 or 03 by y's parity ‖ x).
    let uncompressed = &spki[spki.len() - 65..];
    let mut compressed = vec![2 + (uncompressed[64] & 1)];
    compressed.extend_from_slice(&uncompressed[1..33]);
    assert_eq!(point, compressed, "aziot-edged-ca is the key aziot left");
    let served = vm.call(
        "/run/aziot/certd.sock",
        "GET",
        "/certificates/aziot-edged-ca?api-version=2020-09-01",
        None,
        200,
    );
    assert_eq!(
        pem_der(served["pem"].as_str().unwrap()),
        pem_der(&std::fs::read_to_string(cert).unwrap()),
        "aziot-edged-ca's certificate is the one aziot left"
    );
}

/// The IV edgeHub sends (a GUID's hex digits), aziot-edged's aad, the secret.
const SEALED_IV: &[u8] = b"3f2504e04f8911d39a0c0305e82c3301";
const SEALED_AAD: &[u8] = b"$edgeHub638356473476598735";
const SEALED: &[u8] = b"edgeHub's stored state";

/// A random 32-byte key into `key`, and [`SEALED`] encrypted with it as
/// libaziot-keys answers aziot-edged (`0x02 || AES-256-GCM || tag`, the
/// caller's IV as nonce) into `out`, by Python's cryptography.
fn seal_as_the_reference(key: &Path, out: &Path) {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let status = edgeid_testkit::clients::python()
        .args([
            "-c",
            "import base64, os, sys; \
             from cryptography.hazmat.primitives.ciphers.aead import AESGCM; \
             k = os.urandom(32); open(sys.argv[1], 'wb').write(k); \
             iv, aad, p = (base64.b64decode(x) for x in sys.argv[3:]); \
             open(sys.argv[2], 'wb').write(b'\\x02' + AESGCM(k).encrypt(iv, p, aad))",
        ])
        .arg(key)
        .arg(out)
        .args([SEALED_IV, SEALED_AAD, SEALED].map(b64))
        .status()
        .unwrap();
    assert!(status.success());
}

/// aziot-edged's encryption key, taken over: what it encrypted for edgeHub
/// through libaziot-keys decrypts through keyd's aziot API as before.
fn the_encryption_key_aziot_left_still_decrypts(vm: &Booted) {
    vm.sh(&format!(
        "install -o aziotks -g aziotks -m 0600 /opt/edgeid-test/master.key /var/lib/aziot/keyd/keys/{}
         systemctl restart aziot-keyd",
        reference_name("iotedge_master_encryption_id", "key"),
    ));
    let made = vm.call(
        "/run/aziot/keyd.sock",
        "POST",
        "/key?api-version=2020-09-01",
        Some(json!({ "keyId": "iotedge_master_encryption_id", "usage": "encrypt" })),
        200,
    );
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let sealed = vm.ok(&["base64", "-w0", "/opt/edgeid-test/sealed.bin"]);
    let opened = vm.call(
        "/run/aziot/keyd.sock",
        "POST",
        "/decrypt?api-version=2020-09-01",
        Some(json!({
            "keyHandle": made["keyHandle"],
            "algorithm": "AEAD",
            "parameters": { "iv": b64(SEALED_IV), "aad": b64(SEALED_AAD) },
            "ciphertext": sealed.trim(),
        })),
        200,
    );
    assert_eq!(
        opened["plaintext"],
        json!(b64(SEALED)),
        "edgeHub's secret, as before"
    );
}

fn pem_der(text: &str) -> Vec<u8> {
    pem::parse(text).expect("PEM").into_contents()
}

#[test]
fn the_package_on_a_booted_debian() {
    require_tool("systemd-nspawn", "systemd-container");
    require_tool("debootstrap", "debootstrap");
    require_tool("nsenter", "util-linux");
    assert!(edgeid_testkit::is_root(), "booting a container needs root");
    let rootfs = Command::new(top().join("scripts/booted-rootfs"))
        .output()
        .expect("run scripts/booted-rootfs");
    assert!(
        rootfs.status.success(),
        "scripts/booted-rootfs: {}",
        text(&rootfs)
    );
    let rootfs = PathBuf::from(String::from_utf8_lossy(&rootfs.stdout).trim());

    let out = edgeid_testkit::temp_dir();
    let deb = Command::new(top().join("packaging/build-deb"))
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(deb.status.success(), "build-deb: {}", text(&deb));
    let deb = PathBuf::from(String::from_utf8_lossy(&deb.stdout).trim());
    let python = top().join("tests/clients/python");
    // What an aziot-identity-service leaves: aziot-edged's Edge CA key
    // (PKCS#8 PEM, as libaziot-keys writes it) and certificate.
    let edge_ca = edgeid_testkit::temp_dir();
    let (ca_key, ca_cert) =
        edgeid_testkit::openssl::new_p256_ca(edge_ca.path(), "ca", "left by aziot");
    // And aziot-edged's encryption key, with a secret edgeHub encrypted
    // through it (libaziot-keys' v2 form, made here by Python's cryptography).
    let (master, sealed) = (
        edge_ca.path().join("master.key"),
        edge_ca.path().join("sealed.bin"),
    );
    seal_as_the_reference(&master, &sealed);
    let vm = Booted::boot(
        &rootfs,
        &[
            (&deb, "edgeid.deb"),
            (&python.join("uds_http.py"), "uds_http.py"),
            (&python.join("edge_module.py"), "edge_module.py"),
            (&ca_key, "aziot-edged-ca.key"),
            (&ca_cert, "aziot-edged-ca.cer"),
            (&master, "master.key"),
            (&sealed, "sealed.bin"),
        ],
    );

    // Installed with apt: the dependencies (libtss2, ...) come from the archive,
    // by lists fetched now (a cached root's lists name superseded versions).
    vm.ok(&["apt-get", "update", "-qq"]);
    vm.ok(&[
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "/opt/edgeid-test/edgeid.deb",
    ]);
    vm.ok(&[
        "systemctl",
        "is-active",
        "edgeid-keyd.socket",
        "edgeid-certd.socket",
        "edgeid-identityd.socket",
        "edgeid-workloadd.socket",
        "aziot-keyd.socket",
        "aziot-certd.socket",
        "aziot-identityd.socket",
        "aziot-tpmd.socket",
    ]);
    let check = vm.run(&["edgeidctl", "check"]);
    assert!(check.status.success(), "edgeidctl check: {}", text(&check));
    for (service, user) in [
        ("edgeid-keyd.service", "aziotks"),
        ("edgeid-certd.service", "aziotcs"),
        ("edgeid-identityd.service", "aziotid"),
        ("edgeid-workloadd.service", "edgeid-wl"),
    ] {
        let pid = vm.main_pid(service);
        assert_ne!(pid, "0", "{service} runs after edgeidctl check");
        let owner = vm.ok(&["stat", "-c", "%U", &format!("/proc/{pid}")]);
        assert_eq!(owner.trim(), user, "{service} runs as {user}");
    }
    for sock in ["keyd", "certd", "identityd"] {
        let mode = vm.ok(&[
            "stat",
            "-L",
            "-c",
            "%a %U %G",
            &format!("/run/aziot/{sock}.sock"),
        ]);
        let user = match sock {
            "keyd" => "aziotks",
            "certd" => "aziotcs",
            _ => "aziotid",
        };
        assert_eq!(
            mode.trim(),
            format!("660 {user} {user}"),
            "/run/aziot/{sock}.sock as the reference's"
        );
    }

    // The reference's config directories, as its package makes them
    // (`iotedge config apply` writes into them and fails if they are missing).
    for (dir, user) in [
        ("keyd", "aziotks"),
        ("certd", "aziotcs"),
        ("identityd", "aziotid"),
        ("tpmd", "aziottpm"),
    ] {
        let mode = vm.ok(&["stat", "-c", "%a %U", &format!("/etc/aziot/{dir}/config.d")]);
        assert_eq!(
            mode.trim(),
            format!("700 {user}"),
            "/etc/aziot/{dir}/config.d"
        );
    }

    // A module, made through the reference's identity API, and its user.
    vm.sh(
        "useradd -r -G edgeid-modules -s /usr/sbin/nologin tempsensor
         useradd -r -G edgeid-modules -s /usr/sbin/nologin intruder
         useradd -r -s /usr/sbin/nologin outsider
         printf '\\n[[module]]\\nname = \"tempsensor\"\\nuid = %s\\n' \"$(id -u tempsensor)\" >> /etc/edgeid/config.toml
         edgeidctl config apply",
    );
    let module = vm.call(
        IDENTITYD,
        "POST",
        "/identities/modules?api-version=2020-09-01",
        Some(json!({ "type": "aziot", "moduleId": "tempsensor" })),
        200,
    );
    let spec = &module["spec"];
    let genid = spec["genId"]
        .as_str()
        .unwrap_or_else(|| panic!("{module}"))
        .to_owned();
    let sdk_env = |user: &str| -> Vec<String> {
        vec![
            "runuser".into(),
            "-u".into(),
            user.into(),
            "--".into(),
            "env".into(),
            "IOTEDGE_WORKLOADURI=unix:///run/edgeid/workload.sock".into(),
            "IOTEDGE_MODULEID=tempsensor".into(),
            format!("IOTEDGE_MODULEGENERATIONID={genid}"),
            format!("IOTEDGE_DEVICEID={}", spec["deviceId"].as_str().unwrap()),
            format!(
                "IOTEDGE_IOTHUBHOSTNAME={}",
                spec["hubName"].as_str().unwrap()
            ),
            "IOTEDGE_GATEWAYHOSTNAME=gateway.local".into(),
            "IOTEDGE_APIVERSION=2019-01-30".into(),
            "IOTEDGE_AUTHSCHEME=sasToken".into(),
            "/opt/sdk/bin/python".into(),
            "/opt/edgeid-test/edge_module.py".into(),
        ]
    };
    let argv = sdk_env("tempsensor");
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let sdk = vm.run(&argv);
    assert!(
        sdk.status.success(),
        "the SDK as the module: {}\nthe trust bundle as the module: {}\nworkloadd: {}",
        text(&sdk),
        vm.http(
            "tempsensor",
            WORKLOAD,
            "GET",
            "/trust-bundle?api-version=2019-01-30",
            None
        ),
        vm.journal("edgeid-workloadd.service")
    );
    let answer: Value = serde_json::from_slice(&sdk.stdout).unwrap();
    // Its token's signature is the module key's HMAC (keyd's aziot API, by
    // the module's keyHandle) of what the token says it signs.
    let sas = answer["sas"].as_str().unwrap();
    let field = |name: &str| -> String {
        sas.trim_start_matches("SharedAccessSignature ")
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {sas}"))
            .to_owned()
    };
    let sig = percent_encoding::percent_decode_str(&field("sig"))
        .decode_utf8()
        .unwrap()
        .into_owned();
    let to_sign = format!("{}\n{}", field("sr"), field("se"));
    assert_eq!(
        b64(&sign_hmac(
            &vm,
            &spec["auth"]["keyHandle"],
            to_sign.as_bytes()
        )),
        sig,
        "the SDK's token is signed with the module's key"
    );
    // A user in the socket's group who is no module: the SDK is refused.
    let argv = sdk_env("intruder");
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let refused = vm.run(&argv);
    assert!(
        !refused.status.success(),
        "intruder acts as the module: {}",
        text(&refused)
    );
    let said = text(&refused);
    assert!(said.contains("SasToken"), "the SDK fails signing: {said}");
    // What it was told: 403, for the module's key, asked by the wrong uid.
    let answer = module_sign_as(&vm, "intruder", &genid, b"x");
    assert_eq!(answer["status"], json!(403), "{answer}");
    // A user outside the group cannot even connect.
    let outsider = vm.http(
        "outsider",
        WORKLOAD,
        "GET",
        "/trust-bundle?api-version=2019-01-30",
        None,
    );
    assert!(
        outsider["error"]
            .as_str()
            .is_some_and(|e| e.contains("PermissionError")),
        "{outsider}"
    );

    let keys = make_keys(&vm, &genid);
    // aziot-tpmd's socket is keyd's: it answers (this container has no
    // TPM, so that is what it says) and refuses an api-version it lacks.
    let none = vm.call(
        "/run/aziot/tpmd.sock",
        "GET",
        "/get_tpm_keys?api-version=2020-09-01",
        None,
        404,
    );
    assert!(
        none["message"]
            .as_str()
            .is_some_and(|m| m.contains("no TPM")),
        "{none}"
    );
    vm.call(
        "/run/aziot/tpmd.sock",
        "GET",
        "/get_tpm_keys?api-version=2099-01-01",
        None,
        400,
    );

    // Every unit restarted, keyd's and identityd's by the reference's names.
    let keyd_before = vm.main_pid("edgeid-keyd.service");
    vm.ok(&["systemctl", "restart", "aziot-keyd", "aziot-identityd"]);
    assert_ne!(
        vm.main_pid("edgeid-keyd.service"),
        keyd_before,
        "aziot-keyd is edgeid's keyd"
    );
    vm.sh(
        "systemctl stop edgeid-workloadd.socket edgeid-identityd.socket edgeid-certd.socket edgeid-keyd.socket
         systemctl start edgeid-keyd.socket edgeid-certd.socket edgeid-identityd.socket edgeid-workloadd.socket",
    );
    keys_sign_as_before(&vm, &keys, "after every unit restarted");

    vm.ok(&[
        "apt-get",
        "install",
        "-y",
        "-q",
        "--reinstall",
        "/opt/edgeid-test/edgeid.deb",
    ]);
    keys_sign_as_before(&vm, &keys, "after a reinstall");

    aziot_config_and_a_principal_drop_in(&vm);
    the_edge_ca_aziot_left_is_taken_over(&vm, &ca_key, &ca_cert);
    the_encryption_key_aziot_left_still_decrypts(&vm);

    // Each service's exposure, as systemd rates it (README, packaging/).
    for service in [
        "edgeid-keyd.service",
        "edgeid-certd.service",
        "edgeid-identityd.service",
        "edgeid-workloadd.service",
    ] {
        let out = vm.ok(&["systemd-analyze", "security", "--no-pager", service]);
        let score: f64 = out
            .lines()
            .find_map(|l| l.split("Overall exposure level for").nth(1))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level: {out}"));
        println!("systemd-analyze security {service}: {score}");
        assert!(score <= 2.0, "{service}: exposure {score} > 2.0:\n{out}");
    }

    vm.ok(&["apt-get", "purge", "-y", "-q", "edgeid"]);
    for gone in [
        "/var/lib/edgeid",
        "/var/secrets/edgeid",
        "/etc/edgeid",
        "/usr/bin/edgeidctl",
        "/run/aziot/keyd.sock",
        "/run/aziot/certd.sock",
        "/run/aziot/identityd.sock",
        "/run/aziot/tpmd.sock",
    ] {
        // Neither a file nor a link (test -e alone passes a dangling link).
        let out = vm.run(&["sh", "-c", "test -e \"$0\" || test -L \"$0\"", gone]);
        assert!(!out.status.success(), "{gone} is left after purge");
    }
}
