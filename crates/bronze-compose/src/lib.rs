//! Compose files as `docker stack deploy` reads them.
//!
//! (The loader, `load`, lands in the next commit; this commit holds the
//! types the CLI codes against, the YAML reader with positions and the
//! interpolation.)

mod error;
mod interpolate;
mod model;
mod yaml;

pub use error::{Error, Warning};
pub use model::*;

use std::collections::BTreeMap;
use std::path::PathBuf;

/// What to load: the `-c` files in order, the process environment and the
/// stack's name.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub files: Vec<PathBuf>,
    /// The process environment: interpolation looks here first, then in
    /// `.env` beside the first file.
    pub env: BTreeMap<String, String>,
    pub project_name: String,
}
