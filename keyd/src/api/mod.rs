//! keyd's wire types, one module per wire family, shared by the server's
//! fronts and the typed clients:
//! - [`edgeid`]: edgeid's own `/v1` API (ARCHITECTURE.md section 4),
//!   re-exported here as `api::*`;
//! - [`aziot`]: Azure IoT Identity Service's keys API, over the same domain
//!   ([`crate::keys`]).

pub mod aziot;
pub mod edgeid;

pub use edgeid::*;
