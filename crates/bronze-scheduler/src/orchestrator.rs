//! Service -> tasks (SwarmKit's orchestrators and restart supervisor, in one
//! level-triggered function).
//!
//! [`reconcile`] looks at one service and its tasks as they are now and
//! writes what is missing; it is idempotent, so it runs after anything that
//! touched the service (a spec change, a task's status, a node change) and
//! once for every service at start-up, in any order.
//!
//! A service owns *slots*: 1..=replicas when replicated, one per eligible
//! node when global. A slot is occupied by a task that should run, or that
//! still runs while it stops. In order:
//!
//! 1. a task that ended while it should run is restarted as the policy
//!    says: a new task in its slot, placed after the (backed-off) delay,
//!    the restart remembered in the new task so `max_attempts` survives a
//!    scheduler restart; a policy that gives up leaves the ended task in
//!    its slot (the service is *stalled* there until the next update);
//! 2. an orphaned task (its node went down) is replaced at once elsewhere
//!    (replicated) or waited for (global: the node is the slot);
//! 3. a task on a drained node gets a replacement that starts elsewhere
//!    first; any task that `replaces` another, once running, shuts the
//!    other down (start-first rollouts use the same rule);
//! 4. empty slots get a new task at the current version; surplus slots and
//!    global tasks whose node no longer qualifies are shut down;
//! 5. the reaper keeps the last `history` ended tasks per slot.
//!
//! Rollouts (which outdated slot to replace, and when) are `update.rs`'s.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::{
    Availability, Desired, Mode, NodeState, RestartCondition, Service, SlotKey, Task, TaskState,
    TaskStatus, Time, new_id,
};
use crate::state::State;

/// A new task in `slot` of `service` at its current version.
pub fn new_task(service: &Service, slot: u64, node_id: &str) -> Task {
    Task {
        id: new_id(),
        service_id: service.id.clone(),
        service_name: service.name.clone(),
        slot,
        node_id: node_id.to_string(),
        spec_version: service.version,
        desired: Desired::Running,
        status: TaskStatus::new(TaskState::New, "created"),
        created_at: Time::now(),
        restarts: Vec::new(),
        failures: 0,
        start_after: Time(0),
        started_at: Time(0),
        replaces: None,
        moved: false,
        drain: std::time::Duration::ZERO,
        up_at: Time(0),
        version: 0,
    }
}

/// Sets a task's desired state to shutdown (with a reason when it never
/// reached a node, since nothing there will report it). A task registered
/// in discovery is drained first: its agent waits the service's
/// drain_delay before the stop signal, while discovery takes it out.
pub fn shut_down(state: &mut State, task: &Task, why: &str) {
    if task.desired == Desired::Shutdown {
        return;
    }
    let mut t = task.clone();
    t.desired = Desired::Shutdown;
    if state.registered.contains_key(&t.id)
        && !t.status.state.is_terminal()
        && let Some(v) = state.version(&t.service_id, t.spec_version)
    {
        t.drain = v.spec.drain_delay;
    }
    if matches!(t.status.state, TaskState::New | TaskState::Pending) {
        // Never reached an agent: nothing runs, it ends here.
        t.status = TaskStatus::new(TaskState::Shutdown, why);
    }
    state.put_task(t);
}

/// Tasks of a service by slot, oldest first within a slot.
pub fn slots(state: &State, service_id: &str) -> BTreeMap<SlotKey, Vec<Arc<Task>>> {
    let mut slots: BTreeMap<SlotKey, Vec<Arc<Task>>> = BTreeMap::new();
    for t in state.service_tasks(service_id) {
        slots.entry(t.slot_key()).or_default().push(t.clone());
    }
    for tasks in slots.values_mut() {
        tasks.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    }
    slots
}

