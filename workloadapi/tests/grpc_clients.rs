//! The SPIFFE socket as gRPC clients nobody here wrote call it, unchanged:
//! py-spiffe 0.3.2 on the newest grpcio (grpc-core, which sends the socket
//! path percent-encoded as `:authority`), grpcio with the raw path as
//! authority (what grpc-java and Bazel send), and raw HTTP/2 from Python's
//! h2 for the authorities that must be served and for requests h2 must
//! still refuse. h2 is vendored with one patch for this
//! (`vendor/README.md`); the last test checks it is upstream's otherwise.
//!
//! The test process's uid is module `mod-a`.

use std::path::Path;
use std::process::Command;

use edgeid_testkit::clients;
use edgeid_testkit::workload::SpiffeFixture;
use edgeid_workloadapi::config::SpiffeConfig;
use serde_json::Value;

const TD: &str = "edge.test";

/// This suite's ways of starting a [`SpiffeFixture`].
struct Suite;

impl Suite {
    async fn start() -> SpiffeFixture {
        Suite::start_with(|_| {}).await
    }

    async fn start_with(change: impl FnOnce(&mut SpiffeConfig)) -> SpiffeFixture {
        let modules = [("mod-a", edgeid_common::current_uid())];
        SpiffeFixture::start(TD, &modules, |_, spiffe| change(spiffe)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn py_spiffe_on_the_newest_grpcio_fetches_and_validates() {
    let suite = Suite::start().await;
    let mut python = clients::python();
    python.arg(clients::script("python/spiffe_module.py")).env(
        "SPIFFE_ENDPOINT_SOCKET",
        format!("unix://{}", suite.socket()),
    );
    let (ok, answer, stderr) = tokio::task::spawn_blocking(move || clients::run_json(python))
        .await
        .unwrap();
    assert!(ok, "py-spiffe: {answer} {stderr}");
    eprintln!("py-spiffe on grpcio {}", answer["grpcio"]);
    let id = format!("spiffe://{TD}/edge-1/mod-a");
    assert_eq!(answer["spiffe_id"], id.as_str());
    // The X.509-SVID: openssl validates it under the bundle py-spiffe
    // fetched, for both ends of a TLS connection, and it certifies the key
    // py-spiffe was handed.
    let chain = answer["chain"].as_str().unwrap();
    let bundle = answer["bundle"].as_str().unwrap();
    for purpose in ["sslclient", "sslserver"] {
        edgeid_testkit::openssl::verify_chain(bundle, chain, purpose).unwrap();
    }
    edgeid_testkit::assert_leaf_certifies(
        chain,
        answer["key"].as_str().unwrap(),
        "py-spiffe's SVID",
    );
    // The JWT-SVID: py-spiffe's own check against the JWT bundle passed
    // (else the script fails); the server validated it for its audience
    // and refused it for another.
    assert_eq!(answer["jwt_subject"], id.as_str());
    assert_eq!(answer["validated_subject"], id.as_str());
    assert!(!answer["jwt_keys"].as_array().unwrap().is_empty());
    let refused = answer["other_audience"].as_str().unwrap();
    assert!(refused.contains("audience"), "{refused}");
}

/// `tests/clients/python/grpc_probe.py` against the suite's socket.
async fn probe(suite: &SpiffeFixture) -> Value {
    let mut python = clients::python();
    python.arg(clients::script("python/grpc_probe.py")).env(
        "SPIFFE_ENDPOINT_SOCKET",
        format!("unix://{}", suite.socket()),
    );
    let (ok, answer, stderr) = tokio::task::spawn_blocking(move || clients::run_json(python))
        .await
        .unwrap();
    assert!(ok, "grpc_probe: {answer} {stderr}");
    answer
}

/// grpcio's own health and reflection clients, and the WIT-SVID RPCs; then
/// keyd stops, and health says NOT_SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_health_reflection_and_unimplemented_wit_svids_for_grpcio_clients() {
    let mut suite = Suite::start_with(|s| s.health_check_secs = 1).await;
    let answer = probe(&suite).await;
    for service in [
        "",
        "SpiffeWorkloadAPI",
        "envoy.service.secret.v3.SecretDiscoveryService",
        "edgeid.attestation.v1.ModuleAttestation",
    ] {
        assert_eq!(answer[format!("check:{service}")], "SERVING", "{answer}");
    }
    assert_eq!(answer["check:unknown"], "NOT_FOUND", "{answer}");
    assert_eq!(answer["watch"], "SERVING", "{answer}");
    let services: Vec<&str> = answer["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for service in [
        "SpiffeWorkloadAPI",
        "edgeid.attestation.v1.ModuleAttestation",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(&service), "{service}: {services:?}");
    }
    let methods: Vec<&str> = answer["methods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        methods,
        [
            "FetchJWTBundles",
            "FetchJWTSVID",
            "FetchWITBundles",
            "FetchWITSVID",
            "FetchX509Bundles",
            "FetchX509SVID",
            "ValidateJWTSVID"
        ]
    );
    // The specification's field numbers, as reflection tells them.
    assert_eq!(answer["x509svid_fields"]["x509_svid_key"], 3, "{answer}");
    assert_eq!(answer["x509svid_fields"]["hint"], 5, "{answer}");
    assert_eq!(answer["attestation_methods"][0], "Quote");
    for method in ["FetchWITSVID", "FetchWITBundles"] {
        assert_eq!(
            answer[method]["code"], "UNIMPLEMENTED",
            "{method}: {answer}"
        );
        let details = answer[method]["details"].as_str().unwrap();
        assert!(details.contains("WIT-SVID"), "{details}");
    }

    suite.stack.keyd.stop().await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let answer = probe(&suite).await;
    for service in [
        "",
        "SpiffeWorkloadAPI",
        "envoy.service.secret.v3.SecretDiscoveryService",
        "edgeid.attestation.v1.ModuleAttestation",
    ] {
        assert_eq!(
            answer[format!("check:{service}")],
            "NOT_SERVING",
            "{answer}"
        );
    }
}

/// `tests/clients/python/envoy_sds.py` (Envoy's messages from xds-protos)
/// against the suite's socket, with `env`.
async fn envoy(suite: &SpiffeFixture, env: &[(&str, String)]) -> Value {
    let mut python = clients::python();
    python
        .arg(clients::script("python/envoy_sds.py"))
        .env("SDS_SOCKET", format!("unix://{}", suite.socket()));
    for (k, v) in env {
        python.env(k, v);
    }
    let (ok, answer, stderr) = tokio::task::spawn_blocking(move || clients::run_json(python))
        .await
        .unwrap();
    assert!(ok, "envoy_sds: {answer} {stderr}");
    answer
}

/// Envoy's SDS as SPIRE's agent serves it, to Envoy's own messages: the
/// SVID and bundle verified by openssl, a rotation pushed after the ACK,
/// names by SPIFFE ID, unknown names and types refused, delta Unimplemented.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoy_sds_serves_the_svid_and_bundle_and_pushes_rotations() {
    let suite = Suite::start_with(|s| s.svid_lifetime_secs = 4).await;
    let id = format!("spiffe://{TD}/edge-1/mod-a");
    let answer = envoy(&suite, &[("EXPECTED_SPIFFE_ID", id.clone())]).await;
    let first = &answer["first"]["secrets"];
    let chain = first["default"]["chain"].as_str().unwrap();
    let bundle = first["ROOTCA"]["trusted_ca"].as_str().unwrap();
    for purpose in ["sslclient", "sslserver"] {
        edgeid_testkit::openssl::verify_chain(bundle, chain, purpose).unwrap();
    }
    edgeid_testkit::assert_leaf_certifies(
        chain,
        first["default"]["key"].as_str().unwrap(),
        "the SDS tls_certificate",
    );
    let leaf = pem::parse(chain).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.contents()).unwrap();
    let uri = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        });
    assert_eq!(uri.as_deref(), Some(id.as_str()));
    // The rotation: a new version, a new certificate.
    let second = &answer["second"];
    assert_ne!(second["version"], answer["first"]["version"]);
    assert_ne!(
        second["secrets"]["default"]["chain"].as_str().unwrap(),
        chain
    );
    assert_eq!(answer["third"]["names"], serde_json::json!([id]));
    assert_eq!(answer["fetch_names"], serde_json::json!(["default"]));
    assert_eq!(
        answer["fetch_all"],
        serde_json::json!([format!("spiffe://{TD}"), id])
    );
    let unknown = answer["fetch_unknown"].as_str().unwrap();
    assert!(
        unknown.starts_with("INVALID_ARGUMENT") && unknown.contains("other.test"),
        "{unknown}"
    );
    assert!(answer["fetch_wrong_type"]
        .as_str()
        .unwrap()
        .starts_with("INVALID_ARGUMENT"));
    assert!(answer["delta"]
        .as_str()
        .unwrap()
        .starts_with("UNIMPLEMENTED"));
}

