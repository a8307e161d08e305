//! certd's domain: every API operation, authorized; issuance by each issuer;
//! renewal of one certificate.
//! - [`csr`]: issuance for a CSR as the aziot certificates API asks for it
//!   (an issuer named by the caller, or the id's configured issuance).

mod csr;
mod est_identity;
mod imported;
mod preloaded;
mod subject;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edgeid_common::authz::{Access, Admins, Caller, Grants};
use edgeid_common::server::Health;
use edgeid_keyd::api::KeyPairSpec;
use edgeid_keyd::KeydClient;
use rcgen::{CertificateSigningRequestParams, DnType, DnValue, IsCa, PublicKeyData, SanType};
use time::format_description::well_known::Rfc3339;

use crate::api::*;
use crate::ca::LocalCa;
use crate::chain::Chain;
use crate::config::CertdConfig;
use crate::error::Error;
use crate::est::EstClient;
use crate::issuer::{self, Subject};
use crate::signer::KeydKey;
use crate::store::{CertRecord, CertStore, Origin};

/// Longest lifetime anyone may ask for (100 years).
const MAX_LIFETIME_SECS: u64 = 100 * 365 * 86_400;

/// The certificate service.
pub struct Certd {
    config: CertdConfig,
    keyd: KeydClient,
    store: CertStore,
    access: Access,
    /// Per uid, the names its certificates may carry.
    names: Vec<(u32, Grants)>,
    ca: tokio::sync::Mutex<Option<Arc<LocalCa>>>,
    est: Option<EstClient>,
    /// Certificates enrolled at another URL of that EST server
    /// (`[issuance."<id>"] est_url`), with its credentials and anchors.
    est_at: HashMap<String, EstClient>,
    /// One lock per certificate id: issuance, import, renewal and deletion of
    /// one id never interleave.
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Wakes the renewal task when a certificate changes.
    pub(crate) changed: tokio::sync::Notify,
}

/// How a request's public key reached certd.
enum SubjectKey {
    /// A key in keyd.
    Keyd(Arc<KeydKey>),
    /// A CSR's key (SubjectPublicKeyInfo DER), or a stored certificate's.
    External(Vec<u8>),
}

impl SubjectKey {
    fn spki(&self) -> &[u8] {
        match self {
            Self::Keyd(k) => k.spki_der(),
            Self::External(spki) => spki,
        }
    }
}

impl Certd {
    /// Whether the caller is somebody here (an administrator or a
    /// principal), before its request's body is read; else why not.
    pub fn admits(&self, caller: &Caller) -> Result<(), String> {
        self.access.admits(caller)
    }

    /// Opens the store; keyd and the CA are reached on first use, so certd
    /// starts even while keyd does not answer yet.
    pub fn open(config: CertdConfig, admins: Admins) -> Result<Self, Error> {
        config.validate().map_err(Error::Setup)?;
        let store = CertStore::open(&config.state_dir)?;
        let est = match &config.est {
            Some(est) => Some(EstClient::new(est, &config.state_dir)?),
            None => None,
        };
        let mut est_at = HashMap::new();
        for (id, issuance) in &config.issuance {
            if let (Some(url), Some(est)) = (&issuance.est_url, &est) {
                est_at.insert(id.clone(), est.at_url(url, &config.state_dir)?);
            }
        }
        let access = Access::new(
            "certd",
            "certificate",
            admins,
            config
                .principals
                .iter()
                .map(|p| (p.name.clone(), p.uid, p.certs.clone())),
        );
        let names = config
            .principals
            .iter()
            .map(|p| (p.uid, p.names.clone()))
            .collect();
        let certd = Self {
            keyd: KeydClient::new(&config.keyd_socket),
            store,
            access,
            names,
            ca: tokio::sync::Mutex::new(None),
            est,
            est_at,
            locks: std::sync::Mutex::new(HashMap::new()),
            changed: tokio::sync::Notify::new(),
            config,
        };
        certd.take_over_imported();
        Ok(certd)
    }

