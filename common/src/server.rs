//! The HTTP/1.1 server every daemon runs on its Unix socket.
//!
//! listener -> connection (caller read from `SO_PEERCRED`) -> request (body capped,
//! timed) -> [`Handler`] -> response. Limits and shutdown live here, once.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::watch;

use crate::authz::Caller;
use crate::error::{ApiError, ErrorBody, HttpError};
use crate::listener::Listener;

/// What the server enforces on every connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest body accepted (413 past it).
    pub max_body_bytes: usize,
    /// Time allowed to send a request's headers.
    pub header_read_timeout: Duration,
    /// Time allowed for a body to arrive, and for a handler to answer.
    pub request_timeout: Duration,
    /// A connection with no traffic and nothing in flight is closed after this.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Time in-flight requests get to finish after shutdown is asked for.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        crate::config::ServerConfig::default().limits()
    }
}

/// One request, as a handler sees it: who asked, what, and the whole body.
#[derive(Debug)]
pub struct ApiRequest {
    /// The peer process, from the socket.
    pub caller: Caller,
    /// The HTTP method.
    pub method: Method,
    /// The path, still percent-encoded.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The body, already read and within the size limit.
    pub body: Bytes,
}

impl ApiRequest {
    /// Parses the body as JSON; a malformed body is a 400 with serde's message.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::bad_request(
                "request body is empty; a JSON object is expected",
            ));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
    }

    /// Parses the body as IoT Edge's runtime and the aziot daemons do: an
    /// empty body is `None`; one that is not JSON, or not of the expected
    /// shape, is a 422 with serde's message.
    pub fn json_or_unprocessable<T: DeserializeOwned>(&self) -> Result<Option<T>, ApiError> {
        if self.body.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&self.body).map(Some).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("malformed JSON body: {e}"),
            )
        })
    }

    /// The decoded value of a query parameter; of its last occurrence if it
    /// is given more than once (as IoT Edge's and the aziot servers read it).
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        query.rsplit('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    }
}

/// A response: status, JSON body, and any extra headers.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    status: StatusCode,
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiResponse {
    /// A JSON body with the given status.
    pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self {
                status,
                body: body.into(),
                headers: Vec::new(),
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize a response");
                Self::error(&ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot serialize the response",
                ))
            }
        }
    }

    /// 204 with no body.
    pub fn no_content() -> Self {
        Self {
            status: StatusCode::NO_CONTENT,
            body: Bytes::new(),
            headers: Vec::new(),
        }
    }

    /// The `{"message"}` answer for an error; server errors are logged in full here.
    pub fn error<E: HttpError + ?Sized>(err: &E) -> Self {
        let status = err.status();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %err, "backend unavailable");
        } else if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %err, "request failed");
        }
        let body = ErrorBody {
            message: err.public_message(),
        };
        let bytes =
            serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"message\":\"error\"}".to_vec());
        Self {
            status,
            body: bytes.into(),
            headers: Vec::new(),
        }
    }

    /// The answer for a handler's result: `ok` status with the value, or the error.
    pub fn from_result<T: Serialize, E: HttpError>(ok: StatusCode, result: Result<T, E>) -> Self {
        match result {
            Ok(v) => Self::json(ok, &v),
            Err(e) => Self::error(&e),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body bytes.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    fn into_hyper(self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(self.body));
        *resp.status_mut() = self.status;
        if resp.status() != StatusCode::NO_CONTENT {
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (k, v) in self.headers {
            resp.headers_mut().append(k, v);
        }
        resp
    }
}

/// A daemon's API: takes a request, returns a response. Never fails: errors are responses.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, req: ApiRequest) -> impl Future<Output = ApiResponse> + Send;
}

/// The body of every daemon's health answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    /// `ok`, or `degraded` when a backend is down.
    pub status: String,
    /// The build version.
    pub version: String,
    /// Each backend's state (`ok` or why not).
    #[serde(default)]
    pub backends: std::collections::BTreeMap<String, String>,
}

impl Health {
    /// This build's health: `ok` when every backend says `ok`, else `degraded`.
    pub fn of(backends: std::collections::BTreeMap<String, String>) -> Self {
        let status = if backends.values().all(|s| s == "ok") {
            "ok"
        } else {
            "degraded"
        };
        Self {
            status: status.to_owned(),
            version: crate::VERSION.to_owned(),
            backends,
        }
    }
}

