//! Prost types <-> domain types. What comes in is validated here, once:
//! [`spec_from_proto`] gives a spec that passed every check or an error
//! naming the field (`spec.ports[0].target`); agents' reports are checked
//! the same way before the manager sees them.

use std::time::Duration;

use bronze_proto::scheduler::v1 as pb;

use crate::model::spec;
use crate::model::{
    Availability, EngineInfo, FileRef, HealthCheck, Invalid, Kind, Mode, Mount, MountKind, Node,
    NodeState, Object, Order, PortConfig, Protocol, Resources, RestartCondition, RestartPolicy,
    Role, Service, ServiceSpec, Task, TaskState, TaskStatus, Time, UpdateConfig,
};

pub fn duration_from(
    field: &str,
    d: Option<&prost_types::Duration>,
) -> Result<Option<Duration>, Invalid> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 {
        return Err(Invalid::new(field, "expected a duration of 0 or more"));
    }
    if d.nanos >= 1_000_000_000 {
        return Err(Invalid::new(field, "nanos must be below 1s"));
    }
    Ok(Some(
        Duration::from_secs(d.seconds.unsigned_abs())
            + Duration::from_nanos(d.nanos.unsigned_abs().into()),
    ))
}

pub fn duration_to(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub fn time_to(t: Time) -> Option<prost_types::Timestamp> {
    (!t.is_zero()).then(|| prost_types::Timestamp {
        seconds: i64::try_from(t.0 / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((t.0 % 1000) * 1_000_000).unwrap_or(0),
    })
}

pub fn time_from(t: Option<&prost_types::Timestamp>) -> Time {
    t.map_or(Time(0), |t| {
        let ms = t.seconds.max(0).unsigned_abs() * 1000
            + u64::from(t.nanos.max(0).unsigned_abs() / 1_000_000);
        Time(ms)
    })
}

fn port(p: &pb::PortConfig, field: &str) -> Result<PortConfig, Invalid> {
    let target = u16::try_from(p.target)
        .ok()
        .filter(|t| *t > 0)
        .ok_or_else(|| {
            Invalid::new(
                format!("{field}.target"),
                format!("{}: expected a port 1-65535", p.target),
            )
        })?;
    let published = u16::try_from(p.published).map_err(|_| {
        Invalid::new(
            format!("{field}.published"),
            format!(
                "{}: expected a port 0-65535 (0: chosen by the engine)",
                p.published
            ),
        )
    })?;
    let protocol =
        Protocol::parse(&p.protocol).map_err(|m| Invalid::new(format!("{field}.protocol"), m))?;
    Ok(PortConfig {
        target,
        published,
        protocol,
    })
}

fn resources(r: Option<&pb::Resources>) -> Resources {
    r.map(|r| Resources {
        nano_cpus: r.nano_cpus,
        memory_bytes: r.memory_bytes,
        pids: r.pids,
    })
    .unwrap_or_default()
}

fn update_config(u: Option<&pb::UpdateConfig>, field: &str) -> Result<UpdateConfig, Invalid> {
    let Some(u) = u else {
        return Ok(UpdateConfig::default());
    };
    Ok(UpdateConfig {
        parallelism: u64::from(u.parallelism),
        delay: duration_from(&format!("{field}.delay"), u.delay.as_ref())?.unwrap_or_default(),
        order: Order::parse(&u.order).map_err(|m| Invalid::new(format!("{field}.order"), m))?,
        monitor: duration_from(&format!("{field}.monitor"), u.monitor.as_ref())?
            .unwrap_or(crate::model::spec::DEFAULT_MONITOR),
        max_failure_ratio: if u.max_failure_ratio.is_finite() {
            u.max_failure_ratio
        } else {
            -1.0
        },
        failure_action: crate::model::spec::FailureAction::parse(&u.failure_action)
            .map_err(|m| Invalid::new(format!("{field}.failure_action"), m))?,
    })
}

/// A spec from a request, checked. Field names in errors are relative to
/// the spec (the caller prefixes `spec.`).
pub fn spec_from_proto(p: &pb::ServiceSpec) -> Result<ServiceSpec, Invalid> {
    let mut s = ServiceSpec::new(&p.name, &p.image);
    s.command = p.command.clone();
    s.args = p.args.clone();
    s.env = p.env.clone();
    s.labels = p
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    s.container_labels = p
        .container_labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    s.ports = p
        .ports
        .iter()
        .enumerate()
        .map(|(i, x)| port(x, &format!("ports[{i}]")))
        .collect::<Result<_, _>>()?;
    s.mounts = p
        .mounts
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let kind = match m.r#type.as_str() {
                "" | "volume" => MountKind::Volume,
                "bind" => MountKind::Bind,
                "tmpfs" => MountKind::Tmpfs,
                other => {
                    return Err(Invalid::new(
                        format!("mounts[{i}].type"),
                        format!("{other:?}: expected \"volume\", \"bind\" or \"tmpfs\""),
                    ));
                }
            };
            if m.tmpfs_size_bytes < 0 || (m.tmpfs_size_bytes > 0 && kind != MountKind::Tmpfs) {
                return Err(Invalid::new(
                    format!("mounts[{i}].tmpfs_size_bytes"),
                    "expected a size of 0 or more, on a tmpfs mount only",
                ));
            }
            Ok(Mount {
                kind,
                source: m.source.clone(),
                target: m.target.clone(),
                read_only: m.read_only,
                tmpfs_size_bytes: m.tmpfs_size_bytes,
            })
        })
        .collect::<Result<_, _>>()?;
    if let Some(h) = &p.healthcheck {
        s.healthcheck = Some(HealthCheck {
            test: h.test.clone(),
            interval: duration_from("healthcheck.interval", h.interval.as_ref())?
                .unwrap_or_default(),
            timeout: duration_from("healthcheck.timeout", h.timeout.as_ref())?.unwrap_or_default(),
            retries: h.retries,
            start_period: duration_from("healthcheck.start_period", h.start_period.as_ref())?
                .unwrap_or_default(),
        });
    }
    s.stop_signal =
        spec::normalize_signal(&p.stop_signal).map_err(|m| Invalid::new("stop_signal", m))?;
    if let Some(d) = duration_from("stop_grace_period", p.stop_grace_period.as_ref())? {
        s.stop_grace_period = d;
    }
    s.user = p.user.clone();
    s.workdir = p.workdir.clone();
    s.mode = match &p.mode {
        None => Mode::Replicated { replicas: 1 },
        Some(pb::service_spec::Mode::Replicated(r)) => Mode::Replicated {
            replicas: r.replicas,
        },
        Some(pb::service_spec::Mode::Global(_)) => Mode::Global,
    };
    if let Some(pl) = &p.placement {
        s.placement = spec::parse_placement(
            &pl.constraints,
            &pl.preferences,
            u64::from(pl.max_replicas_per_node),
        )
        .map_err(|e| e.within("placement"))?;
    }
    if let Some(r) = &p.resources {
        s.reservations = resources(r.reservations.as_ref());
        s.limits = resources(r.limits.as_ref());
    }
    if let Some(r) = &p.restart_policy {
        s.restart = RestartPolicy {
            condition: RestartCondition::parse(&r.condition)
                .map_err(|m| Invalid::new("restart_policy.condition", m))?,
            delay: duration_from("restart_policy.delay", r.delay.as_ref())?
                .unwrap_or(RestartPolicy::default().delay),
            max_attempts: r.max_attempts,
            window: duration_from("restart_policy.window", r.window.as_ref())?.unwrap_or_default(),
        };
    }
    s.update = update_config(p.update_config.as_ref(), "update_config")?;
    s.rollback = update_config(p.rollback_config.as_ref(), "rollback_config")?;
    s.hostname = p.hostname.clone();
    s.extra_hosts = p.extra_hosts.clone();
    s.endpoint_mode = p.endpoint_mode.clone();
    s.ingress = p.ingress;
    s.drain_delay = duration_from("drain_delay", p.drain_delay.as_ref())?
        .unwrap_or(crate::model::spec::DEFAULT_DRAIN_DELAY);
    s.secrets = p.secrets.iter().map(file_ref_from).collect();
    s.configs = p.configs.iter().map(file_ref_from).collect();
    spec::normalize_refs(&mut s)?;
    spec::validate(&s)?;
    Ok(s)
}

