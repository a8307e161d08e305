//! Signatures verified by the `openssl` command, independently of aws-lc.

use std::path::Path;
use std::process::Command;

/// How a signature was made, in openssl's terms.
#[derive(Debug, Clone, Copy)]
pub enum Scheme {
    /// ECDSA, DER signature, over SHA-256.
    EcdsaSha256,
    /// ECDSA, DER signature, over SHA-384.
    EcdsaSha384,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RsaPkcs1Sha256,
    /// RSASSA-PSS with SHA-256 and a 32-byte salt.
    RsaPssSha256,
    /// Ed25519 over the message.
    Ed25519,
}

/// Whether `openssl` accepts `signature` over `message` for `public_pem`.
pub fn verify(scheme: Scheme, public_pem: &str, message: &[u8], signature: &[u8]) -> bool {
    let openssl = crate::require_tool("openssl", "openssl");
    let dir = crate::temp_dir();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).expect("write temp file");
        p
    };
    let key = write("pub.pem", public_pem.as_bytes());
    let data = write("data", message);
    let sig = write("sig", signature);
    let mut cmd = Command::new(openssl);
    let arg = |p: &Path| p.to_str().expect("utf-8 temp path").to_owned();
    match scheme {
        Scheme::Ed25519 => {
            cmd.args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
                .arg(arg(&key))
                .args(["-in", &arg(&data), "-sigfile", &arg(&sig)]);
        }
        _ => {
            let digest = if matches!(scheme, Scheme::EcdsaSha384) {
                "-sha384"
            } else {
                "-sha256"
            };
            cmd.args([
                "dgst",
                digest,
                "-verify",
                &arg(&key),
                "-signature",
                &arg(&sig),
            ]);
            if matches!(scheme, Scheme::RsaPssSha256) {
                cmd.args([
                    "-sigopt",
                    "rsa_padding_mode:pss",
                    "-sigopt",
                    "rsa_pss_saltlen:32",
                ]);
            }
            cmd.arg(arg(&data));
        }
    }
    let out = cmd.output().expect("run openssl");
    out.status.success()
}
