//! The domain: who may see which identity, the device identity as provisioned,
//! module identities (created, registered with the hub, deleted), their SAS
//! tokens, and provisioning runs (at start when nothing valid is stored, on
//! request, and once after the hub refuses the device's credential).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use edgeid_certd::api::{CreateCertificateRequest, IssuerKind, Profile};
use edgeid_certd::signer::KeydKey;
use edgeid_certd::CertdClient;
use edgeid_common::authz::Admins;
use edgeid_common::server::Health;
use edgeid_common::sync::lock;
use edgeid_common::Caller;
use edgeid_keyd::api::{KeyHandle, SignAlgorithm};
use edgeid_keyd::KeydClient;
use http::StatusCode;
use zeroize::Zeroizing;

use crate::api::{
    Auth, AuthType, CreateModuleRequest, DeviceIdentity, ModuleIdentity, ModuleList,
    ProvisioningState, ProvisioningStatus, Token, TokenRequest,
};
use crate::cloud::{Cloud, Identity};
use crate::config::{IdentitydConfig, Role};
use crate::error::Error;
use crate::hub::{DeviceProof, Hub, ModuleCredential};
use crate::names;
use crate::sas;
use crate::store::{Credential, DeviceRecord, KeyRef, ModuleRecord, Store};

/// After a hub 401 led to reprovisioning, another 401 within this window does
/// not reprovision again; the window doubles up to [`AUTH_BACKOFF_MAX`].
const AUTH_BACKOFF_MIN: Duration = Duration::from_secs(30);
const AUTH_BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// Waits between failed provisioning attempts in the background.
const RETRY_MIN: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Status {
    state: ProvisioningState,
    last_error: Option<String>,
}

