//! The provisioning service's side of TPM attestation (what Azure DPS does
//! with a device's endorsement and storage keys), done by a second, separate
//! swtpm: it makes a credential only the device's TPM can activate, and
//! duplicates an HMAC key of known bytes so that only that TPM can import it.

use std::str::FromStr;

use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::{CommandCode, SessionType};
use tss_esapi::handles::SessionHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, Digest, EccPoint, KeyedHashScheme, Public, PublicBuilder, PublicEccParametersBuilder,
    PublicKeyedHashParameters, SensitiveData, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;

use crate::Swtpm;

/// How the peer builds the blob; `Tampered` flips a byte of the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrapping {
    Honest,
    Tampered,
}

/// The activation blob for the TPM whose EK and storage key publics
/// (TPM2B_PUBLIC) are given, wrapping the HMAC-SHA256 key `key`, laid out as
/// DPS sends it: TPM2B_ID_OBJECT ‖ TPM2B_ENCRYPTED_SECRET ‖ TPM2B_PRIVATE ‖
/// TPM2B_ENCRYPTED_SECRET ‖ TPM2B_PUBLIC ‖ u16 0.
pub fn wrap_hmac_key(
    peer: &Swtpm,
    endorsement: &[u8],
    storage: &[u8],
    key: &[u8],
    how: Wrapping,
) -> Vec<u8> {
    let tcti = TctiNameConf::from_str(&peer.tcti()).expect("peer TCTI");
    let mut ctx = Context::new(tcti).expect("connect to the peer swtpm");
    // An HMAC key of known bytes that may be duplicated (and nothing else).
    let duplicate_only = {
        let trial = policy_session(&mut ctx, SessionType::Trial);
        ctx.policy_command_code(trial, CommandCode::Duplicate)
            .expect("PolicyCommandCode");
        let digest = ctx.policy_get_digest(trial).expect("policy digest");
        end(&mut ctx, trial);
        digest
    };
    ctx.set_sessions((Some(AuthSession::Password), None, None));
    let parent = ctx
        .create_primary(
            Hierarchy::Owner,
            peer_storage_template(),
            None,
            None,
            None,
            None,
        )
        .expect("peer storage key")
        .key_handle;
    let created = ctx
        .create(
            parent,
            duplicable_hmac_template(duplicate_only),
            None,
            Some(SensitiveData::try_from(key.to_vec()).expect("key size")),
            None,
            None,
        )
        .expect("create the HMAC key");
    let object = ctx
        .load(parent, created.out_private, created.out_public.clone())
        .expect("load the HMAC key");
    // swtpm has no resource manager and holds three objects: keep few loaded.
    let _ = ctx.flush_context(parent.into());
    ctx.clear_sessions();
    let public_of = |tpm2b: &[u8]| Public::unmarshall(&tpm2b[2..]).expect("TPM2B_PUBLIC");
    let ek = ctx
        .load_external_public(public_of(endorsement), Hierarchy::Null)
        .expect("load the device EK");
    let srk = ctx
        .load_external_public(public_of(storage), Hierarchy::Null)
        .expect("load the device storage key");
    let srk_name = ctx.tr_get_name(srk.into()).expect("storage key name");

    // The inner wrapping key is the credential: recovering it takes the EK.
    let inner = ctx.get_random(16).expect("random inner key");
    let (credential, secret) = ctx
        .make_credential(ek, inner.clone(), srk_name)
        .expect("MakeCredential");
    let _ = ctx.flush_context(ek.into());

    let session = policy_session(&mut ctx, SessionType::Policy);
    ctx.policy_command_code(session, CommandCode::Duplicate)
        .expect("PolicyCommandCode");
    let (_, duplicate, seed) = ctx
        .execute_with_sessions((Some(session.into()), None, None), |c| {
            c.duplicate(
                object.into(),
                srk.into(),
                Some(Data::try_from(inner.value().to_vec()).expect("inner key")),
                SymmetricDefinitionObject::AES_128_CFB,
            )
        })
        .expect("Duplicate");
    for handle in [object, srk] {
        let _ = ctx.flush_context(handle.into());
    }

    let mut credential = credential.value().to_vec();
    if how == Wrapping::Tampered {
        let last = credential.len() - 1;
        credential[last] ^= 1;
    }
    let public = created.out_public.marshall().expect("marshal public");
    let mut blob = Vec::new();
    for field in [
        &credential[..],
        secret.value(),
        duplicate.value(),
        seed.value(),
        &public,
    ] {
        blob.extend_from_slice(&u16::try_from(field.len()).expect("size").to_be_bytes());
        blob.extend_from_slice(field);
    }
    blob.extend_from_slice(&[0, 0]);
    blob
}

fn policy_session(ctx: &mut Context, kind: SessionType) -> PolicySession {
    let session = ctx
        .start_auth_session(
            None,
            None,
            None,
            kind,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .expect("StartAuthSession")
        .expect("a session");
    PolicySession::try_from(session).expect("a policy session")
}

fn end(ctx: &mut Context, session: PolicySession) {
    let _ = ctx.flush_context(SessionHandle::from(AuthSession::from(session)).into());
}

/// An ECC storage key: quick to make, and only a parent for the key to duplicate.
fn peer_storage_template() -> Public {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
        .expect("attributes");
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()
            .expect("ecc parameters"),
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .expect("storage template")
}

fn duplicable_hmac_template(policy: Digest) -> Public {
    let attributes = ObjectAttributesBuilder::new()
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .build()
        .expect("attributes");
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(policy)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(
            KeyedHashScheme::HMAC_SHA_256,
        ))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
        .expect("HMAC template")
}