/// What the restart policy says about a task that ended while it should
/// run: `None` when it gives up, else the replacement (not yet stored).
fn restart(
    service: &Service,
    spec: &crate::model::ServiceSpec,
    old: &Task,
    now: Time,
) -> Option<Task> {
    let policy = spec.restart;
    let failed = old.status.state != TaskState::Complete;
    match policy.condition {
        RestartCondition::None => return None,
        RestartCondition::OnFailure if !failed => return None,
        _ => {}
    }
    let mut restarts: Vec<Time> = if policy.window.is_zero() {
        old.restarts.clone()
    } else {
        let since = Time(
            now.0
                .saturating_sub(u64::try_from(policy.window.as_millis()).unwrap_or(u64::MAX)),
        );
        old.restarts
            .iter()
            .copied()
            .filter(|t| *t >= since)
            .collect()
    };
    if policy.max_attempts > 0 && restarts.len() >= policy.max_attempts as usize {
        return None;
    }
    restarts.push(now);
    // A task that ran a while before it failed starts a new run of
    // failures; one that failed at once (or never ran) adds to the run.
    let ran_long = !old.started_at.is_zero()
        && old.status.timestamp.since(old.started_at) >= policy.delay.max(RAN_LONG);
    let failures = if ran_long { 1 } else { old.failures + 1 };
    let mut t = new_task(service, old.slot, "");
    t.spec_version = service.version;
    if old.slot == 0 {
        t.node_id = old.node_id.clone();
    }
    t.restarts = restarts;
    t.failures = failures;
    t.start_after = now.plus(policy.backoff(failures));
    t.replaces = old.replaces.clone();
    t.status = TaskStatus::new(
        TaskState::New,
        format!(
            "restart {} of the slot after {} ({})",
            t.restarts.len(),
            old.status.state.as_str(),
            if old.status.err.is_empty() {
                old.status.message.as_str()
            } else {
                old.status.err.as_str()
            }
        ),
    );
    Some(t)
}

/// A task that ran at least this long before it ended resets the backoff.
const RAN_LONG: std::time::Duration = std::time::Duration::from_secs(10);

/// Records when each running task of a service became up (see
/// [`State::up`]). Returns when to look again, when a task is only waiting
/// for the time its registration may take.
pub fn mark_up(state: &mut State, service_id: &str, now: Time) -> Option<Time> {
    let mut wake: Option<Time> = None;
    let tasks: Vec<Arc<Task>> = state
        .service_tasks(service_id)
        .filter(|t| t.desired == Desired::Running && t.up_at.is_zero())
        .cloned()
        .collect();
    for t in tasks {
        match state.up(&t, now) {
            Ok(true) => {
                let mut up = Task::clone(&t);
                up.up_at = now;
                state.put_task(up);
            }
            Ok(false) => {}
            Err(at) => wake = Some(wake.map_or(at, |w| w.min(at))),
        }
    }
    wake
}

