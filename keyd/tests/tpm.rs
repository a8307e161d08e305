//! keyd on a TPM 2.0 (swtpm, started fresh by each test), through its API,
//! each result checked by a second party: openssl for signatures, RFC 4231 for
//! HMAC, tpm2-tools for what is in the TPM.

use edgeid_common::authz::{Admins, Grants};
use edgeid_common::client::ClientError;
use edgeid_keyd::api::{KeyPairSpec, SignAlgorithm, SymmetricKeyType};
use edgeid_keyd::backend::BackendKind;
use edgeid_testkit::hmac_sha256;
use edgeid_testkit::openssl;
use edgeid_testkit::{KeydFixture, Swtpm};
use http::StatusCode;

fn status(err: ClientError) -> StatusCode {
    err.status()
        .unwrap_or_else(|| panic!("expected an HTTP error status, got: {err}"))
}

/// keyd (in this process) with every key in `tpm`.
async fn keyd_on(tpm: &Swtpm, dir: &std::path::Path) -> KeydFixture {
    let mut config = KeydFixture::config_in(dir);
    config.backend.default = BackendKind::Tpm;
    config.tpm = Some(tpm.keyd_config());
    config.derive_only = Grants::parse(&["tpm/base"]).unwrap();
    KeydFixture::configured(config, Admins::root_and_self()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spec_in_the_tpm_signs_verifiably_and_survives_restarts() {
    let mut tpm = Swtpm::start();
    let dir = edgeid_testkit::temp_dir();
    let mut keyd = keyd_on(&tpm, dir.path()).await;
    let client = keyd.client();
    let message = b"signed inside the TPM".to_vec();
    let cases = [
        (KeyPairSpec::EcP256, SignAlgorithm::EcdsaSha256),
        (KeyPairSpec::EcP384, SignAlgorithm::EcdsaSha384),
        (KeyPairSpec::Rsa2048, SignAlgorithm::RsaPkcs1Sha256),
        (KeyPairSpec::Rsa2048, SignAlgorithm::RsaPssSha256),
        (KeyPairSpec::Rsa3072, SignAlgorithm::RsaPkcs1Sha256),
    ];
    let mut made = Vec::new();
    for (i, (spec, algorithm)) in cases.into_iter().enumerate() {
        let id = format!("tpm/{spec}-{i}");
        let handle = client.create_key_pair(&id, spec).await.unwrap();
        let pem = openssl::check_signing(&client, &handle, algorithm, &message).await;
        made.push((id, algorithm, handle, pem));
    }
    for spec in [KeyPairSpec::Rsa4096, KeyPairSpec::Ed25519] {
        let err = client.create_key_pair("tpm/no", spec).await.unwrap_err();
        assert_eq!(status(err), StatusCode::BAD_REQUEST, "{spec}");
    }
    let err = client
        .create_key("tpm/aes", SymmetricKeyType::Aes256Gcm, None)
        .await
        .unwrap_err();
    assert_eq!(status(err), StatusCode::BAD_REQUEST);

    // HMAC in the TPM: RFC 4231 test case 2, and derivation (first step in the TPM).
    let mac = client
        .create_key("tpm/mac", SymmetricKeyType::HmacSha256, Some(b"Jefe"))
        .await
        .unwrap();
    let tag = client
        .sign(
            &mac,
            SignAlgorithm::HmacSha256,
            b"what do ya want for nothing?",
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        hex::encode(&tag),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    // Derivation from a base of derivation alone, its first step in the
    // TPM: HMAC(HMAC("Jefe", info), x), checked here.
    let base = client
        .create_key("tpm/base", SymmetricKeyType::HmacSha256, Some(b"Jefe"))
        .await
        .unwrap();
    let derived = client.derive(&base, b"module-a").await.unwrap();
    let d1 = client
        .sign(&derived, SignAlgorithm::HmacSha256, b"x", false)
        .await
        .unwrap();
    assert_eq!(d1, hmac_sha256(&hmac_sha256(b"Jefe", b"module-a"), b"x"));
    let generated = client
        .create_key("tpm/mac2", SymmetricKeyType::HmacSha256, None)
        .await
        .unwrap();
    let g1 = client
        .sign(&generated, SignAlgorithm::HmacSha256, b"x", false)
        .await
        .unwrap();

    // More keys than the TPM holds at once: the cache loads and unloads.
    for (id, algorithm, handle, pem) in made.iter().chain(made.iter()) {
        let sig = client
            .sign(handle, *algorithm, &message, false)
            .await
            .unwrap();
        assert!(
            openssl::verify(*algorithm, pem, &message, &sig),
            "{id} again"
        );
    }

    // keyd and the TPM both restart (the TPM keeps its state): same keys.
    keyd.stop().await;
    let listing = tpm.readpublic("0x81000001");
    assert!(
        listing.contains("rsa") && listing.contains("2048"),
        "RSA-2048 storage key not persisted:\n{listing}"
    );
    tpm.restart();
    keyd.restart().await;
    let client = keyd.client();
    for (id, algorithm, old, pem) in &made {
        let handle = client.key_pair(id).await.unwrap();
        // The old handle still signs, verifiably, with the same public key.
        assert_eq!(
            &openssl::check_signing(&client, old, *algorithm, &message).await,
            pem,
            "{id}"
        );
        assert_eq!(&client.public_key(&handle).await.unwrap().pem, pem, "{id}");
    }
    assert_eq!(
        client
            .sign(&derived, SignAlgorithm::HmacSha256, b"x", false)
            .await
            .unwrap(),
        d1
    );
    assert_eq!(
        client
            .sign(&generated, SignAlgorithm::HmacSha256, b"x", false)
            .await
            .unwrap(),
        g1
    );

    // Key files hold only TPM-wrapped blobs, 0600.
    let blobs: Vec<_> = std::fs::read_dir(keyd.config.state_dir.join("tpm"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(blobs.len(), made.len() + 3);
    for b in &blobs {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(b).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // Delete: the blob goes, the handle dies, the id is free again.
    let (id, algorithm, old, _) = &made[0];
    client.delete_key_pair(id).await.unwrap();
    assert_eq!(
        status(
            client
                .sign(old, *algorithm, &message, false)
                .await
                .unwrap_err()
        ),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status(client.key_pair(id).await.unwrap_err()),
        StatusCode::NOT_FOUND
    );
    let left = std::fs::read_dir(keyd.config.state_dir.join("tpm"))
        .unwrap()
        .count();
    assert_eq!(left, blobs.len() - 1);
    assert_eq!(
        status(client.delete_key(id).await.unwrap_err()),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_tpm_is_503_then_recovers() {
    let mut tpm = Swtpm::start();
    let dir = edgeid_testkit::temp_dir();
    let keyd = keyd_on(&tpm, dir.path()).await;
    let client = keyd.client();
    let handle = client
        .create_key_pair("device-id", KeyPairSpec::EcP256)
        .await
        .unwrap();
    let pem = client.public_key(&handle).await.unwrap().pem;

    tpm.stop();
    let asked = std::time::Instant::now();
    let err = client
        .sign(&handle, SignAlgorithm::EcdsaSha256, b"x", false)
        .await
        .unwrap_err();
    // Reported, not asserted (RELIABILITY.md): how soon a caller hears.
    eprintln!("TPM gone: 503 after {:?}", asked.elapsed());
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE), "{err}");
    assert!(err.to_string().contains("tpm"), "{err}");
    assert_eq!(client.health().await.unwrap().status, "degraded");
    // The public key needs no TPM command: still served.
    assert_eq!(client.public_key(&handle).await.unwrap().pem, pem);

    tpm.restart();
    let back = std::time::Instant::now();
    let sig = client
        .sign(&handle, SignAlgorithm::EcdsaSha256, b"back", false)
        .await
        .unwrap();
    eprintln!("TPM back: first sign answered after {:?}", back.elapsed());
    openssl::assert_verifies(SignAlgorithm::EcdsaSha256, &pem, b"back", &sig);
    assert_eq!(client.health().await.unwrap().status, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_signs_in_the_tpm_all_verify() {
    let tpm = Swtpm::start();
    let dir = edgeid_testkit::temp_dir();
    let keyd = keyd_on(&tpm, dir.path()).await;
    let client = keyd.client();
    // More keys than the TPM holds loaded at once: the requests also exercise
    // the cache's unloading and reloading.
    let mut handles = Vec::new();
    for id in ["a", "b", "c"] {
        handles.push(
            client
                .create_key_pair(id, KeyPairSpec::EcP256)
                .await
                .unwrap(),
        );
    }
    openssl::check_concurrent_signing(&client, &handles, 32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_useless_in_another_tpm() {
    let tpm = Swtpm::start();
    let other = Swtpm::start();
    let dir = edgeid_testkit::temp_dir();
    let mut keyd = keyd_on(&tpm, dir.path()).await;
    let handle = keyd
        .client()
        .create_key_pair("device-id", KeyPairSpec::EcP256)
        .await
        .unwrap();
    keyd.stop().await;
    // Same state dir (blobs, handle secret), another TPM.
    keyd.config.tpm.as_mut().unwrap().tcti = other.tcti();
    keyd.restart().await;
    let err = keyd
        .client()
        .sign(&handle, SignAlgorithm::EcdsaSha256, b"x", false)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{err}");
    assert!(err.to_string().contains("another TPM"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_keyd_leaves_the_tpm_usable() {
    // swtpm has no resource manager: objects a killed keyd had loaded stay in
    // the TPM. The next keyd must clean them up, or it runs out of object slots.
    let tpm = Swtpm::start();
    let dir = edgeid_testkit::temp_dir();
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_edgeid-keyd"));
    let extra = format!(
        "[backend]\ndefault = \"tpm\"\n[tpm]\ntcti = \"{}\"\n",
        tpm.tcti()
    );
    let first = edgeid_testkit::KeydProcess::start(binary, dir.path(), &extra, vec![]).await;
    let client = first.client();
    let mut keys = Vec::new();
    for id in ["a", "b"] {
        let handle = client
            .create_key_pair(id, KeyPairSpec::EcP256)
            .await
            .unwrap();
        client
            .sign(&handle, SignAlgorithm::EcdsaSha256, b"x", false)
            .await
            .unwrap();
        keys.push(handle);
    }
    drop(first); // SIGKILL: no chance to unload anything.

    let second = edgeid_testkit::KeydProcess::start(binary, dir.path(), &extra, vec![]).await;
    let client = second.client();
    for handle in &keys {
        let pem = client.public_key(handle).await.unwrap().pem;
        let sig = client
            .sign(handle, SignAlgorithm::EcdsaSha256, b"after", false)
            .await
            .unwrap();
        openssl::assert_verifies(SignAlgorithm::EcdsaSha256, &pem, b"after", &sig);
    }
    client
        .create_key_pair("c", KeyPairSpec::EcP384)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_keys_match_what_tpm2_tools_read() {
    let mut tpm = Swtpm::start();
    let dir = edgeid_testkit::temp_dir();
    let mut keyd = keyd_on(&tpm, dir.path()).await;
    let keys = keyd.client().tpm_attestation_keys().await.unwrap();
    assert!(keys
        .endorsement_key
        .pem
        .starts_with("-----BEGIN PUBLIC KEY-----"));
    assert!(
        keys.endorsement_certificate.is_none(),
        "swtpm without swtpm_setup has no EK certificate"
    );
    // Asking again gives the same EK (it is derived from the TPM's endorsement seed).
    let again = keyd.client().tpm_attestation_keys().await.unwrap();
    assert_eq!(
        again.endorsement_key.public.0,
        keys.endorsement_key.public.0
    );
    // Signing still works after the EK commands (they change the session setup).
    let handle = keyd
        .client()
        .create_key_pair("after-ek", KeyPairSpec::EcP256)
        .await
        .unwrap();
    openssl::check_signing(
        &keyd.client(),
        &handle,
        SignAlgorithm::EcdsaSha256,
        b"after the EK",
    )
    .await;
    keyd.stop().await;

    // tpm2-tools, reading the same TPM, see byte-identical public areas.
    let out = dir.path().join("tools");
    std::fs::create_dir(&out).unwrap();
    let path = |name: &str| out.join(name).display().to_string();
    tpm.tpm2_tool(
        "tpm2_createek",
        &[
            "-c",
            &path("ek.ctx"),
            "-G",
            "rsa",
            "-u",
            &path("ek.pub"),
            "-f",
            "tss",
        ],
    );
    assert_eq!(
        std::fs::read(path("ek.pub")).unwrap(),
        keys.endorsement_key.public.0,
        "EK public"
    );
    tpm.tpm2_tool(
        "tpm2_readpublic",
        &["-c", "0x81000001", "-o", &path("srk.pub"), "-f", "tss"],
    );
    assert_eq!(
        std::fs::read(path("srk.pub")).unwrap(),
        keys.storage_key.public.0,
        "storage key public"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_keys_need_a_grant_and_a_tpm() {
    use edgeid_keyd::config::PrincipalConfig;
    // No TPM configured: 404 naming the config.
    let keyd = KeydFixture::start().await;
    let err = keyd.client().tpm_attestation_keys().await.unwrap_err();
    assert_eq!(status(err), StatusCode::NOT_FOUND);
    let err = keyd
        .client()
        .tpm_activate("dps/x", b"blob")
        .await
        .unwrap_err();
    assert_eq!(status(err), StatusCode::NOT_FOUND);
    let (code, _) = keyd
        .client()
        .transport()
        .raw(http::Method::POST, "/v1/tpm/activate", "{\"id\":".into())
        .await
        .unwrap();
    assert_eq!(code, StatusCode::BAD_REQUEST, "malformed JSON");
    // A principal without the grant: 403.
    let tpm = Swtpm::start();
    let dir = edgeid_testkit::temp_dir();
    let mut config = KeydFixture::config_in(dir.path());
    config.backend.default = BackendKind::Tpm;
    config.tpm = Some(tpm.keyd_config());
    config.principals = vec![PrincipalConfig {
        name: "identityd".into(),
        uid: edgeid_common::current_uid(),
        keys: Grants::parse(&["device-*"]).unwrap(),
        export: Grants::default(),
    }];
    let keyd = KeydFixture::configured(config, Admins::only(vec![])).await;
    let err = keyd.client().tpm_attestation_keys().await.unwrap_err();
    assert_eq!(status(err), StatusCode::FORBIDDEN);
    // Activation is granted by the key id it imports into.
    let err = keyd
        .client()
        .tpm_activate("dps/x", b"blob")
        .await
        .unwrap_err();
    assert_eq!(status(err), StatusCode::FORBIDDEN);
}

/// TPM attestation's last step: a provisioning service (a second swtpm here)
/// sends a credential for this TPM's EK with an HMAC key wrapped to its storage
/// key; keyd activates and imports it, and it MACs like the key the service holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_wrapped_to_this_tpm_is_activated_imported_and_kept() {
    use edgeid_keyd::config::BackendOverride;
    use edgeid_testkit::tpm_peer::{wrap_hmac_key, Wrapping};
    use hmac::Mac;

    let mut tpm = Swtpm::start();
    let service = Swtpm::start();
    let dir = edgeid_testkit::temp_dir();
    let mut config = KeydFixture::config_in(dir.path());
    config.backend.default = BackendKind::Tpm;
    config.backend.overrides = vec![BackendOverride {
        keys: edgeid_common::authz::Grants::parse(&["soft/*"]).unwrap(),
        backend: BackendKind::Software,
    }];
    config.tpm = Some(tpm.keyd_config());
    let mut keyd = KeydFixture::configured(config, Admins::root_and_self()).await;
    let client = keyd.client();
    let keys = client.tpm_attestation_keys().await.unwrap();
    let secret = b"the service's device key, 32 byt";
    let blob = wrap_hmac_key(
        &service,
        &keys.endorsement_key.public.0,
        &keys.storage_key.public.0,
        secret,
        Wrapping::Honest,
    );
    let expected = |data: &[u8]| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    };
    let sas = b"myhub.azure-devices.net/devices/dev1\n1700000000";

    let handle = client.tpm_activate("dps/identity", &blob).await.unwrap();
    let tag = client
        .sign(&handle, SignAlgorithm::HmacSha256, sas, false)
        .await
        .unwrap();
    assert_eq!(
        tag,
        expected(sas),
        "the imported key MACs as the service's key"
    );

    // Refused, with the key left as it was: a tampered credential, a truncated
    // blob, a key id the TPM does not serve.
    let tampered = wrap_hmac_key(
        &service,
        &keys.endorsement_key.public.0,
        &keys.storage_key.public.0,
        secret,
        Wrapping::Tampered,
    );
    let err = client
        .tpm_activate("dps/identity", &tampered)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused the credential"), "{err}");
    assert_eq!(status(err), StatusCode::BAD_REQUEST);
    for cut in [0, 1, 40, blob.len() - 3] {
        let err = client
            .tpm_activate("dps/identity", &blob[..cut])
            .await
            .unwrap_err();
        assert_eq!(status(err), StatusCode::BAD_REQUEST, "cut at {cut}");
    }
    let err = client
        .tpm_activate("soft/identity", &blob)
        .await
        .unwrap_err();
    assert_eq!(status(err), StatusCode::BAD_REQUEST);
    assert_eq!(
        client
            .sign(&handle, SignAlgorithm::HmacSha256, sas, false)
            .await
            .unwrap(),
        expected(sas)
    );

    // The key's blobs hold nothing usable outside the TPM.
    let files: Vec<_> = std::fs::read_dir(dir.path().join("keyd/tpm"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!files.is_empty());
    for bytes in &files {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret));
    }

    // Restarts of keyd and the TPM keep it.
    keyd.stop().await;
    tpm.restart();
    keyd.restart().await;
    let client = keyd.client();
    let again = client.key("dps/identity").await.unwrap();
    assert_eq!(
        client
            .sign(&again, SignAlgorithm::HmacSha256, sas, false)
            .await
            .unwrap(),
        expected(sas)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_the_tpm_are_listed() {
    let tpm = Swtpm::start();
    let dir = edgeid_testkit::temp_dir();
    let keyd = keyd_on(&tpm, dir.path()).await;
    let client = keyd.client();
    client
        .create_key_pair("device-id", KeyPairSpec::EcP256)
        .await
        .unwrap();
    client
        .create_key("module/mac", SymmetricKeyType::HmacSha256, None)
        .await
        .unwrap();
    let keys = client.list_keys().await.unwrap();
    let seen: Vec<(String, String, String)> = keys
        .into_iter()
        .map(|k| (k.id, k.kind, k.backend))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("device-id".into(), "ec-p256".into(), "tpm".into()),
            ("module/mac".into(), "hmac-sha256".into(), "tpm".into()),
        ]
    );
}

/// A TPM2B (size, then contents) for tpm2-tools.
fn tpm2b(contents: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(contents.len())
        .unwrap()
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(contents);
    out
}

/// The blob file keyd keeps for `id`, as JSON.
fn blob_file(keyd: &KeydFixture, id: &str) -> (std::path::PathBuf, serde_json::Value) {
    std::fs::read_dir(keyd.config.state_dir.join("tpm"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find_map(|p| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
            (v["id"] == id).then_some((p, v))
        })
        .unwrap_or_else(|| panic!("no blob file for {id}"))
}

/// Writes a blob file's public and private parts as tpm2-tools reads them.
fn write_tpm2_files(blob: &serde_json::Value, dir: &std::path::Path) {
    use base64::Engine;
    let decode = |field: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(blob[field].as_str().unwrap())
            .unwrap()
    };
    std::fs::write(dir.join("key.pub"), tpm2b(&decode("public"))).unwrap();
    std::fs::write(dir.join("key.priv"), tpm2b(&decode("private"))).unwrap();
    std::fs::write(dir.join("msg"), b"signed by whoever holds the blob").unwrap();
}

/// `tpm2_load` the copied blob under keyd's storage key and `tpm2_sign`
/// with it (with `auth` if given); the signature verifies against `pem` if
/// it signed.
fn sign_with_copied_blob(
    tpm: &mut Swtpm,
    dir: &std::path::Path,
    auth: Option<&str>,
    pem: &str,
) -> Result<(), String> {
    let d = dir.display();
    let auth = auth.map(|a| format!("-p hex:{a}")).unwrap_or_default();
    let out = tpm.tpm2_script(&format!(
        "tpm2_load -C 0x81000001 -u {d}/key.pub -r {d}/key.priv -c {d}/key.ctx && \
         tpm2_sign -c {d}/key.ctx {auth} -g sha256 -f plain -o {d}/sig {d}/msg"
    ));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    std::fs::write(dir.join("key.pem"), pem).unwrap();
    let verified = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(dir.join("key.pem"))
        .arg("-signature")
        .arg(dir.join("sig"))
        .arg(dir.join("msg"))
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "tpm2_sign signed, but not with keyd's key: {}",
        String::from_utf8_lossy(&verified.stdout)
    );
    Ok(())
}

/// The authValue keyd derives for a key (what the test checks is that the
/// copied blob signs with it and without it does not).
fn derived_auth(secret_file: &std::path::Path, id: &str, generation: &str) -> String {
    let secret = std::fs::read(secret_file).unwrap();
    let mut msg = b"edgeid tpm key auth v1\0".to_vec();
    msg.extend_from_slice(id.as_bytes());
    msg.push(0);
    msg.extend_from_slice(generation.as_bytes());
    hex::encode(hmac_sha256(&secret, &msg))
}

/// Review finding 7: TPM keys had an empty authValue, so any process with
/// TPM access and a copy of a key's blob loaded and signed with it
/// (`tpm2_load` + `tpm2_sign`, the signature verified against keyd's public
/// key). Now each key's authValue is derived from a secret keyd keeps
/// outside its state directory: the same commands on the copied blob are
/// refused, and only with that value do they sign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_tpm_blob_does_not_sign_without_keyds_secret() {
    let mut tpm = Swtpm::start();
    let dir = edgeid_testkit::temp_dir();
    let mut keyd = keyd_on(&tpm, dir.path()).await;
    let handle = keyd
        .client()
        .create_key_pair("victim", KeyPairSpec::EcP256)
        .await
        .unwrap();
    let pem = keyd.client().public_key(&handle).await.unwrap().pem;
    let (_, blob) = blob_file(&keyd, "victim");
    assert_eq!(blob["auth"], 1, "{blob}");
    keyd.stop().await;

    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    write_tpm2_files(&blob, &copy);
    let refused = sign_with_copied_blob(&mut tpm, &copy, None, &pem).unwrap_err();
    assert!(
        refused.contains("auth") || refused.contains("0x98e") || refused.contains("0x9a2"),
        "refused for its missing auth: {refused}"
    );
    let auth = derived_auth(
        &tpm.keyd_config().auth_key_file,
        "victim",
        blob["generation"].as_str().unwrap(),
    );
    sign_with_copied_blob(&mut tpm, &copy, Some(&auth), &pem)
        .expect("with keyd's authValue the blob signs");
}

/// Keys written before TPM keys had an authValue (made here by tpm2-tools
/// with none, as keyd made them) keep working: on first use keyd has the
/// TPM give them their derived authValue (TPM2_ObjectChangeAuth) and
/// rewrites the file, generation kept, so an old handle still signs. The
/// new blob no longer signs without the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_key_from_before_authvalues_is_migrated_on_first_use() {
    let mut tpm = Swtpm::start();
    let dir = edgeid_testkit::temp_dir();
    // keyd once, so that the storage key exists.
    let mut keyd = keyd_on(&tpm, dir.path()).await;
    keyd.client()
        .create_key_pair("first", KeyPairSpec::EcP256)
        .await
        .unwrap();
    keyd.stop().await;
    let made = dir.path().join("made");
    std::fs::create_dir(&made).unwrap();
    let m = made.display();
    let out = tpm.tpm2_script(&format!(
        "tpm2_create -C 0x81000001 -G ecc256:ecdsa-sha256 -u {m}/key.pub -r {m}/key.priv"
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let strip = |name: &str| {
        use base64::Engine;
        let bytes = std::fs::read(made.join(name)).unwrap();
        base64::engine::general_purpose::STANDARD.encode(&bytes[2..])
    };
    let generation = "00112233445566778899aabbccddeeff";
    // The format keyd wrote before: no "auth" field.
    let legacy = serde_json::json!({
        "format": 1,
        "id": "legacy",
        "kind": "ec-p256",
        "generation": generation,
        "public": strip("key.pub"),
        "private": strip("key.priv"),
    });
    let (first_path, _) = blob_file(&keyd, "first");
    // Named as keyd names key files: the id in base64url.
    let legacy_path = first_path.with_file_name("bGVnYWN5.blob");
    std::fs::write(&legacy_path, serde_json::to_vec(&legacy).unwrap()).unwrap();
    std::fs::set_permissions(
        &legacy_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();

    keyd.restart().await;
    let handle = keyd.client().key_pair("legacy").await.unwrap();
    openssl::check_signing(
        &keyd.client(),
        &handle,
        SignAlgorithm::EcdsaSha256,
        b"migrated",
    )
    .await;
    let pem = keyd.client().public_key(&handle).await.unwrap().pem;
    let (_, migrated) = blob_file(&keyd, "legacy");
    assert_eq!(migrated["auth"], 1, "{migrated}");
    assert_eq!(migrated["generation"], generation, "handles stay good");
    assert_ne!(migrated["private"], legacy["private"]);
    keyd.stop().await;
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    write_tpm2_files(&migrated, &copy);
    assert!(sign_with_copied_blob(&mut tpm, &copy, None, &pem).is_err());
}
