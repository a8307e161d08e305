//! The software store's master key sealed to the TPM (`[software] master_key
//! = "tpm"`): a TPM data object under the storage key, its blobs in
//! `master-key.sealed` beside the TPM keys'. A copy of the disk without this
//! TPM opens nothing (the blob loads under this TPM's storage key only).
//!
//! With `seal_pcrs`, the object's policy is
//! `PolicyOR(PolicyPCR(those PCRs at their values when sealed), PolicySecret(owner))`:
//! keyd unseals through the first branch; after a PCR change only the TPM
//! owner can, through the second (`edgeidctl key reseal`, which then seals
//! to the PCRs as they are). Without `seal_pcrs` the object needs only an
//! empty authValue, so the TPM binding is all it has.
//!
//! Unsealing uses a session salted with the storage key, with the response
//! encrypted: the master key never crosses the bus to a discrete TPM in clear.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tss_esapi::structures::SensitiveData;
use zeroize::Zeroizing;

use super::pcrs::{BankValues, PcrSelection};
use super::seal_policy::{sealed_template, Branch};
use super::{private_of, private_text, public_of, public_text, TpmBackend};
use crate::backend::Failure;
use crate::error::Error;
use edgeid_attest::Bank;

/// The sealed master key's file, in the TPM store's directory (key blobs are
/// `<base64url id>.blob`: this name is none of them).
const SEALED_FILE: &str = "master-key.sealed";
/// Format of that file; bump when the layout changes.
const FILE_FORMAT: u32 = 1;
/// The master key's length.
const MASTER_LEN: usize = 32;

/// `master-key.sealed`: the TPM's blobs of the data object and what it is
/// sealed to. Nothing in it is secret without this TPM.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedFile {
    format: u32,
    /// TPM2B_PUBLIC contents (TPMT_PUBLIC), base64.
    public: String,
    /// TPM2B_PRIVATE contents, base64.
    private: String,
    /// The PCRs it is sealed to (empty: none), and their values then (hex),
    /// to say which changed.
    #[serde(default)]
    pcrs: BTreeMap<String, BTreeMap<u32, String>>,
}

/// What a re-seal did, for the operator.
#[derive(Debug, Clone)]
pub struct Resealed {
    /// The file written.
    pub path: PathBuf,
    /// The PCRs it is sealed to now, with their values.
    pub pcrs: Vec<(Bank, BankValues)>,
}

impl TpmBackend {
    fn sealed_path(&self) -> PathBuf {
        self.dir.join(SEALED_FILE)
    }

    /// The software store's master key. On first use it is made — or taken
    /// from `legacy` (the `master_key_file` a store used before), which is
    /// then removed — and sealed to `pcrs` (or to no PCR). Sealed to other
    /// PCRs than `pcrs` now names, it is sealed again to those.
    pub async fn master_key(
        &self,
        pcrs: Option<&PcrSelection>,
        legacy: &Path,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let path = self.sealed_path();
        let Some(file) = read_sealed(&path)? else {
            let key = match read_legacy(legacy)? {
                Some(key) => key,
                None => {
                    let mut key = Zeroizing::new(vec![0u8; MASTER_LEN]);
                    aws_lc_rs::rand::fill(&mut key)
                        .map_err(|_| Error::Internal("the random generator failed".into()))?;
                    key
                }
            };
            self.seal_master(&key, pcrs).await?;
            // Read back from disk and unsealed once before the only other copy goes.
            let written = read_sealed(&path)?.ok_or_else(|| {
                Error::Setup(format!(
                    "{} is gone right after it was written",
                    path.display()
                ))
            })?;
            let back = self.unseal_master(&written, Branch::Pcrs).await?;
            if back.as_slice() != key.as_slice() {
                return Err(Error::Setup(format!(
                    "the master key sealed in {} does not unseal to itself; nothing was removed",
                    path.display()
                )));
            }
            remove_legacy(legacy, &key);
            tracing::info!(path = %path.display(), pcrs = %shown_selection(pcrs), "sealed the software store's master key to the TPM");
            return Ok(key);
        };
        let key = self.unseal_master(&file, Branch::Pcrs).await?;
        remove_legacy(legacy, &key);
        if selection_of(&file)? != pcrs.cloned() {
            self.seal_master(&key, pcrs).await?;
            tracing::info!(pcrs = %shown_selection(pcrs), "sealed the software store's master key again, to the PCRs the config names now");
        }
        Ok(key)
    }

