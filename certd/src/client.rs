//! The typed async client other daemons and tools use to call certd.

use std::path::Path;

use edgeid_common::client::{ClientError, UdsClient};
use edgeid_common::server::Health;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use crate::api::*;

/// A certd client over its Unix socket (connections pooled and reused).
#[derive(Clone)]
pub struct CertdClient {
    http: UdsClient,
}

impl CertdClient {
    /// A client for the certd listening on `socket`.
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self {
            http: UdsClient::new(socket),
        }
    }

    /// The underlying transport, for raw requests.
    pub fn transport(&self) -> &UdsClient {
        &self.http
    }

    /// Issues a certificate; the chain, leaf first.
    pub async fn create(&self, req: &CreateCertificateRequest) -> Result<String, ClientError> {
        Ok(self
            .http
            .post::<_, CertificatePem>("/v1/certificates", req)
            .await?
            .pem)
    }

    /// A certificate, its expiry and renewal policy.
    pub async fn get(&self, id: &str) -> Result<CertificateInfo, ClientError> {
        self.http
            .get(&format!("/v1/certificates/{}", encode(id)))
            .await
    }

    /// Imports a chain (leaf first), optionally tied to a keyd key.
    pub async fn import(
        &self,
        id: &str,
        pem: &str,
        key_id: Option<&str>,
    ) -> Result<(), ClientError> {
        let req = ImportCertificateRequest {
            pem: pem.to_owned(),
            key_id: key_id.map(str::to_owned),
        };
        self.http
            .put(&format!("/v1/certificates/{}", encode(id)), &req)
            .await
    }

    /// Renews an issued certificate now; the new chain and expiry.
    pub async fn renew(&self, id: &str) -> Result<CertificateInfo, ClientError> {
        self.http
            .post(
                &format!("/v1/certificates/{}", encode(id)),
                &serde_json::json!({}),
            )
            .await
    }

    /// Deletes a certificate (its key stays in keyd).
    pub async fn delete(&self, id: &str) -> Result<(), ClientError> {
        self.http
            .delete(&format!("/v1/certificates/{}", encode(id)))
            .await
    }

    /// The ids this caller may see.
    pub async fn list(&self) -> Result<Vec<String>, ClientError> {
        Ok(self
            .http
            .get::<CertificateList>("/v1/certificates")
            .await?
            .ids)
    }

    /// The CA certificates modules should trust, PEM.
    pub async fn trust_bundle(&self) -> Result<String, ClientError> {
        Ok(self.http.get::<TrustBundle>("/v1/trust-bundle").await?.pem)
    }

    /// certd's version and whether keyd answers.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.http.get("/v1/health").await
    }
}

fn encode(id: &str) -> String {
    utf8_percent_encode(id, NON_ALPHANUMERIC).to_string()
}
