//! What TPM attestation with a provisioning service (Azure DPS) needs: the
//! endorsement and storage keys' public parts, and the activation of a
//! credential that carries a key wrapped to this TPM.

use std::sync::Arc;

use tss_esapi::abstraction::ek::{create_ek_object, retrieve_ek_pubcert};
use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, DefaultKey};
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{AsymmetricAlgorithm, HashingAlgorithm};
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, Digest, EncryptedSecret, IdObject, KeyedHashScheme, Private, Public,
    PublicKeyedHashParameters, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::traits::UnMarshall;

use super::{spki_of, tpm2b_public, Made, Tpm, TpmBackend};
use crate::api::SymmetricKeyType;
use crate::backend::{new_generation, Failure, KeyKind, KeyRecord};
use crate::error::Error;
use crate::key_id::KeyId;

/// The TPM's endorsement key and storage key, as a provisioning service asks
/// for them (TPM attestation), and the EK certificate if the maker stored one.
#[derive(Debug, Clone)]
pub struct AttestationKeys {
    /// The RSA-2048 EK (TCG default template), as TPM2B_PUBLIC.
    pub endorsement_public: Vec<u8>,
    /// The same key as SubjectPublicKeyInfo DER.
    pub endorsement_spki: Vec<u8>,
    /// The EK certificate (DER) from its NV index, if present.
    pub endorsement_certificate: Option<Vec<u8>>,
    /// keyd's storage key, as TPM2B_PUBLIC.
    pub storage_public: Vec<u8>,
    /// The same key as SubjectPublicKeyInfo DER.
    pub storage_spki: Vec<u8>,
}

impl TpmBackend {
    /// The endorsement and storage keys' public parts.
    pub async fn attestation_keys(&self) -> Result<AttestationKeys, Error> {
        let (ek, certificate, srk) = self.run(|tpm| tpm.attestation_keys()).await?;
        Ok(AttestationKeys {
            endorsement_public: tpm2b_public(&ek)?,
            endorsement_spki: spki_of(&ek)?,
            endorsement_certificate: certificate,
            storage_public: tpm2b_public(&srk)?,
            storage_spki: spki_of(&srk)?,
        })
    }
}

impl Tpm {
    fn attestation_keys(&mut self) -> Result<(Public, Option<Vec<u8>>, Public), Failure> {
        // The EK helpers start sessions of their own (StartAuthSession refuses
        // our password session) and leave none set: clear ours, restore it after.
        self.ctx.clear_sessions();
        let ek = create_ek_object(&mut self.ctx, AsymmetricAlgorithm::Rsa, None::<DefaultKey>);
        self.ctx
            .set_sessions((Some(AuthSession::Password), None, None));
        let ek =
            ek.map_err(|e| self.classify(e, "the TPM refused to create its endorsement key"))?;
        let ek_public = self.ctx.execute_without_session(|c| c.read_public(ek));
        let _ = self.ctx.flush_context(ek.into());
        let (ek_public, _, _) = ek_public
            .map_err(|e| self.classify(e, "the TPM refused to read its endorsement key"))?;
        // No certificate is normal on a TPM whose maker stored none (swtpm).
        self.ctx.clear_sessions();
        let certificate = retrieve_ek_pubcert(
            &mut self.ctx,
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        )
        .ok();
        self.ctx
            .set_sessions((Some(AuthSession::Password), None, None));
        let primary = self.primary;
        let (srk_public, _, _) = self
            .ctx
            .execute_without_session(|c| c.read_public(primary))
            .map_err(|e| self.classify(e, "the TPM refused to read its storage key"))?;
        Ok((ek_public, certificate, srk_public))
    }
}

/// What a provisioning service sends to finish TPM attestation (Azure DPS's
/// `authenticationKey`): a credential made with `TPM2_MakeCredential` for this
/// TPM's EK and bound to its storage key, whose secret is the inner wrapping
/// key of an HMAC key duplicated to the storage key. Only this TPM can take the
/// credential and so unwrap the key: its bytes never exist outside the TPM.
struct ActivationBlob {
    credential: IdObject,
    secret: EncryptedSecret,
    duplicate: Private,
    seed: EncryptedSecret,
    public: Public,
}

/// The layout of the blob: five TPM2B structures, one after another,
/// `TPM2B_ID_OBJECT ‖ TPM2B_ENCRYPTED_SECRET ‖ TPM2B_PRIVATE ‖
/// TPM2B_ENCRYPTED_SECRET ‖ TPM2B_PUBLIC`; DPS appends a 2-byte length of
/// encrypted data it does not use, which is ignored.
fn parse_activation(blob: &[u8]) -> Result<ActivationBlob, Error> {
    let mut rest = blob;
    let mut next = |what: &str| -> Result<Vec<u8>, Error> {
        let bad = || {
            Error::BadRequest(format!(
                "the activation blob is truncated or malformed at its {what}"
            ))
        };
        let (size, tail) = rest.split_first_chunk::<2>().ok_or_else(bad)?;
        let size = usize::from(u16::from_be_bytes(*size));
        if size == 0 || tail.len() < size {
            return Err(bad());
        }
        let (field, tail) = tail.split_at(size);
        rest = tail;
        Ok(field.to_vec())
    };
    let malformed =
        |what: &str| Error::BadRequest(format!("the activation blob's {what} is malformed"));
    let credential =
        IdObject::try_from(next("credential")?).map_err(|_| malformed("credential"))?;
    let secret = EncryptedSecret::try_from(next("credential secret")?)
        .map_err(|_| malformed("credential secret"))?;
    let duplicate =
        Private::try_from(next("wrapped key")?).map_err(|_| malformed("wrapped key"))?;
    let seed = EncryptedSecret::try_from(next("wrapping seed")?)
        .map_err(|_| malformed("wrapping seed"))?;
    let public = Public::unmarshall(&next("key's public area")?)
        .map_err(|_| malformed("key's public area"))?;
    // keyd stores it as an hmac-sha256 key: it must be one.
    let hmac = match &public {
        Public::KeyedHash {
            object_attributes,
            parameters,
            ..
        } => {
            object_attributes.sign_encrypt()
                && !object_attributes.decrypt()
                && [KeyedHashScheme::Null, KeyedHashScheme::HMAC_SHA_256]
                    .iter()
                    .any(|s| *parameters == PublicKeyedHashParameters::new(*s))
        }
        _ => false,
    };
    if !hmac {
        return Err(Error::BadRequest(
            "the wrapped key is not an HMAC-SHA256 signing key".into(),
        ));
    }
    Ok(ActivationBlob {
        credential,
        secret,
        duplicate,
        seed,
        public,
    })
}

