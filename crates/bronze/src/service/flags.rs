//! `service create` and `service update` flags, Docker's names and
//! grammars, and how each one changes a `ServiceSpec`.
//!
//! Values are parsed by clap through the functions here, so a bad value is
//! a usage error naming the flag (exit 2). What only the scheduler can
//! judge (name grammar, constraint expressions, image references, ranges)
//! is left to it: it answers InvalidArgument naming the spec field.
//!
//! Both commands share [`SpecFlags`] (one value each: it replaces the
//! field); `create` adds list flags (`--env`, `--publish`, ...) and
//! `update` their `-add`/`-rm` forms, applied to the spec it read.

use std::path::Path;
use std::time::Duration;

use bronze_proto::scheduler::v1 as pb;
use clap::{Args, ValueEnum};

use crate::client::Error;
use crate::units::{parse_cpus, parse_duration, parse_size, to_proto_duration};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// `--replicas` tasks, spread over the nodes.
    Replicated,
    /// One task on every node that qualifies.
    Global,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestartCondition {
    None,
    OnFailure,
    Any,
}

impl RestartCondition {
    fn as_str(self) -> &'static str {
        match self {
            RestartCondition::None => "none",
            RestartCondition::OnFailure => "on-failure",
            RestartCondition::Any => "any",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Order {
    StopFirst,
    StartFirst,
}

impl Order {
    fn as_str(self) -> &'static str {
        match self {
            Order::StopFirst => "stop-first",
            Order::StartFirst => "start-first",
        }
    }
}

/// A command line split as a shell would (`--entrypoint "sh -c 'x y'"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Words(pub Vec<String>);

/// Splits like a POSIX shell without expansions (the shared splitter of
/// `bronze_runtime::words`).
pub fn parse_words(s: &str) -> Result<Words, String> {
    bronze_runtime::words::split(s).map(Words)
}

/// `KEY=VALUE`, or `KEY` for an empty value.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.trim().is_empty() {
        return Err(format!("{s:?}: expected KEY=VALUE"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn parse_port_number(s: &str, what: &str) -> Result<u32, String> {
    if s.contains('-') {
        return Err(format!(
            "{s:?}: port ranges are not supported; publish each port with its own --publish"
        ));
    }
    s.parse::<u16>()
        .map(u32::from)
        .map_err(|_| format!("{what} {s:?}: expected a port 0-65535"))
}

/// Docker's `--publish`: `[PUBLISHED:]TARGET[/PROTOCOL]` or the long form
/// `published=8080,target=80,protocol=udp[,mode=host]`.
pub fn parse_publish(s: &str) -> Result<pb::PortConfig, String> {
    let mut p = pb::PortConfig {
        target: 0,
        published: 0,
        protocol: "tcp".into(),
    };
    if s.contains('=') {
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} in {s:?}: expected KEY=VALUE"))?;
            match k.trim() {
                "target" => p.target = parse_port_number(v, "target")?,
                "published" => p.published = parse_port_number(v, "published")?,
                "protocol" => p.protocol = v.to_ascii_lowercase(),
                // Every port is published on the node running the task
                // (Swarm's mode=host); there is no routing mesh to choose.
                "mode" if matches!(v, "host" | "ingress") => {}
                "mode" => {
                    return Err(format!("mode={v}: expected \"host\" (or \"ingress\")"));
                }
                other => {
                    return Err(format!(
                        "{other:?} in {s:?}: expected target, published, protocol or mode"
                    ));
                }
            }
        }
    } else {
        let (ports, proto) = match s.split_once('/') {
            Some((ports, proto)) => (ports, proto.to_ascii_lowercase()),
            None => (s, "tcp".to_string()),
        };
        p.protocol = proto;
        match ports.split_once(':') {
            Some((published, target)) => {
                if target.contains(':') {
                    return Err(format!(
                        "{s:?}: expected [PUBLISHED:]TARGET[/PROTOCOL] (no host IP: ports are \
                         published on every address of the task's node)"
                    ));
                }
                p.published = parse_port_number(published, "published port")?;
                p.target = parse_port_number(target, "target port")?;
            }
            None => p.target = parse_port_number(ports, "target port")?,
        }
    }
    if p.target == 0 {
        return Err(format!("{s:?}: expected a target port 1-65535"));
    }
    if !matches!(p.protocol.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!(
            "{s:?}: protocol {:?}: expected tcp, udp or sctp",
            p.protocol
        ));
    }
    Ok(p)
}