    pub(crate) fn store(&self) -> &CertStore {
        &self.store
    }

    pub(crate) fn config(&self) -> &CertdConfig {
        &self.config
    }

    async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    fn authorize(&self, caller: &Caller, id: &str) -> Result<(), Error> {
        edgeid_common::id::check(id).map_err(|why| {
            Error::BadRequest(format!(
                "invalid certificate id '{}': {why}",
                edgeid_common::id::shown(id)
            ))
        })?;
        self.access.check(caller, id).map_err(Error::Forbidden)
    }

    /// The local CA, loaded (or created) once.
    pub async fn ca(&self) -> Result<Arc<LocalCa>, Error> {
        let c = &self.config.ca;
        if c.provided {
            // Not cached: a file an administrator replaces is used at once.
            let unusable = |e: Error| match e {
                Error::Internal(_) => e,
                other => Error::Unavailable(format!(
                    "the local CA (certificate '{}', key '{}', given by the administrator) \
                     is not usable: {other}",
                    c.cert_id, c.key_id
                )),
            };
            let pem = self.served_pem(&c.cert_id).map_err(unusable)?;
            let key = KeydKey::load(&self.keyd, &c.key_id)
                .await
                .map_err(unusable)?;
            return LocalCa::provided(key, &pem).map(Arc::new).map_err(unusable);
        }
        let mut cached = self.ca.lock().await;
        if let Some(ca) = cached.as_ref() {
            return Ok(ca.clone());
        }
        let key = KeydKey::create_or_load(&self.keyd, &c.key_id, c.key_spec).await?;
        let _id = self.lock(&c.cert_id).await;
        let ca = Arc::new(LocalCa::load_or_create(c, key, &self.store).await?);
        *cached = Some(ca.clone());
        self.changed.notify_one();
        Ok(ca)
    }

    async fn forget_ca(&self) {
        *self.ca.lock().await = None;
    }

