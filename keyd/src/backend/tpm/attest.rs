//! The TPM speaking for the device. keyd makes one attestation key (AK) — a
//! restricted ECDSA P-256 signing key, fixedTPM, under the storage key — the
//! first time it is asked for, and keeps its blobs beside the other keys'
//! (under a name no key id can take). With it the TPM:
//! - proves the AK is in the same TPM as the EK (TPM2_ActivateCredential of
//!   a credential a verifier made with nothing but the EK public and AK name);
//! - quotes PCRs over a verifier's nonce (TPM2_Quote);
//! - certifies that a keyd key lives in this TPM (TPM2_Certify).
//!
//! A restricted key signs only what the TPM itself made (TPMS_ATTEST, which
//! starts with TPM_GENERATED_VALUE): keyd cannot be made to sign a forged
//! quote with it, whatever it is sent.

use std::sync::Arc;

use aws_lc_rs::digest;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::structures::{
    Attest, AttestInfo, Data, EccPoint, EccScheme, EncryptedSecret, HashScheme, IdObject,
    KeyDerivationFunctionScheme, Public, PublicBuilder, PublicEccParametersBuilder, Signature,
    SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::traits::Marshall;

use super::event_logs::{event_logs, EventLog};
use super::pcrs::{BankValues, PcrSelection};
use super::{left_pad, spki_of, tpm2b_public, StoredKey, Tpm, TpmBackend};
use crate::api::KeyPairSpec;
use crate::backend::encoding::ecdsa_der;
use crate::backend::{Failure, KeyKind};
use crate::error::Error;
use crate::handle::KeyRef;
use crate::key_id::KeyId;
use edgeid_attest::Bank;

/// The AK's blob file, in the TPM store's directory. Key files are named
/// `<base64url id>.blob`: this name is none of them.
const AK_FILE: &str = "attestation-key.ak";
/// The AK's id inside keyd (for its authValue and the loaded-key cache);
/// key ids hold no spaces, so no caller's key can be it.
const AK_ID: &str = "tpm attestation key";

/// Shortest and longest nonce a verifier may send (TPM2B_DATA holds 64).
pub const NONCE_LEN: std::ops::RangeInclusive<usize> = 8..=64;
/// The attestation key's public parts.
#[derive(Debug, Clone)]
pub struct AttestationKey {
    /// TPM2B_PUBLIC, marshalled.
    pub public: Vec<u8>,
    /// SubjectPublicKeyInfo, DER.
    pub spki: Vec<u8>,
    /// Its TPM name: nameAlg (SHA-256) ‖ SHA-256(TPMT_PUBLIC), what
    /// `tpm2_makecredential -n` takes.
    pub name: Vec<u8>,
}

/// The TPM's clock when it signed (TPMS_CLOCK_INFO and firmware version).
#[derive(Debug, Clone, Copy)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since its clock was last set.
    pub clock: u64,
    /// TPM resets (reboots) so far.
    pub reset_count: u32,
    /// Restarts (resume from hibernation) since the last reset.
    pub restart_count: u32,
    /// Whether `clock` has never gone back.
    pub safe: bool,
    /// The TPM's firmware version.
    pub firmware_version: u64,
}

/// A quote and what a verifier needs beside it.
#[derive(Debug, Clone)]
pub struct Quote {
    /// TPMS_ATTEST, marshalled: what the AK signed.
    pub attest: Vec<u8>,
    /// The AK's signature of `attest`.
    pub signature: AkSignature,
    /// The quoted PCRs' values, per bank in the selection's order; their
    /// digest is the one in `attest`.
    pub pcrs: Vec<(Bank, BankValues)>,
    /// From `attest`, decoded.
    pub clock: ClockInfo,
    /// The firmware's event log.
    pub firmware_log: EventLog,
    /// IMA's measurement list, from the offset asked for.
    pub ima_log: EventLog,
}

/// The AK's signature, in the two forms verifiers read.
#[derive(Debug, Clone)]
pub struct AkSignature {
    /// TPMT_SIGNATURE, marshalled (what tpm2-tools read).
    pub tpmt: Vec<u8>,
    /// ECDSA DER over SHA-256 of what was signed (what everything else reads).
    pub der: Vec<u8>,
}

