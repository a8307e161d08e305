//! EST enrollment against a real RFC 7030 server (edgeid_testkit::est_server):
//! TLS client auth with a bootstrap certificate whose key stays in keyd, basic
//! auth, re-enrollment with the previously issued identity on renewal.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgeid_certd::api::*;
use edgeid_certd::config::EstConfig;
use edgeid_common::authz::Admins;
use edgeid_testkit::est_server::EstServer;
use edgeid_testkit::{openssl, CertdFixture, KeydFixture};
use http::StatusCode;

fn est_request(id: &str, renewal: Option<RenewalPolicy>) -> CreateCertificateRequest {
    CreateCertificateRequest {
        id: id.into(),
        issuer: Some(IssuerKind::Est),
        profile: Profile::Client,
        csr: None,
        key_id: Some(id.into()),
        key_spec: None,
        subject_cn: Some(format!("{id}.edge")),
        san: None,
        subject: Default::default(),
        lifetime_secs: None,
        renewal,
        transient: false,
    }
}

/// `[est]` for `est` with basic auth as `device-7` and `password`, its
/// trust anchors and 0600 password file (`est.password`) written in `dir`.
fn basic_auth(dir: &std::path::Path, est: &EstServer, password: &str) -> EstConfig {
    let anchors = dir.join("est-tls-ca.pem");
    std::fs::write(&anchors, &est.tls_ca_pem).unwrap();
    let password_file = dir.join("est.password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    EstConfig {
        url: est.url.clone(),
        trust_anchors: vec![anchors],
        username: Some("device-7".into()),
        password_file: Some(password_file),
        bootstrap_cert: None,
        bootstrap_key: None,
        identity_cert: None,
        identity_key: None,
        identity_renewal: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolls_with_a_bootstrap_certificate_and_reenrolls_on_renewal() {
    let dir = edgeid_testkit::temp_dir();
    let keyd = KeydFixture::start_in(dir.path()).await;
    let mut certd = CertdFixture::start_in(dir.path(), &keyd).await;
    // The factory identity: a certificate from the device CA for a key in keyd.
    let mut bootstrap = est_request("est-bootstrap", None);
    bootstrap.issuer = Some(IssuerKind::LocalCa);
    certd.client().create(&bootstrap).await.unwrap();
    let device_ca = certd.client().trust_bundle().await.unwrap();

    let est = EstServer::start("nobody", "unused", Some(&device_ca), Duration::from_secs(4)).await;
    let anchors = dir.path().join("est-tls-ca.pem");
    std::fs::write(&anchors, &est.tls_ca_pem).unwrap();
    certd.config.est = Some(EstConfig {
        url: est.url.clone(),
        trust_anchors: vec![anchors],
        username: None,
        password_file: None,
        bootstrap_cert: Some("est-bootstrap".into()),
        bootstrap_key: None,
        identity_cert: None,
        identity_key: None,
        identity_renewal: None,
    });
    certd.restart().await;
    let client = certd.client();

    let policy = RenewalPolicy {
        threshold_percent: 50,
        rekey: true,
        ..RenewalPolicy::default()
    };
    let chain = client
        .create(&est_request("device-id", Some(policy)))
        .await
        .unwrap();
    openssl::verify_chain(&est.ca_pem, &chain, "sslclient").unwrap();
    assert_eq!(est.enrolled.load(Ordering::SeqCst), 1);
    // The trust bundle now carries the EST CA beside the device CA.
    let bundle = client.trust_bundle().await.unwrap();
    openssl::verify_chain(&bundle, &chain, "sslclient").unwrap();

    // Renewal re-enrolls, authenticated by the certificate being renewed.
    let deadline = Instant::now() + Duration::from_secs(8);
    while est.reenrolled.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no re-enrollment");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let info = client.get("device-id").await.unwrap();
        if info.pem != chain {
            openssl::verify_chain(&est.ca_pem, &info.pem, "sslclient").unwrap();
            assert_eq!(info.key_id.as_deref(), Some("device-id.r1"));
            break;
        }
        assert!(Instant::now() < deadline, "renewed certificate not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolls_with_basic_auth_and_names_a_refusal() {
    let dir = edgeid_testkit::temp_dir();
    let keyd = KeydFixture::start_in(dir.path()).await;
    let est = EstServer::start("device-7", "s3cret", None, Duration::from_secs(3600)).await;
    let mut config = CertdFixture::config_in(dir.path(), &keyd.socket());
    config.est = Some(basic_auth(dir.path(), &est, "wrong"));
    let password = dir.path().join("est.password");
    let set_password = |p: &str| std::fs::write(&password, format!("{p}\n")).unwrap();
    let mut certd = CertdFixture::configured(config, Admins::root_and_self()).await;
    let err = certd
        .client()
        .create(&est_request("device-id", None))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_GATEWAY), "{err}");
    assert!(err.to_string().contains("401"), "{err}");
    assert_eq!(
        certd.client().get("device-id").await.unwrap_err().status(),
        Some(StatusCode::NOT_FOUND)
    );

    set_password("s3cret");
    certd.restart().await;
    let chain = certd
        .client()
        .create(&est_request("device-id", None))
        .await
        .unwrap();
    openssl::verify_chain(&est.ca_pem, &chain, "sslclient").unwrap();

    // A server whose TLS certificate the trust anchors do not cover is refused.
    let other = EstServer::start("device-7", "s3cret", None, Duration::from_secs(3600)).await;
    certd.config.est.as_mut().unwrap().url = other.url.clone();
    certd.restart().await;
    let err = certd
        .client()
        .create(&est_request("other", None))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE), "{err}");
    assert!(err.to_string().contains("TLS"), "{err}");
}

