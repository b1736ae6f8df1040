//! Configuration: defaults, a TOML file, environment variables and flags
//! (see `cli.rs`), validated once at start-up.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bronze_runtime::config::ConfigError;
use bronze_telemetry::LogFormat;
use serde::{Deserialize, Serialize};

use crate::dns::answer::domain_labels;
use crate::model::validate_label;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This server's node name (default: the host name). Instances
    /// registered without a node belong to it.
    pub node_name: String,
    pub datacenter: String,
    /// Address of this node, used for instances registered without one and
    /// answered for `<node>.node.<domain>`.
    pub advertise_address: IpAddr,
    /// Where durable registrations are kept; empty keeps them in memory
    /// only (nothing survives a restart).
    pub data_dir: String,
    pub log_format: LogFormat,
    pub http: HttpConfig,
    pub grpc: GrpcConfig,
    pub dns: DnsConfig,
    pub catalog: CatalogConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Consul-compatible HTTP API, /metrics and /healthz.
    pub addr: SocketAddr,
    /// Longest a blocking query may wait (Consul caps `wait` at 10m).
    #[serde(with = "bronze_runtime::duration::serde")]
    pub max_wait: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// UDP and TCP.
    pub addr: SocketAddr,
    /// The zone answered: "bronze." by default, "consul." for a drop-in.
    pub domain: String,
    /// Where names outside the domain are forwarded ("ip" or "ip:port");
    /// without any they are REFUSED.
    pub recursors: Vec<String>,
    #[serde(with = "bronze_runtime::duration::serde")]
    pub service_ttl: Duration,
    #[serde(with = "bronze_runtime::duration::serde")]
    pub node_ttl: Duration,
    /// SOA minimum: how long resolvers may cache NXDOMAIN and NODATA.
    #[serde(with = "bronze_runtime::duration::serde")]
    pub negative_ttl: Duration,
    /// Leave instances in the warning state out of answers too.
    pub only_passing: bool,
    /// UDP worker threads; 0 means one per CPU.
    pub udp_workers: usize,
    /// Largest UDP answer sent to EDNS clients (512-65535).
    pub udp_max_payload: u16,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// Changes remembered for watch streams that resume from an index.
    pub change_log: usize,
}

fn default_node_name() -> String {
    let raw = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    // Keep the first label, made DNS-safe.
    let first: String = raw
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = first.trim_matches('-');
    if trimmed.is_empty() {
        "bronze".into()
    } else {
        trimmed.chars().take(63).collect()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_name: default_node_name(),
            datacenter: "dc1".into(),
            advertise_address: IpAddr::from([127, 0, 0, 1]),
            data_dir: "bronze-data/discovery".into(),
            log_format: LogFormat::Plain,
            http: HttpConfig::default(),
            grpc: GrpcConfig::default(),
            dns: DnsConfig::default(),
            catalog: CatalogConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8500)),
            max_wait: Duration::from_secs(600),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8502)),
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8600)),
            domain: "bronze.".into(),
            recursors: Vec::new(),
            service_ttl: Duration::ZERO,
            node_ttl: Duration::ZERO,
            negative_ttl: Duration::ZERO,
            only_passing: false,
            udp_workers: 0,
            udp_max_payload: 1232,
        }
    }
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            change_log: 100_000,
        }
    }
}

fn ttl_secs(key: &str, d: Duration) -> Result<u32, ConfigError> {
    u32::try_from(d.as_secs())
        .ok()
        .filter(|s| *s <= 7 * 24 * 3600)
        .ok_or_else(|| ConfigError::invalid(key, "expected at most 7 days"))
}

/// A recursor as "ip" (port 53) or "ip:port" / "[v6]:port".
pub fn parse_recursor(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| {
            format!("{s:?}: expected an IP address, optionally with a port (\"10.0.0.2:53\")")
        })
}

impl Config {
    /// Checks what serde cannot; names the key of the first problem.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        self.node_name = self.node_name.to_ascii_lowercase();
        validate_label("node_name", "node name", &self.node_name)
            .map_err(|e| ConfigError::invalid("node_name", e.to_string()))?;
        validate_label("datacenter", "datacenter", &self.datacenter)
            .map_err(|e| ConfigError::invalid("datacenter", e.to_string()))?;
        self.datacenter = self.datacenter.to_ascii_lowercase();
        domain_labels(&self.dns.domain).map_err(|e| ConfigError::invalid("dns.domain", e))?;
        for r in &self.dns.recursors {
            parse_recursor(r).map_err(|e| ConfigError::invalid("dns.recursors", e))?;
        }
        ttl_secs("dns.service_ttl", self.dns.service_ttl)?;
        ttl_secs("dns.node_ttl", self.dns.node_ttl)?;
        ttl_secs("dns.negative_ttl", self.dns.negative_ttl)?;
        if self.dns.udp_max_payload < 512 {
            return Err(ConfigError::invalid(
                "dns.udp_max_payload",
                "expected 512-65535",
            ));
        }
        if self.dns.udp_workers > 256 {
            return Err(ConfigError::invalid(
                "dns.udp_workers",
                "expected 0 (one per CPU) to 256",
            ));
        }
        if self.catalog.change_log == 0 {
            return Err(ConfigError::invalid(
                "catalog.change_log",
                "expected at least 1",
            ));
        }
        if self.http.max_wait.is_zero() || self.http.max_wait > Duration::from_secs(3600) {
            return Err(ConfigError::invalid(
                "http.max_wait",
                "expected between 1s and 1h",
            ));
        }
        Ok(())
    }

    /// A configuration for tests and `bronze dev` variants: every listener
    /// on 127.0.0.1 port 0, state in memory.
    pub fn ephemeral() -> Self {
        let mut c = Self::default();
        c.http.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        c.grpc.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        c.dns.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        c.dns.udp_workers = 1;
        c.data_dir = String::new();
        c.node_name = "bronze-test".into();
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_consul_ports() {
        let mut c = Config::default();
        c.validate().expect("defaults valid");
        assert_eq!(c.http.addr.port(), 8500);
        assert_eq!(c.dns.addr.port(), 8600);
        assert_eq!(c.grpc.addr.port(), 8502);
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = Config::default();
        c.dns.domain = "bad domain".into();
        assert!(c.validate().unwrap_err().to_string().contains("dns.domain"));
        let mut c = Config::default();
        c.dns.recursors = vec!["nope".into()];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("dns.recursors")
        );
        let mut c = Config {
            node_name: "no spaces".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("node_name"));
        assert_eq!(parse_recursor("10.0.0.2").expect("ok").port(), 53);
        assert_eq!(parse_recursor("[::1]:5353").expect("ok").port(), 5353);
    }
}
