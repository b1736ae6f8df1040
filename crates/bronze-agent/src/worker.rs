//! Runs the node's assignments on the engine.
//!
//! Each assigned task has one loop (`task_loop`) that is level-triggered:
//! whatever woke it (a new assignment, an engine event about its
//! container, a resync), it inspects the container as it is now, compares
//! with what the scheduler wants, does the one thing missing (pull+create+
//! start, stop with the grace period, remove) and reports the state it
//! then sees. So events may be late, doubled or lost without harm, and an
//! agent restarted next to running containers picks them up as they are.
//!
//! The agent never restarts a container on its own: a task that exited is
//! reported, and the scheduler decides (a new task, per the restart
//! policy). A container whose health check fails is stopped and reported
//! failed. What the agent caused it knows from the engine's answers
//! (create and start return when done); events are for what it did not
//! cause (a crash, an OOM kill, a health change).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptions, InspectContainerOptions,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions,
    StopContainerOptionsBuilder,
};
use bronze_proto::scheduler::v1 as pb;
use bronze_runtime::Shutdown;
use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, Semaphore, watch};

use crate::config::Config;
use crate::engine::{self, NODE_LABEL, TASK_LABEL};
use crate::metrics::AgentMetrics;

/// Statuses waiting to be sent, and the last one of every task.
#[derive(Default)]
pub struct Outbox {
    pending: Mutex<BTreeMap<String, pb::TaskStatus>>,
    last: Mutex<HashMap<String, pb::TaskStatus>>,
    pub notify: Notify,
}

fn same(a: &pb::TaskStatus, b: &pb::TaskStatus) -> bool {
    a.state == b.state
        && a.health == b.health
        && a.exit_code == b.exit_code
        && a.container_id == b.container_id
        && a.ports == b.ports
        && a.err == b.err
}

impl Outbox {
    /// Queues a status unless it says nothing new.
    pub fn report(&self, task: &str, mut status: pb::TaskStatus) {
        {
            let mut last = self.last.lock();
            if last.get(task).is_some_and(|l| same(l, &status)) {
                return;
            }
            if status.timestamp.is_none() {
                status.timestamp = Some(prost_types::Timestamp::from(std::time::SystemTime::now()));
            }
            last.insert(task.to_string(), status.clone());
        }
        self.pending.lock().insert(task.to_string(), status);
        self.notify.notify_one();
    }

    pub fn take(&self) -> Vec<pb::TaskReport> {
        std::mem::take(&mut *self.pending.lock())
            .into_iter()
            .map(|(task_id, status)| pb::TaskReport {
                task_id,
                status: Some(status),
            })
            .collect()
    }

    /// Every task's last status (for the hello), clearing what was pending.
    pub fn all(&self) -> Vec<pb::TaskReport> {
        self.pending.lock().clear();
        self.last
            .lock()
            .iter()
            .map(|(task_id, status)| pb::TaskReport {
                task_id: task_id.clone(),
                status: Some(status.clone()),
            })
            .collect()
    }

    fn last_state(&self, task: &str) -> Option<pb::TaskState> {
        self.last.lock().get(task).map(pb::TaskStatus::state)
    }

    fn seed(&self, task: &str, status: pb::TaskStatus) {
        self.last.lock().entry(task.to_string()).or_insert(status);
    }

    fn forget(&self, task: &str) {
        self.last.lock().remove(task);
        self.pending.lock().remove(task);
    }
}

struct TaskHandle {
    assignment: watch::Sender<Option<Arc<pb::Assignment>>>,
    poke: Arc<Notify>,
}

pub struct Worker {
    pub docker: Docker,
    node_id: RwLock<String>,
    tasks: Mutex<HashMap<String, TaskHandle>>,
    pub outbox: Outbox,
    ops: Semaphore,
    /// Image presence, per reference: when it was made present, and the
    /// one pull (or check) tasks starting together share.
    images: Mutex<HashMap<String, (std::time::Instant, ImageCell)>>,
    /// Tasks being drained before their stop signal: since when.
    draining: Mutex<HashMap<String, std::time::Instant>>,
    config: Arc<Config>,
    metrics: Arc<AgentMetrics>,
    shutdown: Shutdown,
    /// Stack networks, names and virtual IPs (with `--discovery`).
    pub mesh: Option<Arc<crate::mesh::Mesh>>,
}

/// Every task is looked at again this often, whatever the events say.
const RESYNC: Duration = Duration::from_secs(30);

/// An image made present is not checked (or pulled) again for this long.
const IMAGE_FRESH: Duration = Duration::from_secs(10);

