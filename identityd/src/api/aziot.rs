//! The aziot identity API's wire types (Azure/iot-identity-service
//! `identity/aziot-identity-common-http` and `aziot-identity-common`), as
//! its clients send and read them.

use edgeid_common::encoding::SecretString;
use edgeid_keyd::api::KeyHandle;
use serde::{Deserialize, Serialize};

/// The api-versions aziot-identityd answers.
pub const API_VERSIONS: &[&str] = &["2020-09-01", "2021-12-01", "2022-08-01"];

/// The identity type of hub identities (`type` in bodies and queries).
pub const ID_TYPE_AZIOT: &str = "aziot";
/// The identity type of local identities.
pub const ID_TYPE_LOCAL: &str = "local";

/// An identity: `{"type": "aziot", "spec": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", content = "spec", rename_all = "lowercase")]
pub enum Identity {
    /// A device or module identity in an IoT hub.
    Aziot(AzureIotSpec),
    /// A local identity: a certificate from the device's CA and its key.
    Local(LocalIdSpec),
}

/// A local identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalIdSpec {
    /// The module id it names.
    #[serde(rename = "moduleId")]
    pub module_id: String,
    /// Its key and certificate.
    pub auth: LocalAuthenticationInfo,
}

/// A local identity's key (the caller's to keep) and certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalAuthenticationInfo {
    /// The private key, PKCS#8 PEM; never shown by `Debug`.
    #[serde(rename = "privateKey")]
    pub private_key: SecretString,
    /// The certificate chain, PEM.
    pub certificate: String,
    /// Its notAfter, RFC 3339.
    pub expiration: String,
}

/// `localIdOpts` of a local identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum LocalIdOpts {
    /// An X.509 certificate.
    #[serde(rename = "x509")]
    X509 {
        /// A TLS client certificate, or one for either end.
        #[serde(default)]
        attributes: LocalIdAttr,
    },
}

/// What a local identity's certificate is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalIdAttr {
    /// A TLS client.
    #[default]
    Client,
    /// A TLS server, which is also a client.
    Server,
}

/// A hub identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AzureIotSpec {
    /// The hub's host name.
    #[serde(rename = "hubName")]
    pub hub_name: String,
    /// Where to connect (the hub itself, unless behind a gateway).
    #[serde(rename = "gatewayHost")]
    pub gateway_host: String,
    /// The device id.
    #[serde(rename = "deviceId")]
    pub device_id: String,
    /// The module id (module identities).
    #[serde(rename = "moduleId", default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    /// The generation id (module identities).
    #[serde(rename = "genId", default, skip_serializing_if = "Option::is_none")]
    pub gen_id: Option<String>,
    /// Its credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthenticationInfo>,
}

/// How an identity authenticates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthenticationInfo {
    /// `sas`, `x509` or `tpm`.
    #[serde(rename = "type")]
    pub auth_type: String,
    /// A bearer keyd handle of its key: signs through keyd's aziot API.
    #[serde(rename = "keyHandle", default, skip_serializing_if = "Option::is_none")]
    pub key_handle: Option<KeyHandle>,
    /// Its certificate's id in certd (X.509).
    #[serde(rename = "certId", default, skip_serializing_if = "Option::is_none")]
    pub cert_id: Option<String>,
}

/// `POST /identities/device` and `POST /identities/device/reprovision`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRequest {
    /// `aziot`.
    #[serde(rename = "type")]
    pub id_type: String,
}

/// `POST /identities/modules`; also `PUT /identities/modules/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleRequest {
    /// `aziot` (or `local`).
    #[serde(rename = "type")]
    pub id_type: String,
    /// The module id.
    #[serde(rename = "moduleId")]
    pub module_id: String,
    /// Options of a local identity.
    #[serde(
        rename = "localIdOpts",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub local_id_opts: Option<LocalIdOpts>,
}

/// `GET /identities/modules`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityList {
    /// Every module identity.
    pub identities: Vec<Identity>,
}

/// `GET /trust-bundle`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustBundle {
    /// The CA certificates to trust, PEM.
    pub certificate: String,
}

/// `GET /identities/provisioning` (api-version 2021-12-01 and later).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum ProvisioningInfo {
    /// The Device Provisioning Service.
    Dps {
        /// `symmetric_key`, `x509` or `tpm`.
        auth: String,
        /// The global endpoint.
        endpoint: String,
        /// The ID scope.
        scope_id: String,
        /// The registration id.
        registration_id: String,
        /// The custom payload sent to DPS (`provisioning.payload_file`).
        payload: Option<serde_json::Value>,
    },
    /// A hub and device given by hand.
    Manual {
        /// `sas` or `x509`.
        auth: String,
    },
    /// No hub (edgeid's `local` source).
    None,
}
