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

/// Moves a service's rollout on. Returns when to look again (the batch
/// delay), if it is waiting for time rather than for a task.
pub fn advance(state: &mut State, service_id: &str, now: Time) -> Option<Time> {
    let service = state.service(service_id).cloned()?;
    if !service.update.state.in_progress() || service.removing {
        return None;
    }
    let template = state.current(&service)?.template;
    let mut updating = 0usize;
    let mut outdated: Vec<Vec<Arc<Task>>> = Vec::new();
    for tasks in slots(state, &service.id).into_values() {
        let current_live = tasks
            .iter()
            .any(|t| t.desired == Desired::Running && is_current(state, &service, template, t));
        let starting = tasks.iter().any(|t| {
            t.desired == Desired::Running
                && is_current(state, &service, template, t)
                && !t.status.state.is_terminal()
                && t.status.state < TaskState::Running
        });
        let stopping = tasks.iter().any(|t| {
            t.desired == Desired::Shutdown
                && !t.status.state.is_terminal()
                && !is_current(state, &service, template, t)
        });
        if starting || stopping {
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
    if updating > 0 {
        if s.update.next_batch_at != BATCH_RUNNING {
            s.update.next_batch_at = BATCH_RUNNING;
            state.put_service(s);
        }
        return None;
    }
    if outdated.is_empty() {
        s.update.state = match s.update.state {
            UpdateState::RollbackStarted => UpdateState::RollbackCompleted,
            _ => UpdateState::Completed,
        };
        s.update.completed_at = now;
        s.update.next_batch_at = Time(0);
        s.update.message = match s.update.state {
            UpdateState::RollbackCompleted => "rollback completed".into(),
            _ => "update completed".into(),
        };
        state.put_service(s);
        return None;
    }
    let config = s.update.config;
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
