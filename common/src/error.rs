//! Errors on the wire: one status per kind of failure, a JSON `{"message"}` body,
//! and nothing internal leaked in a 500.

use http::StatusCode;
use serde::{Deserialize, Serialize};

/// An error that knows which HTTP status it means (ARCHITECTURE.md section 2).
pub trait HttpError: std::error::Error {
    /// The status this error is answered with.
    fn status(&self) -> StatusCode;

    /// The text sent to the caller. Server errors are logged in full but answered
    /// with a generic text, so internals (paths, library messages) never leak;
    /// but a backend that is down (503) or a full disk (507) is the operator's
    /// to fix, so those say what is wrong.
    fn public_message(&self) -> String {
        if self.status().is_server_error()
            && !matches!(
                self.status(),
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::INSUFFICIENT_STORAGE
            )
        {
            "internal error; see the daemon's log".to_owned()
        } else {
            self.to_string()
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub message: String,
}

/// A ready-made error for plumbing that has no domain enum of its own.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The message for the caller.
    pub message: String,
}

impl ApiError {
    /// An error with the given status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 403: the caller may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404: no such thing.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl HttpError for ApiError {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn public_message(&self) -> String {
        self.message.clone()
    }
}
