//! The workload API's routes, as IoT Edge's runtime (aziot-edged 1.5)
//! serves them: `api-version` is checked first, against exactly the
//! runtime's set; bodies are read as the runtime reads them (422 for one
//! that is not JSON of the route's shape, unknown fields ignored); answers
//! have its statuses and shapes. `/health` and the orchestrator's
//! `/v1/modules/{name}/socket` are edgeid's own and take no `api-version`.

use std::sync::{Arc, LazyLock};

use edgeid_common::routes::Routes;
use edgeid_common::{ApiError, ApiRequest, ApiResponse, Caller, Handler};
use http::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::api::{AttestKey, AttestQuote, AttestRequest, AttestResponse, API_VERSIONS};
use crate::attestation::ModuleQuote;
use crate::sockets::{ModuleSockets, Owner, ServeModule};
use crate::workload::{Who, Workload};

#[derive(Debug, Clone, Copy)]
enum Route {
    Health,
    ListModules,
    Sign,
    Encrypt,
    Decrypt,
    Attest,
    IdentityCert,
    ServerCert,
    TrustBundle,
    ManifestTrustBundle,
    BindSocket,
    UnbindSocket,
}

static ROUTES: LazyLock<Routes<Route>> = LazyLock::new(|| {
    Routes::new(&[
        (Method::GET, "/health", Route::Health),
        (Method::GET, "/modules", Route::ListModules),
        // The runtime answers here too (an old diagnostics image asks so).
        (Method::GET, "/modules/", Route::ListModules),
        (
            Method::POST,
            "/modules/{name}/genid/{genid}/sign",
            Route::Sign,
        ),
        (
            Method::POST,
            "/modules/{name}/genid/{genid}/encrypt",
            Route::Encrypt,
        ),
        (
            Method::POST,
            "/modules/{name}/genid/{genid}/decrypt",
            Route::Decrypt,
        ),
        (
            Method::POST,
            "/modules/{name}/genid/{genid}/attest",
            Route::Attest,
        ),
        (
            Method::POST,
            "/modules/{name}/certificate/identity",
            Route::IdentityCert,
        ),
        (
            Method::POST,
            "/modules/{name}/genid/{genid}/certificate/server",
            Route::ServerCert,
        ),
        (Method::GET, "/trust-bundle", Route::TrustBundle),
        (Method::POST, "/v1/modules/{name}/socket", Route::BindSocket),
        (
            Method::DELETE,
            "/v1/modules/{name}/socket",
            Route::UnbindSocket,
        ),
        (
            Method::GET,
            "/manifest-trust-bundle",
            Route::ManifestTrustBundle,
        ),
    ])
});

/// Checks `api-version`: one of the runtime's, exactly; else a 400 that
/// begins as the runtime's does and names the versions served.
pub fn check_api_version(version: Option<&str>) -> Result<(), ApiError> {
    edgeid_common::routes::check_api_version(version, API_VERSIONS).map(|_| ())
}

/// Whether a path is one of edgeid's own, which take no `api-version`.
fn is_edgeid_path(path: &str) -> bool {
    path == "/health" || path.starts_with("/v1/")
}

/// workloadd behind a socket: the main one (`bound` none), or a module's own.
pub struct Service {
    /// The workload API.
    pub workload: Arc<Workload>,
    /// The per-module sockets, managed through the main socket only.
    pub sockets: Option<Arc<ModuleSockets>>,
    /// The module every request on this socket is, and the uid or group
    /// alone it is for.
    pub bound: Option<(String, Owner)>,
}

/// The per-module sockets of `workload`, each answered by this front as
/// its module.
pub fn module_sockets(workload: &Arc<Workload>) -> Arc<ModuleSockets> {
    let limits = workload.config.server.limits();
    let for_modules = workload.clone();
    let serve: ServeModule = Box::new(move |module, owner, listener, stopped| {
        let service = Arc::new(Service {
            workload: for_modules.clone(),
            sockets: None,
            bound: Some((module, owner)),
        });
        let limits = limits.clone();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = edgeid_common::server::serve(listener, service, limits, shutdown).await
            {
                tracing::warn!(error = %e, "a module socket failed");
            }
        })
    });
    ModuleSockets::new(workload.clone(), serve)
}

