//! keyd's `/v1` routes. Each handler parses, calls [`Keyd`], and maps the result.

use std::sync::LazyLock;

use edgeid_common::routes::Routes;
use edgeid_common::{ApiError, ApiRequest, ApiResponse, Caller};
use http::{Method, StatusCode};

use crate::keys::{Holder, Keyd};

#[derive(Debug, Clone, Copy)]
enum Route {
    Health,
    CreateKeyPair,
    GetKeyPair,
    DeleteKeyPair,
    PublicKey,
    Sign,
    CreateKey,
    GetKey,
    DeleteKey,
    Derive,
    Export,
    Encrypt,
    Decrypt,
    TpmAttestationKeys,
    TpmActivate,
    TpmAk,
    TpmAkActivate,
    TpmQuote,
    TpmCertify,
    List,
}

static ROUTES: LazyLock<Routes<Route>> = LazyLock::new(|| {
    Routes::new(&[
        (Method::GET, "/v1/health", Route::Health),
        (Method::GET, "/v1/keys", Route::List),
        (Method::POST, "/v1/keypair", Route::CreateKeyPair),
        (Method::GET, "/v1/keypair/{*id}", Route::GetKeyPair),
        (Method::DELETE, "/v1/keypair/{*id}", Route::DeleteKeyPair),
        (Method::POST, "/v1/public-key", Route::PublicKey),
        (Method::POST, "/v1/sign", Route::Sign),
        (Method::POST, "/v1/key", Route::CreateKey),
        (Method::GET, "/v1/key/{*id}", Route::GetKey),
        (Method::DELETE, "/v1/key/{*id}", Route::DeleteKey),
        (Method::POST, "/v1/derive", Route::Derive),
        (Method::POST, "/v1/export", Route::Export),
        (Method::POST, "/v1/encrypt", Route::Encrypt),
        (Method::POST, "/v1/decrypt", Route::Decrypt),
        (
            Method::GET,
            "/v1/tpm/attestation-keys",
            Route::TpmAttestationKeys,
        ),
        (Method::POST, "/v1/tpm/activate", Route::TpmActivate),
        (Method::GET, "/v1/tpm/ak", Route::TpmAk),
        (Method::POST, "/v1/tpm/ak/activate", Route::TpmAkActivate),
        (Method::POST, "/v1/tpm/quote", Route::TpmQuote),
        (Method::POST, "/v1/tpm/certify", Route::TpmCertify),
    ])
});

impl Keyd {
    /// A caller who is neither an administrator nor a principal is refused
    /// before its body is read (health aside: anyone may ask).
    pub(super) fn admit_edgeid(&self, caller: &Caller, path: &str) -> Option<ApiResponse> {
        if matches!(path, "/v1/health") {
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
        macro_rules! with_body {
            ($op:ident $(, $arg:expr)?) => {
                match req.json() {
                    Ok(body) => ApiResponse::from_result(ok, self.$op(caller, body $(, $arg)?).await),
                    Err(e) => ApiResponse::error(&e),
                }
            };
        }
        match route {
            Route::Health => ApiResponse::json(ok, &self.health().await),
            Route::List => ApiResponse::from_result(ok, self.list(&req.caller).await),
            Route::CreateKeyPair => with_body!(create_key_pair, Holder::Grants),
            Route::PublicKey => with_body!(public_key),
            Route::Sign => with_body!(sign),
            Route::CreateKey => with_body!(create_key, Holder::Grants),
            Route::Derive => with_body!(derive),
            Route::Export => with_body!(export),
            Route::Encrypt => with_body!(encrypt),
            Route::Decrypt => with_body!(decrypt),
            Route::TpmActivate => with_body!(tpm_activate),
            Route::TpmAkActivate => with_body!(tpm_ak_activate),
            Route::TpmQuote => with_body!(tpm_quote),
            Route::TpmCertify => with_body!(tpm_certify),
            Route::TpmAk => ApiResponse::from_result(ok, self.tpm_ak(caller).await),
            Route::GetKeyPair => {
                ApiResponse::from_result(ok, self.find(caller, id, true, Holder::Grants).await)
            }
            Route::GetKey => {
                ApiResponse::from_result(ok, self.find(caller, id, false, Holder::Grants).await)
            }
            Route::TpmAttestationKeys => {
                ApiResponse::from_result(ok, self.tpm_attestation_keys(caller).await)
            }
            Route::DeleteKeyPair => deleted(self.delete(caller, id, true).await),
            Route::DeleteKey => deleted(self.delete(caller, id, false).await),
        }
    }
}

fn deleted(result: Result<(), crate::Error>) -> ApiResponse {
    match result {
        Ok(()) => ApiResponse::no_content(),
        Err(e) => ApiResponse::error(&e),
    }
}
