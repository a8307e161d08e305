//! What identityd keeps on disk, in `state_dir` (0700): `device.json`, the
//! provisioning result, and `modules.json`, the module identities. Each is
//! rewritten whole and atomically (temp file, fsync, rename, 0600), so a
//! crash leaves the old or the new file, never half of one. Neither holds
//! key material: keys are named by keyd id, certificates by certd id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::AuthType;
use crate::error::Error;

/// Format of the files; bump when the layout changes.
const FORMAT: u32 = 1;

/// A symmetric key in keyd: a stored key, or one derived from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRef {
    /// The stored key's id.
    pub id: String,
    /// Derivation input applied to it (a group enrollment's registration id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derive: Option<String>,
}

/// The device's hub credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Credential {
    /// SAS tokens signed with this key.
    Sas {
        /// The HMAC key.
        key: KeyRef,
    },
    /// TLS client auth with this certd certificate (its key is the one certd records).
    X509 {
        /// The certificate id in certd.
        cert_id: String,
        /// Its key in keyd where certd records none (a preloaded
        /// certificate: the reference's `identity_cert` file).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_id: Option<String>,
    },
}

/// The provisioning result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRecord {
    /// File format.
    pub format: u32,
    /// `manual`, `dps` or `local`.
    pub source: String,
    /// A digest of the provisioning config it came from: when the config
    /// changes, identityd provisions again.
    pub fingerprint: String,
    /// The hub (`host[:port]`).
    pub hub: String,
    /// The parent gateway the hub is reached through (nested edge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The device id.
    pub device_id: String,
    /// The credential.
    pub credential: Credential,
    /// When (RFC 3339).
    pub provisioned_at: String,
}

impl DeviceRecord {
    /// A record in the current format.
    pub fn new(
        source: &str,
        fingerprint: String,
        hub: String,
        device_id: String,
        credential: Credential,
    ) -> Self {
        Self {
            format: FORMAT,
            source: source.to_owned(),
            fingerprint,
            hub,
            gateway: None,
            device_id,
            credential,
            provisioned_at: rfc3339_now(),
        }
    }

    /// Where the hub's REST API is called: the parent gateway, if any.
    pub fn connect_to(&self) -> &str {
        self.gateway.as_deref().unwrap_or(&self.hub)
    }

    /// The aziot API's `gatewayHost`: the gateway, else the hub itself.
    pub fn gateway_host(&self) -> String {
        self.connect_to().to_owned()
    }
}

/// A module identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleRecord {
    /// The module id.
    pub module_id: String,
    /// Its generation; its keys are derived with it.
    pub generation_id: String,
    /// How it authenticates.
    pub auth: AuthType,
    /// X.509: its certificate's id in certd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_id: Option<String>,
    /// The hub it was registered with (none in `local` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModulesFile {
    format: u32,
    /// The device the modules belong to; a new device starts with none.
    device: String,
    modules: BTreeMap<String, ModuleRecord>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating, 0700) the state directory.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        edgeid_common::fs::ensure_private_dir(dir)
            .map_err(|e| Error::Setup(format!("state directory {}: {e}", dir.display())))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn device_file(&self) -> PathBuf {
        self.dir.join("device.json")
    }

    fn modules_file(&self) -> PathBuf {
        self.dir.join("modules.json")
    }

    /// The provisioning result, if any.
    pub fn device(&self) -> Result<Option<DeviceRecord>, Error> {
        read_json(&self.device_file())
    }

    /// Stores the provisioning result.
    pub fn save_device(&self, record: &DeviceRecord) -> Result<(), Error> {
        write_json(&self.device_file(), record)
    }

    /// The module identities of `device` (`hub/device`); those of another
    /// device (before a reprovisioning moved it) are not returned.
    pub fn modules(&self, device: &str) -> Result<BTreeMap<String, ModuleRecord>, Error> {
        Ok(read_json::<ModulesFile>(&self.modules_file())?
            .filter(|f| f.device == device)
            .map(|f| f.modules)
            .unwrap_or_default())
    }

    /// Replaces the module identities of `device`.
    pub fn save_modules(
        &self,
        device: &str,
        modules: &BTreeMap<String, ModuleRecord>,
    ) -> Result<(), Error> {
        let file = ModulesFile {
            format: FORMAT,
            device: device.to_owned(),
            modules: modules.clone(),
        };
        write_json(&self.modules_file(), &file)
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Internal(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Internal(format!("{} is damaged: {e}", path.display())))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::Internal(e.to_string()))?;
    edgeid_common::fs::write_atomic(path, &bytes, 0o600)
        .map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))
}

/// Now, RFC 3339 (UTC).
pub fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_device_scoping() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        assert_eq!(store.device().unwrap(), None);
        let record = DeviceRecord::new(
            "manual",
            "f".into(),
            "hub".into(),
            "d".into(),
            Credential::Sas {
                key: KeyRef {
                    id: "device-id".into(),
                    derive: None,
                },
            },
        );
        store.save_device(&record).unwrap();
        assert_eq!(store.device().unwrap(), Some(record));
        let mut modules = BTreeMap::new();
        modules.insert(
            "m".to_owned(),
            ModuleRecord {
                module_id: "m".into(),
                generation_id: "1".into(),
                auth: AuthType::Sas,
                cert_id: None,
                hub: None,
            },
        );
        store.save_modules("hub/d", &modules).unwrap();
        assert_eq!(store.modules("hub/d").unwrap().len(), 1);
        assert!(store.modules("hub/other").unwrap().is_empty());
    }
}
