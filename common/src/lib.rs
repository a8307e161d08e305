//! Plumbing shared by every edgeid daemon, written once.
//!
//! - [`server`]: HTTP/1.1 over a Unix socket, caller identity from `SO_PEERCRED`,
//!   body caps, timeouts, connection limits, graceful shutdown.
//! - [`listener`]: binding a socket path or taking one over from systemd.
//! - [`client`]: the typed async client for the same transport, with pooled connections.
//! - [`routes`]: path and method dispatch with 404 / 405 answers.
//! - [`error`]: the one mapping from errors to HTTP statuses and `{"message"}` bodies.
//! - [`config`]: TOML loading with errors that name the file, the key and the problem.
//! - [`daemon`]: the one `main` of every daemon binary.
//! - [`fs`]: atomic writes with explicit modes, private directories.
//! - [`authz`]: callers, administrators and glob grants.
//! - [`id`]: the rules for resource ids (key and certificate ids).
//! - [`encoding`]: base64 fields on the wire, secret bytes that zeroize.

pub mod authz;
pub mod client;
pub mod config;
pub mod daemon;
pub mod encoding;
pub mod error;
pub mod fs;
pub mod id;
pub mod listener;
pub mod logging;
pub mod routes;
pub mod runtime;
pub mod server;
pub mod sync;

pub use authz::Caller;
pub use error::{ApiError, HttpError};
pub use server::{ApiRequest, ApiResponse, Handler};

/// The version every daemon reports on its health endpoint.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The effective uid of this process.
pub fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
