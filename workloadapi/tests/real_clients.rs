//! The workload API as clients nobody here wrote use it, unchanged, each
//! answer checked by a second party:
//! - the Azure IoT Python device SDK (`azure-iot-device` 2.14 from PyPI) at
//!   every api-version IoT Edge's runtime serves, and the Node.js one
//!   (`azure-iot-device` 1.18 from npm, which always sends 2018-06-28): the
//!   SAS tokens they build are checked by the test hub with the module's
//!   key, the trust bundle they read validates a server certificate under
//!   `openssl verify`;
//! - requests byte for byte as edgeHub and edgeAgent send them (Azure/iotedge
//!   `edge-util` `WorkloadClient` and its generated 2019-01-30 client, which
//!   they use at api-version 2020-07-07), answered with the statuses, shapes
//!   and status lines that client requires.
//!
//! The device is provisioned through the test DPS, so the hub knows every
//! module's key; the test process's uid is the module.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use edgeid_identityd::config::{AttestationConfig, DpsConfig, KeySource, ProvisioningConfig};
use edgeid_testkit::cloud::{CloudService, Enrollment};
use edgeid_testkit::workload::Stack;
use edgeid_testkit::{clients, WorkloadFixture};
use edgeid_workloadapi::api::API_VERSIONS;
use serde_json::{json, Value};

const DEVICE: &str = "wl-device";

/// A device provisioned through the test DPS with `module` as this
/// process's uid, and its workload API.
struct Device {
    cloud: CloudService,
    stack: Stack,
    workload: WorkloadFixture,
    module: String,
    _dir: tempfile::TempDir,
}

impl Device {
    async fn start(module: &str) -> Self {
        let cloud = CloudService::start(None).await;
        let key = vec![9u8; 32];
        cloud.enroll(DEVICE, Enrollment::SymmetricKey(key.clone()));
        let dir = edgeid_testkit::temp_dir();
        let file = dir.path().join("enrollment.key");
        std::fs::write(&file, STANDARD.encode(&key)).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let provisioning = ProvisioningConfig::Dps(DpsConfig {
            global_endpoint: cloud.endpoint.clone(),
            id_scope: cloud.id_scope.clone(),
            attestation: AttestationConfig::SymmetricKey {
                registration_id: DEVICE.into(),
                key: KeySource {
                    key_file: Some(file),
                    key_id: None,
                },
                group: false,
            },
            payload_file: None,
        });
        let stack = Stack::start(dir.path(), provisioning, Some(&cloud), &[module]).await;
        let config = stack.workload_config(dir.path(), &[(module, edgeid_common::current_uid())]);
        let workload = WorkloadFixture::configured(config).await;
        Self {
            cloud,
            stack,
            workload,
            module: module.to_owned(),
            _dir: dir,
        }
    }

    async fn genid(&self) -> String {
        self.stack
            .identityd
            .client()
            .module(&self.module)
            .await
            .unwrap()
            .generation_id
    }

    /// The environment IoT Edge gives a module.
    async fn module_env(&self, api_version: &str) -> Vec<(&'static str, String)> {
        vec![
            (
                "IOTEDGE_WORKLOADURI",
                format!("unix://{}", self.workload.socket().display()),
            ),
            ("IOTEDGE_MODULEID", self.module.clone()),
            ("IOTEDGE_MODULEGENERATIONID", self.genid().await),
            ("IOTEDGE_DEVICEID", DEVICE.into()),
            ("IOTEDGE_IOTHUBHOSTNAME", self.cloud.hub.clone()),
            ("IOTEDGE_GATEWAYHOSTNAME", "gateway.local".into()),
            ("IOTEDGE_APIVERSION", api_version.into()),
            ("IOTEDGE_AUTHSCHEME", "sasToken".into()),
        ]
    }