/// The reference's EST identity (`identity_cert`, `identity_pk`) beside a
/// preloaded bootstrap certificate (`bootstrap_identity_cert`, `_pk`, files
/// made by openssl, as a factory leaves them): the first enrollment enrolls
/// the identity with the bootstrap certificate, and every enrollment after
/// authenticates with the identity, which certd keeps and renews.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_est_identity_is_enrolled_once_with_the_bootstrap_then_authenticates_enrollments() {
    let dir = edgeid_testkit::temp_dir();
    // The factory: a bootstrap CA, and a bootstrap certificate and key in files.
    let bootstrap_ca = openssl::new_p256_ca(dir.path(), "bootstrap-ca", "factory bootstrap CA");
    let (bootstrap_key, bootstrap_cert) =
        openssl::new_client_cert(dir.path(), "bootstrap", "factory bootstrap", &bootstrap_ca);
    let bootstrap_ca_pem = std::fs::read_to_string(&bootstrap_ca.1).unwrap();
    let est = EstServer::start(
        "nobody",
        "unused",
        Some(&bootstrap_ca_pem),
        Duration::from_secs(3600),
    )
    .await;
    let anchors = dir.path().join("est-tls-ca.pem");
    std::fs::write(&anchors, &est.tls_ca_pem).unwrap();

    let mut keyd_config = KeydFixture::config_in(dir.path());
    keyd_config.preloaded_keys = vec![edgeid_keyd::config::PreloadedKey {
        id: "est-bootstrap".into(),
        file: bootstrap_key,
        symmetric: None,
    }];
    let keyd = KeydFixture::configured(keyd_config, Admins::root_and_self()).await;
    let mut config = CertdFixture::config_in(dir.path(), &keyd.socket());
    config.preloaded.insert(
        "est-bootstrap".into(),
        edgeid_certd::config::PreloadedCert {
            file: Some(bootstrap_cert),
            ids: None,
        },
    );
    config.est = Some(EstConfig {
        url: est.url.clone(),
        trust_anchors: vec![anchors],
        username: None,
        password_file: None,
        bootstrap_cert: Some("est-bootstrap".into()),
        bootstrap_key: Some("est-bootstrap".into()),
        identity_cert: Some("est-id".into()),
        identity_key: Some("est-id".into()),
        identity_renewal: Some(RenewalPolicy {
            threshold_percent: 70,
            rekey: true,
            ..RenewalPolicy::default()
        }),
    });
    let mut certd = CertdFixture::configured(config, Admins::root_and_self()).await;
    let client = certd.client();
    let chain = client
        .create(&est_request("device-id", None))
        .await
        .unwrap();
    openssl::verify_chain(&est.ca_pem, &chain, "sslclient").unwrap();
    let identity = client.get("est-id").await.unwrap();
    openssl::verify_chain(&est.ca_pem, &identity.pem, "sslclient").unwrap();
    assert!(identity.renewal.is_some(), "certd renews the identity");
    let clients = est.clients.lock().unwrap().clone();
    assert_eq!(
        clients,
        ["factory bootstrap", "device-id.edge"],
        "the identity (with the asking certificate's subject) by the bootstrap, then the certificate by the identity"
    );
    // Later enrollments, after a restart too, go by the identity alone.
    certd.restart().await;
    let chain = certd
        .client()
        .create(&est_request("edge-ca", None))
        .await
        .unwrap();
    openssl::verify_chain(&est.ca_pem, &chain, "sslclient").unwrap();
    let clients = est.clients.lock().unwrap().clone();
    assert_eq!(clients.len(), 3);
    assert_eq!(clients[2], "device-id.edge", "{clients:?}");
    assert_eq!(
        certd.client().get("est-id").await.unwrap().pem,
        identity.pem,
        "enrolled once"
    );

    // Renewed by its own policy (the reference's identity_auto_renew):
    // re-enrolled by the identity itself, for a new key.
    assert_eq!(identity.renewal.unwrap().threshold_percent, 70);
    let renewed = certd.client().renew("est-id").await.unwrap();
    assert_eq!(renewed.key_id.as_deref(), Some("est-id.r1"));
    openssl::verify_chain(&est.ca_pem, &renewed.pem, "sslclient").unwrap();
    let keys = keyd.client();
    let handle = keys.key_pair("est-id.r1").await.unwrap();
    let public = ::pem::parse(keys.public_key(&handle).await.unwrap().pem).unwrap();
    let leaf = ::pem::parse(&renewed.pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.contents()).unwrap();
    assert_eq!(public.contents(), cert.public_key().raw, "the new key");
    let clients = est.clients.lock().unwrap().clone();
    assert_eq!(clients.len(), 4);
    assert_eq!(
        clients[3], "device-id.edge",
        "re-enrolled by the identity: {clients:?}"
    );
    // The old key is gone; enrollments now go by the new identity.
    let deadline = Instant::now() + Duration::from_secs(5);
    while keys.key_pair("est-id").await.is_ok() {
        assert!(Instant::now() < deadline, "the old key stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let chain = certd
        .client()
        .create(&est_request("module-ca", None))
        .await
        .unwrap();
    openssl::verify_chain(&est.ca_pem, &chain, "sslclient").unwrap();
    assert_eq!(est.clients.lock().unwrap().len(), 5);
}

/// A preloaded EST identity that has expired is the administrator's to
/// replace: certd says so (503), and enrolls no new one that the file would
/// hide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_preloaded_est_identity_is_said_not_hidden() {
    let dir = edgeid_testkit::temp_dir();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["est-id".to_owned()]).unwrap();
    params.not_before = time::OffsetDateTime::now_utc() - Duration::from_secs(7200);
    params.not_after = time::OffsetDateTime::now_utc() - Duration::from_secs(3600);
    let cert = params.self_signed(&key).unwrap();
    let (key_file, cert_file) = (dir.path().join("est-id.key"), dir.path().join("est-id.pem"));
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::write(&cert_file, cert.pem()).unwrap();
    let mut keyd_config = KeydFixture::config_in(dir.path());
    keyd_config.preloaded_keys = vec![edgeid_keyd::config::PreloadedKey {
        id: "est-id".into(),
        file: key_file,
        symmetric: None,
    }];
    let keyd = KeydFixture::configured(keyd_config, Admins::root_and_self()).await;
    let mut config = CertdFixture::config_in(dir.path(), &keyd.socket());
    config.preloaded.insert(
        "est-id".into(),
        edgeid_certd::config::PreloadedCert {
            file: Some(cert_file.clone()),
            ids: None,
        },
    );
    config.est = Some(EstConfig {
        url: "https://localhost:9/.well-known/est".into(),
        trust_anchors: vec![cert_file],
        username: None,
        password_file: None,
        bootstrap_cert: Some("est-id".into()),
        bootstrap_key: Some("est-id".into()),
        identity_cert: Some("est-id".into()),
        identity_key: Some("est-id".into()),
        identity_renewal: None,
    });
    let certd = CertdFixture::configured(config, Admins::root_and_self()).await;
    let err = certd
        .client()
        .create(&est_request("device-id", None))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE), "{err}");
    assert!(
        err.to_string()
            .contains("'est-id' is a preloaded file that has expired"),
        "{err}"
    );
}