/// A local user who is no module gets no secret from SDS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoy_sds_refuses_a_caller_that_is_no_module() {
    use edgeid_workloadapi::spiffe::proto::envoy::service::discovery::v3::DiscoveryRequest;
    use edgeid_workloadapi::spiffe::proto::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
    if !edgeid_testkit::is_root() {
        eprintln!("not root: cannot act as another uid; the mapping is tested in spiffe.rs");
        return;
    }
    let suite = Suite::start().await;
    let stream = edgeid_testkit::connect_as(65534, 65534, std::path::Path::new(&suite.socket()));
    let channel = edgeid_workloadapi::spiffe::client::channel_over(stream)
        .await
        .unwrap();
    let mut sds = SecretDiscoveryServiceClient::new(channel);
    let refused = sds
        .fetch_secrets(DiscoveryRequest {
            resource_names: vec!["default".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_authority_is_served_and_every_other_http2_rule_holds() {
    let suite = Suite::start().await;
    let mut python = clients::python();
    python
        .arg(clients::script("python/h2_probe.py"))
        .arg(suite.socket());
    let (ok, answer, stderr) = tokio::task::spawn_blocking(move || clients::run_json(python))
        .await
        .unwrap();
    assert!(ok, "{answer} {stderr}");
    let cases = answer.as_array().unwrap();
    assert!(cases.len() >= 20, "{answer}");
    let mut refused = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        if case["served"] == Value::Bool(true) {
            assert_eq!(case["grpc_status"], "0", "{name} must be served: {case}");
            if case.get("status").is_some() {
                assert_eq!(case["status"], "200", "{name}: {case}");
                assert_eq!(case["reset"], Value::Null, "{name}: {case}");
                assert!(
                    case["message_bytes"].as_u64().unwrap() > 5,
                    "{name}: {case}"
                );
            } else {
                assert_eq!(case["svids"], 1, "{name}: {case}");
            }
        } else {
            // Refused as h2 refuses it: the stream reset, or the connection
            // ended, with PROTOCOL_ERROR (1), and no answer at all.
            assert_eq!(
                case["status"],
                Value::Null,
                "{name} must be refused: {case}"
            );
            assert_eq!(case["message_bytes"], 0, "{name}: {case}");
            let reset = case["reset"] == 1 || case["goaway"] == 1 || case["closed"] == true;
            assert!(reset, "{name}: {case}");
            refused += 1;
        }
    }
    assert!(refused >= 13, "{refused} refusal cases");
}

#[test]
fn vendored_h2_is_upstream_but_for_its_patch() {
    let vendor = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vendor");
    let sha256sum = edgeid_testkit::require_tool("sha256sum", "coreutils");
    let patch = edgeid_testkit::require_tool("patch", "patch");
    let listed = std::fs::read_to_string(vendor.join("h2.upstream.sha256")).unwrap();
    let check = Command::new(&sha256sum)
        .args(["-c", "--quiet", "../h2.upstream.sha256"])
        .current_dir(vendor.join("h2"))
        .output()
        .unwrap();
    let failed: Vec<String> = String::from_utf8_lossy(&check.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        failed,
        ["src/server.rs: FAILED"],
        "only the patched file differs from crates.io's h2: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Nothing added either.
    let mut files = Vec::new();
    let mut dirs = vec![vendor.join("h2")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert_eq!(files.len(), listed.lines().count(), "{files:?}");
    // Undoing the patch gives upstream's file back.
    let scratch = edgeid_testkit::temp_dir();
    std::fs::create_dir(scratch.path().join("src")).unwrap();
    std::fs::copy(
        vendor.join("h2/src/server.rs"),
        scratch.path().join("src/server.rs"),
    )
    .unwrap();
    let undone = Command::new(&patch)
        .args(["-R", "-p1", "--quiet", "-i"])
        .arg(vendor.join("h2.patch"))
        .current_dir(scratch.path())
        .status()
        .unwrap();
    assert!(undone.success(), "h2.patch is what was applied");
    let line = listed
        .lines()
        .find(|l| l.ends_with("  src/server.rs"))
        .unwrap();
    let sum = Command::new(&sha256sum)
        .arg("src/server.rs")
        .current_dir(scratch.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&sum.stdout).trim(), line);
}