/// identityd.
pub struct Identityd {
    config: IdentitydConfig,
    admins: Admins,
    keyd: KeydClient,
    certd: CertdClient,
    cloud: Cloud,
    store: Store,
    device: SyncMutex<Option<DeviceRecord>>,
    status: SyncMutex<Status>,
    /// One provisioning at a time.
    provisioning: tokio::sync::Mutex<()>,
    /// A background provisioning loop is running.
    looping: AtomicBool,
    /// Wakes that loop for an attempt now (a reprovision request).
    retry_now: tokio::sync::Notify,
    /// Module identities change one at a time (they share one file).
    modules: tokio::sync::Mutex<()>,
    /// The last reprovisioning a hub 401 caused, and the window after it.
    auth_backoff: SyncMutex<Option<(Instant, Duration)>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Identityd {
    /// Opens the state directory and the stored provisioning result. Nothing
    /// is contacted: [`Identityd::needs_provisioning`] says whether to.
    pub fn open(
        config: IdentitydConfig,
        admins: Admins,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Self, Error> {
        config.validate().map_err(Error::Setup)?;
        let store = Store::open(&config.state_dir)?;
        let offline = matches!(
            config.provisioning,
            crate::config::ProvisioningConfig::Local(_)
        );
        let cloud = Cloud::new(&config.cloud, offline)?;
        let stored = store.device()?;
        let current = stored.filter(|r| r.fingerprint == crate::provision::fingerprint(&config));
        let state = if current.is_some() {
            ProvisioningState::Provisioned
        } else {
            ProvisioningState::Provisioning
        };
        Ok(Self {
            keyd: KeydClient::new(&config.keyd_socket),
            certd: CertdClient::new(&config.certd_socket),
            cloud,
            store,
            device: SyncMutex::new(current),
            status: SyncMutex::new(Status {
                state,
                last_error: None,
            }),
            provisioning: tokio::sync::Mutex::new(()),
            looping: AtomicBool::new(false),
            retry_now: tokio::sync::Notify::new(),
            modules: tokio::sync::Mutex::new(()),
            auth_backoff: SyncMutex::new(None),
            shutdown,
            admins,
            config,
        })
    }

    pub(crate) fn config(&self) -> &IdentitydConfig {
        &self.config
    }
    pub(crate) fn keyd(&self) -> &KeydClient {
        &self.keyd
    }
    pub(crate) fn certd(&self) -> &CertdClient {
        &self.certd
    }
    pub(crate) fn cloud(&self) -> &Cloud {
        &self.cloud
    }

    /// Whether no valid provisioning result is stored.
    pub fn needs_provisioning(&self) -> bool {
        lock(&self.device).is_none()
    }

    fn current(&self) -> Result<DeviceRecord, Error> {
        lock(&self.device).clone().ok_or_else(|| {
            let status = lock(&self.status);
            Error::Unavailable(match &status.last_error {
                Some(why) => {
                    format!("the device is not provisioned yet; the last attempt failed: {why}")
                }
                None => "the device is not provisioned yet".into(),
            })
        })
    }

    // --- provisioning ---

    /// Provisions now and stores the result; one run at a time.
    pub async fn provision(&self) -> Result<DeviceRecord, Error> {
        let _one = self.provisioning.lock().await;
        self.set_status(ProvisioningState::Provisioning, None);
        let outcome = match self.provision_once().await {
            Ok(record) => self.store.save_device(&record).map(|()| record),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(record) => {
                tracing::info!(source = %record.source, hub = %record.hub, device = %record.device_id, "provisioned");
                *lock(&self.device) = Some(record.clone());
                self.set_status(ProvisioningState::Provisioned, None);
                Ok(record)
            }
            Err(e) => {
                tracing::warn!(error = %e, "provisioning failed");
                self.set_status(ProvisioningState::Failed, Some(e.to_string()));
                Err(e)
            }
        }
    }

    /// Provisions in the background until it succeeds (or identityd stops),
    /// waiting longer after each failure. A second call while one runs does nothing.
    pub fn provision_in_background(self: &Arc<Self>) {
        self.set_status(ProvisioningState::Provisioning, None);
        if self.looping.swap(true, Ordering::SeqCst) {
            // A loop is waiting out a failure: try again now.
            self.retry_now.notify_one();
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut wait = RETRY_MIN;
            let mut shutdown = me.shutdown.clone();
            loop {
                if *shutdown.borrow() {
                    break;
                }
                if me.provision().await.is_ok() {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = me.retry_now.notified() => {}
                    _ = shutdown.changed() => break,
                }
                wait = (wait * 2).min(RETRY_MAX);
            }
            me.looping.store(false, Ordering::SeqCst);
        });
    }

    fn set_status(&self, state: ProvisioningState, error: Option<String>) {
        let mut status = lock(&self.status);
        status.state = state;
        if state != ProvisioningState::Provisioning {
            status.last_error = error;
        }
    }

    /// `GET /v1/provisioning`
    pub fn status(&self, caller: &Caller) -> Result<ProvisioningStatus, Error> {
        self.authorize_orchestrator(caller)?;
        let status = lock(&self.status);
        Ok(ProvisioningStatus {
            source: self.config.provisioning.source().to_owned(),
            state: status.state,
            provisioned_at: lock(&self.device)
                .as_ref()
                .map(|d| d.provisioned_at.clone()),
            last_error: status.last_error.clone(),
        })
    }

    /// `POST /v1/reprovision`: starts provisioning again; the identity served
    /// until it succeeds is the one provisioned before.
    pub fn reprovision(self: &Arc<Self>, caller: &Caller) -> Result<ProvisioningStatus, Error> {
        self.authorize_orchestrator(caller)?;
        tracing::info!(%caller, "reprovisioning on request");
        self.provision_in_background();
        self.status(caller)
    }

    /// Runs `op` against the hub; if the hub refuses the device's credential
    /// (401), reprovisions once (unless one such run happened recently) and
    /// runs `op` again with the new identity.
    async fn with_hub<T, F, Fut>(&self, op: F) -> Result<T, Error>
    where
        F: Fn(DeviceRecord) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let device = self.current()?;
        match op(device).await {
            Err(e) if e.is_unauthorized() && self.may_reprovision_for_401() => {
                tracing::warn!(error = %e, "the hub refused the device credential; reprovisioning once");
                let device = self.provision().await?;
                let result = op(device).await;
                if result.is_ok() {
                    *lock(&self.auth_backoff) = None;
                }
                result
            }
            other => other,
        }
    }