/// Certificates of one EST server at URLs of their own (an RFC 7030 label
/// for the Edge CA's profile, say): `[issuance."<id>"] est_url`, with
/// `[est]`'s credentials; first enrollment and renewal both go there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_enrolls_and_renews_at_its_own_est_url() {
    let dir = edgeid_testkit::temp_dir();
    let keyd = KeydFixture::start_in(dir.path()).await;
    let est = EstServer::start("device-7", "s3cret", None, Duration::from_secs(3600)).await;
    let mut config = CertdFixture::config_in(dir.path(), &keyd.socket());
    config.est = Some(basic_auth(dir.path(), &est, "s3cret"));
    for (id, url) in [
        ("device-id", None),
        ("edge-ca", Some(format!("{}/edgeca", est.url))),
    ] {
        config.issuance.insert(
            id.into(),
            edgeid_certd::config::IssuanceConfig {
                method: IssuerKind::Est,
                expiry_days: None,
                ca: false,
                key_id: None,
                subject: None,
                renewal: None,
                est_url: url,
            },
        );
    }
    let certd = CertdFixture::configured(config, Admins::root_and_self()).await;
    let client = certd.client();
    for id in ["device-id", "edge-ca"] {
        // No issuer: as [issuance] says.
        let mut request = est_request(id, None);
        request.issuer = None;
        let chain = client.create(&request).await.unwrap();
        openssl::verify_chain(&est.ca_pem, &chain, "sslclient").unwrap();
    }
    client.renew("edge-ca").await.unwrap();
    assert_eq!(
        *est.labels.lock().unwrap(),
        ["", "edgeca", "edgeca"],
        "device-id at [est] url; edge-ca enrolled and re-enrolled at its own"
    );
    // The server's CA is in the trust bundle once.
    let bundle = client.trust_bundle().await.unwrap();
    let ca = ::pem::parse(&est.ca_pem).unwrap().into_contents();
    let copies = ::pem::parse_many(&bundle)
        .unwrap()
        .into_iter()
        .filter(|p| p.contents() == ca.as_slice())
        .count();
    assert_eq!(copies, 1, "{bundle}");
}
