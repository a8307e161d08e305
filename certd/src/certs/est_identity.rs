//! Who authenticates a first EST enrollment (`/simpleenroll`): the EST
//! identity if configured (the reference's `identity_cert`, `identity_pk`),
//! else the bootstrap certificate. An identity certd does not hold yet, or
//! one that has expired, is enrolled first, authenticated by the bootstrap
//! certificate, for the identity's key, with the subject of the certificate
//! that asked for it (as the reference enrolls it), and kept with certd's
//! default renewal policy: certd re-enrolls it before it expires. Either
//! certificate may be preloaded, its key named in the config (a preloaded
//! identity is the administrator's to replace: one that has expired is a
//! 503 saying so).

use std::sync::Arc;
use std::time::Duration;

use edgeid_keyd::api::KeyPairSpec;

use super::Certd;
use crate::api::{IssuerKind, Profile};
use crate::chain::Chain;
use crate::config::EstConfig;
use crate::error::Error;
use crate::est::{EstClient, Identity};
use crate::issuer::{self, Subject};
use crate::signer::KeydKey;
use crate::store::{CertRecord, Origin};

impl Certd {
    /// The TLS client identity of a first enrollment, if the config names one.
    pub(super) async fn first_enrollment_identity(
        &self,
        est: &EstClient,
        subject: &Subject,
        lifetime: Duration,
    ) -> Result<Option<Identity>, Error> {
        let Some(config) = &self.config.est else {
            return Ok(None);
        };
        let (Some(cert_id), Some(key_id)) = (&config.identity_cert, &config.identity_key) else {
            return self.bootstrap_identity(config).await;
        };
        let _guard = self.lock(cert_id).await;
        if let Some((chain, key)) = self.served_identity(cert_id, Some(key_id)).await? {
            if chain.leaf().validity().1 > time::OffsetDateTime::now_utc() {
                return Ok(Some((chain, key)));
            }
            if self.config.preloaded.contains_key(cert_id) {
                // A new one stored at that id would stay hidden behind the file.
                return Err(Error::Unavailable(format!(
                    "the EST identity '{cert_id}' is a preloaded file that has expired: replace the file"
                )));
            }
            tracing::warn!(cert = %cert_id, "the EST identity has expired; enrolling a new one with the bootstrap certificate");
        }
        let bootstrap = self.bootstrap_identity(config).await?.ok_or_else(|| {
            Error::BadRequest(format!(
                "the EST identity '{cert_id}' does not exist (or has expired), and no \
                 est.bootstrap_cert is configured to enroll it"
            ))
        })?;
        let key = Arc::new(KeydKey::create_or_load(&self.keyd, key_id, KeyPairSpec::EcP256).await?);
        let identity_subject = Subject {
            cn: subject.cn.clone(),
            san: Default::default(),
            name: subject.name.clone(),
        };
        let params = issuer::params(
            Profile::Client,
            &identity_subject,
            lifetime,
            None,
            Some(key.spec()),
        )?;
        let csr = issuer::csr(params, key.clone()).await?;
        let chain = est.enroll(&csr, Some((bootstrap, false))).await?;
        let mut record = CertRecord::new(cert_id, Origin::Issued(IssuerKind::Est), chain.to_pem());
        record.profile = Some(Profile::Client);
        record.key_id = Some(key_id.clone());
        // Rekeys (when the policy says so) are `<key_id>.r<n>`.
        record.key_base = Some(key_id.clone());
        record.key_spec = Some(key.spec());
        record.subject_cn = identity_subject.cn;
        record.lifetime_secs = lifetime.as_secs();
        let policy = config.identity_renewal;
        record.renewal = Some(policy.unwrap_or_else(|| self.config.renewal.default_policy()));
        self.store.put(&record)?;
        self.changed.notify_one();
        tracing::info!(cert = %cert_id, key = %key_id, "enrolled the EST identity with the bootstrap certificate");
        Ok(Some((chain, key)))
    }

    /// The bootstrap certificate and its key, if configured.
    async fn bootstrap_identity(&self, config: &EstConfig) -> Result<Option<Identity>, Error> {
        let Some(id) = &config.bootstrap_cert else {
            return Ok(None);
        };
        self.served_identity(id, config.bootstrap_key.as_deref())
            .await?
            .map(Some)
            .ok_or_else(|| {
                Error::BadRequest(format!(
                    "est.bootstrap_cert '{id}' is not a certificate in certd: import it with its key_id, or preload it and name est.bootstrap_key"
                ))
            })
    }

    /// Certificate `id` as certd serves it (stored or preloaded) and its key:
    /// the one certd recorded for it, else `key_id`. `None` if there is no
    /// such certificate.
    async fn served_identity(
        &self,
        id: &str,
        key_id: Option<&str>,
    ) -> Result<Option<Identity>, Error> {
        let pem = match self.served_pem(id) {
            Ok(pem) => pem,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let recorded = self.store.get(id)?.and_then(|r| r.key_id);
        let key_id = recorded.as_deref().or(key_id).ok_or_else(|| {
            Error::BadRequest(format!(
                "certificate '{id}' has no key in keyd that certd knows of: import it again with key_id"
            ))
        })?;
        let key = KeydKey::load(&self.keyd, key_id).await?;
        let chain = Chain::from_pem(&pem)?;
        if chain.leaf().spki_der() != key.spki_der() {
            return Err(Error::BadRequest(format!(
                "certificate '{id}' does not certify key '{key_id}'"
            )));
        }
        Ok(Some((chain, Arc::new(key))))
    }
}