impl Service {
    /// The per-module sockets, which only the main socket manages.
    fn sockets(&self) -> Result<&Arc<ModuleSockets>, ApiError> {
        self.sockets
            .as_ref()
            .ok_or_else(|| ApiError::forbidden("a module's own socket cannot manage sockets"))
    }
}

/// What anyone may ask for, before being known: health and the trust bundles.
fn is_public(path: &str) -> bool {
    matches!(path, "/health" | "/trust-bundle" | "/manifest-trust-bundle")
}

impl Handler for Service {
    /// Before a body is read: on a module's socket, only its uid or group;
    /// on the main one, only a mapped module or the orchestrator (what
    /// anyone may ask for aside).
    fn admit(&self, caller: &Caller, _: &Method, path: &str) -> Option<ApiResponse> {
        if is_public(path) {
            return None;
        }
        let refused = match &self.bound {
            Some((module, owner)) => owner.admit(module, caller).err(),
            None => self.workload.admits(caller).err(),
        };
        refused.map(|e| ApiResponse::error(&e))
    }

    async fn handle(&self, req: ApiRequest) -> ApiResponse {
        // As the runtime: the version before the route, so that a request
        // without one is a 400 whatever its path.
        if !is_edgeid_path(&req.path) {
            if let Err(e) = check_api_version(req.query_param("api-version").as_deref()) {
                return ApiResponse::error(&e);
            }
        }
        let (route, params) = match ROUTES.find(&req.method, &req.path) {
            Ok(found) => found,
            Err(answer) => return answer,
        };
        let name = params.get("name").unwrap_or_default();
        let genid = params.get("genid").unwrap_or_default();
        let me = &self.workload;
        let ok = StatusCode::OK;
        let created = StatusCode::CREATED;
        let who = &Who {
            caller: &req.caller,
            bound: self.bound.as_ref().map(|(module, _)| module.as_str()),
        };
        match route {
            Route::Health => ApiResponse::json(ok, &me.health().await),
            Route::ListModules => ApiResponse::from_result(ok, me.list_modules(who).await),
            Route::Sign => match body(&req, "missing parameter: request body") {
                Ok(body) => ApiResponse::from_result(ok, me.sign(who, name, genid, body).await),
                Err(e) => ApiResponse::error(&e),
            },
            Route::Encrypt => match body(&req, "missing request body") {
                Ok(body) => ApiResponse::from_result(ok, me.encrypt(who, name, genid, body).await),
                Err(e) => ApiResponse::error(&e),
            },
            Route::Decrypt => match body(&req, "missing request body") {
                Ok(body) => ApiResponse::from_result(ok, me.decrypt(who, name, genid, body).await),
                Err(e) => ApiResponse::error(&e),
            },
            Route::Attest => match body::<AttestRequest>(&req, "missing request body") {
                Ok(body) => match decode_nonce(&body.nonce) {
                    Ok(nonce) => ApiResponse::from_result(
                        ok,
                        me.attest(who, name, Some(genid), &nonce, body.ima_offset.unwrap_or(0))
                            .await
                            .map(attest_response),
                    ),
                    Err(e) => ApiResponse::error(&e),
                },
                Err(e) => ApiResponse::error(&e),
            },
            Route::IdentityCert => match req.json_or_unprocessable() {
                Ok(body) => ApiResponse::from_result(
                    created,
                    me.identity_certificate(who, name, body.unwrap_or_default())
                        .await,
                ),
                Err(e) => ApiResponse::error(&e),
            },
            Route::ServerCert => match body(&req, "missing request body") {
                Ok(body) => ApiResponse::from_result(
                    created,
                    me.server_certificate(who, name, genid, body).await,
                ),
                Err(e) => ApiResponse::error(&e),
            },
            Route::TrustBundle => ApiResponse::from_result(ok, me.trust_bundle().await),
            Route::ManifestTrustBundle => {
                ApiResponse::from_result(ok, me.manifest_trust_bundle().await)
            }
            Route::BindSocket => match self.sockets().and_then(|s| Ok((s, json_or_default(&req)?)))
            {
                Ok((sockets, body)) => ApiResponse::from_result(
                    created,
                    sockets.bind_socket(&req.caller, name, body).await,
                ),
                Err(e) => ApiResponse::error(&e),
            },
            Route::UnbindSocket => match self.sockets() {
                Ok(sockets) => match sockets.unbind_socket(&req.caller, name).await {
                    Ok(()) => ApiResponse::no_content(),
                    Err(e) => ApiResponse::error(&e),
                },
                Err(e) => ApiResponse::error(&e),
            },
        }
    }
}

