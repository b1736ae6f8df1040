//! Waiting for a service to converge, with a live display of its tasks.
//!
//! One loop, level-triggered: whatever woke it (a Watch event, a tick, the
//! deadline), it re-reads the service (`GetService`: the scheduler's own
//! `ServiceStatus` is the only judge of convergence), redraws every slot
//! from the tasks the Watch stream keeps current, and applies the rule
//! below. Events only make it look sooner; a lost stream is reopened from
//! the last index and the loop goes on, so nothing depends on their order.
//!
//! The rule (also in `--help`, [`RULE`]): converged and still converged,
//! with the same tasks running, `--stable` later (Docker's "verify" step:
//! a container that exits a moment after it started is caught) -> exit 0;
//! stalled (the restart policy gave up on a slot) while no rollout is
//! under way -> exit 1 at once with the scheduler's message; otherwise
//! `--timeout` -> exit 1 with the last message it gave (why a task is
//! pending, or how one last failed).

use std::collections::{BTreeSet, HashMap};
use std::io::{IsTerminal as _, Write};
use std::time::{Duration, SystemTime};

use bronze_proto::scheduler::v1 as pb;
use clap::Args;
use tokio::time::Instant;
use tonic::Streaming;

use crate::client::{Api, Error};
use crate::units::{human_duration, parse_duration, system_time};
use crate::words;

/// The convergence rule, for the help of every command that waits.
pub const RULE: &str = "\
Waiting (unless --detach): the command follows the service's tasks, one line per slot \
(redrawn in place on a terminal, appended as they change otherwise), until the scheduler \
reports the service converged (every task it asks for runs the current version) and it \
stays converged, with the same tasks running, for --stable (Docker's verify step). Then it \
exits 0. It exits 1 at once if the restart policy gave up on a slot (the service is \
stalled) and no rollout is under way, or if the rollout paused (too many new tasks failed); \
once the service converged again after its update's failure_action rolled it back; and \
after --timeout otherwise; either way it prints the scheduler's last reason (why a task is pending, or how one last failed). Ctrl-C stops \
the waiting, not the change (exit 130).";

/// How the commands that change a service wait for it.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Waiting")]
pub struct WaitFlags {
    /// Return as soon as the scheduler accepted the change, without
    /// waiting for the tasks.
    #[arg(short, long)]
    pub detach: bool,

    /// Show no progress while waiting.
    #[arg(short, long)]
    pub quiet: bool,

    /// Stop waiting after this long and fail with the last reason.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// How long the service must stay converged, with the same tasks
    /// running, before the wait succeeds.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub stable: Duration,
}

/// Slots shown one line each; more are summed up in the headline.
const MAX_SLOT_LINES: usize = 20;
/// How often the display and the status are refreshed without events.
const TICK: Duration = Duration::from_millis(500);
const BAR: usize = 25;

/// What the Watch stream told so far: the service's tasks and the nodes.
#[derive(Default)]
pub struct Board {
    pub tasks: HashMap<String, pb::Task>,
    pub hosts: HashMap<String, String>,
    index: u64,
    synced: bool,
    incoming: Vec<pb::SnapshotChunk>,
}

impl Board {
    /// Whether the first snapshot has arrived.
    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn apply(&mut self, ev: pb::WatchEvent) {
        use pb::watch_event::Event;
        self.index = self.index.max(ev.index);
        match ev.event {
            Some(Event::Snapshot(chunk)) => {
                let last = chunk.last;
                self.incoming.push(chunk);
                if last {
                    self.tasks.clear();
                    self.hosts.clear();
                    for c in std::mem::take(&mut self.incoming) {
                        for n in c.nodes {
                            self.hosts.insert(n.id, n.hostname);
                        }
                        for t in c.tasks {
                            self.tasks.insert(t.id.clone(), t);
                        }
                    }
                    self.synced = true;
                }
            }
            Some(Event::Resumed(_)) => self.synced = true,
            Some(Event::Task(t)) => {
                self.tasks.insert(t.id.clone(), t);
            }
            Some(Event::Node(n)) => {
                self.hosts.insert(n.id, n.hostname);
            }
            Some(Event::Removed(r)) => match r.kind.as_str() {
                "task" => {
                    self.tasks.remove(&r.id);
                }
                "node" => {
                    self.hosts.remove(&r.id);
                }
                _ => {}
            },
            Some(Event::Service(_)) | None => {}
        }
    }
}

