//! Submitting a stack's changes and waiting for the whole stack: one
//! level-triggered loop for `stack deploy` and `stack rollback`.
//!
//! Every pass (woken by a Watch event of any service, a tick or the
//! deadline) reads the stack's services once, then: each submitted service
//! is judged by `progress::Judge`, the same rule `service create|update`
//! waits by; each service not yet submitted is submitted when every service
//! it depends on has passed its gate (started, or running with its health
//! check passed), or skipped when one of them failed; then the display is
//! redrawn, one line per service. The pass depends only on what the
//! scheduler says now, so the order of events does not matter. The loop
//! ends when every service converged, failed or was skipped (or, with
//! `--detach`, once everything that can be submitted was).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bronze_proto::scheduler::v1 as pb;
use tokio::time::Instant;
use tonic::Streaming;

use crate::client::{Api, Error};
use crate::progress::{
    self, Board, Display, Judge, SlotView, Verdict, WaitFlags, rollout_in_progress, rollout_started,
};
use crate::units::format_duration;

/// What a dependent waits for (Compose's `depends_on` conditions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Every task of the current version started (health check or not).
    Started,
    /// Every task runs, its health check passed, no rollout under way.
    Healthy,
}

/// The change to submit for one service.
#[derive(Debug, Clone)]
pub enum Change {
    Create(pb::ServiceSpec),
    /// The spec, and the version it was computed from.
    Update(pb::ServiceSpec, u64),
    /// Nothing to send: the stack only waits for it.
    Unchanged,
    Rollback,
}

impl Change {
    fn verb(&self) -> &'static str {
        match self {
            Change::Create(_) => "Creating",
            Change::Update(..) => "Updating",
            Change::Unchanged => "Unchanged",
            Change::Rollback => "Rolling back",
        }
    }
}

/// One service of the stack: its full name, what to send, and what it
/// waits for before it is sent.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub change: Change,
    pub after: Vec<(String, Gate)>,
}

enum Progress {
    Waiting,
    Submitted(Judge),
    Converged,
    Failed(String),
}

struct Entry {
    step: Step,
    progress: Progress,
    /// The last reason it is not converged.
    note: String,
}

/// Whether `resp` (a service read now) has passed `gate`.
fn passed(gate: Gate, board: &Board, resp: &pb::ServiceResponse) -> bool {
    let status = resp.status.clone().unwrap_or_default();
    match gate {
        Gate::Healthy => status.converged && !rollout_in_progress(resp),
        Gate::Started => {
            let id = resp.service.as_ref().map_or("", |s| s.id.as_str());
            let running = i32::from(pb::TaskState::Running);
            let starting = i32::from(pb::TaskState::Starting);
            let started = board
                .tasks
                .values()
                .filter(|t| {
                    t.service_id == id
                        && !t.outdated
                        && t.desired_state == running
                        && t.status
                            .as_ref()
                            .is_some_and(|s| s.state == running || s.state == starting)
                })
                .count();
            status.converged || u64::try_from(started).unwrap_or(u64::MAX) >= status.desired
        }
    }
}

fn gate_word(g: Gate) -> &'static str {
    match g {
        Gate::Started => "started",
        Gate::Healthy => "healthy",
    }
}

