//! A certd serving from a temp dir inside the test process, talking to a keyd.

use std::path::Path;

use edgeid_certd::{CertdClient, CertdConfig};
use edgeid_common::authz::Admins;

use crate::daemon::{InProcess, Shutdown};

/// An in-process certd.
pub type CertdFixture = InProcess<CertdConfig>;

impl InProcess<CertdConfig> {
    /// The test config: state and socket under `dir`, keyd at `keyd_socket`,
    /// renewal retries after a second.
    pub fn config_in(dir: &Path, keyd_socket: &Path) -> CertdConfig {
        let mut c =
            CertdConfig::with_dirs(&dir.join("certd"), &dir.join("certd.sock"), keyd_socket);
        c.renewal.retry_min_secs = 1;
        c.renewal.retry_max_secs = 2;
        c
    }

    /// certd with the test config under `dir`, using `keyd`; root and this
    /// process are admins.
    pub async fn start_in(dir: &Path, keyd: &crate::KeydFixture) -> Self {
        Self::configured(
            Self::config_in(dir, &keyd.socket()),
            Admins::root_and_self(),
        )
        .await
    }

    /// certd with this config and administrators, serving once this returns.
    pub async fn configured(config: CertdConfig, admins: Admins) -> Self {
        let socket = config.socket();
        InProcess::start("certd", config, socket, admins, |c, a, s: Shutdown| {
            Box::pin(async move {
                edgeid_certd::run_with(c, a, s)
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .await
    }

    /// A new client.
    pub fn client(&self) -> CertdClient {
        CertdClient::new(self.socket())
    }
}

/// A request for certificate `id` from `issuer` with `profile`, for a key in
/// keyd of the same id (created by certd if absent); everything else default.
pub fn request_for_key(
    id: &str,
    issuer: edgeid_certd::api::IssuerKind,
    profile: edgeid_certd::api::Profile,
) -> edgeid_certd::api::CreateCertificateRequest {
    edgeid_certd::api::CreateCertificateRequest {
        id: id.into(),
        issuer: Some(issuer),
        profile,
        csr: None,
        key_id: Some(id.into()),
        key_spec: None,
        subject_cn: None,
        san: None,
        subject: Default::default(),
        lifetime_secs: None,
        renewal: None,
        transient: false,
    }
}

/// A client certificate from the local CA for a key of the same id.
pub fn local_client(id: &str) -> edgeid_certd::api::CreateCertificateRequest {
    request_for_key(
        id,
        edgeid_certd::api::IssuerKind::LocalCa,
        edgeid_certd::api::Profile::Client,
    )
}
