//! identityd's fronts, one per wire family. A front parses a request of its
//! family, authorizes the caller, calls the one domain
//! ([`crate::identities::Identityd`]) and maps the result to its family's
//! statuses and shapes; no domain logic lives in a front.
//! - [`edgeid`]: edgeid's `/v1` API.

mod edgeid;

pub use edgeid::Service;