/// The line of one service: state word, a bar of its tasks running, and
/// the rollout's state or the reason it waits.
fn view(e: &Entry, short: &str, resp: Option<&pb::ServiceResponse>) -> SlotView {
    let status = resp.and_then(|r| r.status.clone()).unwrap_or_default();
    // The rollout under way or the one this command started, not an
    // earlier one's outcome.
    let rollout = resp
        .and_then(|r| r.service.as_ref())
        .and_then(|s| s.update_status.as_ref())
        .filter(|u| !u.state.is_empty())
        .filter(|u| match &e.progress {
            Progress::Submitted(judge) => judge.started_it(u),
            Progress::Waiting | Progress::Converged | Progress::Failed(_) => false,
        });
    let bar = |s: &pb::ServiceStatus| {
        (s.running.min(s.desired) * 6)
            .checked_div(s.desired)
            .map_or(6, |x| usize::try_from(x).unwrap_or(0))
    };
    let (state, step, note) = match &e.progress {
        Progress::Waiting => ("waiting", None, e.note.clone()),
        // The line names the service already.
        Progress::Failed(why) => (
            "failed",
            None,
            why.strip_prefix(&format!("service {}: ", e.step.name))
                .unwrap_or(why)
                .to_string(),
        ),
        Progress::Converged => ("converged", None, String::new()),
        Progress::Submitted(judge) => {
            let word = if judge.converged() {
                "verifying"
            } else {
                match rollout.map(|u| u.state.as_str()) {
                    Some("updating") => "updating",
                    Some("rollback_started") => "rolling back",
                    _ => "starting",
                }
            };
            (word, Some(bar(&status)), e.note.clone())
        }
    };
    let mut note = note;
    if matches!(e.progress, Progress::Submitted(_) | Progress::Converged) {
        let mut parts = vec![format!("{}/{} running", status.running, status.desired)];
        if status.outdated > 0 {
            parts.push(format!("{} outdated", status.outdated));
        }
        if let Some(u) = rollout {
            let mut r = u.state.replace('_', " ");
            if !u.message.is_empty() {
                r = format!("{r}: {}", u.message);
            }
            parts.push(r);
        }
        // The scheduler's reason, unless it says what is shown already.
        let counted = format!("{} of {} tasks running", status.running, status.desired);
        if !note.is_empty()
            && !status.converged
            && note != counted
            && rollout.is_none_or(|u| u.message != note)
        {
            parts.push(note);
        }
        note = parts.join(", ");
    }
    SlotView {
        label: short.to_string(),
        name: e.step.name.clone(),
        state: state.into(),
        step,
        note: note.trim_end_matches(['.', ' ']).to_string(),
    }
}

/// Sends one change; the answer's rollout (if it started one) is the
/// one whose failure fails the service.
async fn submit(
    api: &mut Api,
    step: &Step,
    stable: Duration,
    display: &mut Display,
) -> Result<Judge, Error> {
    let first = match &step.change {
        Change::Create(spec) => api
            .client
            .create_service(pb::CreateServiceRequest {
                spec: Some(spec.clone()),
            })
            .await
            .map_err(|s| api.err(s))?
            .into_inner(),
        Change::Update(spec, version) => api
            .client
            .update_service(pb::UpdateServiceRequest {
                service: step.name.clone(),
                spec: Some(spec.clone()),
                version: *version,
                force: false,
            })
            .await
            .map_err(|s| api.err(s))?
            .into_inner(),
        Change::Rollback => api
            .client
            .rollback_service(pb::RollbackServiceRequest {
                service: step.name.clone(),
            })
            .await
            .map_err(|s| api.err(s))?
            .into_inner(),
        Change::Unchanged => pb::ServiceResponse::default(),
    };
    if !matches!(step.change, Change::Unchanged) {
        display.line(&format!("{} service {}", step.change.verb(), step.name));
    }
    for w in &first.warnings {
        eprintln!("warning: service {}: {w}", step.name);
    }
    Ok(Judge::new(rollout_started(&first), stable))
}

/// The outcome: the last read of each service (for `--output json`), and
/// the failures, one sentence each.
pub struct Outcome {
    pub services: Vec<pb::ServiceResponse>,
    pub failures: Vec<String>,
}

