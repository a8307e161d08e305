//! CAs an administrator gives certd in files, as a device configured for
//! the reference has them: IoT Edge's own Edge CA (`[edge_ca] cert, pk`,
//! which `iotedge config apply` turns into a preloaded certificate and a
//! preloaded key named `aziot-edged-ca`) issuing module certificates as
//! aziot-edged asks for them, and the reference's `[cert_issuance.local_ca]`
//! (certd's `[ca] provided = true`) issuing by certificate id. The CAs and
//! CSRs are openssl's; every chain is checked by `openssl verify` against
//! the administrator's file.

use std::path::Path;

use edgeid_certd::api::IssuerKind;
use edgeid_certd::config::{IssuanceConfig, PreloadedCert};
use edgeid_certd::CertdConfig;
use edgeid_common::authz::Admins;
use edgeid_keyd::config::PreloadedKey;
use edgeid_testkit::aziot::call;
use edgeid_testkit::{openssl, CertdFixture, KeydFixture};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use x509_parser::prelude::*;

const V: &str = "2020-09-01";

/// An openssl key and CSR for `cn`, with `-addext` extensions.
fn csr(dir: &Path, cn: &str, addext: &[&str]) -> String {
    let key = dir.join(format!("{cn}.key"));
    let csr = dir.join(format!("{cn}.csr"));
    let mut args = vec!["req", "-new", "-newkey", "ec", "-pkeyopt"];
    args.extend(["ec_paramgen_curve:prime256v1", "-nodes", "-keyout"]);
    let subj = format!("/CN={cn}");
    args.extend([key.to_str().unwrap(), "-subj", &subj, "-out"]);
    args.push(csr.to_str().unwrap());
    for ext in addext {
        args.extend(["-addext", ext]);
    }
    openssl::run(&args);
    std::fs::read_to_string(csr).unwrap()
}

fn preloaded_file(file: &Path) -> PreloadedCert {
    PreloadedCert {
        file: Some(file.to_owned()),
        ids: None,
    }
}

/// keyd holding `keys` (id, file) as preloaded keys, and certd configured by `edit`.
async fn daemons(
    dir: &Path,
    keys: &[(&str, &Path)],
    edit: impl FnOnce(&mut CertdConfig),
) -> (KeydFixture, CertdFixture) {
    let mut config = KeydFixture::config_in(dir);
    config.preloaded_keys = keys
        .iter()
        .map(|(id, file)| PreloadedKey {
            id: (*id).to_owned(),
            file: file.to_path_buf(),
            symmetric: None,
        })
        .collect();
    let keyd = KeydFixture::configured(config, Admins::root_and_self()).await;
    let mut config = CertdFixture::config_in(dir, &keyd.socket());
    edit(&mut config);
    let certd = CertdFixture::configured(config, Admins::root_and_self()).await;
    (keyd, certd)
}

