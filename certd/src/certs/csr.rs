//! Issuance for a CSR as the aziot certificates API asks for it: either by
//! an issuer the caller names (a certificate in certd and a handle to its
//! key, which the caller holds: certd lends no authority of its own, so the
//! CSR may ask for CA rights and any names), or, without one, as the id's
//! `[issuance."<id>"]` says (certd's local CA, EST, or self-signed by the
//! id's own key), where CA rights need `ca = true` there and names the
//! caller's `names` grants, as on `/v1`.
//!
//! What the certificate is for comes from the CSR, as the reference copies
//! its extensions: basicConstraints CA:TRUE makes a CA (pathLen 0), else
//! extendedKeyUsage serverAuth / clientAuth pick the TLS profile (both, or
//! none, make a certificate for either end).

use std::sync::Arc;
use std::time::Duration;

use edgeid_common::authz::Caller;
use edgeid_keyd::api::KeyHandle;
use rcgen::{CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa};

use super::{csr_subject, read_csr, Certd, SubjectKey};
use crate::api::{IssuerKind, Profile};
use crate::chain::Chain;
use crate::error::Error;
use crate::issuer::{self, Subject};
use crate::signer::KeydKey;
use crate::store::{CertRecord, Origin};

/// A CSR read for issuance: its key, names and the profile it asks for.
struct Request {
    spki: Vec<u8>,
    subject: Subject,
    profile: Profile,
}

impl Request {
    fn parse(pem_text: &str, id: &str) -> Result<Self, Error> {
        let csr = read_csr(pem_text)?;
        let profile = profile_of(&csr)?;
        let (spki, mut subject) = csr_subject(&csr, profile)?;
        if subject.cn.is_empty() {
            subject.cn = id.to_owned();
        } else if csr.params.distinguished_name.iter().count() > 1 {
            // As the reference: the CSR's whole subject, not its CN alone.
            let name = csr.params.distinguished_name.iter();
            subject.name = Some(name.map(|(t, v)| (t.clone(), v.clone())).collect());
        }
        Ok(Self {
            spki,
            subject,
            profile,
        })
    }
}

/// The profile a CSR's extensions ask for.
fn profile_of(csr: &CertificateSigningRequestParams) -> Result<Profile, Error> {
    if matches!(csr.params.is_ca, IsCa::Ca(_)) {
        return Ok(Profile::Ca);
    }
    let (mut server, mut client) = (false, false);
    for usage in &csr.params.extended_key_usages {
        match usage {
            ExtendedKeyUsagePurpose::ServerAuth => server = true,
            ExtendedKeyUsagePurpose::ClientAuth => client = true,
            other => {
                return Err(Error::BadRequest(format!(
                    "the CSR asks for extended key usage {other:?}; certd issues TLS server and client certificates and CAs only"
                )))
            }
        }
    }
    Ok(match (server, client) {
        (true, false) => Profile::Server,
        (false, true) => Profile::Client,
        _ => Profile::ClientServer,
    })
}