impl TpmBackend {
    /// Activates the credential in `blob` with the EK and imports the HMAC key
    /// it unwraps under the storage key, as `id` (replacing a key of that id:
    /// reprovisioning brings a new one). Old handles to `id` stop working.
    pub async fn activate_and_import(&self, id: &KeyId, blob: &[u8]) -> Result<KeyRecord, Error> {
        let blob = Arc::new(parse_activation(blob)?);
        let _writing = self.writes.lock().await;
        let public = blob.public.clone();
        let generation = new_generation()?;
        let auth = self.auth_of(id, &generation)?;
        let (key_id, key_auth) = (id.clone(), auth.clone());
        // Imported with the authValue the service chose (none), then given its own.
        let private = self
            .run(move |tpm| {
                let imported = tpm.activate_and_import(&blob)?;
                tpm.change_auth(&blob.public, &imported, &key_auth, &key_id)
            })
            .await?;
        let made = Made {
            generation,
            public,
            private,
            auth,
        };
        let record = self.save(id, KeyKind::Symmetric(SymmetricKeyType::HmacSha256), made)?;
        tracing::info!(key = %id, "imported a key wrapped to this TPM (credential activated)");
        Ok(record)
    }
}

impl Tpm {
    fn activate_and_import(&mut self, blob: &ActivationBlob) -> Result<Private, Failure> {
        // The EK helper and StartAuthSession refuse our password session.
        self.ctx.clear_sessions();
        let primary = self.primary;
        let inner = self.activate_credential(primary, &blob.credential, &blob.secret);
        self.ctx
            .set_sessions((Some(AuthSession::Password), None, None));
        let inner = inner.map_err(|e| {
            self.classify(
                e,
                "the TPM refused the credential (was it made for this TPM's endorsement and storage keys?)",
            )
        })?;
        let inner = Data::try_from(inner.value().to_vec())
            .map_err(|_| Failure::internal("the credential is not a wrapping key"))?;
        let primary = self.primary;
        self.ctx
            .import(
                primary.into(),
                Some(inner),
                blob.public.clone(),
                blob.duplicate.clone(),
                blob.seed.clone(),
                SymmetricDefinitionObject::AES_128_CFB,
            )
            .map_err(|e| {
                self.classify(
                    e,
                    "the TPM refused to import the wrapped key (was it wrapped to this TPM's storage key?)",
                )
            })
    }

    /// TPM2_ActivateCredential: the EK (authorized by the TCG default EK
    /// policy, PolicySecret(endorsement)) decrypts the credential, and the TPM
    /// checks it names `object` (loaded, its authValue set), which must be in
    /// this TPM. Needs no sessions set on entry.
    pub(super) fn activate_credential(
        &mut self,
        object: KeyHandle,
        credential: &IdObject,
        secret: &EncryptedSecret,
    ) -> Result<Digest, tss_esapi::Error> {
        let ek = create_ek_object(&mut self.ctx, AsymmetricAlgorithm::Rsa, None::<DefaultKey>)?;
        let session = self.ctx.start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        );
        let result = match session {
            Ok(Some(session)) => {
                let activated = self.activate_with(session, object, ek, credential, secret);
                // Ended by the TPM after ActivateCredential unless that failed.
                let _ = self.ctx.flush_context(SessionHandle::from(session).into());
                activated
            }
            Ok(None) => Err(tss_esapi::Error::WrapperError(
                tss_esapi::WrapperErrorKind::WrongValueFromTpm,
            )),
            Err(e) => Err(e),
        };
        let _ = self.ctx.flush_context(ek.into());
        result
    }

    fn activate_with(
        &mut self,
        session: AuthSession,
        object: KeyHandle,
        ek: KeyHandle,
        credential: &IdObject,
        secret: &EncryptedSecret,
    ) -> Result<Digest, tss_esapi::Error> {
        let policy = PolicySession::try_from(session)?;
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.policy_secret(
                    policy,
                    AuthHandle::Endorsement,
                    Default::default(),
                    Default::default(),
                    Default::default(),
                    None,
                )
            })?;
        self.ctx
            .execute_with_sessions((Some(AuthSession::Password), Some(session), None), |c| {
                c.activate_credential(object, ek, credential.clone(), secret.clone())
            })
    }
}