    /// `POST /v1/certificates`
    pub async fn create(
        &self,
        caller: &Caller,
        req: CreateCertificateRequest,
    ) -> Result<CertificatePem, Error> {
        self.authorize(caller, &req.id)?;
        if req.id == self.config.ca.cert_id {
            return Err(Error::BadRequest(format!(
                "'{}' is the device CA's certificate, which certd makes itself; import an intermediate with PUT instead",
                req.id
            )));
        }
        let admin = self.access.is_admin(caller);
        if req.profile == Profile::Ca && !admin {
            return Err(Error::Forbidden(
                "only administrators may have CA certificates issued".into(),
            ));
        }
        let configured = self.config.issuance.get(&req.id);
        let issuer = match (req.issuer, configured) {
            (Some(kind), _) => kind,
            (None, Some(c)) => c.method,
            (None, None) => {
                return Err(Error::BadRequest(format!(
                    "certificate '{}' has no issuer: give issuer, or say who issues it in certd's [issuance.\"{}\"]",
                    req.id, req.id
                )))
            }
        };
        if req.issuer.is_none() && issuer == IssuerKind::SelfSigned {
            let signer = configured
                .and_then(|c| c.key_id.as_deref())
                .unwrap_or(&req.id);
            if req.key_id.as_deref() != Some(signer) {
                return Err(Error::BadRequest(format!(
                    "certificate '{}' is self-signed by key '{signer}', as [issuance.\"{}\"] says: give key_id = \"{signer}\"",
                    req.id, req.id
                )));
            }
        }
        let lifetime = match req.lifetime_secs {
            Some(0) => return Err(Error::BadRequest("lifetime_secs must be at least 1".into())),
            Some(s) if s > MAX_LIFETIME_SECS => {
                return Err(Error::BadRequest("lifetime_secs is over 100 years".into()))
            }
            Some(s) => s,
            None => configured
                .and_then(|c| c.expiry_days)
                .unwrap_or(self.config.leaf_lifetime_days)
                .saturating_mul(86_400),
        };
        if req.transient && (req.csr.is_none() || req.renewal.is_some()) {
            return Err(Error::BadRequest(
                "transient is for a CSR whose key the requester keeps and renews itself: give csr, and no key_id or renewal".into(),
            ));
        }
        let (key, csr_subject) = match (&req.csr, &req.key_id) {
            (Some(_), Some(_)) => {
                return Err(Error::BadRequest(
                    "give either csr or key_id, not both".into(),
                ))
            }
            (None, None) => return Err(Error::BadRequest("give csr or key_id".into())),
            (Some(csr), None) => {
                let (spki, subject) = parse_csr(csr, req.profile)?;
                (SubjectKey::External(spki), Some(subject))
            }
            (None, Some(key_id)) => {
                self.check_key_id(caller, key_id)?;
                let spec = req.key_spec.unwrap_or(KeyPairSpec::EcP256);
                let key = KeydKey::create_or_load(&self.keyd, key_id, spec).await?;
                (SubjectKey::Keyd(Arc::new(key)), None)
            }
        };
        let mut subject = Subject {
            cn: req
                .subject_cn
                .clone()
                .or_else(|| csr_subject.as_ref().map(|s| s.cn.clone()))
                .filter(|cn| !cn.is_empty())
                .unwrap_or_else(|| req.id.clone()),
            san: req
                .san
                .clone()
                .or_else(|| csr_subject.map(|s| s.san))
                .unwrap_or_default(),
            name: None,
        };
        let cn_is_configured = self
            .name_subject(&req.id, &mut subject, &req.subject)
            .map_err(|why| Error::BadRequest(format!("subject: {why}")))?;
        self.check_names(caller, &subject, cn_is_configured)?;
        let renewal = req
            .renewal
            .or(configured.and_then(|c| c.renewal))
            .unwrap_or_else(|| {
                let mut p = self.config.renewal.default_policy();
                p.rekey &= matches!(key, SubjectKey::Keyd(_));
                p
            });
        renewal.check().map_err(Error::BadRequest)?;
        if renewal.rekey && !matches!(key, SubjectKey::Keyd(_)) {
            return Err(Error::BadRequest(
                "renewal.rekey needs key_id: certd cannot make a new key for a CSR".into(),
            ));
        }
        let _guard = self.lock(&req.id).await;
        let key_spec = match &key {
            SubjectKey::Keyd(k) => Some(k.spec()),
            SubjectKey::External(_) => None,
        };
        let chain = self
            .issue(
                &req.id,
                issuer,
                req.profile,
                &subject,
                Duration::from_secs(lifetime),
                &key,
                None,
                req.csr.as_deref(),
            )
            .await?;
        if req.transient {
            tracing::info!(cert = %req.id, %issuer, caller = %caller, "issued a transient certificate (not stored)");
            return Ok(CertificatePem {
                pem: chain.to_pem(),
            });
        }
        let mut record = CertRecord::new(&req.id, Origin::Issued(issuer), chain.to_pem());
        record.profile = Some(req.profile);
        record.key_id = req.key_id.clone();
        record.key_base = req.key_id.clone();
        record.key_spec = key_spec;
        record.subject_cn = subject.cn;
        record.san = subject.san;
        record.subject_attributes = req.subject;
        record.lifetime_secs = lifetime;
        record.renewal = Some(renewal);
        self.store.put(&record)?;
        self.changed.notify_one();
        tracing::info!(cert = %req.id, %issuer, caller = %caller, "issued a certificate");
        Ok(CertificatePem { pem: record.pem })
    }

