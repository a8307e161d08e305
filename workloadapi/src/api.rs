//! The IoT Edge workload API's wire types: camelCase JSON, base64 binary
//! fields, PEM as plain text in JSON strings (as IoT Edge sends it and the
//! Azure IoT SDKs read it).
//!
//! Request bodies are read as IoT Edge's runtime (aziot-edged 1.5) reads
//! them: only what it requires is required, and a field it does not know is
//! ignored, never an error (no `deny_unknown_fields` here, unlike edgeid's
//! own `/v1` APIs). Fields edgeid adds are optional and default to what the
//! runtime does.

use serde::{Deserialize, Serialize};

/// The `api-version` values IoT Edge's runtime accepts on every workload
/// route (`edgelet-http/src/version.rs`), oldest first; no other is served.
pub const API_VERSIONS: &[&str] = &[
    "2018-06-28",
    "2019-01-30",
    "2019-10-22",
    "2019-11-05",
    "2020-07-07",
    "2021-12-07",
    "2022-08-03",
];

/// The version the runtime gives its modules in `IOTEDGE_APIVERSION`, and
/// the one dev mode prints.
pub const CURRENT_API_VERSION: &str = "2022-08-03";

/// `POST /modules/{name}/genid/{genid}/sign`. The runtime reads only `data`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignRequest {
    /// `primary` (the default) or `secondary` (an edgeid addition: the
    /// runtime always signs with the primary key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// `HMACSHA256`, the default and the only algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algo: Option<String>,
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
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
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

/// `POST /modules/{name}/certificate/identity`. The runtime ignores the body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityCertificateRequest {
    /// When the certificate should expire (RFC 3339); clamped to policy
    /// (an edgeid addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
}

/// `POST /modules/{name}/genid/{genid}/certificate/server`. The runtime
/// requires only `commonName`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerCertificateRequest {
    /// Subject CN, also a SAN (an IP address one when it is an address).
    pub common_name: String,
    /// When the certificate should expire (RFC 3339); clamped to policy.
    /// edgeHub sends it; without it the certificate gets the policy's maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
}

/// A private key in a certificate response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrivateKey {
    /// Always `key`: the bytes are the key itself (PKCS#8 PEM).
    #[serde(rename = "type")]
    pub key_type: String,
    /// PEM; wiped when dropped, never shown by `Debug`.
    pub bytes: edgeid_common::encoding::SecretString,
}

/// A certificate response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateResponse {
    /// The new key pair's private key.
    pub private_key: PrivateKey,
    /// The chain, leaf first, PEM.
    pub certificate: String,
    /// The leaf's notAfter, RFC 3339 as the runtime writes it
    /// (`2026-01-31T12:34:56+00:00`).
    pub expiration: String,
}

/// `GET /trust-bundle`, `GET /manifest-trust-bundle`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustBundleResponse {
    /// PEM.
    pub certificate: String,
}

/// `GET /modules`: the modules identityd knows, in the runtime's shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListModulesResponse {
    /// One entry per module.
    pub modules: Vec<ModuleDetails>,
}

/// A module as the runtime lists it. edgeid does not run modules (the
/// orchestrator does), so what only a container runtime knows is left as
/// the runtime leaves it for a container it cannot inspect: status
/// `unknown`, no start or exit time, empty settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleDetails {
    /// Always `id`, as the runtime sends it.
    pub id: String,
    /// The module id.
    pub name: String,
    /// `docker`, the only type the runtime lists.
    #[serde(rename = "type")]
    pub module_type: String,
    /// `{settings, env}`.
    pub config: ModuleConfig,
    /// `{runtimeStatus: {status}}`.
    pub status: ModuleStatus,
}

/// A listed module's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleConfig {
    /// The runtime's container settings (`image`, `createOptions`).
    pub settings: serde_json::Value,
    /// Always empty, as the runtime sends it.
    pub env: Vec<serde_json::Value>,
}

/// A listed module's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleStatus {
    /// `{status}`: `unknown` here.
    pub runtime_status: RuntimeStatus,
}

/// `unknown|running|stopped|failed|dead`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeStatus {
    /// The module's state.
    pub status: String,
}

/// `POST /modules/{name}/genid/{genid}/attest` (an edgeid addition): a TPM
/// quote bound to the calling module.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttestRequest {
    /// The module's backend's nonce, 8-64 bytes, base64.
    pub nonce: String,
    /// Where in IMA's log to start (bytes); the whole firmware log is always sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ima_offset: Option<u64>,
}

/// Evidence that this module runs on a device in the quoted state. The
/// quote's qualifying data is `qualifyingData`: SHA-256 over
/// `"edgeid module attestation v1\n" ‖ deviceId ‖ "\n" ‖ moduleId ‖ "\n" ‖
/// spiffeId (empty without SPIFFE) ‖ "\n" ‖ nonce`, which the backend
/// recomputes from what it expects.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttestResponse {
    /// The device, as identityd has it.
    pub device_id: String,
    /// The calling module.
    pub module_id: String,
    /// Its SPIFFE ID, where the SPIFFE Workload API is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// What the quote carries as qualifying data, base64.
    pub qualifying_data: String,
    /// The quote.
    pub quote: AttestQuote,
    /// The TPM's attestation key.
    pub attestation_key: AttestKey,
    /// The TPM's endorsement key, which the AK is proved against.
    pub endorsement_key: AttestKey,
    /// The EK certificate (DER, base64), where the TPM's maker stored one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endorsement_certificate: Option<String>,
}

/// A TPM quote, as `tpm2_checkquote` and `edgeidctl attest verify` read it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttestQuote {
    /// TPMS_ATTEST, base64.
    pub attest: String,
    /// TPMT_SIGNATURE, base64.
    pub signature: String,
    /// The same ECDSA signature, DER, base64.
    pub signature_der: String,
    /// Quoted PCR values: bank → index → value (base64).
    pub pcrs: std::collections::BTreeMap<String, std::collections::BTreeMap<u32, String>>,
    /// The TPM's reboot count when it quoted.
    pub reset_count: u32,
    /// The TPM's clock (ms) when it quoted.
    pub clock: u64,
    /// The firmware event log, base64, where keyd can read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_log: Option<String>,
    /// IMA's log from `imaOffset`, base64, where keyd can read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ima_log: Option<String>,
    /// `firmwareLog` is the whole log (else it was cut at 4 MiB).
    #[serde(default)]
    pub firmware_log_complete: bool,
    /// Why there is no firmware log (none on this device, or not readable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_log_error: Option<String>,
    /// Where `imaLog` starts in IMA's log.
    #[serde(default)]
    pub ima_log_offset: u64,
    /// `imaLog` reaches the log's end (else ask again from `imaLogOffset`
    /// plus its length).
    #[serde(default)]
    pub ima_log_complete: bool,
    /// Why there is no IMA log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ima_log_error: Option<String>,
}

/// A TPM public key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttestKey {
    /// TPM2B_PUBLIC, base64.
    pub public: String,
    /// SubjectPublicKeyInfo, PEM.
    pub pem: String,
    /// Its TPM name, base64 (the AK's; empty for the EK).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}