    fn may_reprovision_for_401(&self) -> bool {
        let mut backoff = lock(&self.auth_backoff);
        let now = Instant::now();
        match *backoff {
            Some((at, window)) if now.duration_since(at) < window => false,
            Some((_, window)) => {
                *backoff = Some((now, (window * 2).min(AUTH_BACKOFF_MAX)));
                true
            }
            None => {
                *backoff = Some((now, AUTH_BACKOFF_MIN));
                true
            }
        }
    }

    // --- authorization ---

    fn role_of(&self, caller: &Caller) -> Option<(Role, &str)> {
        self.config
            .principals
            .iter()
            .filter(|p| p.uid == caller.uid)
            .map(|p| (p.role, p.module()))
            .max_by_key(|(role, _)| *role == Role::Orchestrator)
    }

    fn authorize_orchestrator(&self, caller: &Caller) -> Result<(), Error> {
        if self.admins.contains(caller) {
            return Ok(());
        }
        match self.role_of(caller) {
            Some((Role::Orchestrator, _)) => Ok(()),
            Some((Role::Module, module)) => Err(self.refuse(
                caller,
                format!(
                    "uid {} is module '{module}'; only the orchestrator may do this",
                    caller.uid
                ),
            )),
            None => Err(self.refuse(
                caller,
                format!("uid {} is not a principal of identityd", caller.uid),
            )),
        }
    }

    /// The orchestrator, an administrator, or the module itself.
    fn authorize_module(&self, caller: &Caller, module_id: &str) -> Result<(), Error> {
        if self.admins.contains(caller) {
            return Ok(());
        }
        let mine = self
            .config
            .principals
            .iter()
            .filter(|p| p.uid == caller.uid)
            .any(|p| p.role == Role::Orchestrator || p.module() == module_id);
        if mine {
            return Ok(());
        }
        Err(self.refuse(
            caller,
            match self.role_of(caller) {
                Some((_, own)) => format!(
                    "uid {} is module '{own}'; it may not read module '{}'",
                    caller.uid,
                    names::shown(module_id)
                ),
                None => format!("uid {} is not a principal of identityd", caller.uid),
            },
        ))
    }

    fn refuse(&self, caller: &Caller, why: String) -> Error {
        tracing::warn!(uid = caller.uid, pid = caller.pid, "refused: {why}");
        Error::Forbidden(why)
    }

    // --- the device ---

    /// `GET /v1/identities/device`
    pub async fn device(&self, caller: &Caller) -> Result<DeviceIdentity, Error> {
        self.authorize_orchestrator(caller)?;
        let device = self.current()?;
        Ok(DeviceIdentity {
            auth: self.device_auth(&device).await?,
            hub: device.hub,
            device_id: device.device_id,
        })
    }

    async fn device_auth(&self, device: &DeviceRecord) -> Result<Auth, Error> {
        Ok(match &device.credential {
            Credential::Sas { key } => Auth {
                auth_type: AuthType::Sas,
                key_handle: Some(self.symmetric_handle(key).await?),
                cert_id: None,
                secondary_key_handle: None,
            },
            Credential::X509 { cert_id } => Auth {
                auth_type: AuthType::X509,
                key_handle: Some(self.cert_key_handle(cert_id).await?),
                cert_id: Some(cert_id.clone()),
                secondary_key_handle: None,
            },
        })
    }

