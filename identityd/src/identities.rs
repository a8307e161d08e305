//! The domain the server calls: who may see which identity, the device
//! identity as provisioned and its SAS tokens, and provisioning runs (at
//! start when nothing valid is stored, on request, and once after the hub
//! refuses the device's credential). Module identities are the rest of
//! [`Identityd`], in [`crate::modules`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use edgeid_certd::CertdClient;
use edgeid_common::authz::Admins;
use edgeid_common::server::Health;
use edgeid_common::sync::lock;
use edgeid_common::Caller;
use edgeid_keyd::KeydClient;

use crate::api::{DeviceIdentity, ProvisioningState, ProvisioningStatus, Token, TokenRequest};
use crate::cloud::Cloud;
use crate::config::{IdentitydConfig, Role};
use crate::credentials::Credentials;
pub use crate::credentials::Handles;
use crate::error::Error;
use crate::hub::DeviceProof;
use crate::names;
use crate::provision::Provisioner;
use crate::sas;
use crate::store::{Credential, DeviceRecord, Store};

/// After a hub 401 led to reprovisioning, another 401 within this window does
/// not reprovision again; the window doubles up to [`AUTH_BACKOFF_MAX`].
const AUTH_BACKOFF_MIN: Duration = Duration::from_secs(30);
const AUTH_BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// Waits between failed provisioning attempts in the background.
const RETRY_MIN: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// How the device is provisioned ([`Identityd::provisioning_facts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisioningFacts {
    /// By hand; with a certificate or a shared key.
    Manual {
        /// X.509 (else SAS).
        x509: bool,
    },
    /// By DPS.
    Dps {
        /// `symmetric_key`, `x509` or `tpm`.
        auth: &'static str,
        /// Its global endpoint.
        endpoint: String,
        /// Its ID scope.
        scope_id: String,
        /// The registration id.
        registration_id: String,
        /// The payload each registration sends, as its file holds it now.
        payload: Option<serde_json::Value>,
    },
    /// No cloud.
    Local,
}

/// Who a caller is ([`Identityd::caller_identity`]).
#[derive(Debug, Clone)]
pub enum CallerIdentity {
    /// The device (the orchestrator, administrators).
    Device(DeviceIdentity),
    /// The caller's own module.
    Module(crate::api::ModuleIdentity),
}

#[derive(Debug)]
struct Status {
    state: ProvisioningState,
    last_error: Option<String>,
}

/// identityd.
pub struct Identityd {
    pub(crate) config: IdentitydConfig,
    pub(crate) admins: Admins,
    pub(crate) keyd: KeydClient,
    pub(crate) certd: CertdClient,
    pub(crate) cloud: Cloud,
    pub(crate) store: Store,
    device: SyncMutex<Option<DeviceRecord>>,
    status: SyncMutex<Status>,
    /// One provisioning at a time.
    provisioning: tokio::sync::Mutex<()>,
    /// A background provisioning loop is running.
    looping: AtomicBool,
    /// Wakes that loop for an attempt now (a reprovision request).
    retry_now: tokio::sync::Notify,
    /// Module identities change one at a time (they share one file).
    pub(crate) modules: tokio::sync::Mutex<()>,
    /// The last reprovisioning a hub 401 caused, and the window after it.
    auth_backoff: SyncMutex<Option<(Instant, Duration)>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

/// The names every aziot identity of the device carries.
pub struct DeviceNames {
    /// The hub.
    pub hub: String,
    /// Where the hub is reached: the parent gateway, else the hub.
    pub gateway_host: String,
    /// The device id.
    pub device_id: String,
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

    pub(crate) fn credentials(&self) -> Credentials<'_> {
        self.credentials_as(Handles::Granted)
    }

