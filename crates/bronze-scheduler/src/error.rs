//! The scheduler's errors, mapped once to gRPC status codes.

use crate::model::Invalid;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A request field is wrong: which one, and what was expected.
    #[error("{0}")]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is well-formed but the cluster is not in a state to take it.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("wrong join token")]
    Unauthenticated,
    /// The store could not commit (disk full, I/O error); nothing changed.
    #[error("{0}")]
    Unavailable(String),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::Invalid(_) => tonic::Status::invalid_argument(msg),
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::AlreadyExists(_) => tonic::Status::already_exists(msg),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            Error::Unauthenticated => tonic::Status::unauthenticated(msg),
            Error::Unavailable(_) => tonic::Status::unavailable(msg),
        }
    }
}