/// Submits `steps` in their dependency order and waits for them as the
/// flags say. `short` turns a full name into the label shown.
pub async fn run(
    api: &mut Api,
    steps: Vec<Step>,
    flags: &WaitFlags,
    short: impl Fn(&str) -> String,
) -> Result<Outcome, Error> {
    let mut display = Display::new(api.json(), flags.quiet);
    let deadline = Instant::now() + flags.timeout;
    let mut entries: Vec<Entry> = steps
        .into_iter()
        .map(|step| Entry {
            note: String::new(),
            progress: Progress::Waiting,
            step,
        })
        .collect();
    let mut board = Board::default();
    let mut watch: Option<Streaming<pb::WatchEvent>> = None;
    let mut lost = String::new();
    let mut last: HashMap<String, pb::ServiceResponse> = HashMap::new();
    let mut tick = progress::ticker();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if watch.is_none() {
            match progress::open_watch(api, "", &board).await? {
                Ok(w) => watch = Some(w),
                Err(m) => lost = m,
            }
        }
        if board.synced() {
            let names: BTreeMap<&str, ()> =
                entries.iter().map(|e| (e.step.name.as_str(), ())).collect();
            match api.list_services().await {
                Ok(all) => {
                    last = all
                        .into_iter()
                        .filter_map(|r| {
                            let name = r.service.as_ref()?.spec.as_ref()?.name.clone();
                            names.contains_key(name.as_str()).then_some((name, r))
                        })
                        .collect();
                    lost.clear();
                }
                Err(Error::Api { status, .. }) if status.code() == tonic::Code::Unavailable => {
                    lost = format!("lost the scheduler: {}", status.message());
                    watch = None;
                }
                Err(e) => return Err(e),
            }
            if lost.is_empty() {
                look(api, &mut entries, &board, &last, flags, &mut display).await?;
            }
        }
        let views: Vec<SlotView> = entries
            .iter()
            .map(|e| view(e, &short(&e.step.name), last.get(&e.step.name)))
            .collect();
        let mut total = pb::ServiceStatus::default();
        for r in last.values() {
            let s = r.status.clone().unwrap_or_default();
            total.running += s.running;
            total.desired += s.desired;
            total.outdated += s.outdated;
        }
        let all_sent = entries
            .iter()
            .all(|e| !matches!(e.progress, Progress::Waiting));
        let all_done = entries
            .iter()
            .all(|e| matches!(e.progress, Progress::Converged | Progress::Failed(_)));
        if board.synced() && (all_done || (flags.detach && all_sent)) {
            display.draw(&views, &total, "");
            break;
        }
        let verifying = entries
            .iter()
            .filter(|e| matches!(&e.progress, Progress::Submitted(j) if j.converged()))
            .count();
        let footer = if verifying > 0 && !lost.is_empty() {
            lost.clone()
        } else if verifying > 0 {
            format!(
                "verify: checking that converged services stay up for {}",
                format_duration(flags.stable)
            )
        } else {
            lost.clone()
        };
        display.draw(&views, &total, &footer);
        let converging = entries.iter().any(|e| match &e.progress {
            Progress::Waiting => true,
            Progress::Submitted(j) => !j.converged(),
            _ => false,
        });
        if converging && Instant::now() >= deadline {
            for e in &mut entries {
                let pending = match &e.progress {
                    Progress::Waiting => true,
                    Progress::Submitted(j) => !j.converged(),
                    _ => false,
                };
                if pending {
                    let why = if e.note.is_empty() { &lost } else { &e.note };
                    e.progress = Progress::Failed(format!(
                        "service {} did not converge within {}: {why}",
                        e.step.name,
                        format_duration(flags.timeout)
                    ));
                }
            }
            continue;
        }
        // The first service to have stayed converged for --stable is
        // looked at again then, not at the next tick (a moment already
        // past: the look could not be made, the tick paces the retries).
        let verified = entries
            .iter()
            .filter_map(|e| match &e.progress {
                Progress::Submitted(j) => j.verified_at(),
                _ => None,
            })
            .filter(|t| *t > Instant::now())
            .min();
        tokio::select! {
            () = progress::next_events(&mut watch, &mut board) => {}
            _ = tick.tick() => {}
            () = tokio::time::sleep_until(deadline), if converging => {}
            () = tokio::time::sleep_until(verified.unwrap_or(deadline)), if verified.is_some() => {}
            _ = &mut ctrl_c => {
                display.line("");
                return Err(Error::Interrupted(
                    "stopped waiting; the scheduler goes on with the changes sent \
                     (bronze stack ps)".into(),
                ));
            }
        }
    }
    let mut failures = Vec::new();
    let mut services = Vec::new();
    for e in &entries {
        if let Progress::Failed(why) = &e.progress {
            failures.push(why.clone());
        }
        if let Some(r) = last.get(&e.step.name) {
            services.push(r.clone());
        }
    }
    if failures.is_empty() && !flags.detach {
        let n = entries.len();
        display.line(&format!(
            "converged: {n} service{}, every task running",
            if n == 1 { "" } else { "s" }
        ));
    }
    Ok(Outcome { services, failures })
}