/// One slot as the display shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotView {
    /// "1/3" (replicated) or the node's hostname (global).
    pub label: String,
    /// "web.1" or "web@host1", for appended lines.
    pub name: String,
    /// The task's state, lower case; "new" when the slot has no task yet.
    pub state: String,
    /// 0..=6 along new, pending, assigned, preparing, starting, running;
    /// `None` once the task ended.
    pub step: Option<usize>,
    pub note: String,
}

fn created(t: &pb::Task) -> (i64, i32) {
    t.created_at
        .as_ref()
        .map_or((0, 0), |c| (c.seconds, c.nanos))
}

/// The task that says how a slot is doing: the newest that should run,
/// else the newest.
fn pick<'a>(tasks: &[&'a pb::Task]) -> Option<&'a pb::Task> {
    let running = i32::from(pb::TaskState::Running);
    tasks
        .iter()
        .filter(|t| t.desired_state == running)
        .max_by_key(|t| created(t))
        .or_else(|| tasks.iter().max_by_key(|t| created(t)))
        .copied()
}

pub fn rollout_started(resp: &pb::ServiceResponse) -> Option<(i64, i32)> {
    let u = resp.service.as_ref()?.update_status.as_ref()?;
    if !matches!(u.state.as_str(), "updating" | "rollback_started") {
        return None;
    }
    Some(
        u.started_at
            .as_ref()
            .map_or((0, 0), |s| (s.seconds, s.nanos)),
    )
}

pub fn rollout_in_progress(resp: &pb::ServiceResponse) -> bool {
    rollout_started(resp).is_some()
}

/// Why the rollout started at `ours` (or a later one: its automatic
/// rollback) failed, when it did: it paused (too many new tasks failed), or
/// its failure_action rolled it back.
pub fn rollout_failed(resp: &pb::ServiceResponse, ours: (i64, i32)) -> Option<String> {
    let u = resp.service.as_ref()?.update_status.as_ref()?;
    let started = u
        .started_at
        .as_ref()
        .map_or((0, 0), |s| (s.seconds, s.nanos));
    if started < ours {
        return None;
    }
    match u.state.as_str() {
        "paused" | "rollback_paused" => Some(u.message.clone()),
        "rollback_started" | "rollback_completed" if u.automatic => Some(u.message.clone()),
        _ => None,
    }
}

fn step(state: i32) -> Option<usize> {
    Some(match pb::TaskState::try_from(state).ok()? {
        pb::TaskState::Unspecified | pb::TaskState::New => 1,
        pb::TaskState::Pending => 2,
        pb::TaskState::Assigned => 3,
        pb::TaskState::Preparing => 4,
        pb::TaskState::Starting => 5,
        pb::TaskState::Running => 6,
        _ => return None,
    })
}

fn view(
    label: String,
    name: String,
    task: Option<&pb::Task>,
    rollout: Option<(i64, i32)>,
    now: SystemTime,
) -> SlotView {
    let Some(t) = task else {
        return SlotView {
            label,
            name,
            state: "new".into(),
            step: Some(0),
            note: String::new(),
        };
    };
    let st = t.status.clone().unwrap_or_default();
    let state = words::task_state(st.state);
    let ended = words::task_state_ended(st.state);
    let mut note = String::new();
    let waits = t
        .start_after
        .as_ref()
        .and_then(|s| system_time(s).duration_since(now).ok());
    if let Some(wait) = waits.filter(|_| !ended && st.state <= i32::from(pb::TaskState::Pending)) {
        note = format!(
            "restart {} in {}",
            t.attempt,
            human_duration(wait + Duration::from_millis(999))
        );
    } else if st.state == i32::from(pb::TaskState::Pending) {
        note = st.message.clone();
    } else if ended {
        let why = if st.err.is_empty() {
            &st.message
        } else {
            &st.err
        };
        note = match st.exit_code {
            Some(code) if code != 0 => format!("exit code {code}: {why}"),
            _ => why.clone(),
        };
    } else if st.state == i32::from(pb::TaskState::Starting) && !st.health.is_empty() {
        note = format!("health: {}", st.health);
    } else if rollout.is_some_and(|started| created(t) < started) {
        note = "outdated, waiting for its turn".into();
    }
    SlotView {
        label,
        name,
        state: state.into(),
        step: if ended { None } else { step(st.state) },
        note: note.trim_end_matches(['.', ' ']).to_string(),
    }
}

