//! aziot-edged's encryption key (`iotedge_master_encryption_id`) taken over
//! from an installed aziot-identity-service, so that what IoT Edge's
//! modules encrypted through the workload API still decrypts: edgeHub and
//! edgeAgent encrypt with a fixed 32-byte IV (a GUID's hex digits) and
//! aziot-edged's aad (module id and generation id), and libaziot-keys
//! answers AES-256-GCM in its v2 layout (`0x02 || ciphertext || tag`; v1,
//! IoT Edge 1.1's, is `0x01 || tag || ciphertext`). The ciphertexts here are
//! made by Python's `cryptography` (OpenSSL), not by edgeid.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use edgeid_common::authz::Admins;
use edgeid_keyd::config::PreloadedKey;
use edgeid_testkit::aziot::call;
use edgeid_testkit::KeydFixture;
use http::{Method, StatusCode};
use serde_json::json;
use toml::Table;

mod support;

const ID: &str = "iotedge_master_encryption_id";

/// AES-256-GCM by Python's cryptography: `ciphertext || tag`.
fn reference_seal(key: &[u8], iv: &[u8], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let out = edgeid_testkit::clients::python()
        .args([
            "-c",
            "import sys; from cryptography.hazmat.primitives.ciphers.aead import AESGCM; \
             k, n, a, p = (bytes.fromhex(x) for x in sys.argv[1:]); \
             print(AESGCM(k).encrypt(n, p, a).hex())",
        ])
        .args([key, iv, aad, plaintext].map(hex::encode))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    hex::decode(String::from_utf8(out.stdout).unwrap().trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_modules_encrypted_under_the_reference_still_decrypts() {
    let root = support::aziot_root();
    let r = root.path();
    let keys = r.join("var/lib/aziot/keyd/keys");
    std::fs::create_dir_all(&keys).unwrap();
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).unwrap();
    let file = keys.join(support::reference_name(ID, "key"));
    std::fs::write(&file, key).unwrap();

    let (ok, said) = support::config_apply(r, &[]);
    assert!(ok, "{said}");
    assert!(said.contains(ID), "{said}");
    let generated: Table = std::fs::read_to_string(r.join("etc/edgeid/keyd.d/config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let imported = generated["imported_key"].as_array().unwrap();
    let entry = imported
        .iter()
        .find(|e| e["id"].as_str() == Some(ID))
        .unwrap();
    assert_eq!(entry["symmetric"].as_str(), Some("aes-256-gcm"));

    let dir = edgeid_testkit::temp_dir();
    let mut config = KeydFixture::config_in(dir.path());
    config.imported_keys = vec![PreloadedKey {
        id: ID.into(),
        file: file.clone(),
        symmetric: Some(edgeid_keyd::api::SymmetricKeyType::Aes256Gcm),
    }];
    let keyd = KeydFixture::configured(config, Admins::root_and_self()).await;
    let socket = keyd.socket();
    // As aziot-edged gets it: create-if-not-exists, for encryption.
    let (status, made) = call(
        &socket,
        Method::POST,
        "/key?api-version=2020-09-01",
        json!({ "keyId": ID, "usage": "encrypt" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    let handle = made["keyHandle"].clone();

    // edgeHub's IV (a GUID's hex digits) and aziot-edged's aad.
    let iv = b"3f2504e04f8911d39a0c0305e82c3301";
    let aad = b"$edgeHub638356473476598735";
    let plaintext = b"edgeHub's stored state";
    let sealed = reference_seal(&key, iv, aad, plaintext);
    let (body, tag) = sealed.split_at(sealed.len() - 16);
    let v2 = [&[2u8][..], body, tag].concat();
    let v1 = [&[1u8][..], tag, body].concat();
    let decrypt = |ciphertext: &[u8], aad: &[u8]| {
        json!({
            "keyHandle": handle,
            "algorithm": "AEAD",
            "parameters": { "iv": STANDARD.encode(iv), "aad": STANDARD.encode(aad) },
            "ciphertext": STANDARD.encode(ciphertext),
        })
    };
    for ciphertext in [&v2, &v1] {
        let (status, opened) = call(
            &socket,
            Method::POST,
            "/decrypt?api-version=2020-09-01",
            decrypt(ciphertext, aad),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{opened}");
        assert_eq!(
            STANDARD
                .decode(opened["plaintext"].as_str().unwrap())
                .unwrap(),
            plaintext
        );
    }
    // Another module's aad, or one altered byte, does not open it.
    let mut altered = v2.clone();
    altered[3] ^= 1;
    for (ciphertext, aad) in [(&v2, &b"$edgeAgent1"[..]), (&altered, &aad[..])] {
        let (status, refused) = call(
            &socket,
            Method::POST,
            "/decrypt?api-version=2020-09-01",
            decrypt(ciphertext, aad),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    }

    // Encrypted again, it is keyd's own form (its own nonce), and opens.
    let (status, sealed) = call(
        &socket,
        Method::POST,
        "/encrypt?api-version=2020-09-01",
        json!({
            "keyHandle": handle,
            "algorithm": "AEAD",
            "parameters": { "iv": STANDARD.encode(iv), "aad": STANDARD.encode(aad) },
            "plaintext": STANDARD.encode(plaintext),
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{sealed}");
    let ours = STANDARD
        .decode(sealed["ciphertext"].as_str().unwrap())
        .unwrap();
    assert_ne!(ours, v2);
    let (status, opened) = call(
        &socket,
        Method::POST,
        "/decrypt?api-version=2020-09-01",
        decrypt(&ours, aad),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{opened}");
}