/// A module's quote in the workload API's shape: camelCase, base64.
fn attest_response(q: ModuleQuote) -> AttestResponse {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let quote = q.quote;
    AttestResponse {
        device_id: q.device_id,
        module_id: q.module_id,
        spiffe_id: q.spiffe_id,
        qualifying_data: b64(&q.qualifying_data),
        quote: AttestQuote {
            attest: b64(&quote.attest.0),
            signature: b64(&quote.signature.0),
            signature_der: b64(&quote.signature_der.0),
            pcrs: quote
                .pcrs
                .iter()
                .map(|(bank, values)| {
                    let values = values.iter().map(|(i, v)| (*i, b64(&v.0))).collect();
                    (bank.clone(), values)
                })
                .collect(),
            reset_count: quote.clock.reset_count,
            clock: quote.clock.clock,
            firmware_log: quote.event_logs.firmware.data.as_ref().map(|d| b64(&d.0)),
            ima_log: quote.event_logs.ima.data.as_ref().map(|d| b64(&d.0)),
            firmware_log_complete: quote.event_logs.firmware.complete,
            firmware_log_error: quote.event_logs.firmware.error,
            ima_log_offset: quote.event_logs.ima.offset,
            ima_log_complete: quote.event_logs.ima.complete,
            ima_log_error: quote.event_logs.ima.error,
        },
        attestation_key: AttestKey {
            public: b64(&q.attestation_key.public.0),
            pem: q.attestation_key.pem,
            name: b64(&q.attestation_key.name.0),
        },
        endorsement_key: AttestKey {
            public: b64(&q.endorsement.endorsement_key.public.0),
            pem: q.endorsement.endorsement_key.pem,
            name: String::new(),
        },
        endorsement_certificate: q.endorsement.endorsement_certificate.map(|c| b64(&c.0)),
    }
}

/// A module's nonce (base64, at most 64 bytes: longer is refused before decoding).
fn decode_nonce(text: &str) -> Result<Vec<u8>, ApiError> {
    use base64::Engine;
    if text.len() > 128 {
        return Err(ApiError::bad_request("nonce is longer than 64 bytes"));
    }
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| ApiError::bad_request("nonce is not base64"))
}

/// A workload route's body, read as the runtime reads it: not JSON of the
/// route's shape is a 422; none at all is a 400 with the runtime's words.
fn body<T: DeserializeOwned>(req: &ApiRequest, missing: &str) -> Result<T, ApiError> {
    req.json_or_unprocessable()?
        .ok_or_else(|| ApiError::bad_request(missing))
}

/// An edgeid route's body as JSON (400 if malformed); an empty body is the
/// type's default.
fn json_or_default<T: serde::de::DeserializeOwned + Default>(
    req: &ApiRequest,
) -> Result<T, ApiError> {
    if req.body.is_empty() {
        Ok(T::default())
    } else {
        req.json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_runtimes_api_versions() {
        for v in [
            "2018-06-28",
            "2019-01-30",
            "2019-10-22",
            "2019-11-05",
            "2020-07-07",
            "2021-12-07",
            "2022-08-03",
        ] {
            check_api_version(Some(v)).unwrap();
        }
        // 2020-10-10 was never the runtime's; later dates are not served
        // before the runtime defines them.
        for v in [
            "",
            "2017-01-01",
            "2020-10-10",
            "2022-08-04",
            "2099-01-01",
            "2020-07-7",
            "latest",
            "2019-02-01",
        ] {
            let err = check_api_version(Some(v)).unwrap_err();
            assert!(err.message.starts_with("invalid api-version"), "{v}");
            assert!(err.message.contains("2022-08-03"), "{}", err.message);
        }
        let err = check_api_version(None).unwrap_err();
        assert!(err.message.starts_with("api-version not specified"));
        assert!(err.message.contains("2019-10-22, 2019-11-05, 2020-07-07"));
    }
}