    /// Recovery after a PCR change: unseals the master key with the TPM
    /// owner's authorization and seals it to the PCRs as they are now
    /// (`pcrs`, or those it was sealed to).
    pub async fn reseal_master_key(&self, pcrs: Option<&PcrSelection>) -> Result<Resealed, Error> {
        let path = self.sealed_path();
        let file = read_sealed(&path)?.ok_or_else(|| {
            Error::Setup(format!(
                "{} does not exist: no master key is sealed in this TPM",
                path.display()
            ))
        })?;
        let pcrs = match pcrs {
            Some(p) => Some(p.clone()),
            None => selection_of(&file)?,
        };
        let key = match self.unseal_master(&file, Branch::Pcrs).await {
            Ok(key) => key,
            Err(_) => self.unseal_master(&file, Branch::Owner).await?,
        };
        let values = self.seal_master(&key, pcrs.as_ref()).await?;
        Ok(Resealed { path, pcrs: values })
    }

    /// Seals `key` to `pcrs` at their current values; writes the file.
    async fn seal_master(
        &self,
        key: &Zeroizing<Vec<u8>>,
        pcrs: Option<&PcrSelection>,
    ) -> Result<Vec<(Bank, BankValues)>, Error> {
        let sensitive = SensitiveData::try_from(key.to_vec())
            .map_err(|e| Error::Internal(format!("master key: {e}")))?;
        let pcrs = pcrs.cloned();
        let (public, private, values) = self
            .run(move |tpm| {
                let (policy, values) = match &pcrs {
                    Some(pcrs) => {
                        let values = tpm.read_pcrs(pcrs)?;
                        (Some(tpm.policy(pcrs, &values)?), values)
                    }
                    None => (None, Vec::new()),
                };
                let template = sealed_template(policy).map_err(Failure::Request)?;
                let primary = tpm.primary;
                let created = tpm
                    .with_room(|ctx| {
                        ctx.create(
                            primary,
                            template.clone(),
                            None,
                            Some(sensitive.clone()),
                            None,
                            None,
                        )
                    })
                    .map_err(|e| tpm.classify(e, "the TPM refused to seal the master key"))?;
                Ok((created.out_public, created.out_private, values))
            })
            .await?;
        let file = SealedFile {
            format: FILE_FORMAT,
            public: public_text(&public)?,
            private: private_text(&private),
            pcrs: values
                .iter()
                .map(|(bank, values)| {
                    (
                        bank.name().to_owned(),
                        values.iter().map(|(i, v)| (*i, hex::encode(v))).collect(),
                    )
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::Internal(format!("sealed master key file: {e}")))?;
        let path = self.sealed_path();
        edgeid_common::fs::write_atomic(&path, &bytes, 0o600)
            .map_err(|e| Error::Setup(format!("cannot write {}: {e}", path.display())))?;
        Ok(values)
    }

    /// The master key of `file` (as read from the sealed file), unsealed
    /// through `branch`; refused with which PCRs changed when they did.
    async fn unseal_master(
        &self,
        file: &SealedFile,
        branch: Branch,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let path = self.sealed_path();
        let bad = |what: &str| {
            Error::Setup(format!(
                "{} is damaged ({what}); restore it from a backup of this device",
                path.display()
            ))
        };
        let public = public_of(&file.public).ok_or_else(|| bad("public"))?;
        let private = private_of(&file.private).ok_or_else(|| bad("private"))?;
        let pcrs = selection_of(file)?;
        let sealed = match &pcrs {
            Some(p) => sealed_values(file, p).map_err(|_| bad("PCR values"))?,
            None => Vec::new(),
        };
        let shown = path.display().to_string();
        let unsealed = self
            .run(move |tpm| {
                let primary = tpm.primary;
                let object = tpm
                    .with_room(|ctx| ctx.load(primary, private.clone(), public.clone()))
                    .map_err(|e| {
                        tpm.classify(e, &format!(
                            "{shown} does not load in this TPM: it was sealed by another TPM, or this TPM's storage key (tpm.primary_handle) was replaced. A copy of the disk opens nothing without its TPM"
                        ))
                    })?;
                let result = match &pcrs {
                    Some(p) => tpm.unseal_with(object, Some((p, &sealed)), branch),
                    None => tpm.unseal_with(object, None, branch),
                };
                let _ = tpm.ctx.flush_context(object.into());
                match result {
                    Ok(data) => Ok(data),
                    Err(e) => {
                        // Say which PCRs moved, if any did.
                        let changed = match &pcrs {
                            Some(p) if branch == Branch::Pcrs => changed_pcrs(&sealed, &tpm.read_pcrs(p)?),
                            _ => Vec::new(),
                        };
                        if changed.is_empty() {
                            Err(tpm.classify(e, "the TPM refused to unseal the master key"))
                        } else {
                            Err(Failure::Request(Error::Setup(format!(
                                "the software store's master key is sealed to PCRs that have changed since: {}. If the change is expected (a firmware, boot loader or kernel update), stop keyd, run `edgeidctl key reseal` as root (it unseals with the TPM owner's authorization, tpm.owner_auth_file, and seals to the PCRs as they are now), and start keyd; if it is not, this device is not running what it ran when the key was sealed",
                                changed.join("; ")
                            ))))
                        }
                    }
                }
            })
            .await?;
        if unsealed.len() != MASTER_LEN {
            return Err(bad("not a master key"));
        }
        Ok(unsealed)
    }
}

fn read_sealed(path: &Path) -> Result<Option<SealedFile>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Setup(format!("cannot read {}: {e}", path.display()))),
    };
    let file: SealedFile = serde_json::from_slice(&bytes).map_err(|e| {
        Error::Setup(format!(
            "{} is damaged ({e}); restore it from a backup of this device",
            path.display()
        ))
    })?;
    if file.format != FILE_FORMAT {
        return Err(Error::Setup(format!(
            "{} has format {}; this keyd reads {FILE_FORMAT}",
            path.display(),
            file.format
        )));
    }
    Ok(Some(file))
}