async fn post(certd: &CertdFixture, body: Value) -> (StatusCode, Value) {
    let path = format!("/certificates?api-version={V}");
    call(&certd.socket(), Method::POST, &path, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iot_edges_own_edge_ca_in_files_issues_the_module_certificates_aziot_edged_asks_for() {
    let dir = edgeid_testkit::temp_dir();
    let (ca_key, ca_cert) = openssl::new_p256_ca(dir.path(), "user-edge-ca", "user edge ca");
    let (keyd, certd) = daemons(dir.path(), &[("aziot-edged-ca", &ca_key)], |c| {
        c.preloaded
            .insert("aziot-edged-ca".into(), preloaded_file(&ca_cert));
    })
    .await;
    // aziot-edged loads its CA's key by id (keyd's aziot API), then names
    // the CA and that handle as the issuer of each module certificate.
    let (status, key) = call(
        &keyd.socket(),
        Method::GET,
        "/keypair/aziot-edged-ca?api-version=2021-05-01",
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{key}");
    let issuer = json!({ "certId": "aziot-edged-ca", "privateKeyHandle": key["keyHandle"] });
    let server = csr(
        dir.path(),
        "edgeHub",
        &["extendedKeyUsage=serverAuth", "subjectAltName=DNS:edgehub"],
    );
    let (status, answer) = post(
        &certd,
        json!({ "certId": "aziot-edged/module/$edgeHub:1:server", "csr": server, "issuer": issuer }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let chain = answer["pem"].as_str().unwrap();
    let ca_pem = std::fs::read_to_string(&ca_cert).unwrap();
    openssl::verify_chain(&ca_pem, chain, "sslserver").unwrap();
    let ders: Vec<_> = ::pem::parse_many(chain).unwrap();
    assert_eq!(ders.len(), 2, "the leaf, then the preloaded CA");
    assert_eq!(
        ders[1].contents(),
        ::pem::parse(&ca_pem).unwrap().contents()
    );

    // A handle to another key than the preloaded certificate's is refused.
    let (_, other) = call(
        &keyd.socket(),
        Method::POST,
        "/keypair?api-version=2021-05-01",
        json!({ "keyId": "not-the-ca", "preferredAlgorithms": "ec-p256" }),
    )
    .await;
    let wrong = json!({ "certId": "aziot-edged-ca", "privateKeyHandle": other["keyHandle"] });
    let (status, answer) = post(
        &certd,
        json!({ "certId": "m2", "csr": server, "issuer": wrong }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("not the key of certificate 'aziot-edged-ca'"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_ca_the_administrator_gives_issues_and_certd_never_makes_its_own() {
    let dir = edgeid_testkit::temp_dir();
    let (ca_key, ca_cert) =
        openssl::new_p256_ca(dir.path(), "factory-local-ca", "factory local ca");
    let (_keyd, certd) = daemons(dir.path(), &[("local-ca", &ca_key)], |c| {
        c.preloaded
            .insert("local-ca".into(), preloaded_file(&ca_cert));
        c.ca.cert_id = "local-ca".into();
        c.ca.key_id = "local-ca".into();
        c.ca.provided = true;
        for id in ["device-id", "no-key"] {
            c.issuance.insert(
                id.into(),
                IssuanceConfig {
                    method: IssuerKind::LocalCa,
                    expiry_days: Some(30),
                    ca: false,
                    key_id: None,
                    subject: None,
                    renewal: None,
                    est_url: None,
                },
            );
        }
    })
    .await;
    let device = csr(dir.path(), "device-1", &["extendedKeyUsage=clientAuth"]);
    let (status, answer) = post(&certd, json!({ "certId": "device-id", "csr": device })).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let chain = answer["pem"].as_str().unwrap();
    let ca_pem = std::fs::read_to_string(&ca_cert).unwrap();
    openssl::verify_chain(&ca_pem, chain, "sslclient").unwrap();
    let leaf_der = ::pem::parse(chain).unwrap().into_contents();
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    assert!(leaf.issuer().to_string().contains("CN=factory local ca"));
    assert!(leaf.validity().time_to_expiration().unwrap().whole_days() <= 30);

    // The trust bundle is the administrator's CA, not one certd made.
    let bundle = certd.client().trust_bundle().await.unwrap();
    assert_eq!(
        ::pem::parse(&bundle).unwrap().contents(),
        ::pem::parse(&ca_pem).unwrap().contents()
    );
    let (status, got) = call(
        &certd.socket(),
        Method::GET,
        &format!("/certificates/local-ca?api-version={V}"),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["pem"].as_str().unwrap(), ca_pem);

    // The CA's file replaced by a certificate of another key: nothing is
    // issued (and certd makes no root of its own in its place).
    let (_, stranger) = openssl::new_p256_ca(dir.path(), "stranger", "stranger");
    std::fs::copy(&stranger, &ca_cert).unwrap();
    let other = csr(dir.path(), "device-2", &["extendedKeyUsage=clientAuth"]);
    let (status, answer) = post(&certd, json!({ "certId": "no-key", "csr": other })).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("the local CA (certificate 'local-ca', key 'local-ca'")
            && message.contains("certifies another key"),
        "{answer}"
    );
    // Gone: said so.
    std::fs::remove_file(&ca_cert).unwrap();
    let (status, answer) = post(&certd, json!({ "certId": "no-key", "csr": other })).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{answer}"
    );
}