/// Every slot of the service, in order.
pub fn slots(board: &Board, resp: &pb::ServiceResponse, now: SystemTime) -> Vec<SlotView> {
    let Some(service) = resp.service.as_ref() else {
        return Vec::new();
    };
    let spec = service.spec.clone().unwrap_or_default();
    let rollout = rollout_started(resp);
    let tasks: Vec<&pb::Task> = board
        .tasks
        .values()
        .filter(|t| t.service_id == service.id)
        .collect();
    match words::replicas(&spec) {
        Some(n) => (1..=n)
            .map(|slot| {
                let in_slot: Vec<&pb::Task> =
                    tasks.iter().copied().filter(|t| t.slot == slot).collect();
                view(
                    format!("{slot}/{n}"),
                    format!("{}.{slot}", spec.name),
                    pick(&in_slot),
                    rollout,
                    now,
                )
            })
            .collect(),
        None => {
            let mut by_node: HashMap<&str, Vec<&pb::Task>> = HashMap::new();
            for t in &tasks {
                if t.slot == 0 {
                    by_node.entry(t.node_id.as_str()).or_default().push(t);
                }
            }
            let running = i32::from(pb::TaskState::Running);
            let mut out: Vec<SlotView> = by_node
                .into_iter()
                .filter(|(_, ts)| ts.iter().any(|t| t.desired_state == running))
                .map(|(node, ts)| {
                    let host = board
                        .hosts
                        .get(node)
                        .cloned()
                        .unwrap_or_else(|| words::short(node).to_string());
                    view(
                        host.clone(),
                        format!("{}@{host}", spec.name),
                        pick(&ts),
                        rollout,
                        now,
                    )
                })
                .collect();
            out.sort_by(|a, b| a.label.cmp(&b.label));
            out
        }
    }
}

fn bar(step: usize) -> String {
    let filled = (step * BAR / 6).min(BAR);
    let mut s = String::with_capacity(BAR + 2);
    s.push('[');
    if filled > 0 {
        s.extend(std::iter::repeat_n('=', filled - 1));
        s.push('>');
    }
    s.extend(std::iter::repeat_n(' ', BAR - filled));
    s.push(']');
    s
}

fn headline(status: &pb::ServiceStatus) -> String {
    let mut s = format!(
        "overall progress: {} out of {} tasks",
        status.running, status.desired
    );
    if status.outdated > 0 {
        s.push_str(&format!(", {} outdated", status.outdated));
    }
    s
}

/// The lines a terminal shows: the headline, then a line per slot (or, for
/// many slots, a count per state).
pub fn screen(views: &[SlotView], status: &pb::ServiceStatus) -> Vec<String> {
    let mut lines = vec![headline(status)];
    if views.len() > MAX_SLOT_LINES {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for v in views {
            match counts.iter_mut().find(|(s, _)| *s == v.state) {
                Some((_, n)) => *n += 1,
                None => counts.push((v.state.clone(), 1)),
            }
        }
        let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        lines.push(parts.join(", "));
        return lines;
    }
    let label_w = views.iter().map(|v| v.label.len()).max().unwrap_or(0);
    for v in views {
        let mut line = format!("{:>label_w$}: {:<10}", v.label, v.state);
        if let Some(step) = v.step {
            line.push(' ');
            line.push_str(&bar(step));
        }
        if !v.note.is_empty() {
            line.push_str("  ");
            line.push_str(&v.note);
        }
        lines.push(line);
    }
    lines
}

/// Where progress goes: stdout (tables) or stderr (`--output json`), a
/// terminal redrawn in place or a log appended to.
pub struct Display {
    out: Box<dyn Write + Send>,
    tty: bool,
    quiet: bool,
    width: usize,
    /// Lines drawn last time (terminal); the same lines are not redrawn.
    drawn: Vec<String>,
    /// What each slot last printed (appended lines).
    printed: HashMap<String, String>,
}

