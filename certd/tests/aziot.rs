//! certd's aziot certificates API (issue 18) over its socket, with bodies
//! as the reference's client (`aziot-cert-client-async`) builds them and the
//! calls aziot-edged makes: its edge CA from a CSR with CA extensions, then
//! module certificates signed by that CA through a keyd handle. Every chain
//! is checked by `openssl verify` and read back with x509-parser.

use std::process::Command;
use std::sync::Arc;

use edgeid_certd::config::{IssuanceConfig, PrincipalConfig};
use edgeid_certd::issuer;
use edgeid_certd::signer::KeydKey;
use edgeid_common::authz::{Admins, Grants};
use edgeid_testkit::aziot::{call, call_as, call_raw};
use edgeid_testkit::{openssl, CertdFixture, KeydFixture};
use http::{Method, StatusCode};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
use serde_json::{json, Value};
use x509_parser::prelude::*;

const V: &str = "2020-09-01";
const EDGE_CA: &str = "aziot-edged-ca";

struct Suite {
    dir: tempfile::TempDir,
    keyd: KeydFixture,
    certd: CertdFixture,
}

/// keyd and certd; certd issues `aziot-edged-ca` self-signed, as a CA, the
/// way `iotedge config apply` configures the reference's quickstart, and
/// `aziot-edged/by-local-ca` by its local CA, as a leaf only.
async fn suite(principals: Vec<PrincipalConfig>, admins: Admins) -> Suite {
    suite_with(principals, admins, |_, _| {}).await
}

/// [`suite`], its certd config changed by `edit` (given the directory) first.
async fn suite_with(
    principals: Vec<PrincipalConfig>,
    admins: Admins,
    edit: impl FnOnce(&std::path::Path, &mut edgeid_certd::CertdConfig),
) -> Suite {
    let dir = edgeid_testkit::temp_dir();
    let keyd = KeydFixture::start_in(dir.path()).await;
    let mut config = CertdFixture::config_in(dir.path(), &keyd.socket());
    config.issuance.insert(
        EDGE_CA.into(),
        IssuanceConfig {
            method: edgeid_certd::api::IssuerKind::SelfSigned,
            expiry_days: Some(90),
            ca: true,
            key_id: None,
            subject: None,
            renewal: None,
            est_url: None,
        },
    );
    config.issuance.insert(
        "aziot-edged/by-local-ca".into(),
        IssuanceConfig {
            method: edgeid_certd::api::IssuerKind::LocalCa,
            expiry_days: None,
            ca: false,
            key_id: None,
            subject: None,
            renewal: None,
            est_url: None,
        },
    );
    config.principals = principals;
    edit(dir.path(), &mut config);
    // Who may call is certd's decision here, not the socket's mode.
    config.server.socket_mode = 0o666;
    let certd = CertdFixture::configured(config, admins).await;
    Suite { dir, keyd, certd }
}

/// `?api-version=` on a path.
fn at(path: &str) -> String {
    format!("{path}?api-version={V}")
}

/// The WHATWG URL path percent-encode set, which the reference's client
/// applies to an id: a `/` in an id goes as it is.
const PATH: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// A certificate id as the reference's client puts it in a path.
fn segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, PATH).to_string()
}

