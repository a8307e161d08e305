//! The operator's commands against running daemons: `status`, `identity`,
//! `cert`, `reprovision`. Each reaches the daemons through their sockets in
//! the run directory (`/run/edgeid`, or dev mode's directory).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edgeid_certd::CertdClient;
use edgeid_identityd::api::ProvisioningState;
use edgeid_identityd::IdentitydClient;
use edgeid_keyd::KeydClient;

/// The daemons' sockets in one directory.
pub struct Sockets {
    dir: PathBuf,
}

impl Sockets {
    /// Sockets under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn keyd(&self) -> KeydClient {
        KeydClient::new(self.path("keyd.sock"))
    }

    fn certd(&self) -> CertdClient {
        CertdClient::new(self.path("certd.sock"))
    }

    fn identityd(&self) -> IdentitydClient {
        IdentitydClient::new(self.path("identityd.sock"))
    }

    fn failed(&self, daemon: &str, e: impl std::fmt::Display) -> String {
        format!(
            "{daemon} ({}): {e}",
            self.path(&format!("{daemon}.sock")).display()
        )
    }
}

/// `edgeidctl status`: each daemon's health, the device identity, module
/// identities and certificates with their expiry. Unreachable daemons are
/// reported, not fatal; the exit status says whether all answered.
pub async fn status(s: &Sockets) -> Result<(), String> {
    let mut down = Vec::new();
    outln!("daemons ({})", s.dir.display());
    for d in &crate::daemons::DAEMONS {
        let name = d.name;
        match d.health(&s.dir).await {
            Ok(h) => {
                let backends: Vec<String> = h
                    .backends
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                outln!(
                    "  {name:<10} {} {} ({})",
                    h.status,
                    h.version,
                    backends.join(", ")
                );
            }
            Err(e) => {
                outln!("  {name:<10} unreachable: {e}");
                down.push(name);
            }
        }
    }
    let identityd = s.identityd();
    if let Ok(p) = identityd.provisioning().await {
        outln!("provisioning ({})", p.source);
        outln!(
            "  state      {}{}",
            wire(&p.state),
            p.provisioned_at
                .map(|t| format!(" (since {t})"))
                .unwrap_or_default()
        );
        if let Some(e) = p.last_error {
            outln!("  last error {e}");
        }
    }
    if let Ok(d) = identityd.device().await {
        outln!("device");
        outln!("  id         {}", d.device_id);
        outln!("  hub        {}", d.hub);
        outln!(
            "  credential {}{}",
            wire(&d.auth.auth_type),
            d.auth
                .cert_id
                .map(|c| format!(" (certificate '{c}')"))
                .unwrap_or_default()
        );
    }
    if let Ok(modules) = identityd.modules().await {
        outln!("modules ({})", modules.len());
        for m in modules {
            outln!(
                "  {:<24} generation {} {}",
                m.module_id,
                m.generation_id,
                wire(&m.auth.auth_type)
            );
        }
    }
    if let Ok(keys) = s.keyd().list_keys().await {
        outln!("keys ({})", keys.len());
        for k in keys {
            outln!("  {:<32} {:<12} {}", k.id, k.kind, k.backend);
        }
    }
    let certd = s.certd();
    if let Ok(ids) = certd.list().await {
        outln!("certificates ({})", ids.len());
        for id in ids {
            match certd.get(&id).await {
                Ok(info) => outln!(
                    "  {id:<32} expires {}{}",
                    info.not_after,
                    info.key_id
                        .map(|k| format!("  key '{k}'"))
                        .unwrap_or_default()
                ),
                Err(e) => outln!("  {id:<32} {e}"),
            }
        }
    }
    if down.is_empty() {
        Ok(())
    } else {
        Err(format!("not answering: {}", down.join(", ")))
    }
}

/// `edgeidctl identity list|create|delete`.
pub async fn identity(s: &Sockets, action: &IdentityAction) -> Result<(), String> {
    let client = s.identityd();
    let fail = |e| s.failed("identityd", e);
    match action {
        IdentityAction::List => {
            for m in client.modules().await.map_err(fail)? {
                outln!(
                    "{}\t{}\t{}",
                    m.module_id,
                    m.generation_id,
                    wire(&m.auth.auth_type)
                );
            }
        }
        IdentityAction::Create { module } => {
            let m = client.create_module(module).await.map_err(fail)?;
            outln!(
                "{}\t{}\t{}",
                m.module_id,
                m.generation_id,
                wire(&m.auth.auth_type)
            );
        }
        IdentityAction::Delete { module } => {
            client.delete_module(module).await.map_err(fail)?;
            outln!("deleted module identity '{module}'");
        }
    }
    Ok(())
}

/// `edgeidctl identity ...`
#[derive(clap::Subcommand)]
pub enum IdentityAction {
    /// The module identities.
    List,
    /// Create a module identity (or show the existing one).
    Create {
        /// The module id.
        module: String,
    },
    /// Delete a module identity (in the hub too).
    Delete {
        /// The module id.
        module: String,
    },
}

