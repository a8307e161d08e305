//! The software store's master key sealed to a TPM (swtpm), checked from
//! outside: keys made under a master key file keep signing (openssl checks
//! the signatures against the public key they had before) once it is sealed
//! and the file is gone; a copy of the state on a second TPM opens nothing;
//! after a PCR moves, keyd refuses and names the PCR; `reseal` (the TPM
//! owner's authorization) brings the same keys back; a second TPM cannot
//! reseal.

use std::path::Path;
use std::time::Instant;

use edgeid_common::authz::Admins;
use edgeid_keyd::api::{KeyHandle, KeyPairSpec, SignAlgorithm, SymmetricKeyType};
use edgeid_keyd::config::MasterKey;
use edgeid_keyd::KeydConfig;
use edgeid_testkit::{openssl, temp_dir, KeydFixture, Swtpm};
use sha2::Digest;

/// keyd's config in `dir`: software keys, the master key sealed to `tpm`
/// (to `pcrs` of sha256), or in its file when `pcrs` is `None`.
fn config(dir: &Path, tpm: &Swtpm, pcrs: Option<&[u32]>) -> KeydConfig {
    let mut config = KeydFixture::config_in(dir);
    config.tpm = Some(tpm.keyd_config());
    if let Some(pcrs) = pcrs {
        config.software.master_key = MasterKey::Tpm;
        if !pcrs.is_empty() {
            config.software.seal_pcrs = [("sha256".to_owned(), pcrs.to_vec())].into();
        }
    }
    config
}

/// Why keyd does not open with `config`.
async fn refusal(config: &KeydConfig) -> String {
    match edgeid_keyd::Keyd::open(config, Admins::root_and_self()).await {
        Ok(_) => panic!("keyd opened"),
        Err(e) => e.to_string(),
    }
}

/// Why the software store of keyd on `config` stays shut. keyd itself
/// starts: it says so in its health, answers 503 with the reason for a
/// software key, and its TPM still serves (the attestation key), so a
/// verifier can see what changed.
async fn locked(config: &KeydConfig) -> String {
    let mut keyd = KeydFixture::configured(config.clone(), Admins::root_and_self()).await;
    let client = keyd.client();
    let err = client
        .create_key_pair("device-new", KeyPairSpec::EcP256)
        .await
        .expect_err("a software key from a locked store");
    let why = err.to_string();
    assert_eq!(
        err.status(),
        Some(http::StatusCode::SERVICE_UNAVAILABLE),
        "{why}"
    );
    let health = client.health().await.unwrap();
    assert_eq!(health.status, "degraded", "{health:?}");
    assert!(
        health.backends["software"].starts_with("locked: "),
        "{health:?}"
    );
    client.tpm_ak().await.expect("the TPM still serves");
    keyd.stop().await;
    why
}

/// An ECDSA key and an HMAC key, and what each makes of `MESSAGE`.
struct Made {
    ec: KeyHandle,
    pem: String,
    mac: KeyHandle,
    tag: Vec<u8>,
}

const MESSAGE: &[u8] = b"sealed, then unsealed";

async fn make_keys(keyd: &KeydFixture) -> Made {
    let client = keyd.client();
    let ec = client
        .create_key_pair("device-id", KeyPairSpec::EcP256)
        .await
        .unwrap();
    let pem = client.public_key(&ec).await.unwrap().pem;
    let mac = client
        .create_key("module-key", SymmetricKeyType::HmacSha256, None)
        .await
        .unwrap();
    let tag = client
        .sign(&mac, SignAlgorithm::HmacSha256, MESSAGE, false)
        .await
        .unwrap();
    Made { ec, pem, mac, tag }
}

/// The keys still are the keys `made` were: the ECDSA signature verifies
/// with the old public key, the HMAC tag is the same.
async fn same_keys(keyd: &KeydFixture, made: &Made, when: &str) {
    let client = keyd.client();
    let signature = client
        .sign(&made.ec, SignAlgorithm::EcdsaSha256, MESSAGE, false)
        .await
        .unwrap_or_else(|e| panic!("{when}: sign: {e}"));
    openssl::assert_verifies(SignAlgorithm::EcdsaSha256, &made.pem, MESSAGE, &signature);
    let tag = client
        .sign(&made.mac, SignAlgorithm::HmacSha256, MESSAGE, false)
        .await
        .unwrap();
    assert_eq!(tag, made.tag, "{when}: the HMAC key");
}

