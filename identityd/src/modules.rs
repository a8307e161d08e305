//! Module identities: listed, read, created (registered with the hub,
//! keys derived in keyd or a certificate from certd) and deleted, and their
//! SAS tokens. One more part of [`Identityd`], the domain the server calls.

use aws_lc_rs::digest;
use edgeid_certd::api::{CreateCertificateRequest, IssuerKind, Profile};
use edgeid_common::Caller;
use edgeid_keyd::api::KeyHandle;
use http::StatusCode;
use zeroize::Zeroizing;

use crate::api::{
    Auth, AuthType, CreateModuleRequest, ModuleIdentity, ModuleList, Token, TokenRequest,
};
use crate::config::Role;
use crate::error::Error;
use crate::hub::{Hub, ModuleCredential};
use crate::identities::{Handles, Identityd};
use crate::names;
use crate::sas;
use crate::store::{DeviceRecord, ModuleRecord};

impl Identityd {
    fn modules_key(device: &DeviceRecord) -> String {
        format!("{}/{}", device.hub, device.device_id)
    }

    fn is_local(&self) -> bool {
        self.config.provisioning.source() == "local"
    }

    /// `GET /v1/identities/modules`: all for the orchestrator, its own for a module.
    pub async fn list_modules(&self, caller: &Caller) -> Result<ModuleList, Error> {
        self.list_modules_as(caller, Handles::Granted).await
    }

    /// [`Self::list_modules`] with handles of the kind asked for.
    pub async fn list_modules_as(
        &self,
        caller: &Caller,
        handles: Handles,
    ) -> Result<ModuleList, Error> {
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
                modules.push(self.module_identity(record, handles).await?);
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
        self.get_module_as(caller, module_id, Handles::Granted)
            .await
    }

