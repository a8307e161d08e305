//! The device's local CA: its key in keyd, its certificate in the store
//! (a self-signed root certd makes on first use, or an intermediate imported
//! in the factory).

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::api::{IssuerKind, Profile, RenewalPolicy};
use crate::chain::Chain;
use crate::config::CaConfig;
use crate::error::Error;
use crate::issuer;
use crate::signer::KeydKey;
use crate::store::{CertRecord, CertStore, Origin};

/// A usable CA: key and chain (its own certificate first).
pub struct LocalCa {
    /// Its key in keyd.
    pub key: Arc<KeydKey>,
    /// Its certificate, then the chain above it (if an intermediate).
    pub chain: Chain,
}

impl LocalCa {
    /// The CA certificate's notAfter: no certificate it issues outlives it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.chain.leaf().validity().1
    }

    /// The certificate modules should trust: the top of the chain.
    pub fn anchor_pem(&self) -> String {
        let top = self.chain.ders().last().cloned().unwrap_or_default();
        crate::chain::certificate_pem(&top)
    }

    /// The CA an administrator gives (`[ca] provided = true`): `pem` as
    /// certd serves its certificate id, and its key. It must be a CA that
    /// may sign certificates, certifying that key.
    pub fn provided(key: KeydKey, pem: &str) -> Result<Self, Error> {
        let chain = Chain::from_pem(pem)?;
        let leaf = chain.leaf();
        if !leaf.is_ca() || !leaf.may_sign_certificates() {
            return Err(Error::BadRequest(
                "its certificate is not a CA that may sign certificates".into(),
            ));
        }
        if leaf.spki_der() != key.spki_der() {
            return Err(Error::BadRequest(
                "its certificate certifies another key than its key".into(),
            ));
        }
        drop(leaf);
        Ok(Self {
            key: Arc::new(key),
            chain,
        })
    }

    /// Loads the CA from the store, or makes a self-signed root if there is
    /// none (or the stored one certifies another key: the key was replaced).
    pub async fn load_or_create(
        config: &CaConfig,
        key: KeydKey,
        store: &CertStore,
    ) -> Result<Self, Error> {
        let key = Arc::new(key);
        if let Some(record) = store.get(&config.cert_id)? {
            let chain = Chain::from_pem(&record.pem)?;
            let leaf = chain.leaf();
            if leaf.spki_der() == key.spki_der() && leaf.is_ca() {
                drop(leaf);
                return Ok(Self { key, chain });
            }
            tracing::warn!(
                cert = %config.cert_id,
                key = %config.key_id,
                "the stored CA certificate does not certify the CA key; making a new root"
            );
        }
        let chain = Self::new_root(config, key.clone()).await?;
        let mut record = CertRecord::new(
            &config.cert_id,
            Origin::Issued(IssuerKind::SelfSigned),
            chain.to_pem(),
        );
        record.profile = Some(Profile::Ca);
        record.key_id = Some(config.key_id.clone());
        record.key_spec = Some(key.spec());
        record.subject_cn = config.subject_cn.clone();
        record.lifetime_secs = config.lifetime_days.saturating_mul(86_400);
        record.renewal = Some(RenewalPolicy {
            threshold_percent: 80,
            rekey: false,
            ..RenewalPolicy::default()
        });
        store.put(&record)?;
        tracing::info!(cert = %config.cert_id, key = %config.key_id, "created the device CA's root certificate");
        Ok(Self { key, chain })
    }

    /// A self-signed root for the CA key (new, or renewed: same key and name,
    /// so certificates it issued still chain to it).
    pub async fn new_root(config: &CaConfig, key: Arc<KeydKey>) -> Result<Chain, Error> {
        let lifetime = Duration::from_secs(config.lifetime_days.saturating_mul(86_400));
        let params = issuer::root_params(&config.subject_cn, lifetime)?;
        Chain::from_der(vec![issuer::self_sign(params, key).await?])
    }
}
