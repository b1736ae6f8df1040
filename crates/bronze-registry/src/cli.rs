//! Flags and environment variables of `bronze-registry`.

use std::net::SocketAddr;
use std::path::PathBuf;

use bronze_runtime::config::{self, ConfigError};
use bronze_telemetry::LogFormat;
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::auth::Mode;
use crate::config::Config;

/// Bronze's private image registry: docker, skopeo and every OCI client push
/// to it and pull from it (OCI distribution v1.1, Docker Registry v2).
///
/// Every setting comes from (lowest to highest precedence) its default, the
/// TOML file given by --config, its environment variable, and its flag.
#[derive(Debug, Parser, Serialize)]
#[command(name = "bronze-registry", version, max_term_width = 100)]
pub struct Args {
    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<Command>,

    /// TOML configuration file.
    #[arg(
        short,
        long,
        env = "BRONZE_REGISTRY_CONFIG",
        value_name = "FILE",
        global = true
    )]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Registry API address [default: 127.0.0.1:5000].
    #[arg(long, env = "BRONZE_REGISTRY_ADDR", value_name = "ADDR", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,

    /// gRPC event stream address [default: 127.0.0.1:5002].
    #[arg(
        long,
        env = "BRONZE_REGISTRY_GRPC_ADDR",
        value_name = "ADDR",
        global = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_addr: Option<SocketAddr>,

    /// Storage directory [default: bronze-data/registry].
    #[arg(long, env = "BRONZE_REGISTRY_ROOT", value_name = "DIR", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,

    /// Purge uploads untouched this long, e.g. 24h [default: 24h].
    #[arg(
        long,
        env = "BRONZE_REGISTRY_UPLOAD_TTL",
        value_name = "DURATION",
        global = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_ttl: Option<String>,

    /// Time a client has to send a request's headers, e.g. 30s [default: 30s].
    #[arg(
        long,
        env = "BRONZE_REGISTRY_HEADER_READ_TIMEOUT",
        value_name = "DURATION",
        global = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<String>,

    /// POST every push and delete to this URL (repeatable; comma-separated in the environment).
    #[arg(
        long = "webhook",
        env = "BRONZE_REGISTRY_WEBHOOKS",
        value_name = "URL",
        value_delimiter = ',',
        global = true
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<String>,

    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(
        long,
        env = "BRONZE_REGISTRY_TLS_CERT",
        value_name = "FILE",
        global = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,

    /// The PEM private key of --tls-cert.
    #[arg(
        long,
        env = "BRONZE_REGISTRY_TLS_KEY",
        value_name = "FILE",
        global = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,

    #[command(flatten)]
    pub auth: AuthArgs,

    /// Log format: plain or json [default: plain]. RUST_LOG sets the level.
    #[arg(long, env = "BRONZE_LOG_FORMAT", value_name = "FORMAT", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// Access flags; access rules (`[[auth.access]]`) live in the config file.
#[derive(Debug, clap::Args, Serialize)]
pub struct AuthArgs {
    /// Authentication: none, basic (htpasswd on every request) or token
    /// (Docker's Bearer token flow, tokens from /token) [default: none].
    #[arg(
        long = "auth",
        env = "BRONZE_REGISTRY_AUTH",
        value_name = "MODE",
        global = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,

    /// htpasswd file with bcrypt entries (htpasswd -B), re-read when it changes.
    #[arg(
        long,
        env = "BRONZE_REGISTRY_HTPASSWD",
        value_name = "FILE",
        global = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<String>,

    /// Repositories anyone may pull without credentials: *, <namespace>/*
    /// or a name (repeatable; comma-separated in the environment).
    #[arg(
        long,
        env = "BRONZE_REGISTRY_ANONYMOUS_PULL",
        value_name = "PATTERN",
        value_delimiter = ',',
        global = true
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub anonymous_pull: Vec<String>,

    /// Token mode: the token endpoint URL given in challenges [default: /token
    /// on the address the client used]. Basic mode: the realm's name.
    #[arg(
        long = "auth-realm",
        env = "BRONZE_REGISTRY_AUTH_REALM",
        value_name = "URL",
        global = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the registry (the default).
    Serve,
    /// Mark and sweep: delete blobs no manifest or upload references.
    Gc {
        /// Report what would be freed; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep blobs written or linked this recently (pushes in flight),
        /// e.g. 1h; 0s only when no push is under way [default: 1h].
        #[arg(long, value_name = "DURATION")]
        grace: Option<String>,
    },
}

impl Args {
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config: Config = config::load(self.config.as_deref(), self)?;
        config.validate()?;
        Ok(config)
    }
}