/// A reference as given; [`spec::normalize_refs`] checks it. Mode 0 is
/// the default (0444): a file nobody may read is surely a mistake.
fn file_ref_from(r: &pb::FileReference) -> FileRef {
    FileRef {
        source: r.source.clone(),
        target: r.target.clone(),
        uid: r.uid,
        gid: r.gid,
        mode: if r.mode == 0 {
            spec::DEFAULT_FILE_MODE
        } else {
            r.mode
        },
        version: r.version,
    }
}

fn file_ref_to(r: &FileRef) -> pb::FileReference {
    pb::FileReference {
        source: r.source.clone(),
        target: r.target.clone(),
        uid: r.uid,
        gid: r.gid,
        mode: r.mode,
        version: r.version,
    }
}

/// A secret or config as the API shows it: metadata, the services using
/// it, and (`with_data`, configs only) the latest version's data. A
/// secret's data never leaves through here.
pub fn object_to(o: &Object, services: Vec<String>, with_data: bool, index: u64) -> pb::DataObject {
    pb::DataObject {
        id: o.id.clone(),
        name: o.name.clone(),
        created_at: time_to(o.created_at),
        updated_at: time_to(o.updated_at),
        versions: o
            .versions
            .iter()
            .map(|v| pb::DataObjectVersion {
                version: v.version,
                created_at: time_to(v.created_at),
                labels: v
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                size: v.size,
            })
            .collect(),
        services,
        data: match (o.kind, with_data, o.latest()) {
            (Kind::Config, true, Some(v)) => v.data.0.clone(),
            _ => Vec::new(),
        },
        index,
    }
}