    /// `POST /v1/identities/device/token`
    pub async fn device_token(&self, caller: &Caller, req: TokenRequest) -> Result<Token, Error> {
        self.authorize_orchestrator(caller)?;
        let expiry = sas::expiry_for(req.expiry_secs)?;
        let device = self.current()?;
        let Credential::Sas { key } = &device.credential else {
            return Err(Error::BadRequest(
                "the device authenticates with an X.509 certificate; it has no SAS tokens".into(),
            ));
        };
        let handle = self.symmetric_handle(key).await?;
        let resource = sas::device_resource(&device.hub, &device.device_id);
        sas::sign(&self.keyd, &handle, &resource, expiry, None).await
    }

    /// How identityd authenticates to the hub as this device.
    async fn device_proof(&self, device: &DeviceRecord) -> Result<DeviceProof, Error> {
        match &device.credential {
            Credential::Sas { key } => {
                let handle = self.symmetric_handle(key).await?;
                let resource = sas::device_resource(&device.hub, &device.device_id);
                let token =
                    sas::sign(&self.keyd, &handle, &resource, sas::now() + 3600, None).await?;
                Ok(DeviceProof::Token(token.token))
            }
            Credential::X509 { cert_id } => {
                Ok(DeviceProof::X509(self.x509_identity(cert_id).await?))
            }
        }
    }

    /// The keyd handle of a symmetric key, derivation applied.
    pub(crate) async fn symmetric_handle(&self, key: &KeyRef) -> Result<KeyHandle, Error> {
        let handle = self
            .keyd
            .key(&key.id)
            .await
            .map_err(|e| Error::from_daemon("keyd", &format!("key '{}'", key.id), e))?;
        match &key.derive {
            None => Ok(handle),
            Some(info) => self
                .keyd
                .derive(&handle, info.as_bytes())
                .await
                .map_err(|e| {
                    Error::from_daemon("keyd", &format!("deriving from key '{}'", key.id), e)
                }),
        }
    }

    /// The keyd handle of the key a certd certificate certifies now.
    async fn cert_key_handle(&self, cert_id: &str) -> Result<KeyHandle, Error> {
        let key_id = self.cert_key_id(cert_id).await?;
        self.keyd
            .key_pair(&key_id)
            .await
            .map_err(|e| Error::from_daemon("keyd", &format!("key '{key_id}'"), e))
    }

    async fn cert_key_id(&self, cert_id: &str) -> Result<String, Error> {
        Ok(self.cert_and_key(cert_id).await?.1)
    }

    /// A certd certificate (PEM chain) and the keyd id of the key it certifies now.
    async fn cert_and_key(&self, cert_id: &str) -> Result<(String, String), Error> {
        let info = self
            .certd
            .get(cert_id)
            .await
            .map_err(|e| Error::from_daemon("certd", &format!("certificate '{cert_id}'"), e))?;
        let key_id = info.key_id.ok_or_else(|| {
            Error::Internal(format!(
                "certd does not know the key of certificate '{cert_id}'"
            ))
        })?;
        Ok((info.pem, key_id))
    }

    /// A TLS client identity: the certificate chain from certd, its key in keyd.
    pub(crate) async fn x509_identity(&self, cert_id: &str) -> Result<Identity, Error> {
        let (pem_text, key_id) = self.cert_and_key(cert_id).await?;
        let chain: Vec<Vec<u8>> = pem::parse_many(&pem_text)
            .map_err(|e| Error::Internal(format!("certd sent an unreadable chain: {e}")))?
            .into_iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(|p| p.into_contents())
            .collect();
        if chain.is_empty() {
            return Err(Error::Internal(format!("certificate '{cert_id}' is empty")));
        }
        let key = KeydKey::load(&self.keyd, &key_id)
            .await
            .map_err(Error::from_certd)?;
        Ok((chain, Arc::new(key)))
    }

    // --- modules ---

    fn modules_key(device: &DeviceRecord) -> String {
        format!("{}/{}", device.hub, device.device_id)
    }

    fn is_local(&self) -> bool {
        self.config.provisioning.source() == "local"
    }

