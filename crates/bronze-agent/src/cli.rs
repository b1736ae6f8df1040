//! Flags and environment variables of `bronze-agent`.

use std::net::SocketAddr;
use std::path::PathBuf;

use bronze_runtime::config::{self, ConfigError};
use bronze_runtime::units::parse_size;
use bronze_telemetry::LogFormat;
use clap::Parser;
use serde::Serialize;

use crate::config::Config;

/// Bronze's worker, the Swarm worker: one per Docker host. It dials the
/// scheduler (no listener but /metrics and /healthz), joins with the
/// cluster's token, reports this host's resources and engine, runs the
/// tasks the scheduler assigns (pull, create, start, stop with the grace
/// period, remove) and reports every transition and health change as the
/// engine reports it. Containers keep running while the agent or the
/// scheduler restarts; on reconnect both sides reconcile.
///
/// Containers are labelled with their task, service and node, and with the
/// service's SERVICE_* and bronze.* labels, so bronze-registrator on the
/// same host registers them in discovery.
///
/// Every setting comes from (lowest to highest precedence) its default, the
/// TOML file given by --config, its environment variable, and its flag.
#[derive(Debug, Parser, Serialize)]
#[command(name = "bronze-agent", version, max_term_width = 100)]
pub struct Args {
    /// TOML configuration file.
    #[arg(short, long, env = "BRONZE_AGENT_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// The scheduler's address [default: http://127.0.0.1:7700].
    #[arg(long, env = "BRONZE_AGENT_SCHEDULER", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,

    /// The cluster's join token (`bronze node join-token` prints it).
    #[arg(
        long,
        env = "BRONZE_AGENT_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,

    /// Where the node id is kept [default: bronze-agent-data].
    #[arg(long, env = "BRONZE_AGENT_DATA_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,

    /// This node's id, instead of the one kept in the data directory.
    #[arg(long, env = "BRONZE_AGENT_NODE_ID", value_name = "ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,

    /// This node's name [default: the host name].
    #[arg(long, env = "BRONZE_AGENT_HOSTNAME", value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,

    /// Node labels for placement constraints, e.g. zone=eu (repeat, or
    /// comma-separated).
    #[arg(long = "label", env = "BRONZE_AGENT_LABELS", value_name = "KEY=VALUE", value_delimiter = ',', value_parser = parse_label)]
    #[serde(skip)]
    pub labels: Vec<(String, String)>,

    /// The address this node advertises [default: the default route's].
    #[arg(long, env = "BRONZE_AGENT_ADDRESS", value_name = "IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,

    /// Docker engine address [default: DOCKER_HOST, else the local socket].
    #[arg(long, env = "BRONZE_AGENT_DOCKER_HOST", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_host: Option<String>,

    /// CPUs offered to reservations, e.g. 2 or 1.5 [default: the engine's count].
    #[arg(long, env = "BRONZE_AGENT_CPUS", value_name = "CPUS", value_parser = parse_cpus)]
    #[serde(rename = "nano_cpus", skip_serializing_if = "Option::is_none")]
    pub cpus: Option<i64>,

    /// Memory offered to reservations, e.g. 4G, 512M [default: the engine's].
    #[arg(long, env = "BRONZE_AGENT_MEMORY", value_name = "SIZE", value_parser = parse_size)]
    #[serde(rename = "memory_bytes", skip_serializing_if = "Option::is_none")]
    pub memory: Option<i64>,

    /// Registry credentials, e.g. 127.0.0.1:5000=user:password (repeat).
    #[arg(long, env = "BRONZE_AGENT_REGISTRY_AUTH", value_name = "HOST=USER:PASSWORD", value_delimiter = ',', value_parser = parse_label, hide_env_values = true)]
    #[serde(skip)]
    pub registry_auth: Vec<(String, String)>,

    /// bronze-discovery's gRPC address, e.g. http://127.0.0.1:8502. Set, the
    /// tasks of a stack reach each other by service name and target port
    /// (`http://api:8080`, `shop_api:8080`) on this host and across hosts:
    /// per stack the agent makes a bridge network, answers DNS on its
    /// gateway, and forwards each service's virtual IP and port to the
    /// service's passing instances wherever they run; stack services'
    /// ingress-mode published ports answer on --address, whichever node
    /// runs their tasks. Needs root (DNS on port 53, `ip addr add`).
    /// Unset: off [default: off].
    #[arg(long, env = "BRONZE_AGENT_DISCOVERY", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<String>,

    /// The Docker network a task joins when it is in no stack network (an
    /// agent without --discovery, or a service outside any stack), e.g. a
    /// network the hosts route between them, with the registrator's
    /// --internal registering each task at its own address there. The
    /// network must exist; a task that cannot join it is rejected, saying
    /// so [default: the engine's default bridge].
    #[arg(long, env = "BRONZE_AGENT_TASK_NETWORK", value_name = "NETWORK")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_network: Option<String>,

    /// Engine operations (pull, create, start) at once [default: 8].
    #[arg(long, env = "BRONZE_AGENT_PARALLEL_OPS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_ops: Option<usize>,

    /// Where tasks' secrets and configs are written before they are
    /// bind-mounted read-only into their containers, one directory per
    /// task, removed with its container. Keep it on a tmpfs (/dev/shm,
    /// /run): secrets then never reach a disk; the agent warns when it is
    /// not [default: /dev/shm/bronze-agent].
    #[arg(long, env = "BRONZE_AGENT_FILES_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_dir: Option<String>,

    /// /metrics and /healthz [default: 127.0.0.1:9700].
    #[arg(long, env = "BRONZE_AGENT_METRICS_ADDR", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<SocketAddr>,

    /// Log format: plain or json [default: plain]. RUST_LOG sets the level.
    #[arg(long, env = "BRONZE_LOG_FORMAT", value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

/// Docker's CPUs ("1.5"), at most 4096 of them.
fn parse_cpus(s: &str) -> Result<i64, String> {
    let nanos = bronze_runtime::units::parse_cpus(s)?;
    if nanos > 4096 * 1_000_000_000 {
        return Err(format!("{s:?}: expected 0-4096 CPUs"));
    }
    Ok(nanos)
}

impl Args {
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut c: Config = config::load(self.config.as_deref(), self)?;
        c.labels.extend(self.labels.iter().cloned());
        c.registry_auth.extend(self.registry_auth.iter().cloned());
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_cpus_and_labels() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_cpus("1.5"), Ok(1_500_000_000));
        assert!(parse_cpus("-1").is_err());
        let a = Args::parse_from([
            "bronze-agent",
            "--join-token",
            "BRONZE-x",
            "--label",
            "zone=eu,disk=ssd",
            "--memory",
            "2G",
        ]);
        let c = a.load().expect("valid");
        assert_eq!(c.labels.get("zone").map(String::as_str), Some("eu"));
        assert_eq!(c.labels.len(), 2);
        assert_eq!(c.memory_bytes, 2 << 30);
    }
}