fn resources_to(r: &Resources) -> pb::Resources {
    pb::Resources {
        nano_cpus: r.nano_cpus,
        memory_bytes: r.memory_bytes,
        pids: r.pids,
    }
}

fn update_to(u: &UpdateConfig) -> pb::UpdateConfig {
    pb::UpdateConfig {
        parallelism: u32::try_from(u.parallelism).unwrap_or(u32::MAX),
        delay: Some(duration_to(u.delay)),
        order: u.order.as_str().into(),
        monitor: Some(duration_to(u.monitor)),
        max_failure_ratio: u.max_failure_ratio,
        failure_action: u.failure_action.as_str().into(),
    }
}

pub fn port_to(p: &PortConfig) -> pb::PortConfig {
    pb::PortConfig {
        target: u32::from(p.target),
        published: u32::from(p.published),
        protocol: p.protocol.as_str().into(),
    }
}

pub fn spec_to_proto(s: &ServiceSpec) -> pb::ServiceSpec {
    pb::ServiceSpec {
        name: s.name.clone(),
        image: s.image.clone(),
        command: s.command.clone(),
        args: s.args.clone(),
        env: s.env.clone(),
        labels: s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        container_labels: s
            .container_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ports: s.ports.iter().map(port_to).collect(),
        mounts: s
            .mounts
            .iter()
            .map(|m| pb::Mount {
                r#type: match m.kind {
                    MountKind::Volume => "volume".into(),
                    MountKind::Bind => "bind".into(),
                    MountKind::Tmpfs => "tmpfs".into(),
                },
                source: m.source.clone(),
                target: m.target.clone(),
                read_only: m.read_only,
                tmpfs_size_bytes: m.tmpfs_size_bytes,
            })
            .collect(),
        healthcheck: s.healthcheck.as_ref().map(|h| pb::HealthCheck {
            test: h.test.clone(),
            interval: Some(duration_to(h.interval)),
            timeout: Some(duration_to(h.timeout)),
            retries: h.retries,
            start_period: Some(duration_to(h.start_period)),
        }),
        stop_signal: s.stop_signal.clone(),
        stop_grace_period: Some(duration_to(s.stop_grace_period)),
        user: s.user.clone(),
        workdir: s.workdir.clone(),
        mode: Some(match s.mode {
            Mode::Replicated { replicas } => {
                pb::service_spec::Mode::Replicated(pb::Replicated { replicas })
            }
            Mode::Global => pb::service_spec::Mode::Global(pb::Global {}),
        }),
        placement: Some(pb::Placement {
            constraints: s
                .placement
                .constraints
                .iter()
                .map(ToString::to_string)
                .collect(),
            preferences: s
                .placement
                .preferences
                .iter()
                .map(ToString::to_string)
                .collect(),
            max_replicas_per_node: u32::try_from(s.placement.max_replicas_per_node)
                .unwrap_or(u32::MAX),
        }),
        resources: Some(pb::ResourceRequirements {
            reservations: Some(resources_to(&s.reservations)),
            limits: Some(resources_to(&s.limits)),
        }),
        restart_policy: Some(pb::RestartPolicy {
            condition: s.restart.condition.as_str().into(),
            delay: Some(duration_to(s.restart.delay)),
            max_attempts: s.restart.max_attempts,
            window: Some(duration_to(s.restart.window)),
        }),
        update_config: Some(update_to(&s.update)),
        rollback_config: Some(update_to(&s.rollback)),
        hostname: s.hostname.clone(),
        extra_hosts: s.extra_hosts.clone(),
        drain_delay: Some(duration_to(s.drain_delay)),
        secrets: s.secrets.iter().map(file_ref_to).collect(),
        configs: s.configs.iter().map(file_ref_to).collect(),
        endpoint_mode: s.endpoint_mode.clone(),
        ingress: s.ingress,
    }
}

