//! workloadd's errors, and the one place they become HTTP statuses.

use edgeid_common::client::{ClientError, Upstream};
use edgeid_common::HttpError;
use http::StatusCode;

/// Everything that can go wrong in workloadd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not act for this module.
    #[error("{0}")]
    Forbidden(String),
    /// What was sent is more than keyd takes in one request.
    #[error("{0}")]
    TooLarge(String),
    /// No such module, or not this generation of it.
    #[error("{0}")]
    NotFound(String),
    /// identityd, certd or keyd cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A failure inside workloadd; logged in full, answered as a bare 500.
    #[error("{0}")]
    Internal(String),
    /// workloadd could not start.
    #[error("{0}")]
    Setup(String),
}

impl HttpError for Error {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) | Self::Setup(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl Error {
    /// A failure of the daemon behind: its 400 / 409 / 404 reasons are passed on,
    /// a refusal of workloadd itself is a setup fault, the rest is unavailability.
    pub fn from_daemon(daemon: &str, what: &str, e: ClientError) -> Self {
        match e.upstream() {
            Upstream::Rejected => Self::BadRequest(format!("{what}: {e}")),
            Upstream::NotFound => Self::NotFound(format!("{what}: {e}")),
            Upstream::NotGranted => Self::Internal(format!(
                "{what}: {daemon} refused workloadd (grant it in {daemon}'s config): {e}"
            )),
            Upstream::Unavailable => Self::Unavailable(format!("{what}: {daemon}: {e}")),
        }
    }
}
