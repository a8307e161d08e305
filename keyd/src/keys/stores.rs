//! The configured stores: which holds each key id, opened as the config says.

use std::collections::HashMap;
use std::sync::Arc;

use edgeid_common::authz::Grants;

use crate::backend::pkcs11::Pkcs11Backend;
use crate::backend::software::SoftwareBackend;
use crate::backend::tpm::{PcrSelection, Resealed, TpmBackend};
use crate::backend::{BackendKind, KeyBackend};
use crate::config::{KeydConfig, MasterKey};
use crate::error::Error;
use crate::key_id::KeyId;

/// The configured stores and which key ids each serves.
pub(super) struct Stores {
    pub(super) default: BackendKind,
    pub(super) overrides: Vec<(Grants, BackendKind)>,
    pub(super) open: HashMap<BackendKind, Arc<dyn KeyBackend>>,
    /// The TPM store again, for what only a TPM does (attestation keys).
    pub(super) tpm: Option<Arc<TpmBackend>>,
    /// Why the software store stays shut: its master key, sealed to the
    /// TPM, does not unseal (PCRs changed, another TPM). keyd still serves
    /// its TPM keys and attestation, so a verifier can see what changed.
    pub(super) locked: Option<String>,
}

impl Stores {
    /// Opens each store the config names, and the TPM wherever there is a
    /// `[tpm]` table. The TPM store opens first when the software store's
    /// master key is sealed to it.
    pub(super) async fn open(config: &KeydConfig) -> Result<Self, Error> {
        let wanted: Vec<BackendKind> = std::iter::once(config.backend.default)
            .chain(config.backend.overrides.iter().map(|o| o.backend))
            .collect();
        let sealed = config.software.master_key == MasterKey::Tpm;
        let seal_pcrs = seal_pcrs(config)?;
        if !sealed && seal_pcrs.is_some() {
            return Err(Error::Setup(
                "software.seal_pcrs needs software.master_key = \"tpm\"".into(),
            ));
        }
        // A [tpm] table opens the TPM even where no store setting names it:
        // attestation and aziot-tpmd's API are the TPM's own.
        let tpm = if wanted.contains(&BackendKind::Tpm) || sealed || config.tpm.is_some() {
            let tpm = config.tpm.as_ref().ok_or_else(|| {
                Error::Setup(if sealed {
                    "software.master_key = \"tpm\" needs a [tpm] table".into()
                } else {
                    "the config names backend \"tpm\" but has no [tpm] table".into()
                })
            })?;
            Some(Arc::new(TpmBackend::open(&config.state_dir, tpm)?))
        } else {
            None
        };
        let mut open: HashMap<BackendKind, Arc<dyn KeyBackend>> = HashMap::new();
        let mut locked = None;
        for kind in wanted {
            if open.contains_key(&kind) {
                continue;
            }
            let store: Arc<dyn KeyBackend> = match (kind, &tpm) {
                (BackendKind::Software, Some(tpm)) if sealed => {
                    let master = match tpm
                        .master_key(seal_pcrs.as_ref(), &config.software.master_key_file)
                        .await
                    {
                        Ok(master) => master,
                        // The TPM answered and will not unseal it (PCRs
                        // changed, another TPM's blob): the store stays shut
                        // (each use says why), the rest serves. A TPM that
                        // does not answer still stops the start.
                        Err(e @ (Error::Setup(_) | Error::BadRequest(_))) => {
                            let why = e.to_string();
                            tracing::error!(reason = %why, "the software store stays locked; keyd serves its TPM keys and attestation and refuses software keys");
                            locked = Some(why);
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    Arc::new(SoftwareBackend::with_master(
                        &config.state_dir,
                        &master,
                        "sealed in the TPM",
                    )?)
                }
                (BackendKind::Software, _) => Arc::new(SoftwareBackend::open(
                    &config.state_dir,
                    &config.software.master_key_file,
                )?),
                (BackendKind::Pkcs11, _) => {
                    let pkcs11 = config.pkcs11.as_ref().ok_or_else(|| {
                        Error::Setup(
                            "the config names backend \"pkcs11\" but has no [pkcs11] table".into(),
                        )
                    })?;
                    Arc::new(Pkcs11Backend::open(pkcs11)?)
                }
                (BackendKind::Tpm, Some(tpm)) => tpm.clone(),
                (BackendKind::Tpm, None) => {
                    return Err(Error::Internal("the TPM store did not open".into()))
                }
            };
            open.insert(kind, store);
        }
        // The TPM store serves the aziot-tpmd auth key even where no
        // backend setting names it (the TPM opened only to seal the
        // software store's master key).
        if let Some(tpm) = &tpm {
            open.entry(BackendKind::Tpm).or_insert_with(|| tpm.clone());
        }
        Ok(Stores {
            default: config.backend.default,
            overrides: config
                .backend
                .overrides
                .iter()
                .map(|o| (o.keys.clone(), o.backend))
                .collect(),
            open,
            tpm,
            locked,
        })
    }

    pub(super) fn kind_for(&self, id: &KeyId) -> BackendKind {
        // aziot-tpmd's auth key is the TPM's by its nature (DPS wrapped it
        // to this TPM's storage key): never another store's.
        if self.tpm.is_some() && id.as_str() == crate::api::aziot::tpmd::AUTH_KEY_ID {
            return BackendKind::Tpm;
        }
        self.overrides
            .iter()
            .find(|(keys, _)| keys.allows(id.as_str()))
            .map_or(self.default, |(_, kind)| *kind)
    }

    pub(super) fn for_id(&self, id: &KeyId) -> Result<&Arc<dyn KeyBackend>, Error> {
        let kind = self.kind_for(id);
        self.open.get(&kind).ok_or_else(|| match &self.locked {
            Some(why) if kind == BackendKind::Software => Error::Unavailable {
                backend: "software",
                reason: format!("locked: {why}"),
            },
            _ => Error::Internal(format!("backend {kind} is not open")),
        })
    }
}

/// `[software] seal_pcrs`, checked as a quote's PCRs are.
fn seal_pcrs(config: &KeydConfig) -> Result<Option<PcrSelection>, Error> {
    if config.software.seal_pcrs.is_empty() {
        return Ok(None);
    }
    let banks: Vec<(String, Vec<u32>)> = config.software.seal_pcrs.clone().into_iter().collect();
    PcrSelection::new(&banks)
        .map(Some)
        .map_err(|e| Error::Setup(format!("software.seal_pcrs: {e}")))
}

/// `edgeidctl key reseal`, with keyd stopped: the sealed master key
/// unsealed (through the TPM owner's authorization if the PCRs moved) and
/// sealed again to the PCRs the config names, at their values now.
pub async fn reseal_master_key(config: &KeydConfig) -> Result<Resealed, Error> {
    if config.software.master_key != MasterKey::Tpm {
        return Err(Error::Setup(
            "this keyd's master key is not sealed to the TPM (software.master_key)".into(),
        ));
    }
    let tpm = config
        .tpm
        .as_ref()
        .ok_or_else(|| Error::Setup("software.master_key = \"tpm\" needs a [tpm] table".into()))?;
    let pcrs = seal_pcrs(config)?;
    TpmBackend::open(&config.state_dir, tpm)?
        .reseal_master_key(pcrs.as_ref())
        .await
}