/// A TPM2_Certify of a key by the AK.
#[derive(Debug, Clone)]
pub struct Certification {
    /// TPMS_ATTEST (TPM_ST_ATTEST_CERTIFY), marshalled.
    pub attest: Vec<u8>,
    /// The AK's signature of `attest`.
    pub signature: AkSignature,
    /// The certified key's TPM2B_PUBLIC: its name (in `attest`) is the hash of it.
    pub public: Vec<u8>,
    /// The certified key's name.
    pub name: Vec<u8>,
}

impl TpmBackend {
    /// The AK, made and saved the first time.
    async fn attestation_key_blob(&self) -> Result<Arc<StoredKey>, Error> {
        if let Some(ak) = self.ak.read().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(ak);
        }
        let _writing = self.writes.lock().await;
        if let Some(ak) = self.ak.read().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(ak);
        }
        let id = KeyId::reserved(AK_ID);
        let path = self.dir.join(AK_FILE);
        let ak = match self.read_blob(&id, &path).await? {
            Some(ak) => ak,
            None => {
                let kind = KeyKind::Pair(KeyPairSpec::EcP256);
                let made = self.make(&id, kind, ak_template()?, None).await?;
                let ak = Arc::new(self.write_made(&id, kind, made, &path)?);
                tracing::info!(file = %path.display(), "created the TPM attestation key");
                ak
            }
        };
        *self.ak.write().unwrap_or_else(|p| p.into_inner()) = Some(ak.clone());
        Ok(ak)
    }

    /// `GET /v1/tpm/ak`: the AK's public parts (made on first use).
    pub async fn attestation_key(&self) -> Result<AttestationKey, Error> {
        let ak = self.attestation_key_blob().await?;
        Ok(AttestationKey {
            public: tpm2b_public(&ak.public)?,
            spki: spki_of(&ak.public)?,
            name: name_of(&ak.public)?,
        })
    }

    /// `POST /v1/tpm/ak/activate`: the secret of a credential made for this
    /// TPM's EK and the AK's name (`tpm2_makecredential`'s output file, or
    /// its TPM2B_ID_OBJECT ‖ TPM2B_ENCRYPTED_SECRET). Only this TPM can.
    pub async fn activate_attestation_key(
        &self,
        credential: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
        let (blob, secret) = parse_credential(credential)?;
        let ak = self.attestation_key_blob().await?;
        let digest = self
            .run(move |tpm| {
                let handle = tpm.load_alone(&ak)?;
                tpm.ctx.clear_sessions();
                let activated = tpm.activate_credential(handle, &blob, &secret);
                tpm.ctx.set_sessions((
                    Some(tss_esapi::interface_types::session_handles::AuthSession::Password),
                    None,
                    None,
                ));
                activated.map_err(|e| {
                    tpm.classify(
                        e,
                        "the TPM refused the credential (was it made for this TPM's endorsement key and this attestation key's name?)",
                    )
                })
            })
            .await?;
        Ok(zeroize::Zeroizing::new(digest.value().to_vec()))
    }

    /// `POST /v1/tpm/quote`: the AK's quote of `pcrs` over `nonce`, with the
    /// PCR values it covers and the event logs (IMA's from `ima_offset`).
    pub async fn quote(
        &self,
        nonce: &[u8],
        pcrs: &PcrSelection,
        ima_offset: u64,
    ) -> Result<Quote, Error> {
        let nonce = nonce_data(nonce)?;
        let ak = self.attestation_key_blob().await?;
        let pcrs = pcrs.clone();
        let mut quote = self.run(move |tpm| tpm.quote(&ak, &nonce, &pcrs)).await?;
        let paths = self.event_logs.clone();
        (quote.firmware_log, quote.ima_log) =
            tokio::task::spawn_blocking(move || event_logs(&paths, ima_offset))
                .await
                .map_err(|e| Error::Internal(format!("event log task failed: {e}")))?;
        Ok(quote)
    }

    /// `POST /v1/tpm/certify`: the AK's TPM2_Certify of key `key` (in this
    /// store), over `nonce` if given.
    pub async fn certify(&self, key: &KeyRef, nonce: &[u8]) -> Result<Certification, Error> {
        let nonce = if nonce.is_empty() {
            Data::default()
        } else {
            nonce_data(nonce)?
        };
        let stored = self.resolve(key).await?;
        let ak = self.attestation_key_blob().await?;
        let (public, name) = (tpm2b_public(&stored.public)?, name_of(&stored.public)?);
        let (attest, signature) = self
            .run(move |tpm| tpm.certify(&stored, &ak, &nonce))
            .await?;
        Ok(Certification {
            attest,
            signature,
            public,
            name,
        })
    }
}