/// Serves `handler` on `listener` until `shutdown` resolves, then stops accepting,
/// lets in-flight requests finish (up to `limits.shutdown_grace`), removes the
/// socket file if this process created it, and returns.
pub async fn serve<H: Handler>(
    listener: Listener,
    handler: Arc<H>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let limits = Arc::new(limits);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(64 * 1024);
    let http = Arc::new(http);
    accept_loop(
        listener,
        limits.clone(),
        shutdown,
        move |stream, caller, activity, stop| {
            let conn = Connection {
                caller,
                handler: handler.clone(),
                limits: limits.clone(),
                http: http.clone(),
            };
            conn.run(stream, activity, stop)
        },
    )
    .await
}

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
async fn accept_loop<F, Fut>(
    listener: Listener,
    limits: Arc<Limits>,
    shutdown: impl Future<Output = ()>,
    serve_one: F,
) -> io::Result<()>
where
    F: Fn(UnixStream, Caller, Arc<Activity>, watch::Receiver<bool>) -> Fut,
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
        registry.make_room(limits.max_connections);
        let activity = Arc::new(Activity::new());
        let entry = Registered {
            id: registry.insert(activity.clone()),
            registry: registry.clone(),
        };
        let served = serve_one(stream, caller, activity, stop_rx.clone());
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

/// A connection's place in the registry, given up when its task ends (or
/// unwinds).
struct Registered {
    id: u64,
    registry: Arc<Registry>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}

/// The connections a server holds, so that a new one can take the place of
/// the least useful when the cap is reached.
#[derive(Default)]
struct Registry {
    conns: std::sync::Mutex<std::collections::HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
    /// Set while the cap is reached, so that it is logged once per episode.
    full: std::sync::atomic::AtomicBool,
    /// Woken when a connection ends.
    changed: tokio::sync::Notify,
}

impl Registry {
    fn insert(&self, activity: Arc<Activity>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        crate::sync::lock(&self.conns).insert(id, activity);
        id
    }

    fn remove(&self, id: u64) {
        crate::sync::lock(&self.conns).remove(&id);
        self.changed.notify_waiters();
    }

    fn is_empty(&self) -> bool {
        crate::sync::lock(&self.conns).is_empty()
    }

    /// Whether a new connection may be accepted under `max`: there is a
    /// free slot, or a connection that [`Registry::make_room`] may close.
    /// If not, when one may become evictable (`None`: every connection is
    /// in a handler; look again a moment later).
    fn admission(&self, max: usize) -> Result<(), Option<Instant>> {
        let conns = crate::sync::lock(&self.conns);
        let mut live = conns.values().filter(|a| !a.is_evicted());
        if live.clone().count() < max {
            return Ok(());
        }
        let now = Instant::now();
        let mut next = None;
        for at in live.by_ref().filter_map(|a| a.evictable_at()) {
            if at <= now {
                return Ok(());
            }
            next = Some(next.map_or(at, |n: Instant| n.min(at)));
        }
        Err(next)
    }

    /// Makes room for one more connection under `max` by evicting the least
    /// useful one if the cap is reached. Only a connection with no request
    /// in a handler is evicted, and only once it has had its chance:
    /// [`NEW_CONNECTION_GRACE`] to complete a first request, or
    /// [`IDLE_BEFORE_EVICTION`] of idleness after one (a pooled keep-alive
    /// connection its client is about to reuse is not pulled from under it).
    /// Silent connections go first, then those stuck in a request
    /// (slow headers, half a body), oldest first, then the longest idle.
    fn make_room(&self, max: usize) {
        let conns = crate::sync::lock(&self.conns);
        let live = conns.values().filter(|a| !a.is_evicted()).count();
        if live < max {
            if live <= max / 2 {
                self.full.store(false, Ordering::Relaxed);
            }
            return;
        }
        let now = Instant::now();
        let victim = conns
            .values()
            .filter(|a| !a.is_evicted() && a.evictable_at().is_some_and(|at| at <= now))
            .min_by_key(|a| a.rank());
        let Some(victim) = victim else {
            // All got to work since `admission`: one over the cap, briefly.
            return;
        };
        if !self.full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                max_connections = max,
                "connection cap reached: closing the least recently useful connections to make room"
            );
        }
        victim.evict();
    }
}

/// One accepted connection and what it needs to serve requests.
struct Connection<H> {
    caller: Caller,
    handler: Arc<H>,
    limits: Arc<Limits>,
    http: Arc<http1::Builder>,
}

