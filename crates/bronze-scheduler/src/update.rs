//! Rolling updates (SwarmKit's update supervisor, level-triggered).
//!
//! A service whose version changed is *updating*: every slot whose task
//! runs another template (or was created before a `--force`) is outdated.
//! [`advance`] replaces outdated slots in batches of `parallelism`:
//! stop-first shuts the old task down and lets the orchestrator fill the
//! emptied slot; start-first adds a task that `replaces` the old one, and
//! the orchestrator stops the old one once the new one runs. A batch is
//! done when none of its slots is still starting or stopping; the next
//! starts `delay` after that. When no slot is outdated the rollout is
//! complete. Everything it needs is in the store (the service's
//! `UpdateStatus`, the tasks), so a scheduler restarted mid-rollout goes on
//! where it stopped.
//!
//! Health-gated rollouts (monitor, failure ratio, automatic rollback) are
//! the next step; here a new task that fails is restarted by its policy and
//! the rollout waits for it.

use std::sync::Arc;

use crate::model::service::BATCH_RUNNING;
use crate::model::{Desired, Order, Service, Task, TaskState, TaskStatus, Time, UpdateState};
use crate::orchestrator::{new_task, shut_down, slots};
use crate::state::State;

/// Whether `t` runs the service's current template.
fn is_current(state: &State, service: &Service, template: u64, t: &Task) -> bool {
    t.created_at >= service.update.force_before
        && state
            .version(&service.id, t.spec_version)
            .is_some_and(|v| v.template == template)
}

/// A new task of this rollout that failed: it ended before it was up, or
/// within `monitor` of being up.
fn failed_in_rollout(service: &Service, t: &Task, monitor: std::time::Duration) -> bool {
    if t.created_at < service.update.started_at || !t.status.state.is_terminal() {
        return false;
    }
    if t.status.state == TaskState::Shutdown || t.status.state == TaskState::Orphaned {
        return false;
    }
    t.up_at.is_zero() || t.status.timestamp.since(t.up_at) < monitor
}