/// What aziot-edged does first: its CA key in keyd (through keyd's aziot
/// API, RSA-2048 as it asks), then a CSR with keyUsage and basicConstraints
/// CA:TRUE pathlen 0 for it, and `POST /certificates` without an issuer.
/// Returns the CA's PEM and a handle to its key.
async fn edge_ca(s: &Suite) -> (String, Value) {
    let (status, key) = call(
        &s.keyd.socket(),
        Method::POST,
        "/keypair?api-version=2021-05-01",
        json!({ "keyId": EDGE_CA, "preferredAlgorithms": "rsa-2048:*" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{key}");
    let signer = Arc::new(KeydKey::load(&s.keyd.client(), EDGE_CA).await.unwrap());
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "iotedge workload ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    let csr = issuer::csr(params, signer).await.unwrap();
    let csr = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", csr));
    let (status, answer) = call(
        &s.certd.socket(),
        Method::POST,
        &at("/certificates"),
        json!({ "certId": EDGE_CA, "csr": csr }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    (
        answer["pem"].as_str().unwrap().to_owned(),
        key["keyHandle"].clone(),
    )
}

/// A key and CSR made by openssl (a party that is not edgeid), as
/// aziot-edged makes them for a module: CN, extensions given.
fn openssl_csr(dir: &std::path::Path, name: &str, cn: &str, addext: &[&str]) -> String {
    openssl_csr_for(dir, name, &format!("/CN={cn}"), addext)
}

/// The same for a whole subject (`/CN=.../O=...`).
fn openssl_csr_for(dir: &std::path::Path, name: &str, subj: &str, addext: &[&str]) -> String {
    let tool = edgeid_testkit::require_tool("openssl", "openssl");
    let csr = dir.join(format!("{name}.csr"));
    let mut cmd = Command::new(tool);
    cmd.args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-keyout"])
        .arg(dir.join(format!("{name}.key")))
        .args(["-subj", subj, "-out"])
        .arg(&csr);
    for ext in addext {
        cmd.args(["-addext", ext]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(csr).unwrap()
}

/// The subject of a chain's leaf, as `openssl x509 -subject` prints it.
fn openssl_subject(dir: &std::path::Path, chain: &str) -> String {
    let leaf = dir.join("subject-of.pem");
    std::fs::write(&leaf, chain).unwrap();
    let out = openssl::run(&["x509", "-noout", "-subject", "-in", leaf.to_str().unwrap()]);
    String::from_utf8_lossy(&out).trim().to_owned()
}

fn ders(pem_text: &str) -> Vec<Vec<u8>> {
    ::pem::parse_many(pem_text)
        .unwrap()
        .into_iter()
        .map(|p| p.into_contents())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aziot_edged_gets_its_edge_ca_and_module_certificates_that_openssl_verifies() {
    let s = suite(vec![], Admins::root_and_self()).await;
    let (ca_pem, ca_handle) = edge_ca(&s).await;
    let ca_der = ders(&ca_pem).remove(0);
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    let bc = ca.basic_constraints().unwrap().unwrap().value;
    assert!(
        bc.ca && bc.path_len_constraint == Some(0),
        "a CA, pathLen 0"
    );
    assert_eq!(ca.subject(), ca.issuer(), "self-signed, as configured");
    assert!(ca.validity().time_to_expiration().unwrap().whole_days() <= 90);
    openssl::verify_chain(&ca_pem, &ca_pem, "any").unwrap();

    // A module's server certificate, as aziot-edged asks for it: its own
    // id form, the CSR openssl made, the edge CA and its key handle.
    let id = "aziot-edged/module/$edgeHub:638356473476598735:server";
    let csr = openssl_csr(
        s.dir.path(),
        "server",
        "edgeHub",
        &[
            "extendedKeyUsage=serverAuth",
            "subjectAltName=DNS:edgehub.local",
        ],
    );
    let issuer = json!({ "certId": EDGE_CA, "privateKeyHandle": ca_handle });
    let (status, answer) = call(
        &s.certd.socket(),
        Method::POST,
        &at("/certificates"),
        json!({ "certId": id, "csr": csr, "issuer": issuer }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let chain = answer["pem"].as_str().unwrap();
    let chain_ders = ders(chain);
    assert_eq!(
        chain_ders.len(),
        2,
        "the leaf, then the issuer's stored chain"
    );
    assert_eq!(chain_ders[1], ca_der);
    openssl::verify_chain(&ca_pem, chain, "sslserver").unwrap();
    assert!(
        openssl::verify_chain(&ca_pem, chain, "sslclient").is_err(),
        "serverAuth only, as the CSR asked"
    );
    let (_, leaf) = X509Certificate::from_der(&chain_ders[0]).unwrap();
    assert!(leaf.subject().to_string().contains("CN=edgeHub"));
    let san = leaf.subject_alternative_name().unwrap().unwrap().value;
    assert!(
        matches!(
            san.general_names[..],
            [GeneralName::DNSName("edgehub.local")]
        ),
        "{san:?}"
    );
    assert!(leaf.validity().not_after <= ca.validity().not_after);

    // The identity certificate (clientAuth) of another module.
    let csr = openssl_csr(
        s.dir.path(),
        "identity",
        "sensor",
        &["extendedKeyUsage=clientAuth"],
    );
    let (status, answer) = call(
        &s.certd.socket(),
        Method::POST,
        &at("/certificates"),
        json!({ "certId": "aziot-edged/module/sensor:identity", "csr": csr, "issuer": issuer }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    openssl::verify_chain(&ca_pem, answer["pem"].as_str().unwrap(), "sslclient").unwrap();

    // Get, import, delete: with the id percent-encoded, as the client sends it.
    let path = at(&format!("/certificates/{}", segment(id)));
    let (status, got) = call(&s.certd.socket(), Method::GET, &path, Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["pem"], chain);
    let renewed = at(&format!("/certificates/{}", segment(EDGE_CA)));
    let (status, put) = call(
        &s.certd.socket(),
        Method::PUT,
        &renewed,
        json!({ "pem": ca_pem }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{put}");
    assert_eq!(put["pem"], ca_pem.as_str());
    for _ in 0..2 {
        // Deleting what is not there is done, as the reference answers it.
        let (status, _) = call(&s.certd.socket(), Method::DELETE, &path, Value::Null).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let (status, gone) = call(&s.certd.socket(), Method::GET, &path, Value::Null).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a missing certificate is 400: {gone}"
    );
    assert!(gone["message"].as_str().unwrap().contains("does not exist"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_must_be_a_ca_with_the_very_key_the_handle_names() {
    let s = suite(vec![], Admins::root_and_self()).await;
    let (_, ca_handle) = edge_ca(&s).await;
    let (status, other) = call(
        &s.keyd.socket(),
        Method::POST,
        "/keypair?api-version=2020-09-01",
        json!({ "keyId": "other", "preferredAlgorithms": "ec-p256" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let csr = openssl_csr(s.dir.path(), "m", "m", &["extendedKeyUsage=serverAuth"]);
    let mut tampered = ca_handle.as_str().unwrap().to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let cases = [
        (
            json!({ "certId": EDGE_CA, "privateKeyHandle": other["keyHandle"] }),
            "is not the key of",
        ),
        (
            json!({ "certId": EDGE_CA, "privateKeyHandle": tampered }),
            "issuer.privateKeyHandle",
        ),
        (
            json!({ "certId": "nothing", "privateKeyHandle": ca_handle }),
            "not found",
        ),
    ];
    for (issuer, why) in cases {
        let (status, answer) = call(
            &s.certd.socket(),
            Method::POST,
            &at("/certificates"),
            json!({ "certId": "m", "csr": csr, "issuer": issuer }),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{issuer}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(why),
            "{answer}"
        );
    }
    // A leaf is not an issuer, even with its own key's handle.
    let (_, leaf) = call(
        &s.certd.socket(),
        Method::POST,
        &at("/certificates"),
        json!({ "certId": "leaf", "csr": csr,
                "issuer": { "certId": EDGE_CA, "privateKeyHandle": ca_handle } }),
    )
    .await;
    assert!(leaf["pem"].is_string(), "{leaf}");
    let (status, answer) = call(
        &s.certd.socket(),
        Method::POST,
        &at("/certificates"),
        json!({ "certId": "m", "csr": csr,
                "issuer": { "certId": "leaf", "privateKeyHandle": other["keyHandle"] } }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["message"].as_str().unwrap().contains("not a CA"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_references_statuses_and_a_message() {
    let s = suite(vec![], Admins::root_and_self()).await;
    let csr = openssl_csr(s.dir.path(), "x", "x", &[]);
    let code_signing = openssl_csr(s.dir.path(), "cs", "cs", &["extendedKeyUsage=codeSigning"]);
    let mut forged = csr.clone();
    forged.replace_range(100..101, if &csr[100..101] == "A" { "B" } else { "A" });
    #[rustfmt::skip]
    let cases: Vec<(Method, String, String, StatusCode, &str)> = vec![
        (Method::POST, "/certificates".into(), json!({ "certId": "x", "csr": csr }).to_string(), StatusCode::BAD_REQUEST, "api-version"),
        (Method::POST, "/certificates?api-version=2099-01-01".into(), "{}".into(), StatusCode::BAD_REQUEST, "api-version"),
        (Method::POST, at("/certificates"), "{\"certId\":".into(), StatusCode::UNPROCESSABLE_ENTITY, "malformed JSON"),
        (Method::POST, at("/certificates"), json!({ "certId": "x" }).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "csr"),
        (Method::POST, at("/certificates"), String::new(), StatusCode::BAD_REQUEST, "missing request body"),
        (Method::PUT, at("/certificates/x"), String::new(), StatusCode::BAD_REQUEST, "missing request body"),
        (Method::POST, at("/certificates"), json!({ "certId": "x", "csr": "not a CSR" }).to_string(), StatusCode::BAD_REQUEST, "CSR"),
        (Method::POST, at("/certificates"), json!({ "certId": "x", "csr": forged }).to_string(), StatusCode::BAD_REQUEST, "CSR"),
        (Method::POST, at("/certificates"), json!({ "certId": "x", "csr": csr }).to_string(), StatusCode::BAD_REQUEST, "needs an issuer"),
        (Method::POST, at("/certificates"), json!({ "certId": "../x", "csr": csr }).to_string(), StatusCode::BAD_REQUEST, "invalid certificate id"),
        (Method::POST, at("/certificates"), json!({ "certId": EDGE_CA, "csr": code_signing }).to_string(), StatusCode::BAD_REQUEST, "extended key usage"),
        (Method::PUT, at("/certificates/x"), json!({ "pem": "junk" }).to_string(), StatusCode::BAD_REQUEST, ""),
        (Method::PATCH, at("/certificates/x"), String::new(), StatusCode::METHOD_NOT_ALLOWED, ""),
        (Method::GET, at("/nothing"), String::new(), StatusCode::NOT_FOUND, ""),
    ];
    for (method, path, body, status, why) in cases {
        let (got, answer) = call_raw(&s.certd.socket(), method.clone(), &path, body).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{method} {path}: {answer}");
    }
    let stored = std::fs::read_dir(s.dir.path().join("certd/certs"))
        .unwrap()
        .count();
    assert_eq!(stored, 0, "nothing stored by any of it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_need_the_certificate_id_and_the_ca_rights_config_gives() {
    if !edgeid_testkit::is_root() {
        panic!("this test switches uids: run it as root (CI does)");
    }
    let principal = 64_301;
    let stranger = 64_302;
    let s = suite(
        vec![PrincipalConfig {
            name: "aziot-edged".into(),
            uid: principal,
            certs: Grants::parse(&["aziot-edged/**", EDGE_CA]).unwrap(),
            names: Grants::parse(&["*"]).unwrap(),
        }],
        Admins::root_and_self(),
    )
    .await;
    edgeid_testkit::open_to_others(s.dir.path());
    let (ca_pem, ca_handle) = edge_ca(&s).await;
    let socket = s.certd.socket();
    let csr = openssl_csr(s.dir.path(), "p", "p", &["extendedKeyUsage=serverAuth"]);
    let create = |id: &str| {
        json!({ "certId": id, "csr": csr,
                "issuer": { "certId": EDGE_CA, "privateKeyHandle": ca_handle } })
    };
    let path = at("/certificates");
    let (status, body) = call_as(
        principal,
        &socket,
        Method::POST,
        &path,
        create("aziot-edged/module/a:server"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) =
        call_as(principal, &socket, Method::POST, &path, create("device-id")).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "an id it is not granted: {body}"
    );
    let own = at(&format!("/certificates/{}", segment(EDGE_CA)));
    let (status, body) = call_as(principal, &socket, Method::GET, &own, Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (method, path, body) in [
        (
            Method::POST,
            path.clone(),
            create("aziot-edged/module/b:server"),
        ),
        (Method::GET, own.clone(), Value::Null),
        (Method::PUT, own.clone(), json!({ "pem": ca_pem })),
        (Method::DELETE, own.clone(), Value::Null),
    ] {
        let (status, answer) = call_as(stranger, &socket, method.clone(), &path, body).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "stranger {method} {path}: {answer}"
        );
    }
    // CA rights without an issuer come from config only: the principal's
    // CSR asking for them at an id configured without `ca = true` is refused.
    let ca_csr = openssl_csr(
        s.dir.path(),
        "ca2",
        "ca2",
        &[
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "keyUsage=critical,keyCertSign",
        ],
    );
    let body = json!({ "certId": "aziot-edged/ca2", "csr": ca_csr });
    let (status, answer) = call_as(principal, &socket, Method::POST, &path, body).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "no issuance configured: {answer}"
    );
    let leaf_only = "aziot-edged/by-local-ca";
    let body = json!({ "certId": leaf_only, "csr": ca_csr });
    let (status, answer) = call_as(principal, &socket, Method::POST, &path, body).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "configured without ca = true: {answer}"
    );
    let body = json!({ "certId": leaf_only, "csr": csr });
    let (status, chain) = call_as(principal, &socket, Method::POST, &path, body).await;
    assert_eq!(status, StatusCode::CREATED, "{chain}");
    let bundle = s.certd.client().trust_bundle().await.unwrap();
    openssl::verify_chain(&bundle, chain["pem"].as_str().unwrap(), "sslserver").unwrap();
}

/// The reference's `preloaded_certs`: a file served as it is at each read,
/// and IoT Edge's `aziot-edged-trust-bundle = ["aziot-edged-ca", ...]`, the
/// PEMs of those ids one after another; readable by any caller certd
/// admits, as in the reference; a list that names itself is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preloaded_certificates_are_files_and_lists_of_ids() {
    if !edgeid_testkit::is_root() {
        panic!("this test switches uids: run it as root (CI does)");
    }
    let reader = 64_311;
    let tool = edgeid_testkit::require_tool("openssl", "openssl");
    let s = suite_with(
        vec![PrincipalConfig {
            name: "reader".into(),
            uid: reader,
            certs: Grants::parse(&["nothing-of-these"]).unwrap(),
            names: Grants::parse(&["*"]).unwrap(),
        }],
        Admins::root_and_self(),
        |dir, config| {
            let user = dir.join("user-ca.pem");
            let out = Command::new(&tool)
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                ])
                .args([
                    "-nodes",
                    "-days",
                    "30",
                    "-subj",
                    "/CN=user trust",
                    "-keyout",
                ])
                .arg(dir.join("user-ca.key"))
                .arg("-out")
                .arg(&user)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let file = |f: std::path::PathBuf| edgeid_certd::config::PreloadedCert {
                file: Some(f),
                ids: None,
            };
            let ids = |ids: &[&str]| edgeid_certd::config::PreloadedCert {
                file: None,
                ids: Some(ids.iter().map(|i| (*i).to_owned()).collect()),
            };
            config
                .preloaded
                .insert("trust-bundle-user".into(), file(user));
            config
                .preloaded
                .insert("missing".into(), file(dir.join("nowhere.pem")));
            config
                .preloaded
                .insert("unreadable".into(), file(dir.to_owned()));
            config
                .preloaded
                .insert("none-yet".into(), ids(&["missing", "not-issued"]));
            config.preloaded.insert(
                "aziot-edged-trust-bundle".into(),
                ids(&[EDGE_CA, "trust-bundle-user"]),
            );
            config.preloaded.insert("loop".into(), ids(&["loop"]));
        },
    )
    .await;
    edgeid_testkit::open_to_others(s.dir.path());
    let (ca_pem, _) = edge_ca(&s).await;
    let user_pem = std::fs::read_to_string(s.dir.path().join("user-ca.pem")).unwrap();
    let socket = s.certd.socket();
    let (status, body) = call_as(
        reader,
        &socket,
        Method::GET,
        &at("/certificates/aziot-edged-trust-bundle"),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bundle = ders(body["pem"].as_str().unwrap());
    let mut expected = ders(&ca_pem)[..1].to_vec();
    expected.extend(ders(&user_pem));
    assert_eq!(bundle[0], expected[0], "the edge CA first");
    assert_eq!(
        bundle.last(),
        expected.last(),
        "then the user's trust bundle"
    );
    // The file is read at each request: a replaced file is served at once.
    std::fs::write(s.dir.path().join("user-ca.pem"), &ca_pem).unwrap();
    let (status, body) = call_as(
        reader,
        &socket,
        Method::GET,
        &at("/certificates/trust-bundle-user"),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ders(body["pem"].as_str().unwrap())[0], ders(&ca_pem)[0]);
    let (status, body) = call(&socket, Method::GET, &at("/certificates/loop"), Value::Null).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("nest deeper"),
        "{body}"
    );
    // As the reference: a missing file, or a list none of whose members
    // exist yet, is a certificate that does not exist (400, saying so).
    for id in ["missing", "none-yet"] {
        let path = at(&format!("/certificates/{id}"));
        let (status, body) = call(&socket, Method::GET, &path, Value::Null).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{id}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("does not exist"),
            "{body}"
        );
    }
    let path = at("/certificates/unreadable");
    let (status, body) = call(&socket, Method::GET, &path, Value::Null).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("see the daemon's log"),
        "{body}"
    );
}

/// The reference's `[cert_issuance.<id>] subject` / `common_name`: the
/// id's certificates name that subject, whichever issuer signs them and
/// whatever their CSR asks; a common name past 64 characters is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_set_for_an_id_is_issued_whatever_the_csr_asks() {
    let long_cn = "e".repeat(70);
    let s = suite_with(vec![], Admins::root_and_self(), |_, config| {
        let set = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        config
            .issuance
            .get_mut("aziot-edged/by-local-ca")
            .unwrap()
            .subject = set(&[("CN", "configured device"), ("O", "Contoso"), ("C", "US")]);
        config.issuance.get_mut(EDGE_CA).unwrap().subject = set(&[("CN", &long_cn)]);
        config.issuance.insert(
            "aziot-edged/module/m:server".into(),
            IssuanceConfig {
                method: edgeid_certd::api::IssuerKind::LocalCa,
                expiry_days: None,
                ca: false,
                key_id: None,
                subject: set(&[("commonName", "set for m"), ("OU", "modules")]),
                renewal: None,
                est_url: None,
            },
        );
    })
    .await;
    let read = |pem_text: &str| -> Vec<String> {
        let der = ders(pem_text).remove(0);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let mut out = Vec::new();
        for rdn in cert.subject().iter() {
            for a in rdn.iter() {
                out.push(a.as_str().unwrap().to_owned());
            }
        }
        out
    };
    let bundle = s.certd.client().trust_bundle().await.unwrap();

    // By certd's local CA, the CSR asking for another CN.
    let csr = openssl_csr(s.dir.path(), "d", "asked", &["extendedKeyUsage=clientAuth"]);
    let (status, answer) = call(
        &s.certd.socket(),
        Method::POST,
        &at("/certificates"),
        json!({ "certId": "aziot-edged/by-local-ca", "csr": csr }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let chain = answer["pem"].as_str().unwrap();
    openssl::verify_chain(&bundle, chain, "sslclient").unwrap();
    assert_eq!(
        openssl_subject(s.dir.path(), chain),
        "subject=C = US, CN = configured device, O = Contoso",
        "openssl reads the configured subject, in name order"
    );
    assert_eq!(read(chain), ["US", "configured device", "Contoso"]);

    // Self-signed, with a CN cut to 64 characters.
    let (ca_pem, ca_handle) = edge_ca(&s).await;
    assert_eq!(read(&ca_pem), [long_cn[..64].to_owned()]);
    openssl::verify_chain(&ca_pem, &ca_pem, "any").unwrap();

    // By the caller's issuer: still the configured subject, under the issuer's name.
    let issuer = json!({ "certId": EDGE_CA, "privateKeyHandle": ca_handle });
    let (status, answer) = call(
        &s.certd.socket(),
        Method::POST,
        &at("/certificates"),
        json!({ "certId": "aziot-edged/module/m:server", "csr": csr, "issuer": issuer }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let chain = answer["pem"].as_str().unwrap();
    openssl::verify_chain(&ca_pem, chain, "sslclient").unwrap();
    // In name order, as the reference's map: "OU" sorts before "commonName".
    assert_eq!(read(chain), ["modules", "set for m"]);
}

/// As the reference, a CSR's whole subject is issued, not its CN alone;
/// its CN is still checked against a principal's names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csrs_whole_subject_is_issued_and_its_cn_still_checked() {
    if !edgeid_testkit::is_root() {
        panic!("this test switches uids: run it as root (CI does)");
    }
    let principal = 64_321;
    let s = suite(
        vec![PrincipalConfig {
            name: "aziot-edged".into(),
            uid: principal,
            certs: Grants::parse(&["aziot-edged/**"]).unwrap(),
            names: Grants::parse(&["granted"]).unwrap(),
        }],
        Admins::root_and_self(),
    )
    .await;
    edgeid_testkit::open_to_others(s.dir.path());
    let csr_for = |subj: &str, name: &str| {
        openssl_csr_for(s.dir.path(), name, subj, &["extendedKeyUsage=clientAuth"])
    };
    let post = |uid: u32, body: Value| {
        let socket = s.certd.socket();
        async move { call_as(uid, &socket, Method::POST, &at("/certificates"), body).await }
    };
    let csr = csr_for("/CN=granted/O=Maker/OU=Line 3", "whole");
    let (status, answer) = post(
        principal,
        json!({ "certId": "aziot-edged/by-local-ca", "csr": csr }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(
        openssl_subject(s.dir.path(), answer["pem"].as_str().unwrap()),
        "subject=CN = granted, O = Maker, OU = Line 3"
    );
    // Another CN beside other attributes is still the principal's asking.
    let csr = csr_for("/CN=not-granted/O=Maker", "other");
    let (status, answer) = post(
        principal,
        json!({ "certId": "aziot-edged/by-local-ca", "csr": csr }),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("not-granted"),
        "{answer}"
    );
}
