//! The workload API's routes, as IoT Edge serves them: every request but
//! `/health` carries `api-version`; a missing or unknown one is a 400.

use std::sync::{Arc, LazyLock};

use edgeid_common::routes::Routes;
use edgeid_common::{ApiError, ApiRequest, ApiResponse, Handler};
use http::{Method, StatusCode};

use crate::api::API_VERSIONS;
use crate::workload::{Who, Workload};

#[derive(Debug, Clone, Copy)]
enum Route {
    Health,
    Sign,
    Encrypt,
    Decrypt,
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

/// Checks `api-version`: one IoT Edge published, or a later date of the same form.
pub fn check_api_version(version: Option<&str>) -> Result<(), ApiError> {
    let Some(v) = version else {
        return Err(ApiError::bad_request(format!(
            "the api-version query parameter is missing; supported: {} and later",
            API_VERSIONS.join(", ")
        )));
    };
    let well_formed = v.len() == 10
        && v.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    let newest = API_VERSIONS[API_VERSIONS.len() - 1];
    if API_VERSIONS.contains(&v) || (well_formed && v > newest) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "api-version '{}' is not supported; supported: {} and later",
            edgeid_identityd::names::shown(v),
            API_VERSIONS.join(", ")
        )))
    }
}

/// workloadd behind a socket: the main one (`bound` none), or a module's own.
pub struct Service {
    /// The workload API.
    pub workload: Arc<Workload>,
    /// The module every request on this socket is.
    pub bound: Option<String>,
}

impl Handler for Service {
    async fn handle(&self, req: ApiRequest) -> ApiResponse {
        let (route, params) = match ROUTES.find(&req.method, &req.path) {
            Ok(found) => found,
            Err(answer) => return answer,
        };
        let name = params.get("name").unwrap_or_default();
        let genid = params.get("genid").unwrap_or_default();
        let me = &self.workload;
        let ok = StatusCode::OK;
        let created = StatusCode::CREATED;
        let socket_route = matches!(route, Route::BindSocket | Route::UnbindSocket);
        if socket_route && self.bound.is_some() {
            return ApiResponse::error(&ApiError::forbidden(
                "a module's own socket cannot manage sockets",
            ));
        }
        if !socket_route && !matches!(route, Route::Health) {
            if let Err(e) = check_api_version(req.query_param("api-version").as_deref()) {
                return ApiResponse::error(&e);
            }
        }
        let who = &Who {
            caller: &req.caller,
            bound: self.bound.as_deref(),
        };
        match route {
            Route::Health => ApiResponse::json(ok, &me.health().await),
            Route::Sign => match req.json() {
                Ok(body) => ApiResponse::from_result(ok, me.sign(who, name, genid, body).await),
                Err(e) => ApiResponse::error(&e),
            },
            Route::Encrypt => match req.json() {
                Ok(body) => ApiResponse::from_result(ok, me.encrypt(who, name, genid, body).await),
                Err(e) => ApiResponse::error(&e),
            },
            Route::Decrypt => match req.json() {
                Ok(body) => ApiResponse::from_result(ok, me.decrypt(who, name, genid, body).await),
                Err(e) => ApiResponse::error(&e),
            },
            Route::IdentityCert => match json_or_default(&req) {
                Ok(body) => ApiResponse::from_result(
                    created,
                    me.identity_certificate(who, name, body).await,
                ),
                Err(e) => ApiResponse::error(&e),
            },
            Route::ServerCert => match req.json() {
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
            Route::BindSocket => match json_or_default(&req) {
                Ok(body) => {
                    ApiResponse::from_result(created, me.bind_socket(&req.caller, name, body).await)
                }
                Err(e) => ApiResponse::error(&e),
            },
            Route::UnbindSocket => match me.unbind_socket(&req.caller, name).await {
                Ok(()) => ApiResponse::no_content(),
                Err(e) => ApiResponse::error(&e),
            },
        }
    }
}

/// The body as JSON; an empty body is the type's default.
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
    fn api_versions() {
        for v in [
            "2018-06-28",
            "2019-01-30",
            "2019-11-05",
            "2020-10-10",
            "2022-08-03",
        ] {
            check_api_version(Some(v)).unwrap();
        }
        for v in [
            "",
            "2017-01-01",
            "2020-10-1",
            "latest",
            "2020-13-xx",
            "2019-02-01",
        ] {
            assert!(check_api_version(Some(v)).is_err(), "{v}");
        }
        let err = check_api_version(None).unwrap_err();
        assert!(err.message.contains("missing"), "{}", err.message);
    }
}
