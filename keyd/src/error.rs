//! keyd's errors, and the one place they become HTTP statuses.

use edgeid_common::HttpError;
use http::StatusCode;

/// Everything that can go wrong in keyd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or asks for something that cannot be done.
    #[error("{0}")]
    BadRequest(String),
    /// A key id that keyd does not accept.
    #[error("invalid key id '{id}': {reason}")]
    InvalidKeyId {
        /// The id as given (ids are not secrets).
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A handle that is not even well-formed.
    #[error("malformed key handle: {0}")]
    MalformedHandle(&'static str),
    /// A handle whose tag does not verify: altered, or issued by another keyd.
    #[error("key handle was not issued by this keyd (its tag does not verify)")]
    ForeignHandle,
    /// The caller may not use this key.
    #[error("{0}")]
    Forbidden(String),
    /// No such key (or the key was replaced since the handle was issued).
    #[error("{0}")]
    NotFound(String),
    /// The key exists with other properties.
    #[error("{0}")]
    Conflict(String),
    /// The key store cannot be reached right now.
    #[error("key backend '{backend}' is unavailable: {reason}")]
    Unavailable {
        /// Which backend.
        backend: &'static str,
        /// Why.
        reason: String,
    },
    /// The file system holding keyd's state is full: nothing was written.
    #[error("no space left to store key '{0}': the file system holding keyd's state is full; free space there and retry")]
    NoSpace(String),
    /// A failure inside keyd; logged in full, answered as a bare 500.
    #[error("{0}")]
    Internal(String),
    /// keyd could not start.
    #[error("{0}")]
    Setup(String),
}

impl Error {
    /// A key file that could not be written: out of space, or an internal failure.
    pub fn writing(id: &str, path: &std::path::Path, e: &std::io::Error) -> Self {
        if edgeid_common::fs::is_out_of_space(e) {
            Self::NoSpace(id.to_owned())
        } else {
            Self::Internal(format!("cannot write key file {}: {e}", path.display()))
        }
    }
}

impl HttpError for Error {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::InvalidKeyId { .. } | Self::MalformedHandle(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::ForeignHandle | Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
            Self::Internal(_) | Self::Setup(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}
