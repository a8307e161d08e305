//! identityd's routes. Each handler parses, calls [`Identityd`], and maps the result.

use std::sync::LazyLock;

use edgeid_common::routes::Routes;
use edgeid_common::{ApiRequest, ApiResponse, Caller};
use http::{Method, StatusCode};

use super::Service;
use crate::api::TokenRequest;

#[derive(Debug, Clone, Copy)]
enum Route {
    Health,
    Device,
    DeviceToken,
    ListModules,
    CreateModule,
    GetModule,
    DeleteModule,
    ModuleToken,
    Status,
    Reprovision,
}

static ROUTES: LazyLock<Routes<Route>> = LazyLock::new(|| {
    Routes::new(&[
        (Method::GET, "/v1/health", Route::Health),
        (Method::GET, "/v1/identities/device", Route::Device),
        (
            Method::POST,
            "/v1/identities/device/token",
            Route::DeviceToken,
        ),
        (Method::GET, "/v1/identities/modules", Route::ListModules),
        (Method::POST, "/v1/identities/modules", Route::CreateModule),
        (Method::GET, "/v1/identities/modules/{id}", Route::GetModule),
        (
            Method::DELETE,
            "/v1/identities/modules/{id}",
            Route::DeleteModule,
        ),
        (
            Method::POST,
            "/v1/identities/modules/{id}/token",
            Route::ModuleToken,
        ),
        (Method::GET, "/v1/provisioning", Route::Status),
        (Method::POST, "/v1/reprovision", Route::Reprovision),
    ])
});

impl Service {
    /// A caller who is neither an administrator nor a principal is refused
    /// before its body is read (health aside: anyone may ask).
    pub(super) fn admit_edgeid(&self, caller: &Caller, path: &str) -> Option<ApiResponse> {
        if path == "/v1/health" {
            return None;
        }
        self.0.admits(caller).err().map(|e| ApiResponse::error(&e))
    }

    pub(super) async fn handle_edgeid(&self, req: ApiRequest) -> ApiResponse {
        let (route, params) = match ROUTES.find(&req.method, &req.path) {
            Ok(found) => found,
            Err(answer) => return answer,
        };
        let me = &self.0;
        let caller = &req.caller;
        let id = params.get("id").unwrap_or_default();
        let ok = StatusCode::OK;
        match route {
            Route::Health => ApiResponse::json(ok, &me.health().await),
            Route::Device => ApiResponse::from_result(ok, me.device(caller).await),
            Route::DeviceToken => match token_request(&req) {
                Ok(body) => ApiResponse::from_result(ok, me.device_token(caller, body).await),
                Err(answer) => answer,
            },
            Route::ListModules => ApiResponse::from_result(ok, me.list_modules(caller).await),
            Route::CreateModule => match req.json() {
                Ok(body) => match me.create_module(caller, body).await {
                    Ok((module, true)) => ApiResponse::json(StatusCode::CREATED, &module),
                    Ok((module, false)) => ApiResponse::json(ok, &module),
                    Err(e) => ApiResponse::error(&e),
                },
                Err(e) => ApiResponse::error(&e),
            },
            Route::GetModule => ApiResponse::from_result(ok, me.get_module(caller, id).await),
            Route::DeleteModule => match me.delete_module(caller, id).await {
                Ok(()) => ApiResponse::no_content(),
                Err(e) => ApiResponse::error(&e),
            },
            Route::ModuleToken => match token_request(&req) {
                Ok(body) => ApiResponse::from_result(ok, me.module_token(caller, id, body).await),
                Err(answer) => answer,
            },
            Route::Status => ApiResponse::from_result(ok, me.status(caller)),
            Route::Reprovision => {
                ApiResponse::from_result(StatusCode::ACCEPTED, me.reprovision(caller))
            }
        }
    }
}

/// A token request; an empty body asks for the defaults.
fn token_request(req: &ApiRequest) -> Result<TokenRequest, ApiResponse> {
    if req.body.is_empty() {
        return Ok(TokenRequest::default());
    }
    req.json().map_err(|e| ApiResponse::error(&e))
}
