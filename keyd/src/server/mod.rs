//! keyd's fronts, one per wire family. A front parses a request of its
//! family, authorizes the caller, calls the one domain ([`crate::keys::Keyd`])
//! and maps the result to its family's statuses and shapes; no domain logic
//! lives in a front, and the plumbing is `edgeid_common::server`'s.
//! - [`edgeid`]: edgeid's `/v1` API.

mod edgeid;