    /// `GET /v1/identities/modules`: all for the orchestrator, its own for a module.
    pub async fn list_modules(&self, caller: &Caller) -> Result<ModuleList, Error> {
        let orchestrator = self.admins.contains(caller)
            || matches!(self.role_of(caller), Some((Role::Orchestrator, _)));
        if !orchestrator && self.role_of(caller).is_none() {
            return Err(self.refuse(
                caller,
                format!("uid {} is not a principal of identityd", caller.uid),
            ));
        }
        let device = self.current()?;
        let records = self.store.modules(&Self::modules_key(&device))?;
        let mut modules = Vec::new();
        for record in records.values() {
            if orchestrator || self.authorize_module_quiet(caller, &record.module_id) {
                modules.push(self.module_identity(record).await?);
            }
        }
        Ok(ModuleList { modules })
    }

    fn authorize_module_quiet(&self, caller: &Caller, module_id: &str) -> bool {
        self.config
            .principals
            .iter()
            .any(|p| p.uid == caller.uid && p.role == Role::Module && p.module() == module_id)
    }

    /// `GET /v1/identities/modules/{id}`
    pub async fn get_module(
        &self,
        caller: &Caller,
        module_id: &str,
    ) -> Result<ModuleIdentity, Error> {
        self.authorize_module(caller, module_id)?;
        let record = self.module_record(module_id)?;
        self.module_identity(&record).await
    }

    fn module_record(&self, module_id: &str) -> Result<ModuleRecord, Error> {
        names::check_module_id(module_id).map_err(|e| {
            Error::BadRequest(format!("module id '{}': {e}", names::shown(module_id)))
        })?;
        let device = self.current()?;
        self.store
            .modules(&Self::modules_key(&device))?
            .remove(module_id)
            .ok_or_else(|| {
                Error::NotFound(format!("no module identity '{}'", names::shown(module_id)))
            })
    }

    async fn module_identity(&self, record: &ModuleRecord) -> Result<ModuleIdentity, Error> {
        let auth = match record.auth {
            AuthType::Sas => Auth {
                auth_type: AuthType::Sas,
                key_handle: Some(self.module_key(record, "primary").await?),
                cert_id: None,
                secondary_key_handle: Some(self.module_key(record, "secondary").await?),
            },
            AuthType::X509 => {
                let cert_id = record
                    .cert_id
                    .clone()
                    .unwrap_or_else(|| names::module_resource_id(&record.module_id));
                Auth {
                    auth_type: AuthType::X509,
                    key_handle: Some(self.cert_key_handle(&cert_id).await?),
                    cert_id: Some(cert_id),
                    secondary_key_handle: None,
                }
            }
        };
        Ok(ModuleIdentity {
            module_id: record.module_id.clone(),
            generation_id: record.generation_id.clone(),
            auth,
        })
    }

    /// The derivation input of a module key: id, generation and which key.
    fn module_key_info(record: &ModuleRecord, which: &str) -> Vec<u8> {
        format!(
            "edgeid module key\n{}\n{}\n{which}",
            record.module_id, record.generation_id
        )
        .into_bytes()
    }

    async fn modules_base(&self) -> Result<KeyHandle, Error> {
        let id = &self.config.keys.modules;
        self.keyd
            .create_key(id, edgeid_keyd::api::SymmetricKeyType::HmacSha256, None)
            .await
            .map_err(|e| Error::from_daemon("keyd", &format!("module key base '{id}'"), e))
    }

    /// A module's SAS key handle, derived in keyd.
    async fn module_key(&self, record: &ModuleRecord, which: &str) -> Result<KeyHandle, Error> {
        let base = self.modules_base().await?;
        self.keyd
            .derive(&base, &Self::module_key_info(record, which))
            .await
            .map_err(|e| Error::from_daemon("keyd", "deriving a module key", e))
    }