/// One pass over the entries with the services read now.
async fn look(
    api: &mut Api,
    entries: &mut [Entry],
    board: &Board,
    last: &HashMap<String, pb::ServiceResponse>,
    flags: &WaitFlags,
    display: &mut Display,
) -> Result<(), Error> {
    // Judge what was sent first, so a dependency that failed in this look
    // holds its dependents back.
    for e in entries.iter_mut() {
        let Progress::Submitted(judge) = &mut e.progress else {
            continue;
        };
        let name = &e.step.name;
        let Some(resp) = last.get(name) else {
            e.progress = Progress::Failed(format!("service {name} was removed meanwhile"));
            continue;
        };
        match judge.look(name, board, resp) {
            Verdict::Converged => e.progress = Progress::Converged,
            Verdict::Failed(why) => e.progress = Progress::Failed(why),
            Verdict::Verifying => e.note.clear(),
            Verdict::Waiting(m) => e.note = m,
        }
    }
    for i in 0..entries.len() {
        if !matches!(entries[i].progress, Progress::Waiting) {
            continue;
        }
        // An unchanged service runs already: nothing to hold back.
        if matches!(entries[i].step.change, Change::Unchanged) {
            let judge = submit(api, &entries[i].step, flags.stable, display).await?;
            entries[i].progress = Progress::Submitted(judge);
            continue;
        }
        // Ready when every dependency passed its gate; skipped when one
        // failed.
        let mut waits = Vec::new();
        let mut failed = None;
        for (dep, gate) in &entries[i].step.after {
            let dep_entry = entries.iter().find(|e| &e.step.name == dep);
            if let Some(Progress::Failed(_)) = dep_entry.map(|e| &e.progress) {
                failed = Some(dep.clone());
                break;
            }
            let ok = match (dep_entry.map(|e| &e.progress), last.get(dep)) {
                (Some(Progress::Waiting), _) | (_, None) => false,
                (_, Some(resp)) => passed(*gate, board, resp),
            };
            if !ok {
                waits.push(format!("{dep} {}", gate_word(*gate)));
            }
        }
        let name = entries[i].step.name.clone();
        if let Some(dep) = failed {
            entries[i].progress = Progress::Failed(format!(
                "service {name} was not deployed: it depends on {dep}, which failed"
            ));
        } else if !waits.is_empty() {
            entries[i].note = format!("waits for {}", waits.join(", "));
        } else {
            entries[i].note.clear();
            entries[i].progress = match submit(api, &entries[i].step, flags.stable, display).await {
                Ok(judge) => Progress::Submitted(judge),
                Err(e @ Error::Interrupted(_)) => return Err(e),
                Err(e) => Progress::Failed(format!("service {name}: {e}")),
            };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(desired: u64, running: u64, converged: bool) -> pb::ServiceResponse {
        pb::ServiceResponse {
            service: Some(pb::Service {
                id: "svc".into(),
                ..Default::default()
            }),
            status: Some(pb::ServiceStatus {
                desired,
                running,
                converged,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task(id: &str, state: pb::TaskState, outdated: bool) -> pb::Task {
        pb::Task {
            id: id.into(),
            service_id: "svc".into(),
            desired_state: pb::TaskState::Running.into(),
            outdated,
            status: Some(pb::TaskStatus {
                state: state.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn gates() {
        let mut board = Board::default();
        for t in [
            task("a", pb::TaskState::Starting, false),
            task("b", pb::TaskState::Running, true),
        ] {
            board.tasks.insert(t.id.clone(), t);
        }
        let r = resp(2, 1, false);
        assert!(
            !passed(Gate::Started, &board, &r),
            "an outdated task counts not"
        );
        let t = task("c", pb::TaskState::Running, false);
        board.tasks.insert(t.id.clone(), t);
        assert!(passed(Gate::Started, &board, &r), "started, health or not");
        assert!(!passed(Gate::Healthy, &board, &r));
        assert!(passed(Gate::Healthy, &board, &resp(2, 2, true)));
        let mut updating = resp(2, 2, true);
        if let Some(s) = updating.service.as_mut() {
            s.update_status = Some(pb::UpdateStatus {
                state: "updating".into(),
                ..Default::default()
            });
        }
        assert!(!passed(Gate::Healthy, &board, &updating), "mid-rollout");
    }

    #[test]
    fn a_line_says_each_thing_once() {
        let e = Entry {
            step: Step {
                name: "shop_web".into(),
                change: Change::Unchanged,
                after: Vec::new(),
            },
            progress: Progress::Submitted(Judge::new(None, Duration::ZERO)),
            note: "1 of 2 tasks running".into(),
        };
        let v = view(&e, "web", Some(&resp(2, 1, false)));
        assert_eq!(
            (v.label.as_str(), v.state.as_str(), v.note.as_str()),
            ("web", "starting", "1/2 running")
        );
        let waiting = Entry {
            progress: Progress::Waiting,
            note: "waits for shop_db healthy".into(),
            ..e
        };
        let v = view(&waiting, "web", None);
        assert_eq!(
            (v.state.as_str(), v.note.as_str(), v.step),
            ("waiting", "waits for shop_db healthy", None)
        );
    }
}