impl Display {
    pub fn new(to_stderr: bool, quiet: bool) -> Self {
        let (out, tty, size): (Box<dyn Write + Send>, bool, _) = if to_stderr {
            let e = std::io::stderr();
            (
                Box::new(std::io::stderr()),
                e.is_terminal(),
                terminal_size::terminal_size_of(&e),
            )
        } else {
            let o = std::io::stdout();
            (
                Box::new(std::io::stdout()),
                o.is_terminal(),
                terminal_size::terminal_size_of(&o),
            )
        };
        // A terminal that does not say its width (0) counts as 80 wide.
        let width = size
            .map(|(w, _)| usize::from(w.0))
            .filter(|w| *w > 0)
            .unwrap_or(80);
        Self::to(out, tty, quiet, width)
    }

    pub fn to(out: Box<dyn Write + Send>, tty: bool, quiet: bool, width: usize) -> Self {
        Self {
            out,
            tty,
            quiet,
            width: width.max(20),
            drawn: Vec::new(),
            printed: HashMap::new(),
        }
    }

    /// Draws the slots, and `footer` (when not empty) below them.
    pub fn draw(&mut self, views: &[SlotView], status: &pb::ServiceStatus, footer: &str) {
        if self.quiet {
            return;
        }
        if self.tty {
            let mut lines = screen(views, status);
            if !footer.is_empty() {
                lines.push(footer.to_string());
            }
            // Never wrap: a wrapped line would break the redraw.
            let lines: Vec<String> = lines
                .into_iter()
                .map(|l| l.chars().take(self.width - 1).collect())
                .collect();
            if lines == self.drawn {
                return;
            }
            let mut buf = String::new();
            if !self.drawn.is_empty() {
                // Back to the first line drawn, and clear what was below.
                buf.push_str(&format!("\x1b[{}A\r\x1b[J", self.drawn.len()));
            }
            for line in &lines {
                buf.push_str(line);
                buf.push('\n');
            }
            self.drawn = lines;
            let _ = self.out.write_all(buf.as_bytes());
        } else {
            for v in views {
                let text = if v.note.is_empty() {
                    v.state.clone()
                } else {
                    format!("{} ({})", v.state, v.note)
                };
                if self.printed.get(&v.name) != Some(&text) {
                    let _ = writeln!(self.out, "{}: {text}", v.name);
                    self.printed.insert(v.name.clone(), text);
                }
            }
            if !footer.is_empty() && self.printed.get("") != Some(&footer.to_string()) {
                let _ = writeln!(self.out, "{footer}");
                self.printed.insert(String::new(), footer.to_string());
            }
        }
        let _ = self.out.flush();
    }

    pub fn line(&mut self, text: &str) {
        if self.quiet {
            return;
        }
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
        // The next draw starts below this line.
        self.drawn.clear();
    }
}

