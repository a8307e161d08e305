//! Certificates on disk: one JSON record per id in `state_dir/certs/`, written
//! atomically (temp file, fsync, rename), 0600 in a 0700 directory. A record
//! holds the chain and everything renewal needs to issue it again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use edgeid_keyd::api::KeyPairSpec;
use serde::{Deserialize, Serialize};

use crate::api::{IssuerKind, Profile, RenewalPolicy, SubjectAltNames};
use crate::error::Error;

/// Format of record files; bump when the layout changes.
const FORMAT: u32 = 1;

/// Where a stored certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Issued by certd (and renewed by it).
    Issued(IssuerKind),
    /// Imported through the API; certd does not renew it.
    Imported,
    /// Issued for a CSR by an issuer whose key the caller handed certd (the
    /// aziot API's `issuer`); the caller renews it, as with the reference.
    CallersIssuer,
}

/// One certificate and how it was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRecord {
    /// Record format.
    pub format: u32,
    /// The certificate id.
    pub id: String,
    /// Who issued it.
    pub origin: Origin,
    /// What it is for (issued certificates).
    pub profile: Option<Profile>,
    /// The keyd key the leaf certifies now, when certd knows it.
    pub key_id: Option<String>,
    /// The key id rekeys are named after (`<base>.r<generation>`).
    pub key_base: Option<String>,
    /// How many times the key was replaced.
    pub key_generation: u32,
    /// The spec of keys certd makes for it.
    pub key_spec: Option<KeyPairSpec>,
    /// Subject common name.
    pub subject_cn: String,
    /// Subject alternative names.
    pub san: SubjectAltNames,
    /// The subject's attributes after the CN, as the requester gave them
    /// (records from before they were kept have none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subject_attributes: BTreeMap<String, String>,
    /// Lifetime asked for at issuance.
    pub lifetime_secs: u64,
    /// Renewal policy (issued certificates).
    pub renewal: Option<RenewalPolicy>,
    /// A key replaced by a rekey, to delete from keyd once this record is on disk.
    pub retired_key_id: Option<String>,
    /// The chain, PEM, leaf first.
    pub pem: String,
}

impl CertRecord {
    /// A new record in the current format.
    pub fn new(id: &str, origin: Origin, pem: String) -> Self {
        Self {
            format: FORMAT,
            id: id.to_owned(),
            origin,
            profile: None,
            key_id: None,
            key_base: None,
            key_generation: 0,
            key_spec: None,
            subject_cn: String::new(),
            san: SubjectAltNames::default(),
            subject_attributes: BTreeMap::new(),
            lifetime_secs: 0,
            renewal: None,
            retired_key_id: None,
            pem,
        }
    }
}

/// The directory of records.
pub struct CertStore {
    dir: PathBuf,
}

impl CertStore {
    /// Opens (creating) `state_dir/certs`.
    pub fn open(state_dir: &Path) -> Result<Self, Error> {
        let dir = state_dir.join("certs");
        for d in [state_dir, dir.as_path()] {
            edgeid_common::fs::ensure_private_dir(d)
                .map_err(|e| Error::Setup(format!("cannot create {}: {e}", d.display())))?;
        }
        Ok(Self { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir
            .join(format!("{}.json", URL_SAFE_NO_PAD.encode(id.as_bytes())))
    }

    /// The record of `id`, if any.
    pub fn get(&self, id: &str) -> Result<Option<CertRecord>, Error> {
        let path = self.path(id);
        match std::fs::read(&path) {
            Ok(bytes) => Self::decode(&path, &bytes, Some(id)).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Internal(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    fn decode(path: &Path, bytes: &[u8], id: Option<&str>) -> Result<CertRecord, Error> {
        let record: CertRecord = serde_json::from_slice(bytes).map_err(|e| {
            Error::Internal(format!(
                "certificate record {} is damaged: {e}",
                path.display()
            ))
        })?;
        if record.format != FORMAT || id.is_some_and(|id| id != record.id) {
            return Err(Error::Internal(format!(
                "certificate record {} has another format or belongs to another id",
                path.display()
            )));
        }
        Ok(record)
    }

    /// Writes a record atomically.
    pub fn put(&self, record: &CertRecord) -> Result<(), Error> {
        let path = self.path(&record.id);
        let json = serde_json::to_vec_pretty(record).map_err(|e| Error::Internal(e.to_string()))?;
        edgeid_common::fs::write_atomic(&path, &json, 0o600).map_err(|e| {
            if edgeid_common::fs::is_out_of_space(&e) {
                Error::NoSpace(record.id.clone())
            } else {
                Error::Internal(format!("cannot write {}: {e}", path.display()))
            }
        })
    }

    /// Removes a record; false if there was none.
    pub fn delete(&self, id: &str) -> Result<bool, Error> {
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::Internal(format!(
                "cannot remove {}: {e}",
                path.display()
            ))),
        }
    }

    /// Every readable record; damaged ones are logged and skipped.
    pub fn list(&self) -> Result<Vec<CertRecord>, Error> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::Internal(format!("cannot list {}: {e}", self.dir.display())))?;
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let decoded = std::fs::read(&path)
                .map_err(|e| Error::Internal(format!("cannot read {}: {e}", path.display())))
                .and_then(|b| Self::decode(&path, &b, None));
            match decoded {
                Ok(r) => records.push(r),
                Err(e) => tracing::warn!(error = %e, "skipping a certificate record"),
            }
        }
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }
}
