//! keyd's aziot keys API (issue 18) over its socket, with bodies exactly as
//! the reference's client (`aziot-key-client-async`) builds them: every
//! answer checked by a second party (signatures by the `p256` crate and
//! `openssl`, MACs and derived keys recomputed with the `hmac` crate).

use edgeid_common::authz::Admins;
use edgeid_keyd::api::SignAlgorithm;
use edgeid_testkit::aziot::{b64, unb64};
use edgeid_testkit::hmac_sha256;
use edgeid_testkit::KeydFixture;
use http::{Method, StatusCode};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const V1: &str = "2020-09-01";
const V2: &str = "2021-05-01";

/// One request as the reference's client sends it; status and JSON body.
async fn call(keyd: &KeydFixture, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    edgeid_testkit::aziot::call(&keyd.socket(), method, path, body).await
}

async fn call_raw(
    keyd: &KeydFixture,
    method: Method,
    path: &str,
    body: String,
) -> (StatusCode, Value) {
    edgeid_testkit::aziot::call_raw(&keyd.socket(), method, path, body).await
}

/// `POST` at `route?api-version=v` expecting 200; the JSON answer.
async fn post_ok(keyd: &KeydFixture, route: &str, v: &str, body: Value) -> Value {
    let (status, answer) = call(
        keyd,
        Method::POST,
        &format!("{route}?api-version={v}"),
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{route}: {answer}");
    answer
}

async fn parameter(keyd: &KeydFixture, handle: &Value, name: &str) -> Value {
    post_ok(
        keyd,
        &format!("/parameters/{name}"),
        V1,
        json!({ "keyHandle": handle }),
    )
    .await["value"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ec_key_pair_signs_digests_that_its_ec_point_verifies() {
    let keyd = KeydFixture::start().await;
    for v in [V1, V2] {
        let id = format!("aziot-edged-ca-{v}");
        // What aziot-edged sends for its edge CA key.
        let created = post_ok(
            &keyd,
            "/keypair",
            v,
            json!({ "keyId": id, "preferredAlgorithms": "ec-p256:rsa-2048:*" }),
        )
        .await;
        let handle = created["keyHandle"].clone();
        // Load by id: the same key (its point is the same).
        let (status, loaded) = call(
            &keyd,
            Method::GET,
            &format!("/keypair/{id}?api-version={v}"),
            Value::Null,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{loaded}");
        assert_eq!(parameter(&keyd, &handle, "algorithm").await, "ECDSA");
        // DER of the OID 1.2.840.10045.3.1.7 (prime256v1).
        assert_eq!(
            unb64(&parameter(&keyd, &handle, "ec-curve-oid").await),
            [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
        );
        let point = unb64(&parameter(&keyd, &handle, "ec-point").await);
        assert_eq!(
            point.len(),
            33,
            "the reference answers the compressed point"
        );
        assert_eq!(
            point,
            unb64(&parameter(&keyd, &loaded["keyHandle"], "ec-point").await)
        );
        let verifier = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
        let digest = Sha256::digest(b"to be signed by the edge CA");
        let signed = post_ok(
            &keyd,
            "/sign",
            v,
            json!({ "keyHandle": handle, "algorithm": "ECDSA", "parameters": { "digest": b64(&digest) } }),
        )
        .await;
        let signature = p256::ecdsa::Signature::from_der(&unb64(&signed["signature"]))
            .expect("DER, as the reference");
        verifier.verify_prehash(&digest, &signature).unwrap();
        // Another digest does not verify with that signature.
        let other = Sha256::digest(b"something else");
        assert!(verifier.verify_prehash(&other, &signature).is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_key_pair_is_loaded_whatever_the_preference() {
    let keyd = KeydFixture::start().await;
    let first = post_ok(
        &keyd,
        "/keypair",
        V1,
        json!({ "keyId": "k", "preferredAlgorithms": "rsa-2048" }),
    )
    .await;
    assert_eq!(
        parameter(&keyd, &first["keyHandle"], "algorithm").await,
        "RSA"
    );
    let again = post_ok(
        &keyd,
        "/keypair",
        V1,
        json!({ "keyId": "k", "preferredAlgorithms": "ec-p256" }),
    )
    .await;
    assert_eq!(
        parameter(&keyd, &again["keyHandle"], "algorithm").await,
        "RSA"
    );
    // No preference at all is the reference's default, ec-p256 first.
    let fresh = post_ok(&keyd, "/keypair", V1, json!({ "keyId": "fresh" })).await;
    assert_eq!(
        parameter(&keyd, &fresh["keyHandle"], "algorithm").await,
        "ECDSA"
    );
    // Nothing keyd makes among the preferences: refused, nothing created.
    let (status, body) = call(
        &keyd,
        Method::POST,
        "/keypair?api-version=2020-09-01",
        json!({ "keyId": "none", "preferredAlgorithms": "dsa-1024:ed448" }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rsa_key_signs_a_digest_info_that_openssl_verifies_with_its_modulus() {
    let keyd = KeydFixture::start().await;
    let created = post_ok(
        &keyd,
        "/keypair",
        V2,
        json!({ "keyId": "rsa", "preferredAlgorithms": "rsa-2048:*" }),
    )
    .await;
    let handle = created["keyHandle"].clone();
    let modulus = unb64(&parameter(&keyd, &handle, "rsa-modulus").await);
    assert_eq!(modulus.len(), 256);
    assert_eq!(
        unb64(&parameter(&keyd, &handle, "rsa-exponent").await),
        [1, 0, 1]
    );
    // The same key through edgeid's own API: its PEM, read by openssl, has
    // this modulus.
    let v1_handle = keyd.client().key_pair("rsa").await.unwrap();
    let pem = keyd.client().public_key(&v1_handle).await.unwrap().pem;
    let dir = edgeid_testkit::temp_dir();
    std::fs::write(dir.path().join("pub.pem"), &pem).unwrap();
    let out = std::process::Command::new(edgeid_testkit::require_tool("openssl", "openssl"))
        .args(["rsa", "-pubin", "-noout", "-modulus", "-in"])
        .arg(dir.path().join("pub.pem"))
        .output()
        .unwrap();
    let shown = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        shown.trim(),
        format!("Modulus={}", hex::encode_upper(&modulus))
    );
    // How the reference's OpenSSL engine signs with an RSA key: "encrypt"
    // a SHA-256 DigestInfo with RSA-PKCS1.
    let message = b"a certificate to be";
    let mut digest_info = vec![
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    digest_info.extend_from_slice(&Sha256::digest(message));
    let signed = post_ok(
        &keyd,
        "/encrypt",
        V2,
        json!({ "keyHandle": handle, "algorithm": "RSA-PKCS1", "plaintext": b64(&digest_info) }),
    )
    .await;
    edgeid_testkit::openssl::assert_verifies(
        SignAlgorithm::RsaPkcs1Sha256,
        &pem,
        message,
        &unb64(&signed["ciphertext"]),
    );
    // Raw RSA and other digests: refused with a reason.
    for body in [
        json!({ "keyHandle": handle, "algorithm": "RSA-NO-PADDING", "plaintext": b64(&[0; 256]) }),
        json!({ "keyHandle": handle, "algorithm": "RSA-PKCS1", "plaintext": b64(&[1; 35]) }),
    ] {
        let (status, answer) =
            call(&keyd, Method::POST, "/encrypt?api-version=2021-05-01", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains("RSA"),
            "{answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_keys_mac_derive_export_and_seal_as_the_reference() {
    let keyd = KeydFixture::start().await;
    // An imported SAS key, as identityd's manual provisioning imports one.
    let sas = b"a device's shared access key".to_vec();
    let key = post_ok(
        &keyd,
        "/key",
        V1,
        json!({ "keyId": "device-id", "keyBytes": b64(&sas), "usage": "sign" }),
    )
    .await;
    let mac = post_ok(
        &keyd,
        "/sign",
        V1,
        json!({ "keyHandle": key["keyHandle"], "algorithm": "HMAC-SHA256", "parameters": { "message": b64(b"hub/devices/d\n1700000000") } }),
    )
    .await;
    assert_eq!(
        unb64(&mac["signature"]),
        hmac_sha256(&sas, b"hub/devices/d\n1700000000")
    );
    let (status, loaded) = call(
        &keyd,
        Method::GET,
        "/key/device-id?api-version=2020-09-01",
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{loaded}");

    // Derivation from a base keyd derives from (module-derivation), as
    // identityd makes module keys; the derived key signs and is exported.
    let base_bytes = b"the module derivation base".to_vec();
    let base = post_ok(&keyd, "/key", V1, json!({ "keyId": "module-derivation", "keyBytes": b64(&base_bytes), "usage": "derive,sign" })).await;
    let derived = post_ok(
        &keyd,
        "/derivedkey",
        V1,
        json!({ "baseKeyHandle": base["keyHandle"], "derivationData": b64(b"m1:gen1:primary") }),
    )
    .await;
    let expected = hmac_sha256(&base_bytes, b"m1:gen1:primary");
    let exported = post_ok(
        &keyd,
        "/derivedkey/export",
        V1,
        json!({ "keyHandle": derived["keyHandle"] }),
    )
    .await;
    assert_eq!(unb64(&exported["key"]), expected);
    let mac = post_ok(
        &keyd,
        "/sign",
        V1,
        json!({ "keyHandle": derived["keyHandle"], "algorithm": "HMAC-SHA256", "parameters": { "message": b64(b"token") } }),
    )
    .await;
    assert_eq!(unb64(&mac["signature"]), hmac_sha256(&expected, b"token"));
    // A key that signs is no base of derivation (its MAC of the data would
    // be the derived key): refused, with the reason.
    let (status, answer) = call(
        &keyd,
        Method::POST,
        "/derivedkey?api-version=2020-09-01",
        json!({ "baseKeyHandle": key["keyHandle"], "derivationData": b64(b"x") }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    // AEAD as aziot-edged's workload encrypt asks: the master encryption
    // key, the module's iv, aad = module id and generation.
    let enc = post_ok(
        &keyd,
        "/key",
        V1,
        json!({ "keyId": "iotedge_master_encryption_id", "usage": "encrypt" }),
    )
    .await;
    let aead = |iv: &[u8], aad: &[u8]| json!({ "algorithm": "AEAD", "parameters": { "iv": b64(iv), "aad": b64(aad) } });
    let mut request = aead(b"0123456789ab", b"edgeHubgen1");
    request["keyHandle"] = enc["keyHandle"].clone();
    request["plaintext"] = json!(b64(b"the hub's state"));
    let sealed = post_ok(&keyd, "/encrypt", V1, request.clone()).await;
    let again = post_ok(&keyd, "/encrypt", V1, request).await;
    assert_ne!(
        sealed["ciphertext"], again["ciphertext"],
        "a fresh nonce each time"
    );
    let mut open = aead(b"0123456789ab", b"edgeHubgen1");
    open["keyHandle"] = enc["keyHandle"].clone();
    open["ciphertext"] = sealed["ciphertext"].clone();
    let opened = post_ok(&keyd, "/decrypt", V1, open.clone()).await;
    assert_eq!(unb64(&opened["plaintext"]), b"the hub's state");
    // Another iv, or another module's aad, does not open it.
    for (iv, aad) in [
        (&b"0123456789ac"[..], &b"edgeHubgen1"[..]),
        (b"0123456789ab", b"otherModgen1"),
    ] {
        let mut wrong = aead(iv, aad);
        wrong["keyHandle"] = enc["keyHandle"].clone();
        wrong["ciphertext"] = sealed["ciphertext"].clone();
        let (status, answer) = call(
            &keyd,
            Method::POST,
            "/decrypt?api-version=2020-09-01",
            wrong,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_key_pair_keeps_its_key_and_a_deleted_one_is_gone() {
    let keyd = KeydFixture::start().await;
    let temp = post_ok(&keyd, "/keypair", V2, json!({ "keyId": "ca-temp" })).await;
    let point = parameter(&keyd, &temp["keyHandle"], "ec-point").await;
    let (status, body) = call(
        &keyd,
        Method::POST,
        "/keypair/ca?api-version=2021-05-01",
        json!({ "from": "ca-temp" }),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = call(
        &keyd,
        Method::GET,
        "/keypair/ca-temp?api-version=2021-05-01",
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, moved) = call(
        &keyd,
        Method::GET,
        "/keypair/ca?api-version=2021-05-01",
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        parameter(&keyd, &moved["keyHandle"], "ec-point").await,
        point
    );
    // The old handle named the key under its old id: it is dead.
    let (status, _) = call(
        &keyd,
        Method::POST,
        "/parameters/ec-point?api-version=2021-05-01",
        json!({ "keyHandle": temp["keyHandle"] }),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Onto itself: the reference's 400.
    let (status, _) = call(
        &keyd,
        Method::POST,
        "/keypair/ca?api-version=2021-05-01",
        json!({ "from": "ca" }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Delete takes the handle in the body; the key is gone for every handle.
    let handle = moved["keyHandle"].clone();
    let (status, _) = call(
        &keyd,
        Method::DELETE,
        "/key?api-version=2021-05-01",
        json!({ "keyHandle": handle }),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "DELETE /key does not reach a key pair"
    );
    let (status, _) = call(
        &keyd,
        Method::DELETE,
        "/keypair?api-version=2021-05-01",
        json!({ "keyHandle": handle }),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let digest = Sha256::digest(b"x");
    let (status, _) = call(
        &keyd,
        Method::POST,
        "/sign?api-version=2021-05-01",
        json!({ "keyHandle": handle, "algorithm": "ECDSA", "parameters": { "digest": b64(&digest) } }),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_references_statuses_and_a_message() {
    let keyd = KeydFixture::start().await;
    let ec = post_ok(&keyd, "/keypair", V1, json!({ "keyId": "ec" })).await;
    let handle = ec["keyHandle"].as_str().unwrap().to_owned();
    let sign = |h: &str| {
        json!({ "keyHandle": h, "algorithm": "ECDSA", "parameters": { "digest": b64(&[7; 32]) } })
            .to_string()
    };
    let mut tampered = handle.clone().into_bytes();
    let at = 6; // inside the payload
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let cases: Vec<(Method, &str, String, StatusCode, &str)> = vec![
        (Method::POST, "/sign", sign(&handle), StatusCode::BAD_REQUEST, "api-version not specified"),
        (Method::POST, "/sign?api-version=2022-08-01", sign(&handle), StatusCode::BAD_REQUEST, "invalid api-version"),
        (Method::GET, "/nothing-here", String::new(), StatusCode::BAD_REQUEST, "api-version not specified"),
        (Method::GET, "/nothing-here?api-version=2020-09-01", String::new(), StatusCode::NOT_FOUND, ""),
        (Method::POST, "/sign?api-version=2020-09-01", "{not json".into(), StatusCode::UNPROCESSABLE_ENTITY, ""),
        (Method::POST, "/sign?api-version=2020-09-01", r#"{"keyHandle":"x","algorithm":"DSA","parameters":{}}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, ""),
        (Method::POST, "/sign?api-version=2020-09-01", String::new(), StatusCode::BAD_REQUEST, "missing request body"),
        (Method::POST, "/sign?api-version=2020-09-01", sign(&tampered), StatusCode::FORBIDDEN, "not issued by this keyd"),
        (Method::POST, "/sign?api-version=2020-09-01", sign("sr=abc&sig=def"), StatusCode::BAD_REQUEST, "malformed key handle"),
        (
            Method::POST,
            "/sign?api-version=2020-09-01",
            json!({ "keyHandle": handle, "algorithm": "ECDSA", "parameters": { "digest": b64(&[7; 20]) } }).to_string(),
            StatusCode::BAD_REQUEST,
            "32 bytes",
        ),
        (Method::POST, "/parameters/rsa-modulus?api-version=2020-09-01", json!({ "keyHandle": handle }).to_string(), StatusCode::BAD_REQUEST, "not a parameter"),
        (Method::GET, "/keypair/absent?api-version=2020-09-01", String::new(), StatusCode::NOT_FOUND, "absent"),
        (Method::POST, "/key?api-version=2020-09-01", json!({ "keyId": "k", "usage": "sign,encrypt" }).to_string(), StatusCode::BAD_REQUEST, "not both"),
        (Method::POST, "/key?api-version=2020-09-01", json!({ "keyId": "k", "usage": "launch" }).to_string(), StatusCode::BAD_REQUEST, "invalid key usage"),
        (Method::POST, "/keypair?api-version=2020-09-01", json!({ "keyId": "../x" }).to_string(), StatusCode::BAD_REQUEST, "invalid key id"),
    ];
    for (method, path, body, expected, says) in cases {
        let (status, answer) = call_raw(&keyd, method.clone(), path, body.clone()).await;
        assert_eq!(status, expected, "{method} {path} {body}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{method} {path}: {message}");
        assert!(!message.contains("BEGIN"), "{message}");
    }
    // Nothing in the store was touched by any of it.
    let keys = keyd.client().list_keys().await.unwrap();
    assert_eq!(
        keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["ec"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_need_a_grant_handles_are_the_capability_and_v1_handles_stay_checked() {
    assert!(
        edgeid_testkit::is_root(),
        "this test connects as other uids: run it as root"
    );
    const PRINCIPAL: u32 = 4610;
    const STRANGER: u32 = 4611;
    let dir = edgeid_testkit::temp_dir();
    edgeid_testkit::open_to_others(dir.path());
    let mut config = KeydFixture::config_in(dir.path());
    config.server.socket_mode = 0o666;
    config.principals = vec![edgeid_keyd::config::PrincipalConfig {
        name: "host-agent".into(),
        uid: PRINCIPAL,
        keys: edgeid_common::authz::Grants::parse(&["agent/*"]).unwrap(),
        export: edgeid_common::authz::Grants::default(),
    }];
    let keyd = KeydFixture::configured(config, edgeid_common::authz::Admins::root_and_self()).await;
    let socket = keyd.socket();
    let create = |id: &str| json!({ "keyId": id, "preferredAlgorithms": "*" });

    // A principal creates what its grant names, not beyond it.
    let (status, mine) = edgeid_testkit::aziot::call_as(
        PRINCIPAL,
        &socket,
        Method::POST,
        "/keypair?api-version=2020-09-01",
        create("agent/one"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{mine}");
    let (status, body) = edgeid_testkit::aziot::call_as(
        PRINCIPAL,
        &socket,
        Method::POST,
        "/keypair?api-version=2020-09-01",
        create("device-ca"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // A stranger names no key by id: not create, load or move.
    for (method, path, body) in [
        (
            Method::POST,
            "/keypair?api-version=2020-09-01",
            create("agent/two"),
        ),
        (
            Method::GET,
            "/keypair/agent%2Fone?api-version=2020-09-01",
            Value::Null,
        ),
        (
            Method::POST,
            "/key?api-version=2020-09-01",
            json!({ "keyId": "agent/k", "usage": "sign" }),
        ),
        (
            Method::POST,
            "/keypair/agent%2Fthree?api-version=2020-09-01",
            json!({ "from": "agent/one" }),
        ),
    ] {
        let (status, answer) =
            edgeid_testkit::aziot::call_as(STRANGER, &socket, method.clone(), path, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
    }
    // The handle is the capability (the reference's model): whoever holds
    // the principal's handle signs with it.
    let digest = Sha256::digest(b"signed by whoever holds the handle");
    let sign = |handle: &Value| json!({ "keyHandle": handle, "algorithm": "ECDSA", "parameters": { "digest": b64(&digest) } });
    let (status, signed) = edgeid_testkit::aziot::call_as(
        STRANGER,
        &socket,
        Method::POST,
        "/sign?api-version=2020-09-01",
        sign(&mine["keyHandle"]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{signed}");
    let point = unb64(&parameter(&keyd, &mine["keyHandle"], "ec-point").await);
    p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
        .unwrap()
        .verify_prehash(
            &digest,
            &p256::ecdsa::Signature::from_der(&unb64(&signed["signature"])).unwrap(),
        )
        .unwrap();
    // A handle edgeid's own API issued names a key, not a capability: on
    // the aziot routes too, its use is checked against the caller's grants.
    let v1 = keyd.client().key_pair("agent/one").await.unwrap();
    let (status, body) = edgeid_testkit::aziot::call_as(
        STRANGER,
        &socket,
        Method::POST,
        "/sign?api-version=2020-09-01",
        sign(&json!(v1.0)),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = edgeid_testkit::aziot::call_as(
        PRINCIPAL,
        &socket,
        Method::POST,
        "/sign?api-version=2020-09-01",
        sign(&json!(v1.0)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Export of a derived key needs the export grant even with the handle.
    let base = post_ok(
        &keyd,
        "/key",
        V1,
        json!({ "keyId": "module-derivation", "usage": "derive" }),
    )
    .await;
    let derived = post_ok(
        &keyd,
        "/derivedkey",
        V1,
        json!({ "baseKeyHandle": base["keyHandle"], "derivationData": b64(b"m") }),
    )
    .await;
    let (status, body) = edgeid_testkit::aziot::call_as(
        STRANGER,
        &socket,
        Method::POST,
        "/derivedkey/export?api-version=2020-09-01",
        json!({ "keyHandle": derived["keyHandle"] }),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.get("key").is_none());
}

/// The reference's `preloaded_keys` with a `file:` location: the file's raw
/// bytes are the key, read at every start; a new file is a new key.
#[tokio::test]
async fn a_preloaded_key_file_is_the_key_and_a_new_file_a_new_key() {
    let dir = edgeid_testkit::temp_dir();
    let file = dir.path().join("device-id");
    let first: Vec<u8> = (0u8..32).collect();
    std::fs::write(&file, &first).unwrap();
    let mut config = KeydFixture::config_in(dir.path());
    config.preloaded_keys = vec![edgeid_keyd::config::PreloadedKey {
        id: "device-id".into(),
        file: file.clone(),
        symmetric: None,
    }];
    // The id already holds a key pair (as edgeid's default local
    // provisioning makes one): the file replaces it.
    {
        let mut keyd =
            KeydFixture::configured(KeydFixture::config_in(dir.path()), Admins::root_and_self())
                .await;
        let (status, pair) = edgeid_testkit::aziot::call(
            &keyd.socket(),
            Method::POST,
            "/keypair?api-version=2021-05-01",
            json!({ "keyId": "device-id", "preferredAlgorithms": "ec-p256:*" }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{pair}");
        // Stopped, not only dropped: the next keyd binds the same socket,
        // which a keyd still draining would hold (that raced, once in a while).
        keyd.stop().await;
    }
    let mut keyd = KeydFixture::configured(config.clone(), Admins::root_and_self()).await;
    let mac_now = |keyd: &KeydFixture| {
        let socket = keyd.socket();
        async move {
            let (status, key) = edgeid_testkit::aziot::call(
                &socket,
                Method::GET,
                "/key/device-id?api-version=2020-09-01",
                Value::Null,
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{key}");
            let (status, mac) = edgeid_testkit::aziot::call(
                &socket,
                Method::POST,
                "/sign?api-version=2020-09-01",
                json!({ "keyHandle": key["keyHandle"], "algorithm": "HMAC-SHA256", "parameters": { "message": b64(b"sr\n1700000000") } }),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{mac}");
            unb64(&mac["signature"])
        }
    };
    assert_eq!(mac_now(&keyd).await, hmac_sha256(&first, b"sr\n1700000000"));
    keyd.restart().await;
    assert_eq!(
        mac_now(&keyd).await,
        hmac_sha256(&first, b"sr\n1700000000"),
        "the same file, the same key"
    );
    let second: Vec<u8> = (100u8..164).collect();
    std::fs::write(&file, &second).unwrap();
    keyd.restart().await;
    assert_eq!(
        mac_now(&keyd).await,
        hmac_sha256(&second, b"sr\n1700000000"),
        "a new file (a new connection string applied) is a new key"
    );
    keyd.stop().await;

    // A missing or oversized file, or a PEM that is no key pair, stops
    // keyd, naming the key and the file.
    let pem = b"-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----\n".to_vec();
    for (content, wanted) in [
        (None, "cannot read it"),
        (Some(vec![7u8; 4096]), "larger than"),
        (Some(pem), "not a key pair keyd holds"),
    ] {
        let dir = edgeid_testkit::temp_dir();
        let file = dir.path().join("device-id");
        if let Some(bytes) = &content {
            std::fs::write(&file, bytes).unwrap();
        }
        let mut config = KeydFixture::config_in(dir.path());
        config.preloaded_keys = vec![edgeid_keyd::config::PreloadedKey {
            id: "device-id".into(),
            file: file.clone(),
            symmetric: None,
        }];
        let err = match edgeid_keyd::Keyd::open(&config, Admins::root_and_self()).await {
            Ok(_) => panic!("keyd opened with {content:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("preloaded key 'device-id'"), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(err.contains(wanted), "{err}");
    }
}

/// The reference's preloaded key pairs (an X.509 identity's `identity_pk =
/// "file:///...pem"`): PKCS#8 and SEC1 PEM files made by openssl become
/// keyd key pairs whose public key is openssl's and whose ECDSA signature
/// openssl verifies; a restart keeps the same key (its handle still signs);
/// a PKCS#1 RSA file is refused with how to convert it.
#[tokio::test]
async fn preloaded_pem_key_pairs_are_openssls_keys() {
    use edgeid_testkit::openssl::{self, run};
    let dir = edgeid_testkit::temp_dir();
    let path = |name: &str| dir.path().join(name).display().to_string();
    openssl::new_p256_key(&dir.path().join("p256.pem"));
    run(&[
        "ecparam",
        "-name",
        "secp384r1",
        "-genkey",
        "-noout",
        "-out",
        &path("p384-sec1.pem"),
    ]);
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &path("rsa.pem"),
    ]);
    assert!(std::fs::read_to_string(path("p384-sec1.pem"))
        .unwrap()
        .contains("BEGIN EC PRIVATE KEY"));
    let mut config = KeydFixture::config_in(dir.path());
    config.preloaded_keys = ["p256", "p384-sec1", "rsa"]
        .iter()
        .map(|id| edgeid_keyd::config::PreloadedKey {
            id: (*id).into(),
            file: dir.path().join(format!("{id}.pem")),
            symmetric: None,
        })
        .collect();
    let mut keyd = KeydFixture::configured(config.clone(), Admins::root_and_self()).await;
    let mut handles = Vec::new();
    for id in ["p256", "p384-sec1", "rsa"] {
        let handle = keyd.client().key_pair(id).await.unwrap();
        let ours = keyd.client().public_key(&handle).await.unwrap().pem;
        let theirs = run(&["pkey", "-in", &path(&format!("{id}.pem")), "-pubout"]);
        assert_eq!(
            ours.replace("\r\n", "\n").trim(),
            String::from_utf8_lossy(&theirs).trim(),
            "{id}: openssl's public key"
        );
        handles.push((id, handle));
    }
    keyd.restart().await;
    let (status, pair) = call(
        &keyd,
        Method::GET,
        "/keypair/p256?api-version=2020-09-01",
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{pair}");
    let digest = Sha256::digest(b"signed by a preloaded key");
    let signed = post_ok(
        &keyd,
        "/sign",
        V1,
        json!({ "keyHandle": pair["keyHandle"], "algorithm": "ECDSA", "parameters": { "digest": b64(&digest) } }),
    )
    .await;
    std::fs::write(dir.path().join("data"), b"signed by a preloaded key").unwrap();
    std::fs::write(dir.path().join("sig"), unb64(&signed["signature"])).unwrap();
    std::fs::write(
        dir.path().join("pub.pem"),
        run(&["pkey", "-in", &path("p256.pem"), "-pubout"]),
    )
    .unwrap();
    run(&[
        "dgst",
        "-sha256",
        "-verify",
        &path("pub.pem"),
        "-signature",
        &path("sig"),
        &path("data"),
    ]);
    for (id, handle) in &handles {
        assert!(
            keyd.client().public_key(handle).await.is_ok(),
            "{id}: the handle from before the restart still names the key (not imported anew)"
        );
    }
    keyd.stop().await;

    run(&["genrsa", "-traditional", "-out", &path("pkcs1.pem"), "2048"]);
    let mut config = KeydFixture::config_in(&dir.path().join("other"));
    config.preloaded_keys = vec![edgeid_keyd::config::PreloadedKey {
        id: "pkcs1".into(),
        file: dir.path().join("pkcs1.pem"),
        symmetric: None,
    }];
    let err = match edgeid_keyd::Keyd::open(&config, Admins::root_and_self()).await {
        Ok(_) => panic!("a PKCS#1 key was taken"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("openssl pkcs8 -topk8"), "{err}");
}