/// Docker's `--mount`: `type=volume|bind,source=...,target=...[,readonly]`
/// (`src`, `dst`/`destination`, `ro` accepted).
pub fn parse_mount(s: &str) -> Result<pb::Mount, String> {
    let mut m = pb::Mount {
        r#type: "volume".into(),
        ..Default::default()
    };
    for part in s.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let v = v.to_string();
        match k.trim() {
            "type" if matches!(v.as_str(), "volume" | "bind") => m.r#type = v,
            "type" => {
                return Err(format!(
                    "type={v}: expected \"volume\" or \"bind\" (tmpfs and npipe mounts are not \
                     supported)"
                ));
            }
            "source" | "src" => m.source = v,
            "target" | "dst" | "destination" => m.target = v,
            "readonly" | "ro" => {
                m.read_only = match v.as_str() {
                    "" | "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(format!("{part:?}: expected readonly[=true|false]")),
                }
            }
            other => {
                return Err(format!(
                    "{other:?} in {s:?}: expected type, source, target or readonly"
                ));
            }
        }
    }
    if m.target.is_empty() {
        return Err(format!("{s:?}: target= is required"));
    }
    Ok(m)
}

/// Docker's `--secret` and `--config`: `NAME`, or
/// `source=NAME[,target=PATH][,uid=N][,gid=N][,mode=0440]` (`src`
/// accepted; mode in octal). The scheduler fills in the defaults: secrets
/// at /run/secrets/NAME, configs at /NAME, mode 0444, uid and gid 0.
pub fn parse_file_ref(s: &str) -> Result<pb::FileReference, String> {
    let mut r = pb::FileReference::default();
    if !s.contains('=') {
        r.source = s.to_string();
    } else {
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} in {s:?}: expected KEY=VALUE"))?;
            let id = |what: &str| {
                v.parse::<u32>()
                    .map_err(|_| format!("{what}={v}: expected a number"))
            };
            match k.trim() {
                "source" | "src" => r.source = v.to_string(),
                "target" => r.target = v.to_string(),
                "uid" => r.uid = id("uid")?,
                "gid" => r.gid = id("gid")?,
                "mode" => {
                    r.mode = u32::from_str_radix(v, 8)
                        .ok()
                        .filter(|m| *m <= 0o777)
                        .ok_or_else(|| {
                            format!("mode={v}: expected octal permission bits, e.g. 0400")
                        })?;
                }
                other => {
                    return Err(format!(
                        "{other:?} in {s:?}: expected source, target, uid, gid or mode"
                    ));
                }
            }
        }
    }
    if r.source.is_empty() {
        return Err(format!("{s:?}: source= is required"));
    }
    Ok(r)
}

/// An env file as Docker reads it: `KEY=value` lines, `#` comments and
/// blank lines skipped, a bare `KEY` takes this shell's value (skipped
/// when unset).
pub fn read_env_file(path: &Path) -> Result<Vec<String>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::msg(format!("--env-file {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, _)) if k.trim().is_empty() => {
                return Err(Error::msg(format!(
                    "--env-file {}:{}: expected KEY=value",
                    path.display(),
                    i + 1
                )));
            }
            Some(_) => out.push(line.to_string()),
            None => {
                let key = line.trim_end();
                if let Ok(v) = std::env::var(key) {
                    out.push(format!("{key}={v}"));
                }
            }
        }
    }
    Ok(out)
}

/// Settings with one value each, shared by `create` and `update`: given,
/// they replace that field of the spec.
#[derive(Debug, Clone, Default, Args)]
pub struct SpecFlags {
    /// Number of tasks (replicated services).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub replicas: Option<u64>,

    #[command(flatten)]
    pub container: ContainerFlags,
    #[command(flatten)]
    pub health: HealthFlags,
    #[command(flatten)]
    pub placement: PlacementFlags,
    #[command(flatten)]
    pub resources: ResourceFlags,
    #[command(flatten)]
    pub restart: RestartFlags,
    #[command(flatten)]
    pub rollout: RolloutFlags,
}

#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Container")]
pub struct ContainerFlags {
    /// User the command runs as (USER[:GROUP], names or numbers).
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,

    /// Working directory inside the container.
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,