/// PCR 7 after a boot that measured `event`: reset, then extended once.
fn boot(tpm: &mut Swtpm, event: &[u8]) -> Vec<u8> {
    let digest = hex::encode(sha2::Sha256::digest(event));
    let out = tpm.tpm2_script(&format!("tpm2_pcrextend 7:sha256={digest}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pcr = sha2::Sha256::new();
    pcr.update([0u8; 32]);
    pcr.update(sha2::Sha256::digest(event));
    pcr.finalize().to_vec()
}

/// What `tpm2_print` makes of the sealed object's public area.
fn print_sealed_public(sealed_json: &str, work: &Path) -> String {
    use base64::Engine;
    let file: serde_json::Value = serde_json::from_str(sealed_json).unwrap();
    let body = base64::engine::general_purpose::STANDARD
        .decode(file["public"].as_str().unwrap())
        .unwrap();
    let mut public = (body.len() as u16).to_be_bytes().to_vec();
    public.extend(body);
    let path = work.join("sealed.pub");
    std::fs::write(&path, public).unwrap();
    let out = std::process::Command::new("tpm2_print")
        .args(["-t", "TPM2B_PUBLIC"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The policy tpm2-tools makes, in trial sessions, for PCRs sha256:0,7
/// after a boot that measured `event`, or the TPM owner.
fn policy_by_tpm2_tools(tpm: &mut Swtpm, work: &Path, event: &[u8]) -> Vec<u8> {
    let digest = hex::encode(sha2::Sha256::digest(event));
    let w = work.display();
    let out = tpm.tpm2_script(&format!(
        "set -e; cd {w}; tpm2_pcrextend 7:sha256={digest}; \
         tpm2_startauthsession -S s.ctx; tpm2_policypcr -S s.ctx -l sha256:0,7 -L pcr.policy; tpm2_flushcontext s.ctx; \
         tpm2_startauthsession -S s.ctx; tpm2_policysecret -S s.ctx -c o -L owner.policy; tpm2_flushcontext s.ctx; \
         tpm2_startauthsession -S s.ctx; tpm2_policyor -S s.ctx -l sha256:pcr.policy,owner.policy -L or.policy; tpm2_flushcontext s.ctx"
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(work.join("or.policy")).unwrap()
}

/// Copies a directory tree (the device's disk, as a thief would).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_key_sealed_to_pcrs_opens_only_on_its_tpm_in_its_state() {
    let mut tpm = Swtpm::start();
    let dir = temp_dir();
    boot(&mut tpm, b"boot loader 1");

    // A store under a master key file, as every device has had so far.
    let mut keyd =
        KeydFixture::configured(config(dir.path(), &tpm, None), Admins::root_and_self()).await;
    let made = make_keys(&keyd).await;
    keyd.stop().await;
    let master_file = keyd.config.software.master_key_file.clone();
    let old_master = std::fs::read(&master_file).unwrap();
    drop(keyd);

    // Sealed to sha256:0,7: the same keys, and no master key file left.
    let sealed_config = config(dir.path(), &tpm, Some(&[0, 7]));
    let mut keyd = KeydFixture::configured(sealed_config.clone(), Admins::root_and_self()).await;
    same_keys(&keyd, &made, "sealed").await;
    keyd.stop().await;
    drop(keyd);
    assert!(!master_file.exists(), "the master key file is removed");
    let sealed_path = dir.path().join("keyd/tpm/master-key.sealed");
    let sealed = std::fs::read_to_string(&sealed_path).unwrap();
    for shown in [hex::encode(&old_master), base64_of(&old_master)] {
        assert!(!sealed.contains(&shown), "the sealed file shows the key");
    }
    assert_mode(&sealed_path, 0o600);
    // tpm2-tools agrees on what it is sealed to: its own trial sessions make
    // the same policy, PolicyOR(PolicyPCR(sha256:0,7), PolicySecret(owner)),
    // and the object is fixedTPM, noDA and usable by that policy alone.
    let shown = print_sealed_public(&sealed, dir.path());
    let policy = policy_by_tpm2_tools(&mut tpm, dir.path(), b"boot loader 1");
    assert!(
        shown.contains(&format!("authorization policy: {}", hex::encode(&policy))),
        "{shown}"
    );
    for attribute in ["fixedtpm", "fixedparent", "noda"] {
        assert!(shown.contains(attribute), "{attribute}: {shown}");
    }
    assert!(!shown.contains("userwithauth"), "{shown}");

    // A reboot into the same state: keyd starts, the keys are the same.
    boot(&mut tpm, b"boot loader 1");
    let started = Instant::now();
    let mut keyd = KeydFixture::configured(sealed_config.clone(), Admins::root_and_self()).await;
    eprintln!(
        "keyd opened with its master key sealed to 2 PCRs in {:?}",
        started.elapsed()
    );
    same_keys(&keyd, &made, "after a reboot").await;
    keyd.stop().await;
    drop(keyd);

    // The disk in another device: its TPM cannot load the sealed key.
    let mut other_tpm = Swtpm::start();
    let copy = temp_dir();
    copy_tree(dir.path(), copy.path());
    let stolen = config(copy.path(), &other_tpm, Some(&[0, 7]));
    let why = locked(&stolen).await;
    eprintln!("on another TPM: {why}");
    assert!(why.contains("another TPM"), "{why}");
    // Nor can its owner reseal it.
    let why = edgeid_keyd::keys::reseal_master_key(&stolen)
        .await
        .expect_err("another TPM reseals")
        .to_string();
    assert!(why.contains("another TPM"), "{why}");
    other_tpm.stop();

    // A boot into other software: refused, naming PCR 7 and the way back.
    let pcr7 = boot(&mut tpm, b"boot loader 2 (unknown)");
    let why = locked(&sealed_config).await;
    eprintln!("after a PCR change: {why}");
    assert!(why.contains("sha256:7"), "{why}");
    assert!(why.contains(&hex::encode(&pcr7)), "{why}");
    assert!(!why.contains("sha256:0 "), "PCR 0 did not change: {why}");
    assert!(why.contains("edgeidctl key reseal"), "{why}");

    // The owner accepts the change: resealed to PCR 7 as it is now.
    let done = edgeid_keyd::keys::reseal_master_key(&sealed_config)
        .await
        .unwrap();
    let values = &done.pcrs[0].1;
    assert_eq!(values.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 7]);
    assert_eq!(values[1].1, pcr7, "sealed to PCR 7's new value");
    let keyd = KeydFixture::configured(sealed_config, Admins::root_and_self()).await;
    same_keys(&keyd, &made, "after reseal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_key_sealed_to_the_tpm_alone_survives_restarts_not_another_tpm() {
    let tpm = Swtpm::start();
    // What sealing stops: with the master key in a file on the same disk, a
    // copy of the disk opens anywhere.
    let plain = temp_dir();
    let mut keyd =
        KeydFixture::configured(config(plain.path(), &tpm, None), Admins::root_and_self()).await;
    let made = make_keys(&keyd).await;
    keyd.stop().await;
    drop(keyd);
    let copy = temp_dir();
    copy_tree(plain.path(), copy.path());
    let keyd =
        KeydFixture::configured(config(copy.path(), &tpm, None), Admins::root_and_self()).await;
    same_keys(&keyd, &made, "a copy of an unsealed store").await;
    drop(keyd);

    let dir = temp_dir();
    let sealed = config(dir.path(), &tpm, Some(&[]));
    let mut keyd = KeydFixture::configured(sealed.clone(), Admins::root_and_self()).await;
    let made = make_keys(&keyd).await;
    assert!(
        !sealed.software.master_key_file.exists(),
        "no master key file is ever written"
    );
    keyd.restart().await;
    same_keys(&keyd, &made, "after a restart").await;
    keyd.stop().await;
    drop(keyd);

    let other_tpm = Swtpm::start();
    let copy = temp_dir();
    copy_tree(dir.path(), copy.path());
    let why = locked(&config(copy.path(), &other_tpm, Some(&[]))).await;
    assert!(why.contains("another TPM"), "{why}");

    // seal_pcrs without a sealed master key is a config error, not ignored.
    let mut wrong = config(dir.path(), &tpm, None);
    wrong.software.seal_pcrs = [("sha256".to_owned(), vec![7])].into();
    let why = refusal(&wrong).await;
    assert!(why.contains("seal_pcrs"), "{why}");
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn assert_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        mode,
        "{}",
        path.display()
    );
}
