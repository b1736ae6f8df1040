//! What a load reports: one [`Error`] that stops it, or [`Warning`]s that
//! do not. Both name the file, the line and the dotted key, so a person can
//! go straight to the place.

use std::fmt;
use std::path::PathBuf;

/// Why a compose file cannot be deployed. Nothing is deployed from a file
/// that has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub file: PathBuf,
    /// 1-based; 0 when the error is about the file as a whole (unreadable).
    pub line: usize,
    /// 1-based; 0 when unknown.
    pub column: usize,
    /// The dotted path of the key, e.g. `services.web.deploy.replicas`;
    /// empty for an error in the YAML syntax itself.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Error {
    /// `stack.yml:12:7: services.web.deploy.replicas: expected an integer, found "three"`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.column > 0 {
                write!(f, ":{}", self.column)?;
            }
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for Error {}

/// Something the file asks for that Bronze does not do (or does
/// differently); the file still loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// The dotted path of the key, e.g. `services.web.build`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Warning {
    /// `stack.yml:7: services.web.build: not supported by stacks; ignored`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.key,
            self.message
        )
    }
}