    /// A server certificate from the workload API, as edgeHub asks for one
    /// (a module other than the hub, for its own name).
    async fn server_chain(&self) -> String {
        let genid = self.genid().await;
        let name = match self.module.as_str() {
            "$edgeHub" => "gateway.local",
            other => other,
        };
        let body = json!({"commonName": name}).to_string();
        let path = format!(
            "/modules/{}/genid/{genid}/certificate/server?api-version=2020-07-07",
            encode(&self.module)
        );
        let answer = exchange(&self.workload.socket(), &edge_util_post(&path, &body)).await;
        assert_eq!(
            answer.status_line, "HTTP/1.1 201 Created",
            "{}",
            answer.body
        );
        answer.json()["certificate"].as_str().unwrap().to_owned()
    }

    /// What the SDK printed passes the hub and openssl.
    async fn check_sdk_answer(&self, sdk: &str, answer: &Value) {
        for token in ["sas", "renewed"] {
            let Some(sas) = answer[token].as_str() else {
                continue;
            };
            self.cloud
                .authenticate_module(DEVICE, &self.module, sas)
                .unwrap_or_else(|e| panic!("{sdk}: the hub refuses its {token} token: {e}"));
        }
        let ca = answer["ca"].as_str().expect("the SDK's trust bundle");
        edgeid_testkit::openssl::verify_chain(ca, &self.server_chain().await, "sslserver")
            .unwrap_or_else(|e| {
                panic!("{sdk}: its trust bundle does not validate edgeHub's certificate: {e}")
            });
    }
}

