//! The IoT Edge workload API's wire types: camelCase JSON, base64 binary
//! fields, PEM as plain text in JSON strings (as IoT Edge sends it and the
//! Azure IoT SDKs read it).

use serde::{Deserialize, Serialize};

/// The versions IoT Edge's workload API has published; a later well-formed
/// version is served as the newest of these.
pub const API_VERSIONS: &[&str] = &["2018-06-28", "2019-01-30", "2019-11-05", "2020-10-10"];

/// `POST /modules/{name}/genid/{genid}/sign`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignRequest {
    /// `primary` or `secondary`.
    pub key_id: String,
    /// `HMACSHA256`.
    pub algo: String,
    /// The bytes to sign, base64.
    pub data: String,
}

/// The HMAC, base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignResponse {
    /// HMAC-SHA256 of the data under the module's key, base64.
    pub digest: String,
}

/// `POST /modules/{name}/genid/{genid}/encrypt`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EncryptRequest {
    /// base64.
    pub plaintext: String,
    /// base64; bound to the ciphertext (the same value must decrypt it).
    pub initialization_vector: String,
}

/// The ciphertext, base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncryptResponse {
    /// base64.
    pub ciphertext: String,
}

/// `POST /modules/{name}/genid/{genid}/decrypt`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DecryptRequest {
    /// base64, as `encrypt` returned it.
    pub ciphertext: String,
    /// base64, as given to `encrypt`.
    pub initialization_vector: String,
}

/// The plaintext, base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecryptResponse {
    /// base64.
    pub plaintext: String,
}

/// `POST /modules/{name}/certificate/identity`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityCertificateRequest {
    /// When the certificate should expire (RFC 3339); clamped to policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
}

/// `POST /modules/{name}/genid/{genid}/certificate/server`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerCertificateRequest {
    /// Subject CN, also a DNS SAN.
    pub common_name: String,
    /// When the certificate should expire (RFC 3339); clamped to policy.
    pub expiration: String,
}

/// A private key in a certificate response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrivateKey {
    /// Always `key`: the bytes are the key itself (PKCS#8 PEM).
    #[serde(rename = "type")]
    pub key_type: String,
    /// PEM.
    pub bytes: String,
}

/// A certificate response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateResponse {
    /// The new key pair's private key.
    pub private_key: PrivateKey,
    /// The chain, leaf first, PEM.
    pub certificate: String,
    /// The leaf's notAfter, RFC 3339.
    pub expiration: String,
}

/// `GET /trust-bundle`, `GET /manifest-trust-bundle`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustBundleResponse {
    /// PEM.
    pub certificate: String,
}
