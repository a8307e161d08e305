//! The keys API of Azure IoT Identity Service (aziot-keyd 1.6) on the wire,
//! as its client crate (`aziot-key-client-async`) sends and reads it:
//! camelCase fields, binary fields standard base64, every request with
//! `?api-version=`. The shapes are the reference's
//! (`key/aziot-key-common-http/src/lib.rs`); the names here are ours.

use edgeid_common::encoding::{Base64Bytes, SecretBytes};
use serde::{Deserialize, Serialize};

use super::KeyHandle;

/// The api-versions aziot-keyd serves, oldest first; every route takes all.
pub const API_VERSIONS: &[&str] = &["2020-09-01", "2021-05-01"];

/// What `preferredAlgorithms` means when it is absent: the reference's default.
pub const DEFAULT_PREFERRED_ALGORITHMS: &str = "ec-p256:rsa-2048:*";

/// `POST /keypair`: create the key pair, or load it if `keyId` exists.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateKeyPairRequest {
    #[serde(rename = "keyId")]
    pub id: String,
    /// `:`-separated algorithms, most preferred first; `*` is any.
    #[serde(
        rename = "preferredAlgorithms",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub preferred_algorithms: Option<String>,
}

/// `POST /key`: create (or import, with `keyBytes`) a symmetric key, or
/// load it if `keyId` exists.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateKeyRequest {
    #[serde(rename = "keyId")]
    pub id: String,
    /// The key to import; wiped from memory when dropped.
    #[serde(rename = "keyBytes", default, skip_serializing_if = "Option::is_none")]
    pub key_bytes: Option<SecretBytes>,
    /// `,`-separated: `derive`, `encrypt`, `sign`.
    pub usage: String,
}

/// The answer naming a key (every create and load).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandleResponse {
    #[serde(rename = "keyHandle")]
    pub handle: KeyHandle,
}

/// `DELETE /keypair` and `DELETE /key`: the key is named by a handle, in
/// the body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteRequest {
    #[serde(rename = "keyHandle")]
    pub handle: KeyHandle,
}

/// `POST /keypair/{to}`: the key pair `from` becomes `to`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveRequest {
    pub from: String,
}

/// `POST /parameters/{name}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParameterRequest {
    #[serde(rename = "keyHandle")]
    pub handle: KeyHandle,
}

/// A public parameter: `ECDSA` or `RSA` for `algorithm`, else base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParameterResponse {
    pub value: String,
}

/// `POST /sign`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignRequest {
    #[serde(rename = "keyHandle")]
    pub handle: KeyHandle,
    #[serde(flatten)]
    pub parameters: SignParameters,
}

/// `algorithm` and its `parameters`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "algorithm", content = "parameters")]
pub enum SignParameters {
    /// ECDSA over a digest the caller computed; the signature is DER.
    #[serde(rename = "ECDSA")]
    Ecdsa { digest: Base64Bytes },
    /// HMAC-SHA256 of a message.
    #[serde(rename = "HMAC-SHA256")]
    HmacSha256 { message: Base64Bytes },
}

/// A signature or MAC.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignResponse {
    pub signature: Base64Bytes,
}

/// `algorithm` and its `parameters`, for encrypt and decrypt.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "algorithm", content = "parameters")]
pub enum EncryptParameters {
    /// Authenticated encryption with a symmetric key.
    #[serde(rename = "AEAD")]
    Aead { iv: Base64Bytes, aad: Base64Bytes },
    /// The RSA private-key operation with PKCS#1 v1.5 type 1 padding: how
    /// the reference's OpenSSL engine signs a DigestInfo with an RSA key.
    #[serde(rename = "RSA-PKCS1")]
    RsaPkcs1,
    /// The raw RSA private-key operation.
    #[serde(rename = "RSA-NO-PADDING")]
    RsaNoPadding,
}

/// `POST /encrypt`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncryptRequest {
    #[serde(rename = "keyHandle")]
    pub handle: KeyHandle,
    #[serde(flatten)]
    pub parameters: EncryptParameters,
    pub plaintext: Base64Bytes,
}

/// The answer of `POST /encrypt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncryptResponse {
    pub ciphertext: Base64Bytes,
}

/// `POST /decrypt`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecryptRequest {
    #[serde(rename = "keyHandle")]
    pub handle: KeyHandle,
    #[serde(flatten)]
    pub parameters: EncryptParameters,
    pub ciphertext: Base64Bytes,
}

/// The answer of `POST /decrypt`; wiped from memory when dropped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecryptResponse {
    pub plaintext: SecretBytes,
}

/// `POST /derivedkey`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeriveRequest {
    #[serde(rename = "baseKeyHandle")]
    pub base_handle: KeyHandle,
    #[serde(rename = "derivationData")]
    pub derivation_data: Base64Bytes,
}

/// `POST /derivedkey/export`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportRequest {
    #[serde(rename = "keyHandle")]
    pub handle: KeyHandle,
}

/// The derived key's bytes; wiped from memory when dropped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportResponse {
    pub key: SecretBytes,
}

/// The TPM API of Azure IoT Identity Service (aziot-tpmd 1.6), which keyd
/// serves since it holds the TPM: the reference's
/// `tpm/aziot-tpm-common-http` shapes, snake_case, bytes standard base64.
pub mod tpmd {
    use edgeid_common::encoding::Base64Bytes;
    use serde::{Deserialize, Serialize};

    /// The one api-version aziot-tpmd serves.
    pub const API_VERSIONS: &[&str] = &["2020-09-01"];

    /// The paths, each its own route (the reference's `from_uri`).
    pub const PATHS: &[&str] = &["/get_tpm_keys", "/import_auth_key", "/sign_with_auth_key"];

    /// The id keyd keeps the imported auth key under (in the TPM store,
    /// whatever the default store is).
    pub const AUTH_KEY_ID: &str = "aziot-tpmd/auth-key";

    /// `GET /get_tpm_keys`: TPM2B_PUBLIC of the endorsement key and of the
    /// storage key keyd imports under.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct GetTpmKeysResponse {
        pub endorsement_key: Base64Bytes,
        pub storage_root_key: Base64Bytes,
    }

    /// `POST /import_auth_key`: what DPS sends as `authenticationKey` — a
    /// credential for the EK and an HMAC key wrapped to the storage key
    /// (only this TPM unwraps it: no secret in the clear).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct ImportAuthKeyRequest {
        pub key: Base64Bytes,
    }

    /// `POST /sign_with_auth_key`: HMAC-SHA256 of `data` by the auth key.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct SignWithAuthKeyRequest {
        pub data: Base64Bytes,
    }

    /// The MAC (the reference calls it a digest).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct SignWithAuthKeyResponse {
        pub digest: Base64Bytes,
    }
}
