//! edgeid-workloadd: the IoT Edge compatible workload API that modules call
//! (ARCHITECTURE.md section 7). Unchanged Azure IoT SDK code in a module gets
//! its SAS signatures, encryption, certificates and trust bundle here.
//!
//! - [`api`]: the IoT Edge wire types; [`server`]: routes and `api-version`.
//! - [`workload`]: which module a caller is, and each operation through
//!   identityd, keyd and certd; [`sockets`]: per-module sockets.
//! - [`config`], [`error`].

pub mod api;
pub mod config;
pub mod error;
pub mod server;
pub mod sockets;
pub mod workload;

use std::future::Future;
use std::sync::Arc;

use edgeid_common::listener::Listener;

pub use config::WorkloadConfig;
pub use error::Error;
pub use workload::Workload;

/// Serves the workload API until `shutdown` resolves.
pub async fn run(config: WorkloadConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let socket = config.socket();
    let limits = config.server.limits();
    let mode = config.server.socket_mode;
    let workload = Arc::new(Workload::new(config)?);
    let listener = Listener::open(&socket, mode)
        .map_err(|e| Error::Setup(format!("cannot listen on {}: {e}", socket.display())))?;
    workload.restore_sockets();
    let service = Arc::new(server::Service {
        workload: workload.clone(),
        bound: None,
    });
    let served = edgeid_common::server::serve(listener, service, limits, shutdown).await;
    workload.close_sockets().await;
    served.map_err(|e| Error::Setup(format!("server failed: {e}")))
}