pub fn state_to(s: TaskState) -> pb::TaskState {
    match s {
        TaskState::New => pb::TaskState::New,
        TaskState::Pending => pb::TaskState::Pending,
        TaskState::Assigned => pb::TaskState::Assigned,
        TaskState::Preparing => pb::TaskState::Preparing,
        TaskState::Starting => pb::TaskState::Starting,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Complete => pb::TaskState::Complete,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Shutdown => pb::TaskState::Shutdown,
        TaskState::Rejected => pb::TaskState::Rejected,
        TaskState::Orphaned => pb::TaskState::Orphaned,
    }
}

pub fn state_from(s: pb::TaskState) -> Option<TaskState> {
    Some(match s {
        pb::TaskState::Unspecified => return None,
        pb::TaskState::New => TaskState::New,
        pb::TaskState::Pending => TaskState::Pending,
        pb::TaskState::Assigned => TaskState::Assigned,
        pb::TaskState::Preparing => TaskState::Preparing,
        pb::TaskState::Starting => TaskState::Starting,
        pb::TaskState::Running => TaskState::Running,
        pb::TaskState::Complete => TaskState::Complete,
        pb::TaskState::Failed => TaskState::Failed,
        pb::TaskState::Shutdown => TaskState::Shutdown,
        pb::TaskState::Rejected => TaskState::Rejected,
        pb::TaskState::Orphaned => TaskState::Orphaned,
    })
}

pub fn status_to(s: &TaskStatus) -> pb::TaskStatus {
    pb::TaskStatus {
        state: state_to(s.state).into(),
        timestamp: time_to(s.timestamp),
        message: s.message.clone(),
        err: s.err.clone(),
        exit_code: s.exit_code,
        container_id: s.container_id.clone(),
        health: s.health.clone(),
        ports: s.ports.iter().map(port_to).collect(),
    }
}

/// Longest text an agent may put in a status field.
const MAX_TEXT: usize = 4096;

