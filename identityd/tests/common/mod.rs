//! Setup the identityd tests share: a keyd and a certd in a temp dir, the
//! test cloud service, key files, and waiting for provisioning.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use edgeid_identityd::api::ProvisioningState;
use edgeid_identityd::config::{AttestationConfig, DpsConfig, KeySource, ProvisioningConfig};
use edgeid_identityd::IdentitydClient;
use edgeid_testkit::cloud::CloudService;
use edgeid_testkit::{CertdFixture, KeydFixture};

/// keyd and certd under one temp dir.
pub struct Daemons {
    pub certd: CertdFixture,
    pub keyd: KeydFixture,
    pub dir: tempfile::TempDir,
}

impl Daemons {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// keyd's config changed by `change` before it starts, and certd.
    pub async fn start_with(change: impl FnOnce(&mut edgeid_keyd::config::KeydConfig)) -> Self {
        let dir = edgeid_testkit::temp_dir();
        let mut config = KeydFixture::config_in(dir.path());
        change(&mut config);
        let keyd =
            KeydFixture::configured(config, edgeid_common::authz::Admins::root_and_self()).await;
        let certd = CertdFixture::start_in(dir.path(), &keyd).await;
        Self { certd, keyd, dir }
    }

    /// keyd keeping `device-id` in `tpm` (everything else in software), and certd.
    pub async fn with_tpm(tpm: &edgeid_testkit::Swtpm) -> Self {
        let dir = edgeid_testkit::temp_dir();
        let mut config = KeydFixture::config_in(dir.path());
        config.tpm = Some(tpm.keyd_config());
        config.backend.overrides = vec![edgeid_keyd::config::BackendOverride {
            keys: edgeid_common::authz::Grants::parse(&["device-id"]).unwrap(),
            backend: edgeid_keyd::backend::BackendKind::Tpm,
        }];
        let keyd =
            KeydFixture::configured(config, edgeid_common::authz::Admins::root_and_self()).await;
        let certd = CertdFixture::start_in(dir.path(), &keyd).await;
        Self { certd, keyd, dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A 0600 file holding `key` in base64.
    pub fn key_file(&self, name: &str, key: &[u8]) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, STANDARD.encode(key)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}

/// DPS with symmetric key attestation from a key file.
pub fn dps_symmetric(
    cloud: &CloudService,
    registration_id: &str,
    key_file: PathBuf,
    group: bool,
) -> ProvisioningConfig {
    ProvisioningConfig::Dps(DpsConfig {
        global_endpoint: cloud.endpoint.clone(),
        id_scope: cloud.id_scope.clone(),
        attestation: AttestationConfig::SymmetricKey {
            registration_id: registration_id.into(),
            key: KeySource {
                key_file: Some(key_file),
                key_id: None,
            },
            group,
        },
        payload_file: None,
    })
}

/// Waits until provisioning is no longer running; the final status.
pub async fn settled(client: &IdentitydClient) -> edgeid_identityd::api::ProvisioningStatus {
    for _ in 0..600 {
        let status = client.provisioning().await.unwrap();
        if status.state != ProvisioningState::Provisioning {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("provisioning did not settle in 30 s");
}

/// Waits until the device is provisioned; panics with the last error if it fails.
pub async fn provisioned(client: &IdentitydClient) {
    let status = settled(client).await;
    assert_eq!(
        status.state,
        ProvisioningState::Provisioned,
        "provisioning failed: {:?}",
        status.last_error
    );
}

/// A fresh random key.
pub fn random_key() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    aws_lc_rs::rand::fill(&mut key).unwrap();
    key
}

/// An X.509 device whose identity certificate certd is to issue: keyd, and
/// certd issuing `device-id` by its local CA as `[issuance."device-id"]`
/// says (`expiry_days`, `renewal`); the test hub trusting that CA, with
/// the X.509 device `device`; and the manual provisioning for it, asking
/// for a subject of `CN=<device>, O=Contoso`.
pub async fn x509_device_certd_issues(
    device: &str,
    expiry_days: u64,
    renewal: Option<edgeid_certd::api::RenewalPolicy>,
) -> (Daemons, CloudService, ProvisioningConfig) {
    let dir = edgeid_testkit::temp_dir();
    let keyd = KeydFixture::start_in(dir.path()).await;
    let mut config = CertdFixture::config_in(dir.path(), &keyd.socket());
    config.issuance.insert(
        "device-id".into(),
        edgeid_certd::config::IssuanceConfig {
            method: edgeid_certd::api::IssuerKind::LocalCa,
            expiry_days: Some(expiry_days),
            ca: false,
            key_id: None,
            subject: None,
            renewal,
            est_url: None,
        },
    );
    let admins = edgeid_common::authz::Admins::root_and_self();
    let certd = CertdFixture::configured(config, admins).await;
    let daemons = Daemons { certd, keyd, dir };
    let device_ca = daemons.certd.client().trust_bundle().await.unwrap();
    let cloud = CloudService::start(Some(&device_ca)).await;
    cloud.add_x509_device(device);
    let provisioning = ProvisioningConfig::Manual(edgeid_identityd::config::ManualConfig {
        connection_string: None,
        hub: Some(cloud.hub.clone()),
        device_id: Some(device.into()),
        auth: Some(edgeid_identityd::config::DeviceAuthConfig::X509 {
            cert_id: "device-id".into(),
            key_id: "device-id".into(),
            subject: [("O".to_owned(), "Contoso".to_owned())].into(),
        }),
        gateway: None,
    });
    (daemons, cloud, provisioning)
}
