//! The Device Provisioning Service's device REST API (public spec,
//! `api-version=2021-06-01`):
//!
//! 1. `PUT /{idScope}/registrations/{registrationId}/register` with
//!    `{registrationId[, tpm: {endorsementKey, storageRootKey}][, payload]}`, authenticated
//!    by a SAS token (`skn=registration`) or a TLS client certificate. For TPM
//!    attestation the first attempt goes without a token; the service answers
//!    401 with `{authenticationKey}`, a key wrapped so that only this TPM can
//!    import it, and the device signs its token with that key (in the TPM).
//! 2. The service answers 202 `{operationId, status: "assigning"}`; the device
//!    polls `GET .../operations/{operationId}` (honouring `Retry-After`) until
//!    the status is `assigned` (`registrationState: {assignedHub, deviceId}`)
//!    or `failed` / `disabled`.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use edgeid_common::encoding::SecretString;
use edgeid_keyd::api::KeyHandle;
use edgeid_keyd::KeydClient;
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::cloud::{Call, Cloud, Identity, Reply};
use crate::error::Error;
use crate::sas;

/// How the device proves itself to the service.
pub enum Proof {
    /// A SAS token signed with this HMAC key.
    Sas(KeyHandle),
    /// TLS client authentication.
    X509(Identity),
    /// TPM: the endorsement and storage key publics (TPM2B_PUBLIC), and the
    /// keyd id to activate the service's key under.
    Tpm {
        /// The endorsement key.
        endorsement_key: Vec<u8>,
        /// The storage root key.
        storage_key: Vec<u8>,
        /// Where keyd keeps the activated key.
        key_id: String,
    },
}

/// Where the service assigned the device.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The hub (`host[:port]`).
    pub hub: String,
    /// The device id there.
    pub device_id: String,
    /// TPM attestation: the activated key, which the device's hub tokens are signed with.
    pub activated: Option<KeyHandle>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Operation {
    operation_id: Option<String>,
    status: Option<String>,
    registration_state: Option<RegistrationState>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegistrationState {
    assigned_hub: Option<String>,
    device_id: Option<String>,
    status: Option<String>,
    error_code: Option<serde_json::Value>,
    error_message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TpmChallenge {
    authentication_key: String,
}

/// Largest registration payload read (DPS keeps custom allocation data small).
const MAX_PAYLOAD_BYTES: u64 = 64 * 1024;

impl crate::config::DpsConfig {
    /// The registration payload its `payload_file` holds now, if it names one.
    pub fn payload(&self) -> Result<Option<serde_json::Value>, Error> {
        self.payload_file.as_deref().map(read_payload).transpose()
    }
}

/// The registration payload in `file` (`provisioning.payload_file`): JSON.
fn read_payload(file: &std::path::Path) -> Result<serde_json::Value, Error> {
    let bad = |why: String| {
        Error::Setup(format!(
            "provisioning.payload_file {}: {why}",
            file.display()
        ))
    };
    let mut text = Vec::new();
    edgeid_common::fs::read_capped(file, MAX_PAYLOAD_BYTES, &mut text)
        .map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))
}

/// One registration, start to assignment.
pub struct Registration<'a> {
    /// The HTTPS client.
    pub cloud: &'a Cloud,
    /// keyd (signing tokens, TPM activation).
    pub keyd: &'a KeydClient,
    /// The service's host (`host[:port]`).
    pub endpoint: &'a str,
    /// The ID scope.
    pub id_scope: &'a str,
    /// The registration id.
    pub registration_id: &'a str,
    /// `api-version`.
    pub api_version: &'a str,
    /// How long to wait for an assignment.
    pub timeout: Duration,
    /// Sent as the registration's `payload`.
    pub payload: Option<serde_json::Value>,
}

