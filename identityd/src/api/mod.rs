//! identityd's wire types, one module per wire family, shared by the
//! server's fronts and the typed clients:
//! - [`edgeid`]: edgeid's own `/v1` API (ARCHITECTURE.md section 6),
//!   re-exported here as `api::*`;
//! - [`aziot`]: Azure IoT Identity Service's identity API, beside it over
//!   the same domain ([`crate::identities`]).

pub mod aziot;
pub mod edgeid;

pub use edgeid::*;
