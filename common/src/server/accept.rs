//! The accept loop: connections in, each with its caller, each on its own
//! task; at shutdown, the drain.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UnixStream;
use tokio::sync::watch;

use super::activity::Activity;
use super::admission::{Registered, Registry, BUSY_RECHECK};
use super::Limits;
use crate::authz::Caller;
use crate::listener::Listener;

/// Why a connection is answered with "too many" (429, or gRPC
/// RESOURCE_EXHAUSTED) instead of being served.
#[derive(Clone)]
pub(super) struct Refused(pub(super) Arc<str>);

/// How long a refused connection lives: time to read its first request
/// and answer it.
const REFUSAL_WINDOW: Duration = Duration::from_secs(2);

/// Accepts connections until `shutdown`, each with its caller read from
/// `SO_PEERCRED`, each served on its own task by what `serve_one` returns
/// (told through `stop` when to wind down). Then waits up to the shutdown
/// grace for them to end.
///
/// At most `limits.max_connections` are served at once. At the cap, a new
/// connection takes the place of the least useful one ([`Registry::make_room`]),
/// so that silent, slow or idle clients, however many, cannot keep a good
/// client out until their timeouts run; only when every connection has a
/// request in a handler do new clients wait in the kernel's listen queue.
pub(super) async fn accept_loop<F, Fut>(
    listener: Listener,
    limits: Arc<Limits>,
    shutdown: impl Future<Output = ()>,
    serve_one: F,
) -> io::Result<()>
where
    F: Fn(UnixStream, Caller, Arc<Activity>, watch::Receiver<bool>, Option<Refused>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let registry = Arc::new(Registry::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    tracing::info!(socket = listener.description(), "listening");

    tokio::pin!(shutdown);
    'serve: loop {
        // When every connection is at work, new clients wait in the kernel's
        // listen queue until one ends.
        loop {
            let changed = registry.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let next = match registry.admission(limits.max_connections) {
                Ok(()) => break,
                Err(next) => next.unwrap_or_else(|| Instant::now() + BUSY_RECHECK),
            };
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(next.into()) => {}
                () = &mut shutdown => break 'serve,
            }
        }
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let caller = match stream.peer_cred() {
            Ok(c) => Caller {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the peer's credentials; dropping the connection");
                continue;
            }
        };
        if let Err(held) = registry.share(caller.uid, limits.max_connections_per_caller) {
            // Over its share, every connection of it at work: this one is
            // answered "too many" on its first request and closed, outside
            // the registry, within the refusal window.
            tracing::debug!(caller = %caller, held, "refused: the caller holds its share of connections");
            let refused = Refused(Arc::from(format!(
                "uid {} has {held} connections open, its share of this socket: finish or close one first",
                caller.uid
            )));
            let served = serve_one(
                stream,
                caller,
                Arc::new(Activity::new()),
                stop_rx.clone(),
                Some(refused),
            );
            tokio::spawn(async move {
                let _ = tokio::time::timeout(REFUSAL_WINDOW, served).await;
            });
            continue;
        }
        registry.make_room(limits.max_connections);
        let activity = Arc::new(Activity::new());
        let entry = Registered {
            id: registry.insert(caller.uid, activity.clone()),
            registry: registry.clone(),
        };
        let served = serve_one(stream, caller, activity, stop_rx.clone(), None);
        tokio::spawn(async move {
            served.await;
            drop(entry);
        });
    }

    tracing::info!("shutting down: no new connections; finishing requests in flight");
    drop(listener);
    let _ = stop_tx.send(true);
    let all_closed = async {
        loop {
            let changed = registry.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if registry.is_empty() {
                break;
            }
            changed.await;
        }
    };
    match tokio::time::timeout(limits.shutdown_grace, all_closed).await {
        Ok(()) => tracing::info!("all connections closed"),
        Err(_) => {
            tracing::warn!(grace = ?limits.shutdown_grace, "connections still open after the grace period")
        }
    }
    Ok(())
}
