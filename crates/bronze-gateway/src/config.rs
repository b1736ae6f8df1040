//! Configuration: defaults, a TOML file, environment variables and flags.

use std::net::SocketAddr;
use std::time::Duration;

use bronze_runtime::config::ConfigError;
use bronze_telemetry::LogFormat;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The proxy listener (Kong's proxy port).
    pub addr: SocketAddr,
    /// The admin API, /metrics and /healthz (Kong's admin port); keep it on
    /// loopback.
    pub admin_addr: SocketAddr,
    /// Kong declarative configuration (DB-less format, JSON) loaded at start.
    pub declarative_config: String,
    /// bronze-discovery's gRPC URL: instances with `bronze.http.rule`
    /// metadata become routes. Empty: off.
    pub discovery: String,
    /// DNS server (`ip:port`) for SRV targets; empty: the system's
    /// (`/etc/resolv.conf`).
    pub dns_resolver: String,
    /// A client must send its request headers within this long (slow-loris).
    #[serde(with = "bronze_runtime::duration::serde")]
    pub header_read_timeout: Duration,
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 8001)),
            declarative_config: String::new(),
            discovery: String::new(),
            dns_resolver: String::new(),
            header_read_timeout: Duration::from_secs(10),
            log_format: LogFormat::Plain,
        }
    }
}

impl Config {
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.header_read_timeout < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "header_read_timeout",
                "expected at least 100ms",
            ));
        }
        if !self.discovery.is_empty()
            && !self.discovery.parse::<http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            })
        {
            return Err(ConfigError::invalid(
                "discovery",
                format!(
                    "{:?}: expected http://<host>:<port> (discovery's gRPC)",
                    self.discovery
                ),
            ));
        }
        if !self.dns_resolver.is_empty() && self.dns_resolver.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::invalid(
                "dns_resolver",
                format!("{:?}: expected <ip>:<port>", self.dns_resolver),
            ));
        }
        Ok(())
    }

    /// Port 0 everywhere: for tests and `bronze dev --ephemeral`.
    pub fn ephemeral() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Self::default()
        }
    }
}