impl Registration<'_> {
    /// Registers and waits for the assignment.
    pub async fn run(&self, proof: Proof) -> Result<Assignment, Error> {
        let started = Instant::now();
        let scope = sas::encode(self.id_scope);
        let reg = sas::encode(self.registration_id);
        let register_path = format!(
            "/{scope}/registrations/{reg}/register?api-version={}",
            self.api_version
        );
        let mut body = json!({ "registrationId": self.registration_id });
        if let Some(payload) = &self.payload {
            body["payload"] = payload.clone();
        }
        let (mut signing_key, identity) = match proof {
            Proof::Sas(handle) => (Some(handle), None),
            Proof::X509(identity) => (None, Some(identity)),
            Proof::Tpm {
                endorsement_key,
                storage_key,
                key_id,
            } => {
                body["tpm"] = json!({
                    "endorsementKey": STANDARD.encode(&endorsement_key),
                    "storageRootKey": STANDARD.encode(&storage_key),
                });
                let handle = self.tpm_challenge(&register_path, &body, &key_id).await?;
                (Some(handle), None)
            }
        };
        let tpm = body.get("tpm").is_some();
        let authorize = |call: &mut Call<'_>, token: &Option<SecretString>| {
            call.authorization.clone_from(token);
            call.identity.clone_from(&identity);
        };
        let token = self.token(signing_key.as_ref()).await?;
        let mut call = Call::new(Method::PUT, self.endpoint, register_path.clone());
        call.body = Some(body);
        authorize(&mut call, &token);
        let reply = self.cloud.send(&call).await?;
        let mut progress = read_operation(&reply, self.registration_id)?;
        let Some(operation_id) = progress.operation_id.clone() else {
            return Err(Error::Upstream(format!(
                "{} answered {} without an operationId",
                reply.endpoint, reply.status
            )));
        };
        let poll_path = format!(
            "/{scope}/registrations/{reg}/operations/{}?api-version={}",
            sas::encode(&operation_id),
            self.api_version
        );
        let mut wait = reply.retry_after;
        let (hub, device_id) = loop {
            if let Some(assigned) = progress.assigned.take() {
                break assigned;
            }
            if started.elapsed() > self.timeout {
                return Err(Error::Unavailable(format!(
                    "DPS {}: registration '{}' was not assigned within {}s",
                    self.endpoint,
                    self.registration_id,
                    self.timeout.as_secs()
                )));
            }
            tokio::time::sleep(
                wait.unwrap_or(Duration::from_secs(2))
                    .min(Duration::from_secs(30)),
            )
            .await;
            let token = self.token(signing_key.as_ref()).await?;
            let mut call = Call::new(Method::GET, self.endpoint, poll_path.clone());
            authorize(&mut call, &token);
            let reply = self.cloud.send(&call).await?;
            progress = read_operation(&reply, self.registration_id)?;
            wait = reply.retry_after;
        };
        Ok(Assignment {
            hub,
            device_id,
            activated: if tpm { signing_key.take() } else { None },
        })
    }

    /// TPM: register without a token; the 401 carries the wrapped key, which
    /// keyd activates and imports into the TPM.
    async fn tpm_challenge(
        &self,
        path: &str,
        body: &serde_json::Value,
        key_id: &str,
    ) -> Result<KeyHandle, Error> {
        let mut call = Call::new(Method::PUT, self.endpoint, path.to_owned());
        call.body = Some(body.clone());
        let reply = self.cloud.send(&call).await?;
        if reply.status != StatusCode::UNAUTHORIZED {
            return Err(if reply.status.is_success() {
                Error::Upstream(format!(
                    "{} accepted a TPM registration without its challenge",
                    reply.endpoint
                ))
            } else {
                reply.refusal()
            });
        }
        let blob = read_tpm_challenge(&reply)?;
        self.keyd.tpm_activate(key_id, &blob).await.map_err(|e| {
            Error::from_daemon(
                "keyd",
                "activating the provisioning service's key in the TPM",
                e,
            )
        })
    }

    async fn token(&self, key: Option<&KeyHandle>) -> Result<Option<SecretString>, Error> {
        let Some(key) = key else { return Ok(None) };
        let resource = sas::registration_resource(self.id_scope, self.registration_id);
        let expiry = sas::now() + 3600;
        Ok(Some(
            sas::sign(self.keyd, key, &resource, expiry, Some("registration"))
                .await?
                .token,
        ))
    }
}

/// Where a registration stands, as a register or poll answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The operation to poll, when given.
    pub operation_id: Option<String>,
    /// Once assigned: the hub and the device id, both checked.
    pub assigned: Option<(String, String)>,
}

