//! certd through its API, with keyd beside it; every certificate checked by
//! independent parties: `openssl verify`, x509-parser, a rustls handshake.

use std::net::IpAddr;
use std::sync::Arc;

use edgeid_certd::api::*;
use edgeid_certd::signer::{KeydKey, TlsKey};
use edgeid_common::authz::{Admins, Grants};
use edgeid_testkit::certd::request_for_key as request;
use edgeid_testkit::{openssl, CertdFixture, KeydFixture};
use http::StatusCode;
use x509_parser::prelude::*;

struct Suite {
    _dir: tempfile::TempDir,
    keyd: KeydFixture,
    certd: CertdFixture,
}

async fn suite() -> Suite {
    let dir = edgeid_testkit::temp_dir();
    let keyd = KeydFixture::start_in(dir.path()).await;
    let certd = CertdFixture::start_in(dir.path(), &keyd).await;
    Suite {
        _dir: dir,
        keyd,
        certd,
    }
}

fn leaf_der(pem_text: &str) -> Vec<u8> {
    ::pem::parse_many(pem_text).unwrap()[0].contents().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_ca_issues_certificates_openssl_verifies() {
    let s = suite().await;
    let certd = s.certd.client();
    let bundle = certd.trust_bundle().await.unwrap();

    let mut client = request("module/sensor", IssuerKind::LocalCa, Profile::Client);
    client.san = Some(SubjectAltNames {
        dns: vec!["sensor.local".into()],
        ip: vec!["10.0.0.7".parse::<IpAddr>().unwrap()],
        uri: vec!["spiffe://edge/module/sensor".into()],
    });
    let client_pem = certd.create(&client).await.unwrap();
    openssl::verify_chain(&bundle, &client_pem, "sslclient").unwrap();
    assert!(
        openssl::verify_chain(&bundle, &client_pem, "sslserver").is_err(),
        "clientAuth only"
    );

    let mut server = request("web/server", IssuerKind::LocalCa, Profile::Server);
    server.key_spec = Some(edgeid_keyd::api::KeyPairSpec::Rsa2048);
    server.san = Some(SubjectAltNames {
        dns: vec!["device.local".into()],
        ..Default::default()
    });
    let server_pem = certd.create(&server).await.unwrap();
    openssl::verify_chain(&bundle, &server_pem, "sslserver").unwrap();

    // Extensions, read by x509-parser.
    let ca_der = leaf_der(&bundle);
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    let bc = ca.basic_constraints().unwrap().unwrap().value;
    assert!(
        bc.ca && bc.path_len_constraint == Some(1),
        "root: CA, pathLen 1"
    );
    let ca_ski = match ca
        .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
        .unwrap()
        .unwrap()
        .parsed_extension()
    {
        ParsedExtension::SubjectKeyIdentifier(k) => k.0.to_vec(),
        _ => panic!("no SKI on the CA"),
    };
    let der = leaf_der(&client_pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert!(!cert.is_ca());
    assert!(cert.key_usage().unwrap().unwrap().value.digital_signature());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    let names: Vec<String> = san.general_names.iter().map(|n| n.to_string()).collect();
    assert!(
        names.iter().any(|n| n.contains("sensor.local")),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.contains("spiffe://edge/module/sensor")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.contains("0a:00:00:07")), "{names:?}");
    let aki = cert
        .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
        .unwrap()
        .unwrap();
    match aki.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(a) => {
            assert_eq!(a.key_identifier.as_ref().unwrap().0, ca_ski.as_slice())
        }
        _ => panic!("no AKI"),
    }
    assert!(cert
        .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
        .unwrap()
        .is_some());
    // The leaf certifies the key in keyd.
    let keyd = s.keyd.client();
    let handle = keyd.key_pair("module/sensor").await.unwrap();
    let public = ::pem::parse(keyd.public_key(&handle).await.unwrap().pem).unwrap();
    assert_eq!(cert.public_key().raw, public.contents());

    // Serials: random, positive, unique.
    let mut serials = std::collections::HashSet::new();
    for i in 0..5 {
        let pem_text = certd
            .create(&request(
                &format!("s/{i}"),
                IssuerKind::LocalCa,
                Profile::Client,
            ))
            .await
            .unwrap();
        let der = leaf_der(&pem_text);
        let (_, c) = X509Certificate::from_der(&der).unwrap();
        assert!(c.raw_serial().len() >= 16);
        assert!(serials.insert(c.raw_serial().to_vec()));
    }

    // From a CSR made elsewhere (rcgen, its own key): the certificate is for that key.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["outside.local".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "outside");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let mut from_csr = request("outside", IssuerKind::LocalCa, Profile::Server);
    from_csr.key_id = None;
    from_csr.csr = Some(csr);
    let pem_text = certd.create(&from_csr).await.unwrap();
    openssl::verify_chain(&bundle, &pem_text, "sslserver").unwrap();
    let der = leaf_der(&pem_text);
    let (_, c) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(
        c.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );
    assert!(c.subject().to_string().contains("outside"));

    // Transient, client-server: issued for the CSR, valid for both TLS
    // purposes, and neither stored nor listed (so never renewed).
    let mut transient = from_csr.clone();
    transient.id = "workload/m/spiffe".into();
    transient.profile = Profile::ClientServer;
    transient.transient = true;
    let pem_text = certd.create(&transient).await.unwrap();
    for purpose in ["sslserver", "sslclient"] {
        openssl::verify_chain(&bundle, &pem_text, purpose).unwrap();
    }
    assert_eq!(
        certd.get("workload/m/spiffe").await.unwrap_err().status(),
        Some(StatusCode::NOT_FOUND)
    );
    assert!(!certd.list().await.unwrap().contains(&transient.id));
    // Transient is for CSRs only.
    let mut held = request("held", IssuerKind::LocalCa, Profile::Client);
    held.transient = true;
    assert_eq!(
        certd.create(&held).await.unwrap_err().status(),
        Some(StatusCode::BAD_REQUEST)
    );

    // Self-signed, and get / list / delete.
    let pem_text = certd
        .create(&request("self", IssuerKind::SelfSigned, Profile::Server))
        .await
        .unwrap();
    openssl::verify_chain(&pem_text, &pem_text, "sslserver").unwrap();
    let info = certd.get("module/sensor").await.unwrap();
    assert_eq!(info.pem, client_pem);
    assert_eq!(info.key_id.as_deref(), Some("module/sensor"));
    assert_eq!(info.renewal.unwrap().threshold_percent, 80);
    let ids = certd.list().await.unwrap();
    assert!(ids.contains(&"device-ca".to_string()) && ids.contains(&"self".to_string()));
    certd.delete("self").await.unwrap();
    assert_eq!(
        certd.get("self").await.unwrap_err().status(),
        Some(StatusCode::NOT_FOUND)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_with_an_issued_server_certificate() {
    let s = suite().await;
    let certd = s.certd.client();
    let mut req = request("web/tls", IssuerKind::LocalCa, Profile::Server);
    req.san = Some(SubjectAltNames {
        dns: vec!["device.local".into()],
        ..Default::default()
    });
    let chain_pem = certd.create(&req).await.unwrap();
    let bundle = certd.trust_bundle().await.unwrap();

    // The server's key stays in keyd: rustls signs the handshake through it.
    let key = Arc::new(KeydKey::load(&s.keyd.client(), "web/tls").await.unwrap());
    let chain: Vec<rustls::pki_types::CertificateDer<'static>> = ::pem::parse_many(&chain_pem)
        .unwrap()
        .into_iter()
        .map(|p| p.into_contents().into())
        .collect();
    let certified = Arc::new(rustls::sign::CertifiedKey::new(
        chain,
        Arc::new(TlsKey(key)),
    ));
    let server_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(certified)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let _ = tls.write_all(b"hello from the device").await;
                let _ = tls.shutdown().await;
            }
        }
    });

    let connect = |roots_pem: String| async move {
        use tokio::io::AsyncReadExt;
        let mut roots = rustls::RootCertStore::empty();
        for p in ::pem::parse_many(roots_pem).unwrap() {
            roots.add(p.into_contents().into()).unwrap();
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("device.local").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await?;
        Ok::<_, std::io::Error>(got)
    };
    assert_eq!(connect(bundle).await.unwrap(), b"hello from the device");
    // A client trusting an unrelated CA refuses the server.
    let other = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let unrelated = p.self_signed(&other).unwrap().pem();
    let err = connect(unrelated).await.unwrap_err();
    assert!(
        err.to_string().contains("UnknownIssuer")
            || err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
}

#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx() {
    let s = suite().await;
    let certd = s.certd.client();
    let status = |r: Result<String, edgeid_common::client::ClientError>| {
        let e = r.unwrap_err();
        (e.status(), e.to_string())
    };
    let with_csr = |csr: &str| {
        let mut r = request("bad", IssuerKind::LocalCa, Profile::Client);
        r.key_id = None;
        r.csr = Some(csr.into());
        r
    };
    // Garbage PEM, a CSR whose signature does not verify, one asking for CA:TRUE.
    let (st, msg) = status(
        certd
            .create(&with_csr("-----BEGIN CERTIFICATE REQUEST-----\nnope\n"))
            .await,
    );
    assert_eq!(st, Some(StatusCode::BAD_REQUEST), "{msg}");
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["x.local".into()]).unwrap();
    let csr = params.serialize_request(&key).unwrap();
    let mut der = csr.der().to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x55;
    let tampered = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der));
    let (st, msg) = status(certd.create(&with_csr(&tampered)).await);
    assert_eq!(st, Some(StatusCode::BAD_REQUEST));
    assert!(msg.contains("signature"), "{msg}");
    let mut ca_params = rcgen::CertificateParams::new(vec!["x.local".into()]).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_csr = ca_params.serialize_request(&key).unwrap().pem().unwrap();
    let (st, msg) = status(certd.create(&with_csr(&ca_csr)).await);
    assert_eq!(st, Some(StatusCode::BAD_REQUEST));
    assert!(msg.contains("CA"), "{msg}");

    // Unknown issuer, ids with path separators, an oversize body: raw requests.
    let raw = |body: String| {
        let t = certd.transport().clone();
        async move {
            t.raw(http::Method::POST, "/v1/certificates", body.into())
                .await
                .unwrap()
        }
    };
    let (st, body) =
        raw(r#"{"id":"x","issuer":"acme","profile":"client","key_id":"x"}"#.into()).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body:?}");
    for id in ["../x", "a/../b", "/etc/passwd", "a//b", ""] {
        let (st, _) = raw(
            serde_json::json!({"id": id, "issuer": "local-ca", "profile": "client", "key_id": "k"})
                .to_string(),
        )
        .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{id}");
    }
    let (st, _) = raw(format!(
        r#"{{"id":"x","issuer":"local-ca","profile":"client","csr":"{}"}}"#,
        "A".repeat(2 << 20)
    ))
    .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    let (st, _) = raw("{not json".into()).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // Neither or both of csr and key_id; EST without [est]; import garbage and a broken chain.
    let mut neither = request("n", IssuerKind::LocalCa, Profile::Client);
    neither.key_id = None;
    assert_eq!(
        status(certd.create(&neither).await).0,
        Some(StatusCode::BAD_REQUEST)
    );
    assert_eq!(
        status(
            certd
                .create(&request("e", IssuerKind::Est, Profile::Client))
                .await
        )
        .0,
        Some(StatusCode::BAD_REQUEST)
    );
    let e = certd.import("imp", "garbage", None).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::BAD_REQUEST));
    let a = certd
        .create(&request("a", IssuerKind::SelfSigned, Profile::Client))
        .await
        .unwrap();
    let b = certd
        .create(&request("b", IssuerKind::SelfSigned, Profile::Client))
        .await
        .unwrap();
    let e = certd
        .import("imp", &format!("{a}{b}"), None)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::BAD_REQUEST), "{e}");
    // Importing a certificate for the wrong key.
    let e = certd.import("imp", &a, Some("b")).await.unwrap_err();
    assert!(e.to_string().contains("does not certify"), "{e}");
    certd.import("imp", &a, Some("a")).await.unwrap();
    assert_eq!(certd.get("imp").await.unwrap().renewal, None);
    // No issuer, and no [issuance] saying who issues the id; a CN among
    // the further subject attributes; an attribute certd does not set; a
    // renewal policy it cannot follow.
    let mut unnamed = request("unnamed", IssuerKind::LocalCa, Profile::Client);
    unnamed.issuer = None;
    let (st, msg) = status(certd.create(&unnamed).await);
    assert_eq!(st, Some(StatusCode::BAD_REQUEST));
    assert!(msg.contains("[issuance.\"unnamed\"]"), "{msg}");
    for (attribute, wanted) in [
        ("CN", "give it as subject_cn"),
        ("emailAddress", "not one certd sets"),
    ] {
        let mut r = request("attrs", IssuerKind::LocalCa, Profile::Client);
        r.subject = [(attribute.to_owned(), "x".to_owned())].into();
        let (st, msg) = status(certd.create(&r).await);
        assert_eq!(st, Some(StatusCode::BAD_REQUEST), "{attribute}");
        assert!(msg.contains(wanted), "{attribute}: {msg}");
    }
    let mut r = request("policy", IssuerKind::LocalCa, Profile::Client);
    r.renewal = Some(RenewalPolicy {
        retry_percent: Some(5),
        retry_secs: Some(60),
        ..RenewalPolicy::default()
    });
    let (st, msg) = status(certd.create(&r).await);
    assert_eq!(st, Some(StatusCode::BAD_REQUEST));
    assert!(msg.contains("not both"), "{msg}");
    // Periods past any lifetime would overflow the renewal schedule.
    for policy in [
        RenewalPolicy {
            before_expiry_secs: Some(u64::MAX),
            ..RenewalPolicy::default()
        },
        RenewalPolicy {
            retry_secs: Some(u64::MAX),
            ..RenewalPolicy::default()
        },
    ] {
        let mut r = request("policy", IssuerKind::LocalCa, Profile::Client);
        r.renewal = Some(policy);
        let (st, msg) = status(certd.create(&r).await);
        assert_eq!(st, Some(StatusCode::BAD_REQUEST), "{policy:?}");
        assert!(msg.contains("100 years"), "{msg}");
    }
    // certd still answers.
    certd.health().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principals_get_their_certificate_ids_and_names_only() {
    let dir = edgeid_testkit::temp_dir();
    let keyd = KeydFixture::start_in(dir.path()).await;
    let mut config = CertdFixture::config_in(dir.path(), &keyd.socket());
    config.principals = vec![edgeid_certd::config::PrincipalConfig {
        name: "workloadd".into(),
        uid: edgeid_common::current_uid(),
        certs: Grants::parse(&["module/*"]).unwrap(),
        names: Grants::parse(&["module/*", "*.module.local"]).unwrap(),
    }];
    // This process is not an administrator here: it is the principal.
    let certd = CertdFixture::configured(config, Admins::only(vec![])).await;
    let client = certd.client();
    let mut ok = request("module/a", IssuerKind::LocalCa, Profile::Server);
    ok.san = Some(SubjectAltNames {
        dns: vec!["a.module.local".into()],
        ..Default::default()
    });
    client.create(&ok).await.unwrap();
    let mut bad_name = ok.clone();
    bad_name.san = Some(SubjectAltNames {
        dns: vec!["bank.example.com".into()],
        ..Default::default()
    });
    let e = client.create(&bad_name).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::FORBIDDEN), "{e}");
    let e = client
        .create(&request("device-id", IssuerKind::LocalCa, Profile::Client))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::FORBIDDEN));
    let mut ca_key = ok.clone();
    ca_key.key_id = Some("device-ca".into());
    assert_eq!(
        client.create(&ca_key).await.unwrap_err().status(),
        Some(StatusCode::FORBIDDEN)
    );
    let mut ca = ok.clone();
    ca.profile = Profile::Ca;
    assert_eq!(
        client.create(&ca).await.unwrap_err().status(),
        Some(StatusCode::FORBIDDEN)
    );
    assert_eq!(client.list().await.unwrap(), vec!["module/a".to_string()]);
    assert_eq!(
        client.get("device-ca").await.unwrap_err().status(),
        Some(StatusCode::FORBIDDEN)
    );
    // Import and delete are granted by id too; the CA is for administrators.
    let own = client.get("module/a").await.unwrap().pem;
    let e = client.import("device-id", &own, None).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::FORBIDDEN));
    let e = client.delete("device-ca").await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::FORBIDDEN));
    // Renewal on request too: its own certificate, not another's.
    let e = client.renew("device-ca").await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::FORBIDDEN));
    let renewed = client.renew("module/a").await.unwrap();
    assert_ne!(renewed.pem, own);
    let (st, _) = client
        .transport()
        .raw(
            http::Method::PUT,
            "/v1/certificates/module/a",
            "{\"pem\":".into(),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::BAD_REQUEST, "malformed JSON");
    let e = client.delete("module/none").await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
    // The trust bundle is for everyone.
    assert!(client
        .trust_bundle()
        .await
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_on_request_gives_a_new_certificate_and_key() {
    let s = suite().await;
    let client = s.certd.client();
    let bundle = client.trust_bundle().await.unwrap();
    let first = client
        .create(&request("svc", IssuerKind::LocalCa, Profile::Server))
        .await
        .unwrap();
    let before = client.get("svc").await.unwrap();
    let renewed = client.renew("svc").await.unwrap();
    assert_ne!(
        leaf_der(&renewed.pem),
        leaf_der(&first),
        "a new certificate"
    );
    assert_ne!(
        renewed.key_id, before.key_id,
        "with a new key (rekey is the default)"
    );
    openssl::verify_chain(&bundle, &renewed.pem, "sslserver").unwrap();
    assert_eq!(
        client.get("svc").await.unwrap().pem,
        renewed.pem,
        "and it is the stored one"
    );
    // Only what certd issued is renewed; unknown ids are 404.
    let chain = client.get("svc").await.unwrap().pem;
    client.import("imported", &chain, None).await.unwrap();
    let err = client.renew("imported").await.unwrap_err();
    assert_eq!(err.status(), Some(http::StatusCode::BAD_REQUEST), "{err}");
    let err = client.renew("ghost").await.unwrap_err();
    assert_eq!(err.status(), Some(http::StatusCode::NOT_FOUND), "{err}");
}