impl Tpm {
    /// Loads `key` with nothing else of keyd's loaded: the EK helpers need
    /// object slots of their own on a TPM without a resource manager.
    fn load_alone(&mut self, key: &StoredKey) -> Result<tss_esapi::handles::KeyHandle, Failure> {
        let handle = self.load(key)?;
        while self.loaded.len() > 1 {
            if let Some((_, _, old)) = self.loaded.pop_front() {
                let _ = self.ctx.flush_context(old.into());
            }
        }
        Ok(handle)
    }

    fn quote(
        &mut self,
        ak: &StoredKey,
        nonce: &Data,
        pcrs: &PcrSelection,
    ) -> Result<Quote, Failure> {
        let selection = pcrs.to_tpm()?;
        // A PCR extended between the quote and the read would make the values
        // disagree with the signed digest: quote again, a few times.
        for _ in 0..4 {
            let handle = self.load(ak)?;
            let (attest, signature) = self
                .ctx
                .quote(
                    handle,
                    nonce.clone(),
                    SignatureScheme::Null,
                    selection.clone(),
                )
                .map_err(|e| self.classify(e, "the TPM refused to quote"))?;
            let values = self.read_pcrs(pcrs)?;
            let all: Vec<u8> = values
                .iter()
                .flat_map(|(_, bank)| bank.iter().flat_map(|(_, v)| v.iter().copied()))
                .collect();
            let AttestInfo::Quote { info } = attest.attested() else {
                return Err(Failure::internal(
                    "TPM2_Quote returned another kind of attestation",
                ));
            };
            // The AK's scheme is ECDSA-SHA256, so the quote's digest is SHA-256.
            if digest::digest(&digest::SHA256, &all).as_ref() != info.pcr_digest().value() {
                continue;
            }
            return Ok(Quote {
                clock: clock_of(&attest),
                attest: marshal(&attest)?,
                signature: signature_forms(&signature)?,
                pcrs: values,
                firmware_log: EventLog::Unavailable(String::new()),
                ima_log: EventLog::Unavailable(String::new()),
            });
        }
        Err(Failure::Request(Error::Unavailable {
            backend: "tpm",
            reason: "the PCRs kept changing while they were quoted; ask again".into(),
        }))
    }

    fn certify(
        &mut self,
        key: &StoredKey,
        ak: &StoredKey,
        nonce: &Data,
    ) -> Result<(Vec<u8>, AkSignature), Failure> {
        let object = self.load(key)?;
        let signer = self.load(ak)?;
        if !self.loaded.iter().any(|(_, _, h)| *h == object) {
            return Err(Failure::Request(Error::BadRequest(
                "certifying a key needs two keys loaded at once: set tpm.loaded_keys to 2 or more"
                    .into(),
            )));
        }
        let password = Some(tss_esapi::interface_types::session_handles::AuthSession::Password);
        // The key authorizes in the admin role, the AK in the user role:
        // both by their authValue.
        let (attest, signature) = self
            .ctx
            .execute_with_sessions((password, password, None), |c| {
                c.certify(object.into(), signer, nonce.clone(), SignatureScheme::Null)
            })
            .map_err(|e| self.classify(e, "the TPM refused to certify the key"))?;
        Ok((marshal(&attest)?, signature_forms(&signature)?))
    }
}

/// The AK template: restricted ECDSA-SHA256 on P-256, made in the TPM,
/// used with its authValue (what `tpm2_createak -G ecc` makes, but under the
/// storage key instead of the EK, so it loads like keyd's other keys).
pub fn ak_template() -> Result<Public, Error> {
    let bad = |e: tss_esapi::Error| Error::Internal(format!("cannot build the AK template: {e}"));
    let attributes = ObjectAttributesBuilder::new()
        .with_restricted(true)
        .with_sign_encrypt(true)
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .build()
        .map_err(bad)?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new()
                .with_symmetric(SymmetricDefinitionObject::Null)
                .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
                .with_curve(EccCurve::NistP256)
                .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                .with_is_signing_key(true)
                .with_restricted(true)
                .build()
                .map_err(bad)?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(bad)
}