    /// Overrides the image's ENTRYPOINT; split as a shell would
    /// ("sh -c 'echo hi'"); "" restores the image's.
    #[arg(long, value_name = "COMMAND", value_parser = parse_words)]
    pub entrypoint: Option<Words>,

    /// Signal that stops the container (e.g. SIGQUIT) [default: the image's, else SIGTERM].
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,

    /// Time between the stop signal and SIGKILL [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub stop_grace_period: Option<Duration>,
}

#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Health check (overrides the image's HEALTHCHECK)")]
pub struct HealthFlags {
    /// Command run in the container to check its health (by /bin/sh -c);
    /// a task is running once it passes.
    #[arg(long, value_name = "COMMAND")]
    pub health_cmd: Option<String>,

    /// Time between checks.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub health_interval: Option<Duration>,

    /// Longest a check may take.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub health_timeout: Option<Duration>,

    /// Failures in a row that make the container unhealthy.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub health_retries: Option<u32>,

    /// Start-up time during which failures do not count.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub health_start_period: Option<Duration>,

    /// Disable any health check, the image's included.
    #[arg(long, conflicts_with_all = ["health_cmd", "health_interval", "health_timeout", "health_retries", "health_start_period"])]
    pub no_healthcheck: bool,
}

#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Placement")]
pub struct PlacementFlags {
    /// At most this many tasks of the service on one node (0: no limit).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub replicas_max_per_node: Option<u32>,
}

#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Resources")]
pub struct ResourceFlags {
    /// CPUs reserved on the node: a task is placed only where they are free
    /// (e.g. 0.5).
    #[arg(long, value_name = "CPUS", value_parser = parse_cpus)]
    pub reserve_cpu: Option<i64>,

    /// Memory reserved on the node (e.g. 512M, 1G, 1.5g).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub reserve_memory: Option<i64>,

    /// CPUs the container may use (e.g. 1.5).
    #[arg(long, value_name = "CPUS", value_parser = parse_cpus)]
    pub limit_cpu: Option<i64>,

    /// Memory the container may use (e.g. 512M; at least 6M).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub limit_memory: Option<i64>,

    /// Processes the container may run (0: no limit).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub limit_pids: Option<i64>,
}

#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Restart policy")]
pub struct RestartFlags {
    /// When an ended task is replaced [default: any].
    #[arg(long, value_enum, value_name = "CONDITION")]
    pub restart_condition: Option<RestartCondition>,

    /// Wait before a restart, doubled after each failure in a row up to 5m
    /// [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub restart_delay: Option<Duration>,

    /// Restarts before giving up (0: never give up).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub restart_max_attempts: Option<u32>,

    /// Window in which restarts count toward --restart-max-attempts (0: all count).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub restart_window: Option<Duration>,
}

#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Rolling updates and rollbacks")]
pub struct RolloutFlags {
    /// Tasks replaced at once by an update (0: all at once) [default: 1].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub update_parallelism: Option<u32>,

    /// Wait between batches of an update.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub update_delay: Option<Duration>,

    /// Stop the old task before its replacement starts, or start the new
    /// one first [default: stop-first].
    #[arg(long, value_enum, value_name = "ORDER")]
    pub update_order: Option<Order>,

    /// How long each new task is watched once up; a failure within it
    /// counts as a failed update [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub update_monitor: Option<Duration>,

    /// Failed tasks / tasks updated tolerated before the failure action
    /// (0 to 1) [default: 0].
    #[arg(long, value_name = "RATIO")]
    pub update_max_failure_ratio: Option<f64>,

    /// What a failing update does [default: pause].
    #[arg(long, value_enum, value_name = "ACTION")]
    pub update_failure_action: Option<FailureAction>,

    /// Tasks replaced at once by a rollback (0: all at once) [default: 1].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub rollback_parallelism: Option<u32>,

    /// Wait between batches of a rollback.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub rollback_delay: Option<Duration>,

    /// Order of a rollback's replacements [default: stop-first].
    #[arg(long, value_enum, value_name = "ORDER")]
    pub rollback_order: Option<Order>,

    /// How long each task of a rollback is watched once up [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub rollback_monitor: Option<Duration>,

    /// Failed tasks / tasks rolled back tolerated (0 to 1) [default: 0].
    #[arg(long, value_name = "RATIO")]
    pub rollback_max_failure_ratio: Option<f64>,

