//! The hub's REST API for module identities, called with the device's own
//! credential (a device SAS token, or TLS client auth with its certificate):
//! `PUT /devices/{d}/modules/{m}` creates (or, with `If-Match: *`, updates)
//! a module identity; `DELETE` with `If-Match: *` removes it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use edgeid_common::encoding::SecretString;
use http::{Method, StatusCode};
use serde_json::json;
use zeroize::Zeroizing;

use crate::cloud::{Call, Cloud, Identity};
use crate::error::Error;
use crate::sas;

/// How identityd authenticates to the hub as the device.
pub enum DeviceProof {
    /// A device SAS token.
    Token(SecretString),
    /// TLS client auth.
    X509(Identity),
}

/// A module's credential as registered with the hub.
pub enum ModuleCredential {
    /// Primary and secondary symmetric keys.
    Sas {
        /// The primary key.
        primary: Zeroizing<Vec<u8>>,
        /// The secondary key.
        secondary: Zeroizing<Vec<u8>>,
    },
    /// A self-signed certificate's SHA-256 thumbprint (hex).
    Thumbprint(String),
}

/// The hub of one device.
pub struct Hub<'a> {
    /// The HTTPS client.
    pub cloud: &'a Cloud,
    /// Where its REST API answers (`host[:port]`): the hub, or the parent
    /// gateway between (tokens are the hub's either way).
    pub hub: &'a str,
    /// The device.
    pub device_id: &'a str,
    /// `api-version`.
    pub api_version: &'a str,
}

impl Hub<'_> {
    fn module_path(&self, module_id: &str) -> String {
        format!(
            "/devices/{}/modules/{}?api-version={}",
            sas::encode(self.device_id),
            sas::encode(module_id),
            self.api_version
        )
    }

    fn call(&self, method: Method, path: String, proof: &DeviceProof) -> Call<'_> {
        let mut call = Call::new(method, self.hub, path);
        match proof {
            DeviceProof::Token(t) => call.authorization = Some(t.clone()),
            DeviceProof::X509(identity) => call.identity = Some(identity.clone()),
        }
        call
    }

    /// Creates the module identity, or replaces its credential if the hub already has it.
    pub async fn put_module(
        &self,
        proof: &DeviceProof,
        module_id: &str,
        credential: &ModuleCredential,
    ) -> Result<(), Error> {
        let authentication = match credential {
            ModuleCredential::Sas { primary, secondary } => json!({
                "type": "sas",
                "symmetricKey": {
                    "primaryKey": STANDARD.encode(primary.as_slice()),
                    "secondaryKey": STANDARD.encode(secondary.as_slice()),
                },
            }),
            ModuleCredential::Thumbprint(t) => json!({
                "type": "selfSigned",
                "x509Thumbprint": { "primaryThumbprint": t, "secondaryThumbprint": t },
            }),
        };
        let body = json!({
            "deviceId": self.device_id,
            "moduleId": module_id,
            "authentication": authentication,
        });
        let mut call = self.call(Method::PUT, self.module_path(module_id), proof);
        call.body = Some(body);
        let reply = self.cloud.send(&call).await?;
        if reply.status.is_success() {
            return Ok(());
        }
        if reply.status != StatusCode::CONFLICT {
            return Err(reply.refusal());
        }
        // It exists (left over from an earlier life of this module): replace it.
        call.headers.push(("if-match", "*".into()));
        let reply = self.cloud.send(&call).await?;
        if reply.status.is_success() {
            Ok(())
        } else {
            Err(reply.refusal())
        }
    }

    /// Deletes the module identity; one the hub does not have is already gone.
    pub async fn delete_module(&self, proof: &DeviceProof, module_id: &str) -> Result<(), Error> {
        let mut call = self.call(Method::DELETE, self.module_path(module_id), proof);
        call.headers.push(("if-match", "*".into()));
        let reply = self.cloud.send(&call).await?;
        if reply.status.is_success() || reply.status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(reply.refusal())
        }
    }
}
