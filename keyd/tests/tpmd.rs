//! aziot-tpmd's API (issue 19), which keyd serves since it holds the TPM:
//! bodies as the reference's `aziot-tpm-client-async` sends them. A
//! provisioning service (a second swtpm, playing DPS) wraps an HMAC key to
//! the EK and storage key `GET /get_tpm_keys` answers; after
//! `POST /import_auth_key` the MAC `POST /sign_with_auth_key` answers is
//! recomputed here with the service's key. keyd's default store is the
//! software one, as on a device that moved from aziot-identity-service: the
//! auth key goes to the TPM all the same.

use edgeid_common::authz::{Admins, Grants};
use edgeid_keyd::config::PrincipalConfig;
use edgeid_testkit::aziot::{b64, unb64};
use edgeid_testkit::hmac_sha256;
use edgeid_testkit::tpm_peer::{wrap_hmac_key, Wrapping};
use edgeid_testkit::{aziot, KeydFixture, Swtpm};
use http::{Method, StatusCode};
use serde_json::{json, Value};

const V: &str = "api-version=2020-09-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_references_tpm_api_imports_a_wrapped_key_and_macs_with_it() {
    let tpm = Swtpm::start();
    let service = Swtpm::start();
    let dir = edgeid_testkit::temp_dir();
    edgeid_testkit::open_to_others(dir.path());
    let mut config = KeydFixture::config_in(dir.path());
    config.server.socket_mode = 0o666;
    config.tpm = Some(tpm.keyd_config());
    // A principal of other keys, to be refused.
    config.principals = vec![PrincipalConfig {
        name: "certd".into(),
        uid: 65533,
        keys: Grants::parse(&["device-*"]).unwrap(),
        export: Grants::default(),
    }];
    let keyd = KeydFixture::configured(config, Admins::root_and_self()).await;
    let socket = keyd.socket();
    let call = |method: Method, route: &str, body: Value| {
        let socket = socket.clone();
        let path = format!("{route}?{V}");
        async move { aziot::call(&socket, method, &path, body).await }
    };

    // The EK and the storage key, as keyd's own API (checked against
    // tpm2_readpublic in tpm.rs) shows them.
    let (status, keys) = call(Method::GET, "/get_tpm_keys", Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    let ours = keyd.client().tpm_attestation_keys().await.unwrap();
    let (ek, srk) = (
        unb64(&keys["endorsement_key"]),
        unb64(&keys["storage_root_key"]),
    );
    assert_eq!(ek, ours.endorsement_key.public.0);
    assert_eq!(srk, ours.storage_key.public.0);

    let data = b"myhub.azure-devices.net%2Fdevices%2Fdev1\n1700000000";
    let sign = json!({ "data": b64(data) });
    let (status, answer) = call(Method::POST, "/sign_with_auth_key", sign.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no key yet: {answer}");
    assert!(answer["message"]
        .as_str()
        .unwrap()
        .contains("aziot-tpmd/auth-key"));

    // DPS's authenticationKey for this TPM: imported, then it MACs as the
    // service's key does.
    let first = b"the service's device key, 32 byt";
    let blob = wrap_hmac_key(&service, &ek, &srk, first, Wrapping::Honest);
    let (status, answer) = call(
        Method::POST,
        "/import_auth_key",
        json!({ "key": b64(&blob) }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!({}));
    let (status, answer) = call(Method::POST, "/sign_with_auth_key", sign.clone()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(unb64(&answer["digest"]), hmac_sha256(first, data));
    // In the TPM store, as a blob that holds nothing usable outside it.
    let tpm_files: Vec<_> = std::fs::read_dir(dir.path().join("keyd/tpm"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!tpm_files.is_empty());
    for bytes in &tpm_files {
        assert!(!bytes.windows(first.len()).any(|w| w == first));
    }

    // Provisioned again (a new key from DPS): the new one replaces it.
    let second = b"a re-provisioned key, 32 bytes!!";
    let blob2 = wrap_hmac_key(&service, &ek, &srk, second, Wrapping::Honest);
    let (status, _) = call(
        Method::POST,
        "/import_auth_key",
        json!({ "key": b64(&blob2) }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, answer) = call(Method::POST, "/sign_with_auth_key", sign.clone()).await;
    assert_eq!(unb64(&answer["digest"]), hmac_sha256(second, data));

    // Bad input, each a 4xx with a message, the key left as it was.
    let tampered = wrap_hmac_key(&service, &ek, &srk, first, Wrapping::Tampered);
    for (body, expect) in [
        (json!({ "key": b64(&tampered) }), StatusCode::BAD_REQUEST),
        (json!({ "key": b64(&blob[..40]) }), StatusCode::BAD_REQUEST),
        (
            json!({ "key": "not base64!" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({ "blob": b64(&blob) }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (Value::Null, StatusCode::BAD_REQUEST),
    ] {
        let (status, answer) = call(Method::POST, "/import_auth_key", body.clone()).await;
        assert_eq!(status, expect, "{body}: {answer}");
        assert!(answer["message"].is_string(), "{body}: {answer}");
    }
    let (_, answer) = call(Method::POST, "/sign_with_auth_key", sign.clone()).await;
    assert_eq!(unb64(&answer["digest"]), hmac_sha256(second, data));
    for (method, path, expect) in [
        (
            Method::GET,
            "/get_tpm_keys".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/get_tpm_keys?api-version=2021-05-01".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            format!("/sign_with_auth_key?{V}"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ] {
        let (status, answer) = aziot::call(&socket, method, &path, Value::Null).await;
        assert_eq!(status, expect, "{path}: {answer}");
        assert!(answer["message"].is_string(), "{path}: {answer}");
    }
    let (status, _) = aziot::call_raw(
        &socket,
        Method::POST,
        &format!("/sign_with_auth_key?{V}"),
        "{\"data\":".into(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // A stranger, and a principal granted other keys, get none of it.
    if edgeid_testkit::is_root() {
        for uid in [4242, 65533] {
            for (method, route, body) in [
                (Method::GET, "/get_tpm_keys", Value::Null),
                (
                    Method::POST,
                    "/import_auth_key",
                    json!({ "key": b64(&blob) }),
                ),
                (Method::POST, "/sign_with_auth_key", sign.clone()),
            ] {
                let path = format!("{route}?{V}");
                let (status, answer) = aziot::call_as(uid, &socket, method, &path, body).await;
                assert_eq!(status, StatusCode::FORBIDDEN, "uid {uid} {route}: {answer}");
            }
        }
        let (_, answer) = call(Method::POST, "/sign_with_auth_key", sign).await;
        assert_eq!(
            unb64(&answer["digest"]),
            hmac_sha256(second, data),
            "untouched by them"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_tpm_the_tpm_api_says_there_is_none() {
    let keyd = KeydFixture::start().await;
    let socket = keyd.socket();
    for (method, route, body) in [
        (Method::GET, "/get_tpm_keys", Value::Null),
        (
            Method::POST,
            "/import_auth_key",
            json!({ "key": b64(b"x") }),
        ),
    ] {
        let path = format!("{route}?{V}");
        let (status, answer) = aziot::call(&socket, method, &path, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{route}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains("no TPM"),
            "{route}: {answer}"
        );
    }
}