    /// What a failing rollback does: pause or continue [default: pause].
    #[arg(long, value_enum, value_name = "ACTION")]
    pub rollback_failure_action: Option<FailureAction>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailureAction {
    Pause,
    Continue,
    Rollback,
}

impl FailureAction {
    fn as_str(self) -> &'static str {
        match self {
            FailureAction::Pause => "pause",
            FailureAction::Continue => "continue",
            FailureAction::Rollback => "rollback",
        }
    }
}

/// One rollout's flags (update or rollback).
struct Rollout {
    parallelism: Option<u32>,
    delay: Option<Duration>,
    order: Option<Order>,
    monitor: Option<Duration>,
    max_failure_ratio: Option<f64>,
    failure_action: Option<FailureAction>,
}

fn rollout_config(c: &mut Option<pb::UpdateConfig>, r: Rollout) {
    if r.parallelism.is_none()
        && r.delay.is_none()
        && r.order.is_none()
        && r.monitor.is_none()
        && r.max_failure_ratio.is_none()
        && r.failure_action.is_none()
    {
        return;
    }
    // A config the scheduler never sent has the defaults: 0 would mean
    // "all at once".
    let c = c.get_or_insert_with(|| pb::UpdateConfig {
        parallelism: 1,
        order: "stop-first".into(),
        ..Default::default()
    });
    if let Some(p) = r.parallelism {
        c.parallelism = p;
    }
    if let Some(d) = r.delay {
        c.delay = Some(to_proto_duration(d));
    }
    if let Some(o) = r.order {
        c.order = o.as_str().into();
    }
    if let Some(m) = r.monitor {
        c.monitor = Some(to_proto_duration(m));
    }
    if let Some(x) = r.max_failure_ratio {
        c.max_failure_ratio = x;
    }
    if let Some(a) = r.failure_action {
        c.failure_action = a.as_str().into();
    }
}

impl SpecFlags {
    /// Applies every flag given to `spec`. `--replicas` on a global
    /// service is refused here (the scheduler would refuse the mode
    /// change less clearly).
    pub fn apply(&self, spec: &mut pb::ServiceSpec) -> Result<(), Error> {
        if let Some(n) = self.replicas {
            if matches!(spec.mode, Some(pb::service_spec::Mode::Global(_))) {
                return Err(Error::msg(format!(
                    "--replicas: service {} is global (one task per node)",
                    spec.name
                )));
            }
            spec.mode = Some(pb::service_spec::Mode::Replicated(pb::Replicated {
                replicas: n,
            }));
        }
        let c = &self.container;
        if let Some(u) = &c.user {
            spec.user.clone_from(u);
        }
        if let Some(w) = &c.workdir {
            spec.workdir.clone_from(w);
        }
        if let Some(Words(e)) = &c.entrypoint {
            spec.command.clone_from(e);
        }
        if let Some(s) = &c.stop_signal {
            spec.stop_signal.clone_from(s);
        }
        if let Some(d) = c.stop_grace_period {
            spec.stop_grace_period = Some(to_proto_duration(d));
        }

        let h = &self.health;
        if h.no_healthcheck {
            spec.healthcheck = Some(pb::HealthCheck {
                test: vec!["NONE".into()],
                ..Default::default()
            });
        } else if h.health_cmd.is_some()
            || h.health_interval.is_some()
            || h.health_timeout.is_some()
            || h.health_retries.is_some()
            || h.health_start_period.is_some()
        {
            let hc = spec.healthcheck.get_or_insert_with(Default::default);
            if hc.test.first().is_some_and(|t| t == "NONE") {
                hc.test.clear();
            }
            if let Some(cmd) = &h.health_cmd {
                hc.test = vec!["CMD-SHELL".into(), cmd.clone()];
            }
            if let Some(d) = h.health_interval {
                hc.interval = Some(to_proto_duration(d));
            }
            if let Some(d) = h.health_timeout {
                hc.timeout = Some(to_proto_duration(d));
            }
            if let Some(n) = h.health_retries {
                hc.retries = n;
            }
            if let Some(d) = h.health_start_period {
                hc.start_period = Some(to_proto_duration(d));
            }
        }

        if let Some(n) = self.placement.replicas_max_per_node {
            spec.placement
                .get_or_insert_with(Default::default)
                .max_replicas_per_node = n;
        }

        let r = &self.resources;
        let any_reservation = r.reserve_cpu.is_some() || r.reserve_memory.is_some();
        let any_limit = r.limit_cpu.is_some() || r.limit_memory.is_some() || r.limit_pids.is_some();
        if any_reservation || any_limit {
            let res = spec.resources.get_or_insert_with(Default::default);
            if any_reservation {
                let x = res.reservations.get_or_insert_with(Default::default);
                if let Some(v) = r.reserve_cpu {
                    x.nano_cpus = v;
                }
                if let Some(v) = r.reserve_memory {
                    x.memory_bytes = v;
                }
            }
            if any_limit {
                let x = res.limits.get_or_insert_with(Default::default);
                if let Some(v) = r.limit_cpu {
                    x.nano_cpus = v;
                }
                if let Some(v) = r.limit_memory {
                    x.memory_bytes = v;
                }
                if let Some(v) = r.limit_pids {
                    x.pids = v;
                }
            }
        }

        let rs = &self.restart;
        if rs.restart_condition.is_some()
            || rs.restart_delay.is_some()
            || rs.restart_max_attempts.is_some()
            || rs.restart_window.is_some()
        {
            let p = spec.restart_policy.get_or_insert_with(Default::default);
            if let Some(c) = rs.restart_condition {
                p.condition = c.as_str().into();
            }
            if let Some(d) = rs.restart_delay {
                p.delay = Some(to_proto_duration(d));
            }
            if let Some(n) = rs.restart_max_attempts {
                p.max_attempts = n;
            }
            if let Some(d) = rs.restart_window {
                p.window = Some(to_proto_duration(d));
            }
        }

        let ro = &self.rollout;
        rollout_config(
            &mut spec.update_config,
            Rollout {
                parallelism: ro.update_parallelism,
                delay: ro.update_delay,
                order: ro.update_order,
                monitor: ro.update_monitor,
                max_failure_ratio: ro.update_max_failure_ratio,
                failure_action: ro.update_failure_action,
            },
        );
        rollout_config(
            &mut spec.rollback_config,
            Rollout {
                parallelism: ro.rollback_parallelism,
                delay: ro.rollback_delay,
                order: ro.rollback_order,
                monitor: ro.rollback_monitor,
                max_failure_ratio: ro.rollback_max_failure_ratio,
                failure_action: ro.rollback_failure_action,
            },
        );
        Ok(())
    }
}

