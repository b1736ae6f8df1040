//! Placement: which node a task runs on (SwarmKit's scheduler, in one pass).
//!
//! Every pass takes the tasks that want to run and have no node yet (and
//! global tasks not yet accepted by theirs), groups them by service version
//! (one spec, one set of filters), and for each group:
//!
//! 1. runs the static filters once per node (ready, availability,
//!    constraints), counting the nodes each rejects;
//! 2. for each task, runs the dynamic filters (reserved CPU and memory,
//!    fixed host ports, `max_replicas_per_node`) against what the node has
//!    left *including the tasks placed earlier in this pass*, so
//!    reservations are never over-committed;
//! 3. picks, among the nodes left, the one with the fewest tasks of this
//!    service in its spread-preference group (for each preference in
//!    order), then on the node itself, then the fewest tasks in all.
//!
//! A task no node takes stays pending, and its message is the rejection
//! counts in one sentence ("0/3 nodes available: 2 fail constraint
//! node.labels.zone==eu, 1 has 512 MiB of 1 GiB reserved memory free").
//! The manager runs a pass after any change that could let a pending task
//! in (a node joins or changes, a task ends), not on a timer.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::model::{
    Desired, Node, NodeState, Protocol, ServiceSpec, Task, TaskState, TaskStatus, Time,
};
use crate::state::State;

/// What a pass did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub placed: usize,
    pub pending: usize,
    /// The earliest restart delay still running: run a pass again then.
    pub wake_at: Option<Time>,
}

/// Tasks a pass should look at: they want to run and have not reached a
/// node's agent.
pub fn wants_node(t: &Task) -> bool {
    t.desired == Desired::Running && matches!(t.status.state, TaskState::New | TaskState::Pending)
}

/// One node as a group's placement sees it: what it has left.
struct Candidate {
    node: Arc<Node>,
    free_cpus: i64,
    free_memory: i64,
    /// Tasks of this service there.
    service_tasks: u64,
    tasks: u64,
    /// Index of the node's value for each spread preference.
    groups: Vec<usize>,
}

/// Why nodes were turned down, counted for the pending message.
#[derive(Default)]
struct Rejections {
    /// Reason text (for the static ones) -> nodes.
    counts: BTreeMap<String, usize>,
    /// Nodes short of memory, and the most any of them has free.
    memory: Option<(usize, i64)>,
    cpus: Option<(usize, i64)>,
}

impl Rejections {
    fn add(&mut self, reason: String) {
        *self.counts.entry(reason).or_default() += 1;
    }

    fn short(slot: &mut Option<(usize, i64)>, free: i64) {
        let entry = slot.get_or_insert((0, free));
        entry.0 += 1;
        entry.1 = entry.1.max(free);
    }

    fn message(&self, total: usize, spec: &ServiceSpec) -> String {
        let mut parts: Vec<String> = self
            .counts
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        if let Some((n, free)) = self.memory {
            let verb = if n == 1 { "has" } else { "have at most" };
            parts.push(format!(
                "{n} {verb} {} of {} reserved memory free",
                bytes(free.max(0)),
                bytes(spec.reservations.memory_bytes)
            ));
        }
        if let Some((n, free)) = self.cpus {
            let verb = if n == 1 { "has" } else { "have at most" };
            parts.push(format!(
                "{n} {verb} {} of {} reserved CPUs free",
                cpus(free.max(0)),
                cpus(spec.reservations.nano_cpus)
            ));
        }
        if total == 0 {
            return "0/0 nodes available: no node has joined".into();
        }
        format!("0/{total} nodes available: {}", parts.join(", "))
    }
}

/// 1073741824 -> "1 GiB", 536870912 -> "512 MiB", 1610612736 -> "1.5 GiB".
pub fn bytes(n: i64) -> String {
    const UNITS: [(&str, i64); 4] = [
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ];
    for (unit, size) in UNITS {
        if n >= size || size == 1 {
            let whole = n / size;
            let tenth = (n % size) * 10 / size;
            return if tenth == 0 {
                format!("{whole} {unit}")
            } else {
                format!("{whole}.{tenth} {unit}")
            };
        }
    }
    format!("{n} B")
}