    /// [`Self::get_module`] with handles of the kind asked for.
    pub async fn get_module_as(
        &self,
        caller: &Caller,
        module_id: &str,
        handles: Handles,
    ) -> Result<ModuleIdentity, Error> {
        self.authorize_module(caller, module_id)?;
        let record = self.module_record(module_id)?;
        self.module_identity(&record, handles).await
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

    async fn module_identity(
        &self,
        record: &ModuleRecord,
        handles: Handles,
    ) -> Result<ModuleIdentity, Error> {
        let auth = match record.auth {
            AuthType::Sas => {
                let base = self.modules_base(handles).await?;
                Auth {
                    auth_type: AuthType::Sas,
                    key_handle: Some(self.module_key(&base, record, "primary").await?),
                    cert_id: None,
                    secondary_key_handle: Some(self.module_key(&base, record, "secondary").await?),
                }
            }
            AuthType::X509 => {
                let cert_id = record
                    .cert_id
                    .clone()
                    .unwrap_or_else(|| names::module_resource_id(&record.module_id));
                Auth {
                    auth_type: AuthType::X509,
                    key_handle: Some(
                        self.credentials_as(handles)
                            .cert_key_handle(&cert_id, None)
                            .await?,
                    ),
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

    async fn modules_base(&self, handles: Handles) -> Result<KeyHandle, Error> {
        let id = &self.config.keys.modules;
        let what = || format!("module key base '{id}'");
        let granted = self
            .keyd
            .create_key(id, edgeid_keyd::api::SymmetricKeyType::HmacSha256, None)
            .await
            .map_err(|e| Error::from_daemon("keyd", &what(), e))?;
        match handles {
            Handles::Granted => Ok(granted),
            // What is derived from a bearer base is bearer too.
            Handles::Bearer => self
                .keyd
                .bearer_key(id)
                .await
                .map_err(|e| Error::from_daemon("keyd", &what(), e)),
        }
    }

    /// A module's SAS key handle, derived in keyd from `base` (a handle of
    /// [`Self::modules_base`]; bearer if it is).
    async fn module_key(
        &self,
        base: &KeyHandle,
        record: &ModuleRecord,
        which: &str,
    ) -> Result<KeyHandle, Error> {
        self.keyd
            .derive(base, &Self::module_key_info(record, which))
            .await
            .map_err(|e| Error::from_daemon("keyd", "deriving a module key", e))
    }

    /// A module's SAS key bytes, for registering it with the hub (which must
    /// know them to check its tokens): derived in keyd, exported by the
    /// grant identityd alone holds, sent to the hub over TLS and wiped here
    /// after.
    async fn module_key_bytes(
        &self,
        record: &ModuleRecord,
        which: &str,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let base = self.modules_base(Handles::Granted).await?;
        let handle = self.module_key(&base, record, which).await?;
        self.keyd
            .export(&handle)
            .await
            .map_err(|e| Error::from_daemon("keyd", "exporting a module key", e))
    }

    /// `POST /v1/identities/modules`: creates the module identity (and
    /// registers it with the hub), or returns the existing one (`false`).
    pub async fn create_module(
        &self,
        caller: &Caller,
        req: CreateModuleRequest,
    ) -> Result<(ModuleIdentity, bool), Error> {
        self.create_module_as(caller, req, Handles::Granted).await
    }

    /// [`Self::create_module`] with handles of the kind asked for.
    pub async fn create_module_as(
        &self,
        caller: &Caller,
        req: CreateModuleRequest,
        handles: Handles,
    ) -> Result<(ModuleIdentity, bool), Error> {
        self.authorize_orchestrator(caller)?;
        self.create_module_unchecked(req.module_id, handles).await
    }

    /// The modules identityd keeps for its principals (`keep_module`): made
    /// where missing once the device is provisioned, as the reference makes
    /// the hub identities of its `idtype = ["module"]` principals (a host
    /// process such as the Device Update agent finds its module there).
    pub(crate) async fn ensure_principal_modules(&self) {
        let kept = self
            .config
            .principals
            .iter()
            .filter(|p| p.role == Role::Module && p.keep_module);
        for p in kept {
            match self
                .create_module_unchecked(p.module().to_owned(), Handles::Granted)
                .await
            {
                Ok((_, true)) => {
                    tracing::info!(module = %p.module(), principal = %p.name, "made the module identity of a principal")
                }
                Ok((_, false)) => {}
                Err(e) => {
                    tracing::warn!(module = %p.module(), error = %e, "cannot make the module identity of a principal")
                }
            }
        }
    }

    /// [`Self::create_module_as`] for a caller already authorized.
    async fn create_module_unchecked(
        &self,
        module_id: String,
        handles: Handles,
    ) -> Result<(ModuleIdentity, bool), Error> {
        names::check_module_id(&module_id).map_err(|e| {
            Error::BadRequest(format!("module id '{}': {e}", names::shown(&module_id)))
        })?;
        let _one = self.modules.lock().await;
        let device = self.current()?;
        let key = Self::modules_key(&device);
        let mut modules = self.store.modules(&key)?;
        if let Some(existing) = modules.get(&module_id) {
            return Ok((self.module_identity(existing, handles).await?, false));
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
        Ok((self.module_identity(&record, handles).await?, true))
    }

    fn hub<'a>(&'a self, device: &'a DeviceRecord) -> Hub<'a> {
        Hub {
            cloud: &self.cloud,
            hub: device.connect_to(),
            device_id: &device.device_id,
            api_version: &self.config.cloud.hub_api_version,
        }
    }

    async fn issue_module_cert(&self, cert_id: &str, module_id: &str) -> Result<String, Error> {
        let req = CreateCertificateRequest {
            id: cert_id.to_owned(),
            issuer: Some(IssuerKind::LocalCa),
            profile: Profile::Client,
            csr: None,
            key_id: Some(cert_id.to_owned()),
            key_spec: None,
            subject_cn: Some(module_id.to_owned()),
            san: None,
            subject: Default::default(),
            lifetime_secs: Some(self.config.modules.cert_lifetime_days.max(1) * 86400),
            renewal: None,
            transient: false,
        };
        self.certd.create(&req).await.map_err(|e| {
            Error::from_daemon("certd", &format!("issuing certificate '{cert_id}'"), e)
        })
    }

    async fn remove_module_cert(&self, cert_id: &str) {
        let key_id = self.credentials().cert_key_id(cert_id).await.ok();
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
        let base = self.modules_base(Handles::Granted).await?;
        let handle = self.module_key(&base, &record, "primary").await?;
        let resource = sas::module_resource(&device.hub, &device.device_id, module_id);
        sas::sign(&self.keyd, &handle, &resource, expiry, None).await
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
