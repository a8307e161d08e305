//! HTTP/2 for gRPC: the service built for each connection's caller, with
//! stream and header-list limits and keep-alive pings; a stream keeps its
//! connection at work until its response ends. No caller holds more than
//! its share of streams, all its connections together; a stream past it
//! (or on a connection past its caller's share) is answered
//! RESOURCE_EXHAUSTED at once, as a trailers-only gRPC response.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::accept::{accept_loop, Refused};
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
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http.timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .keep_alive_interval(Some(H2_KEEPALIVE))
        .keep_alive_timeout(limits.header_read_timeout);
    let http = Arc::new(http);
    let streams = Arc::new(Streams {
        per_caller: limits.max_streams_per_caller,
        open: Mutex::new(HashMap::new()),
    });
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
        move |stream, caller, activity: Arc<Activity>, stop, refused: Option<Refused>| {
            let inner = Arc::new(make(caller));
            let tracked = activity.clone();
            let streams = streams.clone();
            // Each stream is in flight, and at work, until its response body
            // is done: a connection with an open stream is never evicted.
            let service = service_fn(move |req: Request<Incoming>| {
                let inner = inner.clone();
                let admitted = match &refused {
                    Some(Refused(why)) => Err(why.to_string()),
                    None => streams.enter(caller.uid),
                };
                let at_work =
                    admitted.map(|slot| (slot, tracked.begin_request(), tracked.begin_work()));
                async move {
                    let guard = match at_work {
                        Ok(guard) => guard,
                        Err(why) => {
                            tracing::debug!(caller = %caller, "refused a stream: {why}");
                            return Ok(resource_exhausted(&why));
                        }
                    };
                    let response = inner.call(req).await?;
                    Ok::<_, S::Error>(
                        response.map(|body| Either::Left(Guarded { body, _busy: guard })),
                    )
                }
            });
            let conn = http.serve_connection(TokioIo::new(stream), service);
            async move { drive(conn, &activity, &windows, caller, stop).await }
        },
    )
    .await
}

/// A trailers-only gRPC answer: RESOURCE_EXHAUSTED and why.
fn resource_exhausted<B>(why: &str) -> Response<Either<B, Full<Bytes>>> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static("8"));
    // gRPC's grpc-message is percent-encoded; ours is plain ASCII words.
    let message: String = why
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&message.replace('%', "%25")) {
        headers.insert("grpc-message", v);
    }
    response
}

/// Open streams per caller uid, all connections of one server together.
struct Streams {
    per_caller: usize,
    open: Mutex<HashMap<u32, usize>>,
}

impl Streams {
    /// A slot for one more stream of `uid`, or why not.
    fn enter(self: &Arc<Self>, uid: u32) -> Result<StreamSlot, String> {
        let mut open = crate::sync::lock(&self.open);
        let n = open.entry(uid).or_insert(0);
        if *n >= self.per_caller {
            return Err(format!(
                "uid {uid} has {} streams open, its share of this socket: close one first",
                *n
            ));
        }
        *n += 1;
        Ok(StreamSlot {
            streams: self.clone(),
            uid,
        })
    }
}

/// One open stream of a caller, given back when its response ends.
struct StreamSlot {
    streams: Arc<Streams>,
    uid: u32,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = crate::sync::lock(&self.streams.open);
        if let Some(n) = open.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

/// A response body that keeps its stream counted (in flight, at work, in
/// its caller's share) until it ends.
struct Guarded<B> {
    body: B,
    _busy: (StreamSlot, InFlight, AtWork),
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