    /// A module's SAS key bytes, for registering it with the hub (which must
    /// know them to check its tokens). A derived key is HMAC(base, info),
    /// which is exactly keyd's HMAC signature of `info` under the base key;
    /// the bytes go to the hub over TLS and are wiped here after.
    async fn module_key_bytes(
        &self,
        record: &ModuleRecord,
        which: &str,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let base = self.modules_base().await?;
        self.keyd
            .sign(
                &base,
                SignAlgorithm::HmacSha256,
                &Self::module_key_info(record, which),
                false,
            )
            .await
            .map(Zeroizing::new)
            .map_err(|e| Error::from_daemon("keyd", "deriving a module key", e))
    }

    /// `POST /v1/identities/modules`: creates the module identity (and
    /// registers it with the hub), or returns the existing one (`false`).
    pub async fn create_module(
        &self,
        caller: &Caller,
        req: CreateModuleRequest,
    ) -> Result<(ModuleIdentity, bool), Error> {
        self.authorize_orchestrator(caller)?;
        let module_id = req.module_id;
        names::check_module_id(&module_id).map_err(|e| {
            Error::BadRequest(format!("module id '{}': {e}", names::shown(&module_id)))
        })?;
        let _one = self.modules.lock().await;
        let device = self.current()?;
        let key = Self::modules_key(&device);
        let mut modules = self.store.modules(&key)?;
        if let Some(existing) = modules.get(&module_id) {
            return Ok((self.module_identity(existing).await?, false));
        }
        let mut record = ModuleRecord {
            module_id: module_id.clone(),
            generation_id: new_generation_id()?,
            auth: self.config.modules.auth,
            cert_id: None,
            hub: None,
        };
        let mut thumbprint = None;
        if record.auth == AuthType::X509 {
            let cert_id = names::module_resource_id(&module_id);
            let pem = self.issue_module_cert(&cert_id, &module_id).await?;
            thumbprint = Some(sha256_thumbprint(&pem)?);
            record.cert_id = Some(cert_id);
        }
        if !self.is_local() {
            let registered = self
                .with_hub(|device| {
                    let record = &record;
                    let thumbprint = thumbprint.clone();
                    async move {
                        let credential = match thumbprint {
                            Some(t) => ModuleCredential::Thumbprint(t),
                            None => ModuleCredential::Sas {
                                primary: self.module_key_bytes(record, "primary").await?,
                                secondary: self.module_key_bytes(record, "secondary").await?,
                            },
                        };
                        let proof = self.device_proof(&device).await?;
                        self.hub(&device)
                            .put_module(&proof, &record.module_id, &credential)
                            .await?;
                        Ok(device.hub.clone())
                    }
                })
                .await;
            match registered {
                Ok(hub) => record.hub = Some(hub),
                Err(e) => {
                    // Nothing half-made stays behind.
                    if let Some(cert_id) = &record.cert_id {
                        self.remove_module_cert(cert_id).await;
                    }
                    return Err(e);
                }
            }
        }
        // A reprovisioning during registration may have moved the device.
        let key_now = Self::modules_key(&self.current()?);
        if key_now != key {
            modules = self.store.modules(&key_now)?;
        }
        modules.insert(module_id.clone(), record.clone());
        self.store.save_modules(&key_now, &modules)?;
        tracing::info!(module = %module_id, generation = %record.generation_id, "created module identity");
        Ok((self.module_identity(&record).await?, true))
    }

    fn hub<'a>(&'a self, device: &'a DeviceRecord) -> Hub<'a> {
        Hub {
            cloud: &self.cloud,
            hub: &device.hub,
            device_id: &device.device_id,
            api_version: &self.config.cloud.hub_api_version,
        }
    }

    async fn issue_module_cert(&self, cert_id: &str, module_id: &str) -> Result<String, Error> {
        let req = CreateCertificateRequest {
            id: cert_id.to_owned(),
            issuer: IssuerKind::LocalCa,
            profile: Profile::Client,
            csr: None,
            key_id: Some(cert_id.to_owned()),
            key_spec: None,
            subject_cn: Some(module_id.to_owned()),
            san: None,
            lifetime_secs: Some(self.config.modules.cert_lifetime_days.max(1) * 86400),
            renewal: None,
            transient: false,
        };
        self.certd.create(&req).await.map_err(|e| {
            Error::from_daemon("certd", &format!("issuing certificate '{cert_id}'"), e)
        })
    }

