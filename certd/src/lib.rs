//! edgeid-certd: the device's certificates. It never holds a private key:
//! everything it signs is signed by keyd.
//!
//! - [`api`]: wire types, one module per wire family (`api::edgeid`, re-exported), shared with [`client`].
//! - [`client`]: the typed async client other daemons and tools use.
//! - [`server`]: one front per wire family (`server::edgeid`); each parses, authorizes, calls [`certs`], maps the result.
//! - [`certs`]: the domain: authorization by certificate id and name, issuance, import, renewal of one certificate.
//! - [`ca`]: the device's local CA; [`issuer`]: profiles and signing through keyd; [`signer`]: keyd keys for rcgen and rustls.
//! - [`est`]: the RFC 7030 client; [`renewal`]: the background renewal task.
//! - [`store`], [`chain`]: certificates on disk and in memory.
//! - [`config`], [`error`].

pub mod api;
pub mod ca;
pub mod certs;
pub mod chain;
pub mod client;
pub mod config;
pub mod error;
pub mod est;
pub mod issuer;
pub mod renewal;
pub mod server;
pub mod signer;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use edgeid_common::authz::Admins;
use edgeid_common::listener::Listener;

pub use certs::Certd;
pub use client::CertdClient;
pub use config::CertdConfig;
pub use error::Error;

/// Serves certd until `shutdown` resolves, renewing certificates in the
/// background; then drains in-flight requests and returns.
pub async fn run(config: CertdConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    run_with(config, Admins::root_and_self(), shutdown).await
}

/// [`run`] with explicit administrators (tests).
pub async fn run_with(
    config: CertdConfig,
    admins: Admins,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let socket = config.socket();
    let limits = config.server.limits();
    let mode = config.server.socket_mode;
    let certd = Arc::new(Certd::open(config, admins)?);
    let listener = Listener::open(&socket, mode)
        .map_err(|e| Error::Setup(format!("cannot listen on {}: {e}", socket.display())))?;
    let (stop_renewal, stopped) = tokio::sync::oneshot::channel::<()>();
    let renewal = tokio::spawn(renewal::run(certd.clone(), async {
        let _ = stopped.await;
    }));
    let served = edgeid_common::server::serve(listener, certd, limits, shutdown).await;
    let _ = stop_renewal.send(());
    let _ = renewal.await;
    served.map_err(|e| Error::Setup(format!("server failed: {e}")))
}

/// The `edgeid-certd` program (`--config <file>`): its own binary's `main`,
/// and what the multi-call `edgeidctl` runs when invoked as `edgeid-certd`.
pub fn main() -> std::process::ExitCode {
    edgeid_common::daemon::main(
        "certd",
        "edgeid certificate service: issues, enrolls, stores and renews certificates.",
        CertdConfig::load,
        CertdConfig::validate,
        |config| run(config, edgeid_common::server::shutdown_signal()),
    )
}