    /// Issues a chain for `key` by `kind`. `current` is the certificate being
    /// renewed and its key (EST re-enrollment authenticates with them).
    #[allow(clippy::too_many_arguments)]
    async fn issue(
        &self,
        id: &str,
        kind: IssuerKind,
        profile: Profile,
        subject: &Subject,
        lifetime: Duration,
        key: &SubjectKey,
        current: Option<(Chain, Arc<KeydKey>)>,
        csr_pem: Option<&str>,
    ) -> Result<Chain, Error> {
        let spec = match key {
            SubjectKey::Keyd(k) => Some(k.spec()),
            SubjectKey::External(_) => None,
        };
        match kind {
            IssuerKind::LocalCa => {
                let ca = self.ca().await?;
                let params =
                    issuer::params(profile, subject, lifetime, Some(ca.not_after()), spec)?;
                let der = issuer::sign_by_ca(
                    params,
                    issuer::subject_key(key.spki())?,
                    ca.chain.leaf_der().to_vec(),
                    ca.key.clone(),
                )
                .await?;
                issuer::chain_of(der, &ca.chain)
            }
            IssuerKind::SelfSigned => {
                let SubjectKey::Keyd(k) = key else {
                    return Err(Error::BadRequest(
                        "a self-signed certificate needs key_id: certd signs it with that key"
                            .into(),
                    ));
                };
                let params = issuer::params(profile, subject, lifetime, None, spec)?;
                Chain::from_der(vec![issuer::self_sign(params, k.clone()).await?])
            }
            IssuerKind::Est => {
                let default = self.est.as_ref().ok_or_else(|| {
                    Error::BadRequest(
                        "issuer \"est\" needs an [est] table in certd's config".into(),
                    )
                })?;
                let est = self.est_at.get(id).unwrap_or(default);
                let csr = match (key, csr_pem) {
                    (_, Some(pem_text)) => pem::parse(pem_text)
                        .map_err(|e| Error::BadRequest(format!("the CSR is not PEM: {e}")))?
                        .into_contents(),
                    (SubjectKey::Keyd(k), None) => {
                        let params = issuer::params(profile, subject, lifetime, None, spec)?;
                        issuer::csr(params, k.clone()).await?
                    }
                    (SubjectKey::External(_), None) => {
                        return Err(Error::BadRequest(
                            "EST renewal of a certificate for a CSR needs a new CSR".into(),
                        ))
                    }
                };
                let auth = match current {
                    Some(current) => Some((current, true)),
                    // The EST identity is enrolled at [est] url.
                    None => self
                        .first_enrollment_identity(default, subject, lifetime)
                        .await?
                        .map(|b| (b, false)),
                };
                est.enroll(&csr, auth).await
            }
        }
    }

    /// A non-administrator may only put its own keys (granted ids) in
    /// certificates, and never the CA key.
    fn check_key_id(&self, caller: &Caller, key_id: &str) -> Result<(), Error> {
        edgeid_common::id::check(key_id).map_err(|why| {
            Error::BadRequest(format!(
                "invalid key id '{}': {why}",
                edgeid_common::id::shown(key_id)
            ))
        })?;
        if self.access.is_admin(caller) {
            return Ok(());
        }
        if key_id == self.config.ca.key_id {
            return Err(Error::Forbidden(
                "the CA key is for administrators only".into(),
            ));
        }
        self.access.check(caller, key_id).map_err(Error::Forbidden)
    }

    /// A non-administrator's certificates may carry only the names its
    /// `names` grants match (the CN too, unless `cn_is_configured`: an
    /// administrator set it for the id).
    fn check_names(
        &self,
        caller: &Caller,
        subject: &Subject,
        cn_is_configured: bool,
    ) -> Result<(), Error> {
        if self.access.is_admin(caller) {
            return Ok(());
        }
        let grants: Vec<&Grants> = self
            .names
            .iter()
            .filter(|(uid, _)| *uid == caller.uid)
            .map(|(_, g)| g)
            .collect();
        let ips: Vec<String> = subject.san.ip.iter().map(|ip| ip.to_string()).collect();
        let cn = (!cn_is_configured).then_some(&subject.cn);
        let every = cn
            .into_iter()
            .chain(&subject.san.dns)
            .chain(&subject.san.uri)
            .chain(&ips);
        for name in every {
            if !grants.iter().any(|g| g.allows(name)) {
                tracing::warn!(uid = caller.uid, pid = caller.pid, name = %name, "refused: name not granted");
                return Err(Error::Forbidden(format!(
                    "uid {} may not have the name '{name}' in a certificate (certd principal names)",
                    caller.uid
                )));
            }
        }
        Ok(())
    }

