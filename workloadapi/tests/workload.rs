//! The workload API through its socket, every answer checked by a second
//! party: SAS tokens built from `sign` are accepted by the test hub,
//! certificates pass `openssl verify` and carry the names asked for, rustls
//! and `openssl s_client` complete handshakes on a server certificate from the API, and one
//! module cannot use another's keys, certificates or ciphertexts.
//!
//! The test process (uid 0) is module `mod-a`; `mod-b` is uid 4201.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use edgeid_common::client::UdsClient;
use edgeid_identityd::config::{
    AttestationConfig, DpsConfig, KeySource, LocalConfig, ProvisioningConfig,
};
use edgeid_identityd::IdentitydClient;
use edgeid_testkit::cloud::{CloudService, Enrollment};
use edgeid_testkit::workload::Stack;
use edgeid_testkit::WorkloadFixture;
use http::{Method, StatusCode};
use serde_json::{json, Value};

const V: &str = "api-version=2022-08-03";
const OTHER_UID: u32 = 4201;
const HUB_UID: u32 = 4202;

struct Suite {
    workload: WorkloadFixture,
    stack: Stack,
    _dir: tempfile::TempDir,
}

impl Suite {
    async fn start(
        provisioning: impl FnOnce(&std::path::Path) -> ProvisioningConfig,
        cloud: Option<&CloudService>,
    ) -> Self {
        let dir = edgeid_testkit::temp_dir();
        edgeid_testkit::open_to_others(dir.path());
        let stack = Stack::start(
            dir.path(),
            provisioning(dir.path()),
            cloud,
            &["mod-a", "mod-b", "$edgeHub"],
        )
        .await;
        let mut config = stack.workload_config(
            dir.path(),
            &[("mod-a", 0), ("mod-b", OTHER_UID), ("$edgeHub", HUB_UID)],
        );
        config.server.socket_mode = 0o666;
        let workload = WorkloadFixture::configured(config).await;
        Self {
            workload,
            stack,
            _dir: dir,
        }
    }

    async fn local() -> Self {
        Self::start(
            |_| {
                ProvisioningConfig::Local(LocalConfig {
                    device_id: "edge-1".into(),
                    hub: "localhost".into(),
                })
            },
            None,
        )
        .await
    }

    fn identityd(&self) -> IdentitydClient {
        self.stack.identityd.client()
    }

    async fn genid(&self, module: &str) -> String {
        self.identityd().module(module).await.unwrap().generation_id
    }