fn bounded(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_string();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A status an agent reported, checked: a known state, bounded texts,
/// valid ports. `None` when it cannot be a real report.
pub fn status_from(s: &pb::TaskStatus) -> Option<TaskStatus> {
    let state = state_from(pb::TaskState::try_from(s.state).ok()?)?;
    let ports = s
        .ports
        .iter()
        .map(|p| port(p, "ports").ok())
        .collect::<Option<Vec<_>>>()?;
    Some(TaskStatus {
        state,
        timestamp: time_from(s.timestamp.as_ref()),
        message: bounded(&s.message),
        err: bounded(&s.err),
        exit_code: s.exit_code,
        container_id: bounded(&s.container_id),
        health: bounded(&s.health),
        ports,
    })
}

pub fn task_to(t: &Task, image: &str) -> pb::Task {
    pb::Task {
        id: t.id.clone(),
        service_id: t.service_id.clone(),
        service_name: t.service_name.clone(),
        slot: t.slot,
        node_id: t.node_id.clone(),
        spec_version: t.spec_version,
        desired_state: match t.desired {
            crate::model::Desired::Running => pb::TaskState::Running.into(),
            crate::model::Desired::Shutdown => pb::TaskState::Shutdown.into(),
        },
        status: Some(status_to(&t.status)),
        created_at: time_to(t.created_at),
        attempt: u32::try_from(t.restarts.len()).unwrap_or(u32::MAX),
        start_after: time_to(t.start_after),
        image: image.to_string(),
        outdated: false,
        drain: (!t.drain.is_zero()).then(|| duration_to(t.drain)),
        up_at: time_to(t.up_at),
    }
}

pub fn service_to(s: &Service, spec: &ServiceSpec) -> pb::Service {
    pb::Service {
        id: s.id.clone(),
        spec: Some(spec_to_proto(spec)),
        version: s.version,
        previous_version: s.previous_version,
        created_at: time_to(s.created_at),
        updated_at: time_to(s.updated_at),
        update_status: (s.update.state != crate::model::UpdateState::None).then(|| {
            pb::UpdateStatus {
                state: s.update.state.as_str().into(),
                started_at: time_to(s.update.started_at),
                completed_at: time_to(s.update.completed_at),
                message: s.update.message.clone(),
                automatic: s.update.automatic,
                autodeploy_reference: s
                    .update
                    .autodeploy
                    .as_ref()
                    .map(|p| p.reference())
                    .unwrap_or_default(),
                autodeploy_digest: s
                    .update
                    .autodeploy
                    .as_ref()
                    .map(|p| p.digest.clone())
                    .unwrap_or_default(),
            }
        }),
        autodeploy_queued: s
            .autodeploy_queued
            .as_ref()
            .map(|p| format!("{}@{}", p.reference(), p.digest))
            .unwrap_or_default(),
    }
}

pub fn node_to(n: &Node, reserved: &Resources, tasks: u64) -> pb::Node {
    pb::Node {
        id: n.id.clone(),
        hostname: n.hostname.clone(),
        role: match n.role {
            Role::Worker => pb::NodeRole::Worker.into(),
            Role::Manager => pb::NodeRole::Manager.into(),
        },
        labels: n
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        availability: match n.availability {
            Availability::Active => pb::NodeAvailability::Active.into(),
            Availability::Pause => pb::NodeAvailability::Pause.into(),
            Availability::Drain => pb::NodeAvailability::Drain.into(),
        },
        state: match n.state {
            NodeState::Ready => pb::NodeState::Ready.into(),
            NodeState::Down => pb::NodeState::Down.into(),
            NodeState::Unknown => pb::NodeState::Unspecified.into(),
        },
        state_message: n.state_message.clone(),
        resources: Some(resources_to(&n.resources)),
        engine: Some(pb::EngineInfo {
            version: n.engine.version.clone(),
            labels: n
                .engine
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            os: n.engine.os.clone(),
            arch: n.engine.arch.clone(),
        }),
        address: n.address.clone(),
        created_at: time_to(n.created_at),
        updated_at: time_to(n.updated_at),
        reserved: Some(resources_to(reserved)),
        tasks,
    }
}

pub fn availability_from(a: i32) -> Result<Option<Availability>, Invalid> {
    match pb::NodeAvailability::try_from(a) {
        Ok(pb::NodeAvailability::Unspecified) => Ok(None),
        Ok(pb::NodeAvailability::Active) => Ok(Some(Availability::Active)),
        Ok(pb::NodeAvailability::Pause) => Ok(Some(Availability::Pause)),
        Ok(pb::NodeAvailability::Drain) => Ok(Some(Availability::Drain)),
        Err(_) => Err(Invalid::new(
            "availability",
            format!("{a}: not a known availability"),
        )),
    }
}

/// What an agent's hello says, checked.
pub fn hello_from(h: &pb::Hello) -> Result<crate::manager::Hello, Invalid> {
    let hostname = h.hostname.trim().to_ascii_lowercase();
    if hostname.is_empty()
        || hostname.len() > 253
        || !hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(Invalid::new(
            "hello.hostname",
            format!("{:?}: expected a host name", h.hostname),
        ));
    }
    if !h.node_id.is_empty()
        && (h.node_id.len() > 64 || !h.node_id.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        return Err(Invalid::new("hello.node_id", "expected letters and digits"));
    }
    let res = resources(h.resources.as_ref());
    if res.nano_cpus < 0 || res.memory_bytes < 0 {
        return Err(Invalid::new("hello.resources", "expected 0 or more"));
    }
    let engine = h
        .engine
        .as_ref()
        .map_or_else(EngineInfo::default, |e| EngineInfo {
            version: bounded(&e.version),
            labels: e
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            os: bounded(&e.os),
            arch: bounded(&e.arch),
        });
    let mut tasks = Vec::with_capacity(h.tasks.len());
    for r in &h.tasks {
        if let Some(s) = r.status.as_ref().and_then(status_from) {
            tasks.push((r.task_id.clone(), s));
        }
    }
    Ok(crate::manager::Hello {
        node_id: h.node_id.clone(),
        hostname,
        labels: h
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        resources: res,
        engine,
        address: bounded(&h.address),
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> pb::ServiceSpec {
        pb::ServiceSpec {
            name: "web".into(),
            image: "busybox".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_spec_round_trips() {
        let mut p = base();
        p.ports.push(pb::PortConfig {
            target: 80,
            published: 8080,
            protocol: "udp".into(),
        });
        p.placement = Some(pb::Placement {
            constraints: vec!["node.labels.zone==eu".into()],
            preferences: vec!["spread=node.labels.rack".into()],
            max_replicas_per_node: 2,
        });
        p.mode = Some(pb::service_spec::Mode::Replicated(pb::Replicated {
            replicas: 3,
        }));
        let s = spec_from_proto(&p).expect("valid");
        let back = spec_from_proto(&spec_to_proto(&s)).expect("valid again");
        assert_eq!(s, back);
        assert_eq!(s.replicas(), Some(3));
    }

    #[test]
    fn bad_fields_are_named() {
        type Edit = Box<dyn Fn(&mut pb::ServiceSpec)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|p| p.name = "bad name".into()), "name"),
            (Box::new(|p| p.image = "UPPER".into()), "image"),
            (
                Box::new(|p| {
                    p.ports.push(pb::PortConfig {
                        target: 70000,
                        published: 0,
                        protocol: String::new(),
                    })
                }),
                "ports[0].target",
            ),
            (
                Box::new(|p| {
                    p.restart_policy = Some(pb::RestartPolicy {
                        condition: "sometimes".into(),
                        ..Default::default()
                    })
                }),
                "restart_policy.condition",
            ),
            (
                Box::new(|p| {
                    p.stop_grace_period = Some(prost_types::Duration {
                        seconds: -1,
                        nanos: 0,
                    })
                }),
                "stop_grace_period",
            ),
            (
                Box::new(|p| {
                    p.placement = Some(pb::Placement {
                        constraints: vec!["zone=eu".into()],
                        ..Default::default()
                    })
                }),
                "placement.constraints[0]",
            ),
            (
                Box::new(|p| {
                    p.update_config = Some(pb::UpdateConfig {
                        order: "sideways".into(),
                        ..Default::default()
                    })
                }),
                "update_config.order",
            ),
        ];
        for (edit, field) in cases {
            let mut p = base();
            edit(&mut p);
            let e = spec_from_proto(&p).expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn agent_reports_are_bounded() {
        let s = pb::TaskStatus {
            state: pb::TaskState::Failed.into(),
            err: "x".repeat(100_000),
            ..Default::default()
        };
        assert_eq!(status_from(&s).expect("ok").err.len(), MAX_TEXT);
        let s = pb::TaskStatus {
            state: 99,
            ..Default::default()
        };
        assert!(status_from(&s).is_none());
    }
}
