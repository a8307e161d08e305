//! Driving one connection, HTTP/1 or HTTP/2, to its end: closed
//! gracefully once idle past its window, when evicted or at shutdown, and
//! dropped if it does not wind down.

use std::time::{Duration, Instant};

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::watch;

use super::activity::Activity;
use crate::authz::Caller;

/// How long a connection may sit before it is closed.
#[derive(Clone, Copy)]
pub(super) struct Windows {
    /// Before its first request.
    pub(super) first: Duration,
    /// With nothing in flight, after a request.
    pub(super) idle: Duration,
    /// Once asked to close, how long it has before it is dropped (`None`:
    /// as long as it takes); after a shutdown, on top of `grace`.
    pub(super) wind_down: Option<Duration>,
    /// The shutdown grace.
    pub(super) grace: Duration,
}

/// Drives one connection to its end: a graceful close once it has been idle
/// for its window or when `stop` is set, then a drop if it does not wind down.
pub(super) async fn drive<C>(
    conn: C,
    activity: &Activity,
    windows: &Windows,
    caller: Caller,
    mut stop: watch::Receiver<bool>,
) where
    C: GracefulConnection<Error = hyper::Error>,
{
    tokio::pin!(conn);
    // Set once the connection is asked to close: when it will be dropped.
    let mut closing: Option<Option<Instant>> = None;
    if *stop.borrow() {
        conn.as_mut().graceful_shutdown();
        closing = Some(
            windows
                .wind_down
                .map(|w| Instant::now() + windows.grace + w),
        );
    }
    loop {
        let window = if activity.has_begun() {
            windows.idle
        } else {
            windows.first
        };
        // While a request runs past the idle deadline, the connection is not
        // idle: look again a window later instead of at a deadline that has
        // already passed (which would wake this loop at once, forever).
        let now = Instant::now();
        let wake = match closing {
            Some(drop_at) => drop_at,
            None => Some(match activity.idle_deadline(window) {
                at if at > now => at,
                _ => now + window,
            }),
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(caller = %caller, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = stop.changed(), if closing.is_none() => {
                let _ = changed;
                conn.as_mut().graceful_shutdown();
                closing = Some(windows.wind_down.map(|w| Instant::now() + windows.grace + w));
            }
            () = activity.evicted(), if closing.is_none() => {
                if activity.is_working() {
                    // It got to work since it was chosen: let that request finish.
                    conn.as_mut().graceful_shutdown();
                    closing = Some(windows.wind_down.map(|w| Instant::now() + w));
                } else {
                    tracing::debug!(caller = %caller, "closing a connection to make room for a new one");
                    return;
                }
            }
            () = tokio::time::sleep_until(wake.unwrap_or(now + FOREVER).into()), if wake.is_some() => {
                if closing.is_some() {
                    tracing::debug!(caller = %caller, "dropping a connection that did not wind down");
                    return;
                }
                if activity.is_idle(window) {
                    tracing::debug!(caller = %caller, "closing idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing = Some(windows.wind_down.map(|w| Instant::now() + w));
                }
            }
        }
    }
}

/// A wake-up that never comes in practice (a disabled timer arm).
const FOREVER: Duration = Duration::from_secs(86_400);
