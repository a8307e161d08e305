//! The keyd API on the wire (ARCHITECTURE.md section 4). JSON bodies; binary
//! fields are standard base64.

use std::collections::BTreeMap;
use std::fmt;

use edgeid_common::encoding::{Base64Bytes, SecretBytes};
use serde::{Deserialize, Serialize};

/// The kinds of asymmetric key keyd makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyPairSpec {
    /// ECDSA on NIST P-256.
    #[serde(rename = "ec-p256")]
    EcP256,
    /// ECDSA on NIST P-384.
    #[serde(rename = "ec-p384")]
    EcP384,
    /// RSA, 2048-bit modulus.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// RSA, 3072-bit modulus.
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    /// RSA, 4096-bit modulus.
    #[serde(rename = "rsa-4096")]
    Rsa4096,
    /// Ed25519 (software store only).
    #[serde(rename = "ed25519")]
    Ed25519,
}

/// The kinds of symmetric key keyd makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SymmetricKeyType {
    /// An HMAC-SHA256 key (SAS tokens, derivation).
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    /// An AES-256-GCM key (encrypt / decrypt).
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
}

/// Signature and MAC algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SignAlgorithm {
    /// ECDSA with SHA-256, DER-encoded signature (P-256 keys).
    #[serde(rename = "ecdsa-sha256")]
    EcdsaSha256,
    /// ECDSA with SHA-384, DER-encoded signature (P-384 keys).
    #[serde(rename = "ecdsa-sha384")]
    EcdsaSha384,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    #[serde(rename = "rsa-pkcs1-sha256")]
    RsaPkcs1Sha256,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, salt length 32.
    #[serde(rename = "rsa-pss-sha256")]
    RsaPssSha256,
    /// Ed25519 over the whole message.
    #[serde(rename = "ed25519")]
    Ed25519,
    /// HMAC-SHA256 with a symmetric key.
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
}

macro_rules! wire_name {
    ($ty:ty) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // The serde name is the one name a user ever sees.
                let v = serde_json::to_value(self).map_err(|_| fmt::Error)?;
                f.write_str(v.as_str().ok_or(fmt::Error)?)
            }
        }
    };
}
wire_name!(KeyPairSpec);
wire_name!(SymmetricKeyType);
wire_name!(SignAlgorithm);

/// An opaque, tamper-evident reference to a key. Carries no key material.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyHandle(pub String);

impl fmt::Debug for KeyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHandle({})", self.0)
    }
}

/// `POST /v1/keypair`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyPairRequest {
    /// The key id.
    pub id: String,
    /// The kind of key.
    pub spec: KeyPairSpec,
}

/// The answer naming a key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandleResponse {
    /// The handle to use in later calls.
    pub handle: KeyHandle,
}

/// `POST /v1/public-key`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyRequest {
    /// The key pair.
    pub handle: KeyHandle,
}

/// The public half of a key pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublicKeyResponse {
    /// The kind of key.
    pub spec: KeyPairSpec,
    /// SubjectPublicKeyInfo, PEM.
    pub pem: String,
}

/// `POST /v1/sign`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// The key.
    pub handle: KeyHandle,
    /// How to sign.
    pub algorithm: SignAlgorithm,
    /// The message, or its digest when `prehashed`.
    pub data: Base64Bytes,
    /// `data` is already the digest (ECDSA and RSA only).
    #[serde(default)]
    pub prehashed: bool,
}

/// A signature or MAC.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignResponse {
    /// ECDSA: DER; RSA and Ed25519: raw; HMAC: the MAC.
    pub signature: Base64Bytes,
}

/// `POST /v1/key`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// The key id.
    pub id: String,
    /// The kind of key.
    #[serde(rename = "type")]
    pub key_type: SymmetricKeyType,
    /// Key bytes to import instead of generating (a shared access key, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<SecretBytes>,
}

/// `POST /v1/derive`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeriveRequest {
    /// The base key (symmetric).
    pub handle: KeyHandle,
    /// The derivation input; the derived key is HMAC-SHA256(base key, info).
    pub info: Base64Bytes,
}

/// `POST /v1/export`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// A derived key (what `derive` answered).
    pub handle: KeyHandle,
}

/// A derived key's bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportResponse {
    /// The key; wiped from memory when dropped, never shown by `Debug`.
    pub key: SecretBytes,
}

/// `POST /v1/encrypt` and `POST /v1/decrypt`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CryptRequest {
    /// An aes-256-gcm key.
    pub handle: KeyHandle,
    /// Plaintext to encrypt, or ciphertext (as encrypt returned it) to decrypt.
    pub data: Base64Bytes,
    /// Additional authenticated data; decrypt must be given the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aad: Option<Base64Bytes>,
}

/// The result of encrypt or decrypt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CryptResponse {
    /// Ciphertext (version byte, nonce, sealed data and tag) or plaintext.
    pub data: Base64Bytes,
}

/// A TPM public key in the two forms provisioning services use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TpmPublicKey {
    /// TPM2B_PUBLIC, marshalled (what DPS calls the key).
    pub public: Base64Bytes,
    /// SubjectPublicKeyInfo, PEM.
    pub pem: String,
}