/// A key's TPM name: nameAlg ‖ H(TPMT_PUBLIC).
pub fn name_of(public: &Public) -> Result<Vec<u8>, Error> {
    let body = public
        .marshall()
        .map_err(|e| Error::Internal(format!("cannot marshal a TPM public: {e}")))?;
    let (alg, hash) = match public.name_hashing_algorithm() {
        HashingAlgorithm::Sha256 => (0x000bu16, &digest::SHA256),
        HashingAlgorithm::Sha384 => (0x000c, &digest::SHA384),
        other => {
            return Err(Error::Internal(format!(
                "a TPM key with name algorithm {other:?}, which keyd does not make"
            )))
        }
    };
    Ok([&alg.to_be_bytes()[..], digest::digest(hash, &body).as_ref()].concat())
}

fn nonce_data(nonce: &[u8]) -> Result<Data, Error> {
    if !NONCE_LEN.contains(&nonce.len()) {
        return Err(Error::BadRequest(format!(
            "a nonce is {}-{} bytes, not {}",
            NONCE_LEN.start(),
            NONCE_LEN.end(),
            nonce.len()
        )));
    }
    Data::try_from(nonce.to_vec()).map_err(|_| Error::BadRequest("the nonce is too long".into()))
}

fn clock_of(attest: &Attest) -> ClockInfo {
    let clock = attest.clock_info();
    ClockInfo {
        clock: clock.clock(),
        reset_count: clock.reset_count(),
        restart_count: clock.restart_count(),
        safe: clock.safe(),
        firmware_version: attest.firmware_version(),
    }
}

fn marshal(attest: &Attest) -> Result<Vec<u8>, Failure> {
    attest
        .marshall()
        .map_err(|e| Failure::internal(&format!("cannot marshal TPMS_ATTEST: {e}")))
}

/// The AK's signature as TPMT_SIGNATURE (what tpm2-tools read) and as
/// ECDSA DER (what everything else reads).
fn signature_forms(signature: &Signature) -> Result<AkSignature, Failure> {
    let tpmt = signature
        .marshall()
        .map_err(|e| Failure::internal(&format!("cannot marshal TPMT_SIGNATURE: {e}")))?;
    let Signature::EcDsa(ecdsa) = signature else {
        return Err(Failure::internal(
            "the AK made a signature other than ECDSA",
        ));
    };
    let mut raw = left_pad(ecdsa.signature_r().value(), 32).map_err(Failure::Request)?;
    raw.extend(left_pad(ecdsa.signature_s().value(), 32).map_err(Failure::Request)?);
    let der = ecdsa_der(KeyKind::Pair(KeyPairSpec::EcP256), &raw).map_err(Failure::Request)?;
    Ok(AkSignature { tpmt, der })
}

/// tpm2-tools' credential file starts with this magic and version 1.
const CREDENTIAL_MAGIC: [u8; 4] = [0xBA, 0xDC, 0xC0, 0xDE];

/// A credential as `tpm2_makecredential -o` writes it (magic, version,
/// then the two structures) or as the bare `TPM2B_ID_OBJECT ‖
/// TPM2B_ENCRYPTED_SECRET`. Public for the fuzz target: these bytes come
/// from the verifier, over the API.
pub fn parse_credential(bytes: &[u8]) -> Result<(IdObject, EncryptedSecret), Error> {
    let mut rest = match bytes.strip_prefix(&CREDENTIAL_MAGIC[..]) {
        Some(tail) => match tail.split_first_chunk::<4>() {
            Some((version, tail)) if u32::from_be_bytes(*version) == 1 => tail,
            _ => {
                return Err(Error::BadRequest(
                    "the credential file has a version other than 1".into(),
                ))
            }
        },
        None => bytes,
    };
    let mut next = |what: &str| -> Result<Vec<u8>, Error> {
        let bad = || Error::BadRequest(format!("the credential is truncated at its {what}"));
        let (size, tail) = rest.split_first_chunk::<2>().ok_or_else(bad)?;
        let size = usize::from(u16::from_be_bytes(*size));
        if size == 0 || tail.len() < size {
            return Err(bad());
        }
        let (field, tail) = tail.split_at(size);
        rest = tail;
        Ok(field.to_vec())
    };
    let blob = IdObject::try_from(next("credential blob")?)
        .map_err(|_| Error::BadRequest("the credential blob is too large".into()))?;
    let secret = EncryptedSecret::try_from(next("encrypted secret")?)
        .map_err(|_| Error::BadRequest("the credential's encrypted secret is too large".into()))?;
    if !rest.is_empty() {
        return Err(Error::BadRequest(
            "the credential has bytes after its encrypted secret".into(),
        ));
    }
    Ok((blob, secret))
}