/// Moves a service's rollout on. Returns when to look again (the batch
/// delay, the end of a monitor window), if it is waiting for time rather
/// than for a task.
pub fn advance(state: &mut State, service_id: &str, now: Time) -> Option<Time> {
    let service = state.service(service_id).cloned()?;
    if !service.update.state.in_progress() || service.removing {
        return None;
    }
    let template = state.current(&service)?.template;
    let config = service.update.config;
    let mut updating = 0usize;
    let mut outdated: Vec<Vec<Arc<Task>>> = Vec::new();
    let mut slots_total = 0usize;
    let mut failed_slots: Vec<Arc<Task>> = Vec::new();
    // The latest end of a new task's monitor window.
    let mut monitoring: Option<Time> = None;
    for tasks in slots(state, &service.id).into_values() {
        slots_total += 1;
        if let Some(f) = tasks
            .iter()
            .filter(|t| is_current(state, &service, template, t))
            .find(|t| failed_in_rollout(&service, t, config.monitor))
        {
            failed_slots.push(f.clone());
        }
        for t in &tasks {
            if t.desired == Desired::Running
                && !t.up_at.is_zero()
                && t.created_at >= service.update.started_at
                && is_current(state, &service, template, t)
            {
                let end = t.up_at.plus(config.monitor);
                if end > now {
                    monitoring = Some(monitoring.map_or(end, |m| m.max(end)));
                }
            }
        }
        let current_live = tasks
            .iter()
            .any(|t| t.desired == Desired::Running && is_current(state, &service, template, t));
        let starting = tasks.iter().any(|t| {
            t.desired == Desired::Running
                && is_current(state, &service, template, t)
                && !t.status.state.is_terminal()
                && t.up_at.is_zero()
        });
        let stopping = tasks.iter().any(|t| {
            t.desired == Desired::Shutdown
                && !t.status.state.is_terminal()
                && !is_current(state, &service, template, t)
        });
        // Start-first: once a replacement is up, its old task drains and
        // stops while the next batch starts (as Swarm); stop-first waits
        // for the stop, the slot is down until then.
        if starting || (stopping && config.order == Order::StopFirst) {
            updating += 1;
        } else if !current_live {
            let old: Vec<Arc<Task>> = tasks
                .into_iter()
                .filter(|t| t.desired == Desired::Running)
                .collect();
            if !old.is_empty() {
                outdated.push(old);
            }
        }
    }
    let mut s = Service::clone(&service);
    // Too many new tasks failed: the failure action.
    let ratio = failed_slots.len() as f64 / slots_total.max(1) as f64;
    if !failed_slots.is_empty()
        && ratio > config.max_failure_ratio
        && config.failure_action != crate::model::spec::FailureAction::Continue
    {
        let t = &failed_slots[0];
        let why = if t.status.err.is_empty() {
            t.status.message.clone()
        } else {
            t.status.err.clone()
        };
        let rolling_back = service.update.state == UpdateState::RollbackStarted;
        if config.failure_action == crate::model::spec::FailureAction::Rollback && !rolling_back {
            return roll_back(
                state,
                s,
                now,
                &format!(
                    "update rolled back: task {} {} ({why})",
                    crate::model::short(&t.id),
                    t.status.state.as_str()
                ),
            );
        }
        s.update.state = if rolling_back {
            UpdateState::RollbackPaused
        } else {
            UpdateState::Paused
        };
        s.update.message = s.update.say(&format!(
            "{} paused: task {} {} ({why})",
            if rolling_back { "rollback" } else { "update" },
            crate::model::short(&t.id),
            t.status.state.as_str()
        ));
        s.update.completed_at = now;
        tracing::warn!(service = %s.name, reason = %s.update.message, "rollout paused");
        state.put_service(s);
        return None;
    }
    if updating > 0 {
        if s.update.next_batch_at != BATCH_RUNNING {
            s.update.next_batch_at = BATCH_RUNNING;
            state.put_service(s);
        }
        return None;
    }
    if outdated.is_empty() {
        // Done once the last new tasks were watched for `monitor`.
        if let Some(end) = monitoring {
            return Some(end);
        }
        s.update.state = match s.update.state {
            UpdateState::RollbackStarted => UpdateState::RollbackCompleted,
            _ => UpdateState::Completed,
        };
        s.update.completed_at = now;
        s.update.next_batch_at = Time(0);
        s.update.message = match (s.update.state, s.update.automatic) {
            (UpdateState::RollbackCompleted, true) => {
                format!("{}; rollback completed", s.update.message)
            }
            (UpdateState::RollbackCompleted, false) => "rollback completed".into(),
            _ => s.update.say("update completed"),
        };
        state.put_service(s);
        return None;
    }
    if s.update.next_batch_at == BATCH_RUNNING {
        // The batch just finished: the next waits `delay`.
        s.update.next_batch_at = now.plus(config.delay);
    }
    if now < s.update.next_batch_at {
        let at = s.update.next_batch_at;
        state.put_service(s);
        return Some(at);
    }
    let batch = if config.parallelism == 0 {
        outdated.len()
    } else {
        usize::try_from(config.parallelism)
            .unwrap_or(usize::MAX)
            .min(outdated.len())
    };
    for old in outdated.into_iter().take(batch) {
        let live: Vec<&Arc<Task>> = old
            .iter()
            .filter(|t| !t.status.state.is_terminal())
            .collect();
        match (config.order, live.first()) {
            (Order::StartFirst, Some(first)) => {
                let mut n = new_task(&service, first.slot, "");
                if first.slot == 0 {
                    n.node_id = first.node_id.clone();
                }
                n.replaces = Some(first.id.clone());
                n.status = TaskStatus::new(TaskState::New, "rolling update (start-first)");
                state.put_task(n);
                for extra in live.iter().skip(1) {
                    shut_down(state, extra, "rolling update");
                }
            }
            _ => {
                for t in &old {
                    shut_down(state, t, "rolling update");
                }
            }
        }
    }
    s.update.next_batch_at = BATCH_RUNNING;
    state.put_service(s);
    None
}

/// Starts an automatic rollback to the version before this update;
/// returns when to advance it (now).
fn roll_back(state: &mut State, service: Service, now: Time, why: &str) -> Option<Time> {
    let Some(to) = (service.previous_version != 0)
        .then(|| {
            state
                .version(&service.id, service.previous_version)
                .cloned()
        })
        .flatten()
    else {
        let mut s = service;
        s.update.state = UpdateState::Paused;
        s.update.message = format!("{why}; no previous version: paused");
        state.put_service(s);
        return None;
    };
    let from = state
        .current(&service)
        .map(|v| v.spec.rollback)
        .unwrap_or_default();
    let mut s = service;
    let why = &s.update.say(why);
    let failed_version = s.version;
    s.version = to.version;
    s.previous_version = failed_version;
    s.updated_at = now;
    s.update = crate::model::UpdateStatus {
        state: UpdateState::RollbackStarted,
        started_at: now,
        completed_at: Time(0),
        message: why.to_string(),
        next_batch_at: Time(0),
        config: from,
        force_before: s.update.force_before,
        automatic: true,
        autodeploy: s.update.autodeploy.clone(),
    };
    tracing::warn!(service = %s.name, reason = %why, "rolling back automatically");
    state.put_service(s);
    // Look again at once: when the tasks of the version rolled back to
    // still run (the failed ones were new slots, or replacements that
    // never came up), no task changes and no event will come.
    Some(now)
}
