//! The distribution spec's errors: one enum, mapped once to the HTTP status
//! and the JSON body (`{"errors":[{"code","message","detail"}]}`) every
//! client parses. Messages name what was wrong and what was expected.

use http::StatusCode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(String),
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    #[error("blob upload unknown to registry: {0}")]
    BlobUploadUnknown(String),
    #[error("provided digest did not match uploaded content: {0}")]
    DigestInvalid(String),
    #[error("blob unknown to registry: {0}")]
    ManifestBlobUnknown(String),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest too large: {0}")]
    ManifestTooLarge(String),
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    #[error("repository name not known to registry: {0}")]
    NameUnknown(String),
    #[error("provided length did not match content length: {0}")]
    SizeInvalid(String),
    #[error("invalid tag: {0}")]
    TagInvalid(String),
    #[error("requested range not satisfiable: {0}")]
    RangeInvalid(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("requested access to the resource is denied")]
    Denied,
    #[error("the operation is unsupported: {0}")]
    Unsupported(String),
    #[error("not found")]
    NotFound,
    #[error("internal error: {0}")]
    Internal(String),
}

impl RegistryError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::BlobUnknown(_) => "BLOB_UNKNOWN",
            Self::BlobUploadInvalid(_) | Self::RangeInvalid(_) => "BLOB_UPLOAD_INVALID",
            Self::BlobUploadUnknown(_) => "BLOB_UPLOAD_UNKNOWN",
            Self::DigestInvalid(_) => "DIGEST_INVALID",
            Self::ManifestBlobUnknown(_) => "MANIFEST_BLOB_UNKNOWN",
            Self::ManifestInvalid(_) | Self::ManifestTooLarge(_) => "MANIFEST_INVALID",
            Self::ManifestUnknown(_) => "MANIFEST_UNKNOWN",
            Self::NameInvalid(_) => "NAME_INVALID",
            Self::NameUnknown(_) | Self::NotFound => "NAME_UNKNOWN",
            Self::SizeInvalid(_) => "SIZE_INVALID",
            Self::TagInvalid(_) => "TAG_INVALID",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Denied => "DENIED",
            Self::Unsupported(_) => "UNSUPPORTED",
            Self::Internal(_) => "UNKNOWN",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BlobUnknown(_)
            | Self::BlobUploadUnknown(_)
            | Self::ManifestUnknown(_)
            | Self::NameUnknown(_)
            | Self::NotFound => StatusCode::NOT_FOUND,
            Self::RangeInvalid(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::ManifestTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Denied => StatusCode::FORBIDDEN,
            Self::Unsupported(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The spec's error document.
    pub fn body(&self) -> String {
        serde_json::json!({
            "errors": [{"code": self.code(), "message": self.to_string(), "detail": null}]
        })
        .to_string()
    }
}

impl From<bronze_store::StoreError> for RegistryError {
    fn from(e: bronze_store::StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<std::io::Error> for RegistryError {
    fn from(e: std::io::Error) -> Self {
        Self::Internal(e.to_string())
    }
}
