//! HTTP/2 for gRPC: the service built for each connection's caller, with
//! stream and header-list limits and keep-alive pings; a stream keeps its
//! connection at work until its response ends.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::accept::accept_loop;
use super::activity::{Activity, AtWork, InFlight};
use super::connection::{drive, Windows};
use super::Limits;
use crate::authz::Caller;
use crate::listener::Listener;

/// Serves HTTP/2 (gRPC) on `listener` until `shutdown` resolves: each
/// connection gets the service `make` builds for its caller. The connection
/// cap and shutdown grace are those of `limits`. A request has no deadline
/// of its own (a server stream lasts as long as its client wants), but a
/// connection is closed when it sends no request within the header timeout
/// (an idle or slow client cannot hold a slot), when it has had no stream
/// open for the idle timeout, or when its peer stops answering keep-alive pings.
pub async fn serve_h2<M, S, B>(
    listener: Listener,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    make: M,
) -> io::Result<()>
where
    M: Fn(Caller) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http.timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .keep_alive_interval(Some(H2_KEEPALIVE))
        .keep_alive_timeout(limits.header_read_timeout);
    let http = Arc::new(http);
    // Before its first request a connection gets the header timeout; after,
    // the idle timeout between streams. Asked to close, it has the header
    // timeout to send its GOAWAY and go.
    let windows = Windows {
        first: limits.header_read_timeout,
        idle: limits.idle_timeout,
        wind_down: Some(limits.header_read_timeout),
        grace: limits.shutdown_grace,
    };
    accept_loop(
        listener,
        Arc::new(limits),
        shutdown,
        move |stream, caller, activity: Arc<Activity>, stop| {
            let inner = Arc::new(make(caller));
            let tracked = activity.clone();
            // Each stream is in flight, and at work, until its response body
            // is done: a connection with an open stream is never evicted.
            let service = service_fn(move |req: Request<Incoming>| {
                let busy = tracked.begin_request();
                let work = tracked.begin_work();
                let inner = inner.clone();
                async move {
                    let response = inner.call(req).await?;
                    Ok::<_, S::Error>(response.map(|body| Guarded {
                        body,
                        _busy: (busy, work),
                    }))
                }
            });
            let conn = http.serve_connection(TokioIo::new(stream), service);
            async move { drive(conn, &activity, &windows, caller, stop).await }
        },
    )
    .await
}

/// A response body that keeps its stream counted in flight until it ends.
struct Guarded<B> {
    body: B,
    _busy: (InFlight, AtWork),
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Streams one HTTP/2 connection may have open at once.
const H2_MAX_STREAMS: u32 = 64;
/// Largest header block accepted.
const H2_MAX_HEADER_LIST: u32 = 16 * 1024;
/// How often an HTTP/2 peer is pinged to check it is still there.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);