    /// `GET /v1/certificates/{id}`
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<CertificateInfo, Error> {
        if let Some(preloaded) = self.preloaded(caller, id) {
            return preloaded;
        }
        self.authorize(caller, id)?;
        let record = self.record(id)?;
        let chain = Chain::from_pem(&record.pem)?;
        let not_after = chain
            .leaf()
            .validity()
            .1
            .format(&Rfc3339)
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(CertificateInfo {
            renewal: self.policy_of(&record),
            pem: record.pem,
            not_after,
            key_id: record.key_id,
        })
    }

    /// `POST /v1/certificates/{id}`: renews an issued certificate now, by
    /// its policy (a new key if it rekeys); the old one stays until the new
    /// one is stored.
    pub async fn renew_now(&self, caller: &Caller, id: &str) -> Result<CertificateInfo, Error> {
        self.authorize(caller, id)?;
        let record = self.record(id)?;
        if !matches!(record.origin, Origin::Issued(_)) || record.renewal.is_none() {
            return Err(Error::BadRequest(format!(
                "certificate '{id}' was imported; certd renews only what it issued (import a new one)"
            )));
        }
        self.renew(id).await?;
        self.get(caller, id).await
    }

    fn record(&self, id: &str) -> Result<CertRecord, Error> {
        self.store
            .get(id)?
            .ok_or_else(|| Error::NotFound(format!("certificate '{id}' does not exist")))
    }

    /// `PUT /v1/certificates/{id}`: import a chain, checked link by link; with
    /// `key_id`, the leaf must certify that key. Importing at the CA's id
    /// makes the chain the device CA (an intermediate issued in the factory).
    pub async fn import(
        &self,
        caller: &Caller,
        id: &str,
        req: ImportCertificateRequest,
    ) -> Result<(), Error> {
        self.authorize(caller, id)?;
        let chain = Chain::from_pem(&req.pem)?;
        chain.check()?;
        let is_ca = id == self.config.ca.cert_id;
        let key_id = if is_ca {
            if !self.access.is_admin(caller) {
                return Err(Error::Forbidden(
                    "only administrators may replace the device CA".into(),
                ));
            }
            let leaf = chain.leaf();
            if !leaf.is_ca() || !leaf.may_sign_certificates() {
                return Err(Error::BadRequest(
                    "the device CA's certificate must be a CA (basicConstraints CA:TRUE, keyUsage keyCertSign)".into(),
                ));
            }
            Some(
                req.key_id
                    .clone()
                    .unwrap_or_else(|| self.config.ca.key_id.clone()),
            )
        } else {
            req.key_id.clone()
        };
        if let Some(key_id) = &key_id {
            self.check_key_id(caller, key_id)?;
            let key = KeydKey::load(&self.keyd, key_id).await?;
            if key.spki_der() != chain.leaf().spki_der() {
                return Err(Error::BadRequest(format!(
                    "the certificate does not certify key '{key_id}' (the public keys differ)"
                )));
            }
        }
        let guard = self.lock(id).await;
        let mut record = CertRecord::new(id, Origin::Imported, chain.to_pem());
        record.key_id = key_id.clone();
        record.key_base = key_id;
        record.subject_cn = chain.leaf().subject();
        self.store.put(&record)?;
        // ca() takes the CA cache before an id lock: never hold them the other way round.
        drop(guard);
        if is_ca {
            self.forget_ca().await;
        }
        self.changed.notify_one();
        tracing::info!(cert = %id, caller = %caller, "imported a certificate");
        Ok(())
    }

    /// `DELETE /v1/certificates/{id}`. The key stays in keyd.
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<(), Error> {
        self.authorize(caller, id)?;
        let is_ca = id == self.config.ca.cert_id;
        if is_ca && !self.access.is_admin(caller) {
            return Err(Error::Forbidden(
                "only administrators may delete the device CA".into(),
            ));
        }
        let guard = self.lock(id).await;
        if !self.store.delete(id)? {
            return Err(Error::NotFound(format!(
                "certificate '{id}' does not exist"
            )));
        }
        drop(guard);
        if is_ca {
            self.forget_ca().await;
        }
        self.changed.notify_one();
        Ok(())
    }