/// A path segment as the SDKs and edge-util encode a module id (`$` too).
fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_sdk_at_every_api_version_gets_tokens_the_hub_accepts() {
    let device = Device::start("mod-a").await;
    for version in API_VERSIONS {
        let mut python = clients::python();
        python
            .arg(clients::script("python/edge_module.py"))
            .envs(device.module_env(version).await);
        let (ok, answer, stderr) = clients::run_json(python);
        assert!(ok, "Python SDK at api-version {version}: {answer} {stderr}");
        device
            .check_sdk_answer(&format!("Python SDK at {version}"), &answer)
            .await;
        eprintln!(
            "azure-iot-device {} at api-version {version}: token and trust bundle checked",
            answer["sdk"]
        );
    }
    // A version the runtime never served reaches the SDK as the failure it
    // would see under IoT Edge.
    let mut python = clients::python();
    python
        .arg(clients::script("python/edge_module.py"))
        .envs(device.module_env("2020-10-10").await);
    let (ok, answer, _) = clients::run_json(python);
    assert!(!ok, "{answer}");
    assert_eq!(answer["error"], "Unexpected failure in IoTEdge", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_sdk_gets_tokens_the_hub_accepts() {
    let device = Device::start("mod-a").await;
    let mut node = clients::node();
    // The Node.js SDK ignores IOTEDGE_APIVERSION (it always sends 2018-06-28).
    node.arg(clients::script("node/edge_module.js"))
        .envs(device.module_env("2022-08-03").await);
    let (ok, answer, stderr) = clients::run_json(node);
    assert!(ok, "Node.js SDK: {answer} {stderr}");
    assert_eq!(answer["client"], "ModuleClient");
    device.check_sdk_answer("Node.js SDK", &answer).await;
}

/// A response as read off the socket.
struct Answer {
    status_line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A request as edge-util's `HttpUdsMessageHandler` writes it for the
/// generated client: request line, `Host: workload.sock:80`, `Connection:
/// close`, `Accept`, then the content headers.
fn edge_util_request(method: &str, path_and_query: &str, body: Option<&str>) -> Vec<u8> {
    let mut out = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: workload.sock:80\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if let Some(body) = body {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        out.push_str("\r\n");
    }
    out.into_bytes()
}

fn edge_util_post(path_and_query: &str, body: &str) -> Vec<u8> {
    edge_util_request("POST", path_and_query, Some(body))
}

/// Writes the bytes, reads to EOF (the client asked to close), splits the
/// answer the way edge-util's own parser does: a three-part status line,
/// headers, and the `Content-Length` bytes of body.
async fn exchange(socket: &Path, request: &[u8]) -> Answer {
    let socket: PathBuf = socket.to_owned();
    let request = request.to_vec();
    let raw = tokio::task::spawn_blocking(move || {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        stream.write_all(&request).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        raw
    })
    .await
    .unwrap();
    let text = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap().to_owned();
    assert_eq!(
        status_line.splitn(3, ' ').count(),
        3,
        "edge-util needs a reason phrase: {status_line}"
    );
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').expect("a header line");
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let answer = Answer {
        status_line,
        headers,
        body: body.to_owned(),
    };
    let length: usize = answer
        .header("content-length")
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert_eq!(length, answer.body.len(), "the whole body, no more");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edgehub_and_edgeagent_requests_byte_for_byte() {
    let device = Device::start("$edgeHub").await;
    let socket = device.workload.socket();
    let genid = device.genid().await;
    let v = "api-version=2020-07-07";
    let module = encode("$edgeHub");
    assert_eq!(module, "%24edgeHub");

    // Trust bundle (edgeHub and edgeAgent).
    let bundle = exchange(
        &socket,
        &edge_util_request("GET", &format!("/trust-bundle?{v}"), None),
    )
    .await;
    assert_eq!(bundle.status_line, "HTTP/1.1 200 OK");
    assert_eq!(bundle.header("content-type"), Some("application/json"));
    let bundle = bundle.json()["certificate"].as_str().unwrap().to_owned();
    // edgeHub splits the bundle on this marker and needs one certificate at least.
    assert!(bundle.split("-----END CERTIFICATE-----").count() >= 2);

    // Sign: the body edge-util's generated client writes, and the one that
    // carries only what the runtime reads.
    let to_sign = "localhost%2Fdevices%2Fwl-device%2Fmodules%2F%24edgeHub\n1893456000";
    let data = STANDARD.encode(to_sign);
    let expected = STANDARD.encode(
        device
            .cloud
            .module_hmac(DEVICE, "$edgeHub", to_sign.as_bytes())
            .expect("the hub holds $edgeHub's key"),
    );
    let sign_path = format!("/modules/{module}/genid/{genid}/sign?{v}");
    for body in [
        format!(r#"{{"keyId":"primary","algo":"HMACSHA256","data":"{data}"}}"#),
        format!(r#"{{"data":"{data}"}}"#),
        // Fields the runtime does not know are ignored, not refused.
        format!(r#"{{"data":"{data}","keyId":"primary","futureField":{{"x":1}}}}"#),
    ] {
        let answer = exchange(&socket, &edge_util_post(&sign_path, &body)).await;
        assert_eq!(
            answer.status_line, "HTTP/1.1 200 OK",
            "{body}: {}",
            answer.body
        );
        assert_eq!(answer.header("content-type"), Some("application/json"));
        assert_eq!(answer.json(), json!({"digest": expected}), "{body}");
    }

    // Server certificate (edgeHub): commonName and a 90-day expiration with
    // .NET's seven fractional digits.
    let expiration = (time::OffsetDateTime::now_utc() + time::Duration::days(90))
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:7]Z"
        ))
        .unwrap();
    let body = format!(r#"{{"commonName":"gateway.local","expiration":"{expiration}"}}"#);
    let answer = exchange(
        &socket,
        &edge_util_post(
            &format!("/modules/{module}/genid/{genid}/certificate/server?{v}"),
            &body,
        ),
    )
    .await;
    assert_eq!(
        answer.status_line, "HTTP/1.1 201 Created",
        "{}",
        answer.body
    );
    let cert = answer.json();
    check_certificate_answer(&cert, &bundle, "sslserver");
    let names = dns_names(cert["certificate"].as_str().unwrap());
    assert_eq!(
        names,
        vec!["gateway.local".to_owned(), "edgeHub".to_owned()],
        "the runtime's names: the common name and the module id less its $"
    );

    // Identity certificate (the generated client's; no genid in the path).
    let answer = exchange(
        &socket,
        &edge_util_post(
            &format!("/modules/{module}/certificate/identity?{v}"),
            &format!(r#"{{"expiration":"{expiration}"}}"#),
        ),
    )
    .await;
    assert_eq!(
        answer.status_line, "HTTP/1.1 201 Created",
        "{}",
        answer.body
    );
    check_certificate_answer(&answer.json(), &bundle, "sslclient");

    // Encrypt and decrypt (edgeAgent's EncryptionProvider): the IV is a
    // GUID's 32 hex digits, base64.
    let iv = STANDARD.encode("0123456789abcdef0123456789abcdef");
    let plaintext = STANDARD.encode("edgeAgent's secret");
    let answer = exchange(
        &socket,
        &edge_util_post(
            &format!("/modules/{module}/genid/{genid}/encrypt?{v}"),
            &format!(r#"{{"plaintext":"{plaintext}","initializationVector":"{iv}"}}"#),
        ),
    )
    .await;
    assert_eq!(answer.status_line, "HTTP/1.1 200 OK", "{}", answer.body);
    let ciphertext = answer.json()["ciphertext"].as_str().unwrap().to_owned();
    let answer = exchange(
        &socket,
        &edge_util_post(
            &format!("/modules/{module}/genid/{genid}/decrypt?{v}"),
            &format!(r#"{{"ciphertext":"{ciphertext}","initializationVector":"{iv}"}}"#),
        ),
    )
    .await;
    assert_eq!(answer.status_line, "HTTP/1.1 200 OK", "{}", answer.body);
    assert_eq!(answer.json(), json!({ "plaintext": plaintext }));

    // The module list, as the runtime shapes it.
    let answer = exchange(
        &socket,
        &edge_util_request("GET", &format!("/modules?{v}"), None),
    )
    .await;
    assert_eq!(answer.status_line, "HTTP/1.1 200 OK", "{}", answer.body);
    let list = answer.json();
    assert_eq!(list["modules"][0]["name"], "$edgeHub", "{list}");
    assert_eq!(list["modules"][0]["id"], "id");
    assert_eq!(list["modules"][0]["config"]["env"], json!([]));
    assert!(list["modules"][0]["status"]["runtimeStatus"]["status"].is_string());
}

/// A certificate answer as edge-util's generated client requires it: 201's
/// `privateKey {type: key, bytes: PKCS#8 PEM}`, a PEM chain that validates
/// for `purpose` under the bundle and whose leaf holds that key, and the
/// runtime's `expiration` format.
fn check_certificate_answer(answer: &Value, bundle: &str, purpose: &str) {
    assert_eq!(answer["privateKey"]["type"], "key", "{answer}");
    let key_pem = answer["privateKey"]["bytes"].as_str().unwrap();
    assert!(
        key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "PKCS#8 PEM"
    );
    let chain = answer["certificate"].as_str().unwrap();
    edgeid_testkit::openssl::verify_chain(bundle, chain, purpose).unwrap();
    edgeid_testkit::assert_leaf_certifies(chain, key_pem, "the private key handed over");
    let leaf = pem::parse(chain).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.contents()).unwrap();
    let expiration = answer["expiration"].as_str().unwrap();
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+00:00");
    let parsed = time::PrimitiveDateTime::parse(expiration, format)
        .unwrap_or_else(|e| panic!("expiration {expiration:?}: {e}"));
    assert_eq!(
        parsed.assume_utc().unix_timestamp(),
        cert.validity().not_after.timestamp(),
        "expiration is the leaf's notAfter"
    );
}

/// The DNS SANs of a chain's leaf, in order.
fn dns_names(chain: &str) -> Vec<String> {
    let leaf = pem::parse(chain).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.contents()).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    san.general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect()
}
