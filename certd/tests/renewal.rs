//! Renewal: short-lived certificates are renewed before they expire, with and
//! without rekey; certd killed with SIGKILL mid-renewal leaves a valid
//! certificate in place and renews it again after a restart.

use std::time::{Duration, Instant};

use edgeid_certd::api::*;
use edgeid_testkit::{openssl, CertdFixture, KeydFixture};
use x509_parser::prelude::*;

fn short_lived(id: &str, lifetime_secs: u64, rekey: bool) -> CreateCertificateRequest {
    CreateCertificateRequest {
        lifetime_secs: Some(lifetime_secs),
        renewal: Some(RenewalPolicy {
            threshold_percent: 50,
            rekey,
            ..RenewalPolicy::default()
        }),
        ..edgeid_testkit::certd::local_client(id)
    }
}

/// (serial, SubjectPublicKeyInfo, notAfter) of a chain's leaf.
fn leaf_facts(chain: &str) -> (Vec<u8>, Vec<u8>, i64) {
    let der = ::pem::parse_many(chain).unwrap()[0].contents().to_vec();
    let (_, c) = X509Certificate::from_der(&der).unwrap();
    (
        c.raw_serial().to_vec(),
        c.public_key().raw.to_vec(),
        c.validity().not_after.timestamp(),
    )
}

async fn wait_for_new_serial(
    client: &edgeid_certd::CertdClient,
    id: &str,
    old: &[u8],
    within: Duration,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let info = client.get(id).await.unwrap();
        if leaf_facts(&info.pem).0 != old {
            return info.pem;
        }
        assert!(
            Instant::now() < deadline,
            "'{id}' was not renewed within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_are_renewed_before_expiry() {
    let dir = edgeid_testkit::temp_dir();
    let keyd = KeydFixture::start_in(dir.path()).await;
    let certd = CertdFixture::start_in(dir.path(), &keyd).await;
    let client = certd.client();
    let bundle = client.trust_bundle().await.unwrap();

    let first = client
        .create(&short_lived("rekeyed", 6, true))
        .await
        .unwrap();
    let same_key = client.create(&short_lived("kept", 6, false)).await.unwrap();
    let (serial, spki, not_after) = leaf_facts(&first);

    // Renewed at half its 6 s lifetime, well before it expires.
    let renewed = wait_for_new_serial(&client, "rekeyed", &serial, Duration::from_secs(6)).await;
    let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(now < not_after, "renewed only after expiry");
    openssl::verify_chain(&bundle, &renewed, "sslclient").unwrap();
    let (_, new_spki, _) = leaf_facts(&renewed);
    assert_ne!(new_spki, spki, "rekey: a new key");
    let info = client.get("rekeyed").await.unwrap();
    assert_eq!(info.key_id.as_deref(), Some("rekeyed.r1"));
    // The new key is in keyd, and the replaced one is gone from it.
    let keys = keyd.client();
    let handle = keys.key_pair("rekeyed.r1").await.unwrap();
    let public = ::pem::parse(keys.public_key(&handle).await.unwrap().pem).unwrap();
    assert_eq!(public.contents(), new_spki.as_slice());
    let deadline = Instant::now() + Duration::from_secs(5);
    while keys.key_pair("rekeyed").await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the replaced key was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (serial, spki, _) = leaf_facts(&same_key);
    let renewed = wait_for_new_serial(&client, "kept", &serial, Duration::from_secs(6)).await;
    openssl::verify_chain(&bundle, &renewed, "sslclient").unwrap();
    assert_eq!(leaf_facts(&renewed).1, spki, "no rekey: same key");
    assert_eq!(
        client.get("kept").await.unwrap().key_id.as_deref(),
        Some("kept")
    );

    // And again: renewal keeps going (second generation of the key).
    let (serial, _, _) = leaf_facts(&client.get("rekeyed").await.unwrap().pem);
    wait_for_new_serial(&client, "rekeyed", &serial, Duration::from_secs(6)).await;
    assert_eq!(
        client.get("rekeyed").await.unwrap().key_id.as_deref(),
        Some("rekeyed.r2")
    );
}

const CERTD: &str = env!("CARGO_BIN_EXE_edgeid-certd");

/// certd as its own process, so it can be killed with SIGKILL.
fn spawn_certd(config: &std::path::Path) -> std::process::Child {
    std::process::Command::new(CERTD)
        .arg("--config")
        .arg(config)
        .env("EDGEID_LOG", "warn")
        .spawn()
        .expect("start edgeid-certd")
}

async fn wait_for_socket(client: &edgeid_certd::CertdClient) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.health().await.is_err() {
        assert!(Instant::now() < deadline, "certd did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_renewal_leaves_a_valid_certificate_that_is_renewed_again() {
    let dir = edgeid_testkit::temp_dir();
    let keyd = KeydFixture::start_in(dir.path()).await;
    let config = dir.path().join("certd.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\nkeyd_socket = \"{}\"\n[server]\nsocket = \"{}\"\n[renewal]\nretry_min_secs = 1\nretry_max_secs = 1\n",
            dir.path().join("certd").display(),
            keyd.socket().display(),
            dir.path().join("certd.sock").display()
        ),
    )
    .unwrap();
    let client = edgeid_certd::CertdClient::new(dir.path().join("certd.sock"));
    let mut child = spawn_certd(&config);
    wait_for_socket(&client).await;
    let bundle = client.trust_bundle().await.unwrap();
    client.create(&short_lived("hot", 2, true)).await.unwrap();

    // Renewals every second; kill certd at staggered moments through them.
    for round in 0..8u64 {
        tokio::time::sleep(Duration::from_millis(350 + 170 * round)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        child = spawn_certd(&config);
        wait_for_socket(&client).await;
        // A whole, valid certificate for a key that keyd still holds. (The
        // one-second renewal may replace it between reading the record and
        // asking keyd for its key: then the record has moved on; read again.)
        let keys = keyd.client();
        let mut attempt = 0;
        let (info, public) = loop {
            let info = client.get("hot").await.unwrap();
            let key_id = info.key_id.clone().unwrap();
            let public = async {
                let handle = keys.key_pair(&key_id).await?;
                keys.public_key(&handle).await
            };
            match public.await {
                Ok(public) => break (info, public),
                Err(e) if attempt < 3 && e.status() == Some(http::StatusCode::NOT_FOUND) => {
                    let now = client.get("hot").await.unwrap();
                    assert_ne!(
                        now.key_id.as_deref(),
                        Some(key_id.as_str()),
                        "round {round}: the record names a deleted key"
                    );
                    attempt += 1;
                }
                Err(e) => panic!("round {round}: {e}"),
            }
        };
        let (_, spki, not_after) = leaf_facts(&info.pem);
        assert!(
            ::time::OffsetDateTime::now_utc().unix_timestamp() <= not_after + 1,
            "round {round}: expired cert in place"
        );
        openssl::verify_chain(&bundle, &info.pem, "sslclient").unwrap_or_else(|e| {
            // Only possible reason: the 2 s certificate lapsed while certd restarted.
            assert!(e.contains("expired"), "round {round}: {e}");
        });
        let public = ::pem::parse(public.pem).unwrap();
        assert_eq!(
            public.contents(),
            spki.as_slice(),
            "round {round}: the record's key is the leaf's"
        );
    }
    let (serial, _, _) = leaf_facts(&client.get("hot").await.unwrap().pem);
    wait_for_new_serial(&client, "hot", &serial, Duration::from_secs(5)).await;
    child.kill().unwrap();
    child.wait().unwrap();
}