impl<H: Handler> Connection<H> {
    async fn run(self, stream: UnixStream, activity: Arc<Activity>, stop: watch::Receiver<bool>) {
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
        });
        let Self {
            caller,
            handler,
            limits,
            http,
        } = self;
        let service = {
            let activity = activity.clone();
            let limits = limits.clone();
            service_fn(move |req| {
                let handler = handler.clone();
                let limits = limits.clone();
                let activity = activity.clone();
                async move {
                    let _busy = activity.begin_request();
                    Ok::<_, Infallible>(
                        respond(&*handler, caller, req, &limits, &activity)
                            .await
                            .into_hyper(),
                    )
                }
            })
        };
        let conn = http.serve_connection(io, service);
        // hyper enforces the header timeout itself; between requests (bytes
        // moving count as activity) the idle timeout; a closing connection
        // finishes its request, however long the request timeout lets it take.
        let windows = Windows {
            first: limits.idle_timeout,
            idle: limits.idle_timeout,
            wind_down: None,
            grace: limits.shutdown_grace,
        };
        drive(conn, &activity, &windows, caller, stop).await;
    }
}

/// How long a connection may sit before it is closed.
#[derive(Clone, Copy)]
struct Windows {
    /// Before its first request.
    first: Duration,
    /// With nothing in flight, after a request.
    idle: Duration,
    /// Once asked to close, how long it has before it is dropped (`None`:
    /// as long as it takes); after a shutdown, on top of `grace`.
    wind_down: Option<Duration>,
    /// The shutdown grace.
    grace: Duration,
}

/// Drives one connection to its end: a graceful close once it has been idle
/// for its window or when `stop` is set, then a drop if it does not wind down.
async fn drive<C>(
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

/// Reads the body within the limits, calls the handler, catches its panics.
async fn respond<H: Handler>(
    handler: &H,
    caller: Caller,
    req: Request<Incoming>,
    limits: &Limits,
    activity: &Arc<Activity>,
) -> ApiResponse {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let too_large = || {
        ApiResponse::error(&ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body is larger than the limit of {} bytes",
                limits.max_body_bytes
            ),
        ))
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let drain_cap = limits.max_body_bytes.saturating_mul(DRAIN_FACTOR);
    if declared.is_some_and(|n| n > drain_cap as u64) {
        // Far too large: not worth reading; the client may see the connection close.
        return too_large();
    }
    let body = match tokio::time::timeout(
        limits.request_timeout,
        read_body(body, limits.max_body_bytes, drain_cap),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(BodyError::TooLarge)) => return too_large(),
        Ok(Err(BodyError::Broken(e))) => {
            return ApiResponse::error(&ApiError::bad_request(format!(
                "cannot read the request body: {e}"
            )));
        }
        Err(_) => {
            return ApiResponse::error(&ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {}s",
                    limits.request_timeout.as_secs()
                ),
            ));
        }
    };
    // The whole request is here: from now on the connection is doing work
    // and is not evicted to make room for another.
    let _work = activity.begin_work();
    let request = ApiRequest {
        caller,
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        body,
    };
    let method = request.method.clone();
    let path = request.path.clone();
    let answer = AssertUnwindSafe(handler.handle(request)).catch_unwind();
    let response = match tokio::time::timeout(limits.request_timeout, answer).await {
        Ok(Ok(response)) => response,
        Ok(Err(_panic)) => {
            tracing::error!(%method, %path, "handler panicked");
            ApiResponse::error(&ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
            ))
        }
        Err(_) => ApiResponse::error(&ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the operation did not finish within {}s",
                limits.request_timeout.as_secs()
            ),
        )),
    };
    tracing::debug!(
        %method, %path, caller = %caller, status = response.status.as_u16(),
        micros = started.elapsed().as_micros() as u64, "request"
    );
    response
}

/// A body over the limit but under this many times the limit is read and
/// thrown away before the 413 goes out, so a client that writes its whole body
/// before reading sees the 413 instead of a broken pipe.
const DRAIN_FACTOR: usize = 4;

enum BodyError {
    TooLarge,
    Broken(String),
}

/// Reads a body of at most `max` bytes; a larger one is read on (and discarded)
/// up to `drain_cap` bytes, then refused.
async fn read_body(mut body: Incoming, max: usize, drain_cap: usize) -> Result<Bytes, BodyError> {
    let mut kept = BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen <= max {
            kept.extend_from_slice(&data);
        } else if seen > drain_cap {
            return Err(BodyError::TooLarge);
        }
    }
    if seen > max {
        Err(BodyError::TooLarge)
    } else {
        Ok(kept.freeze())
    }
}