type ImageCell = Arc<tokio::sync::OnceCell<Result<(), String>>>;

impl Worker {
    pub fn new(
        docker: Docker,
        node_id: String,
        config: Arc<Config>,
        metrics: Arc<AgentMetrics>,
        shutdown: Shutdown,
        mesh: Option<Arc<crate::mesh::Mesh>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            docker,
            node_id: RwLock::new(node_id),
            tasks: Mutex::new(HashMap::new()),
            outbox: Outbox::default(),
            ops: Semaphore::new(config.parallel_ops),
            images: Mutex::new(HashMap::new()),
            draining: Mutex::new(HashMap::new()),
            config,
            metrics,
            shutdown,
            mesh,
        })
    }

    /// The stacks of this node's assigned tasks, with their services and
    /// target ports (TCP): what the mesh serves here.
    pub fn stacks(&self) -> crate::mesh::Local {
        let mut out = crate::mesh::Local::new();
        for h in self.tasks.lock().values() {
            let a = h.assignment.borrow();
            let Some(spec) = a.as_ref().and_then(|a| a.spec.as_ref()) else {
                continue;
            };
            let Some(stack) = engine::stack_of(spec) else {
                continue;
            };
            let ports = out
                .entry(stack.to_string())
                .or_default()
                .entry(spec.name.clone())
                .or_default();
            for p in &spec.ports {
                if (p.protocol.is_empty() || p.protocol == "tcp")
                    && let Ok(port) = u16::try_from(p.target)
                {
                    ports.insert(port);
                }
            }
        }
        out
    }

    pub fn node_id(&self) -> String {
        self.node_id.read().clone()
    }

    pub fn set_node_id(&self, id: &str) {
        *self.node_id.write() = id.to_string();
    }

    /// Reads this node's containers from the engine: what the hello says
    /// this node runs.
    pub async fn scan(&self) -> Result<(), String> {
        let node = self.node_id();
        if node.is_empty() {
            return Ok(());
        }
        for (task, id) in self.containers(&node).await? {
            if let Ok(c) = self
                .docker
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
            {
                self.outbox.seed(&task, engine::status_of(&c));
            }
        }
        Ok(())
    }

    /// (task id, container id) of every container of `node`.
    async fn containers(&self, node: &str) -> Result<Vec<(String, String)>, String> {
        let filters: HashMap<String, Vec<String>> =
            [("label".to_string(), vec![format!("{NODE_LABEL}={node}")])].into();
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| e.to_string())?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let task = c.labels.as_ref()?.get(TASK_LABEL)?.clone();
                Some((task, c.id?))
            })
            .collect())
    }

    /// Applies a message of assignments. A full set also removes the
    /// containers of this node whose task is not in it.
    pub async fn assign(self: &Arc<Self>, msg: pb::Assignments) {
        let mut in_set = std::collections::HashSet::new();
        for a in msg.updates {
            let Some(task) = a.task.as_ref() else {
                continue;
            };
            let id = task.id.clone();
            in_set.insert(id.clone());
            self.update(&id, Some(Arc::new(a)));
        }
        for id in &msg.removed {
            self.update(id, None);
        }
        if let Some(mesh) = &self.mesh {
            mesh.changed.notify_one();
        }
        if msg.full {
            let known: Vec<String> = self.tasks.lock().keys().cloned().collect();
            for id in known {
                if !in_set.contains(&id) {
                    self.update(&id, None);
                }
            }
            match self.containers(&self.node_id()).await {
                Ok(list) => {
                    for (task, _) in list {
                        if !in_set.contains(&task) {
                            tracing::info!(task = %task, "removing the container of a task no longer assigned here");
                            self.update(&task, None);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list this node's containers"),
            }
        }
    }

    /// Sets a task's assignment (`None`: removed), starting its loop.
    fn update(self: &Arc<Self>, id: &str, a: Option<Arc<pb::Assignment>>) {
        let mut tasks = self.tasks.lock();
        if let Some(h) = tasks.get(id) {
            h.assignment.send_replace(a);
            return;
        }
        let (tx, rx) = watch::channel(a);
        let poke = Arc::new(Notify::new());
        tasks.insert(
            id.to_string(),
            TaskHandle {
                assignment: tx,
                poke: poke.clone(),
            },
        );
        let this = self.clone();
        let id = id.to_string();
        tokio::spawn(async move { this.task_loop(id, rx, poke).await });
    }

    /// The id of a task's container on this node, if it has one.
    pub async fn container_of(&self, task: &str) -> Option<String> {
        let filters: HashMap<String, Vec<String>> =
            [("label".to_string(), vec![format!("{TASK_LABEL}={task}")])].into();
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .ok()?;
        list.into_iter().find_map(|c| c.id)
    }

    /// Whether task `id` is assigned to this node.
    pub fn has_task(&self, id: &str) -> bool {
        self.tasks.lock().contains_key(id)
    }

    /// Wakes a task's loop (an engine event about its container).
    pub fn poke(&self, task: &str) {
        if let Some(h) = self.tasks.lock().get(task) {
            h.poke.notify_one();
        }
    }

    fn poke_all(&self) {
        for h in self.tasks.lock().values() {
            h.poke.notify_one();
        }
    }

    async fn task_loop(
        self: Arc<Self>,
        id: String,
        mut rx: watch::Receiver<Option<Arc<pb::Assignment>>>,
        poke: Arc<Notify>,
    ) {
        loop {
            let a = rx.borrow_and_update().clone();
            let mut again = RESYNC;
            match a {
                None => {
                    self.remove(&id).await;
                    let mut tasks = self.tasks.lock();
                    // Only if no new assignment came meanwhile.
                    if rx.borrow().is_none() {
                        tasks.remove(&id);
                        self.outbox.forget(&id);
                        return;
                    }
                    continue;
                }
                Some(a) => {
                    if let Some(wait) = self.converge(&id, &a).await {
                        again = wait;
                    }
                }
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                () = poke.notified() => {}
                () = tokio::time::sleep(again) => {}
                () = self.shutdown.wait() => return,
            }
        }
    }

    async fn inspect(&self, name: &str) -> Option<bollard::models::ContainerInspectResponse> {
        self.docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .ok()
    }

    /// One step towards what the assignment asks. Returns how soon to look
    /// again when only time is missing (a drain under way).
    async fn converge(&self, id: &str, a: &pb::Assignment) -> Option<Duration> {
        let (Some(task), Some(spec)) = (a.task.as_ref(), a.spec.as_ref()) else {
            return None;
        };
        let name = engine::container_name(task);
        let container = self.inspect(&name).await;
        let wants_running = task.desired_state() == pb::TaskState::Running;
        let known = self
            .outbox
            .last_state(id)
            .unwrap_or(pb::TaskState::Unspecified)
            .max(
                task.status
                    .as_ref()
                    .map_or(pb::TaskState::Unspecified, |s| s.state()),
            );
        match (wants_running, container) {
            (true, None) => {
                if known <= pb::TaskState::Preparing {
                    self.start(id, a, &name).await;
                } else if !is_terminal(known) {
                    self.outbox.report(
                        id,
                        failed(
                            "its container is gone",
                            "container not found on the node (removed outside Bronze?)",
                        ),
                    );
                }
            }
            (true, Some(c)) => {
                let status = engine::status_of(&c);
                if is_terminal(known) && is_terminal(status.state()) {
                    // Its end is reported (with the reason the agent knew,
                    // e.g. "container unhealthy"): the exit that follows a
                    // stop says nothing new.
                    return None;
                }
                if status.state() == pb::TaskState::Preparing && !is_terminal(known) {
                    // Created, never started (the agent stopped in between).
                    self.start(id, a, &name).await;
                } else if status.state() == pb::TaskState::Running && status.health == "unhealthy" {
                    self.stop(&name, spec).await;
                    let mut s = self
                        .inspect(&name)
                        .await
                        .map_or_else(|| status.clone(), |c| engine::status_of(&c));
                    s.state = pb::TaskState::Failed.into();
                    s.message = "stopped: its health check failed".into();
                    s.err = "container unhealthy".into();
                    self.outbox.report(id, s);
                } else {
                    self.outbox.report(id, status);
                }
            }
            (false, Some(c)) => {
                let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
                if running {
                    // Drained first: discovery takes it out while it still
                    // serves what it has; the stop signal comes after.
                    let drain = task
                        .drain
                        .map(|d| {
                            Duration::new(
                                d.seconds.max(0).unsigned_abs(),
                                d.nanos.max(0).unsigned_abs(),
                            )
                        })
                        .unwrap_or_default();
                    if !drain.is_zero() {
                        let since = *self
                            .draining
                            .lock()
                            .entry(id.to_string())
                            .or_insert_with(std::time::Instant::now);
                        let left = drain.saturating_sub(since.elapsed());
                        if !left.is_zero() {
                            return Some(left);
                        }
                    }
                    self.stop(&name, spec).await;
                }
                self.draining.lock().remove(id);
                let was = engine::status_of(&c);
                if !running && is_terminal(was.state()) && is_terminal(known) {
                    // Ended before it was asked to stop: keep that report.
                    return None;
                }
                let mut s = self
                    .inspect(&name)
                    .await
                    .map_or(was, |c| engine::status_of(&c));
                s.state = pb::TaskState::Shutdown.into();
                s.message = "shut down".into();
                s.err.clear();
                self.outbox.report(id, s);
            }
            (false, None) => {
                if !is_terminal(known) {
                    let mut s = pb::TaskStatus {
                        state: pb::TaskState::Shutdown.into(),
                        message: "shut down before it started".into(),
                        ..Default::default()
                    };
                    s.timestamp = None;
                    self.outbox.report(id, s);
                }
            }
        }
        None
    }

    /// Pull, create, start; reports each step and the outcome.
    async fn start(&self, id: &str, a: &pb::Assignment, name: &str) {
        let (Some(task), Some(spec)) = (a.task.as_ref(), a.spec.as_ref()) else {
            return;
        };
        let Ok(_permit) = self.ops.acquire().await else {
            return;
        };
        self.outbox.report(
            id,
            pb::TaskStatus {
                state: pb::TaskState::Preparing.into(),
                message: "preparing".into(),
                ..Default::default()
            },
        );
        let host_auth = engine::registry_host(&spec.image)
            .and_then(|h| self.config.registry_auth.get(h))
            .cloned();
        let auth_text = if !host_auth.as_deref().unwrap_or_default().is_empty() {
            host_auth
        } else {
            None
        };
        if let Err(e) = self.image(&spec.image, auth_text.as_deref()).await {
            self.metrics.start_errors.inc();
            let message = pull_failed(&spec.image, &e);
            self.outbox.report(id, rejected(&message, &e));
            return;
        }
        let net = match (&self.mesh, engine::stack_of(spec)) {
            (Some(mesh), Some(stack)) => match mesh.attach(stack, &self.node_id()).await {
                Ok(a) => Some(a),
                Err(e) => {
                    self.metrics.start_errors.inc();
                    self.outbox
                        .report(id, rejected("joining the stack network failed", &e));
                    return;
                }
            },
            _ => None,
        };
        let files = match crate::files::write(Path::new(&self.config.files_dir), a) {
            Ok(m) => m,
            Err(e) => {
                self.metrics.start_errors.inc();
                self.outbox
                    .report(id, rejected("writing its secrets and configs failed", &e));
                return;
            }
        };
        let mut body = engine::create_body(task, spec, files, net.as_ref());
        if net.is_none() && !self.config.task_network.is_empty() {
            engine::join_network(&mut body, &self.config.task_network);
        }
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        match self.docker.create_container(Some(options), body).await {
            Ok(_) => {}
            // Created before (the agent stopped between create and start).
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {}
            Err(e) => {
                self.metrics.start_errors.inc();
                self.outbox.report(
                    id,
                    rejected("creating the container failed", &engine::engine_message(&e)),
                );
                return;
            }
        }
        if let Err(e) = self
            .docker
            .start_container(name, None::<StartContainerOptions>)
            .await
        {
            self.metrics.start_errors.inc();
            let message = engine::engine_message(&e);
            // A container that cannot start (a port taken, a bad command)
            // is removed, so its name is free for the next task.
            let _ = self
                .docker
                .remove_container(
                    name,
                    Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                )
                .await;
            self.outbox
                .report(id, rejected("starting the container failed", &message));
            return;
        }
        self.metrics.started.inc();
        match self.inspect(name).await {
            Some(c) => self.outbox.report(id, engine::status_of(&c)),
            None => self.outbox.report(
                id,
                failed(
                    "its container is gone",
                    "container removed right after it started",
                ),
            ),
        }
    }

    /// Makes an image present, once for all the tasks that start it at the
    /// same time (a rollout of ten replicas pulls once), and trusts a
    /// success for [`IMAGE_FRESH`].
    async fn image(&self, image: &str, auth: Option<&str>) -> Result<(), String> {
        let cell = {
            let mut images = self.images.lock();
            let fresh = images
                .get(image)
                .filter(|(at, cell)| {
                    at.elapsed() < IMAGE_FRESH && !matches!(cell.get(), Some(Err(_)))
                })
                .map(|(_, cell)| cell.clone());
            match fresh {
                Some(cell) => cell,
                None => {
                    let cell = Arc::new(tokio::sync::OnceCell::new());
                    images.insert(image.to_string(), (std::time::Instant::now(), cell.clone()));
                    cell
                }
            }
        };
        let auth = auth.and_then(|a| a.split_once(':'));
        cell.get_or_init(|| engine::ensure_image(&self.docker, image, auth))
            .await
            .clone()
    }

    async fn stop(&self, name: &str, spec: &pb::ServiceSpec) {
        let grace = spec
            .stop_grace_period
            .as_ref()
            .map_or(10, |d| d.seconds + i64::from(d.nanos > 0));
        let options = StopContainerOptionsBuilder::default()
            .t(i32::try_from(grace).unwrap_or(i32::MAX))
            .build();
        if let Err(e) = self.docker.stop_container(name, Some(options)).await
            && !engine::is_not_found(&e)
        {
            tracing::warn!(container = name, error = %e, "stopping a container failed");
        }
    }

    /// Removes a task's container (stopping it first, with its grace).
    async fn remove(&self, id: &str) {
        let filters: HashMap<String, Vec<String>> =
            [("label".to_string(), vec![format!("{TASK_LABEL}={id}")])].into();
        let Ok(list) = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
        else {
            return;
        };
        for c in list {
            let Some(cid) = c.id else { continue };
            if c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING) {
                // Without a timeout the engine uses the container's own
                // (the grace period it was created with).
                let _ = self
                    .docker
                    .stop_container(
                        &cid,
                        None::<bollard::query_parameters::StopContainerOptions>,
                    )
                    .await;
            }
            if let Err(e) = self
                .docker
                .remove_container(
                    &cid,
                    Some(
                        RemoveContainerOptionsBuilder::default()
                            .force(true)
                            .v(false)
                            .build(),
                    ),
                )
                .await
                && !engine::is_not_found(&e)
            {
                tracing::warn!(container = %cid, error = %e, "removing a container failed");
                return;
            }
        }
        crate::files::remove(Path::new(&self.config.files_dir), id);
    }

    /// Follows the engine's events about this node's containers and wakes
    /// their tasks' loops; reconnects by itself, looking at every task
    /// again after each reconnect.
    pub async fn watch_events(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let node = self.node_id();
            // Only what the agent did not cause itself: create and start
            // it knows from the engine's answers, and every event costs an
            // inspect the engine has to answer.
            let filters: HashMap<String, Vec<String>> = [
                ("type".to_string(), vec!["container".to_string()]),
                ("label".to_string(), vec![format!("{NODE_LABEL}={node}")]),
                (
                    "event".to_string(),
                    ["die", "oom", "destroy", "health_status", "pause", "unpause"]
                        .map(str::to_string)
                        .to_vec(),
                ),
            ]
            .into();
            let mut stream = self.docker.events(Some(EventsOptions {
                since: None,
                until: None,
                filters: Some(filters),
            }));
            self.poke_all();
            loop {
                let next = tokio::select! {
                    e = stream.next() => e,
                    () = self.shutdown.wait() => return,
                };
                match next {
                    Some(Ok(ev)) => {
                        backoff = Duration::from_millis(100);
                        self.metrics.events.inc();
                        if let Some(task) = ev
                            .actor
                            .and_then(|a| a.attributes)
                            .and_then(|attrs| attrs.get(TASK_LABEL).cloned())
                        {
                            self.poke(&task);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "engine event stream broke; reconnecting");
                        break;
                    }
                    None => break,
                }
                if self.node_id() != node {
                    break;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.shutdown.wait() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

fn is_terminal(s: pb::TaskState) -> bool {
    s >= pb::TaskState::Complete
}

fn failed(message: &str, err: &str) -> pb::TaskStatus {
    pb::TaskStatus {
        state: pb::TaskState::Failed.into(),
        message: message.into(),
        err: err.into(),
        ..Default::default()
    }
}

/// What `service ps` says of a failed pull: when the engine could not
/// reach the registry at all, which registry and what to do, since the
/// engine (not the agent, not the CLI) is what dials it.
fn pull_failed(image: &str, err: &str) -> String {
    const UNREACHABLE: [&str; 5] = [
        "connection refused",
        "no such host",
        "i/o timeout",
        "network is unreachable",
        "server gave HTTP response to HTTPS client",
    ];
    match engine::registry_host(image) {
        Some(host) if UNREACHABLE.iter().any(|u| err.contains(u)) => format!(
            "pulling the image failed: the engine could not reach the registry {host}; the \
             engine pulls by itself, so {host} must answer from the engine's host (a registry \
             not on loopback also needs TLS or the engine's insecure-registries)"
        ),
        _ => "pulling the image failed".into(),
    }
}

fn rejected(message: &str, err: &str) -> pb::TaskStatus {
    pb::TaskStatus {
        state: pb::TaskState::Rejected.into(),
        message: message.into(),
        err: err.into(),
        ..Default::default()
    }
}
