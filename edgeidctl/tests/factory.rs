//! The factory line against a running device (dev mode's keyd and certd):
//! `factory init` makes the key and a CSR that openssl accepts, the line's CA
//! signs it, `import-cert` refuses a certificate for another key or from
//! another CA and installs the right one, `verify` proves it, and every step
//! can be run again.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, IsCa, Issuer,
    KeyPair,
};

struct Device {
    dir: tempfile::TempDir,
    child: Child,
}

impl Device {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("edgeid-fac-")
            .tempdir_in("/tmp")
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_edgeidctl"))
            .args(["dev", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        for line in BufReader::new(stdout).lines() {
            if line.unwrap().starts_with("Running;") {
                break;
            }
        }
        Self { dir, child }
    }

    fn factory(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_edgeidctl"))
            .arg("factory")
            .arg("--run-dir")
            .arg(self.dir.path())
            .args([
                "--key-id",
                "factory-id",
                "--cert-id",
                "factory-id",
                "--state-dir",
            ])
            .arg(self.dir.path().join("factory"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

fn line_ca(cn: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let pem = p.self_signed(&key).unwrap().pem();
    (p, key, pem)
}

fn sign_csr(csr_pem: &str, ca: &(CertificateParams, KeyPair, String)) -> String {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
    csr.signed_by(&Issuer::from_params(&ca.0, &ca.1))
        .unwrap()
        .pem()
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_factory_line_provisions_a_device_and_refuses_wrong_certificates() {
    let device = Device::start();
    let d = device.dir.path();
    let out = d.join("line");
    let (ok, stdout, err) = device.factory(&[
        "--output",
        "json",
        "init",
        "--registration-id",
        "line-007",
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stdout}{err}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["registration_id"], "line-007");
    let csr = report["csr_pem"].as_str().unwrap().to_owned();
    assert!(out.join("line-007.csr.pem").exists() && out.join("line-007.json").exists());
    // An independent check of the CSR: openssl verifies its signature.
    let csr_file = write(d, "req.pem", &csr);
    let verified = Command::new("openssl")
        .args(["req", "-verify", "-noout", "-in"])
        .arg(&csr_file)
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    // Again: the same key.
    let (ok, again, _) =
        device.factory(&["--output", "json", "init", "--registration-id", "line-007"]);
    assert!(ok);
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(
        again["public_key_pem"], report["public_key_pem"],
        "init is idempotent"
    );

    let ca = line_ca("factory line CA");
    let bundle = write(d, "ca.pem", &ca.2);
    // A certificate for another key: refused, nothing installed.
    let stranger = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "line-007");
    let other_csr = p.serialize_request(&stranger).unwrap().pem().unwrap();
    let wrong_key = write(d, "wrong-key.pem", &sign_csr(&other_csr, &ca));
    let (ok, _, err) = device.factory(&[
        "import-cert",
        wrong_key.to_str().unwrap(),
        "--ca-bundle",
        bundle.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("certifies another key") && err.contains("nothing was installed"),
        "{err}"
    );
    // The right key, but from another CA: refused.
    let rogue = line_ca("rogue CA");
    let wrong_ca = write(d, "wrong-ca.pem", &sign_csr(&csr, &rogue));
    let (ok, _, err) = device.factory(&[
        "import-cert",
        wrong_ca.to_str().unwrap(),
        "--ca-bundle",
        bundle.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("does not chain"), "{err}");
    let (ok, _, err) = device.factory(&["verify"]);
    assert!(!ok && err.contains("import-cert"), "not done yet: {err}");

    let good = write(d, "good.pem", &sign_csr(&csr, &ca));
    let (ok, stdout, err) = device.factory(&[
        "import-cert",
        good.to_str().unwrap(),
        "--ca-bundle",
        bundle.to_str().unwrap(),
    ]);
    assert!(ok, "{stdout}{err}");
    let (ok, stdout, err) = device.factory(&["verify"]);
    assert!(ok && stdout.contains("verified"), "{stdout}{err}");
    // Importing the same certificate again is harmless.
    let (ok, _, _) = device.factory(&[
        "import-cert",
        good.to_str().unwrap(),
        "--ca-bundle",
        bundle.to_str().unwrap(),
    ]);
    assert!(ok);
    // A finished device is not redone by accident.
    let (ok, _, err) = device.factory(&["init"]);
    assert!(!ok && err.contains("--force"), "{err}");
}
