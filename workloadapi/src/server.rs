//! The workload API's routes, as IoT Edge serves them: every request but
//! `/health` carries `api-version`; a missing or unknown one is a 400.

use std::sync::LazyLock;

use edgeid_common::routes::Routes;
use edgeid_common::{ApiError, ApiRequest, ApiResponse, Handler};
use http::{Method, StatusCode};

use crate::api::API_VERSIONS;
use crate::workload::Workload;

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

impl Handler for Workload {
    async fn handle(&self, req: ApiRequest) -> ApiResponse {
        let (route, params) = match ROUTES.find(&req.method, &req.path) {
            Ok(found) => found,
            Err(answer) => return answer,
        };
        if !matches!(route, Route::Health) {
            if let Err(e) = check_api_version(req.query_param("api-version").as_deref()) {
                return ApiResponse::error(&e);
            }
        }
        let caller = &req.caller;
        let name = params.get("name").unwrap_or_default();
        let genid = params.get("genid").unwrap_or_default();
        let ok = StatusCode::OK;
        let created = StatusCode::CREATED;
        match route {
            Route::Health => ApiResponse::json(ok, &self.health().await),
            Route::Sign => match req.json() {
                Ok(body) => {
                    ApiResponse::from_result(ok, self.sign(caller, name, genid, body).await)
                }
                Err(e) => ApiResponse::error(&e),
            },
            Route::Encrypt => match req.json() {
                Ok(body) => {
                    ApiResponse::from_result(ok, self.encrypt(caller, name, genid, body).await)
                }
                Err(e) => ApiResponse::error(&e),
            },
            Route::Decrypt => match req.json() {
                Ok(body) => {
                    ApiResponse::from_result(ok, self.decrypt(caller, name, genid, body).await)
                }
                Err(e) => ApiResponse::error(&e),
            },
            Route::IdentityCert => {
                let body = if req.body.is_empty() {
                    Ok(Default::default())
                } else {
                    req.json()
                };
                match body {
                    Ok(body) => ApiResponse::from_result(
                        created,
                        self.identity_certificate(caller, name, body).await,
                    ),
                    Err(e) => ApiResponse::error(&e),
                }
            }
            Route::ServerCert => match req.json() {
                Ok(body) => ApiResponse::from_result(
                    created,
                    self.server_certificate(caller, name, genid, body).await,
                ),
                Err(e) => ApiResponse::error(&e),
            },
            Route::TrustBundle => ApiResponse::from_result(ok, self.trust_bundle().await),
            Route::ManifestTrustBundle => {
                ApiResponse::from_result(ok, self.manifest_trust_bundle().await)
            }
        }
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