impl Certd {
    /// Issues and stores certificate `id` for a CSR (PEM): by `issuer`
    /// (its certificate id and a handle to its key) if given, else by the
    /// id's configured issuance. Answers the stored chain, leaf first.
    pub async fn issue_for_csr(
        &self,
        caller: &Caller,
        id: &str,
        csr_pem: &str,
        issuer: Option<(&str, KeyHandle)>,
    ) -> Result<String, Error> {
        self.authorize(caller, id)?;
        if id == self.config.ca.cert_id {
            return Err(Error::BadRequest(format!(
                "'{id}' is the device CA's certificate, which certd makes itself; import an intermediate instead"
            )));
        }
        let mut request = Request::parse(csr_pem, id)?;
        let configured = self.config.issuance.get(id);
        // The reference's subject override: by any issuer, the CSR's name aside.
        let mut cn_is_configured = false;
        if let Some((name, cn)) = configured
            .map(|c| c.configured_name())
            .transpose()
            .map_err(Error::Internal)?
            .flatten()
        {
            request.subject.cn = cn.unwrap_or_default();
            request.subject.name = Some(name);
            cn_is_configured = true;
        }
        let lifetime_days = configured
            .and_then(|c| c.expiry_days)
            .unwrap_or(self.config.leaf_lifetime_days);
        let lifetime = Duration::from_secs(lifetime_days.saturating_mul(86_400));
        let _guard = self.lock(id).await;
        let (chain, origin) = match issuer {
            Some((issuer_id, handle)) => (
                self.issue_by_callers_issuer(&request, lifetime, issuer_id, handle)
                    .await?,
                Origin::CallersIssuer,
            ),
            None => {
                let Some(configured) = configured else {
                    return Err(Error::BadRequest(format!(
                        "certificate '{id}' needs an issuer: certd's config has no [issuance.\"{id}\"] saying who issues it"
                    )));
                };
                if request.profile == Profile::Ca && !configured.ca && !self.access.is_admin(caller)
                {
                    return Err(Error::Forbidden(format!(
                        "the CSR asks for CA rights, which certificate '{id}' may have only with ca = true in [issuance.\"{id}\"]"
                    )));
                }
                if request.profile != Profile::Ca {
                    self.check_names(caller, &request.subject, cn_is_configured)?;
                }
                let key = match configured.method {
                    IssuerKind::SelfSigned => {
                        let key_id = configured.key_id.as_deref().unwrap_or(id);
                        let key = KeydKey::load(&self.keyd, key_id).await?;
                        if key.spki_der() != request.spki {
                            return Err(Error::BadRequest(format!(
                                "certificate '{id}' is self-signed by key '{key_id}', and the CSR is for another key"
                            )));
                        }
                        SubjectKey::Keyd(Arc::new(key))
                    }
                    IssuerKind::LocalCa | IssuerKind::Est => {
                        SubjectKey::External(request.spki.clone())
                    }
                };
                let chain = self
                    .issue(
                        id,
                        configured.method,
                        request.profile,
                        &request.subject,
                        lifetime,
                        &key,
                        None,
                        Some(csr_pem),
                    )
                    .await?;
                (chain, Origin::Issued(configured.method))
            }
        };
        // No renewal policy: as with the reference, whoever asked renews
        // (aziot-edged renews its edge CA itself).
        let mut record = CertRecord::new(id, origin, chain.to_pem());
        record.profile = Some(request.profile);
        record.subject_cn = request.subject.cn;
        record.san = request.subject.san;
        record.lifetime_secs = lifetime.as_secs();
        self.store.put(&record)?;
        self.changed.notify_one();
        tracing::info!(cert = %id, caller = %caller, "issued a certificate for a CSR");
        Ok(record.pem)
    }

    /// Signs the CSR's certificate with the key behind `handle`, which must
    /// be the key of CA certificate `issuer_id`; the chain is the leaf and
    /// the issuer's whole chain (stored or preloaded), as the reference answers it.
    async fn issue_by_callers_issuer(
        &self,
        request: &Request,
        lifetime: Duration,
        issuer_id: &str,
        handle: KeyHandle,
    ) -> Result<Chain, Error> {
        // A preloaded issuer too: IoT Edge's own Edge CA files are preloaded.
        let pem = self.served_pem(issuer_id).map_err(|e| match e {
            Error::NotFound(_) => Error::BadRequest(format!(
                "issuer.certId: certificate '{issuer_id}' not found"
            )),
            other => other,
        })?;
        let issuer_chain = Chain::from_pem(&pem)?;
        let issuer_leaf = issuer_chain.leaf();
        if !issuer_leaf.is_ca() || !issuer_leaf.may_sign_certificates() {
            return Err(Error::BadRequest(format!(
                "issuer.certId: certificate '{issuer_id}' is not a CA that may sign certificates"
            )));
        }
        let key =
            KeydKey::for_callers_handle(&self.keyd, "issuer.privateKeyHandle", handle).await?;
        if key.spki_der() != issuer_leaf.spki_der() {
            return Err(Error::BadRequest(format!(
                "issuer.privateKeyHandle is not the key of certificate '{issuer_id}'"
            )));
        }
        let params = issuer::params(
            request.profile,
            &request.subject,
            lifetime,
            Some(issuer_leaf.validity().1),
            None,
        )?;
        let issuer_der = issuer_chain.leaf_der().to_vec();
        drop(issuer_leaf);
        let der = issuer::sign_by_ca(
            params,
            issuer::subject_key(&request.spki)?,
            issuer_der,
            Arc::new(key),
        )
        .await?;
        let mut ders = vec![der];
        ders.extend(issuer_chain.ders().iter().cloned());
        Chain::from_der(ders)
    }
}
