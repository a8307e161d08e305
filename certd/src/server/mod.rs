//! certd's fronts, one per wire family. A front parses a request of its
//! family, authorizes the caller, calls the one domain
//! ([`crate::certs::Certd`]) and maps the result to its family's statuses
//! and shapes; no domain logic lives in a front.
//! - [`edgeid`]: edgeid's `/v1` API;
//! - [`aziot`]: Azure IoT Identity Service's certificates API
//!   (`/certificates` with `?api-version=`), as aziot-certd serves it.
//!
//! Both answer on the same socket: the `/v1/` prefix picks the front.

mod aziot;
mod edgeid;

use edgeid_common::routes::is_edgeid_path;
use edgeid_common::{ApiRequest, ApiResponse, Caller, Handler};
use http::Method;

use crate::certs::Certd;

impl Handler for Certd {
    fn admit(&self, caller: &Caller, _: &Method, path: &str) -> Option<ApiResponse> {
        if is_edgeid_path(path) {
            self.admit_edgeid(caller, path)
        } else {
            self.admit_aziot(caller)
        }
    }

    async fn handle(&self, req: ApiRequest) -> ApiResponse {
        if is_edgeid_path(&req.path) {
            self.handle_edgeid(req).await
        } else {
            self.handle_aziot(req).await
        }
    }
}
