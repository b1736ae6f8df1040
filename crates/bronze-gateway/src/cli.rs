//! Flags and environment variables of `bronze-gateway`.

use std::net::SocketAddr;
use std::path::PathBuf;

use bronze_runtime::config::{self, ConfigError};
use bronze_telemetry::LogFormat;
use clap::Parser;
use serde::Serialize;

use crate::config::Config;

/// Bronze's API gateway: routes requests to services by host, path,
/// method and headers (Kong's services and routes), with no reloads.
///
/// Every setting comes from (lowest to highest precedence) its default, the
/// TOML file given by --config, its environment variable, and its flag.
#[derive(Debug, Parser, Serialize)]
#[command(name = "bronze-gateway", version, max_term_width = 100)]
pub struct Args {
    /// TOML configuration file.
    #[arg(short, long, env = "BRONZE_GATEWAY_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Proxy address [default: 127.0.0.1:8000].
    #[arg(long, env = "BRONZE_GATEWAY_ADDR", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,

    /// Admin API, /metrics and /healthz address [default: 127.0.0.1:8001].
    #[arg(long, env = "BRONZE_GATEWAY_ADMIN_ADDR", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_addr: Option<SocketAddr>,

    /// Kong declarative configuration (DB-less format, JSON or YAML) to load
    /// at start; it replaces the entities the store held.
    #[arg(long, env = "BRONZE_GATEWAY_DECLARATIVE_CONFIG", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declarative_config: Option<String>,

    /// Where Admin API changes are kept [default: bronze-data/gateway];
    /// empty: in memory only.
    #[arg(long, env = "BRONZE_GATEWAY_DATA_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,

    /// Token every admin request must carry (Kong-Admin-Token header or
    /// Authorization: Bearer); required when --admin-addr is not loopback.
    #[arg(
        long,
        env = "BRONZE_GATEWAY_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,

    /// bronze-discovery's gRPC URL, e.g. http://127.0.0.1:8502: instances
    /// with a bronze.http.rule label become routes.
    #[arg(long, env = "BRONZE_GATEWAY_DISCOVERY", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<String>,

    /// After discovery restarts, how long the instances it lost are still
    /// served while their registrators register them again, e.g. 30s; 0
    /// drops them at once [default: 30s].
    #[arg(long, env = "BRONZE_GATEWAY_DISCOVERY_GRACE", value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery_grace: Option<String>,

    /// DNS server (ip:port) for SRV targets, e.g. discovery's
    /// 127.0.0.1:8600 [default: the system's, /etc/resolv.conf].
    #[arg(long, env = "BRONZE_GATEWAY_DNS_RESOLVER", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_resolver: Option<String>,

    /// Time a client has to send its request headers, e.g. 10s [default: 10s].
    #[arg(
        long,
        env = "BRONZE_GATEWAY_HEADER_READ_TIMEOUT",
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<String>,

    /// How long an idle client connection is kept open for its next
    /// request, e.g. 60s (nginx's keepalive_timeout) [default: 60s].
    #[arg(
        long,
        env = "BRONZE_GATEWAY_KEEPALIVE_TIMEOUT",
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_timeout: Option<String>,

    /// How long an idle upstream connection is kept for reuse, e.g. 60s
    /// (Kong's upstream_keepalive_idle_timeout) [default: 60s].
    #[arg(
        long,
        env = "BRONZE_GATEWAY_UPSTREAM_KEEPALIVE_IDLE_TIMEOUT",
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_keepalive_idle_timeout: Option<String>,

    /// TLS proxy address, e.g. 0.0.0.0:8443 (Kong's port) [default: none,
    /// no TLS listener].
    #[arg(long, env = "BRONZE_GATEWAY_TLS_ADDR", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_addr: Option<String>,

    /// Default certificate (PEM chain, leaf first) for TLS clients whose SNI
    /// matches no configured certificate [default: none: they get an alert].
    #[arg(long, env = "BRONZE_GATEWAY_TLS_CERT", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,

    /// The default certificate's private key (PEM).
    #[arg(long, env = "BRONZE_GATEWAY_TLS_KEY", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,

    /// CA certificates (PEM) trusted for https and grpcs upstreams, besides
    /// the system's (Kong's lua_ssl_trusted_certificate) [default: none].
    #[arg(long, env = "BRONZE_GATEWAY_UPSTREAM_CA_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ca_file: Option<String>,

    /// Peers trusted to say how the client connected: comma-separated
    /// addresses and CIDR blocks (Kong's trusted_ips), e.g. a load balancer's
    /// 10.0.0.0/8. Their X-Forwarded-Proto and X-Forwarded-Host are passed on
    /// and X-Forwarded-Proto: https satisfies https-only routes [default:
    /// none].
    #[arg(long, env = "BRONZE_GATEWAY_TRUSTED_IPS", value_name = "LIST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_ips: Option<String>,

    /// From a trusted peer (--trusted-ips), the header that names the
    /// client's address, e.g. X-Forwarded-For (Kong's real_ip_header)
    /// [default: X-Real-IP].
    #[arg(long, env = "BRONZE_GATEWAY_REAL_IP_HEADER", value_name = "HEADER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_ip_header: Option<String>,

    /// The real-IP header is a list: the client is its rightmost address
    /// not in --trusted-ips, rather than its last (Kong's real_ip_recursive).
    #[arg(long, env = "BRONZE_GATEWAY_REAL_IP_RECURSIVE", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_ip_recursive: Option<bool>,

    /// Every connection to the proxy listeners starts with a PROXY protocol
    /// header (v1 or v2) from a TCP load balancer; its client address counts
    /// when the balancer is in --trusted-ips [default: false].
    #[arg(long, env = "BRONZE_GATEWAY_PROXY_PROTOCOL", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<bool>,

    /// Proxy worker threads [default: one per CPU].
    #[arg(long, env = "BRONZE_GATEWAY_WORKERS", value_name = "N")]
    #[serde(skip)]
    pub workers: Option<usize>,

    /// Log format: plain or json [default: plain]. RUST_LOG sets the level.
    #[arg(long, env = "BRONZE_LOG_FORMAT", value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

impl Args {
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config: Config = config::load(self.config.as_deref(), self)?;
        config.validate()?;
        Ok(config)
    }
}