    /// `GET /v1/certificates`: the ids the caller may see.
    pub async fn list(&self, caller: &Caller) -> Result<CertificateList, Error> {
        let ids = self
            .store
            .list()?
            .into_iter()
            .map(|r| r.id)
            .filter(|id| self.access.allows(caller, id))
            .collect();
        Ok(CertificateList { ids })
    }

    /// `GET /v1/trust-bundle`: the local CA's anchor, and the EST server's CAs
    /// when certificates are enrolled there. Open to every caller.
    pub async fn trust_bundle(&self) -> Result<TrustBundle, Error> {
        let mut pem = self.ca().await?.anchor_pem();
        let mut added = Vec::new();
        for est in self.est.iter().chain(self.est_at.values()) {
            let anchors = est.stored_anchors()?;
            if !added.contains(&anchors) {
                pem.push_str(&anchors);
                added.push(anchors);
            }
        }
        Ok(TrustBundle { pem })
    }

    /// `GET /v1/health`
    pub async fn health(&self) -> Health {
        let mut backends = std::collections::BTreeMap::new();
        let keyd = match self.keyd.health().await {
            Ok(h) if h.status == "ok" => "ok".to_owned(),
            Ok(h) => format!("keyd is {}", h.status),
            Err(e) => format!("keyd: {e}"),
        };
        backends.insert("keyd".to_owned(), keyd);
        Health::of(backends)
    }

    /// Renews one certificate now, per its policy. The old certificate stays
    /// on disk until the new one replaces it atomically; a key replaced by a
    /// rekey is deleted from keyd only after that.
    pub async fn renew(&self, id: &str) -> Result<(), Error> {
        let guard = self.lock(id).await;
        let Some(record) = self.store.get(id)? else {
            return Ok(());
        };
        let (Origin::Issued(kind), Some(policy), Some(profile)) =
            (record.origin, self.policy_of(&record), record.profile)
        else {
            return Ok(());
        };
        let current = Chain::from_pem(&record.pem)?;
        let current_key = match &record.key_id {
            Some(k) => Some(Arc::new(KeydKey::load(&self.keyd, k).await?)),
            None => None,
        };
        let (key, key_id, generation) = match (&record.key_base, policy.rekey) {
            (Some(base), true) => {
                let generation = record.key_generation + 1;
                let new_id = format!("{base}.r{generation}");
                let spec = record.key_spec.unwrap_or(KeyPairSpec::EcP256);
                let key = KeydKey::create_or_load(&self.keyd, &new_id, spec).await?;
                (SubjectKey::Keyd(Arc::new(key)), Some(new_id), generation)
            }
            _ => match &current_key {
                Some(k) => (
                    SubjectKey::Keyd(k.clone()),
                    record.key_id.clone(),
                    record.key_generation,
                ),
                None => (
                    SubjectKey::External(current.leaf().spki_der().to_vec()),
                    None,
                    record.key_generation,
                ),
            },
        };
        let mut subject = Subject {
            cn: record.subject_cn.clone(),
            san: record.san.clone(),
            name: None,
        };
        self.name_subject(id, &mut subject, &record.subject_attributes)
            .map_err(|why| Error::Internal(format!("the subject of certificate '{id}': {why}")))?;
        let lifetime = Duration::from_secs(record.lifetime_secs.max(1));
        let is_ca = id == self.config.ca.cert_id;
        let chain = if is_ca {
            let SubjectKey::Keyd(k) = &key else {
                return Err(Error::Internal("the CA record has no key".into()));
            };
            LocalCa::new_root(&self.config.ca, k.clone()).await?
        } else {
            let auth = current_key.clone().map(|k| (current.clone(), k));
            self.issue(id, kind, profile, &subject, lifetime, &key, auth, None)
                .await?
        };
        let retired = if key_id != record.key_id {
            record.key_id.clone()
        } else {
            None
        };
        let mut renewed = record.clone();
        renewed.pem = chain.to_pem();
        renewed.key_id = key_id;
        renewed.key_generation = generation;
        renewed.retired_key_id = retired;
        self.store.put(&renewed)?;
        tracing::info!(cert = %id, rekeyed = renewed.retired_key_id.is_some(), "renewed a certificate");
        self.retire_key(&mut renewed).await;
        drop(guard);
        if is_ca {
            self.forget_ca().await;
        }
        Ok(())
    }

