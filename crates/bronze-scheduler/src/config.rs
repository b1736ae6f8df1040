//! Configuration: defaults, a TOML file, environment variables and flags
//! (see `cli.rs`), validated once at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use bronze_runtime::config::ConfigError;
use bronze_telemetry::LogFormat;
use serde::{Deserialize, Serialize};

use crate::manager::Tunables;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC (the control API and the agents' sessions) and HTTP (/metrics,
    /// /healthz) on one port.
    pub addr: SocketAddr,
    /// Where the state lives (`scheduler.redb`); empty: in memory only.
    pub data_dir: String,
    /// Required from API callers (`authorization: Bearer <token>`) when set.
    /// Agents authenticate with the join token instead.
    pub admin_token: String,
    /// The join token agents present; empty: one is generated at the first
    /// start and kept in the store (`bronze node join-token` prints it).
    pub join_token: String,
    /// How often agents send a heartbeat.
    #[serde(with = "bronze_runtime::duration::serde")]
    pub heartbeat: Duration,
    /// A node whose agent is silent this long is down; its tasks move.
    #[serde(with = "bronze_runtime::duration::serde")]
    pub node_grace: Duration,
    /// Ended tasks kept per slot, for `service ps`.
    pub task_history: usize,
    /// bronze-discovery's gRPC address; empty: not followed. When set,
    /// tasks that publish ports count as up only once registered and
    /// passing, and tasks are drained from it before they stop.
    pub discovery: String,
    /// bronze-registry's gRPC address; empty: not followed. When set,
    /// services labelled `bronze.autodeploy` roll to what is pushed there.
    pub registry: String,
    /// The registry hosts (`host:port`) image references name when they
    /// come from the followed registry: what clients push to.
    pub registry_names: Vec<String>,
    /// The registry's HTTP API as the scheduler reaches it, for catching up
    /// after the event stream broke; empty: the host the image names.
    pub registry_http: String,
    /// The key secrets are encrypted with at rest (64 hex digits), kept
    /// apart from the store; created (mode 0600) when missing. Empty:
    /// `<data_dir>/secrets.key`, or a key in memory when `data_dir` is
    /// empty. Production keeps it on another disk or a tmpfs.
    pub secrets_key_file: String,
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 7700)),
            data_dir: "bronze-scheduler-data".into(),
            admin_token: String::new(),
            join_token: String::new(),
            heartbeat: Duration::from_secs(5),
            node_grace: Duration::from_secs(15),
            task_history: 5,
            discovery: String::new(),
            registry: String::new(),
            registry_names: Vec::new(),
            registry_http: String::new(),
            secrets_key_file: String::new(),
            log_format: LogFormat::Plain,
        }
    }
}

impl Config {
    /// Loopback, a kernel-chosen port, state in memory, fast heartbeats:
    /// for tests and `bronze dev --ephemeral`.
    pub fn ephemeral() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: String::new(),
            heartbeat: Duration::from_millis(500),
            node_grace: Duration::from_secs(5),
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat < Duration::from_millis(50) {
            return Err(ConfigError::invalid("heartbeat", "expected at least 50ms"));
        }
        if self.node_grace < self.heartbeat * 2 {
            return Err(ConfigError::invalid(
                "node_grace",
                "expected at least twice the heartbeat",
            ));
        }
        optional_url("discovery", &self.discovery, "http://127.0.0.1:8502")?;
        optional_url("registry", &self.registry, "http://127.0.0.1:5002")?;
        optional_url("registry_http", &self.registry_http, "http://registry:5000")?;
        if !self.registry.is_empty() && self.registry_names.is_empty() {
            return Err(ConfigError::invalid(
                "registry_names",
                "expected at least one host:port that images pushed to the registry name \
                 (what clients push to, e.g. \"127.0.0.1:5000\") when registry is set",
            ));
        }
        for (i, n) in self.registry_names.iter().enumerate() {
            let (host, port) = n.rsplit_once(':').unwrap_or((n.as_str(), ""));
            let ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
                && (port.is_empty() || port.parse::<u16>().is_ok())
                && (host.contains('.') || !port.is_empty() || host == "localhost");
            if !ok {
                return Err(ConfigError::invalid(
                    format!("registry_names[{i}]"),
                    format!(
                        "{n:?}: expected a registry host as image references name it, e.g. \
                         \"127.0.0.1:5000\" or \"registry.example.com\""
                    ),
                ));
            }
        }
        if self.task_history > 100 {
            return Err(ConfigError::invalid("task_history", "expected at most 100"));
        }
        if !self.join_token.is_empty()
            && (self.join_token.len() < 16 || !self.join_token.is_ascii())
        {
            return Err(ConfigError::invalid(
                "join_token",
                "expected at least 16 ASCII characters",
            ));
        }
        Ok(())
    }

    /// Where the secrets key is; `None`: in memory only (no data dir and no
    /// key file).
    pub fn secrets_key_path(&self) -> Option<std::path::PathBuf> {
        if !self.secrets_key_file.is_empty() {
            Some(self.secrets_key_file.clone().into())
        } else if !self.data_dir.is_empty() {
            Some(std::path::Path::new(&self.data_dir).join("secrets.key"))
        } else {
            None
        }
    }

    pub fn tunables(&self) -> Tunables {
        Tunables {
            heartbeat_period: self.heartbeat,
            node_grace: self.node_grace,
            task_history: self.task_history,
            discovery: !self.discovery.is_empty(),
            registry_names: self.registry_names.clone(),
            ..Tunables::default()
        }
    }
}

/// An optional address (gRPC or HTTP): empty, or `http(s)://host:port`.
fn optional_url(key: &str, url: &str, example: &str) -> Result<(), ConfigError> {
    if url.is_empty() {
        return Ok(());
    }
    let uri: Result<tonic::transport::Uri, _> = url.parse();
    let ok = uri
        .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.port_u16().is_some());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{url:?}: expected http://host:port, e.g. \"{example}\""),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_keys() {
        Config::default().validate().expect("defaults are valid");
        Config::ephemeral().validate().expect("ephemeral is valid");
        let c = Config {
            node_grace: Duration::from_secs(1),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("node_grace"));
        let c = Config {
            join_token: "short".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("join_token"));
        let c = Config {
            registry: "127.0.0.1:5002".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("registry"));
        let c = Config {
            registry: "http://127.0.0.1:5002".into(),
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("registry_names")
        );
        let c = Config {
            registry: "http://127.0.0.1:5002".into(),
            registry_names: vec!["127.0.0.1:5000".into(), "bad/name".into()],
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("registry_names[1]")
        );
    }
}
