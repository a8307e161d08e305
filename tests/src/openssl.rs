//! Signatures verified by the `openssl` command, independently of aws-lc (and of
//! whatever HSM or TPM made them).

use std::path::{Path, PathBuf};
use std::process::Command;

use edgeid_keyd::api::{KeyHandle, SignAlgorithm};
use edgeid_keyd::KeydClient;
use sha2::{Digest, Sha256, Sha384};

/// `openssl ARGS`, which must succeed; its standard output.
pub fn run(args: &[&str]) -> Vec<u8> {
    let openssl = crate::require_tool("openssl", "openssl");
    let out = Command::new(openssl)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn text_of(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// A new EC P-256 key at `path`, PKCS#8 PEM: what `openssl genpkey`, and
/// the reference's libaziot-keys, write.
pub fn new_p256_key(path: &Path) {
    run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        text_of(path),
    ]);
}

/// A new P-256 key and a self-signed CA certificate for it named `cn`, in
/// `dir` as `<name>.key` and `<name>.pem`: (key file, certificate file).
pub fn new_p256_ca(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
    let (key, cert) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pem")),
    );
    new_p256_key(&key);
    self_signed_ca(&key, cn, &cert);
    (key, cert)
}

/// A new P-256 key and a v3 TLS client certificate (clientAuth; webpki
/// takes no v1 certificates) for `cn`, issued for 30 days by the CA whose
/// key and certificate files `ca` names, in `dir` as `<name>.key` and
/// `<name>.pem`: (key file, certificate file).
pub fn new_client_cert(
    dir: &Path,
    name: &str,
    cn: &str,
    ca: &(PathBuf, PathBuf),
) -> (PathBuf, PathBuf) {
    let (key, cert) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pem")),
    );
    let (csr, ext) = (
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.ext")),
    );
    new_p256_key(&key);
    let subj = format!("/CN={cn}");
    run(&[
        "req",
        "-new",
        "-key",
        text_of(&key),
        "-subj",
        &subj,
        "-out",
        text_of(&csr),
    ]);
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .expect("write the extensions");
    run(&[
        "x509",
        "-req",
        "-in",
        text_of(&csr),
        "-CA",
        text_of(&ca.1),
        "-CAkey",
        text_of(&ca.0),
        "-days",
        "30",
        "-set_serial",
        "7",
        "-extfile",
        text_of(&ext),
        "-out",
        text_of(&cert),
    ]);
    (key, cert)
}

/// A self-signed CA certificate (PEM, 30 days) for the key at `key`, at `out`.
pub fn self_signed_ca(key: &Path, common_name: &str, out: &Path) {
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        text_of(key),
        "-subj",
        &format!("/CN={common_name}"),
        "-days",
        "30",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        text_of(out),
    ]);
}

/// Whether `openssl` accepts `signature` over `message` for `public_pem`.
pub fn verify(
    algorithm: SignAlgorithm,
    public_pem: &str,
    message: &[u8],
    signature: &[u8],
) -> bool {
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
    let arg = |p: &Path| p.to_str().expect("utf-8 temp path").to_owned();
    let mut cmd = Command::new(openssl);
    match algorithm {
        SignAlgorithm::Ed25519 => {
            cmd.args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
                .arg(arg(&key))
                .args(["-in", &arg(&data), "-sigfile", &arg(&sig)]);
        }
        SignAlgorithm::HmacSha256 => panic!("openssl::verify checks signatures, not MACs"),
        _ => {
            let digest = if algorithm == SignAlgorithm::EcdsaSha384 {
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
            if algorithm == SignAlgorithm::RsaPssSha256 {
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
    cmd.output().expect("run openssl").status.success()
}

/// Fails the test unless `openssl` accepts the signature.
pub fn assert_verifies(
    algorithm: SignAlgorithm,
    public_pem: &str,
    message: &[u8],
    signature: &[u8],
) {
    assert!(
        verify(algorithm, public_pem, message, signature),
        "openssl rejects the {algorithm} signature over {:?}",
        String::from_utf8_lossy(message)
    );
}

/// Checks a key pair end to end through keyd: a signature over `message`, and
/// (but for Ed25519) one over its digest sent prehashed, each accepted by
/// openssl; a signature is refused for another message. Returns the public key PEM.
pub async fn check_signing(
    client: &KeydClient,
    handle: &KeyHandle,
    algorithm: SignAlgorithm,
    message: &[u8],
) -> String {
    let pem = client.public_key(handle).await.expect("public key").pem;
    let sig = client
        .sign(handle, algorithm, message, false)
        .await
        .expect("sign");
    assert!(
        verify(algorithm, &pem, message, &sig),
        "{algorithm}: openssl rejects the signature"
    );
    let mut other = message.to_vec();
    other[0] ^= 1;
    assert!(
        !verify(algorithm, &pem, &other, &sig),
        "{algorithm}: openssl accepts it for another message"
    );
    if algorithm != SignAlgorithm::Ed25519 {
        let digest = match algorithm {
            SignAlgorithm::EcdsaSha384 => Sha384::digest(message).to_vec(),
            _ => Sha256::digest(message).to_vec(),
        };
        let sig = client
            .sign(handle, algorithm, &digest, true)
            .await
            .expect("sign prehashed");
        assert!(
            verify(algorithm, &pem, message, &sig),
            "{algorithm} prehashed: openssl rejects the signature"
        );
    }
    pem
}

/// Sends `n` sign requests at once over `handles` (round robin, ECDSA-SHA256
/// keys) and checks every signature with openssl.
pub async fn check_concurrent_signing(client: &KeydClient, handles: &[KeyHandle], n: usize) {
    let mut pems = Vec::new();
    for h in handles {
        pems.push(client.public_key(h).await.expect("public key").pem);
    }
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            let handle = handles[i % handles.len()].clone();
            tokio::spawn(async move {
                let msg = format!("message {i}").into_bytes();
                let sig = client
                    .sign(&handle, SignAlgorithm::EcdsaSha256, &msg, false)
                    .await;
                (i, msg, sig)
            })
        })
        .collect();
    for t in tasks {
        let (i, msg, sig) = t.await.expect("sign task");
        let sig = sig.unwrap_or_else(|e| panic!("concurrent request {i}: {e}"));
        assert_verifies(
            SignAlgorithm::EcdsaSha256,
            &pems[i % handles.len()],
            &msg,
            &sig,
        );
    }
}

/// `openssl verify -CAfile <bundle> [-untrusted <intermediates>] -purpose <p>`
/// on a chain PEM (leaf first): Ok, or openssl's complaint.
pub fn verify_chain(trust_bundle: &str, chain_pem: &str, purpose: &str) -> Result<(), String> {
    let openssl = crate::require_tool("openssl", "openssl");
    let dir = crate::temp_dir();
    let blocks = pem::parse_many(chain_pem).expect("chain PEM");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    };
    let ca = write("ca.pem", trust_bundle);
    let leaf = write("leaf.pem", &pem::encode(&blocks[0]));
    let rest: String = blocks[1..].iter().map(pem::encode).collect();
    let mut cmd = Command::new(openssl);
    cmd.arg("verify")
        .arg("-CAfile")
        .arg(&ca)
        .args(["-purpose", purpose]);
    if !rest.is_empty() {
        cmd.arg("-untrusted").arg(write("chain.pem", &rest));
    }
    let out = cmd.arg(&leaf).output().expect("run openssl verify");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