/// When a connection last moved bytes, how many requests it has in flight
/// and in a handler, when it last completed one, and whether it has been
/// asked to make room for another.
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    begun: std::sync::atomic::AtomicBool,
    /// Requests whole and in a handler (HTTP/2: open streams).
    working: AtomicUsize,
    /// When a request last completed, in ms after `epoch` (0: never).
    useful_ms: AtomicU64,
    evicted: std::sync::atomic::AtomicBool,
    evict: tokio::sync::Notify,
    /// Whether the peer ever sent a byte (or, HTTP/2, began a stream).
    heard: std::sync::atomic::AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            begun: std::sync::atomic::AtomicBool::new(false),
            working: AtomicUsize::new(0),
            useful_ms: AtomicU64::new(0),
            evicted: std::sync::atomic::AtomicBool::new(false),
            evict: tokio::sync::Notify::new(),
            heard: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Marks a request at work (in a handler) until the guard drops; then
    /// the connection has just been useful.
    fn begin_work(self: &Arc<Self>) -> AtWork {
        self.working.fetch_add(1, Ordering::AcqRel);
        AtWork(self.clone())
    }

    fn is_working(&self) -> bool {
        self.working.load(Ordering::Acquire) > 0
    }

    /// From when it may be evicted (`None` while a request is in a handler):
    /// [`NEW_CONNECTION_GRACE`] after it connected if it never completed a
    /// request, else [`IDLE_BEFORE_EVICTION`] after it last did.
    fn evictable_at(&self) -> Option<Instant> {
        if self.is_working() {
            return None;
        }
        let useful = self.useful_ms.load(Ordering::Relaxed);
        Some(if useful == 0 {
            self.epoch + NEW_CONNECTION_GRACE
        } else {
            self.epoch + Duration::from_millis(useful) + IDLE_BEFORE_EVICTION
        })
    }

    /// Its rank for eviction, least useful first: whether it ever completed
    /// a request, whether it ever sent a byte, then when it last completed
    /// a request (or connected).
    fn rank(&self) -> (bool, bool, Instant) {
        let useful = self.useful_ms.load(Ordering::Relaxed);
        (
            useful > 0,
            self.heard.load(Ordering::Relaxed),
            self.epoch + Duration::from_millis(useful),
        )
    }

    fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Asks the connection to close to make room for a new one.
    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.evict.notify_one();
    }

    /// Resolves once the connection has been asked to make room.
    async fn evicted(&self) {
        self.evict.notified().await;
    }

    /// Whether a request has begun on this connection.
    fn has_begun(&self) -> bool {
        self.begun.load(Ordering::Acquire)
    }

    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.begun.store(true, Ordering::Release);
        self.heard.store(true, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn idle_deadline(&self, idle: Duration) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }

    fn is_idle(&self, idle: Duration) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && Instant::now() >= self.idle_deadline(idle)
    }
}

/// How long a new connection has to complete its first request before it
/// may be evicted to make room.
const NEW_CONNECTION_GRACE: Duration = Duration::from_secs(1);

/// At the cap with every connection in a handler, how soon to look again
/// (besides when a connection ends).
const BUSY_RECHECK: Duration = Duration::from_millis(250);

/// How long a connection that completed a request must have been idle before
/// it may be evicted. Clients reuse their most recently used connections, so
/// one idle this long is rarely the one a client is about to send on.
const IDLE_BEFORE_EVICTION: Duration = Duration::from_secs(2);

/// Marks a request at work until dropped.
struct AtWork(Arc<Activity>);

impl Drop for AtWork {
    fn drop(&mut self) {
        // At least 1 ms: 0 means it never completed one.
        let now = (self.0.epoch.elapsed().as_millis() as u64).max(1);
        self.0.useful_ms.store(now, Ordering::Relaxed);
        self.0.working.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Marks a request in flight until dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream that records when bytes last moved, for the idle timeout.
struct Tracked {
    inner: UnixStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
            self.activity.heard.store(true, Ordering::Relaxed);
        }
        poll
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::UdsClient;

    /// Answers after `delay`, doing nothing meanwhile.
    struct Slow(Duration);

    impl Handler for Slow {
        async fn handle(&self, _: ApiRequest) -> ApiResponse {
            tokio::time::sleep(self.0).await;
            ApiResponse::no_content()
        }
    }

    fn cpu_time() -> Duration {
        // SAFETY: getrusage only writes the struct we pass.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        tv(usage.ru_utime) + tv(usage.ru_stime)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_outlasting_the_idle_timeout_completes_without_spinning() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let listener = Listener::bind(&socket, 0o600).unwrap();
        let limits = Limits {
            idle_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Slow(Duration::from_millis(1500))),
            limits,
            async {
                let _ = stopped.await;
            },
        ));
        let before = cpu_time();
        let (status, _) = UdsClient::new(&socket)
            .raw(Method::GET, "/", Bytes::new())
            .await
            .unwrap();
        let used = cpu_time() - before;
        assert_eq!(
            status,
            StatusCode::NO_CONTENT,
            "the idle watchdog must not cut a request in flight"
        );
        assert!(
            used < Duration::from_millis(700),
            "{used:?} of CPU while waiting 1.5 s: the idle loop spins"
        );
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
