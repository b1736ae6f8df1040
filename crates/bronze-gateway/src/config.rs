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
    /// Kong declarative configuration (DB-less format, JSON or YAML) loaded
    /// at start; it replaces what the store held.
    pub declarative_config: String,
    /// Where the Admin API's entities are kept (`gateway.redb` inside).
    /// Empty: in memory only.
    pub data_dir: String,
    /// Required on every admin request (`Kong-Admin-Token` or `Authorization:
    /// Bearer`) when set; must be set when `admin_addr` is not loopback.
    pub admin_token: String,
    /// bronze-discovery's gRPC URL: instances with `bronze.http.rule`
    /// metadata become routes. Empty: off.
    pub discovery: String,
    /// After discovery restarted, the instances it no longer knows are kept
    /// this long for their owners (registrators) to register them again
    /// (at their next heartbeat), rather than dropped at once. 0: dropped.
    #[serde(with = "bronze_runtime::duration::serde")]
    pub discovery_grace: Duration,
    /// DNS server (`ip:port`) for SRV targets; empty: the system's
    /// (`/etc/resolv.conf`).
    pub dns_resolver: String,
    /// A client must send its request headers within this long (slow-loris).
    #[serde(with = "bronze_runtime::duration::serde")]
    pub header_read_timeout: Duration,
    /// An idle client connection is closed after this long without a new
    /// request (nginx's `keepalive_timeout`).
    #[serde(with = "bronze_runtime::duration::serde")]
    pub keepalive_timeout: Duration,
    /// An idle upstream connection is closed after this long (Kong's
    /// `upstream_keepalive_idle_timeout`).
    #[serde(with = "bronze_runtime::duration::serde")]
    pub upstream_keepalive_idle_timeout: Duration,
    /// The TLS proxy listener (Kong's 8443), e.g. `0.0.0.0:8443`. Empty
    /// (the default): no TLS listener.
    pub tls_addr: String,
    /// The certificate (PEM chain) served when no certificate's SNI
    /// matches; with none, such a client gets a TLS alert.
    pub tls_cert: String,
    /// The default certificate's private key (PEM).
    pub tls_key: String,
    /// CA certificates (PEM) trusted for `https`/`grpcs` upstreams besides
    /// the system's (Kong's `lua_ssl_trusted_certificate`). Empty: the
    /// system's only.
    pub upstream_ca_file: String,
    /// Peers whose X-Forwarded-Proto and X-Forwarded-Host are passed on
    /// (and count for https-only routes): comma-separated addresses and
    /// CIDR blocks, as Kong's `trusted_ips`. Empty: no one.
    pub trusted_ips: String,
    /// From a trusted peer, the header naming the client's address (Kong's
    /// `real_ip_header`; `X-Forwarded-For` behind most load balancers).
    pub real_ip_header: String,
    /// `real_ip_header` is a list: the client is its rightmost address not
    /// in `trusted_ips` rather than its last (Kong's `real_ip_recursive`).
    pub real_ip_recursive: bool,
    /// The proxy listeners expect a PROXY protocol header (v1 or v2) first
    /// on every connection, from a TCP load balancer; its client address
    /// counts when the balancer is in `trusted_ips`.
    pub proxy_protocol: bool,
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 8001)),
            declarative_config: String::new(),
            data_dir: "bronze-data/gateway".into(),
            admin_token: String::new(),
            discovery: String::new(),
            discovery_grace: Duration::from_secs(30),
            dns_resolver: String::new(),
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            upstream_keepalive_idle_timeout: Duration::from_secs(60),
            tls_addr: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            upstream_ca_file: String::new(),
            trusted_ips: String::new(),
            real_ip_header: "X-Real-IP".into(),
            real_ip_recursive: false,
            proxy_protocol: false,
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
        for (field, d) in [
            ("keepalive_timeout", self.keepalive_timeout),
            (
                "upstream_keepalive_idle_timeout",
                self.upstream_keepalive_idle_timeout,
            ),
        ] {
            if d < Duration::from_millis(100) {
                return Err(ConfigError::invalid(field, "expected at least 100ms"));
            }
        }
        if !self.admin_addr.ip().is_loopback() && self.admin_token.is_empty() {
            return Err(ConfigError::invalid(
                "admin_token",
                format!(
                    "admin_addr {} is not loopback: expected an admin_token so the admin API is not open",
                    self.admin_addr
                ),
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
        if let Err(e) = crate::proxy::TrustedIps::parse(&self.trusted_ips) {
            return Err(ConfigError::invalid("trusted_ips", e));
        }
        if http::HeaderName::from_bytes(self.real_ip_header.as_bytes()).is_err() {
            return Err(ConfigError::invalid(
                "real_ip_header",
                format!("{:?}: expected a header name", self.real_ip_header),
            ));
        }
        if !self.tls_addr.is_empty() && self.tls_addr.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::invalid(
                "tls_addr",
                format!(
                    "{:?}: expected <ip>:<port>, e.g. 0.0.0.0:8443 (or empty: no TLS listener)",
                    self.tls_addr
                ),
            ));
        }
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            let missing = if self.tls_cert.is_empty() {
                "tls_cert"
            } else {
                "tls_key"
            };
            return Err(ConfigError::invalid(
                missing,
                "expected both tls_cert and tls_key (the default certificate), or neither",
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

    /// The TLS listener's address; `None` when `tls_addr` is empty.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr.parse().ok()
    }

    /// Port 0 everywhere: for tests and `bronze dev --ephemeral`.
    pub fn ephemeral() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: String::new(),
            ..Self::default()
        }
    }
}
