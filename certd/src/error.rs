//! certd's errors, and the one place they become HTTP statuses.

use edgeid_common::client::{ClientError, Upstream};
use edgeid_common::HttpError;
use http::StatusCode;

/// Everything that can go wrong in certd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or asks for something that cannot be done.
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such certificate.
    #[error("{0}")]
    NotFound(String),
    /// keyd or the EST server cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The EST server refused or answered nonsense.
    #[error("{0}")]
    Upstream(String),
    /// The file system holding certd's state is full: nothing was written.
    #[error("no space left to store certificate '{0}': the file system holding certd's state is full; free space there and retry")]
    NoSpace(String),
    /// A failure inside certd; logged in full, answered as a bare 500.
    #[error("{0}")]
    Internal(String),
    /// certd could not start.
    #[error("{0}")]
    Setup(String),
}

impl HttpError for Error {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
            Self::Internal(_) | Self::Setup(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the EST server said is the caller's business (502 with the
    /// reason); only certd's own internals stay in its log.
    fn public_message(&self) -> String {
        match self {
            Self::Internal(_) | Self::Setup(_) => "internal error; see the daemon's log".to_owned(),
            other => other.to_string(),
        }
    }
}

impl Error {
    /// A keyd failure, seen from certd: keyd's 4xx reasons are passed on (they
    /// describe the caller's request), anything else is keyd being unavailable.
    pub fn from_keyd(what: &str, e: ClientError) -> Self {
        match e.upstream() {
            Upstream::Rejected => Self::BadRequest(format!("{what}: {e}")),
            Upstream::NotFound => Self::NotFound(format!("{what}: {e}")),
            Upstream::NotGranted => Self::Internal(format!("{what}: keyd refused certd: {e}")),
            Upstream::Unavailable => Self::Unavailable(format!("{what}: keyd: {e}")),
        }
    }
}
