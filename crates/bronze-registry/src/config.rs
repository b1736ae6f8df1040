//! Configuration: defaults, a TOML file, environment variables and flags.

use std::net::SocketAddr;
use std::time::Duration;

use bronze_runtime::config::ConfigError;
use bronze_telemetry::LogFormat;
use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The registry API (docker, skopeo, OCI clients), /metrics, /healthz.
    pub addr: SocketAddr,
    /// gRPC: the push/delete event stream (bronze.registry.v1).
    pub grpc_addr: SocketAddr,
    /// Blobs, manifests and metadata live here.
    pub root: String,
    /// Uploads untouched this long are purged.
    #[serde(with = "bronze_runtime::duration::serde")]
    pub upload_ttl: Duration,
    /// A client must send a request's headers within this long
    /// (slow-loris); bodies (layer uploads) are not bounded by it.
    #[serde(with = "bronze_runtime::duration::serde")]
    pub header_read_timeout: Duration,
    /// URLs that receive every push and delete (Docker distribution's
    /// notification format).
    pub webhooks: Vec<String>,
    /// PEM certificate chain: with `tls_key`, the registry API serves HTTPS.
    pub tls_cert: String,
    pub tls_key: String,
    /// Who may pull, push and delete (see `auth`).
    pub auth: AuthConfig,
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 5000)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 5002)),
            root: "bronze-data/registry".into(),
            upload_ttl: Duration::from_secs(24 * 3600),
            header_read_timeout: Duration::from_secs(30),
            webhooks: Vec::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            auth: AuthConfig::default(),
            log_format: LogFormat::Plain,
        }
    }
}

impl Config {
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.root.is_empty() {
            return Err(ConfigError::invalid("root", "expected a directory"));
        }
        if self.header_read_timeout < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "header_read_timeout",
                "expected at least 100ms",
            ));
        }
        if self.upload_ttl < Duration::from_secs(1) {
            return Err(ConfigError::invalid("upload_ttl", "expected at least 1s"));
        }
        for w in &self.webhooks {
            let ok = w
                .parse::<http::Uri>()
                .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")));
            if !ok {
                return Err(ConfigError::invalid(
                    "webhooks",
                    format!("{w:?}: expected an http:// or https:// URL"),
                ));
            }
        }
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            let missing = if self.tls_cert.is_empty() {
                "tls_cert"
            } else {
                "tls_key"
            };
            return Err(ConfigError::invalid(
                missing,
                "expected both tls_cert and tls_key, or neither",
            ));
        }
        self.auth
            .validate()
            .map_err(|(k, m)| ConfigError::invalid(k, m))?;
        Ok(())
    }

    /// Port 0 everywhere and the given root: for tests and `bronze dev --ephemeral`.
    pub fn ephemeral(root: &str) -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            root: root.to_string(),
            ..Self::default()
        }
    }
}
