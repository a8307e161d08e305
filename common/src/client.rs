//! The client side of the daemons' transport: HTTP/1.1 over a Unix socket, with
//! pooled keep-alive connections. Each daemon's typed client wraps one of these.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use crate::encoding::{to_json_wiped, WipingBuf};
use crate::error::ErrorBody;

/// Why a call to a daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot reach {socket}: {reason}")]
    Unreachable {
        /// The socket path.
        socket: PathBuf,
        /// Why.
        reason: String,
    },
    /// The daemon answered with an error status.
    #[error("{message} (HTTP {status})")]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// The daemon's message.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from {socket}: {reason}")]
    BadReply {
        /// The socket path.
        socket: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// No answer within the client's timeout.
    #[error("no answer from {socket} within {}s", .after.as_secs())]
    Timeout {
        /// The socket path.
        socket: PathBuf,
        /// The timeout.
        after: Duration,
    },
}

impl ClientError {
    /// The HTTP status, if the daemon answered with one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// What this failure means for the request that made the call: every
    /// daemon that calls another maps it the same way.
    pub fn upstream(&self) -> Upstream {
        match self.status() {
            Some(StatusCode::BAD_REQUEST | StatusCode::CONFLICT) => Upstream::Rejected,
            Some(StatusCode::NOT_FOUND) => Upstream::NotFound,
            Some(StatusCode::FORBIDDEN) => Upstream::NotGranted,
            _ => Upstream::Unavailable,
        }
    }
}

/// A failed call to another daemon, as its caller's caller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// 400 or 409: what was asked cannot be done; the reason is the
    /// caller's business (a 400 of the calling daemon).
    Rejected,
    /// 404: no such thing.
    NotFound,
    /// 403: the daemon refused the *calling daemon*: a grant missing from its
    /// config, a setup fault (a 500, logged in full).
    NotGranted,
    /// Unreachable, timed out, 5xx or a nonsense answer (a 503).
    Unavailable,
}

/// Opens a new connection to the socket for each connection the pool needs.
#[derive(Clone)]
struct UdsConnector {
    path: Arc<PathBuf>,
}

impl tower_service::Service<Uri> for UdsConnector {
    type Response = TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let path = self.path.clone();
        Box::pin(async move { UnixStream::connect(&*path).await.map(TokioIo::new) })
    }
}

/// Requests one client (and its clones) has in flight at once; more wait
/// their turn here. Each is a connection, so this keeps one daemon's fan-out
/// (workloadd serving a thousand modules, say) well under the connection
/// cap of the daemon it calls, where a burst over the cap would wait for
/// admission; and the daemons behind have a few cores, not a thousand.
pub const MAX_IN_FLIGHT: usize = 128;

/// A client for one daemon socket. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct UdsClient {
    socket: Arc<PathBuf>,
    inner: Client<UdsConnector, Full<Bytes>>,
    timeout: Duration,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for UdsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdsClient")
            .field("socket", &self.socket)
            .finish()
    }
}

impl UdsClient {
    /// A client for the daemon listening on `socket`.
    pub fn new(socket: impl AsRef<Path>) -> Self {
        let socket = Arc::new(socket.as_ref().to_owned());
        // Idle pooled connections are dropped before the server's idle timeout
        // would close them, so a request never lands on a closing connection.
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(20))
            .build(UdsConnector {
                path: socket.clone(),
            });
        Self {
            socket,
            inner,
            timeout: Duration::from_secs(90),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// Changes the per-request timeout (default 90 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`, JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.call(Method::GET, path, Bytes::new()).await?;
        self.decode(&body)
    }

    /// `POST path` with a JSON body, JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = to_json_wiped(body).map_err(|e| ClientError::BadReply {
            socket: self.socket.to_path_buf(),
            reason: format!("cannot encode the request: {e}"),
        })?;
        let answer = self.call(Method::POST, path, bytes).await?;
        self.decode(&answer)
    }

    /// `PUT path` with a JSON body, no answer body expected.
    pub async fn put<B: Serialize>(&self, path: &str, body: &B) -> Result<(), ClientError> {
        let bytes = to_json_wiped(body).map_err(|e| ClientError::BadReply {
            socket: self.socket.to_path_buf(),
            reason: format!("cannot encode the request: {e}"),
        })?;
        self.call(Method::PUT, path, bytes).await.map(drop)
    }

    /// `DELETE path`, no answer body expected.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.call(Method::DELETE, path, Bytes::new())
            .await
            .map(drop)
    }

    /// Sends a request and returns the status and body as they are, error statuses
    /// included. For tests and tools that need to see exactly what came back.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let uri: Uri =
            format!("http://localhost{path}")
                .parse()
                .map_err(|e| ClientError::BadReply {
                    socket: self.socket.to_path_buf(),
                    reason: format!("bad request path {path}: {e}"),
                })?;
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        if !req.body().size_hint_is_empty() {
            req.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
        }
        let exchange = async {
            // Never closed, so acquiring only waits.
            let _turn = self.in_flight.acquire().await;
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| ClientError::Unreachable {
                    socket: self.socket.to_path_buf(),
                    reason: error_chain(&e),
                })?;
            let status = resp.status();
            // The answer may carry a secret: kept in a buffer that is wiped.
            let mut body = resp.into_body();
            let mut kept = WipingBuf::default();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ClientError::BadReply {
                    socket: self.socket.to_path_buf(),
                    reason: format!("cannot read the answer: {e}"),
                })?;
                if let Ok(data) = frame.into_data() {
                    kept.extend(&data);
                }
            }
            Ok((status, kept.freeze()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                socket: self.socket.to_path_buf(),
                after: self.timeout,
            })?
    }

    async fn call(&self, method: Method, path: &str, body: Bytes) -> Result<Bytes, ClientError> {
        let (status, body) = self.raw(method, path, body).await?;
        if status.is_success() {
            return Ok(body);
        }
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
        Err(ClientError::Status { status, message })
    }

    fn decode<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|e| ClientError::BadReply {
            socket: self.socket.to_path_buf(),
            reason: format!("cannot decode the answer: {e}"),
        })
    }
}

trait SizeHintExt {
    fn size_hint_is_empty(&self) -> bool;
}

impl SizeHintExt for Full<Bytes> {
    fn size_hint_is_empty(&self) -> bool {
        hyper::body::Body::size_hint(self).exact() == Some(0)
    }
}

/// An error and its causes, `: `-separated; a cause whose text the message
/// already ends with (wrappers that repeat their source) is said once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let said = s.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = s.source();
    }
    text
}