/// Reads a register or operation-status answer from the service: a
/// refusal, a body that is not the operation JSON, a failed or disabled
/// registration, or an assignment without a valid hub and device id are
/// errors that say which.
pub fn read_operation(reply: &Reply, registration_id: &str) -> Result<Progress, Error> {
    let op: Operation = reply.json()?;
    let assigned = match op.status.as_deref() {
        Some("assigned") => {
            let state = op.registration_state.as_ref();
            let hub = state.and_then(|s| s.assigned_hub.clone());
            let device_id = state.and_then(|s| s.device_id.clone());
            let (Some(hub), Some(device_id)) = (hub, device_id) else {
                return Err(Error::Upstream(format!(
                    "DPS {}: 'assigned' without assignedHub and deviceId",
                    reply.endpoint
                )));
            };
            crate::names::check_hub(&hub)
                .map_err(|e| Error::Upstream(format!("DPS assigned hub: {e}")))?;
            crate::names::check_device_id(&device_id)
                .map_err(|e| Error::Upstream(format!("DPS assigned device id: {e}")))?;
            Some((hub, device_id))
        }
        Some("assigning") | Some("unassigned") | None => None,
        Some(other) => {
            return Err(failed(
                &reply.endpoint,
                registration_id,
                other,
                op.registration_state.as_ref(),
            ))
        }
    };
    Ok(Progress {
        operation_id: op.operation_id,
        assigned,
    })
}

/// Reads the service's TPM challenge (a 401 with `{authenticationKey}`):
/// the wrapped key blob for keyd to activate.
pub fn read_tpm_challenge(reply: &Reply) -> Result<Vec<u8>, Error> {
    let challenge: TpmChallenge = serde_json::from_slice(&reply.body).map_err(|e| {
        Error::Upstream(format!(
            "{} answered 401 without an authenticationKey: {e}",
            reply.endpoint
        ))
    })?;
    STANDARD
        .decode(challenge.authentication_key.trim())
        .map_err(|e| {
            Error::Upstream(format!(
                "{}: the authenticationKey is not base64: {e}",
                reply.endpoint
            ))
        })
}

fn failed(
    endpoint: &str,
    registration_id: &str,
    status: &str,
    state: Option<&RegistrationState>,
) -> Error {
    let why = state
        .and_then(|s| s.error_message.clone())
        .unwrap_or_else(|| "no reason given".into());
    let code = state
        .and_then(|s| s.error_code.as_ref())
        .map(|c| format!(" (error {c})"))
        .unwrap_or_default();
    let inner = state.and_then(|s| s.status.clone()).unwrap_or_default();
    Error::Upstream(format!(
        "DPS {endpoint}: registration '{registration_id}' {status}{}{code}: {why}",
        if inner.is_empty() || inner == status {
            String::new()
        } else {
            format!(" ({inner})")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after: None,
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
            endpoint: "dps.test".into(),
        }
    }

    #[test]
    fn operations_are_read_and_nonsense_is_an_error_that_says_why() {
        let pending = read_operation(
            &reply(202, r#"{"operationId":"4.x","status":"assigning"}"#),
            "dev",
        )
        .unwrap();
        assert_eq!(pending.operation_id.as_deref(), Some("4.x"));
        assert_eq!(pending.assigned, None);
        let done = read_operation(
            &reply(
                200,
                r#"{"status":"assigned","registrationState":{"assignedHub":"hub.example.net","deviceId":"dev"}}"#,
            ),
            "dev",
        )
        .unwrap();
        assert_eq!(
            done.assigned,
            Some(("hub.example.net".into(), "dev".into()))
        );
        let cases = [
            (200, r#"{"status":"assigned"}"#, "without assignedHub"),
            (
                200,
                r#"{"status":"assigned","registrationState":{"assignedHub":"a b","deviceId":"dev"}}"#,
                "assigned hub",
            ),
            (
                200,
                r#"{"status":"assigned","registrationState":{"assignedHub":"hub.example.net","deviceId":"../x"}}"#,
                "assigned device id",
            ),
            (
                200,
                r#"{"status":"failed","registrationState":{"errorCode":401002,"errorMessage":"bad key"}}"#,
                "registration 'dev' failed (error 401002): bad key",
            ),
            (200, "[1,2", "not the expected JSON"),
            (401, r#"{"message":"Unauthorized"}"#, "Unauthorized"),
        ];
        for (status, body, says) in cases {
            let err = read_operation(&reply(status, body), "dev").unwrap_err();
            assert!(err.to_string().contains(says), "{body}: {err}");
        }
    }

    #[test]
    fn a_tpm_challenge_is_base64_in_json_or_an_error() {
        assert_eq!(
            read_tpm_challenge(&reply(401, r#"{"authenticationKey":" AQID "}"#)).unwrap(),
            vec![1, 2, 3]
        );
        for body in ["", "{}", r#"{"authenticationKey":"***"}"#] {
            assert!(read_tpm_challenge(&reply(401, body)).is_err(), "{body}");
        }
    }
}
