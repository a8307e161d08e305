//! The aziot certificates API's routes (`/certificates` with
//! `?api-version=`), as aziot-certd serves them: the api-version first, then
//! the route; a body that is not the expected JSON is a 422; a certificate
//! that does not exist is a 400 on `GET` and nothing to do on `DELETE`.
//!
//! Every route names a certificate id, so a caller must be granted it (uid
//! 0 and certd's own uid have all). The reference lets any local user read
//! any certificate; here reading needs the grant too.

use std::sync::LazyLock;

use edgeid_common::routes::Routes;
use edgeid_common::{ApiError, ApiRequest, ApiResponse, Caller};
use http::{Method, StatusCode};

use crate::api::aziot::*;
use crate::api::ImportCertificateRequest;
use crate::certs::Certd;
use crate::error::Error;

#[derive(Debug, Clone, Copy)]
enum Route {
    Create,
    Get,
    Import,
    Delete,
}

static ROUTES: LazyLock<Routes<Route>> = LazyLock::new(|| {
    Routes::new(&[
        (Method::POST, "/certificates", Route::Create),
        (Method::GET, "/certificates/{*id}", Route::Get),
        (Method::PUT, "/certificates/{*id}", Route::Import),
        (Method::DELETE, "/certificates/{*id}", Route::Delete),
    ])
});

impl Certd {
    /// A caller who is neither an administrator nor a principal is refused
    /// before its body is read.
    pub(super) fn admit_aziot(&self, caller: &Caller) -> Option<ApiResponse> {
        self.admits(caller)
            .err()
            .map(|why| ApiResponse::error(&ApiError::forbidden(why)))
    }

    pub(super) async fn handle_aziot(&self, req: ApiRequest) -> ApiResponse {
        let (_, route, params) = match ROUTES.find_versioned(&req, API_VERSIONS) {
            Ok(found) => found,
            Err(answer) => return answer,
        };
        let caller = &req.caller;
        let id = params.get("id").unwrap_or_default();
        match route {
            Route::Create => {
                let body: CreateCertRequest = match req.required_json_or_unprocessable() {
                    Ok(body) => body,
                    Err(e) => return ApiResponse::error(&e),
                };
                let issuer = body
                    .issuer
                    .as_ref()
                    .map(|i| (i.cert_id.as_str(), i.private_key_handle.clone()));
                let result = self
                    .issue_for_csr(caller, &body.cert_id, &body.csr, issuer)
                    .await;
                ApiResponse::from_result(StatusCode::CREATED, result.map(|pem| Pem { pem }))
            }
            Route::Get => match self.get(caller, id).await {
                Ok(info) => ApiResponse::json(StatusCode::OK, &Pem { pem: info.pem }),
                Err(Error::NotFound(why)) => ApiResponse::error(&ApiError::bad_request(why)),
                Err(e) => ApiResponse::error(&e),
            },
            Route::Import => {
                let body: Pem = match req.required_json_or_unprocessable() {
                    Ok(body) => body,
                    Err(e) => return ApiResponse::error(&e),
                };
                let import = ImportCertificateRequest {
                    pem: body.pem.clone(),
                    key_id: None,
                };
                match self.import(caller, id, import).await {
                    Ok(()) => ApiResponse::json(StatusCode::CREATED, &body),
                    Err(e) => ApiResponse::error(&e),
                }
            }
            Route::Delete => match self.delete(caller, id).await {
                Ok(()) | Err(Error::NotFound(_)) => ApiResponse::no_content(),
                Err(e) => ApiResponse::error(&e),
            },
        }
    }
}
