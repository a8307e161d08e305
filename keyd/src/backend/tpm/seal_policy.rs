//! The sealed master key's TPM side: its policy, computed by the TPM in
//! trial sessions, and TPM2_Unseal through one of its branches in a salted
//! session whose answer is encrypted.

use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, DigestList, KeyedHashScheme, Public, PublicBuilder, PublicKeyedHashParameters,
    SymmetricDefinition,
};
use tss_esapi::Context;
use zeroize::Zeroizing;

use super::pcrs::{BankValues, PcrSelection};
use super::Tpm;
use crate::backend::Failure;
use crate::error::Error;
use edgeid_attest::Bank;

/// Which of the sealed object's policy branches unseals it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Branch {
    /// The PCRs as sealed (keyd's).
    Pcrs,
    /// The TPM owner's authorization (recovery: `edgeidctl key reseal`).
    Owner,
}

impl Tpm {
    /// The sealed object's policy digest for `pcrs` at `values`, computed by
    /// the TPM in trial sessions.
    pub(super) fn policy(
        &mut self,
        pcrs: &PcrSelection,
        values: &[(Bank, BankValues)],
    ) -> Result<Digest, Failure> {
        let (pcr_branch, owner_branch) = self.branches(pcrs, values)?;
        let refused = |e| Failure::internal(&format!("the TPM refused a trial policy: {e}"));
        let or = self.trial(|ctx, s| {
            ctx.execute_without_session(|c| {
                c.policy_or(s, branch_list(&pcr_branch, &owner_branch)?)
            })
        });
        or.map_err(refused)
    }

    /// The two branches' digests: PolicyPCR of `pcrs` at `values`, and
    /// PolicySecret(owner).
    fn branches(
        &mut self,
        pcrs: &PcrSelection,
        values: &[(Bank, BankValues)],
    ) -> Result<(Digest, Digest), Failure> {
        let selection = pcrs.to_tpm()?;
        let all: Vec<u8> = values
            .iter()
            .flat_map(|(_, bank)| bank.iter().flat_map(|(_, v)| v.iter().copied()))
            .collect();
        let pcr_digest = Digest::try_from(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &all)
                .as_ref()
                .to_vec(),
        )
        .map_err(|e| Failure::internal(&format!("PCR digest: {e}")))?;
        let refused = |e| Failure::internal(&format!("the TPM refused a trial policy: {e}"));
        let pcr_branch = self
            .trial(|ctx, s| {
                ctx.execute_without_session(|c| {
                    c.policy_pcr(s, pcr_digest.clone(), selection.clone())
                })
            })
            .map_err(refused)?;
        let owner_branch = self
            .trial(|ctx, s| {
                ctx.execute_with_session(Some(AuthSession::Password), |c| {
                    policy_secret_owner(c, s).map(|_| ())
                })
            })
            .map_err(refused)?;
        Ok((pcr_branch, owner_branch))
    }

    /// Runs `steps` in a fresh trial session and answers its digest.
    fn trial(
        &mut self,
        steps: impl Fn(&mut Context, PolicySession) -> Result<(), tss_esapi::Error>,
    ) -> Result<Digest, tss_esapi::Error> {
        let session = start_session(&mut self.ctx, None, SessionType::Trial)?;
        let policy = PolicySession::try_from(session)?;
        let result = steps(&mut self.ctx, policy).and_then(|()| {
            self.ctx
                .execute_without_session(|c| c.policy_get_digest(policy))
        });
        let _ = self.ctx.flush_context(SessionHandle::from(session).into());
        result
    }

    /// TPM2_Unseal of the loaded `object` in a session salted with the
    /// storage key, the answer encrypted: through `branch` of its policy when
    /// it is sealed to `pcrs`, else by its (empty) authValue.
    pub(super) fn unseal_with(
        &mut self,
        object: KeyHandle,
        sealed: Option<(&PcrSelection, &[(Bank, BankValues)])>,
        branch: Branch,
    ) -> Result<Zeroizing<Vec<u8>>, tss_esapi::Error> {
        let primary = self.primary;
        let Some((pcrs, values)) = sealed else {
            let session = start_session(&mut self.ctx, Some(primary), SessionType::Hmac)?;
            let out = encrypt_response(&mut self.ctx, session).and_then(|()| {
                self.ctx
                    .execute_with_session(Some(session), |c| c.unseal(object.into()))
            });
            let _ = self.ctx.flush_context(SessionHandle::from(session).into());
            return out.map(|d| Zeroizing::new(d.value().to_vec()));
        };
        // The OR names the branches as sealed: PolicyPCR at the sealed values.
        let (pcr_branch, owner_branch) = self.branches(pcrs, values).map_err(|_| {
            tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::InvalidParam)
        })?;
        let session = start_session(&mut self.ctx, Some(primary), SessionType::Policy)?;
        let out = (|| {
            let policy = PolicySession::try_from(session)?;
            match branch {
                Branch::Pcrs => {
                    let selection = pcrs.to_tpm().map_err(|_| {
                        tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::InvalidParam)
                    })?;
                    self.ctx.execute_without_session(|c| {
                        c.policy_pcr(policy, Digest::default(), selection.clone())
                    })?;
                }
                Branch::Owner => {
                    self.ctx
                        .execute_with_session(Some(AuthSession::Password), |c| {
                            policy_secret_owner(c, policy)
                        })?;
                }
            }
            self.ctx.execute_without_session(|c| {
                c.policy_or(policy, branch_list(&pcr_branch, &owner_branch)?)
            })?;
            encrypt_response(&mut self.ctx, session)?;
            self.ctx
                .execute_with_session(Some(session), |c| c.unseal(object.into()))
        })();
        let _ = self.ctx.flush_context(SessionHandle::from(session).into());
        out.map(|d| Zeroizing::new(d.value().to_vec()))
    }
}

