//! Configuration: defaults, a TOML file, environment variables and flags
//! (see `cli.rs`), validated once at start-up.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bronze_runtime::config::ConfigError;
use bronze_telemetry::LogFormat;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The scheduler's address (gRPC).
    pub scheduler: String,
    /// The cluster's join token (`bronze node join-token`).
    pub join_token: String,
    /// Where the agent keeps its node id (`node-id`); empty: nowhere (a
    /// new node at every start, unless `node_id` is set).
    pub data_dir: String,
    /// This node's id, instead of the one kept in `data_dir`.
    pub node_id: String,
    /// This node's name (default: the host name).
    pub hostname: String,
    /// Node labels, for placement constraints (`node.labels.zone==eu`).
    pub labels: BTreeMap<String, String>,
    /// The address this node advertises (default: the default route's).
    pub address: String,
    /// Docker engine (unix://, tcp://); empty: DOCKER_HOST, else the local
    /// socket.
    pub docker_host: String,
    /// CPUs offered to tasks' reservations, in billionths (0: the engine's
    /// count).
    pub nano_cpus: i64,
    /// Memory offered to tasks' reservations, in bytes (0: the engine's).
    pub memory_bytes: i64,
    /// Credentials per registry host: "127.0.0.1:5000" -> "user:password".
    pub registry_auth: BTreeMap<String, String>,
    /// bronze-discovery's gRPC address; set, stack tasks reach each other
    /// by service name (see `mesh`). Empty: off.
    pub discovery: String,
    /// The Docker network tasks join when they are in no stack network;
    /// empty: the engine's default bridge.
    pub task_network: String,
    /// Engine operations (pull, create, start) run at once.
    pub parallel_ops: usize,
    /// Where the files of tasks' secrets and configs are written before
    /// they are bind-mounted (one directory per task, removed with its
    /// container). Keep it on a tmpfs so secrets never reach a disk.
    pub files_dir: String,
    /// /metrics and /healthz.
    pub metrics_addr: SocketAddr,
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            scheduler: "http://127.0.0.1:7700".into(),
            join_token: String::new(),
            data_dir: "bronze-agent-data".into(),
            node_id: String::new(),
            hostname: default_hostname(),
            labels: BTreeMap::new(),
            address: String::new(),
            docker_host: String::new(),
            nano_cpus: 0,
            memory_bytes: 0,
            registry_auth: BTreeMap::new(),
            discovery: String::new(),
            task_network: String::new(),
            parallel_ops: 8,
            files_dir: "/dev/shm/bronze-agent".into(),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9700)),
            log_format: LogFormat::Plain,
        }
    }
}

fn default_hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.split('.').next().unwrap_or_default().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "docker-host".into())
}

/// The address this host uses to reach the world: the source address of
/// the default route (no packet is sent).
pub fn detect_address() -> String {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("10.255.255.255:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .map_or_else(|| "127.0.0.1".to_string(), |ip| ip.to_string())
}

impl Config {
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let url = if self.scheduler.contains("://") {
            self.scheduler.clone()
        } else {
            format!("http://{}", self.scheduler)
        };
        let uri: http::Uri = url.parse().map_err(|e| {
            ConfigError::invalid(
                "scheduler",
                format!(
                    "{:?} is not an address ({e}); expected e.g. \"http://127.0.0.1:7700\"",
                    self.scheduler
                ),
            )
        })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.port_u16().is_none() {
            return Err(ConfigError::invalid(
                "scheduler",
                format!(
                    "{:?}: expected http://host:port, e.g. \"http://127.0.0.1:7700\"",
                    self.scheduler
                ),
            ));
        }
        self.scheduler = url;
        if self.join_token.is_empty() {
            return Err(ConfigError::invalid(
                "join_token",
                "required: the token `bronze node join-token` prints",
            ));
        }
        self.hostname = self.hostname.to_ascii_lowercase();
        if self.hostname.is_empty()
            || !self
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(ConfigError::invalid(
                "hostname",
                format!("{:?}: expected a host name", self.hostname),
            ));
        }
        if !self.node_id.is_empty() && !self.node_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ConfigError::invalid(
                "node_id",
                "expected letters and digits",
            ));
        }
        if self.nano_cpus < 0 || self.memory_bytes < 0 {
            return Err(ConfigError::invalid("nano_cpus", "expected 0 or more"));
        }
        if self.parallel_ops == 0 || self.parallel_ops > 256 {
            return Err(ConfigError::invalid("parallel_ops", "expected 1-256"));
        }
        for (host, auth) in &self.registry_auth {
            if host.is_empty() || !auth.contains(':') {
                return Err(ConfigError::invalid(
                    "registry_auth",
                    format!("{host:?}: expected \"host=user:password\""),
                ));
            }
        }
        if !self.files_dir.starts_with('/') {
            return Err(ConfigError::invalid(
                "files_dir",
                format!(
                    "{:?}: expected an absolute path (the engine bind-mounts files from it)",
                    self.files_dir
                ),
            ));
        }
        if !self.discovery.is_empty() {
            let url = if self.discovery.contains("://") {
                self.discovery.clone()
            } else {
                format!("http://{}", self.discovery)
            };
            match url.parse::<http::Uri>() {
                Ok(u)
                    if matches!(u.scheme_str(), Some("http" | "https"))
                        && u.port_u16().is_some() =>
                {
                    self.discovery = url;
                }
                _ => {
                    return Err(ConfigError::invalid(
                        "discovery",
                        format!(
                            "{:?}: expected bronze-discovery's gRPC address, e.g. \"http://127.0.0.1:8502\"",
                            self.discovery
                        ),
                    ));
                }
            }
        }
        if self.address.is_empty() {
            self.address = detect_address();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_keys() {
        let mut c = Config {
            join_token: "BRONZE-x".into(),
            ..Default::default()
        };
        c.validate().expect("valid");
        assert_eq!(c.scheduler, "http://127.0.0.1:7700");
        let mut c = Config::default();
        assert!(c.validate().unwrap_err().to_string().contains("join_token"));
        let mut c = Config {
            join_token: "t".into(),
            scheduler: "nonsense here".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("scheduler"));
        let mut c = Config {
            join_token: "t".into(),
            registry_auth: [("h".to_string(), "nopassword".to_string())].into(),
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("registry_auth")
        );
        let mut c = Config {
            join_token: "t".into(),
            discovery: "not a url".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("discovery"));
        let mut c = Config {
            join_token: "t".into(),
            discovery: "127.0.0.1:8502".into(),
            ..Default::default()
        };
        c.validate().expect("valid");
        assert_eq!(c.discovery, "http://127.0.0.1:8502");
    }
}
