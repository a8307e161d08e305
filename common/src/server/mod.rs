//! The HTTP server every daemon runs on its Unix socket, as a table of
//! contents: listener → connection → request → handler, one small file
//! each, the limits and shutdown here.
//!
//! - [`accept`]: the accept loop: each connection's caller read from
//!   `SO_PEERCRED`, one task per connection, the shutdown drain.
//! - [`admission`]: who gets in at the connection cap: the registry of
//!   connections and the eviction of the least useful one.
//! - [`http1`]: HTTP/1.1 for the daemons' JSON APIs ([`serve`]): body cap,
//!   request timeout, panics caught, the [`Handler`] called.
//! - [`http2`]: HTTP/2 for gRPC ([`serve_h2`]): stream and header limits,
//!   keep-alive pings.
//! - [`connection`]: driving one connection to its end (idle windows,
//!   graceful close, drop), for both.
//! - [`activity`]: what a connection has been doing, which the windows and
//!   the eviction read.
//! - [`request`]: what a handler sees and returns: [`ApiRequest`],
//!   [`ApiResponse`], [`Health`].

mod accept;
mod activity;
mod admission;
mod connection;
mod http1;
mod http2;
mod request;

use std::time::Duration;

pub use http1::serve;
pub use http2::serve_h2;
pub use request::{ApiRequest, ApiResponse, Handler, Health};

/// What the server enforces on every connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest body accepted (413 past it).
    pub max_body_bytes: usize,
    /// Bodies buffered at once by one server, all connections together
    /// (503 past it): a flood of large bodies costs this much, no more.
    pub max_buffered_bytes: usize,
    /// Time allowed to send a request's headers.
    pub header_read_timeout: Duration,
    /// Time allowed for a body to arrive, and for a handler to answer.
    pub request_timeout: Duration,
    /// A connection with no traffic and nothing in flight is closed after this.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections one uid may hold at once (its share); past it, with
    /// all of them at work, its new one is answered 429 (gRPC:
    /// RESOURCE_EXHAUSTED) and closed.
    pub max_connections_per_caller: usize,
    /// HTTP/2 streams one uid may have open at once, all its connections
    /// together; past it a stream is answered RESOURCE_EXHAUSTED.
    pub max_streams_per_caller: usize,
    /// Time in-flight requests get to finish after shutdown is asked for.
    pub shutdown_grace: Duration,
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; only Ctrl-C will stop this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
