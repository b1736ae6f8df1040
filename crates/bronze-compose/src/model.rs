//! The typed project a compose file describes, after interpolation,
//! merging and defaults: what the CLI maps onto the scheduler's specs.
//! Durations are `Duration`s, sizes are bytes, CPUs are billionths.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Warning;

/// A loaded stack: every file merged, interpolated and checked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Project {
    /// `LoadOptions::project_name`: a stack's name comes from the command
    /// line, never from the file's `name:`.
    pub name: String,
    pub services: BTreeMap<String, Service>,
    pub volumes: BTreeMap<String, Volume>,
    pub networks: BTreeMap<String, Network>,
    pub secrets: BTreeMap<String, Secret>,
    pub configs: BTreeMap<String, Config>,
    pub warnings: Vec<Warning>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Service {
    pub image: String,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// `None`: the name alone (`- KEY`), its value taken where the task runs.
    pub environment: BTreeMap<String, Option<String>>,
    pub ports: Vec<Port>,
    pub volumes: Vec<Mount>,
    pub labels: BTreeMap<String, String>,
    pub healthcheck: Option<Healthcheck>,
    pub stop_grace_period: Option<Duration>,
    pub stop_signal: Option<String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub hostname: Option<String>,
    /// `host:ip`, in the file's order.
    pub extra_hosts: Vec<String>,
    pub secrets: Vec<ServiceObjectRef>,
    pub configs: Vec<ServiceObjectRef>,
    pub depends_on: BTreeMap<String, Condition>,
    /// Names of top-level networks (or `default`).
    pub networks: Vec<String>,
    pub deploy: Deploy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub target: u16,
    /// `None`: any free port (Swarm picks one).
    pub published: Option<u16>,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `ingress` or `host`.
    pub mode: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Volume,
    Bind,
    Tmpfs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: MountKind,
    /// A volume's name (`None`: anonymous), or a bind's absolute host path.
    pub source: Option<String>,
    pub target: String,
    pub read_only: bool,
    /// Tmpfs only, in bytes.
    pub tmpfs_size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Healthcheck {
    /// `["CMD", ...]` or `["CMD-SHELL", "..."]`; empty when only the timing
    /// is overridden (the image's test stays).
    pub test: Vec<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub start_period: Option<Duration>,
    pub retries: Option<u64>,
    /// `disable: true` or `test: ["NONE"]`.
    pub disable: bool,
}

/// A service's use of a secret or a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceObjectRef {
    /// The top-level secret's or config's key.
    pub source: String,
    /// File name or path in the container; `None`: the source's name.
    pub target: Option<String>,
    pub uid: Option<String>,
    pub gid: Option<String>,
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Started,
    Healthy,
    CompletedSuccessfully,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Replicated,
    Global,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Deploy {
    pub mode: Mode,
    /// `None`: not given (Swarm's default is 1 for a replicated service).
    pub replicas: Option<u64>,
    pub placement: Placement,
    pub resources: Resources,
    pub restart_policy: Option<RestartPolicy>,
    pub update_config: Option<UpdateConfig>,
    pub rollback_config: Option<UpdateConfig>,
    pub labels: BTreeMap<String, String>,
    /// `vip` or `dnsrr`.
    pub endpoint_mode: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    pub constraints: Vec<String>,
    /// As `--placement-pref` writes them: `spread=node.labels.zone`.
    pub preferences: Vec<String>,
    pub max_replicas_per_node: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resources {
    pub limits: ResourceSet,
    pub reservations: ResourceSet,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceSet {
    /// Billionths of a CPU: `cpus: "0.5"` is 500_000_000.
    pub nano_cpus: Option<i64>,
    /// Bytes.
    pub memory: Option<u64>,
    pub pids: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartCondition {
    None,
    OnFailure,
    /// Swarm's default.
    #[default]
    Any,
}

impl RestartCondition {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartCondition::None => "none",
            RestartCondition::OnFailure => "on-failure",
            RestartCondition::Any => "any",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    pub delay: Option<Duration>,
    pub max_attempts: Option<u64>,
    pub window: Option<Duration>,
}

/// `update_config` and `rollback_config`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpdateConfig {
    pub parallelism: Option<u64>,
    pub delay: Option<Duration>,
    /// `pause`, `continue` or `rollback`.
    pub failure_action: Option<String>,
    pub monitor: Option<Duration>,
    pub max_failure_ratio: Option<f64>,
    /// `stop-first` or `start-first`.
    pub order: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Volume {
    /// The name on the engine; `None`: `<stack>_<key>`.
    pub name: Option<String>,
    pub external: bool,
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Network {
    /// The name on the engine; `None`: `<stack>_<key>`.
    pub name: Option<String>,
    pub external: bool,
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, String>,
    pub attachable: bool,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
}

/// A top-level secret: from a file, or one that already exists.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Secret {
    /// The name in the cluster; `None`: `<stack>_<key>`.
    pub name: Option<String>,
    /// Absolute (relative paths resolved against the compose file's
    /// directory).
    pub file: Option<PathBuf>,
    pub external: bool,
    pub labels: BTreeMap<String, String>,
}

/// A top-level config: the same shape as a secret.
pub type Config = Secret;