/// A policy (or trial) or HMAC session, salted with `salt_key` when given.
fn start_session(
    ctx: &mut Context,
    salt_key: Option<KeyHandle>,
    kind: SessionType,
) -> Result<AuthSession, tss_esapi::Error> {
    ctx.execute_without_session(|c| {
        c.start_auth_session(
            salt_key,
            None,
            None,
            kind,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
    })?
    .ok_or(tss_esapi::Error::WrapperError(
        tss_esapi::WrapperErrorKind::WrongValueFromTpm,
    ))
}

/// Has the TPM encrypt the first response parameter (the unsealed bytes).
fn encrypt_response(ctx: &mut Context, session: AuthSession) -> Result<(), tss_esapi::Error> {
    let (attributes, mask) = SessionAttributesBuilder::new()
        .with_continue_session(true)
        .with_encrypt(true)
        .build();
    ctx.tr_sess_set_attributes(session, attributes, mask)
}

fn policy_secret_owner(ctx: &mut Context, policy: PolicySession) -> Result<(), tss_esapi::Error> {
    ctx.policy_secret(
        policy,
        AuthHandle::Owner,
        Default::default(),
        Default::default(),
        Default::default(),
        None,
    )
    .map(|_| ())
}

fn branch_list(a: &Digest, b: &Digest) -> Result<DigestList, tss_esapi::Error> {
    let mut list = DigestList::new();
    list.add(a.clone())?;
    list.add(b.clone())?;
    Ok(list)
}

/// A data object for the master key: fixedTPM, fixedParent, no dictionary-
/// attack lockout (a refused policy is no guess at a password); with a
/// policy, only the policy authorizes it.
pub(super) fn sealed_template(policy: Option<Digest>) -> Result<Public, Error> {
    let bad = |e: tss_esapi::Error| Error::Internal(format!("cannot build a TPM template: {e}"));
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_no_da(true)
        .with_user_with_auth(policy.is_none())
        .build()
        .map_err(bad)?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(policy.unwrap_or_default())
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
        .map_err(bad)
}