/// The PCRs a sealed file names, checked as a quote's are.
fn selection_of(file: &SealedFile) -> Result<Option<PcrSelection>, Error> {
    if file.pcrs.is_empty() {
        return Ok(None);
    }
    let banks: Vec<(String, Vec<u32>)> = file
        .pcrs
        .iter()
        .map(|(bank, values)| (bank.clone(), values.keys().copied().collect()))
        .collect();
    PcrSelection::new(&banks)
        .map(Some)
        .map_err(|e| Error::Setup(format!("the sealed master key's PCRs: {e}")))
}

/// The values a sealed file records for `pcrs`, in the selection's order.
fn sealed_values(file: &SealedFile, pcrs: &PcrSelection) -> Result<Vec<(Bank, BankValues)>, ()> {
    let mut out = Vec::new();
    for (bank, indexes) in pcrs.banks() {
        let recorded = file.pcrs.get(bank.name()).ok_or(())?;
        let mut values = Vec::new();
        for index in indexes {
            let value = recorded.get(index).ok_or(())?;
            values.push((*index, hex::decode(value).map_err(|_| ())?));
        }
        out.push((*bank, values));
    }
    Ok(out)
}

/// `sha256:7 (sealed 00…, now 3f…)` for each PCR whose value moved.
fn changed_pcrs(sealed: &[(Bank, BankValues)], now: &[(Bank, BankValues)]) -> Vec<String> {
    let mut changed = Vec::new();
    for (bank, values) in sealed {
        for (index, then) in values {
            let current = now
                .iter()
                .filter(|(b, _)| b == bank)
                .flat_map(|(_, values)| values.iter())
                .find(|(i, _)| i == index)
                .map(|(_, v)| v.clone());
            if current.as_deref() != Some(then.as_slice()) {
                changed.push(format!(
                    "{}:{index} (sealed {}, now {})",
                    bank.name(),
                    hex::encode(then),
                    current
                        .map(hex::encode)
                        .unwrap_or_else(|| "unreadable".into())
                ));
            }
        }
    }
    changed
}

fn shown_selection(pcrs: Option<&PcrSelection>) -> String {
    match pcrs {
        None => "none".into(),
        Some(p) => p
            .banks()
            .iter()
            .map(|(bank, indexes)| {
                let list: Vec<String> = indexes.iter().map(u32::to_string).collect();
                format!("{}:{}", bank.name(), list.join(","))
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// The key of a `master_key_file` a store used before it was sealed.
fn read_legacy(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            if bytes.len() != MASTER_LEN {
                return Err(Error::Setup(format!(
                    "master key {} is {} bytes, not {MASTER_LEN}: it cannot be sealed",
                    path.display(),
                    bytes.len()
                )));
            }
            Ok(Some(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Setup(format!(
            "cannot read master key {}: {e}",
            path.display()
        ))),
    }
}

/// Removes the old master key file once the sealed key is the same key: a
/// copy left in a file would make sealing pointless.
fn remove_legacy(path: &Path, key: &Zeroizing<Vec<u8>>) {
    match read_legacy(path) {
        Ok(Some(old)) if old.as_slice() == key.as_slice() => match std::fs::remove_file(path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed the master key file: the key is sealed in the TPM now")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the master key is sealed in the TPM, but its old file cannot be removed: remove it, or sealing protects nothing")
            }
        },
        Ok(Some(_)) => {
            tracing::warn!(path = %path.display(), "a master key file lies beside the sealed master key and holds another key; it is not used")
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot check the old master key file"),
    }
}
