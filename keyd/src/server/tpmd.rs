//! The aziot TPM API (`/get_tpm_keys`, `/import_auth_key`,
//! `/sign_with_auth_key` with `?api-version=2020-09-01`), as aziot-tpmd
//! serves it. keyd holds the TPM (and a TPM serves one client well), so
//! aziot-tpmd is keyd: `/run/aziot/tpmd.sock` is keyd's socket.
//!
//! Callers: the reference has no check past its socket's group
//! (`aziottpm`); keyd asks, as for every key, for a grant — of
//! `tpm/attestation-keys` to read the keys, of the auth key's id
//! ([`AUTH_KEY_ID`]) to import it or sign with it. uid 0 and keyd's own
//! uid have both.

use std::sync::LazyLock;

use edgeid_common::routes::Routes;
use edgeid_common::{ApiRequest, ApiResponse, Caller};
use http::{Method, StatusCode};

use crate::api::aziot::tpmd::*;
use crate::api::{self as edgeid, SignAlgorithm, TpmActivateRequest};
use crate::keys::{Holder, Keyd};

#[derive(Debug, Clone, Copy)]
enum Route {
    GetTpmKeys,
    ImportAuthKey,
    SignWithAuthKey,
}

static ROUTES: LazyLock<Routes<Route>> = LazyLock::new(|| {
    Routes::new(&[
        (Method::GET, "/get_tpm_keys", Route::GetTpmKeys),
        (Method::POST, "/import_auth_key", Route::ImportAuthKey),
        (Method::POST, "/sign_with_auth_key", Route::SignWithAuthKey),
    ])
});

/// Whether `path` is one of aziot-tpmd's.
pub(super) fn is_tpmd_path(path: &str) -> bool {
    PATHS.contains(&path)
}

impl Keyd {
    /// A caller who is nobody here is refused before its body is read.
    pub(super) fn admit_tpmd(&self, caller: &Caller) -> Option<ApiResponse> {
        self.refuse_stranger(caller)
    }

    pub(super) async fn handle_tpmd(&self, req: ApiRequest) -> ApiResponse {
        let (_, route, _) = match ROUTES.find_versioned(&req, API_VERSIONS) {
            Ok(found) => found,
            Err(answer) => return answer,
        };
        let caller = &req.caller;
        let ok = StatusCode::OK;
        match route {
            Route::GetTpmKeys => ApiResponse::from_result(
                ok,
                self.tpm_attestation_keys(caller)
                    .await
                    .map(|keys| GetTpmKeysResponse {
                        endorsement_key: keys.endorsement_key.public,
                        storage_root_key: keys.storage_key.public,
                    }),
            ),
            Route::ImportAuthKey => {
                let body: ImportAuthKeyRequest = match req.required_json_or_unprocessable() {
                    Ok(body) => body,
                    Err(e) => return ApiResponse::error(&e),
                };
                let activate = TpmActivateRequest {
                    id: AUTH_KEY_ID.to_owned(),
                    blob: body.key,
                };
                ApiResponse::from_result(
                    ok,
                    self.tpm_activate(caller, activate)
                        .await
                        .map(|_| serde_json::json!({})),
                )
            }
            Route::SignWithAuthKey => {
                let body: SignWithAuthKeyRequest = match req.required_json_or_unprocessable() {
                    Ok(body) => body,
                    Err(e) => return ApiResponse::error(&e),
                };
                let result = match self.find(caller, AUTH_KEY_ID, false, Holder::Grants).await {
                    Ok(found) => {
                        let sign = edgeid::SignRequest {
                            handle: found.handle,
                            algorithm: SignAlgorithm::HmacSha256,
                            data: body.data,
                            prehashed: false,
                        };
                        self.sign(caller, sign)
                            .await
                            .map(|r| SignWithAuthKeyResponse {
                                digest: r.signature,
                            })
                    }
                    Err(e) => Err(e),
                };
                ApiResponse::from_result(ok, result)
            }
        }
    }
}
