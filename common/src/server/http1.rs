//! HTTP/1.1 for the daemons' JSON APIs: each request's body read within
//! the cap and the request timeout, the handler called with panics caught.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::CONTENT_LENGTH;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::accept::{accept_loop, Refused};
use super::activity::{Activity, Tracked};
use super::connection::{drive, Windows};
use super::{ApiRequest, ApiResponse, Handler, Limits};
use crate::authz::Caller;
use crate::encoding::WipingBuf;
use crate::error::ApiError;
use crate::listener::Listener;

/// Serves `handler` on `listener` until `shutdown` resolves, then stops accepting,
/// lets in-flight requests finish (up to `limits.shutdown_grace`), removes the
/// socket file if this process created it, and returns.
pub async fn serve<H: Handler>(
    listener: Listener,
    handler: Arc<H>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let budget = Arc::new(Semaphore::new(
        limits.max_buffered_bytes.min(Semaphore::MAX_PERMITS),
    ));
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
        move |stream, caller, activity, stop, refused| {
            let conn = Connection {
                caller,
                refused,
                handler: handler.clone(),
                limits: limits.clone(),
                budget: budget.clone(),
                http: http.clone(),
            };
            conn.run(stream, activity, stop)
        },
    )
    .await
}

/// One accepted connection and what it needs to serve requests.
struct Connection<H> {
    caller: Caller,
    /// Over its caller's share: every request is answered 429.
    refused: Option<Refused>,
    handler: Arc<H>,
    limits: Arc<Limits>,
    /// The server's bytes for buffered bodies, shared by every connection.
    budget: Arc<Semaphore>,
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
            refused,
            handler,
            limits,
            budget,
            http,
        } = self;
        let service = {
            let activity = activity.clone();
            let limits = limits.clone();
            service_fn(move |req| {
                let handler = handler.clone();
                let limits = limits.clone();
                let activity = activity.clone();
                let budget = budget.clone();
                let refused = refused.clone();
                async move {
                    if let Some(Refused(why)) = refused {
                        return Ok::<_, Infallible>(too_many(&why).into_hyper());
                    }
                    let _busy = activity.begin_request();
                    Ok::<_, Infallible>(
                        respond(&*handler, caller, req, &limits, &budget, &activity)
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

/// The answer to a caller over its share, which closes the connection.
fn too_many(why: &str) -> ApiResponse {
    ApiResponse::error(&ApiError::new(StatusCode::TOO_MANY_REQUESTS, why))
        .with_header(http::header::CONNECTION, "close")
}

/// Reads the body within the limits, calls the handler, catches its panics.
async fn respond<H: Handler>(
    handler: &H,
    caller: Caller,
    req: Request<Incoming>,
    limits: &Limits,
    budget: &Arc<Semaphore>,
    activity: &Arc<Activity>,
) -> ApiResponse {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    if let Some(refused) = handler.admit(&caller, &parts.method, parts.uri.path()) {
        tracing::debug!(
            method = %parts.method, path = parts.uri.path(), caller = %caller,
            status = refused.status().as_u16(), "refused before its body was read"
        );
        discard_body(body, &parts.headers, limits.max_body_bytes).await;
        return refused;
    }
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
    // Held until the answer is made: the body's bytes in the server's budget.
    let mut held = Held::new(budget);
    let body = match tokio::time::timeout(
        limits.request_timeout,
        read_body(body, limits.max_body_bytes, drain_cap, &mut held),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(BodyError::TooLarge)) => return too_large(),
        Ok(Err(BodyError::OverBudget)) => {
            tracing::warn!(
                caller = %caller, budget = limits.max_buffered_bytes,
                "request bodies held at once reached the budget: refusing one"
            );
            return ApiResponse::error(&ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many request bodies are being received at once; try again shortly",
            ));
        }
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
        // A standard method's clone copies no bytes.
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        body,
    };
    // For the log lines below, without a second copy of the path.
    let (method, path) = (&parts.method, parts.uri.path());
    let answer = AssertUnwindSafe(handler.handle(request)).catch_unwind();
    let response = match tokio::time::timeout(limits.request_timeout, answer).await {
        Ok(Ok(response)) => response,
        Ok(Err(_panic)) => {
            tracing::error!(%method, path, "handler panicked");
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
        %method, path, caller = %caller, status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64, "request"
    );
    response
}

/// A body over the limit but under this many times the limit is read and
/// thrown away before the 413 goes out, so a client that writes its whole body
/// before reading sees the 413 instead of a broken pipe.
const DRAIN_FACTOR: usize = 4;

/// How long a refused request's body is read for, at most.
const REFUSED_BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and drops the body of a request refused before it was read, up to
/// `cap` bytes and [`REFUSED_BODY_WAIT`]: nothing is kept, and a larger or
/// slower body is not waited for. A connection closed with a body unread is
/// reset, and a client still sending the body (Python's http.client sends
/// it after the headers) then gets EPIPE or ECONNRESET in place of the
/// answer; read, it gets the answer.
async fn discard_body(mut body: Incoming, headers: &http::HeaderMap, cap: usize) {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap as u64) {
        return;
    }
    let _ = tokio::time::timeout(REFUSED_BODY_WAIT, async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                seen = seen.saturating_add(data.len());
                if seen > cap {
                    return;
                }
            }
        }
    })
    .await;
}

