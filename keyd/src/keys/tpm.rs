//! What only keyd's TPM store does: the keys a provisioning service attests
//! the device with, and the attestation key's proofs (its activation, PCR
//! quotes, key certification) for verifiers.

use std::sync::Arc;

use edgeid_common::authz::Caller;
use edgeid_common::encoding::{Base64Bytes, SecretBytes};

use super::{Holder, Keyd};
use crate::api::*;
use crate::backend::tpm::{EventLog, PcrSelection, TpmBackend};
use crate::backend::BackendKind;
use crate::error::Error;

/// The id a caller must be granted to read the TPM's attestation keys.
pub const ATTESTATION_KEYS_ID: &str = "tpm/attestation-keys";
/// The id a caller must be granted to use the attestation key: read it,
/// activate its credential, quote PCRs and certify keys with it.
pub const QUOTE_ID: &str = "tpm/quote";

impl Keyd {
    /// `GET /v1/tpm/attestation-keys`: the EK (and its certificate) and the
    /// storage key. Granted like a key, as the id `tpm/attestation-keys`.
    pub async fn tpm_attestation_keys(&self, caller: &Caller) -> Result<TpmAttestationKeys, Error> {
        self.authorize(caller, ATTESTATION_KEYS_ID)?;
        let keys = self.tpm()?.attestation_keys().await?;
        let pem = |der: Vec<u8>| pem::encode(&pem::Pem::new("PUBLIC KEY", der));
        Ok(TpmAttestationKeys {
            endorsement_key: TpmPublicKey {
                public: Base64Bytes(keys.endorsement_public),
                pem: pem(keys.endorsement_spki),
            },
            endorsement_certificate: keys.endorsement_certificate.map(Base64Bytes),
            storage_key: TpmPublicKey {
                public: Base64Bytes(keys.storage_public),
                pem: pem(keys.storage_spki),
            },
        })
    }

    /// `POST /v1/tpm/activate`: completes TPM attestation with a provisioning
    /// service: activates the credential it sent and imports the HMAC key it
    /// wraps, as `id` (which must be kept in the TPM store).
    pub async fn tpm_activate(
        &self,
        caller: &Caller,
        req: TpmActivateRequest,
    ) -> Result<HandleResponse, Error> {
        let id = self.authorize(caller, &req.id)?;
        let tpm = self.tpm()?;
        let kind = self.stores.kind_for(&id);
        if kind != BackendKind::Tpm {
            return Err(Error::BadRequest(format!(
                "key '{id}' is kept in the {kind} store; a key imported into the TPM needs an id the TPM store serves ([[backend.override]])"
            )));
        }
        let record = tpm.activate_and_import(&id, &req.blob.0).await?;
        Ok(self.handle_for(id, record.generation, Holder::Grants))
    }

    fn tpm(&self) -> Result<&Arc<TpmBackend>, Error> {
        self.stores
            .tpm
            .as_ref()
            .ok_or_else(|| Error::NotFound("keyd has no TPM configured (a [tpm] table)".into()))
    }

    /// `GET /v1/tpm/ak`: the attestation key (made on first use).
    pub async fn tpm_ak(&self, caller: &Caller) -> Result<TpmAttestationKey, Error> {
        self.authorize(caller, QUOTE_ID)?;
        let ak = self.tpm()?.attestation_key().await?;
        Ok(TpmAttestationKey {
            public: Base64Bytes(ak.public),
            pem: pem::encode(&pem::Pem::new("PUBLIC KEY", ak.spki)),
            name: Base64Bytes(ak.name),
        })
    }

    /// `POST /v1/tpm/ak/activate`: the secret of a credential made for this
    /// TPM's EK and the AK's name, which only this TPM can recover.
    pub async fn tpm_ak_activate(
        &self,
        caller: &Caller,
        req: TpmAkActivateRequest,
    ) -> Result<TpmAkActivateResponse, Error> {
        self.authorize(caller, QUOTE_ID)?;
        let secret = self
            .tpm()?
            .activate_attestation_key(&req.credential.0)
            .await?;
        Ok(TpmAkActivateResponse {
            secret: SecretBytes(secret),
        })
    }

    /// `POST /v1/tpm/quote`: the AK's quote of PCRs over the caller's nonce.
    pub async fn tpm_quote(
        &self,
        caller: &Caller,
        req: TpmQuoteRequest,
    ) -> Result<TpmQuoteResponse, Error> {
        self.authorize(caller, QUOTE_ID)?;
        let banks: Vec<(String, Vec<u32>)> = req.pcrs.into_iter().collect();
        let selection = PcrSelection::new(&banks)?;
        let quote = self
            .tpm()?
            .quote(&req.nonce.0, &selection, req.ima_offset)
            .await?;
        Ok(TpmQuoteResponse {
            attest: Base64Bytes(quote.attest),
            signature: Base64Bytes(quote.signature.tpmt),
            signature_der: Base64Bytes(quote.signature.der),
            pcrs: quote
                .pcrs
                .into_iter()
                .map(|(bank, values)| {
                    let values = values
                        .into_iter()
                        .map(|(index, value)| (index, Base64Bytes(value)))
                        .collect();
                    (bank.name().to_owned(), values)
                })
                .collect(),
            clock: TpmClock {
                clock: quote.clock.clock,
                reset_count: quote.clock.reset_count,
                restart_count: quote.clock.restart_count,
                safe: quote.clock.safe,
                firmware_version: quote.clock.firmware_version,
            },
            event_logs: TpmEventLogs {
                firmware: event_log(quote.firmware_log),
                ima: event_log(quote.ima_log),
            },
        })
    }

    /// `POST /v1/tpm/certify`: the AK's TPM2_Certify of a key in the TPM.
    pub async fn tpm_certify(
        &self,
        caller: &Caller,
        req: TpmCertifyRequest,
    ) -> Result<TpmCertifyResponse, Error> {
        self.authorize(caller, QUOTE_ID)?;
        let (key, _) = self.open_handle(caller, &req.handle)?;
        let kind = self.stores.kind_for(&key.id);
        if kind != BackendKind::Tpm {
            return Err(Error::BadRequest(format!(
                "key '{}' is kept in the {kind} store, not in the TPM: the TPM certifies only its own keys",
                key.id
            )));
        }
        if !key.derivation.is_empty() {
            return Err(Error::BadRequest(format!(
                "a key derived from '{}' is computed outside the TPM: the TPM certifies only its own keys",
                key.id
            )));
        }
        let nonce = req.nonce.map(|n| n.0).unwrap_or_default();
        let certified = self.tpm()?.certify(&key, &nonce).await?;
        Ok(TpmCertifyResponse {
            attest: Base64Bytes(certified.attest),
            signature: Base64Bytes(certified.signature.tpmt),
            signature_der: Base64Bytes(certified.signature.der),
            public: Base64Bytes(certified.public),
            name: Base64Bytes(certified.name),
        })
    }
}

fn event_log(log: EventLog) -> TpmEventLog {
    match log {
        EventLog::Read {
            offset,
            data,
            complete,
        } => TpmEventLog {
            offset,
            data: Some(Base64Bytes(data)),
            complete,
            error: None,
        },
        EventLog::Unavailable(why) => TpmEventLog {
            offset: 0,
            data: None,
            complete: false,
            error: Some(why),
        },
    }
}
