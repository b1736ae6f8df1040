//! A service's `deploy:` keys: how many tasks, where, with what resources
//! and how updates and rollbacks roll.

use crate::convert::{
    Ctx, R, cpus, duration, float, index, int, is_extension, join, map, seq, size, string,
    string_map, strings, uint, unknown,
};
use crate::model::{
    Deploy, Mode, Placement, ResourceSet, Resources, RestartCondition, RestartPolicy, UpdateConfig,
};
use crate::yaml::Node;

/// A string that must be one of `allowed`.
pub(crate) fn one_of(cx: &Ctx<'_>, node: &Node, path: &str, allowed: &[&str]) -> R<String> {
    let s = string(cx, node, path)?;
    if allowed.contains(&s.as_str()) {
        Ok(s)
    } else {
        Err(cx.error(
            node.pos,
            path,
            format!("expected one of {}, found {s:?}", allowed.join(", ")),
        ))
    }
}

pub(crate) fn deploy(cx: &mut Ctx<'_>, node: &Node, path: &str) -> R<Deploy> {
    let mut d = Deploy::default();
    let mut replicas_pos = None;
    for e in map(cx, node, path)? {
        let p = join(path, &e.key);
        let v = &e.value;
        match e.key.as_str() {
            "mode" => {
                d.mode = match string(cx, v, &p)?.as_str() {
                    "replicated" => Mode::Replicated,
                    "global" => Mode::Global,
                    job @ ("replicated-job" | "global-job") => {
                        return Err(cx.error(
                            v.pos,
                            &p,
                            format!(
                                "mode {job:?} is not supported: Bronze runs services, not jobs \
                                 (replicated-job and global-job are unsupported)"
                            ),
                        ));
                    }
                    other => {
                        return Err(cx.error(
                            v.pos,
                            &p,
                            format!("expected replicated or global, found {other:?}"),
                        ));
                    }
                }
            }
            "replicas" => {
                d.replicas = Some(uint(cx, v, &p)?);
                replicas_pos = Some((v.pos, p));
            }
            "placement" => d.placement = placement(cx, v, &p)?,
            "resources" => d.resources = resources(cx, v, &p)?,
            "restart_policy" => d.restart_policy = Some(restart_policy(cx, v, &p)?),
            "update_config" => d.update_config = Some(update_config(cx, v, &p)?),
            "rollback_config" => d.rollback_config = Some(update_config(cx, v, &p)?),
            "labels" => d.labels = string_map(cx, v, &p)?,
            "endpoint_mode" => d.endpoint_mode = Some(one_of(cx, v, &p, &["vip", "dnsrr"])?),
            k if is_extension(k) => {}
            _ => return Err(unknown(cx, e, path)),
        }
    }
    if let (Mode::Global, Some((pos, p))) = (d.mode, replicas_pos) {
        return Err(cx.error(pos, &p, "replicas can only be used with mode: replicated"));
    }
    Ok(d)
}

fn placement(cx: &Ctx<'_>, node: &Node, path: &str) -> R<Placement> {
    let mut pl = Placement::default();
    for e in map(cx, node, path)? {
        let p = join(path, &e.key);
        match e.key.as_str() {
            "constraints" => pl.constraints = strings(cx, &e.value, &p)?,
            "preferences" => {
                for (i, item) in seq(cx, &e.value, &p)?.iter().enumerate() {
                    let ip = index(&p, i);
                    for pref in map(cx, item, &ip)? {
                        match pref.key.as_str() {
                            "spread" => {
                                let on = string(cx, &pref.value, &join(&ip, "spread"))?;
                                pl.preferences.push(format!("spread={on}"));
                            }
                            _ => return Err(unknown(cx, pref, &ip)),
                        }
                    }
                }
            }
            "max_replicas_per_node" => pl.max_replicas_per_node = Some(uint(cx, &e.value, &p)?),
            k if is_extension(k) => {}
            _ => return Err(unknown(cx, e, path)),
        }
    }
    Ok(pl)
}

fn resources(cx: &Ctx<'_>, node: &Node, path: &str) -> R<Resources> {
    let mut r = Resources::default();
    for e in map(cx, node, path)? {
        let p = join(path, &e.key);
        match e.key.as_str() {
            "limits" => r.limits = resource_set(cx, &e.value, &p)?,
            "reservations" => r.reservations = resource_set(cx, &e.value, &p)?,
            k if is_extension(k) => {}
            _ => return Err(unknown(cx, e, path)),
        }
    }
    Ok(r)
}

fn resource_set(cx: &Ctx<'_>, node: &Node, path: &str) -> R<ResourceSet> {
    let mut s = ResourceSet::default();
    for e in map(cx, node, path)? {
        let p = join(path, &e.key);
        match e.key.as_str() {
            "cpus" => s.nano_cpus = Some(cpus(cx, &e.value, &p)?),
            "memory" => s.memory = Some(size(cx, &e.value, &p)?),
            "pids" => s.pids = Some(int(cx, &e.value, &p)?),
            k if is_extension(k) => {}
            _ => return Err(unknown(cx, e, path)),
        }
    }
    Ok(s)
}

fn restart_policy(cx: &Ctx<'_>, node: &Node, path: &str) -> R<RestartPolicy> {
    let mut r = RestartPolicy::default();
    for e in map(cx, node, path)? {
        let p = join(path, &e.key);
        match e.key.as_str() {
            "condition" => {
                r.condition =
                    match one_of(cx, &e.value, &p, &["none", "on-failure", "any"])?.as_str() {
                        "none" => RestartCondition::None,
                        "on-failure" => RestartCondition::OnFailure,
                        _ => RestartCondition::Any,
                    }
            }
            "delay" => r.delay = Some(duration(cx, &e.value, &p)?),
            "max_attempts" => r.max_attempts = Some(uint(cx, &e.value, &p)?),
            "window" => r.window = Some(duration(cx, &e.value, &p)?),
            k if is_extension(k) => {}
            _ => return Err(unknown(cx, e, path)),
        }
    }
    Ok(r)
}

fn update_config(cx: &Ctx<'_>, node: &Node, path: &str) -> R<UpdateConfig> {
    let mut u = UpdateConfig::default();
    for e in map(cx, node, path)? {
        let p = join(path, &e.key);
        let v = &e.value;
        match e.key.as_str() {
            "parallelism" => u.parallelism = Some(uint(cx, v, &p)?),
            "delay" => u.delay = Some(duration(cx, v, &p)?),
            "failure_action" => {
                u.failure_action = Some(one_of(cx, v, &p, &["pause", "continue", "rollback"])?);
            }
            "monitor" => u.monitor = Some(duration(cx, v, &p)?),
            "max_failure_ratio" => {
                let r = float(cx, v, &p)?;
                if !(0.0..=1.0).contains(&r) {
                    return Err(cx.error(
                        v.pos,
                        &p,
                        format!("expected a ratio from 0 to 1, found {r}"),
                    ));
                }
                u.max_failure_ratio = Some(r);
            }
            "order" => u.order = Some(one_of(cx, v, &p, &["stop-first", "start-first"])?),
            k if is_extension(k) => {}
            _ => return Err(unknown(cx, e, path)),
        }
    }
    Ok(u)
}