    pub(crate) fn credentials_as(&self, handles: Handles) -> Credentials<'_> {
        Credentials {
            keyd: &self.keyd,
            certd: &self.certd,
            handles,
        }
    }

    fn provisioner(&self) -> Provisioner<'_> {
        Provisioner {
            config: &self.config,
            keyd: &self.keyd,
            certd: &self.certd,
            cloud: &self.cloud,
        }
    }

    /// Whether no valid provisioning result is stored.
    pub fn needs_provisioning(&self) -> bool {
        lock(&self.device).is_none()
    }

    pub(crate) fn current(&self) -> Result<DeviceRecord, Error> {
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
        let outcome = match self.provisioner().provision_once().await {
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
                    me.ensure_principal_modules().await;
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

    /// Provisions again now and waits for the outcome (the aziot API's
    /// reprovision answers when it is done); the identity served until it
    /// succeeds is the one provisioned before.
    pub async fn reprovision_now(&self, caller: &Caller) -> Result<(), Error> {
        self.authorize_orchestrator(caller)?;
        tracing::info!(%caller, "reprovisioning on request, waiting for the outcome");
        self.provision().await.map(|_| ())
    }

    /// How the device is provisioned, as configured: the source, how it
    /// authenticates, and for DPS the endpoint, scope and registration id.
    pub fn provisioning_facts(&self, caller: &Caller) -> Result<ProvisioningFacts, Error> {
        self.admits(caller)?;
        use crate::config::{AttestationConfig, DeviceAuthConfig, ProvisioningConfig};
        Ok(match &self.config.provisioning {
            ProvisioningConfig::Manual(manual) => ProvisioningFacts::Manual {
                x509: matches!(manual.auth, Some(DeviceAuthConfig::X509 { .. })),
            },
            ProvisioningConfig::Dps(dps) => {
                let (auth, registration_id) = match &dps.attestation {
                    AttestationConfig::SymmetricKey {
                        registration_id, ..
                    } => ("symmetric_key", registration_id.clone()),
                    AttestationConfig::Tpm { registration_id } => ("tpm", registration_id.clone()),
                    AttestationConfig::X509 {
                        registration_id, ..
                    } => (
                        "x509",
                        // Without one, the certificate's CN, which the hub
                        // made the device id.
                        registration_id.clone().unwrap_or_else(|| {
                            lock(&self.device)
                                .as_ref()
                                .map(|d| d.device_id.clone())
                                .unwrap_or_default()
                        }),
                    ),
                };
                ProvisioningFacts::Dps {
                    auth,
                    endpoint: dps.global_endpoint.clone(),
                    scope_id: dps.id_scope.clone(),
                    registration_id,
                    payload: dps.payload()?,
                }
            }
            ProvisioningConfig::Local(_) => ProvisioningFacts::Local,
        })
    }

    /// Who the caller is: the device for the orchestrator and
    /// administrators, its own module identity for a module.
    pub async fn caller_identity(
        &self,
        caller: &Caller,
        handles: Handles,
    ) -> Result<CallerIdentity, Error> {
        match self.role_of(caller) {
            Some((Role::Module, module)) if !self.admins.contains(caller) => {
                let module = module.to_owned();
                Ok(CallerIdentity::Module(
                    self.get_module_as(caller, &module, handles).await?,
                ))
            }
            _ => Ok(CallerIdentity::Device(
                self.device_as(caller, handles).await?,
            )),
        }
    }

    /// The device's hub, gateway host and id, for callers who may see
    /// module identities (the aziot API names them in every module identity).
    pub fn device_names(&self) -> Result<DeviceNames, Error> {
        let device = self.current()?;
        Ok(DeviceNames {
            gateway_host: device.gateway_host(),
            hub: device.hub,
            device_id: device.device_id,
        })
    }

    /// The CA certificates modules should trust (certd's trust bundle).
    pub async fn trust_bundle(&self, caller: &Caller) -> Result<String, Error> {
        self.admits(caller)?;
        self.certd
            .trust_bundle()
            .await
            .map_err(|e| Error::from_daemon("certd", "the trust bundle", e))
    }

    /// Runs `op` against the hub; if the hub refuses the device's credential
    /// (401), reprovisions once (unless one such run happened recently) and
    /// runs `op` again with the new identity.
    pub(crate) async fn with_hub<T, F, Fut>(&self, op: F) -> Result<T, Error>
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

    pub(crate) fn role_of(&self, caller: &Caller) -> Option<(Role, &str)> {
        self.config
            .principals
            .iter()
            .filter(|p| p.uid == caller.uid)
            .map(|p| (p.role, p.module()))
            // The widest role a uid has: orchestrator, then device (the
            // reference answers the device to a host process that may read
            // both), then module.
            .max_by_key(|(role, _)| match role {
                Role::Orchestrator => 2,
                Role::Device => 1,
                Role::Module => 0,
            })
    }

    /// Whether the caller is somebody here (an administrator or a
    /// principal), asked before its request's body is read.
    pub(crate) fn admits(&self, caller: &Caller) -> Result<(), Error> {
        if self.admins.contains(caller) || self.role_of(caller).is_some() {
            return Ok(());
        }
        Err(self.refuse(
            caller,
            format!("uid {} is not a principal of identityd", caller.uid),
        ))
    }

    pub(crate) fn authorize_orchestrator(&self, caller: &Caller) -> Result<(), Error> {
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
            Some((Role::Device, _)) => Err(self.refuse(
                caller,
                format!(
                    "uid {} may read the device identity only; only the orchestrator may do this",
                    caller.uid
                ),
            )),
            None => Err(self.refuse(
                caller,
                format!("uid {} is not a principal of identityd", caller.uid),
            )),
        }
    }

    /// The orchestrator, an administrator, or a `device` principal: who may
    /// read the device identity (and so sign as the device).
    pub(crate) fn authorize_device_reader(&self, caller: &Caller) -> Result<(), Error> {
        if matches!(self.role_of(caller), Some((Role::Device, _))) {
            return Ok(());
        }
        self.authorize_orchestrator(caller)
    }

    /// The orchestrator, an administrator, or the module itself.
    pub(crate) fn authorize_module(&self, caller: &Caller, module_id: &str) -> Result<(), Error> {
        if self.admins.contains(caller) {
            return Ok(());
        }
        let mine = self
            .config
            .principals
            .iter()
            .filter(|p| p.uid == caller.uid)
            .any(|p| {
                p.role == Role::Orchestrator || (p.role == Role::Module && p.module() == module_id)
            });
        if mine {
            return Ok(());
        }
        Err(self.refuse(
            caller,
            match self.role_of(caller) {
                Some((Role::Device, _)) => format!(
                    "uid {} may read the device identity only; not module '{}'",
                    caller.uid,
                    names::shown(module_id)
                ),
                Some((_, own)) => format!(
                    "uid {} is module '{own}'; it may not read module '{}'",
                    caller.uid,
                    names::shown(module_id)
                ),
                None => format!("uid {} is not a principal of identityd", caller.uid),
            },
        ))
    }

    pub(crate) fn refuse(&self, caller: &Caller, why: String) -> Error {
        tracing::warn!(uid = caller.uid, pid = caller.pid, "refused: {why}");
        Error::Forbidden(why)
    }

    // --- the device ---

    /// `GET /v1/identities/device`
    pub async fn device(&self, caller: &Caller) -> Result<DeviceIdentity, Error> {
        self.device_as(caller, Handles::Granted).await
    }

    /// The device identity, with handles of the kind asked for.
    pub async fn device_as(
        &self,
        caller: &Caller,
        handles: Handles,
    ) -> Result<DeviceIdentity, Error> {
        self.authorize_device_reader(caller)?;
        let device = self.current()?;
        Ok(DeviceIdentity {
            auth: self.credentials_as(handles).device_auth(&device).await?,
            hub: device.hub,
            device_id: device.device_id,
            gateway: device.gateway,
        })
    }

    /// `POST /v1/identities/device/token`
    pub async fn device_token(&self, caller: &Caller, req: TokenRequest) -> Result<Token, Error> {
        self.authorize_device_reader(caller)?;
        let expiry = sas::expiry_for(req.expiry_secs)?;
        let device = self.current()?;
        let Credential::Sas { key } = &device.credential else {
            return Err(Error::BadRequest(
                "the device authenticates with an X.509 certificate; it has no SAS tokens".into(),
            ));
        };
        let handle = self.credentials().symmetric_handle(key).await?;
        let resource = sas::device_resource(&device.hub, &device.device_id);
        sas::sign(&self.keyd, &handle, &resource, expiry, None).await
    }

    /// How identityd authenticates to the hub as this device.
    pub(crate) async fn device_proof(&self, device: &DeviceRecord) -> Result<DeviceProof, Error> {
        self.credentials().device_proof(device).await
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
