//! edgeid-identityd: the device's identity (provisioned by hand, by the
//! Device Provisioning Service, or locally with no cloud) and its modules'
//! identities (ARCHITECTURE.md section 6). It never holds a key: tokens are
//! signed by keyd, TLS handshakes with the cloud are signed through keyd.
//!
//! Layers, each using only those below it (`tests/tests/layering.rs`
//! checks that no file reaches up):
//! - plain data: [`api`] (wire types, one module per wire family), [`names`] (id rules), [`config`],
//!   [`connection_string`], [`store`] (what is kept on disk), [`error`];
//!   [`sas`] (SAS tokens) and [`client`] (the typed client) on them;
//! - the cloud: [`cloud`] (HTTPS with retries, proxies and keyd-held client
//!   keys), and on it [`dps`] (the DPS protocol) and [`hub`] (module
//!   identities in the hub); `credentials`: handles and TLS identities from
//!   keyd and certd;
//! - [`provision`]: each provisioning source, as a `Provisioner`;
//! - the domain the server calls, [`Identityd`]: [`identities`]
//!   (authorization, the device, provisioning runs) and `modules`;
//! - [`server`]: the routes of edgeid's `/v1` API, one front per wire family.

pub mod api;
pub mod client;
pub mod cloud;
pub mod config;
pub mod connection_string;
mod credentials;
pub mod dps;
pub mod error;
pub mod hub;
pub mod identities;
pub mod local;
mod modules;
pub mod names;
pub mod principal;
pub mod provision;
pub mod sas;
pub mod server;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use edgeid_common::authz::Admins;
use edgeid_common::listener::Listener;

pub use client::IdentitydClient;
pub use config::IdentitydConfig;
pub use error::Error;
pub use identities::Identityd;

/// Serves identityd until `shutdown` resolves; provisions in the background
/// first if no valid provisioning result is stored.
pub async fn run(config: IdentitydConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    run_with(config, Admins::root_and_self(), shutdown).await
}

/// [`run`] with explicit administrators (tests).
pub async fn run_with(
    config: IdentitydConfig,
    admins: Admins,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let socket = config.socket();
    let limits = config.server.limits();
    let mode = config.server.socket_mode;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let identityd = Arc::new(Identityd::open(config, admins, stopped)?);
    let listener = Listener::open(&socket, mode)
        .map_err(|e| Error::Setup(format!("cannot listen on {}: {e}", socket.display())))?;
    if identityd.needs_provisioning() {
        identityd.provision_in_background();
    }
    let served = edgeid_common::server::serve(
        listener,
        Arc::new(server::Service(identityd)),
        limits,
        shutdown,
    )
    .await;
    let _ = stop.send(true);
    served.map_err(|e| Error::Setup(format!("server failed: {e}")))
}

/// The `edgeid-identityd` program (`--config <file>`): its own binary's `main`,
/// and what the multi-call `edgeidctl` runs when invoked as `edgeid-identityd`.
pub fn main() -> std::process::ExitCode {
    edgeid_common::daemon::main(
        "identityd",
        "edgeid identity service: provisions the device and manages module identities.",
        IdentitydConfig::load,
        IdentitydConfig::validate,
        |config| run(config, edgeid_common::server::shutdown_signal()),
    )
}
