//! certd's routes. Each handler parses, calls [`Certd`], and maps the result.

use std::sync::LazyLock;

use edgeid_common::routes::Routes;
use edgeid_common::{ApiError, ApiRequest, ApiResponse, Caller};
use http::{Method, StatusCode};

use crate::certs::Certd;

#[derive(Debug, Clone, Copy)]
enum Route {
    Health,
    Create,
    List,
    Get,
    Import,
    Delete,
    Renew,
    TrustBundle,
}

static ROUTES: LazyLock<Routes<Route>> = LazyLock::new(|| {
    Routes::new(&[
        (Method::GET, "/v1/health", Route::Health),
        (Method::POST, "/v1/certificates", Route::Create),
        (Method::GET, "/v1/certificates", Route::List),
        (Method::GET, "/v1/certificates/{*id}", Route::Get),
        (Method::PUT, "/v1/certificates/{*id}", Route::Import),
        (Method::DELETE, "/v1/certificates/{*id}", Route::Delete),
        (Method::POST, "/v1/certificates/{*id}", Route::Renew),
        (Method::GET, "/v1/trust-bundle", Route::TrustBundle),
    ])
});

impl Certd {
    /// A caller who is neither an administrator nor a principal is refused
    /// before its body is read (health and the trust bundle aside: anyone may ask).
    pub(super) fn admit_edgeid(&self, caller: &Caller, path: &str) -> Option<ApiResponse> {
        if matches!(path, "/v1/health" | "/v1/trust-bundle") {
            return None;
        }
        self.admits(caller)
            .err()
            .map(|why| ApiResponse::error(&ApiError::forbidden(why)))
    }

    pub(super) async fn handle_edgeid(&self, req: ApiRequest) -> ApiResponse {
        let (route, params) = match ROUTES.find(&req.method, &req.path) {
            Ok(found) => found,
            Err(answer) => return answer,
        };
        let caller = &req.caller;
        let id = params.get("id").unwrap_or_default();
        let ok = StatusCode::OK;
        match route {
            Route::Health => ApiResponse::json(ok, &self.health().await),
            Route::Create => match req.json() {
                Ok(body) => {
                    ApiResponse::from_result(StatusCode::CREATED, self.create(caller, body).await)
                }
                Err(e) => ApiResponse::error(&e),
            },
            Route::List => ApiResponse::from_result(ok, self.list(caller).await),
            Route::Get => ApiResponse::from_result(ok, self.get(caller, id).await),
            Route::Import => match req.json() {
                Ok(body) => no_content(self.import(caller, id, body).await),
                Err(e) => ApiResponse::error(&e),
            },
            Route::Delete => no_content(self.delete(caller, id).await),
            Route::Renew => ApiResponse::from_result(ok, self.renew_now(caller, id).await),
            Route::TrustBundle => ApiResponse::from_result(ok, self.trust_bundle().await),
        }
    }
}

fn no_content(result: Result<(), crate::Error>) -> ApiResponse {
    match result {
        Ok(()) => ApiResponse::no_content(),
        Err(e) => ApiResponse::error(&e),
    }
}