    /// Deletes the key a rekey replaced, then records that it is gone. If
    /// keyd cannot be reached, the record keeps the id for the next try.
    pub(crate) async fn retire_key(&self, record: &mut CertRecord) {
        let Some(old) = record.retired_key_id.clone() else {
            return;
        };
        match self.keyd.delete_key_pair(&old).await {
            Ok(()) => {}
            Err(e) if e.status() == Some(http::StatusCode::NOT_FOUND) => {}
            Err(e) => {
                tracing::warn!(key = %old, error = %e, "cannot delete a replaced key yet");
                return;
            }
        }
        record.retired_key_id = None;
        if let Err(e) = self.store.put(record) {
            tracing::warn!(cert = %record.id, error = %e, "cannot record a deleted key");
        }
    }
}

/// A CSR's public key and names, after its signature is verified and its
/// request checked: no CA rights unless the profile is `ca`.
pub fn parse_csr(pem_text: &str, profile: Profile) -> Result<(Vec<u8>, Subject), Error> {
    let csr = read_csr(pem_text)?;
    csr_subject(&csr, profile)
}

/// A CSR, its signature verified (by rcgen, through x509-parser).
fn read_csr(pem_text: &str) -> Result<CertificateSigningRequestParams, Error> {
    CertificateSigningRequestParams::from_pem(pem_text).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => {
            Error::BadRequest("the CSR's signature does not verify".into())
        }
        rcgen::Error::UnsupportedExtension => {
            Error::BadRequest("the CSR asks for an extension certd does not issue".into())
        }
        other => Error::BadRequest(format!("not a valid PKCS#10 CSR: {other}")),
    })
}

/// A read CSR's public key and names, for a certificate of `profile`.
fn csr_subject(
    csr: &CertificateSigningRequestParams,
    profile: Profile,
) -> Result<(Vec<u8>, Subject), Error> {
    if matches!(csr.params.is_ca, IsCa::Ca(_)) && profile != Profile::Ca {
        return Err(Error::BadRequest(
            "the CSR asks for CA rights (basicConstraints CA:TRUE) for a non-CA certificate".into(),
        ));
    }
    let cn = csr
        .params
        .distinguished_name
        .get(&DnType::CommonName)
        .map(dn_text)
        .unwrap_or_default();
    let mut san = SubjectAltNames::default();
    for name in &csr.params.subject_alt_names {
        match name {
            SanType::DnsName(n) => san.dns.push(n.as_str().to_owned()),
            SanType::URI(u) => san.uri.push(u.as_str().to_owned()),
            SanType::IpAddress(ip) => san.ip.push(*ip),
            _ => {
                return Err(Error::BadRequest(
                    "the CSR asks for a kind of alternative name certd does not issue (DNS, IP and URI only)".into(),
                ))
            }
        }
    }
    Ok((
        csr.public_key.subject_public_key_info(),
        Subject {
            cn,
            san,
            name: None,
        },
    ))
}

fn dn_text(v: &DnValue) -> String {
    match v {
        DnValue::Utf8String(s) => s.clone(),
        DnValue::PrintableString(s) => s.as_str().to_owned(),
        DnValue::Ia5String(s) => s.as_str().to_owned(),
        DnValue::TeletexString(s) => s.as_str().to_owned(),
        // UCS-2 and UCS-4 names (and kinds rcgen may add): no CN taken from
        // them; the certificate id is used instead.
        _ => String::new(),
    }
}