/// Reconciles one service.
pub fn reconcile(state: &mut State, service_id: &str, now: Time, history: usize) {
    let Some(service) = state.service(service_id).cloned() else {
        return;
    };
    if service.removing {
        remove(state, &service);
        return;
    }
    let Some(current) = state.current(&service).cloned() else {
        return;
    };
    let spec = current.spec.clone();
    let mut slots = slots(state, &service.id);

    // 1-3: ended tasks, orphans, drains, start-first hand-overs.
    for tasks in slots.values_mut() {
        let mut i = 0;
        while i < tasks.len() {
            let t = tasks[i].clone();
            i += 1;
            if t.desired != Desired::Running {
                continue;
            }
            let node = state.node(&t.node_id).cloned();
            if t.status.state == TaskState::Orphaned {
                if t.slot == 0 {
                    // Global: the node is the slot; wait for it (or for it
                    // to be drained or removed, below).
                    continue;
                }
                let mut gone = Task::clone(&t);
                gone.desired = Desired::Shutdown;
                gone.moved = true;
                state.put_task(gone);
                let mut n = new_task(&service, t.slot, "");
                n.status =
                    TaskStatus::new(TaskState::New, "replaces a task of a node that is down");
                n.replaces = None;
                tasks.push(Arc::new(n.clone()));
                state.put_task(n);
                continue;
            }
            if t.status.state.is_terminal() {
                // Ended on its own: the restart policy (of the version it
                // ran) decides; the new task runs the current version.
                // When a replacement for it is already under way, that
                // replacement is the restart.
                if tasks.iter().any(|o| o.replaces.as_deref() == Some(&t.id)) {
                    let mut stopped = Task::clone(&t);
                    stopped.desired = Desired::Shutdown;
                    state.put_task(stopped);
                    continue;
                }
                let version = state.version(&service.id, t.spec_version).cloned();
                let spec_of_task = version.map_or_else(|| spec.clone(), |v| v.spec.clone());
                if let Some(n) = restart(&service, &spec_of_task, &t, now) {
                    let mut stopped = Task::clone(&t);
                    stopped.desired = Desired::Shutdown;
                    state.put_task(stopped);
                    tasks.push(Arc::new(n.clone()));
                    state.put_task(n);
                }
                continue;
            }
            // Start-first hand-over: the replacement is up (running,
            // healthy, passing in discovery), the old one stops.
            if !t.up_at.is_zero()
                && t.status.state == TaskState::Running
                && let Some(old_id) = &t.replaces
            {
                if let Some(old) = state.task(old_id).cloned() {
                    shut_down(state, &old, "replaced");
                }
                let mut done = Task::clone(&t);
                done.replaces = None;
                state.put_task(done);
                continue;
            }
            // Drain: start a replacement elsewhere, then stop this one.
            if t.slot != 0
                && node
                    .as_ref()
                    .is_some_and(|n| n.availability == Availability::Drain)
                && !tasks.iter().any(|o| o.replaces.as_deref() == Some(&t.id))
            {
                let mut n = new_task(&service, t.slot, "");
                n.spec_version = t.spec_version;
                n.replaces = Some(t.id.clone());
                n.status = TaskStatus::new(TaskState::New, "moves a task off a drained node");
                tasks.push(Arc::new(n.clone()));
                state.put_task(n);
            }
        }
    }

    // 4: slots.
    let slots = self::slots(state, &service.id);
    match spec.mode {
        Mode::Replicated { replicas } => {
            for slot in 1..=replicas {
                let occupied = slots
                    .get(&SlotKey::Number(slot))
                    .is_some_and(|ts| ts.iter().any(|t| t.occupies_slot()));
                if !occupied {
                    state.put_task(new_task(&service, slot, ""));
                }
            }
            for (key, tasks) in &slots {
                if let SlotKey::Number(n) = key
                    && *n > replicas
                {
                    for t in tasks {
                        shut_down(state, t, "scaled down");
                    }
                }
            }
        }
        Mode::Global => {
            let nodes: Vec<_> = state.nodes.values().cloned().collect();
            for node in &nodes {
                let matches = spec.placement.constraints.iter().all(|c| c.matches(node));
                let keep = matches && node.availability != Availability::Drain;
                let new_ok = keep
                    && node.state == NodeState::Ready
                    && node.availability == Availability::Active;
                let key = SlotKey::Node(node.id.clone());
                let tasks = slots.get(&key);
                let occupied = tasks.is_some_and(|ts| ts.iter().any(|t| t.occupies_slot()));
                if !keep {
                    for t in tasks.into_iter().flatten() {
                        shut_down(state, t, "node no longer eligible");
                    }
                } else if !occupied && new_ok {
                    state.put_task(new_task(&service, 0, &node.id));
                }
            }
            // Tasks of nodes that were removed.
            for (key, tasks) in &slots {
                if let SlotKey::Node(id) = key
                    && state.node(id).is_none()
                {
                    for t in tasks {
                        shut_down(state, t, "node removed");
                    }
                }
            }
        }
    }

    // 5: history.
    reap(state, &service.id, history);
}

/// Keeps the last `history` ended tasks of each slot (and every task that
/// still runs or should); deletes the rest, so agents remove their
/// containers.
fn reap(state: &mut State, service_id: &str, history: usize) {
    for tasks in slots(state, service_id).values() {
        let dead: Vec<&Arc<Task>> = tasks
            .iter()
            .filter(|t| t.desired == Desired::Shutdown && t.status.state.is_terminal())
            .collect();
        if dead.len() > history {
            for t in &dead[..dead.len() - history] {
                state.remove_task(&t.id);
            }
        }
    }
}

/// A service being removed: shut every task down; delete each once it has
/// ended; delete the service once none is left.
fn remove(state: &mut State, service: &Service) {
    let tasks: Vec<Arc<Task>> = state.service_tasks(&service.id).cloned().collect();
    for t in &tasks {
        if t.status.state.is_terminal() {
            state.remove_task(&t.id);
        } else {
            shut_down(state, t, "service removed");
            // A task that never reached a node ended just now.
            if state
                .task(&t.id)
                .is_some_and(|t| t.status.state.is_terminal())
            {
                state.remove_task(&t.id);
            }
        }
    }
    if state.service_tasks(&service.id).next().is_none() {
        state.remove_service(&service.id);
    }
}