/// Nano-CPUs as CPUs: 1500000000 -> "1.5".
pub fn cpus(nano: i64) -> String {
    let whole = nano / 1_000_000_000;
    let frac = (nano % 1_000_000_000) / 10_000_000;
    if frac == 0 {
        format!("{whole}")
    } else {
        format!("{whole}.{frac:02}")
            .trim_end_matches('0')
            .to_string()
    }
}

/// The static filters: whether `node` may take tasks of `spec` at all, and
/// if not, why (a reason counted per node).
fn static_reason(node: &Node, spec: &ServiceSpec) -> Option<String> {
    match node.state {
        NodeState::Ready => {}
        NodeState::Down => return Some("down".into()),
        NodeState::Unknown => return Some("not yet reconnected".into()),
    }
    match node.availability {
        crate::model::Availability::Active => {}
        crate::model::Availability::Pause => return Some("paused".into()),
        crate::model::Availability::Drain => return Some("drained".into()),
    }
    for c in &spec.placement.constraints {
        if !c.matches(node) {
            return Some(format!("fail constraint {c}"));
        }
    }
    None
}

/// Runs one placement pass over `state`.
pub fn place(state: &mut State, now: Time) -> Outcome {
    let mut out = Outcome::default();
    // Pending tasks by (service, version), in creation order within each.
    let mut groups: BTreeMap<(String, u64), Vec<Arc<Task>>> = BTreeMap::new();
    for id in &state.pending {
        let Some(t) = state.tasks.get(id) else {
            continue;
        };
        if t.start_after > now {
            out.wake_at = Some(out.wake_at.map_or(t.start_after, |w| w.min(t.start_after)));
            continue;
        }
        groups
            .entry((t.service_id.clone(), t.spec_version))
            .or_default()
            .push(t.clone());
    }
    if groups.is_empty() {
        return out;
    }
    let nodes: Vec<Arc<Node>> = state.nodes.values().cloned().collect();
    for ((service_id, version), mut tasks) in groups {
        let Some(spec) = state.version(&service_id, version).map(|v| v.spec.clone()) else {
            continue;
        };
        tasks.sort_by_key(|t| (t.slot, t.created_at));
        place_group(state, &nodes, &spec, &service_id, &tasks, &mut out);
    }
    out
}

