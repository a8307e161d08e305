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
