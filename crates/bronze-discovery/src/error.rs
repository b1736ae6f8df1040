//! One error type for the whole component, mapped once to a gRPC code and
//! once to an HTTP status. Messages name what was wrong and what was expected.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; nothing was changed.
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0} not found")]
    NotFound(String),
    /// The durable store failed; nothing was changed in memory.
    #[error("storage failure: {0}")]
    Store(#[from] bronze_store::StoreError),
    #[error("server is shutting down")]
    ShuttingDown,
}

impl Error {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Error::Invalid { .. } => tonic::Code::InvalidArgument,
            Error::NotFound(_) => tonic::Code::NotFound,
            Error::Store(_) => tonic::Code::Internal,
            Error::ShuttingDown => tonic::Code::Unavailable,
        }
    }

    pub fn http_status(&self) -> http::StatusCode {
        match self {
            Error::Invalid { .. } => http::StatusCode::BAD_REQUEST,
            Error::NotFound(_) => http::StatusCode::NOT_FOUND,
            Error::Store(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
            Error::ShuttingDown => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        tonic::Status::new(e.grpc_code(), e.to_string())
    }
}
