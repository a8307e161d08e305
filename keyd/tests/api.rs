//! keyd's API end to end over its socket, each result checked by a second party.

use std::os::unix::fs::PermissionsExt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use edgeid_common::authz::{Admins, Grants};
use edgeid_common::client::ClientError;
use edgeid_keyd::api::{KeyHandle, KeyPairSpec, SignAlgorithm, SymmetricKeyType};
use edgeid_keyd::config::PrincipalConfig;
use edgeid_keyd::KeydClient;
use edgeid_testkit::hmac_sha256;
use edgeid_testkit::openssl;
use edgeid_testkit::KeydFixture;
use http::{Method, StatusCode};

fn status(err: ClientError) -> StatusCode {
    err.status()
        .unwrap_or_else(|| panic!("expected an HTTP error status, got: {err}"))
}

async fn raw(
    client: &KeydClient,
    method: Method,
    path: &str,
    body: impl Into<Bytes>,
) -> (StatusCode, String) {
    let (status, body) = client
        .transport()
        .raw(method, path, body.into())
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

const CASES: &[(KeyPairSpec, SignAlgorithm)] = &[
    (KeyPairSpec::EcP256, SignAlgorithm::EcdsaSha256),
    (KeyPairSpec::EcP384, SignAlgorithm::EcdsaSha384),
    (KeyPairSpec::Rsa2048, SignAlgorithm::RsaPkcs1Sha256),
    (KeyPairSpec::Rsa2048, SignAlgorithm::RsaPssSha256),
    (KeyPairSpec::Rsa3072, SignAlgorithm::RsaPkcs1Sha256),
    (KeyPairSpec::Rsa4096, SignAlgorithm::RsaPssSha256),
    (KeyPairSpec::Ed25519, SignAlgorithm::Ed25519),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_pair_spec_signs_and_openssl_verifies() {
    let keyd = KeydFixture::start().await;
    let client = keyd.client();
    for (i, (spec, algorithm)) in CASES.iter().enumerate() {
        let handle = client
            .create_key_pair(&format!("pair/{spec}-{i}"), *spec)
            .await
            .unwrap();
        assert_eq!(client.public_key(&handle).await.unwrap().spec, *spec);
        let pem =
            openssl::check_signing(&client, &handle, *algorithm, b"the device says hello").await;
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_matches_rfc4231_vectors() {
    let keyd = KeydFixture::start().await;
    let client = keyd.client();
    // RFC 4231 test cases 1, 2 and 6 (HMAC-SHA-256).
    let cases: [(&str, Vec<u8>, &[u8], &str); 3] = [
        (
            "rfc4231/1",
            vec![0x0b; 20],
            b"Hi There",
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        ),
        (
            "rfc4231/2",
            b"Jefe".to_vec(),
            b"what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        (
            "rfc4231/6",
            vec![0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        ),
    ];
    for (id, key, data, expected) in cases {
        let handle = client
            .create_key(id, SymmetricKeyType::HmacSha256, Some(&key))
            .await
            .unwrap();
        let mac = client
            .sign(&handle, SignAlgorithm::HmacSha256, data, false)
            .await
            .unwrap();
        assert_eq!(hex::encode(mac), expected, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_keys_are_reproducible_and_distinct() {
    let keyd = KeydFixture::start().await;
    let client = keyd.client();
    let base_bytes = b"a shared access key of the device".to_vec();
    // `module-derivation` is a base of derivation alone by default.
    let base = client
        .create_key(
            "module-derivation",
            SymmetricKeyType::HmacSha256,
            Some(&base_bytes),
        )
        .await
        .unwrap();
    let a1 = client.derive(&base, b"module-a").await.unwrap();
    let a2 = client.derive(&base, b"module-a").await.unwrap();
    let b = client.derive(&base, b"module-b").await.unwrap();
    let data = b"sr=hub/devices/d/modules/a\n1700000000";
    let mac_a1 = client
        .sign(&a1, SignAlgorithm::HmacSha256, data, false)
        .await
        .unwrap();
    let mac_a2 = client
        .sign(&a2, SignAlgorithm::HmacSha256, data, false)
        .await
        .unwrap();
    let mac_b = client
        .sign(&b, SignAlgorithm::HmacSha256, data, false)
        .await
        .unwrap();
    assert_eq!(mac_a1, mac_a2, "same info, same derived key");
    assert_ne!(mac_a1, mac_b, "different info, different key");
    // Independently: derived key = HMAC-SHA256(base, info).
    assert_eq!(
        mac_a1,
        hmac_sha256(&hmac_sha256(&base_bytes, b"module-a"), data)
    );
    // A derived key signs; it does not derive (its signature of the info
    // would be the key derived).
    let err = client.derive(&a1, b"gen-1").await.unwrap_err();
    assert_eq!(status(err), StatusCode::BAD_REQUEST);
    // A derived key signs with hmac-sha256 only.
    let err = client
        .sign(&a1, SignAlgorithm::EcdsaSha256, data, false)
        .await
        .unwrap_err();
    assert_eq!(status(err), StatusCode::BAD_REQUEST);
    // Key pairs are not derivable, nor is a key that signs.
    let pair = client
        .create_key_pair("pair", KeyPairSpec::EcP256)
        .await
        .unwrap();
    assert_eq!(
        status(client.derive(&pair, b"x").await.unwrap_err()),
        StatusCode::BAD_REQUEST
    );
    let signer = client
        .create_key(
            "device-sas",
            SymmetricKeyType::HmacSha256,
            Some(&base_bytes),
        )
        .await
        .unwrap();
    let err = client.derive(&signer, b"module-a").await.unwrap_err();
    assert!(err.to_string().contains("derive_only"), "{err}");
    assert_eq!(status(err), StatusCode::BAD_REQUEST);
}

/// Review finding 5: a derived key is HMAC(base, info), so whoever could
/// sign with the base computed every derived key's bytes (shown:
/// `sign(module-derivation, "edgeid module key\nmod-b\n<genid>\nprimary")`
/// reproduced mod-b's workload signature; before the fix that sign was
/// answered 200). The base now refuses sign to every caller, root included;
/// a derived key's bytes leave keyd only by `export`, to a caller granted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_key_derives_and_never_signs_and_only_a_granted_caller_exports() {
    const WORKLOADD: u32 = 4311;
    const IDENTITYD: u32 = 4312;
    let dir = edgeid_testkit::temp_dir();
    edgeid_testkit::open_to_others(dir.path());
    let mut config = KeydFixture::config_in(dir.path());
    config.server.socket_mode = 0o666;
    let grant = |name: &str, uid, export: &[&str]| PrincipalConfig {
        name: name.into(),
        uid,
        keys: Grants::parse(&["module-derivation"]).unwrap(),
        export: Grants::parse(export).unwrap(),
    };
    config.principals = vec![
        grant("workloadd", WORKLOADD, &[]),
        grant("identityd", IDENTITYD, &["module-derivation"]),
    ];
    let keyd = KeydFixture::configured(config, Admins::root_and_self()).await;
    let socket = keyd.socket();
    let post = async |uid: u32, path: &str, body: &str| {
        edgeid_testkit::request_as(uid, &socket, Method::POST, path, body).await
    };
    let base_bytes = [7u8; 32];
    let base = keyd
        .client()
        .create_key(
            "module-derivation",
            SymmetricKeyType::HmacSha256,
            Some(&base_bytes),
        )
        .await
        .unwrap();
    let info = b"edgeid module key\nmod-b\n638000000000000000\nprimary";
    let body = |handle: &KeyHandle, extra: &str| format!(r#"{{"handle":"{}"{extra}}}"#, handle.0);
    let sign = |handle: &KeyHandle| {
        body(
            handle,
            &format!(
                r#","algorithm":"hmac-sha256","data":"{}""#,
                STANDARD.encode(info)
            ),
        )
    };

    // The attack, as each principal and as root: refused.
    for uid in [WORKLOADD, IDENTITYD] {
        let (code, answer) = post(uid, "/v1/sign", &sign(&base)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(code, StatusCode::FORBIDDEN, "uid {uid}: {answer}");
        assert!(answer.contains("derive_only"), "{answer}");
    }
    let err = keyd
        .client()
        .sign(&base, SignAlgorithm::HmacSha256, info, false)
        .await
        .unwrap_err();
    assert_eq!(status(err), StatusCode::FORBIDDEN, "root too");

    // Both derive; the derived key signs for them.
    let derive = body(&base, &format!(r#","info":"{}""#, STANDARD.encode(info)));
    let mut derived = Vec::new();
    for uid in [WORKLOADD, IDENTITYD] {
        let (code, answer) = post(uid, "/v1/derive", &derive).await;
        assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&answer));
        let handle: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        derived.push(KeyHandle(handle["handle"].as_str().unwrap().to_owned()));
    }
    let expected_key = hmac_sha256(&base_bytes, info);
    let (code, answer) = post(WORKLOADD, "/v1/sign", &sign(&derived[0])).await;
    assert_eq!(code, StatusCode::OK);
    let mac: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(
        STANDARD.decode(mac["signature"].as_str().unwrap()).unwrap(),
        hmac_sha256(&expected_key, info)
    );

    // Export: workloadd is refused, identityd gets the bytes (checked
    // against HMAC(base, info) computed here).
    let (code, answer) = post(WORKLOADD, "/v1/export", &body(&derived[0], "")).await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let (code, answer) = post(IDENTITYD, "/v1/export", &body(&derived[1], "")).await;
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&answer));
    let exported: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(
        STANDARD.decode(exported["key"].as_str().unwrap()).unwrap(),
        expected_key
    );
    // Only a derived key is exported, not its base, nor a key that signs.
    let (code, _) = post(IDENTITYD, "/v1/export", &body(&base, "")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypt_decrypt_round_trip_and_tamper() {
    let keyd = KeydFixture::start().await;
    let client = keyd.client();
    let key = client
        .create_key("storage", SymmetricKeyType::Aes256Gcm, None)
        .await
        .unwrap();
    let plaintext = b"module secret configuration".to_vec();
    let c1 = client
        .encrypt(&key, &plaintext, Some(b"module-a"))
        .await
        .unwrap();
    let c2 = client
        .encrypt(&key, &plaintext, Some(b"module-a"))
        .await
        .unwrap();
    assert_ne!(c1, c2, "fresh nonce every time");
    assert!(
        !c1.windows(plaintext.len())
            .any(|w| w == plaintext.as_slice()),
        "plaintext visible in ciphertext"
    );
    assert_eq!(
        client.decrypt(&key, &c1, Some(b"module-a")).await.unwrap(),
        plaintext
    );

    let mut tampered = c1.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let err = client
        .decrypt(&key, &tampered, Some(b"module-a"))
        .await
        .unwrap_err();
    assert_eq!(status(err), StatusCode::BAD_REQUEST);
    let err = client
        .decrypt(&key, &c1, Some(b"module-b"))
        .await
        .unwrap_err();
    assert_eq!(status(err), StatusCode::BAD_REQUEST, "other aad");
    let err = client.decrypt(&key, &c1[..5], None).await.unwrap_err();
    assert_eq!(status(err), StatusCode::BAD_REQUEST, "truncated");

    // Keys derived per module cannot read each other's data; their base
    // (a base of derivation alone) neither encrypts nor decrypts.
    let base = client
        .create_key("workload-encryption", SymmetricKeyType::Aes256Gcm, None)
        .await
        .unwrap();
    let err = client.encrypt(&base, &plaintext, None).await.unwrap_err();
    assert_eq!(status(err), StatusCode::FORBIDDEN);
    assert_eq!(
        status(client.derive(&key, b"module-a").await.unwrap_err()),
        StatusCode::BAD_REQUEST,
        "a key that encrypts does not derive"
    );
    let ka = client.derive(&base, b"module-a").await.unwrap();
    let kb = client.derive(&base, b"module-b").await.unwrap();
    let ca = client.encrypt(&ka, &plaintext, None).await.unwrap();
    assert_eq!(client.decrypt(&ka, &ca, None).await.unwrap(), plaintext);
    assert_eq!(
        status(client.decrypt(&kb, &ca, None).await.unwrap_err()),
        StatusCode::BAD_REQUEST
    );

    // Import: exactly 32 bytes.
    let err = client
        .create_key("short", SymmetricKeyType::Aes256Gcm, Some(&[1u8; 16]))
        .await
        .unwrap_err();
    assert_eq!(status(err), StatusCode::BAD_REQUEST);
    let hmac = client
        .create_key("mac", SymmetricKeyType::HmacSha256, None)
        .await
        .unwrap();
    assert_eq!(
        status(client.encrypt(&hmac, b"x", None).await.unwrap_err()),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_keys_and_handles() {
    let mut keyd = KeydFixture::start().await;
    let client = keyd.client();
    let mut pairs = Vec::new();
    for spec in [
        KeyPairSpec::EcP256,
        KeyPairSpec::EcP384,
        KeyPairSpec::Rsa2048,
        KeyPairSpec::Ed25519,
    ] {
        let id = format!("restart/{spec}");
        let handle = client.create_key_pair(&id, spec).await.unwrap();
        let pem = client.public_key(&handle).await.unwrap().pem;
        pairs.push((id, spec, handle, pem));
    }
    let mac_key = client
        .create_key("restart/mac", SymmetricKeyType::HmacSha256, None)
        .await
        .unwrap();
    let mac = client
        .sign(&mac_key, SignAlgorithm::HmacSha256, b"x", false)
        .await
        .unwrap();
    let aes = client
        .create_key("restart/aes", SymmetricKeyType::Aes256Gcm, None)
        .await
        .unwrap();
    let sealed = client.encrypt(&aes, b"kept", None).await.unwrap();

    keyd.restart().await;
    let client = keyd.client();
    for (id, spec, old_handle, pem) in &pairs {
        assert_eq!(
            &client.public_key(old_handle).await.unwrap().pem,
            pem,
            "{id}: same public key"
        );
        let handle = client.key_pair(id).await.unwrap();
        assert_eq!(&client.public_key(&handle).await.unwrap().pem, pem);
        assert_eq!(
            client.create_key_pair(id, *spec).await.unwrap(),
            handle,
            "create loads the existing key"
        );
    }
    assert_eq!(
        client
            .sign(&mac_key, SignAlgorithm::HmacSha256, b"x", false)
            .await
            .unwrap(),
        mac
    );
    assert_eq!(client.decrypt(&aes, &sealed, None).await.unwrap(), b"kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_private_and_useless_without_the_master_key() {
    let mut keyd = KeydFixture::start().await;
    let client = keyd.client();
    let handle = client
        .create_key_pair("device-id", KeyPairSpec::EcP256)
        .await
        .unwrap();
    keyd.stop().await;

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let state = keyd.config.state_dir.clone();
    let master = keyd.config.software.master_key_file.clone();
    assert_eq!(mode(&master), 0o600);
    assert_eq!(mode(master.parent().unwrap()), 0o700);
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("keys")), 0o700);
    assert_eq!(mode(&state.join("handle.key")), 0o600);
    let files: Vec<_> = std::fs::read_dir(state.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    assert_eq!(mode(&files[0]), 0o600);

    // The state dir with another master key: the key cannot be used, and the
    // answer leaks no internals.
    let other_master = state.parent().unwrap().join("other-secrets/master.key");
    keyd.config.software.master_key_file = other_master;
    keyd.restart().await;
    let err = keyd
        .client()
        .sign(&handle, SignAlgorithm::EcdsaSha256, b"x", false)
        .await
        .unwrap_err();
    assert_eq!(status(err), StatusCode::INTERNAL_SERVER_ERROR);
    let (code, body) = raw(
        &keyd.client(),
        Method::POST,
        "/v1/public-key",
        format!("{{\"handle\":\"{}\"}}", handle.0),
    )
    .await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        !body.contains("/tmp") && !body.contains("master"),
        "500 leaks internals: {body}"
    );

    // A world-readable master key is refused at start.
    keyd.stop().await;
    std::fs::set_permissions(&master, std::fs::Permissions::from_mode(0o644)).unwrap();
    keyd.config.software.master_key_file = master.clone();
    let err = match edgeid_keyd::Keyd::open(&keyd.config, Admins::root_and_self()).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("keyd started with a world-readable master key"),
    };
    assert!(err.contains("chmod 600"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_cannot_be_forged_or_outlive_their_key() {
    let keyd = KeydFixture::start().await;
    let other = KeydFixture::start().await;
    let client = keyd.client();
    let handle = client
        .create_key_pair("device-id", KeyPairSpec::EcP256)
        .await
        .unwrap();
    let sign = |h: KeyHandle| {
        let client = client.clone();
        async move {
            client
                .sign(&h, SignAlgorithm::EcdsaSha256, b"x", false)
                .await
        }
    };

    // Altered: another key id in the payload, the original tag.
    let (body, tag) = handle.0.rsplit_once('.').unwrap();
    let forged_payload = base64_url(r#"{"id":"device-ca","gen":"00"}"#);
    let forged = KeyHandle(format!("ek1.{forged_payload}.{tag}"));
    assert_ne!(body, format!("ek1.{forged_payload}"));
    assert_eq!(
        status(sign(forged).await.unwrap_err()),
        StatusCode::FORBIDDEN
    );
    // Issued by another keyd.
    let foreign = other
        .client()
        .create_key_pair("device-id", KeyPairSpec::EcP256)
        .await
        .unwrap();
    assert_eq!(
        status(sign(foreign).await.unwrap_err()),
        StatusCode::FORBIDDEN
    );
    // Garbage.
    for junk in ["", "ek1.", "hello", "ek1.@@.##"] {
        assert_eq!(
            status(sign(KeyHandle(junk.into())).await.unwrap_err()),
            StatusCode::BAD_REQUEST,
            "{junk:?}"
        );
    }
    // Deleted, then re-created under the same id: the old handle is dead.
    client.delete_key_pair("device-id").await.unwrap();
    assert_eq!(
        status(sign(handle.clone()).await.unwrap_err()),
        StatusCode::NOT_FOUND
    );
    client
        .create_key_pair("device-id", KeyPairSpec::EcP256)
        .await
        .unwrap();
    assert_eq!(
        status(sign(handle).await.unwrap_err()),
        StatusCode::NOT_FOUND
    );
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principals_get_only_their_keys() {
    let dir = edgeid_testkit::temp_dir();
    let mut config = KeydFixture::config_in(dir.path());
    let me = edgeid_common::current_uid();
    config.principals = vec![PrincipalConfig {
        name: "workloadd".into(),
        uid: me,
        keys: Grants::parse(&["module/*"]).unwrap(),
        export: Grants::default(),
    }];
    // No administrators: this process is just a principal here.
    let keyd = KeydFixture::configured(config.clone(), Admins::only(vec![])).await;
    let client = keyd.client();
    let h = client
        .create_key("module/a", SymmetricKeyType::HmacSha256, None)
        .await
        .unwrap();
    client
        .sign(&h, SignAlgorithm::HmacSha256, b"x", false)
        .await
        .unwrap();
    let err = client
        .create_key_pair("device-id", KeyPairSpec::EcP256)
        .await
        .unwrap_err();
    assert_eq!(status(err), StatusCode::FORBIDDEN);
    let (_, body) = raw(&client, Method::GET, "/v1/keypair/device-id", "").await;
    assert!(
        body.contains("principal 'workloadd'") && body.contains("device-id"),
        "{body}"
    );
    drop(keyd);

    config.principals.clear();
    config.server.socket = dir.path().join("keyd2.sock");
    let keyd = KeydFixture::configured(config, Admins::only(vec![])).await;
    let (code, body) = raw(&keyd.client(), Method::GET, "/v1/key/module/a", "").await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert!(
        body.contains(&format!("uid {me} is not a principal")),
        "{body}"
    );
    // Health is open to any caller.
    assert_eq!(
        raw(&keyd.client(), Method::GET, "/v1/health", "").await.0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_with_other_uids_are_refused() {
    let dir = edgeid_testkit::temp_dir();
    edgeid_testkit::open_to_others(dir.path());
    let mut config = KeydFixture::config_in(dir.path());
    config.server.socket_mode = 0o666;
    config.principals = vec![
        PrincipalConfig {
            name: "module-runner".into(),
            uid: 65534,
            keys: Grants::parse(&["module/*"]).unwrap(),
            export: Grants::default(),
        },
        PrincipalConfig {
            name: "other-runner".into(),
            uid: 65533,
            keys: Grants::parse(&["other/*"]).unwrap(),
            export: Grants::default(),
        },
    ];
    let keyd = KeydFixture::configured(config, Admins::root_and_self()).await;
    let socket = keyd.socket();
    let create = |id: &str| format!(r#"{{"id":"{id}","type":"hmac-sha256"}}"#);

    let (code, _) =
        edgeid_testkit::request_as(65534, &socket, Method::POST, "/v1/key", &create("module/a"))
            .await;
    assert_eq!(code, StatusCode::OK, "a granted key");
    let (code, body) = edgeid_testkit::request_as(
        65534,
        &socket,
        Method::POST,
        "/v1/key",
        &create("device-id"),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body:?}");
    let (code, body) =
        edgeid_testkit::request_as(4242, &socket, Method::POST, "/v1/key", &create("module/a"))
            .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "an unlisted uid");
    assert!(String::from_utf8_lossy(&body).contains("uid 4242 is not a principal"));
    // A handle obtained by an administrator does not let an unlisted uid in.
    let handle = keyd.client().key("module/a").await.unwrap();
    let sign = format!(
        r#"{{"handle":"{}","algorithm":"hmac-sha256","data":"eA=="}}"#,
        handle.0
    );
    let (code, _) =
        edgeid_testkit::request_as(4242, &socket, Method::POST, "/v1/sign", &sign).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, _) =
        edgeid_testkit::request_as(65534, &socket, Method::POST, "/v1/sign", &sign).await;
    assert_eq!(code, StatusCode::OK);
    // keyd now remembers that handle as verified: that is no grant, and a
    // principal of other keys, or a stranger, is still refused with it.
    let (code, body) =
        edgeid_testkit::request_as(65533, &socket, Method::POST, "/v1/sign", &sign).await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (code, _) =
        edgeid_testkit::request_as(4242, &socket, Method::POST, "/v1/sign", &sign).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_4xx() {
    let keyd = KeydFixture::start().await;
    let client = keyd.client();
    let pair = client
        .create_key_pair("pair", KeyPairSpec::EcP256)
        .await
        .unwrap();
    let cases: Vec<(Method, &str, String, StatusCode, &str)> = vec![
        (
            Method::POST,
            "/v1/keypair",
            "{not json".into(),
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        (
            Method::POST,
            "/v1/keypair",
            "".into(),
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            Method::POST,
            "/v1/keypair",
            r#"{"id":"a","spec":"ec-p521"}"#.into(),
            StatusCode::BAD_REQUEST,
            "unknown variant `ec-p521`",
        ),
        (
            Method::POST,
            "/v1/keypair",
            r#"{"id":"a"}"#.into(),
            StatusCode::BAD_REQUEST,
            "missing field `spec`",
        ),
        (
            Method::POST,
            "/v1/keypair",
            r#"{"id":"a","spec":"ec-p256","x":1}"#.into(),
            StatusCode::BAD_REQUEST,
            "unknown field `x`",
        ),
        (
            Method::POST,
            "/v1/keypair",
            r#"{"id":"../etc","spec":"ec-p256"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid key id",
        ),
        (
            Method::POST,
            "/v1/keypair",
            r#"{"id":"pair","spec":"rsa-2048"}"#.into(),
            StatusCode::CONFLICT,
            "already exists",
        ),
        (
            Method::POST,
            "/v1/key",
            r#"{"id":"pair","type":"hmac-sha256"}"#.into(),
            StatusCode::CONFLICT,
            "already exists",
        ),
        (
            Method::GET,
            "/v1/keypair/nope",
            "".into(),
            StatusCode::NOT_FOUND,
            "no key pair named 'nope'",
        ),
        (
            Method::GET,
            "/v1/key/pair",
            "".into(),
            StatusCode::NOT_FOUND,
            "it is a ec-p256 key",
        ),
        (
            Method::DELETE,
            "/v1/key/nope",
            "".into(),
            StatusCode::NOT_FOUND,
            "nope",
        ),
        (
            Method::PUT,
            "/v1/sign",
            "{}".into(),
            StatusCode::METHOD_NOT_ALLOWED,
            "allowed: POST",
        ),
        (
            Method::GET,
            "/v1/nothing",
            "".into(),
            StatusCode::NOT_FOUND,
            "no such path",
        ),
        // Outside /v1 is the aziot API, which asks for its api-version first.
        (
            Method::GET,
            "/v2/sign",
            "".into(),
            StatusCode::BAD_REQUEST,
            "api-version not specified",
        ),
        (
            Method::POST,
            "/v1/sign",
            format!(
                r#"{{"handle":"{}","algorithm":"ecdsa-sha256","data":"%%%"}}"#,
                pair.0
            ),
            StatusCode::BAD_REQUEST,
            "base64",
        ),
        (
            Method::POST,
            "/v1/sign",
            format!(
                r#"{{"handle":"{}","algorithm":"rsa-pss-sha256","data":"eA=="}}"#,
                pair.0
            ),
            StatusCode::BAD_REQUEST,
            "cannot sign with rsa-pss-sha256",
        ),
        (
            Method::POST,
            "/v1/sign",
            format!(
                r#"{{"handle":"{}","algorithm":"ecdsa-sha256","data":"eA==","prehashed":true}}"#,
                pair.0
            ),
            StatusCode::BAD_REQUEST,
            "must be 32 bytes",
        ),
        (
            Method::POST,
            "/v1/sign",
            format!(
                r#"{{"handle":"{}","algorithm":"md5","data":"eA=="}}"#,
                pair.0
            ),
            StatusCode::BAD_REQUEST,
            "unknown variant `md5`",
        ),
    ];
    for (method, path, body, want, text) in cases {
        let (code, answer) = raw(&client, method.clone(), path, body.clone()).await;
        assert_eq!(code, want, "{method} {path} {body}: {answer}");
        let message: serde_json::Value =
            serde_json::from_str(&answer).unwrap_or_else(|_| panic!("not JSON: {answer}"));
        let message = message["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(text),
            "{method} {path}: {message:?} lacks {text:?}"
        );
    }
    // Every POST path: malformed JSON is a 400 naming the problem.
    for path in [
        "/v1/keypair",
        "/v1/public-key",
        "/v1/sign",
        "/v1/key",
        "/v1/derive",
        "/v1/export",
        "/v1/encrypt",
        "/v1/decrypt",
    ] {
        let (code, answer) = raw(&client, Method::POST, path, "{\"handle\": ").await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{path}: {answer}");
        assert!(answer.contains("malformed JSON"), "{path}: {answer}");
    }
    // Every path that takes a handle: one from another keyd is a 403.
    let other = KeydFixture::start().await;
    let foreign = other
        .client()
        .create_key("k", SymmetricKeyType::Aes256Gcm, None)
        .await
        .unwrap();
    for (path, extra) in [
        ("/v1/public-key", ""),
        ("/v1/sign", r#","algorithm":"hmac-sha256","data":"eA==""#),
        ("/v1/derive", r#","info":"eA==""#),
        ("/v1/export", ""),
        ("/v1/encrypt", r#","data":"eA==""#),
        ("/v1/decrypt", r#","data":"eA==""#),
    ] {
        let body = format!(r#"{{"handle":"{}"{extra}}}"#, foreign.0);
        let (code, answer) = raw(&client, Method::POST, path, body).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{path}: {answer}");
    }
    // Unknown ids on the id paths.
    for (method, path) in [
        (Method::DELETE, "/v1/keypair/nope"),
        (Method::GET, "/v1/key/nope"),
    ] {
        assert_eq!(
            raw(&client, method, path, "").await.0,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }

    // 405 says what is allowed.
    let (status, _) = client
        .transport()
        .raw(Method::PUT, "/v1/sign", Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // Over the cap (256 KiB): 413, and keyd keeps serving.
    let huge = format!(
        r#"{{"handle":"{}","algorithm":"ecdsa-sha256","data":"{}"}}"#,
        pair.0,
        "A".repeat(edgeid_keyd::config::DEFAULT_MAX_BODY_BYTES)
    );
    let (code, answer) = raw(&client, Method::POST, "/v1/sign", huge).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    client
        .sign(&pair, SignAlgorithm::EcdsaSha256, b"still here", false)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_and_others_are_served() {
    use tokio::io::AsyncReadExt;
    let dir = edgeid_testkit::temp_dir();
    let mut config = KeydFixture::config_in(dir.path());
    config.server.idle_timeout_secs = 1;
    config.server.header_read_timeout_secs = 1;
    let keyd = KeydFixture::configured(config, Admins::root_and_self()).await;
    let mut silent = tokio::net::UnixStream::connect(keyd.socket())
        .await
        .unwrap();
    let client = keyd.client();
    let handle = client
        .create_key("mac", SymmetricKeyType::HmacSha256, None)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        silent.read(&mut buf).await
    });
    while !reader.is_finished() {
        client
            .sign(&handle, SignAlgorithm::HmacSha256, b"busy", false)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            started.elapsed().as_secs() < 10,
            "silent connection still open after 10 s"
        );
    }
    let n = reader.await.unwrap().unwrap_or(0);
    assert_eq!(
        n, 0,
        "the silent connection is closed without a response body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_signs_all_verify() {
    let keyd = KeydFixture::start().await;
    let client = keyd.client();
    let handle = client
        .create_key_pair("busy", KeyPairSpec::EcP256)
        .await
        .unwrap();
    openssl::check_concurrent_signing(&client, &[handle], 32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_always_get_a_readable_413() {
    // The client writes its whole body before reading: keyd must read (and
    // discard) it before answering, or the client sees a broken pipe.
    let keyd = KeydFixture::start().await;
    let body = Bytes::from(vec![b'A'; edgeid_keyd::config::DEFAULT_MAX_BODY_BYTES + 1]);
    for i in 0..50 {
        // A fresh client each time: a new connection, no pooled state.
        let client = keyd.client();
        let (status, _) = client
            .transport()
            .raw(Method::POST, "/v1/sign", body.clone())
            .await
            .unwrap_or_else(|e| panic!("attempt {i}: {e}"));
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "attempt {i}");
    }
    let h = keyd
        .client()
        .create_key("after", SymmetricKeyType::HmacSha256, None)
        .await
        .unwrap();
    keyd.client()
        .sign(&h, SignAlgorithm::HmacSha256, b"still serving", false)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_lists_only_the_keys_it_may_use() {
    assert!(
        edgeid_testkit::is_root(),
        "this test switches uids: run it as root"
    );
    let dir = edgeid_testkit::temp_dir();
    edgeid_testkit::open_to_others(dir.path());
    let mut config = KeydFixture::config_in(dir.path());
    config.server.socket_mode = 0o666;
    config.principals = vec![PrincipalConfig {
        name: "module-runner".into(),
        uid: 65534,
        keys: Grants::parse(&["module/*"]).unwrap(),
        export: Grants::default(),
    }];
    let keyd = KeydFixture::configured(config, Admins::root_and_self()).await;
    let client = keyd.client();
    client
        .create_key_pair("device-id", KeyPairSpec::EcP384)
        .await
        .unwrap();
    client
        .create_key("module/a", SymmetricKeyType::HmacSha256, None)
        .await
        .unwrap();
    let all = client.list_keys().await.unwrap();
    let seen: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|k| (k.id.as_str(), k.kind.as_str(), k.backend.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("device-id", "ec-p384", "software"),
            ("module/a", "hmac-sha256", "software")
        ]
    );
    let (code, body) =
        edgeid_testkit::request_as(65534, &keyd.socket(), Method::GET, "/v1/keys", "").await;
    assert_eq!(code, StatusCode::OK);
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let ids: Vec<&str> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["module/a"], "only what its grants match");
}
