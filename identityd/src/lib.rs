//! edgeid-identityd: the device's identity (provisioned by hand, by the
//! Device Provisioning Service, or locally with no cloud) and its modules'
//! identities (ARCHITECTURE.md section 6). It never holds a key: tokens are
//! signed by keyd, TLS handshakes with the cloud are signed through keyd.
//!
//! - [`api`], [`client`]: the wire types and the typed client.
//! - [`server`]: routes; [`identities`]: the domain (authorization, device,
//!   modules, tokens, provisioning runs).
//! - [`provision`]: each provisioning source; [`dps`]: the DPS protocol;
//!   [`hub`]: module identities in the hub; [`sas`]: SAS tokens;
//!   [`cloud`]: HTTPS with retries, proxies and keyd-held client keys.
//! - [`store`]: what is kept on disk; [`names`]: id rules; [`config`], [`error`].

pub mod api;
pub mod client;
pub mod cloud;
pub mod config;
pub mod dps;
pub mod error;
pub mod hub;
pub mod identities;
pub mod names;
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