/// `KEY=value` entries with `adds` replacing entries of the same key, after
/// removing the keys in `rms` (Docker's `--env-add`/`--env-rm`).
pub fn edit_env(env: &mut Vec<String>, adds: &[String], rms: &[String]) {
    let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_string();
    env.retain(|e| !rms.contains(&key(e)));
    for a in adds {
        let k = key(a);
        if let Some(slot) = env.iter_mut().find(|e| key(e) == k) {
            slot.clone_from(a);
        } else {
            env.push(a.clone());
        }
    }
}

/// A constraint or preference as the scheduler prints it, for removal by
/// text: no blanks, the attribute in lower case.
pub fn normalize_expr(e: &str) -> String {
    let e: String = e.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(i) = e.find(['=', '!']) else {
        return e;
    };
    let (key, rest) = e.split_at(i);
    let lower = key.to_ascii_lowercase();
    // Label names keep their case; the rest of the attribute does not.
    let key = ["node.labels.", "engine.labels."]
        .iter()
        .find(|p| lower.starts_with(**p))
        .map_or_else(|| lower.clone(), |p| format!("{p}{}", &key[p.len()..]));
    format!("{key}{rest}")
}

/// Whether `p` matches a `--publish-rm` value: same target, and same
/// protocol and published port when the value gives them.
pub fn port_matches(p: &pb::PortConfig, rm: &PortRm) -> bool {
    p.target == rm.target
        && rm.protocol.as_deref().is_none_or(|x| x == p.protocol)
        && rm.published.is_none_or(|x| x == p.published)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRm {
    pub target: u32,
    pub published: Option<u32>,
    pub protocol: Option<String>,
}

/// `--publish-rm`: `TARGET[/PROTOCOL]`, `PUBLISHED:TARGET[/PROTOCOL]` or
/// the long form.
pub fn parse_publish_rm(s: &str) -> Result<PortRm, String> {
    let p = parse_publish(s)?;
    let has_proto = s.contains('/') || s.contains("protocol=");
    let has_published = s.contains(':') || s.contains("published=");
    Ok(PortRm {
        target: p.target,
        published: has_published.then_some(p.published),
        protocol: has_proto.then_some(p.protocol),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_short_and_long() {
        let p = parse_publish("8080:80").unwrap();
        assert_eq!(
            (p.published, p.target, p.protocol.as_str()),
            (8080, 80, "tcp")
        );
        let p = parse_publish("53/udp").unwrap();
        assert_eq!((p.published, p.target, p.protocol.as_str()), (0, 53, "udp"));
        let p = parse_publish("published=8080,target=80,protocol=udp,mode=host").unwrap();
        assert_eq!(
            (p.published, p.target, p.protocol.as_str()),
            (8080, 80, "udp")
        );
        for bad in [
            "70000:80",
            "80:0",
            "x",
            "8080:80/icmp",
            "1.2.3.4:80:80",
            "8000-8001:80-81",
            "target=80,color=red",
            "published=8080",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
        let rm = parse_publish_rm("80").unwrap();
        let p = parse_publish("8080:80/tcp").unwrap();
        assert!(port_matches(&p, &rm));
        assert!(!port_matches(&p, &parse_publish_rm("80/udp").unwrap()));
        assert!(!port_matches(&p, &parse_publish_rm("9090:80").unwrap()));
    }

    #[test]
    fn secrets_and_configs() {
        let r = parse_file_ref("db").unwrap();
        assert_eq!((r.source.as_str(), r.mode), ("db", 0));
        let r = parse_file_ref("source=db,target=pw,uid=1000,gid=10,mode=0400").unwrap();
        assert_eq!(r.target, "pw");
        assert_eq!((r.uid, r.gid, r.mode), (1000, 10, 0o400));
        assert!(parse_file_ref("target=x").is_err());
        assert!(parse_file_ref("source=db,mode=999").is_err());
        assert!(parse_file_ref("source=db,size=1").is_err());
    }

    #[test]
    fn mounts() {
        let m = parse_mount("type=bind,source=/srv,target=/data,readonly").unwrap();
        assert_eq!(
            (
                m.r#type.as_str(),
                m.source.as_str(),
                m.target.as_str(),
                m.read_only
            ),
            ("bind", "/srv", "/data", true)
        );
        let m = parse_mount("src=cache,dst=/cache").unwrap();
        assert_eq!((m.r#type.as_str(), m.read_only), ("volume", false));
        assert!(parse_mount("type=tmpfs,target=/x").is_err());
        assert!(parse_mount("source=x").is_err());
        assert!(parse_mount("target=/x,size=1").is_err());
    }

    #[test]
    fn env_edits() {
        let mut env = vec!["A=1".to_string(), "B=2".into(), "C".into()];
        edit_env(
            &mut env,
            &["B=3".into(), "D=4".into()],
            &["A".into(), "C".into()],
        );
        assert_eq!(env, ["B=3", "D=4"]);
    }

    #[test]
    fn exprs_normalize() {
        assert_eq!(
            normalize_expr("node.labels.Zone == eu"),
            "node.labels.Zone==eu"
        );
        assert_eq!(normalize_expr("NODE.ROLE!=manager"), "node.role!=manager");
        assert_eq!(
            normalize_expr("spread = node.labels.rack"),
            "spread=node.labels.rack"
        );
    }

    #[test]
    fn flags_fill_the_spec() {
        let flags = SpecFlags {
            replicas: Some(3),
            rollout: RolloutFlags {
                update_delay: Some(Duration::from_secs(10)),
                ..Default::default()
            },
            resources: ResourceFlags {
                limit_memory: Some(512 << 20),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut spec = pb::ServiceSpec::default();
        flags.apply(&mut spec).unwrap();
        assert_eq!(
            spec.mode,
            Some(pb::service_spec::Mode::Replicated(pb::Replicated {
                replicas: 3
            }))
        );
        let u = spec.update_config.unwrap();
        assert_eq!(
            u.parallelism, 1,
            "an update config sent keeps the default parallelism"
        );
        assert_eq!(u.delay.unwrap().seconds, 10);
        assert_eq!(
            spec.resources.unwrap().limits.unwrap().memory_bytes,
            512 << 20
        );
        let mut global = pb::ServiceSpec {
            mode: Some(pb::service_spec::Mode::Global(pb::Global {})),
            ..Default::default()
        };
        assert!(flags.apply(&mut global).is_err());
    }
}