    /// A request as `mod-a` (this process).
    async fn call(&self, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        let (status, bytes) = UdsClient::new(self.workload.socket())
            .raw(method, path, body)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A request as `mod-b` (uid 4201) or any other uid.
    async fn call_as(
        &self,
        uid: u32,
        method: Method,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (status, bytes) =
            edgeid_testkit::request_as(uid, &self.workload.socket(), method, path, &body).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sign_digests_make_sas_tokens_the_hub_accepts() {
    let cloud = CloudService::start(None).await;
    let key = vec![7u8; 32];
    cloud.enroll("wl-device", Enrollment::SymmetricKey(key.clone()));
    let suite = Suite::start(
        |dir| {
            let file = dir.join("enrollment.key");
            std::fs::write(&file, STANDARD.encode(&key)).unwrap();
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            ProvisioningConfig::Dps(DpsConfig {
                global_endpoint: cloud.endpoint.clone(),
                id_scope: cloud.id_scope.clone(),
                attestation: AttestationConfig::SymmetricKey {
                    registration_id: "wl-device".into(),
                    key: KeySource {
                        key_file: Some(file),
                        key_id: None,
                    },
                    group: false,
                },
                payload_file: None,
            })
        },
        Some(&cloud),
    )
    .await;
    let genid = suite.genid("mod-a").await;
    // What an Azure IoT SDK does with IOTEDGE_* : build the string to sign, ask
    // the workload API for the digest, assemble the token.
    let resource = format!("{}/devices/wl-device/modules/mod-a", cloud.hub);
    let encoded = edgeid_identityd::sas::encode(&resource);
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let to_sign = format!("{encoded}\n{expiry}");
    let (code, body) = suite
        .call(
            Method::POST,
            &format!("/modules/mod-a/genid/{genid}/sign?{V}"),
            json!({"keyId": "primary", "algo": "HMACSHA256", "data": STANDARD.encode(&to_sign)}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let digest = body["digest"].as_str().unwrap();
    let expected = cloud
        .module_hmac("wl-device", "mod-a", to_sign.as_bytes())
        .unwrap();
    assert_eq!(
        digest,
        STANDARD.encode(expected),
        "the hub's HMAC under its key"
    );
    let token = format!(
        "SharedAccessSignature sr={encoded}&sig={}&se={expiry}",
        edgeid_identityd::sas::encode(digest)
    );
    cloud
        .authenticate_module("wl-device", "mod-a", &token)
        .expect("the hub accepts a token built from the workload API's digest");
    assert!(cloud
        .authenticate_module("wl-device", "mod-b", &token)
        .is_err());
    // The secondary key signs differently.
    let (code, body) = suite
        .call(
            Method::POST,
            &format!("/modules/mod-a/genid/{genid}/sign?{V}"),
            json!({"keyId": "secondary", "algo": "HMACSHA256", "data": STANDARD.encode(&to_sign)}),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_ne!(body["digest"].as_str().unwrap(), digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_validate_and_a_tls_handshake_runs_on_them() {
    let suite = Suite::local().await;
    let genid = suite.genid("mod-a").await;
    let (code, bundle) = suite
        .call(Method::GET, &format!("/trust-bundle?{V}"), Value::Null)
        .await;
    assert_eq!(code, StatusCode::OK);
    let bundle = bundle["certificate"].as_str().unwrap().to_owned();
    assert!(bundle.contains("BEGIN CERTIFICATE"));

    let (code, identity) = suite
        .call(
            Method::POST,
            &format!("/modules/mod-a/certificate/identity?{V}"),
            json!({}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{identity}");
    let chain = identity["certificate"].as_str().unwrap();
    edgeid_testkit::openssl::verify_chain(&bundle, chain, "sslclient").unwrap();
    let leaf = pem::parse(chain).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.contents()).unwrap();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(cn, "mod-a");
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    assert!(
        san.general_names.iter().any(|n| matches!(n,
            x509_parser::extensions::GeneralName::URI(u) if *u == "spiffe://localhost/devices/edge-1/modules/mod-a")),
        "{san:?}"
    );
    assert!(
        cert.extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .client_auth
    );
    assert_eq!(identity["privateKey"]["type"], "key");
    let days =
        (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86_400;
    assert!(days <= 31, "clamped to policy: {days} days");

    // A server certificate: ten years asked for, policy's maximum given.
    let ten_years = (time::OffsetDateTime::now_utc() + time::Duration::days(3650))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (code, server) = suite
        .call(
            Method::POST,
            &format!("/modules/mod-a/genid/{genid}/certificate/server?{V}"),
            json!({"commonName": "mod-a.local", "expiration": ten_years}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{server}");
    let chain = server["certificate"].as_str().unwrap();
    edgeid_testkit::openssl::verify_chain(&bundle, chain, "sslserver").unwrap();
    let leaf = pem::parse(chain).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.contents()).unwrap();
    let days =
        (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86_400;
    assert!(days <= 91, "{days} days");
    handshake(
        chain,
        server["privateKey"]["bytes"].as_str().unwrap(),
        &bundle,
        "mod-a.local",
    )
    .await;

    // The past is refused.
    let (code, body) = suite
        .call(
            Method::POST,
            &format!("/modules/mod-a/genid/{genid}/certificate/server?{V}"),
            json!({"commonName": "mod-a.local", "expiration": "2001-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not in the future"),
        "{body}"
    );
}

/// Review finding 4: mod-a obtained serverAuth certificates for the gateway
/// host name, `mod-b`, `edgehub.example.com` and `localhost`, all valid under
/// the bundle every module trusts (201 for each before the name policy). A
/// module now has its own id and what it is granted; the gateway host name
/// is the hub's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_gets_server_certificates_for_its_own_names_alone() {
    let suite = Suite::local().await;
    let bundle = suite
        .call(Method::GET, &format!("/trust-bundle?{V}"), Value::Null)
        .await
        .1["certificate"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = suite.genid("mod-a").await;
    let server = |genid: &str, module: &str| {
        format!(
            "/modules/{}/genid/{genid}/certificate/server?{V}",
            edgeid_identityd::sas::encode(module)
        )
    };
    for name in [
        "gateway.local",
        "mod-b",
        "edgehub",
        "edgehub.example.com",
        "localhost",
        "127.0.0.1",
        "::1",
        "x.mod-a.local",
    ] {
        let (code, body) = suite
            .call(
                Method::POST,
                &server(&a, "mod-a"),
                json!({"commonName": name}),
            )
            .await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{name}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("'{name}'")) && message.contains("mod-a.local"),
            "{message}"
        );
    }
    // Its own id (any case) and its grant are served, and verify for that name.
    for (name, dns) in [
        ("MOD-A", vec!["MOD-A"]),
        ("mod-a.local", vec!["mod-a.local", "mod-a"]),
    ] {
        let (code, body) = suite
            .call(
                Method::POST,
                &server(&a, "mod-a"),
                json!({"commonName": name}),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{name}: {body}");
        let chain = body["certificate"].as_str().unwrap();
        edgeid_testkit::openssl::verify_chain(&bundle, chain, "sslserver").unwrap();
        let leaf = pem::parse(chain).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.contents()).unwrap();
        let san: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => (*d).to_owned(),
                other => panic!("{name}: a name not asked for: {other:?}"),
            })
            .collect();
        assert_eq!(san, dns, "{name}");
    }
    // The hub has the gateway host name; mod-b has neither it nor mod-a's.
    let hub = suite.genid("$edgeHub").await;
    let (code, body) = suite
        .call_as(
            HUB_UID,
            Method::POST,
            &server(&hub, "$edgeHub"),
            json!({"commonName": "gateway.local"}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    edgeid_testkit::openssl::verify_chain(
        &bundle,
        body["certificate"].as_str().unwrap(),
        "sslserver",
    )
    .unwrap();
    let b = suite.genid("mod-b").await;
    for name in ["gateway.local", "mod-a.local"] {
        let (code, body) = suite
            .call_as(
                OTHER_UID,
                Method::POST,
                &server(&b, "mod-b"),
                json!({"commonName": name}),
            )
            .await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{name}: {body}");
    }
}

/// A rustls server with this chain and key; a rustls client trusting only
/// the bundle; the handshake must complete and bytes cross.
async fn handshake(chain_pem: &str, key_pem: &str, bundle: &str, name: &str) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs: Vec<CertificateDer<'static>> = pem::parse_many(chain_pem)
        .unwrap()
        .into_iter()
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    let key = PrivateKeyDer::try_from(pem::parse(key_pem).unwrap().into_contents()).unwrap();
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for p in pem::parse_many(bundle).unwrap() {
        roots.add(CertificateDer::from(p.into_contents())).unwrap();
    }
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let acceptor_again = acceptor.clone();
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        tls.write_all(b"hello from the module").await.unwrap();
        tls.shutdown().await.unwrap();
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .expect("the handshake completes against the trust bundle");
    let mut got = Vec::new();
    tls.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hello from the module");
    served.await.unwrap();

    // And an independent client: openssl s_client, trusting only the bundle.
    edgeid_testkit::require_tool("openssl", "openssl");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor_again.accept(tcp).await.unwrap();
        let _ = tls.write_all(b"hello openssl").await;
        let _ = tls.shutdown().await;
    });
    let dir = edgeid_testkit::temp_dir();
    let ca_file = dir.path().join("bundle.pem");
    std::fs::write(&ca_file, bundle).unwrap();
    let name = name.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                &name,
            ])
            .args(["-verify_hostname", &name, "-verify_return_error", "-CAfile"])
            .arg(&ca_file)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("Verify return code: 0 (ok)"),
        "openssl s_client: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    served.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encryption_round_trips_and_is_bound_to_the_module() {
    assert!(
        edgeid_testkit::is_root(),
        "this test switches uids: run it as root"
    );
    let suite = Suite::local().await;
    let a = suite.genid("mod-a").await;
    let b = suite.genid("mod-b").await;
    let iv = STANDARD.encode(b"0123456789ab");
    let (code, body) = suite
        .call(
            Method::POST,
            &format!("/modules/mod-a/genid/{a}/encrypt?{V}"),
            json!({"plaintext": STANDARD.encode(b"secret of a"), "initializationVector": iv}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let ciphertext = body["ciphertext"].as_str().unwrap().to_owned();
    let (code, body) = suite
        .call(
            Method::POST,
            &format!("/modules/mod-a/genid/{a}/decrypt?{V}"),
            json!({"ciphertext": ciphertext, "initializationVector": iv}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        STANDARD
            .decode(body["plaintext"].as_str().unwrap())
            .unwrap(),
        b"secret of a"
    );
    // Another IV does not decrypt it; nor does module B, under its own name.
    let (code, _) = suite
        .call(
            Method::POST,
            &format!("/modules/mod-a/genid/{a}/decrypt?{V}"),
            json!({"ciphertext": ciphertext, "initializationVector": STANDARD.encode(b"other iv")}),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, body) = suite
        .call_as(
            OTHER_UID,
            Method::POST,
            &format!("/modules/mod-b/genid/{b}/decrypt?{V}"),
            json!({"ciphertext": ciphertext, "initializationVector": iv}),
        )
        .await;
    assert_eq!(
        code,
        StatusCode::BAD_REQUEST,
        "B cannot decrypt A's data: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_module_acts_for_another() {
    assert!(
        edgeid_testkit::is_root(),
        "this test switches uids: run it as root"
    );
    let suite = Suite::local().await;
    let a = suite.genid("mod-a").await;
    let sign = json!({"keyId": "primary", "algo": "HMACSHA256", "data": "aGVsbG8="});
    let (code, body) = suite
        .call_as(
            OTHER_UID,
            Method::POST,
            &format!("/modules/mod-a/genid/{a}/sign?{V}"),
            sign.clone(),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("may not act for module 'mod-a'"),
        "{body}"
    );
    let (code, _) = suite
        .call_as(
            OTHER_UID,
            Method::POST,
            &format!("/modules/mod-a/certificate/identity?{V}"),
            json!({}),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, body) = suite
        .call_as(
            4999,
            Method::POST,
            &format!("/modules/mod-a/genid/{a}/sign?{V}"),
            sign.clone(),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("uid 4999 is neither a module nor the orchestrator"),
        "{body}"
    );
    let (code, _) = suite
        .call(
            Method::POST,
            &format!("/modules/mod-a/genid/stale/sign?{V}"),
            sign.clone(),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "a stale generation");
    // Re-created: the old generation is gone.
    suite.identityd().delete_module("mod-a").await.unwrap();
    suite.identityd().create_module("mod-a").await.unwrap();
    let (code, _) = suite
        .call(
            Method::POST,
            &format!("/modules/mod-a/genid/{a}/sign?{V}"),
            sign.clone(),
        )
        .await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "the old generation after re-creation"
    );
    let fresh = suite.genid("mod-a").await;
    let (code, _) = suite
        .call(
            Method::POST,
            &format!("/modules/mod-a/genid/{fresh}/sign?{V}"),
            sign,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_takes_exactly_the_runtimes_api_versions() {
    let suite = Suite::local().await;
    let g = suite.genid("mod-a").await;
    let (code, enc) = suite
        .call(
            Method::POST,
            &format!("/modules/mod-a/genid/{g}/encrypt?{V}"),
            json!({"plaintext": "aGk=", "initializationVector": "aXY="}),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let routes = [
        (
            Method::POST,
            format!("/modules/mod-a/genid/{g}/sign"),
            json!({"data": "aGk="}),
            StatusCode::OK,
        ),
        (
            Method::POST,
            format!("/modules/mod-a/genid/{g}/encrypt"),
            json!({"plaintext": "aGk=", "initializationVector": "aXY="}),
            StatusCode::OK,
        ),
        (
            Method::POST,
            format!("/modules/mod-a/genid/{g}/decrypt"),
            json!({"ciphertext": enc["ciphertext"], "initializationVector": "aXY="}),
            StatusCode::OK,
        ),
        (
            Method::POST,
            "/modules/mod-a/certificate/identity".into(),
            Value::Null,
            StatusCode::CREATED,
        ),
        (
            Method::POST,
            format!("/modules/mod-a/genid/{g}/certificate/server"),
            json!({"commonName": "mod-a.local"}),
            StatusCode::CREATED,
        ),
        (
            Method::GET,
            "/trust-bundle".into(),
            Value::Null,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/manifest-trust-bundle".into(),
            Value::Null,
            StatusCode::OK,
        ),
        (Method::GET, "/modules".into(), Value::Null, StatusCode::OK),
    ];
    for (method, path, body, status) in &routes {
        for version in edgeid_workloadapi::api::API_VERSIONS {
            let (code, answer) = suite
                .call(
                    method.clone(),
                    &format!("{path}?api-version={version}"),
                    body.clone(),
                )
                .await;
            assert_eq!(code, *status, "{path} at {version}: {answer}");
        }
        // Not the runtime's: dev mode printed 2020-10-10 once; later dates
        // are not served before the runtime defines them.
        for version in ["2020-10-10", "2022-08-04", "2018-6-28"] {
            let (code, answer) = suite
                .call(
                    method.clone(),
                    &format!("{path}?api-version={version}"),
                    body.clone(),
                )
                .await;
            assert_eq!(
                code,
                StatusCode::BAD_REQUEST,
                "{path} at {version}: {answer}"
            );
            let message = answer["message"].as_str().unwrap();
            assert!(
                message.contains("2018-06-28, 2019-01-30, 2019-10-22, 2019-11-05, 2020-07-07, 2021-12-07, 2022-08-03"),
                "{message}"
            );
        }
        let (code, _) = suite.call(method.clone(), path, body.clone()).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{path} without api-version");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_module_list_is_for_modules_and_the_orchestrator() {
    assert!(
        edgeid_testkit::is_root(),
        "this test switches uids: run it as root"
    );
    let suite = Suite::local().await;
    let (code, list) = suite
        .call(Method::GET, &format!("/modules?{V}"), Value::Null)
        .await;
    assert_eq!(code, StatusCode::OK);
    let names: Vec<&str> = list["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["$edgeHub", "mod-a", "mod-b"], "{list}");
    let (code, _) = suite
        .call_as(
            OTHER_UID,
            Method::GET,
            &format!("/modules/?{V}"),
            Value::Null,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "mod-b, a module, may list");
    let (code, answer) = suite
        .call_as(4999, Method::GET, &format!("/modules?{V}"), Value::Null)
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_clear_4xx_answers() {
    let suite = Suite::local().await;
    let a = suite.genid("mod-a").await;
    let sign_path = format!("/modules/mod-a/genid/{a}/sign?{V}");
    let sign =
        |key: &str, algo: &str, data: &str| json!({"keyId": key, "algo": algo, "data": data});
    let bad = StatusCode::BAD_REQUEST;
    // Bodies that are not JSON of the route's shape are 422, as the runtime
    // answers them; everything else here is 400.
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    for (path, body, status, wanted) in [
        (
            format!("/modules/mod-a/genid/{a}/sign"),
            sign("primary", "HMACSHA256", "aGk="),
            bad,
            "api-version not specified",
        ),
        (
            format!("/modules/mod-a/genid/{a}/sign?api-version=2017-01-01"),
            sign("primary", "HMACSHA256", "aGk="),
            bad,
            "invalid api-version \"2017-01-01\"",
        ),
        (
            "/no/such/route?api-version=2017-01-01".to_owned(),
            Value::Null,
            bad,
            "supported: 2018-06-28",
        ),
        (
            sign_path.clone(),
            sign("primary", "HMACSHA256", "%%%"),
            bad,
            "data is not base64",
        ),
        (
            sign_path.clone(),
            sign("primary", "HMACSHA1", "aGk="),
            bad,
            "HMACSHA1",
        ),
        (
            sign_path.clone(),
            sign("tertiary", "HMACSHA256", "aGk="),
            bad,
            "tertiary",
        ),
        (
            sign_path.clone(),
            json!({"keyId": "primary", "algo": "HMACSHA256"}),
            unprocessable,
            "missing field `data`",
        ),
        (
            sign_path.clone(),
            json!({"data": 5}),
            unprocessable,
            "invalid type: integer `5`",
        ),
        (
            sign_path.clone(),
            json!(["aGk="]),
            unprocessable,
            "malformed JSON body",
        ),
        (
            sign_path.clone(),
            Value::Null,
            bad,
            "missing parameter: request body",
        ),
        (
            format!("/modules/a%2Fb/genid/{a}/sign?{V}"),
            sign("primary", "HMACSHA256", "aGk="),
            bad,
            "module name",
        ),
        (
            format!("/modules/..%2F..%2Fetc/genid/{a}/sign?{V}"),
            sign("primary", "HMACSHA256", "aGk="),
            bad,
            "module name",
        ),
        (
            format!("/modules/mod-a/genid/{a}/certificate/server?{V}"),
            json!({"commonName": "a b", "expiration": "2099-01-01T00:00:00Z"}),
            bad,
            "commonName",
        ),
        (
            format!("/modules/mod-a/genid/{a}/certificate/server?{V}"),
            json!({"expiration": "2099-01-01T00:00:00Z"}),
            unprocessable,
            "missing field `commonName`",
        ),
        (
            format!("/modules/mod-a/genid/{a}/encrypt?{V}"),
            json!({"plaintext": "aGk="}),
            unprocessable,
            "initializationVector",
        ),
        (
            format!("/modules/mod-a/genid/{a}/decrypt?{V}"),
            Value::Null,
            bad,
            "missing request body",
        ),
    ] {
        let (code, answer) = suite.call(Method::POST, &path, body).await;
        assert_eq!(code, status, "{path}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(wanted), "{path}: {message}");
    }
    // A malformed body that is not even JSON.
    let (code, bytes) = UdsClient::new(suite.workload.socket())
        .raw(Method::POST, &sign_path, Bytes::from_static(b"{\"data\":"))
        .await
        .unwrap();
    assert_eq!(code, unprocessable, "{}", String::from_utf8_lossy(&bytes));
    // Another module's name, and a generation that is not the module's.
    let b = suite.genid("mod-b").await;
    let (code, _) = suite
        .call(
            Method::POST,
            &format!("/modules/mod-b/genid/{b}/sign?{V}"),
            json!({"data": "aGk="}),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, answer) = suite
        .call(
            Method::POST,
            &format!("/modules/mod-a/genid/{b}/sign?{V}"),
            json!({"data": "aGk="}),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{answer}");
    let huge = "A".repeat(2 * 1024 * 1024);
    let (code, _) = suite
        .call(
            Method::POST,
            &sign_path,
            sign("primary", "HMACSHA256", &huge),
        )
        .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    // The most a module may have encrypted (128 KiB) goes through keyd, whose
    // body cap is sized to it, and back; a byte more is a 413 naming the
    // limit, before keyd is asked.
    let genid = suite.genid("mod-a").await;
    let most = vec![0x5au8; edgeid_keyd::config::MAX_FORWARDED_PAYLOAD];
    let (code, sealed) = suite
        .call(
            Method::POST,
            &format!("/modules/mod-a/genid/{genid}/encrypt?{V}"),
            json!({"plaintext": STANDARD.encode(&most), "initializationVector": "aXY="}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{sealed}");
    let (code, opened) = suite
        .call(
            Method::POST,
            &format!("/modules/mod-a/genid/{genid}/decrypt?{V}"),
            json!({"ciphertext": sealed["ciphertext"], "initializationVector": "aXY="}),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        STANDARD
            .decode(opened["plaintext"].as_str().unwrap())
            .unwrap(),
        most
    );
    let over = vec![0x5au8; edgeid_keyd::config::MAX_FORWARDED_PAYLOAD + 1];
    let (code, answer) = suite
        .call(
            Method::POST,
            &format!("/modules/mod-a/genid/{genid}/encrypt?{V}"),
            json!({"plaintext": STANDARD.encode(&over), "initializationVector": "aXY="}),
        )
        .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("131072"),
        "{answer}"
    );
    let (code, body) = suite.call(Method::GET, "/health", Value::Null).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["status"], "ok", "{body}");
}

/// Issue 17, finding 1: a module's socket bound without a uid was 0666 in a
/// 0755 directory, and any local uid that connected was served as the
/// module (its identity key, its signatures). Now a socket is for one uid
/// or group, reachable only through the mount the orchestrator makes, and
/// refused to anyone else even past the file modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_module_socket_is_for_its_uid_or_group_alone() {
    assert!(
        edgeid_testkit::is_root(),
        "this test switches uids: run it as root"
    );
    const MODULE_UID: u32 = 4999;
    const STRANGER: u32 = 4242;
    const GROUP: u32 = 4300;
    let mut suite = Suite::local().await;
    let b = suite.genid("mod-b").await;
    let a = suite.genid("mod-a").await;
    let sign = json!({"keyId": "primary", "algo": "HMACSHA256", "data": "aGVsbG8="});

    // Only the orchestrator (here: root) binds sockets, only for known
    // modules, and only for a uid or a group.
    let (code, _) = suite
        .call_as(
            OTHER_UID,
            Method::POST,
            "/v1/modules/mod-b/socket",
            json!({"uid": MODULE_UID}),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, _) = suite
        .call(
            Method::POST,
            "/v1/modules/ghost/socket",
            json!({"uid": MODULE_UID}),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, body) = suite
        .call(Method::POST, "/v1/modules/mod-b/socket", json!({}))
        .await;
    assert_eq!(
        code,
        StatusCode::BAD_REQUEST,
        "a socket for whoever: {body}"
    );
    assert!(body["message"].as_str().unwrap().contains("uid"), "{body}");
    let (code, _) = suite
        .call(
            Method::POST,
            "/v1/modules/mod-b/socket",
            json!({"uid": "root"}),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "a malformed body");
    let (code, _) = suite
        .call(
            Method::POST,
            "/v1/modules/a%2Fb/socket",
            json!({"uid": MODULE_UID}),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "a bad module name");
    let (code, body) = suite
        .call(
            Method::POST,
            "/v1/modules/mod-b/socket",
            json!({"uid": MODULE_UID}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let path = std::path::PathBuf::from(body["path"].as_str().unwrap());
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (meta.uid(), meta.permissions().mode() & 0o777),
        (MODULE_UID, 0o600)
    );
    let dir = std::fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(
        dir.permissions().mode() & 0o777,
        0o700,
        "nobody walks to a socket"
    );

    // A stranger can neither walk to the socket nor, given a mount of it,
    // connect: the kernel refuses both.
    let walked = edgeid_testkit::try_connect_as(STRANGER, STRANGER, &path).unwrap_err();
    assert_eq!(
        walked.kind(),
        std::io::ErrorKind::PermissionDenied,
        "{walked}"
    );
    let mounted = edgeid_testkit::connect_through_mount_as(STRANGER, STRANGER, &path).unwrap_err();
    assert_eq!(
        mounted.kind(),
        std::io::ErrorKind::PermissionDenied,
        "{mounted}"
    );

    // The module, through the mount its orchestrator makes, is mod-b and only mod-b.
    let as_module = |p: String, body: Value| {
        let path = path.clone();
        async move {
            let stream = edgeid_testkit::connect_through_mount_as(MODULE_UID, MODULE_UID, &path)
                .expect("the module reaches its socket");
            let (status, bytes) =
                edgeid_testkit::request_on(stream, Method::POST, &p, &body.to_string()).await;
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let (code, body) = as_module(format!("/modules/mod-b/genid/{b}/sign?{V}"), sign.clone()).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, _) = as_module(format!("/modules/mod-a/genid/{a}/sign?{V}"), sign.clone()).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "mod-b's socket is not mod-a");
    let (code, _) = as_module("/v1/modules/mod-a/socket".into(), json!({"uid": 1})).await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "a module socket manages nothing"
    );

    // Past the file modes (root, or a container with CAP_DAC_OVERRIDE),
    // workloadd itself refuses whoever is not the socket's uid, before
    // reading a byte of the body.
    let (code, bytes) = edgeid_testkit::request_on(
        edgeid_testkit::connect_as(0, 0, &path),
        Method::POST,
        &format!("/modules/mod-b/genid/{b}/sign?{V}"),
        &sign.to_string(),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let refused = String::from_utf8_lossy(&bytes);
    assert!(refused.contains(&format!("uid {MODULE_UID}")), "{refused}");
    let (code, _) = edgeid_testkit::request_on(
        edgeid_testkit::connect_as(0, 0, &path),
        Method::POST,
        &format!("/modules/mod-b/certificate/identity?{V}"),
        "{}",
    )
    .await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "no identity key for a stranger"
    );

    // A socket for a group: 0660, the group's; a member (by its gid) gets in.
    let (code, body) = suite
        .call(
            Method::POST,
            "/v1/modules/mod-a/socket",
            json!({"gid": GROUP}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let group_socket = std::path::PathBuf::from(body["path"].as_str().unwrap());
    let meta = std::fs::metadata(&group_socket).unwrap();
    assert_eq!(
        (meta.gid(), meta.permissions().mode() & 0o777),
        (GROUP, 0o660)
    );
    let stream = edgeid_testkit::connect_through_mount_as(5000, GROUP, &group_socket).unwrap();
    let (code, _) = edgeid_testkit::request_on(
        stream,
        Method::POST,
        &format!("/modules/mod-a/genid/{a}/sign?{V}"),
        &sign.to_string(),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "a member of the module's group");
    let refused = edgeid_testkit::connect_through_mount_as(5000, 5000, &group_socket).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied);

    // Served again after a restart, for the same uid alone.
    suite.workload.restart().await;
    let (code, _) = as_module(format!("/modules/mod-b/genid/{b}/sign?{V}"), sign.clone()).await;
    assert_eq!(code, StatusCode::OK, "restored after a restart");
    let mounted = edgeid_testkit::connect_through_mount_as(STRANGER, STRANGER, &path).unwrap_err();
    assert_eq!(mounted.kind(), std::io::ErrorKind::PermissionDenied);

    let (code, _) = suite
        .call(Method::DELETE, "/v1/modules/mod-b/socket", Value::Null)
        .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert!(!path.exists(), "the socket file is gone");
    let (code, _) = suite
        .call(Method::DELETE, "/v1/modules/mod-b/socket", Value::Null)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_keyd_is_a_503_and_the_api_recovers_when_it_returns() {
    let mut suite = Suite::local().await;
    let genid = suite.genid("mod-a").await;
    let path = format!("/modules/mod-a/genid/{genid}/sign?{V}");
    let body =
        json!({"keyId": "primary", "algo": "HMACSHA256", "data": STANDARD.encode(b"outage")});
    let (code, before) = suite.call(Method::POST, &path, body.clone()).await;
    assert_eq!(code, StatusCode::OK, "{before}");

    suite.stack.keyd.stop().await;
    let asked = std::time::Instant::now();
    let (code, answer) = suite.call(Method::POST, &path, body.clone()).await;
    // Reported, not asserted (RELIABILITY.md): how soon a module hears.
    eprintln!(
        "keyd gone: the workload API answered {code} after {:?}",
        asked.elapsed()
    );
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("keyd")),
        "names what is down: {answer}"
    );

    suite.stack.keyd.restart().await;
    let back = std::time::Instant::now();
    let (code, after) = suite.call(Method::POST, &path, body).await;
    eprintln!(
        "keyd back: the next sign answered {code} after {:?}",
        back.elapsed()
    );
    assert_eq!(code, StatusCode::OK, "{after}");
    assert_eq!(
        after["digest"], before["digest"],
        "the same key signs again"
    );
}
