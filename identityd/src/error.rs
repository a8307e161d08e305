//! identityd's errors, and the one place they become HTTP statuses.

use edgeid_common::client::{ClientError, Upstream};
use edgeid_common::HttpError;
use http::StatusCode;

/// Everything that can go wrong in identityd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or asks for something that cannot be done.
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such identity.
    #[error("{0}")]
    NotFound(String),
    /// keyd, certd or the cloud cannot be reached, or the device is not provisioned yet.
    #[error("{0}")]
    Unavailable(String),
    /// A cloud service answered with an error status.
    #[error("{endpoint} answered {status}: {message}")]
    Cloud {
        /// What was called (host and path, no query or credentials).
        endpoint: String,
        /// The status it answered.
        status: StatusCode,
        /// Its message, bounded.
        message: String,
    },
    /// A cloud service answered with something that is not the protocol.
    #[error("{0}")]
    Upstream(String),
    /// A failure inside identityd; logged in full, answered as a bare 500.
    #[error("{0}")]
    Internal(String),
    /// identityd could not start.
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
            Self::Cloud { .. } | Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) | Self::Setup(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the cloud said is the caller's business (502 with the endpoint and
    /// status); only identityd's own internals stay in its log.
    fn public_message(&self) -> String {
        match self {
            Self::Internal(_) | Self::Setup(_) => "internal error; see the daemon's log".to_owned(),
            other => other.to_string(),
        }
    }
}

impl Error {
    /// A keyd or certd failure, seen from identityd: their 4xx reasons are
    /// passed on, a refusal of identityd itself is a setup fault, anything
    /// else is the daemon being unavailable.
    pub fn from_daemon(daemon: &str, what: &str, e: ClientError) -> Self {
        match e.upstream() {
            Upstream::Rejected => Self::BadRequest(format!("{what}: {daemon}: {e}")),
            Upstream::NotFound => Self::NotFound(format!("{what}: {daemon}: {e}")),
            Upstream::NotGranted => Self::Internal(format!(
                "{what}: {daemon} refused identityd (grant it in {daemon}'s config): {e}"
            )),
            Upstream::Unavailable => Self::Unavailable(format!("{what}: {daemon}: {e}")),
        }
    }

    /// A certd error carried out of certd's signer types.
    pub fn from_certd(e: edgeid_certd::Error) -> Self {
        match e {
            edgeid_certd::Error::BadRequest(m) => Self::BadRequest(m),
            edgeid_certd::Error::NotFound(m) => Self::NotFound(m),
            edgeid_certd::Error::Unavailable(m) => Self::Unavailable(m),
            other => Self::Internal(other.to_string()),
        }
    }

    /// Whether the cloud refused the credential (hub 401): reprovisioning may help.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Self::Cloud { status, .. } if *status == StatusCode::UNAUTHORIZED)
    }
}
