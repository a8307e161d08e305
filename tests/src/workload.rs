//! A workloadd serving inside the test process.

use edgeid_common::authz::Admins;
use edgeid_workloadapi::WorkloadConfig;

use crate::daemon::{InProcess, Shutdown};

/// An in-process workloadd.
pub type WorkloadFixture = InProcess<WorkloadConfig>;

impl InProcess<WorkloadConfig> {
    /// workloadd with this config, serving once this returns. (It has no
    /// administrators: every caller is a module or nobody.)
    pub async fn configured(config: WorkloadConfig) -> Self {
        let socket = config.socket();
        InProcess::start(
            "workloadd",
            config,
            socket,
            Admins::only(vec![]),
            |c, _, s: Shutdown| {
                Box::pin(async move {
                    edgeid_workloadapi::run(c, s)
                        .await
                        .map_err(|e| e.to_string())
                })
            },
        )
        .await
    }
}

/// What workloadd stands on: keyd, certd and identityd in one directory,
/// identityd provisioned, and the modules created in it.
pub struct Stack {
    /// keyd.
    pub keyd: crate::KeydFixture,
    /// certd, on keyd.
    pub certd: crate::CertdFixture,
    /// identityd, provisioned.
    pub identityd: crate::IdentitydFixture,
}

impl Stack {
    /// The three daemons under `dir`, identityd provisioned by `provisioning`
    /// (through `cloud` if given), and `modules` created in identityd.
    pub async fn start(
        dir: &std::path::Path,
        provisioning: edgeid_identityd::config::ProvisioningConfig,
        cloud: Option<&crate::cloud::CloudService>,
        modules: &[&str],
    ) -> Self {
        Self::start_on(
            crate::KeydFixture::start_in(dir).await,
            dir,
            provisioning,
            cloud,
            modules,
        )
        .await
    }

    /// As [`Stack::start`], on a keyd already started (a TPM one, say).
    pub async fn start_on(
        keyd: crate::KeydFixture,
        dir: &std::path::Path,
        provisioning: edgeid_identityd::config::ProvisioningConfig,
        cloud: Option<&crate::cloud::CloudService>,
        modules: &[&str],
    ) -> Self {
        let certd = crate::CertdFixture::start_in(dir, &keyd).await;
        let config = crate::IdentitydFixture::config_in(dir, provisioning, cloud);
        let identityd = crate::IdentitydFixture::configured(config, Admins::root_and_self()).await;
        let client = identityd.client();
        for _ in 0..200 {
            if client.device().await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for m in modules {
            client
                .create_module(m)
                .await
                .unwrap_or_else(|e| panic!("module {m}: {e}"));
        }
        Self {
            keyd,
            certd,
            identityd,
        }
    }

    /// Local provisioning as device `edge-1` on hub `localhost`.
    pub async fn local(dir: &std::path::Path, modules: &[&str]) -> Self {
        let provisioning = edgeid_identityd::config::ProvisioningConfig::Local(
            edgeid_identityd::config::LocalConfig {
                device_id: "edge-1".into(),
                hub: "localhost".into(),
            },
        );
        Self::start(dir, provisioning, None, modules).await
    }

    /// A workloadd config on these daemons, its socket `workload.sock` in
    /// `dir`, identities read fresh on every request, `modules` as (name, uid).
    pub fn workload_config(
        &self,
        dir: &std::path::Path,
        modules: &[(&str, u32)],
    ) -> WorkloadConfig {
        let mut config = WorkloadConfig::with_sockets(
            &dir.join("workload.sock"),
            &self.identityd.socket(),
            &self.keyd.socket(),
            &self.certd.socket(),
        );
        // Every request sees identityd's current state (the default reuses
        // an identity for 2 s).
        config.identity_cache_secs = 0;
        // edgeHub's gateway name, and one name mod-a is granted beyond its id.
        config.certificates.gateway_hostname = Some("gateway.local".into());
        config
            .certificates
            .server_names
            .insert("mod-a".into(), vec!["mod-a.local".into()]);
        config.modules = modules
            .iter()
            .map(|(name, uid)| edgeid_workloadapi::config::ModuleConfig {
                name: (*name).to_owned(),
                uid: *uid,
            })
            .collect();
        config
    }
}

/// A workloadd with its SPIFFE socket (`<dir>/spiffe.sock`) on a local
/// [`Stack`] of `modules` (name, uid), in a directory other uids can reach
/// (who must then be refused by the API), its workload socket mode 0666:
/// what every SPIFFE test stands on.
pub struct SpiffeFixture {
    /// workloadd.
    pub workload: WorkloadFixture,
    /// keyd, certd and identityd under it.
    pub stack: Stack,
    /// Where all of them keep their state and sockets.
    pub dir: tempfile::TempDir,
}

impl SpiffeFixture {
    /// Serving once this returns; `tune` changes the workloadd config and
    /// its SPIFFE section (trust domain `trust_domain`) before it starts.
    pub async fn start(
        trust_domain: &str,
        modules: &[(&str, u32)],
        tune: impl FnOnce(&mut WorkloadConfig, &mut edgeid_workloadapi::config::SpiffeConfig),
    ) -> Self {
        let dir = crate::temp_dir();
        crate::open_to_others(dir.path());
        let names: Vec<&str> = modules.iter().map(|(name, _)| *name).collect();
        let stack = Stack::local(dir.path(), &names).await;
        let mut config = stack.workload_config(dir.path(), modules);
        config.server.socket_mode = 0o666;
        let mut spiffe = edgeid_workloadapi::config::SpiffeConfig::new(
            trust_domain,
            &dir.path().join("spiffe.sock"),
        );
        tune(&mut config, &mut spiffe);
        config.spiffe = Some(spiffe);
        let workload = WorkloadFixture::configured(config).await;
        Self {
            workload,
            stack,
            dir,
        }
    }

    /// The SPIFFE socket's path, as SPIFFE clients take it.
    pub fn socket(&self) -> String {
        self.dir.path().join("spiffe.sock").display().to_string()
    }

    /// A Workload API client on the SPIFFE socket, as this process.
    pub async fn client(&self) -> edgeid_workloadapi::spiffe::client::Client {
        edgeid_workloadapi::spiffe::client::connect(&self.socket())
            .await
            .expect("connect to the SPIFFE socket")
    }

    /// A Workload API client on the SPIFFE socket, connected as `uid`.
    pub async fn client_as(&self, uid: u32) -> edgeid_workloadapi::spiffe::client::Client {
        use edgeid_workloadapi::spiffe::client;
        let stream = crate::connect_as(uid, uid, std::path::Path::new(&self.socket()));
        client::client(client::channel_over(stream).await.expect("channel"))
    }
}
