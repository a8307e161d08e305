//! What a handler sees and returns: the request, read whole and within
//! its limits, and the JSON answer.

use std::future::Future;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::authz::Caller;
use crate::error::{ApiError, ErrorBody, HttpError};

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

    /// [`Self::json_or_unprocessable`] for a route that needs its body: an
    /// empty one is a 400 "missing request body", as the aziot daemons say.
    pub fn required_json_or_unprocessable<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        self.json_or_unprocessable()?
            .ok_or_else(|| ApiError::bad_request("missing request body"))
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
        // The answer may carry a secret (a SAS token, a private key, an
        // exported key): its buffer is wiped when hyper has sent it.
        match crate::encoding::to_json_wiped(value) {
            Ok(body) => Self {
                status,
                body,
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

    pub(super) fn into_hyper(self) -> Response<Full<Bytes>> {
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
    /// Whether `caller` may send this request at all, from its method and
    /// path alone, decided before the body is read: `Some` is the answer
    /// (a 403 for a caller who is nobody here), sent without buffering a
    /// byte of the body. Only cheap, in-memory checks belong here.
    fn admit(&self, caller: &Caller, method: &Method, path: &str) -> Option<ApiResponse> {
        let _ = (caller, method, path);
        None
    }

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