async fn next_event(watch: &mut Option<Streaming<pb::WatchEvent>>) -> Option<pb::WatchEvent> {
    match watch {
        Some(s) => s.message().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

/// Waits for `name` to converge, as [`RULE`] says; returns the last read of
/// the service.
/// `first` is the change's own answer: the rollout it started, if any, is
/// the one whose failure fails the command.
pub async fn wait(
    api: &mut Api,
    name: &str,
    flags: &WaitFlags,
    first: &pb::ServiceResponse,
) -> Result<pb::ServiceResponse, Error> {
    let mut display = Display::new(api.json(), flags.quiet);
    let ours = rollout_started(first);
    wait_with(api, name, flags.timeout, flags.stable, ours, &mut display).await
}

/// The tasks of the service that run now.
pub fn running_tasks(board: &Board, resp: &pb::ServiceResponse) -> BTreeSet<String> {
    let id = resp.service.as_ref().map_or("", |s| s.id.as_str());
    let running = i32::from(pb::TaskState::Running);
    board
        .tasks
        .values()
        .filter(|t| {
            t.service_id == id
                && t.desired_state == running
                && t.status.as_ref().is_some_and(|s| s.state == running)
        })
        .map(|t| t.id.clone())
        .collect()
}

/// What one look at a service says, by [`RULE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not converged yet: the scheduler's reason, or the task count.
    Waiting(String),
    /// Converged; checking that the same tasks stay up for `stable`.
    Verifying,
    /// Converged and stayed so for `stable`.
    Converged,
    /// Failed, in a sentence naming the service.
    Failed(String),
}

/// Judges one service look after look: remembers since when it has been
/// converged, with which tasks, and which rollout was the command's own.
#[derive(Debug, Clone)]
pub struct Judge {
    ours: Option<(i64, i32)>,
    stable: Duration,
    converged_since: Option<(Instant, BTreeSet<String>)>,
}

impl Judge {
    /// `ours`: when the rollout the command started began
    /// ([`rollout_started`] of the change's answer), if it started one.
    pub fn new(ours: Option<(i64, i32)>, stable: Duration) -> Self {
        Self {
            ours,
            stable,
            converged_since: None,
        }
    }

    /// Whether `u` is the command's own rollout (or its automatic
    /// rollback), or one under way.
    pub fn started_it(&self, u: &pb::UpdateStatus) -> bool {
        let started = u
            .started_at
            .as_ref()
            .map_or((0, 0), |s| (s.seconds, s.nanos));
        matches!(u.state.as_str(), "updating" | "rollback_started")
            || self.ours.is_some_and(|o| started >= o)
    }

    /// Whether the last look found the service converged.
    pub fn converged(&self) -> bool {
        self.converged_since.is_some()
    }

    /// When a service found converged will have stayed so, with the same
    /// tasks, for --stable: the wait looks again then rather than at the
    /// next tick. `None` when the last look did not find it converged.
    pub fn verified_at(&self) -> Option<Instant> {
        self.converged_since
            .as_ref()
            .map(|(since, _)| *since + self.stable)
    }

    /// `resp` read now, `board` kept current by a Watch (synced).
    pub fn look(&mut self, name: &str, board: &Board, resp: &pb::ServiceResponse) -> Verdict {
        let status = resp.status.clone().unwrap_or_default();
        // A paused rollout fails at once; an automatic rollback once it is
        // done (the old version serves again).
        let failed = self.ours.and_then(|o| rollout_failed(resp, o));
        let paused = resp
            .service
            .as_ref()
            .and_then(|s| s.update_status.as_ref())
            .is_some_and(|u| u.state.ends_with("paused"));
        if let Some(why) = failed.as_ref().filter(|_| paused || status.converged) {
            return Verdict::Failed(format!("service {name}: {why}"));
        }
        if status.converged {
            let tasks = running_tasks(board, resp);
            let since = match self.converged_since.take() {
                Some((since, same)) if same == tasks => since,
                _ => Instant::now(),
            };
            self.converged_since = Some((since, tasks));
            if since.elapsed() >= self.stable {
                Verdict::Converged
            } else {
                Verdict::Verifying
            }
        } else {
            self.converged_since = None;
            if status.stalled && !rollout_in_progress(resp) {
                return Verdict::Failed(format!(
                    "service {name} did not converge: {}",
                    status.message
                ));
            }
            Verdict::Waiting(if status.message.is_empty() {
                format!("{} of {} tasks running", status.running, status.desired)
            } else {
                status.message
            })
        }
    }
}

/// The next event of a Watch, if one is open; a closed stream (or an
/// error) sets `watch` to `None` so the caller reopens it from the last
/// index. Waits forever without a stream.
pub async fn next_events(watch: &mut Option<Streaming<pb::WatchEvent>>, board: &mut Board) {
    match next_event(watch).await {
        Some(ev) => {
            board.apply(ev);
            // Take whatever else already arrived before looking.
            loop {
                match tokio::time::timeout(Duration::ZERO, next_event(watch)).await {
                    Ok(Some(ev)) => board.apply(ev),
                    Ok(None) => {
                        *watch = None;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        None => *watch = None,
    }
}

/// Opens a Watch (of `service`, or of everything when empty) from the
/// board's index. NotFound is an error; an unreachable scheduler is a
/// reason to retry, returned as the message to show.
pub async fn open_watch(
    api: &mut Api,
    service: &str,
    board: &Board,
) -> Result<Result<Streaming<pb::WatchEvent>, String>, Error> {
    match api
        .client
        .watch(pb::WatchRequest {
            from_index: board.index,
            service: service.to_string(),
        })
        .await
    {
        Ok(r) => Ok(Ok(r.into_inner())),
        Err(s) if s.code() == tonic::Code::NotFound => Err(api.err(s)),
        Err(s) => Ok(Err(format!("lost the scheduler: {}", s.message()))),
    }
}

/// The refresh of a wait without events: every [`TICK`], never bunched.
pub fn ticker() -> tokio::time::Interval {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

pub async fn wait_with(
    api: &mut Api,
    name: &str,
    timeout: Duration,
    stable: Duration,
    ours: Option<(i64, i32)>,
    display: &mut Display,
) -> Result<pb::ServiceResponse, Error> {
    let deadline = Instant::now() + timeout;
    let mut judge = Judge::new(ours, stable);
    let mut board = Board::default();
    let mut watch: Option<Streaming<pb::WatchEvent>> = None;
    let mut last_message = String::new();
    let mut tick = ticker();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if watch.is_none() {
            match open_watch(api, name, &board).await? {
                Ok(w) => watch = Some(w),
                Err(m) => last_message = m,
            }
        }
        if board.synced {
            match api.get_service(name).await {
                Ok(resp) => {
                    let status = resp.status.clone().unwrap_or_default();
                    let views = slots(&board, &resp, SystemTime::now());
                    match judge.look(name, &board, &resp) {
                        Verdict::Failed(why) => {
                            display.draw(&views, &status, "");
                            return Err(Error::msg(why));
                        }
                        Verdict::Converged => {
                            display.draw(&views, &status, "");
                            display.line(&format!(
                                "converged: {} of {} tasks running",
                                status.running, status.desired
                            ));
                            return Ok(resp);
                        }
                        // The deadline is for converging, not for the check.
                        Verdict::Verifying => display.draw(
                            &views,
                            &status,
                            &format!(
                                "verify: converged; checking that the tasks stay up for {}",
                                crate::units::format_duration(stable)
                            ),
                        ),
                        Verdict::Waiting(m) => {
                            display.draw(&views, &status, "");
                            last_message = m;
                        }
                    }
                }
                Err(Error::Api { status, .. }) if status.code() == tonic::Code::Unavailable => {
                    last_message = format!("lost the scheduler: {}", status.message());
                    watch = None;
                }
                Err(e) => return Err(e),
            }
        }
        if !judge.converged() && Instant::now() >= deadline {
            return Err(Error::msg(format!(
                "service {name} did not converge within {}: {last_message}",
                crate::units::format_duration(timeout)
            )));
        }
        // Only ahead of now: a look that could not be made (the scheduler
        // lost) leaves a past moment, and the tick paces the retries.
        let verified = judge.verified_at().filter(|t| *t > Instant::now());
        tokio::select! {
            () = next_events(&mut watch, &mut board) => {}
            _ = tick.tick() => {}
            () = tokio::time::sleep_until(deadline), if !judge.converged() => {}
            () = tokio::time::sleep_until(verified.unwrap_or(deadline)), if verified.is_some() => {}
            _ = &mut ctrl_c => {
                display.line("");
                return Err(Error::Interrupted(format!(
                    "stopped waiting; the scheduler goes on with the change \
                     (bronze service ps {name})"
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        })
    }

    fn task(
        id: &str,
        slot: u64,
        state: pb::TaskState,
        desired: pb::TaskState,
        at: i64,
    ) -> pb::Task {
        pb::Task {
            id: id.into(),
            service_id: "svc".into(),
            service_name: "web".into(),
            slot,
            node_id: "node1".into(),
            desired_state: desired.into(),
            status: Some(pb::TaskStatus {
                state: state.into(),
                message: if state == pb::TaskState::Pending {
                    "0/1 nodes available: 1 fails constraint node.labels.zone==eu".into()
                } else {
                    String::new()
                },
                err: if state == pb::TaskState::Failed {
                    "boom".into()
                } else {
                    String::new()
                },
                exit_code: (state == pb::TaskState::Failed).then_some(3),
                ..Default::default()
            }),
            created_at: ts(at),
            ..Default::default()
        }
    }

    fn response(replicas: u64) -> pb::ServiceResponse {
        pb::ServiceResponse {
            service: Some(pb::Service {
                id: "svc".into(),
                spec: Some(pb::ServiceSpec {
                    name: "web".into(),
                    mode: Some(pb::service_spec::Mode::Replicated(pb::Replicated {
                        replicas,
                    })),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(pb::ServiceStatus {
                desired: replicas,
                running: 1,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn slots_show_the_task_that_should_run() {
        use pb::TaskState::*;
        let mut board = Board::default();
        for t in [
            task("a", 1, Running, Running, 10),
            task("b", 2, Failed, Shutdown, 10),
            task("c", 2, Pending, Running, 20),
            task("d", 3, Failed, Running, 20),
        ] {
            board.tasks.insert(t.id.clone(), t);
        }
        let views = slots(&board, &response(4), SystemTime::UNIX_EPOCH);
        let got: Vec<(&str, &str, &str)> = views
            .iter()
            .map(|v| (v.label.as_str(), v.state.as_str(), v.note.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("1/4", "running", ""),
                (
                    "2/4",
                    "pending",
                    "0/1 nodes available: 1 fails constraint node.labels.zone==eu"
                ),
                ("3/4", "failed", "exit code 3: boom"),
                ("4/4", "new", ""),
            ]
        );
        assert_eq!(views[0].name, "web.1");
    }

    #[test]
    fn a_terminal_is_redrawn_in_place_and_a_log_appended() {
        use pb::TaskState::*;
        #[derive(Clone, Default)]
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut board = Board::default();
        board
            .tasks
            .insert("a".into(), task("a", 1, Pending, Running, 1));
        let resp = response(1);
        let status = resp.status.clone().unwrap();

        let buf = Shared::default();
        let mut tty = Display::to(Box::new(buf.clone()), true, false, 40);
        tty.draw(&slots(&board, &resp, SystemTime::UNIX_EPOCH), &status, "");
        board
            .tasks
            .insert("a".into(), task("a", 1, Running, Running, 1));
        tty.draw(&slots(&board, &resp, SystemTime::UNIX_EPOCH), &status, "");
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        tty.draw(&slots(&board, &resp, SystemTime::UNIX_EPOCH), &status, "");
        assert_eq!(
            buf.0.lock().unwrap().len(),
            out.len(),
            "nothing new, nothing drawn"
        );
        assert!(out.contains("\x1b[2A\r\x1b[J"), "{out:?}");
        let last = out.lines().last().unwrap();
        assert!(last.starts_with("1/1: running    [====="), "{out:?}");
        assert_eq!(last.chars().count(), 39, "cut to the width: {out:?}");

        let buf = Shared::default();
        let mut log = Display::to(Box::new(buf.clone()), false, false, 80);
        board
            .tasks
            .insert("a".into(), task("a", 1, Pending, Running, 1));
        log.draw(&slots(&board, &resp, SystemTime::UNIX_EPOCH), &status, "");
        log.draw(&slots(&board, &resp, SystemTime::UNIX_EPOCH), &status, "");
        board
            .tasks
            .insert("a".into(), task("a", 1, Running, Running, 1));
        log.draw(&slots(&board, &resp, SystemTime::UNIX_EPOCH), &status, "");
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            out,
            "web.1: pending (0/1 nodes available: 1 fails constraint node.labels.zone==eu)\n\
             web.1: running\n"
        );
    }

    #[test]
    fn a_converged_service_is_looked_at_again_when_stable_has_passed() {
        let board = Board::default();
        let mut resp = response(1);
        let stable = Duration::from_secs(60);
        let mut judge = Judge::new(None, stable);
        assert_eq!(judge.verified_at(), None);
        let before = Instant::now();
        resp.status.as_mut().unwrap().converged = true;
        assert!(matches!(
            judge.look("web", &board, &resp),
            Verdict::Verifying
        ));
        let at = judge
            .verified_at()
            .expect("converged: a moment to look again");
        assert!(at >= before + stable && at <= Instant::now() + stable);
        judge.look("web", &board, &resp);
        assert_eq!(judge.verified_at(), Some(at), "same tasks: same moment");
        resp.status.as_mut().unwrap().converged = false;
        judge.look("web", &board, &resp);
        assert_eq!(judge.verified_at(), None);
    }

    #[test]
    fn bars() {
        assert_eq!(bar(0), format!("[{}]", " ".repeat(BAR)));
        assert_eq!(bar(6), format!("[{}>]", "=".repeat(BAR - 1)));
    }
}
