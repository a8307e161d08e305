//! The typed async client the orchestrator, workloadd and `edgeidctl` use.

use std::path::Path;

use edgeid_common::client::{ClientError, UdsClient};
use edgeid_common::server::Health;

use crate::api::*;
use crate::sas::encode;

/// An identityd client over its Unix socket (connections pooled and reused).
#[derive(Clone)]
pub struct IdentitydClient {
    http: UdsClient,
}

impl IdentitydClient {
    /// A client for the identityd listening on `socket`.
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self {
            http: UdsClient::new(socket),
        }
    }

    /// The underlying transport, for raw requests.
    pub fn transport(&self) -> &UdsClient {
        &self.http
    }

    /// The device identity.
    pub async fn device(&self) -> Result<DeviceIdentity, ClientError> {
        self.http.get("/v1/identities/device").await
    }

    /// A SAS token for the device.
    pub async fn device_token(&self, expiry_secs: Option<u64>) -> Result<Token, ClientError> {
        self.http
            .post("/v1/identities/device/token", &TokenRequest { expiry_secs })
            .await
    }

    /// The module identities the caller may see.
    pub async fn modules(&self) -> Result<Vec<ModuleIdentity>, ClientError> {
        Ok(self
            .http
            .get::<ModuleList>("/v1/identities/modules")
            .await?
            .modules)
    }

    /// Creates a module identity (or returns the existing one).
    pub async fn create_module(&self, module_id: &str) -> Result<ModuleIdentity, ClientError> {
        self.http
            .post(
                "/v1/identities/modules",
                &CreateModuleRequest {
                    module_id: module_id.to_owned(),
                },
            )
            .await
    }

    /// One module identity.
    pub async fn module(&self, module_id: &str) -> Result<ModuleIdentity, ClientError> {
        self.http
            .get(&format!("/v1/identities/modules/{}", encode(module_id)))
            .await
    }

    /// Deletes a module identity.
    pub async fn delete_module(&self, module_id: &str) -> Result<(), ClientError> {
        self.http
            .delete(&format!("/v1/identities/modules/{}", encode(module_id)))
            .await
    }

    /// A SAS token for a module.
    pub async fn module_token(
        &self,
        module_id: &str,
        expiry_secs: Option<u64>,
    ) -> Result<Token, ClientError> {
        self.http
            .post(
                &format!("/v1/identities/modules/{}/token", encode(module_id)),
                &TokenRequest { expiry_secs },
            )
            .await
    }

    /// Where provisioning stands.
    pub async fn provisioning(&self) -> Result<ProvisioningStatus, ClientError> {
        self.http.get("/v1/provisioning").await
    }

    /// Starts provisioning again.
    pub async fn reprovision(&self) -> Result<ProvisioningStatus, ClientError> {
        self.http
            .post("/v1/reprovision", &serde_json::json!({}))
            .await
    }

    /// Health and version.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.http.get("/v1/health").await
    }
}
