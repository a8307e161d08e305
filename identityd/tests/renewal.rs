//! The device's identity certificate, issued by certd at identityd's request
//! (the reference's DPS x509 identity with `identity_cert` issued and
//! `identity_auto_renew`): certd renews it by its `[issuance."device-id"]
//! renewal` policy with a new key and the same subject, and identityd
//! authenticates to the hub with the renewed certificate and key.

mod common;

use std::time::{Duration, Instant};

use common::provisioned;
use edgeid_certd::api::RenewalPolicy;
use edgeid_common::authz::Admins;
use edgeid_testkit::{openssl, IdentitydFixture};
use x509_parser::prelude::*;

/// The leaf of a PEM chain, DER.
fn leaf(chain: &str) -> Vec<u8> {
    ::pem::parse(chain).unwrap().into_contents()
}

/// The subject of a DER certificate, as openssl-style text.
fn subject(der: &[u8]) -> String {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.subject().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_issued_identity_certificate_is_renewed_with_a_new_key_and_still_reaches_the_hub() {
    // A day's certificate renewed when a day less 4 s is left: 4 s after
    // each issuance (the reference's `threshold = "<n>min"` form).
    let renewal = RenewalPolicy {
        threshold_percent: 80,
        rekey: true,
        before_expiry_secs: Some(86_400 - 4),
        retry_percent: None,
        retry_secs: Some(1),
    };
    let (daemons, cloud, provisioning) =
        common::x509_device_certd_issues("factory-9", 1, Some(renewal)).await;
    let device_ca = daemons.certd.client().trust_bundle().await.unwrap();
    let config = IdentitydFixture::config_in(daemons.path(), provisioning, Some(&cloud));
    let identityd = IdentitydFixture::configured(config, Admins::root_and_self()).await;
    let client = identityd.client();
    provisioned(&client).await;
    let certs = daemons.certd.client();
    let first = certs.get("device-id").await.unwrap();
    assert_eq!(first.key_id.as_deref(), Some("device-id"));
    let first_leaf = leaf(&first.pem);
    assert_eq!(subject(&first_leaf), "CN=factory-9, O=Contoso");

    // certd renews it, with a new key.
    let deadline = Instant::now() + Duration::from_secs(15);
    let renewed = loop {
        let info = certs.get("device-id").await.unwrap();
        if leaf(&info.pem) != first_leaf {
            break info;
        }
        assert!(Instant::now() < deadline, "not renewed within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let policy = renewed.renewal.unwrap();
    assert_eq!(
        policy.before_expiry_secs,
        Some(86_400 - 4),
        "the configured policy"
    );
    let new_key = renewed.key_id.clone().unwrap();
    assert!(new_key.starts_with("device-id.r"), "a new key: {new_key}");
    let renewed_leaf = leaf(&renewed.pem);
    openssl::verify_chain(&device_ca, &renewed.pem, "sslclient").unwrap();
    assert_eq!(
        subject(&renewed_leaf),
        "CN=factory-9, O=Contoso",
        "the subject identityd asked for, kept through the renewal"
    );
    // The renewed certificate certifies that new key, as keyd has it.
    let keys = daemons.keyd.client();
    let handle = keys.key_pair(&new_key).await.unwrap();
    let public = ::pem::parse(keys.public_key(&handle).await.unwrap().pem).unwrap();
    let (_, cert) = X509Certificate::from_der(&renewed_leaf).unwrap();
    assert_eq!(public.contents(), cert.public_key().raw);

    // identityd reaches the hub with what certd holds now (the next
    // renewal is 4 s away): the hub saw the renewed certificate.
    let seen_before = cloud.client_certs().len();
    client.create_module("after-renewal").await.unwrap();
    assert_eq!(cloud.modules_of("factory-9"), ["after-renewal"]);
    let shown = cloud.client_certs()[seen_before..].to_vec();
    assert!(!shown.is_empty(), "the hub saw no client certificate");
    assert!(
        shown.iter().all(|der| *der == renewed_leaf),
        "identityd showed the hub another certificate than the renewed one"
    );
}
