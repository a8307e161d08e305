//! Hostile input across every API, as a table: path traversal and NULs in
//! ids, oversize fields and bodies, wrong types, unicode tricks in names,
//! forged and foreign key handles, replayed generation ids. Each row asserts
//! the exact 4xx, an error message, and that nothing changed on disk (every
//! file under the daemons' state, byte for byte).

use bytes::Bytes;
use edgeid_common::client::UdsClient;
use edgeid_testkit::faults::snapshot;
use edgeid_testkit::workload::Stack;
use edgeid_testkit::{KeydFixture, WorkloadFixture};
use http::{Method, StatusCode};
use serde_json::{json, Value};

enum Daemon {
    Keyd,
    Certd,
    Identityd,
    Workload,
}

struct Row {
    what: &'static str,
    daemon: Daemon,
    method: Method,
    path: String,
    body: Bytes,
    status: StatusCode,
}

fn row(
    what: &'static str,
    daemon: Daemon,
    method: Method,
    path: &str,
    body: Value,
    status: StatusCode,
) -> Row {
    Row {
        what,
        daemon,
        method,
        path: path.to_owned(),
        body: if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        },
        status,
    }
}

fn raw_row(
    what: &'static str,
    daemon: Daemon,
    method: Method,
    path: &str,
    body: Vec<u8>,
    status: StatusCode,
) -> Row {
    Row {
        what,
        daemon,
        method,
        path: path.to_owned(),
        body: Bytes::from(body),
        status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_get_their_4xx_and_change_nothing_on_disk() {
    use Daemon::*;
    let bad = StatusCode::BAD_REQUEST;
    let not_found = StatusCode::NOT_FOUND;
    // A handle keyd did not issue fails authentication of the handle itself.
    let forbidden = StatusCode::FORBIDDEN;

    let dir = edgeid_testkit::temp_dir();
    let stack = Stack::local(dir.path(), &[]).await;
    let ids = stack.identityd.client();
    // A generation that no longer exists: mod-a deleted and made again.
    let old_genid = ids.create_module("mod-a").await.unwrap().generation_id;
    ids.delete_module("mod-a").await.unwrap();
    let genid = ids.create_module("mod-a").await.unwrap().generation_id;
    assert_ne!(old_genid, genid);
    let config = stack.workload_config(dir.path(), &[("mod-a", 0)]);
    let workload = WorkloadFixture::configured(config).await;

    // A real handle, and one from another keyd (another master key).
    let Stack {
        keyd,
        certd,
        identityd,
    } = &stack;
    let k = keyd.client();
    let real = k
        .create_key_pair("real", edgeid_keyd::api::KeyPairSpec::EcP256)
        .await
        .unwrap();
    let other_dir = edgeid_testkit::temp_dir();
    let other = KeydFixture::start_in(other_dir.path()).await;
    let foreign = other
        .client()
        .create_key_pair("real", edgeid_keyd::api::KeyPairSpec::EcP256)
        .await
        .unwrap();
    let mut forged = real.0.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    let sign =
        |handle: &str| json!({"handle": handle, "algorithm": "ecdsa-sha256", "data": "AAAA"});
    // The CSR of a CA asking for a client certificate.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_csr = ca_params.serialize_request(&ca_key).unwrap().pem().unwrap();
    let v = "api-version=2022-08-03";
    let w_sign = |name: &str, g: &str| format!("/modules/{name}/genid/{g}/sign?{v}");
    let good_sign = json!({"keyId": "primary", "algo": "HMACSHA256", "data": "AAAA"});

    let rows = vec![
        // keyd: ids
        row(
            "key id with ..",
            Keyd,
            Method::POST,
            "/v1/keypair",
            json!({"id": "../escape", "spec": "ec-p256"}),
            bad,
        ),
        row(
            "key id with a .. segment",
            Keyd,
            Method::POST,
            "/v1/keypair",
            json!({"id": "a/../../b", "spec": "ec-p256"}),
            bad,
        ),
        row(
            "key id with a NUL",
            Keyd,
            Method::POST,
            "/v1/keypair",
            json!({"id": "a\u{0}b", "spec": "ec-p256"}),
            bad,
        ),
        row(
            "key id of 129 bytes",
            Keyd,
            Method::POST,
            "/v1/keypair",
            json!({"id": "k".repeat(129), "spec": "ec-p256"}),
            bad,
        ),
        row(
            "key id in Cyrillic",
            Keyd,
            Method::POST,
            "/v1/keypair",
            json!({"id": "ключ", "spec": "ec-p256"}),
            bad,
        ),
        row(
            "key id absolute",
            Keyd,
            Method::POST,
            "/v1/keypair",
            json!({"id": "/etc/passwd", "spec": "ec-p256"}),
            bad,
        ),
        row(
            "spec of the wrong type",
            Keyd,
            Method::POST,
            "/v1/keypair",
            json!({"id": "k", "spec": 7}),
            bad,
        ),
        row(
            "unknown spec",
            Keyd,
            Method::POST,
            "/v1/keypair",
            json!({"id": "k", "spec": "ec-p999"}),
            bad,
        ),
        row(
            "unknown field",
            Keyd,
            Method::POST,
            "/v1/keypair",
            json!({"id": "k", "spec": "ec-p256", "exportable": true}),
            bad,
        ),
        raw_row(
            "not JSON",
            Keyd,
            Method::POST,
            "/v1/keypair",
            b"{\"id\": \"k\",".to_vec(),
            bad,
        ),
        raw_row(
            "JSON nested 10000 deep",
            Keyd,
            Method::POST,
            "/v1/keypair",
            "[".repeat(10_000).into_bytes(),
            bad,
        ),
        raw_row(
            // Twice keyd's cap: read and thrown away, then 413 (a body past
            // four times the cap is not read: the client may see a reset).
            "body of twice the cap",
            Keyd,
            Method::POST,
            "/v1/keypair",
            vec![b' '; 2 * edgeid_keyd::config::DEFAULT_MAX_BODY_BYTES],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        row(
            "traversal in a key path",
            Keyd,
            Method::GET,
            "/v1/keypair/..%2F..%2Fetc%2Fpasswd",
            Value::Null,
            bad,
        ),
        row(
            "NUL in a key path",
            Keyd,
            Method::GET,
            "/v1/keypair/a%00b",
            Value::Null,
            bad,
        ),
        // keyd: handles
        row(
            "forged handle",
            Keyd,
            Method::POST,
            "/v1/sign",
            sign(&forged),
            forbidden,
        ),
        row(
            "handle of another keyd",
            Keyd,
            Method::POST,
            "/v1/sign",
            sign(&foreign.0),
            forbidden,
        ),
        row(
            "handle that is not base64",
            Keyd,
            Method::POST,
            "/v1/sign",
            sign("!!not a handle!!"),
            bad,
        ),
        row(
            "data that is not base64",
            Keyd,
            Method::POST,
            "/v1/sign",
            json!({"handle": real.0, "algorithm": "ecdsa-sha256", "data": "%%%"}),
            bad,
        ),
        row(
            "HMAC with an EC key",
            Keyd,
            Method::POST,
            "/v1/sign",
            json!({"handle": real.0, "algorithm": "hmac-sha256", "data": "AAAA"}),
            bad,
        ),
        // certd
        row(
            "certificate id with ..",
            Certd,
            Method::POST,
            "/v1/certificates",
            json!({"id": "../x", "issuer": "local-ca", "profile": "client", "key_id": "x"}),
            bad,
        ),
        row(
            "garbage CSR",
            Certd,
            Method::POST,
            "/v1/certificates",
            json!({"id": "c", "issuer": "local-ca", "profile": "client", "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}),
            bad,
        ),
        row(
            "a CA's CSR for a client certificate",
            Certd,
            Method::POST,
            "/v1/certificates",
            json!({"id": "c", "issuer": "local-ca", "profile": "client", "csr": ca_csr}),
            bad,
        ),
        row(
            "lifetime of 0",
            Certd,
            Method::POST,
            "/v1/certificates",
            json!({"id": "c", "issuer": "local-ca", "profile": "client", "key_id": "c", "lifetime_secs": 0}),
            bad,
        ),
        row(
            "lifetime of 1000 years",
            Certd,
            Method::POST,
            "/v1/certificates",
            json!({"id": "c", "issuer": "local-ca", "profile": "client", "key_id": "c", "lifetime_secs": 31_536_000_000u64}),
            bad,
        ),
        row(
            "lifetime negative",
            Certd,
            Method::POST,
            "/v1/certificates",
            json!({"id": "c", "issuer": "local-ca", "profile": "client", "key_id": "c", "lifetime_secs": -1}),
            bad,
        ),
        row(
            "transient with a keyd key",
            Certd,
            Method::POST,
            "/v1/certificates",
            json!({"id": "c", "issuer": "local-ca", "profile": "client", "key_id": "c", "transient": true}),
            bad,
        ),
        row(
            "import of garbage",
            Certd,
            Method::PUT,
            "/v1/certificates/imp",
            json!({"pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}),
            bad,
        ),
        row(
            "renew what does not exist",
            Certd,
            Method::POST,
            "/v1/certificates/ghost",
            Value::Null,
            not_found,
        ),
        // identityd
        row(
            "module id with ..",
            Identityd,
            Method::POST,
            "/v1/identities/modules",
            json!({"module_id": "../x"}),
            bad,
        ),
        row(
            "module id with a homoglyph",
            Identityd,
            Method::POST,
            "/v1/identities/modules",
            json!({"module_id": "m\u{043e}dule"}),
            bad,
        ),
        row(
            "module id with RTL override",
            Identityd,
            Method::POST,
            "/v1/identities/modules",
            json!({"module_id": "a\u{202e}b"}),
            bad,
        ),
        row(
            "module id of 200 bytes",
            Identityd,
            Method::POST,
            "/v1/identities/modules",
            json!({"module_id": "m".repeat(200)}),
            bad,
        ),
        row(
            "module id of the wrong type",
            Identityd,
            Method::POST,
            "/v1/identities/modules",
            json!({"module_id": ["m"]}),
            bad,
        ),
        row(
            "NUL in a module path",
            Identityd,
            Method::GET,
            "/v1/identities/modules/a%00b",
            Value::Null,
            bad,
        ),
        row(
            "token for no module",
            Identityd,
            Method::POST,
            "/v1/identities/modules/ghost/token",
            Value::Null,
            not_found,
        ),
        // workloadd
        row(
            "replayed generation id",
            Workload,
            Method::POST,
            &w_sign("mod-a", &old_genid),
            good_sign.clone(),
            not_found,
        ),
        // ".." is a valid IoT Hub module id (it maps to no path): just not the caller's.
        row(
            "module name ..",
            Workload,
            Method::POST,
            &w_sign("..", &genid),
            good_sign.clone(),
            StatusCode::FORBIDDEN,
        ),
        row(
            "module name with ../",
            Workload,
            Method::POST,
            &w_sign("..%2Fetc", &genid),
            good_sign.clone(),
            bad,
        ),
        row(
            "module name with an encoded /",
            Workload,
            Method::POST,
            &w_sign("a%2Fb", &genid),
            good_sign.clone(),
            bad,
        ),
        row(
            "module name with RTL override",
            Workload,
            Method::POST,
            &w_sign("mod-a%E2%80%AE", &genid),
            good_sign.clone(),
            bad,
        ),
        row(
            "sign data not base64",
            Workload,
            Method::POST,
            &w_sign("mod-a", &genid),
            json!({"keyId": "primary", "algo": "HMACSHA256", "data": "***"}),
            bad,
        ),
        row(
            "unknown algo",
            Workload,
            Method::POST,
            &w_sign("mod-a", &genid),
            json!({"keyId": "primary", "algo": "MD5", "data": "AAAA"}),
            bad,
        ),
        row(
            "no api-version",
            Workload,
            Method::POST,
            "/modules/mod-a/genid/x/sign",
            good_sign.clone(),
            bad,
        ),
        row(
            "server name with a /",
            Workload,
            Method::POST,
            &format!("/modules/mod-a/genid/{genid}/certificate/server?{v}"),
            json!({"commonName": "evil/../x", "expiration": "2099-01-01T00:00:00Z"}),
            bad,
        ),
        row(
            "expiration in the past",
            Workload,
            Method::POST,
            &format!("/modules/mod-a/certificate/identity?{v}"),
            json!({"expiration": "2001-01-01T00:00:00Z"}),
            bad,
        ),
        row(
            "IV of the wrong type",
            Workload,
            Method::POST,
            &format!("/modules/mod-a/genid/{genid}/encrypt?{v}"),
            json!({"plaintext": "AAAA", "initializationVector": 5}),
            // As the runtime answers a body of the wrong shape.
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    assert!(rows.len() >= 30);

    let before = snapshot(dir.path());
    let mut wrong = Vec::new();
    for r in rows {
        let socket = match r.daemon {
            Keyd => keyd.socket(),
            Certd => certd.socket(),
            Identityd => identityd.socket(),
            Workload => workload.socket(),
        };
        let (status, body) = UdsClient::new(&socket)
            .raw(r.method.clone(), &r.path, r.body.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", r.what));
        if status != r.status {
            wrong.push(format!(
                "{}: {status} (want {}): {}",
                r.what,
                r.status,
                String::from_utf8_lossy(&body)
            ));
            continue;
        }
        if status != StatusCode::PAYLOAD_TOO_LARGE {
            let message: Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
                panic!("{}: not JSON: {}", r.what, String::from_utf8_lossy(&body))
            });
            assert!(
                message["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{}: no message in {message}",
                r.what
            );
        }
        let after = snapshot(dir.path());
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "{}: files appeared or went",
            r.what
        );
        for (path, bytes) in &before {
            assert!(
                after[path] == *bytes,
                "{}: {} changed",
                r.what,
                path.display()
            );
        }
    }
    assert!(wrong.is_empty(), "wrong statuses:\n{}", wrong.join("\n"));
    // And everything still answers.
    for socket in [keyd.socket(), certd.socket(), identityd.socket()] {
        let (status, _) = UdsClient::new(&socket)
            .raw(Method::GET, "/v1/health", Bytes::new())
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
    }
}
