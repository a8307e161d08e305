//! edgeid-workloadd: the IoT Edge compatible workload API that modules call
//! (ARCHITECTURE.md section 7). Unchanged Azure IoT SDK code in a module gets
//! its SAS signatures, encryption, certificates and trust bundle here; SPIFFE
//! clients get SVIDs on a socket of their own.
//!
//! Layers, each using only those below it (`tests/tests/layering.rs`):
//! - plain data: [`api`] (the IoT Edge wire types), [`config`], [`error`];
//! - the domain, [`workload`]: each operation through identityd, keyd and
//!   certd; `callers` beside it: which module a caller is, whether it is
//!   somebody here, whether it is the orchestrator; `attestation`: TPM
//!   quotes bound to the calling module;
//! - [`sockets`]: per-module sockets (binding; what answers on them is
//!   handed in by the front);
//! - the fronts, one per wire family: [`server`] (the IoT Edge workload
//!   API's routes and `api-version`, and edgeid's `/v1/modules/{name}/socket`)
//!   and [`spiffe`] (the SPIFFE Workload API over gRPC: `proto` its wire
//!   types, `grpc` the front, `x509` and `jwt` what it serves).

pub mod api;
pub mod attestation;
mod callers;
pub mod config;
pub mod error;
pub mod server;
pub mod server_names;
pub mod sockets;
pub mod spiffe;
pub mod workload;

use std::future::Future;
use std::sync::Arc;

use edgeid_common::listener::Listener;

pub use config::WorkloadConfig;
pub use error::Error;
pub use workload::Workload;

/// Serves the workload API (and the SPIFFE Workload API, if configured)
/// until `shutdown` resolves.
pub async fn run(config: WorkloadConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let socket = config.socket();
    let limits = config.server.limits();
    let mode = config.server.socket_mode;
    let spiffe_config = config.spiffe.clone();
    let keyd = edgeid_keyd::KeydClient::new(&config.keyd_socket);
    let workload = Arc::new(Workload::new(config)?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let spiffe = match spiffe_config {
        Some(c) => {
            let listener = Listener::open_named(&c.socket, mode, "spiffe").map_err(|e| {
                Error::Setup(format!("cannot listen on {}: {e}", c.socket.display()))
            })?;
            let spiffe = spiffe::Spiffe::new(workload.clone(), keyd, &c);
            let mut stop = stop_rx.clone();
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            Some(tokio::spawn(spiffe.serve(
                listener,
                limits.clone(),
                stopped,
            )))
        }
        None => {
            if edgeid_common::listener::systemd_passed("spiffe") {
                tracing::warn!("systemd passed the SPIFFE socket but there is no [spiffe] config: nothing answers on it; configure [workload.spiffe] or disable edgeid-workloadd-spiffe.socket");
            }
            None
        }
    };
    // Last: the workload socket appearing means workloadd is ready. Under
    // systemd with both sockets, each is taken by its name (their order is
    // not promised); alone, the workload socket is the first.
    let listener = if edgeid_common::listener::systemd_passed("workload") {
        Listener::open_named(&socket, mode, "workload")
    } else {
        Listener::open(&socket, mode)
    }
    .map_err(|e| Error::Setup(format!("cannot listen on {}: {e}", socket.display())))?;
    let sockets = server::module_sockets(&workload);
    sockets.restore();
    let service = Arc::new(server::Service {
        workload: workload.clone(),
        sockets: Some(sockets.clone()),
        bound: None,
    });
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let served = edgeid_common::server::serve(listener, service, limits, shutdown).await;
    sockets.close().await;
    if let Some(task) = spiffe {
        match task.await {
            Ok(r) => r?,
            Err(e) => return Err(Error::Setup(format!("the SPIFFE server failed: {e}"))),
        }
    }
    served.map_err(|e| Error::Setup(format!("server failed: {e}")))
}

/// The `edgeid-workloadd` program (`--config <file>`): its own binary's `main`,
/// and what the multi-call `edgeidctl` runs when invoked as `edgeid-workloadd`.
pub fn main() -> std::process::ExitCode {
    edgeid_common::daemon::main(
        "workloadd",
        "edgeid workload API: what modules call for signatures, encryption, certificates and trust bundles.",
        WorkloadConfig::load,
        WorkloadConfig::validate,
        |config| run(config, edgeid_common::server::shutdown_signal()),
    )
}
