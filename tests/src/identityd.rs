//! An identityd serving from a temp dir inside the test process, beside a
//! keyd and a certd, pointed at the test cloud service ([`crate::cloud`]).

use std::path::Path;

use edgeid_common::authz::Admins;
use edgeid_identityd::config::ProvisioningConfig;
use edgeid_identityd::{IdentitydClient, IdentitydConfig};

use crate::cloud::CloudService;
use crate::daemon::{InProcess, Shutdown};

/// An in-process identityd.
pub type IdentitydFixture = InProcess<IdentitydConfig>;

impl InProcess<IdentitydConfig> {
    /// The test config: state and socket under `dir`, keyd and certd
    /// sockets beside them, `provisioning` as given; cloud calls trust
    /// `cloud`'s CA and retry quickly.
    pub fn config_in(
        dir: &Path,
        provisioning: ProvisioningConfig,
        cloud: Option<&CloudService>,
    ) -> IdentitydConfig {
        let mut c = IdentitydConfig::local(
            &dir.join("identityd"),
            &dir.join("identityd.sock"),
            &dir.join("keyd.sock"),
            &dir.join("certd.sock"),
            "unused",
        );
        c.provisioning = provisioning;
        if let Some(cloud) = cloud {
            let anchors = dir.join("cloud-ca.pem");
            std::fs::write(&anchors, &cloud.tls_ca_pem).expect("write the cloud CA");
            c.cloud.trust_anchors = Some(anchors);
        }
        c.cloud.attempts = 3;
        c.cloud.retry_min_ms = 50;
        c.cloud.retry_max_secs = 1;
        c.cloud.timeout_secs = 10;
        c.cloud.dps_timeout_secs = 30;
        // Loopback is reached directly, whatever proxy the environment names.
        c.cloud.proxy = Some("none".into());
        c
    }

    /// identityd with this config and administrators, serving once this returns.
    pub async fn configured(config: IdentitydConfig, admins: Admins) -> Self {
        let socket = config.socket();
        InProcess::start("identityd", config, socket, admins, |c, a, s: Shutdown| {
            Box::pin(async move {
                edgeid_identityd::run_with(c, a, s)
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .await
    }

    /// A new client.
    pub fn client(&self) -> IdentitydClient {
        IdentitydClient::new(self.socket())
    }
}