enum BodyError {
    TooLarge,
    OverBudget,
    Broken(String),
}

/// Bytes of the server's body budget one request holds.
struct Held<'a> {
    budget: &'a Arc<Semaphore>,
    permits: Option<OwnedSemaphorePermit>,
}

impl<'a> Held<'a> {
    fn new(budget: &'a Arc<Semaphore>) -> Self {
        Self {
            budget,
            permits: None,
        }
    }

    /// Takes `n` more bytes of the budget, without waiting: false if it is spent.
    fn take(&mut self, n: usize) -> bool {
        let Ok(n) = u32::try_from(n) else {
            return false;
        };
        match self.budget.clone().try_acquire_many_owned(n) {
            Ok(more) => {
                match &mut self.permits {
                    Some(p) => p.merge(more),
                    None => self.permits = Some(more),
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// Reads a body of at most `max` bytes, each kept byte taken from the
/// server's budget; a larger one is read on (and discarded) up to
/// `drain_cap` bytes, then refused.
async fn read_body(
    mut body: Incoming,
    max: usize,
    drain_cap: usize,
    held: &mut Held<'_>,
) -> Result<Bytes, BodyError> {
    // The body may carry a secret (an imported key): every copy kept here
    // is wiped, as the buffer grows and when the request is done with it.
    // Room for what Content-Length announces, to a point: an announcement
    // is not yet bytes in the budget.
    const FIRST_ROOM: usize = 64 * 1024;
    let announced =
        usize::try_from(hyper::body::Body::size_hint(&body).lower()).unwrap_or(usize::MAX);
    let mut kept = WipingBuf::with_capacity(announced.min(max).min(FIRST_ROOM));
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen <= max {
            if !held.take(data.len()) {
                return Err(BodyError::OverBudget);
            }
            kept.extend(&data);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::Method;

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

    /// Refuses every caller before the body, as a daemon refuses a stranger.
    struct Refuses;

    impl Handler for Refuses {
        fn admit(&self, _: &Caller, _: &Method, _: &str) -> Option<ApiResponse> {
            Some(ApiResponse::error(&ApiError::forbidden("not for you")))
        }
        async fn handle(&self, _: ApiRequest) -> ApiResponse {
            ApiResponse::no_content()
        }
    }

    /// A client that sends the headers, then the body a moment later (as
    /// Python's http.client does), reads the refusal: the refused body is
    /// read and dropped, not left to reset the connection (before, the
    /// client got EPIPE or ECONNRESET now and then).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_refused_before_its_body_is_answered_when_the_body_comes_late() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let listener = Listener::bind(&socket, 0o600).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Refuses),
            Limits::default(),
            async {
                let _ = stopped.await;
            },
        ));
        let path = socket.clone();
        let answers = tokio::task::spawn_blocking(move || {
            (0..10)
                .map(|_| {
                    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
                    let body = b"{\"data\":\"eA==\"}";
                    let head = format!(
                        "POST /x HTTP/1.1\r\nHost: s\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    s.write_all(head.as_bytes()).unwrap();
                    std::thread::sleep(Duration::from_millis(30));
                    let sent = s.write_all(body);
                    let mut answer = String::new();
                    let read = s.read_to_string(&mut answer);
                    match (sent, read) {
                        (Ok(()), _) if answer.starts_with("HTTP/1.1 403") => Ok(()),
                        (sent, read) => Err(format!("{sent:?} {read:?} {answer:?}")),
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        for answer in answers {
            answer.unwrap();
        }
        let _ = stop.send(());
        server.await.unwrap().unwrap();
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
