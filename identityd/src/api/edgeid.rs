//! identityd's wire types (ARCHITECTURE.md section 6), shared by the server
//! and [`crate::client`]. Identities name keys by keyd handle and
//! certificates by certd id; they never carry key bytes.

use edgeid_common::encoding::SecretString;
use edgeid_keyd::api::KeyHandle;
use serde::{Deserialize, Serialize};

/// How an identity authenticates to the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthType {
    /// Shared access signatures, made with an HMAC key in keyd.
    Sas,
    /// TLS client authentication with a certificate from certd and its key in keyd.
    X509,
}

/// An identity's credential: where its key and certificate live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    /// SAS or X.509.
    #[serde(rename = "type")]
    pub auth_type: AuthType,
    /// The keyd handle of the HMAC key (SAS) or the private key (X.509).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_handle: Option<KeyHandle>,
    /// The certd id of the certificate (X.509).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_id: Option<String>,
    /// SAS modules: the keyd handle of the secondary key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key_handle: Option<KeyHandle>,
}

/// `GET /v1/identities/device`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    /// The hub's host name (`local` mode: the device's own name for it).
    pub hub: String,
    /// The device id in that hub.
    pub device_id: String,
    /// Its credential.
    pub auth: Auth,
    /// The parent IoT Edge device the hub is reached through (nested edge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// A module identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleIdentity {
    /// The module id.
    pub module_id: String,
    /// Changes each time the module is created anew; its keys change with it.
    pub generation_id: String,
    /// Its credential.
    pub auth: Auth,
}

/// `GET /v1/identities/modules`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleList {
    /// The modules the caller may see.
    pub modules: Vec<ModuleIdentity>,
}

/// `POST /v1/identities/modules`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateModuleRequest {
    /// The module id.
    pub module_id: String,
}

/// `POST /v1/identities/device/token`, `POST /v1/identities/modules/{id}/token`:
/// a SAS token for the identity, signed by keyd.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Seconds until the token expires (default 3600, at most 30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_secs: Option<u64>,
}

/// A SAS token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Token {
    /// `SharedAccessSignature sr=...&sig=...&se=...`: a bearer credential
    /// until it expires, so wiped when dropped and never shown by `Debug`.
    pub token: SecretString,
    /// Its expiry, seconds since the Unix epoch (the `se` field).
    pub expires: u64,
}

/// Where provisioning stands: `GET /v1/provisioning`, and the answer to
/// `POST /v1/reprovision` (202).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProvisioningStatus {
    /// `manual`, `dps` or `local`.
    pub source: String,
    /// `provisioned`, `provisioning` or `failed`.
    pub state: ProvisioningState,
    /// When the identity now served was provisioned (RFC 3339), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned_at: Option<String>,
    /// Why the last attempt failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The provisioning state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProvisioningState {
    /// An identity is served and no attempt is running.
    Provisioned,
    /// An attempt is running.
    Provisioning,
    /// The last attempt failed (an earlier identity may still be served).
    Failed,
}