/// `edgeidctl key ...`
#[derive(clap::Subcommand)]
pub enum KeyAction {
    /// Key ids, their types and the store holding each.
    List,
    /// With keyd stopped: seal the software store's master key again to the
    /// PCRs as they are now (after an expected firmware or boot change),
    /// unsealing it with the TPM owner's authorization if they moved.
    Reseal {
        /// keyd's config file.
        #[arg(long, default_value = "/etc/edgeid/keyd.d/config.toml")]
        keyd_config: PathBuf,
    },
}

/// `edgeidctl key list|reseal`.
pub async fn key(s: &Sockets, action: &KeyAction) -> Result<(), String> {
    match action {
        KeyAction::List => {
            let keys = s
                .keyd()
                .list_keys()
                .await
                .map_err(|e| s.failed("keyd", e))?;
            for k in keys {
                outln!("{}\t{}\t{}", k.id, k.kind, k.backend);
            }
        }
        KeyAction::Reseal { keyd_config } => reseal(keyd_config).await?,
    }
    Ok(())
}

/// `edgeidctl key reseal`: the file is written as whoever runs this (root),
/// then given to the owner of its directory (keyd's user), who reads it.
async fn reseal(keyd_config: &Path) -> Result<(), String> {
    let config = edgeid_keyd::KeydConfig::load(keyd_config).map_err(|e| e.to_string())?;
    let done = edgeid_keyd::keys::reseal_master_key(&config)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(dir) = done.path.parent() {
        let owner = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        use std::os::unix::fs::MetadataExt;
        std::os::unix::fs::chown(&done.path, Some(owner.uid()), Some(owner.gid()))
            .map_err(|e| format!("cannot give {} to keyd's user: {e}", done.path.display()))?;
    }
    outln!("sealed the master key again: {}", done.path.display());
    if done.pcrs.is_empty() {
        outln!("  to this TPM alone (no PCRs)");
    }
    for (bank, values) in &done.pcrs {
        for (index, value) in values {
            outln!("  {}:{index} = {}", bank.name(), hex::encode(value));
        }
    }
    outln!("start keyd again");
    Ok(())
}

/// `edgeidctl cert ...`
#[derive(clap::Subcommand)]
pub enum CertAction {
    /// Certificate ids, with expiry.
    List,
    /// One certificate: its chain (PEM), expiry, key and renewal policy.
    Show {
        /// The certificate id.
        id: String,
    },
    /// Renew a certificate certd issued, now (by its policy: a new key if it rekeys).
    Renew {
        /// The certificate id.
        id: String,
    },
}

/// `edgeidctl cert list|show`.
pub async fn cert(s: &Sockets, action: &CertAction) -> Result<(), String> {
    let client = s.certd();
    let fail = |e| s.failed("certd", e);
    match action {
        CertAction::List => {
            for id in client.list().await.map_err(fail)? {
                let info = client.get(&id).await.map_err(fail)?;
                outln!("{id}\t{}", info.not_after);
            }
        }
        CertAction::Renew { id } => {
            let info = client.renew(id).await.map_err(fail)?;
            outln!(
                "renewed '{id}': expires {}{}",
                info.not_after,
                info.key_id
                    .map(|k| format!(", key '{k}'"))
                    .unwrap_or_default()
            );
        }
        CertAction::Show { id } => {
            let info = client.get(id).await.map_err(fail)?;
            outln!("id:        {id}");
            outln!("expires:   {}", info.not_after);
            if let Some(k) = info.key_id {
                outln!("key:       {k} (keyd)");
            }
            if let Some(r) = info.renewal {
                outln!(
                    "renewal:   at {}% of its lifetime{}",
                    r.threshold_percent,
                    if r.rekey { ", new key" } else { ", same key" }
                );
            }
            out!("{}", info.pem);
        }
    }
    Ok(())
}

/// `edgeidctl reprovision`: asks identityd to provision again and, unless
/// told not to, waits for the outcome and prints it.
pub async fn reprovision(s: &Sockets, wait: bool) -> Result<(), String> {
    let client = s.identityd();
    let fail = |e| s.failed("identityd", e);
    let mut status = client.reprovision().await.map_err(fail)?;
    outln!("reprovisioning ({} provisioning)", status.source);
    let deadline = Instant::now() + Duration::from_secs(300);
    while wait && status.state == ProvisioningState::Provisioning {
        if Instant::now() > deadline {
            return Err("still provisioning after 300 s; see identityd's log".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = client.provisioning().await.map_err(fail)?;
    }
    match status.state {
        ProvisioningState::Provisioned => {
            let device = client.device().await.map_err(fail)?;
            outln!(
                "provisioned: device '{}' on '{}'",
                device.device_id,
                device.hub
            );
            Ok(())
        }
        ProvisioningState::Failed => Err(format!(
            "reprovisioning failed: {}",
            status
                .last_error
                .unwrap_or_else(|| "no reason recorded".into())
        )),
        ProvisioningState::Provisioning => Ok(()),
    }
}

/// A value as the APIs name it (`sas`, `provisioned`).
fn wire<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