fn place_group(
    state: &mut State,
    nodes: &[Arc<Node>],
    spec: &ServiceSpec,
    service_id: &str,
    tasks: &[Arc<Task>],
    out: &mut Outcome,
) {
    let mut rejected = Rejections::default();
    // Values of each spread preference -> group index.
    let prefs = &spec.placement.preferences;
    let mut group_ids: Vec<FxHashMap<Option<String>, usize>> =
        vec![FxHashMap::default(); prefs.len()];
    let mut candidates: Vec<Candidate> = Vec::with_capacity(nodes.len());
    let mut index_of: FxHashMap<&str, usize> = FxHashMap::default();
    for node in nodes {
        if let Some(reason) = static_reason(node, spec) {
            rejected.add(reason);
            continue;
        }
        let usage = state.usage(&node.id);
        let groups = prefs
            .iter()
            .zip(group_ids.iter_mut())
            .map(|(p, ids)| {
                let value = p.spread.value(node).map(str::to_string);
                let next = ids.len();
                *ids.entry(value).or_insert(next)
            })
            .collect();
        index_of.insert(node.id.as_str(), candidates.len());
        candidates.push(Candidate {
            node: node.clone(),
            free_cpus: node.resources.nano_cpus - usage.reserved.nano_cpus,
            free_memory: node.resources.memory_bytes - usage.reserved.memory_bytes,
            service_tasks: usage.per_service.get(service_id).copied().unwrap_or(0),
            tasks: usage.tasks,
            groups,
        });
    }
    // Tasks of this service per preference group.
    let mut group_counts: Vec<Vec<u64>> = group_ids.iter().map(|ids| vec![0; ids.len()]).collect();
    for c in &candidates {
        for (level, g) in c.groups.iter().enumerate() {
            group_counts[level][*g] += c.service_tasks;
        }
    }
    let fixed: Vec<(u16, Protocol)> = spec
        .ports
        .iter()
        .filter(|p| p.published != 0)
        .map(|p| (p.published, p.protocol))
        .collect();
    let res = spec.reservations;
    let max_per_node = spec.placement.max_replicas_per_node;
    let mut ports_taken: FxHashMap<usize, bool> = FxHashMap::default();
    for task in tasks {
        let mut why = Rejections::default();
        // A global task may only go to its own node.
        let only: Option<usize> = if task.slot == 0 {
            match index_of.get(task.node_id.as_str()) {
                Some(i) => Some(*i),
                None => {
                    let reason = nodes
                        .iter()
                        .find(|n| n.id == task.node_id)
                        .and_then(|n| static_reason(n, spec))
                        .unwrap_or_else(|| "gone".into());
                    let msg = format!("0/1 nodes available: 1 {reason}");
                    set_pending(state, task, msg);
                    out.pending += 1;
                    continue;
                }
            }
        } else {
            None
        };
        let mut best: Option<usize> = None;
        let range: Box<dyn Iterator<Item = usize>> = match only {
            Some(i) => Box::new(std::iter::once(i)),
            None => Box::new(0..candidates.len()),
        };
        for i in range {
            let c = &candidates[i];
            if res.memory_bytes > 0 && c.free_memory < res.memory_bytes {
                Rejections::short(&mut why.memory, c.free_memory);
                continue;
            }
            if res.nano_cpus > 0 && c.free_cpus < res.nano_cpus {
                Rejections::short(&mut why.cpus, c.free_cpus);
                continue;
            }
            if !fixed.is_empty() {
                let taken = *ports_taken.entry(i).or_insert_with(|| {
                    let usage = state.usage(&c.node.id);
                    fixed.iter().any(|p| usage.ports.contains_key(p))
                });
                if taken {
                    let list: Vec<String> = fixed
                        .iter()
                        .map(|(p, proto)| format!("{p}/{}", proto.as_str()))
                        .collect();
                    why.add(format!("already use host port {}", list.join(", ")));
                    continue;
                }
            }
            if max_per_node > 0 && c.service_tasks >= max_per_node {
                why.add(format!(
                    "already run {max_per_node} tasks of this service (max_replicas_per_node)"
                ));
                continue;
            }
            if best.is_none_or(|b| better(&candidates[i], &candidates[b], &group_counts)) {
                best = Some(i);
            }
        }
        match best {
            Some(i) => {
                let c = &mut candidates[i];
                c.free_memory -= res.memory_bytes;
                c.free_cpus -= res.nano_cpus;
                c.service_tasks += 1;
                c.tasks += 1;
                for (level, g) in c.groups.iter().enumerate() {
                    group_counts[level][*g] += 1;
                }
                if !fixed.is_empty() {
                    ports_taken.insert(i, true);
                }
                let mut t = Task::clone(task);
                t.node_id = c.node.id.clone();
                t.status = TaskStatus::new(
                    TaskState::Assigned,
                    format!("assigned to {}", c.node.hostname),
                );
                state.put_task(t);
                out.placed += 1;
            }
            None => {
                let total = if only.is_some() {
                    1
                } else {
                    for (reason, n) in &rejected.counts {
                        *why.counts.entry(reason.clone()).or_default() += n;
                    }
                    nodes.len()
                };
                set_pending(state, task, why.message(total, spec));
                out.pending += 1;
            }
        }
    }
}

/// Whether `a` is a better place than `b`: per preference level fewer
/// tasks of this service in the node's group, then on the node, then fewer
/// tasks in all, then the smaller id (equal nodes are taken in a stable
/// order).
fn better(a: &Candidate, b: &Candidate, group_counts: &[Vec<u64>]) -> bool {
    for (level, (ga, gb)) in a.groups.iter().zip(&b.groups).enumerate() {
        let (x, y) = (group_counts[level][*ga], group_counts[level][*gb]);
        if x != y {
            return x < y;
        }
    }
    (a.service_tasks, a.tasks, a.node.id.as_str()) < (b.service_tasks, b.tasks, b.node.id.as_str())
}

fn set_pending(state: &mut State, task: &Task, message: String) {
    if task.status.state == TaskState::Pending && task.status.message == message {
        return;
    }
    let mut t = task.clone();
    t.status = TaskStatus::new(TaskState::Pending, message);
    if t.slot != 0 {
        t.node_id.clear();
    }
    state.put_task(t);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(bytes(1 << 30), "1 GiB");
        assert_eq!(bytes(512 << 20), "512 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(bytes(0), "0 B");
        assert_eq!(cpus(1_500_000_000), "1.5");
        assert_eq!(cpus(2_000_000_000), "2");
        assert_eq!(cpus(250_000_000), "0.25");
    }
}
