//! keyd's fronts, one per wire family. A front parses a request of its
//! family, authorizes the caller, calls the one domain ([`crate::keys::Keyd`])
//! and maps the result to its family's statuses and shapes; no domain logic
//! lives in a front, and the plumbing is `edgeid_common::server`'s.
//! - [`edgeid`]: edgeid's `/v1` API;
//! - [`aziot`]: Azure IoT Identity Service's keys API (`/keypair`, `/sign`,
//!   ... with `?api-version=`), as aziot-keyd serves it;
//! - [`tpmd`]: its TPM API (`/get_tpm_keys`, `/import_auth_key`,
//!   `/sign_with_auth_key`), as aziot-tpmd serves it.
//!
//! All answer on the same socket: the `/v1/` prefix, or one of tpmd's three
//! paths, picks the front.

mod aziot;
mod edgeid;
mod tpmd;

use edgeid_common::routes::is_edgeid_path;
use edgeid_common::{ApiError, ApiRequest, ApiResponse, Caller, Handler};
use http::Method;

use crate::keys::Keyd;

impl Handler for Keyd {
    fn admit(&self, caller: &Caller, method: &Method, path: &str) -> Option<ApiResponse> {
        if is_edgeid_path(path) {
            self.admit_edgeid(caller, path)
        } else if tpmd::is_tpmd_path(path) {
            self.admit_tpmd(caller)
        } else {
            self.admit_aziot(caller, method, path)
        }
    }

    async fn handle(&self, req: ApiRequest) -> ApiResponse {
        if is_edgeid_path(&req.path) {
            self.handle_edgeid(req).await
        } else if tpmd::is_tpmd_path(&req.path) {
            self.handle_tpmd(req).await
        } else {
            self.handle_aziot(req).await
        }
    }
}

impl Keyd {
    /// A caller who is neither an administrator nor a principal: the 403,
    /// before its body is read (the aziot fronts, whose routes name keys by
    /// handle or by their own ids).
    fn refuse_stranger(&self, caller: &Caller) -> Option<ApiResponse> {
        self.admits(caller)
            .err()
            .map(|why| ApiResponse::error(&ApiError::forbidden(why)))
    }
}
