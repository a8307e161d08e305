//! The device CA's key in hardware: in a TPM (swtpm) and on a PKCS#11 token
//! (SoftHSMv2). certd signs through keyd exactly as with a software key, and
//! `openssl verify` accepts what it issues.

use edgeid_certd::api::*;
use edgeid_common::authz::Admins;
use edgeid_keyd::backend::BackendKind;
use edgeid_testkit::{openssl, CertdFixture, KeydFixture, KeydProcess, SoftHsm, Swtpm};

/// keyd's binary, built beside certd's by `cargo test --workspace`.
fn keyd_binary() -> std::path::PathBuf {
    let path =
        std::path::Path::new(env!("CARGO_BIN_EXE_edgeid-certd")).with_file_name("edgeid-keyd");
    assert!(
        path.exists(),
        "{} is missing: run the workspace tests (cargo test --workspace) or cargo build -p edgeid-keyd first",
        path.display()
    );
    path
}

async fn issue_and_verify(certd: &CertdFixture) {
    let client = certd.client();
    let bundle = client.trust_bundle().await.unwrap();
    for (id, profile, purpose) in [
        ("module/a", Profile::Client, "sslclient"),
        ("web/b", Profile::Server, "sslserver"),
    ] {
        let chain = client
            .create(&CreateCertificateRequest {
                id: id.into(),
                issuer: Some(IssuerKind::LocalCa),
                profile,
                csr: None,
                key_id: Some(id.into()),
                key_spec: None,
                subject_cn: None,
                san: Some(SubjectAltNames {
                    dns: vec!["device.local".into()],
                    ..Default::default()
                }),
                subject: Default::default(),
                lifetime_secs: Some(3600),
                renewal: None,
                transient: false,
            })
            .await
            .unwrap();
        openssl::verify_chain(&bundle, &chain, purpose).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_key_in_the_tpm() {
    let tpm = Swtpm::start();
    let dir = edgeid_testkit::temp_dir();
    let mut config = KeydFixture::config_in(dir.path());
    config.backend.default = BackendKind::Tpm;
    config.tpm = Some(tpm.keyd_config());
    let keyd = KeydFixture::configured(config, Admins::root_and_self()).await;
    let certd = CertdFixture::configured(
        CertdFixture::config_in(dir.path(), &keyd.socket()),
        Admins::root_and_self(),
    )
    .await;
    issue_and_verify(&certd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_key_on_a_pkcs11_token() {
    let hsm = SoftHsm::new();
    hsm.init_token("ca");
    let dir = edgeid_testkit::temp_dir();
    let extra = format!("[backend]\ndefault = \"pkcs11\"\n{}", hsm.keyd_table("ca"));
    let keyd = KeydProcess::start(&keyd_binary(), dir.path(), &extra, hsm.env()).await;
    let certd = CertdFixture::configured(
        CertdFixture::config_in(dir.path(), &keyd.socket),
        Admins::root_and_self(),
    )
    .await;
    issue_and_verify(&certd).await;
    assert!(hsm.list_objects("ca").contains("device-ca"));
}
