//! `--output json` and `inspect`: the API's objects as JSON.
//!
//! Field names are the proto's (snake_case), so the JSON reads like
//! `proto/bronze/scheduler/v1/scheduler.proto`; the values are the ones
//! people type: durations as flags take them ("1m30s"), times in RFC 3339,
//! enums as lower-case words ("running", "drain"), 64-bit numbers as
//! numbers. The mode oneof is `"mode": "replicated"` with `"replicas"`
//! beside it. Absent optional messages are `null`.

use bronze_proto::scheduler::v1 as pb;
use serde_json::{Map, Value, json};

use crate::units::{proto_duration_text, rfc3339};
use crate::words;

fn duration(d: Option<&prost_types::Duration>) -> Value {
    match d {
        Some(_) => Value::String(proto_duration_text(d)),
        None => Value::Null,
    }
}

fn time(t: Option<&prost_types::Timestamp>) -> Value {
    t.map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

fn map(m: &std::collections::HashMap<String, String>) -> Value {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    let mut out = Map::new();
    for k in keys {
        out.insert(k.clone(), Value::String(m[k].clone()));
    }
    Value::Object(out)
}

pub fn port(p: &pb::PortConfig) -> Value {
    json!({
        "target": p.target,
        "published": p.published,
        "protocol": if p.protocol.is_empty() { "tcp" } else { p.protocol.as_str() },
    })
}

fn resources(r: Option<&pb::Resources>) -> Value {
    let r = r.cloned().unwrap_or_default();
    json!({
        "nano_cpus": r.nano_cpus,
        "memory_bytes": r.memory_bytes,
        "pids": r.pids,
    })
}

fn update_config(u: Option<&pb::UpdateConfig>) -> Value {
    u.map_or(Value::Null, |u| {
        json!({
            "parallelism": u.parallelism,
            "delay": duration(u.delay.as_ref()),
            "order": u.order,
        })
    })
}

pub fn spec(s: &pb::ServiceSpec) -> Value {
    let placement = s.placement.clone().unwrap_or_default();
    let res = s.resources.unwrap_or_default();
    let mut v = json!({
        "name": s.name,
        "image": s.image,
        "command": s.command,
        "args": s.args,
        "env": s.env,
        "labels": map(&s.labels),
        "container_labels": map(&s.container_labels),
        "ports": s.ports.iter().map(port).collect::<Vec<_>>(),
        "mounts": s.mounts.iter().map(|m| json!({
            "type": m.r#type,
            "source": m.source,
            "target": m.target,
            "read_only": m.read_only,
        })).collect::<Vec<_>>(),
        "healthcheck": s.healthcheck.as_ref().map_or(Value::Null, |h| json!({
            "test": h.test,
            "interval": duration(h.interval.as_ref()),
            "timeout": duration(h.timeout.as_ref()),
            "retries": h.retries,
            "start_period": duration(h.start_period.as_ref()),
        })),
        "stop_signal": s.stop_signal,
        "stop_grace_period": duration(s.stop_grace_period.as_ref()),
        "user": s.user,
        "workdir": s.workdir,
        "mode": words::mode(s),
        "replicas": words::replicas(s),
        "placement": {
            "constraints": placement.constraints,
            "preferences": placement.preferences,
            "max_replicas_per_node": placement.max_replicas_per_node,
        },
        "resources": {
            "reservations": resources(res.reservations.as_ref()),
            "limits": resources(res.limits.as_ref()),
        },
        "restart_policy": s.restart_policy.as_ref().map_or(Value::Null, |r| json!({
            "condition": r.condition,
            "delay": duration(r.delay.as_ref()),
            "max_attempts": r.max_attempts,
            "window": duration(r.window.as_ref()),
        })),
        "update_config": update_config(s.update_config.as_ref()),
        "rollback_config": update_config(s.rollback_config.as_ref()),
    });
    // Only when the service mounts some (references, never data).
    if let Value::Object(m) = &mut v {
        if !s.secrets.is_empty() {
            m.insert("secrets".into(), s.secrets.iter().map(file_ref).collect());
        }
        if !s.configs.is_empty() {
            m.insert("configs".into(), s.configs.iter().map(file_ref).collect());
        }
    }
    v
}

/// A secret or config a service mounts (never its data).
fn file_ref(r: &pb::FileReference) -> Value {
    json!({
        "source": r.source,
        "target": r.target,
        "uid": r.uid,
        "gid": r.gid,
        "mode": format!("{:04o}", r.mode),
        "version": r.version,
    })
}

/// A secret or config: metadata, the services using it and, for a config
/// read with `inspect`, its data (a secret's never comes from the API).
pub fn data_object(o: &pb::DataObject) -> Value {
    let mut v = json!({
        "id": o.id,
        "name": o.name,
        "created_at": time(o.created_at.as_ref()),
        "updated_at": time(o.updated_at.as_ref()),
        "versions": o.versions.iter().map(|v| json!({
            "version": v.version,
            "created_at": time(v.created_at.as_ref()),
            "labels": map(&v.labels),
            "size": v.size,
        })).collect::<Vec<_>>(),
        "services": o.services,
    });
    if !o.data.is_empty()
        && let Value::Object(m) = &mut v
    {
        m.insert(
            "data".into(),
            Value::String(String::from_utf8_lossy(&o.data).into_owned()),
        );
    }
    v
}

pub fn status(s: Option<&pb::ServiceStatus>) -> Value {
    let s = s.cloned().unwrap_or_default();
    json!({
        "desired": s.desired,
        "running": s.running,
        "outdated": s.outdated,
        "converged": s.converged,
        "message": s.message,
        "stalled": s.stalled,
    })
}

/// A service with its status: the object `service inspect` and `service
/// ls --output json` print.
pub fn service(r: &pb::ServiceResponse) -> Value {
    let s = r.service.clone().unwrap_or_default();
    let spec_value = s.spec.as_ref().map_or(Value::Null, spec);
    json!({
        "id": s.id,
        "name": s.spec.as_ref().map(|x| x.name.clone()).unwrap_or_default(),
        "version": s.version,
        "previous_version": s.previous_version,
        "created_at": time(s.created_at.as_ref()),
        "updated_at": time(s.updated_at.as_ref()),
        "spec": spec_value,
        "update_status": s.update_status.as_ref().map_or(Value::Null, |u| json!({
            "state": u.state,
            "started_at": time(u.started_at.as_ref()),
            "completed_at": time(u.completed_at.as_ref()),
            "message": u.message,
            "automatic": u.automatic,
            "autodeploy": (!u.autodeploy_reference.is_empty()).then(|| json!({
                "reference": u.autodeploy_reference,
                "digest": u.autodeploy_digest,
            })),
        })),
        "autodeploy_queued": (!s.autodeploy_queued.is_empty()).then(|| s.autodeploy_queued.clone()),
        "status": status(r.status.as_ref()),
        "warnings": r.warnings,
    })
}

pub fn task(t: &pb::Task) -> Value {
    let st = t.status.clone().unwrap_or_default();
    json!({
        "id": t.id,
        "service_id": t.service_id,
        "service_name": t.service_name,
        "slot": t.slot,
        "node_id": t.node_id,
        "spec_version": t.spec_version,
        "image": t.image,
        "desired_state": words::task_state(t.desired_state),
        "status": {
            "state": words::task_state(st.state),
            "timestamp": time(st.timestamp.as_ref()),
            "message": st.message,
            "err": st.err,
            "exit_code": st.exit_code,
            "container_id": st.container_id,
            "health": st.health,
            "ports": st.ports.iter().map(port).collect::<Vec<_>>(),
        },
        "created_at": time(t.created_at.as_ref()),
        "attempt": t.attempt,
        "start_after": time(t.start_after.as_ref()),
        "up_at": time(t.up_at.as_ref()),
    })
}

pub fn node(n: &pb::Node) -> Value {
    let engine = n.engine.clone().unwrap_or_default();
    json!({
        "id": n.id,
        "hostname": n.hostname,
        "role": words::role(n.role),
        "labels": map(&n.labels),
        "availability": words::availability(n.availability),
        "state": words::node_state(n.state),
        "state_message": n.state_message,
        "resources": resources(n.resources.as_ref()),
        "reserved": resources(n.reserved.as_ref()),
        "tasks": n.tasks,
        "engine": {
            "version": engine.version,
            "labels": map(&engine.labels),
            "os": engine.os,
            "arch": engine.arch,
        },
        "address": n.address,
        "created_at": time(n.created_at.as_ref()),
        "updated_at": time(n.updated_at.as_ref()),
    })
}

/// Pretty JSON and a newline, for stdout.
pub fn print(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    println!("{text}");
}
