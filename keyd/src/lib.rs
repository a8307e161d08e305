//! edgeid-keyd: the one process that holds the device's private and secret keys.
//!
//! - [`api`]: wire types, one module per wire family (`api::edgeid`, re-exported), shared with [`client`].
//! - [`client`]: the typed async client other daemons and tools use.
//! - [`server`]: one front per wire family (`server::edgeid`); each parses, authorizes, calls [`keys`], maps the result.
//! - [`keys`]: the domain: authorization by key id, handles, choosing a backend per key.
//! - [`backend`]: the one trait every key store implements, and the stores.
//! - [`handle`], [`key_id`]: the names of keys, on the wire and on disk.
//! - [`config`], [`error`].

pub mod api;
pub mod backend;
pub mod client;
pub mod config;
pub mod error;
pub mod handle;
pub mod key_id;
pub mod keys;
pub mod server;

use std::future::Future;
use std::sync::Arc;

use edgeid_common::authz::Admins;
use edgeid_common::listener::Listener;

pub use client::KeydClient;
pub use config::KeydConfig;
pub use error::Error;
pub use keys::Keyd;

/// Opens the key stores, binds (or takes over) the socket and serves until
/// `shutdown` resolves; then drains in-flight requests and returns.
pub async fn run(config: KeydConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let keyd = Keyd::open(&config, Admins::root_and_self()).await?;
    let socket = config.socket();
    let listener = Listener::open(&socket, config.server.socket_mode)
        .map_err(|e| Error::Setup(format!("cannot listen on {}: {e}", socket.display())))?;
    edgeid_common::server::serve(listener, Arc::new(keyd), config.limits(), shutdown)
        .await
        .map_err(|e| Error::Setup(format!("server failed: {e}")))
}

/// The `edgeid-keyd` program (`--config <file>`): its own binary's `main`,
/// and what the multi-call `edgeidctl` runs when invoked as `edgeid-keyd`.
pub fn main() -> std::process::ExitCode {
    edgeid_common::daemon::main(
        "keyd",
        "edgeid key service: holds the device's keys and signs with them.",
        KeydConfig::load,
        |_| Ok(()),
        |config| run(config, edgeid_common::server::shutdown_signal()),
    )
}