    async fn remove_module_cert(&self, cert_id: &str) {
        let key_id = self.cert_key_id(cert_id).await.ok();
        if let Err(e) = self.certd.delete(cert_id).await {
            if e.status() != Some(StatusCode::NOT_FOUND) {
                tracing::warn!(cert = cert_id, error = %e, "could not delete a module certificate");
            }
        }
        if let Some(key_id) = key_id {
            if let Err(e) = self.keyd.delete_key_pair(&key_id).await {
                if e.status() != Some(StatusCode::NOT_FOUND) {
                    tracing::warn!(key = %key_id, error = %e, "could not delete a module key");
                }
            }
        }
    }

    /// `DELETE /v1/identities/modules/{id}`: removed from the hub, then here.
    pub async fn delete_module(&self, caller: &Caller, module_id: &str) -> Result<(), Error> {
        self.authorize_orchestrator(caller)?;
        let _one = self.modules.lock().await;
        let record = self.module_record(module_id)?;
        if record.hub.is_some() && !self.is_local() {
            self.with_hub(|device| async move {
                let proof = self.device_proof(&device).await?;
                self.hub(&device).delete_module(&proof, module_id).await
            })
            .await?;
        }
        if let Some(cert_id) = &record.cert_id {
            self.remove_module_cert(cert_id).await;
        }
        let device = self.current()?;
        let key = Self::modules_key(&device);
        let mut modules = self.store.modules(&key)?;
        modules.remove(module_id);
        self.store.save_modules(&key, &modules)?;
        tracing::info!(module = %module_id, "deleted module identity");
        Ok(())
    }

    /// `POST /v1/identities/modules/{id}/token`
    pub async fn module_token(
        &self,
        caller: &Caller,
        module_id: &str,
        req: TokenRequest,
    ) -> Result<Token, Error> {
        self.authorize_module(caller, module_id)?;
        let expiry = sas::expiry_for(req.expiry_secs)?;
        let record = self.module_record(module_id)?;
        if record.auth != AuthType::Sas {
            return Err(Error::BadRequest(format!(
                "module '{module_id}' authenticates with an X.509 certificate; it has no SAS tokens"
            )));
        }
        let device = self.current()?;
        let handle = self.module_key(&record, "primary").await?;
        let resource = sas::module_resource(&device.hub, &device.device_id, module_id);
        sas::sign(&self.keyd, &handle, &resource, expiry, None).await
    }

    /// `GET /v1/health`
    pub async fn health(&self) -> Health {
        let mut backends = BTreeMap::new();
        let up = |ok: bool| {
            if ok {
                "ok".to_owned()
            } else {
                "unavailable".to_owned()
            }
        };
        backends.insert("keyd".into(), up(self.keyd.health().await.is_ok()));
        backends.insert("certd".into(), up(self.certd.health().await.is_ok()));
        backends.insert(
            "provisioning".into(),
            match lock(&self.status).state {
                ProvisioningState::Provisioned => "ok".into(),
                ProvisioningState::Provisioning => "provisioning".into(),
                ProvisioningState::Failed if lock(&self.device).is_some() => {
                    "ok (last reprovisioning failed)".into()
                }
                ProvisioningState::Failed => "failed".into(),
            },
        );
        Health::of(backends)
    }
}

/// A fresh generation id: 16 random bytes, hex.
fn new_generation_id() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| Error::Internal("the random generator failed".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The SHA-256 thumbprint (upper-case hex) of a chain's leaf, as the hub stores it.
fn sha256_thumbprint(chain_pem: &str) -> Result<String, Error> {
    let leaf = pem::parse(chain_pem)
        .map_err(|e| Error::Internal(format!("certd sent an unreadable certificate: {e}")))?;
    Ok(digest::digest(&digest::SHA256, leaf.contents())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect())
}
