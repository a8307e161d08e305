//! The aziot certificates API's wire types (Azure/iot-identity-service
//! `cert/aziot-cert-common-http`), as its clients send and read them: the
//! CSR and certificates are PEM text, not base64.

use edgeid_keyd::api::KeyHandle;
use serde::{Deserialize, Serialize};

/// The api-versions aziot-certd answers (every route takes each).
pub const API_VERSIONS: &[&str] = &["2020-09-01"];

/// `POST /certificates`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateCertRequest {
    /// The certificate's id.
    #[serde(rename = "certId")]
    pub cert_id: String,
    /// A PKCS#10 request, PEM.
    pub csr: String,
    /// Who signs it; without one, the id's configured issuance.
    #[serde(default)]
    pub issuer: Option<Issuer>,
}

/// The issuer of [`CreateCertRequest`]: a certificate in certd and a handle
/// to its key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issuer {
    /// The issuing certificate's id.
    #[serde(rename = "certId")]
    pub cert_id: String,
    /// A keyd handle to its key.
    #[serde(rename = "privateKeyHandle")]
    pub private_key_handle: KeyHandle,
}

/// A chain (`POST /certificates`, `GET` and `PUT /certificates/{id}`), and
/// the body of `PUT /certificates/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pem {
    /// PEM, leaf first.
    pub pem: String,
}
