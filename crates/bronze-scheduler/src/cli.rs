//! Flags and environment variables of `bronze-scheduler`.

use std::net::SocketAddr;
use std::path::PathBuf;

use bronze_runtime::config::{self, ConfigError};
use bronze_telemetry::LogFormat;
use clap::Parser;
use serde::Serialize;

use crate::config::Config;

/// Bronze's orchestrator, the Swarm manager: keeps each service's tasks
/// running on the nodes whose agents joined, places them (constraints,
/// spread, reservations), restarts them by policy, rolls updates, and moves
/// tasks off nodes that go down or are drained.
///
/// One port serves the control API (gRPC, used by `bronze service ...` and
/// `bronze node ...`), the agents' sessions, and /metrics and /healthz.
/// Agents join with the token `bronze node join-token` prints.
///
/// Every setting comes from (lowest to highest precedence) its default, the
/// TOML file given by --config, its environment variable, and its flag.
#[derive(Debug, Parser, Serialize)]
#[command(name = "bronze-scheduler", version, max_term_width = 100)]
pub struct Args {
    /// TOML configuration file.
    #[arg(short, long, env = "BRONZE_SCHEDULER_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// gRPC and HTTP listener [default: 127.0.0.1:7700]. Bind wider (e.g.
    /// 0.0.0.0:7700) for agents on other hosts, with --admin-token set.
    #[arg(long, env = "BRONZE_SCHEDULER_ADDR", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,

    /// State directory; empty keeps state in memory [default: bronze-scheduler-data].
    #[arg(long, env = "BRONZE_SCHEDULER_DATA_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,

    /// Token the control API requires (`authorization: Bearer <token>`).
    #[arg(
        long,
        env = "BRONZE_SCHEDULER_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,

    /// The join token agents present [default: generated once, kept in the store].
    #[arg(
        long,
        env = "BRONZE_SCHEDULER_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,

    /// How often agents send a heartbeat, e.g. 5s [default: 5s].
    #[arg(long, env = "BRONZE_SCHEDULER_HEARTBEAT", value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<String>,

    /// A node silent this long is down and its tasks move [default: 15s].
    #[arg(long, env = "BRONZE_SCHEDULER_NODE_GRACE", value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_grace: Option<String>,

    /// Ended tasks kept per slot for `service ps` [default: 5].
    #[arg(long, env = "BRONZE_SCHEDULER_TASK_HISTORY", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_history: Option<usize>,

    /// bronze-discovery's gRPC address, e.g. http://127.0.0.1:8502: rollouts
    /// then wait for new tasks to pass there, and drain old ones from it
    /// before they stop [default: none].
    #[arg(long, env = "BRONZE_SCHEDULER_DISCOVERY", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<String>,

    /// bronze-registry's gRPC address, e.g. http://127.0.0.1:5002: services
    /// labelled bronze.autodeploy=true then roll to each new digest pushed
    /// there under their image's tag (=glob:PATTERN: a matching tag;
    /// =semver:major|minor|patch: a higher version), with their
    /// update_config [default: none].
    #[arg(long, env = "BRONZE_SCHEDULER_REGISTRY", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,

    /// The registry host images pushed to --registry name (what clients push
    /// to, e.g. 127.0.0.1:5000); repeat, or separate with commas, for
    /// several names of the same registry. Required with --registry.
    #[arg(
        long,
        env = "BRONZE_SCHEDULER_REGISTRY_NAMES",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    #[serde(rename = "registry_names", skip_serializing_if = "Option::is_none")]
    pub registry_name: Option<Vec<String>>,

    /// The registry's HTTP API as this scheduler reaches it, e.g.
    /// http://registry:5000, when that differs from the --registry-name
    /// images carry (containers, NAT). Used to catch up with pushes made
    /// while the event stream was broken [default: the image's host].
    #[arg(long, env = "BRONZE_SCHEDULER_REGISTRY_HTTP", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_http: Option<String>,
    /// File holding the key secrets are encrypted with at rest (64 hex
    /// digits; created with mode 0600 when missing). Keep it apart from
    /// the data dir in production (another disk, a tmpfs filled at boot):
    /// the store alone then reveals no secret. A key that does not open
    /// the stored secrets stops the start [default: <data-dir>/secrets.key].
    #[arg(long, env = "BRONZE_SCHEDULER_SECRETS_KEY_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets_key_file: Option<String>,

    /// Log format: plain or json [default: plain]. RUST_LOG sets the level.
    #[arg(long, env = "BRONZE_LOG_FORMAT", value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

impl Args {
    pub fn load(&self) -> Result<Config, ConfigError> {
        let c: Config = config::load(self.config.as_deref(), self)?;
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_and_errors_name_keys() {
        let a = Args::parse_from([
            "bronze-scheduler",
            "--addr",
            "127.0.0.1:7801",
            "--heartbeat",
            "1s",
        ]);
        let c = a.load().expect("valid");
        assert_eq!(c.addr.port(), 7801);
        assert_eq!(c.heartbeat, std::time::Duration::from_secs(1));
        let a = Args::parse_from(["bronze-scheduler", "--node-grace", "soon"]);
        assert!(a.load().unwrap_err().to_string().contains("node_grace"));
        let a = Args::parse_from([
            "bronze-scheduler",
            "--registry",
            "http://127.0.0.1:5002",
            "--registry-name",
            "127.0.0.1:5000,localhost:5000",
            "--registry-name",
            "registry.example.com",
            "--registry-http",
            "http://registry:5000",
        ]);
        let c = a.load().expect("valid");
        assert_eq!(c.registry, "http://127.0.0.1:5002");
        assert_eq!(
            c.registry_names,
            ["127.0.0.1:5000", "localhost:5000", "registry.example.com"]
        );
        assert_eq!(c.registry_http, "http://registry:5000");
    }
}
