//! Configuration: defaults, a TOML file, environment variables and flags
//! (see `cli.rs`), validated once at start-up.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bronze_runtime::config::ConfigError;
use bronze_telemetry::LogFormat;
use serde::{Deserialize, Serialize};

/// When an exited container's instances are deregistered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeregisterMode {
    /// Whenever the container stops.
    #[default]
    Always,
    /// Only when it exits with code 0; otherwise its instances stay
    /// registered, critical, until it runs again (for restart policies).
    OnSuccess,
}

impl std::str::FromStr for DeregisterMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Self::Always),
            "on-success" => Ok(Self::OnSuccess),
            other => Err(format!("{other:?}: expected \"always\" or \"on-success\"")),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// bronze-discovery's gRPC address.
    pub discovery: String,
    /// Docker engine (unix://, tcp://, https://); empty: DOCKER_HOST, else
    /// the local socket. TLS follows DOCKER_TLS_VERIFY and DOCKER_CERT_PATH.
    pub docker_host: String,
    /// This host's node name (default: the host name).
    pub hostname: String,
    /// Address registered for ports published on every interface, and the
    /// node's address (default: the address of the default route).
    pub ip: Option<IpAddr>,
    /// Register exposed ports at the container's own address.
    pub internal: bool,
    /// Only register containers that set SERVICE_NAME.
    pub explicit: bool,
    /// Tags added to every instance.
    pub tags: Vec<String>,
    pub deregister: DeregisterMode,
    /// Full reconciliation with the engine this often (0s: only at start-up
    /// and after reconnecting).
    #[serde(with = "bronze_runtime::duration::serde")]
    pub resync: Duration,
    /// Remove this host's instances whose container is gone at once (without
    /// it they turn critical and expire after `deregister_after`).
    pub cleanup: bool,
    /// Take an instance's address from this container label.
    pub use_ip_from_label: Option<String>,
    /// Only register containers carrying every one of these labels
    /// (`KEY` or `KEY=VALUE`): several registrators sharing one engine, each
    /// for its own containers.
    pub only_labels: Vec<String>,
    /// How often the registrator reports to discovery.
    #[serde(with = "bronze_runtime::duration::serde")]
    pub heartbeat: Duration,
    /// How long discovery trusts a report: past it, this host's instances
    /// turn critical (the registrator or the host is gone).
    #[serde(with = "bronze_runtime::duration::serde")]
    pub ttl: Duration,
    /// Critical this long, an instance is removed from discovery.
    #[serde(with = "bronze_runtime::duration::serde")]
    pub deregister_after: Duration,
    /// /metrics and /healthz.
    pub metrics_addr: SocketAddr,
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            discovery: "http://127.0.0.1:8502".into(),
            docker_host: String::new(),
            hostname: default_hostname(),
            ip: None,
            internal: false,
            explicit: false,
            tags: Vec::new(),
            deregister: DeregisterMode::Always,
            resync: Duration::from_secs(60),
            cleanup: false,
            use_ip_from_label: None,
            only_labels: Vec::new(),
            heartbeat: Duration::from_secs(3),
            ttl: Duration::from_secs(15),
            deregister_after: Duration::from_secs(120),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9600)),
            log_format: LogFormat::Plain,
        }
    }
}

fn default_hostname() -> String {
    let raw = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let name = crate::convention::sanitize_name(raw.split('.').next().unwrap_or_default());
    if name == "service" {
        "docker-host".into()
    } else {
        name
    }
}

/// The address this host uses to reach the world: the source address of
/// the default route (no packet is sent).
pub fn detect_ip() -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("10.255.255.255:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// `host:port` or `http://host:port` as a gRPC endpoint URL.
pub fn discovery_url(s: &str) -> Result<String, String> {
    let url = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    let uri: http::Uri = url.parse().map_err(|e| {
        format!("{s:?} is not an address ({e}); expected e.g. \"http://127.0.0.1:8502\"")
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.port_u16().is_none() {
        return Err(format!(
            "{s:?}: expected http://host:port, e.g. \"http://127.0.0.1:8502\""
        ));
    }
    Ok(url)
}

impl Config {
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        self.discovery =
            discovery_url(&self.discovery).map_err(|e| ConfigError::invalid("discovery", e))?;
        self.hostname = self.hostname.to_ascii_lowercase();
        if crate::convention::sanitize_name(&self.hostname) != self.hostname {
            return Err(ConfigError::invalid(
                "hostname",
                format!(
                    "{:?}: expected a DNS label (letters, digits, '-')",
                    self.hostname
                ),
            ));
        }
        if self.heartbeat < Duration::from_millis(50) {
            return Err(ConfigError::invalid("heartbeat", "expected at least 50ms"));
        }
        if self.ttl < self.heartbeat * 2 {
            return Err(ConfigError::invalid(
                "ttl",
                "expected at least twice the heartbeat",
            ));
        }
        if self.deregister_after < self.ttl {
            return Err(ConfigError::invalid(
                "deregister_after",
                "expected at least the ttl",
            ));
        }
        for f in &self.only_labels {
            if f.split_once('=').map_or(f.as_str(), |(k, _)| k).is_empty() {
                return Err(ConfigError::invalid(
                    "only_labels",
                    format!("{f:?}: expected KEY or KEY=VALUE"),
                ));
            }
        }
        for t in &self.tags {
            if t.is_empty() || t.len() > 255 {
                return Err(ConfigError::invalid(
                    "tags",
                    format!("{t:?}: expected 1-255 characters"),
                ));
            }
        }
        Ok(())
    }

    pub fn host_ip(&self) -> IpAddr {
        self.ip.unwrap_or_else(detect_ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_keys() {
        let mut c = Config::default();
        c.validate().expect("defaults are valid");
        assert_eq!(c.discovery, "http://127.0.0.1:8502");
        let mut c = Config {
            discovery: "nonsense here".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("discovery"));
        let mut c = Config {
            ttl: Duration::from_secs(1),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("ttl"));
        let mut c = Config {
            discovery: "10.0.0.1:8502".into(),
            ..Default::default()
        };
        c.validate().expect("host:port accepted");
        assert_eq!(c.discovery, "http://10.0.0.1:8502");
        assert_eq!(
            "on-success".parse::<DeregisterMode>(),
            Ok(DeregisterMode::OnSuccess)
        );
        assert!("sometimes".parse::<DeregisterMode>().is_err());
    }
}