/// `GET /v1/tpm/attestation-keys`: what TPM attestation with a provisioning
/// service starts from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TpmAttestationKeys {
    /// The endorsement key (RSA-2048, TCG default template).
    pub endorsement_key: TpmPublicKey,
    /// The EK certificate (DER) from the TPM's NV storage, where its maker put one.
    pub endorsement_certificate: Option<Base64Bytes>,
    /// keyd's storage primary key (the parent of every TPM key keyd makes).
    pub storage_key: TpmPublicKey,
}

/// `POST /v1/tpm/activate`: the last step of TPM attestation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmActivateRequest {
    /// The id to keep the imported HMAC key under.
    pub id: String,
    /// What the provisioning service sent (DPS: `authenticationKey`): a
    /// credential for this TPM's EK and an HMAC key wrapped to its storage key.
    pub blob: Base64Bytes,
}

/// `GET /v1/tpm/ak`: the attestation key, a restricted ECDSA P-256 signing
/// key in the TPM that signs only what the TPM itself produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TpmAttestationKey {
    /// TPM2B_PUBLIC, marshalled (what `tpm2_checkquote -u` and `tpm2_print` read).
    pub public: Base64Bytes,
    /// SubjectPublicKeyInfo, PEM.
    pub pem: String,
    /// Its TPM name (nameAlg ‖ digest), what `tpm2_makecredential -n` takes.
    pub name: Base64Bytes,
}

/// `POST /v1/tpm/ak/activate`: proves the AK is in the TPM whose EK a
/// verifier knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmAkActivateRequest {
    /// `tpm2_makecredential`'s output file (or its TPM2B_ID_OBJECT ‖
    /// TPM2B_ENCRYPTED_SECRET), made for the EK and the AK's name.
    pub credential: Base64Bytes,
}

/// The credential's secret, which only the TPM holding both keys recovers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TpmAkActivateResponse {
    /// The secret the verifier chose.
    pub secret: SecretBytes,
}

/// `POST /v1/tpm/quote`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmQuoteRequest {
    /// The verifier's nonce, 8-64 bytes: the quote's qualifying data.
    pub nonce: Base64Bytes,
    /// PCRs to quote per bank: `{"sha256": [0, 1, 2, 3, 7]}`.
    pub pcrs: BTreeMap<String, Vec<u32>>,
    /// Where in IMA's measurement list to start (a byte offset: what the
    /// last answer's `offset` plus its data's length was).
    #[serde(default)]
    pub ima_offset: u64,
}

/// A quote: what the AK signed, the PCR values it covers, the event logs
/// that explain them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TpmQuoteResponse {
    /// TPMS_ATTEST, marshalled (`tpm2_checkquote -m`).
    pub attest: Base64Bytes,
    /// TPMT_SIGNATURE, marshalled (`tpm2_checkquote -s`).
    pub signature: Base64Bytes,
    /// The same ECDSA signature, DER-encoded, over SHA-256(`attest`).
    pub signature_der: Base64Bytes,
    /// The quoted PCR values, per bank and index.
    pub pcrs: BTreeMap<String, BTreeMap<u32, Base64Bytes>>,
    /// The TPM's clock when it signed (also inside `attest`).
    pub clock: TpmClock,
    /// The kernel's event logs.
    pub event_logs: TpmEventLogs,
}

/// TPMS_CLOCK_INFO and the firmware version, from a quote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TpmClock {
    /// Milliseconds the TPM has run since its clock was set.
    pub clock: u64,
    /// Reboots of the TPM.
    pub reset_count: u32,
    /// Resumes since the last reboot.
    pub restart_count: u32,
    /// The clock has never gone back.
    pub safe: bool,
    /// The TPM's firmware version.
    pub firmware_version: u64,
}

/// The event logs a quote carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TpmEventLogs {
    /// The firmware's TCG event log (PCRs 0-7).
    pub firmware: TpmEventLog,
    /// IMA's binary measurement list (PCR 10), from `ima_offset`.
    pub ima: TpmEventLog,
}

/// One event log, or why it is missing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TpmEventLog {
    /// Where `data` starts in the log.
    pub offset: u64,
    /// The log's bytes from `offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Base64Bytes>,
    /// Nothing follows `data` (else ask again from `offset` + its length).
    pub complete: bool,
    /// Why there is no data (no such log on this device, or not readable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/tpm/certify`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmCertifyRequest {
    /// A key in the TPM store.
    pub handle: KeyHandle,
    /// The verifier's nonce (8-64 bytes), if it wants one in the attestation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<Base64Bytes>,
}

/// TPM2_Certify of a key by the AK.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TpmCertifyResponse {
    /// TPMS_ATTEST (TPM_ST_ATTEST_CERTIFY), marshalled.
    pub attest: Base64Bytes,
    /// TPMT_SIGNATURE by the AK.
    pub signature: Base64Bytes,
    /// The same ECDSA signature, DER-encoded, over SHA-256(`attest`).
    pub signature_der: Base64Bytes,
    /// The certified key's TPM2B_PUBLIC: hashed, it is the name in `attest`.
    pub public: Base64Bytes,
    /// The certified key's name.
    pub name: Base64Bytes,
}

/// One key in `GET /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The key id.
    pub id: String,
    /// Its spec or symmetric type (`ec-p256`, `hmac-sha256`, ...).
    pub kind: String,
    /// The store holding it (`software`, `tpm`, `pkcs11`).
    pub backend: String,
}

/// `GET /v1/keys`: the keys the caller may use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyList {
    /// Sorted by id.
    pub keys: Vec<KeyInfo>,
}
