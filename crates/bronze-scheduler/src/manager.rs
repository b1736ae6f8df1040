//! The manager: the one task that changes the cluster's state.
//!
//! Everything that changes state arrives here as an [`Event`] (an API call,
//! an agent joining, task status from an agent) through one channel. The
//! loop takes every event waiting, applies them to its working copy of the
//! state, runs the passes (orchestrator, rollouts, placement, node health)
//! over what they touched, commits every changed key in one store
//! transaction, and only then publishes the copy as the snapshot readers
//! see and answers the API calls of the round. A failed commit throws the
//! round away (the working copy goes back to the last snapshot) and the API
//! calls get `Unavailable`: the store and the snapshot never disagree.
//!
//! The passes are level-triggered and idempotent: they look at the state as
//! it is, so events may come in any order, batched or not, and a scheduler
//! restarted from the store continues where it was.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bronze_store::Store;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use crate::changes::ChangeLog;
use crate::error::Error;
use crate::metrics::SchedulerMetrics;
use crate::model::autodeploy::{self, Push};
use crate::model::{
    Availability, Desired, EngineInfo, Invalid, Kind, Mode, Node, NodeState, Object, ObjectVersion,
    Plain, Resources, Service, ServiceSpec, Stored, Task, TaskState, TaskStatus, Time, UpdateState,
    UpdateStatus, Version, new_id,
};
use crate::secrets::{self, Sealer};
use crate::state::State;
use crate::{orchestrator, persist, placement, update};

/// Timing and sizes the manager works with.
#[derive(Debug, Clone)]
pub struct Tunables {
    /// How often agents send a heartbeat.
    pub heartbeat_period: Duration,
    /// A node not heard from this long is down and its tasks move.
    pub node_grace: Duration,
    /// Ended tasks kept per slot (`service ps` history).
    pub task_history: usize,
    /// Spec versions kept per service (beyond those tasks still use).
    pub versions_kept: usize,
    /// Discovery is followed: tasks publishing ports are up only once
    /// registered and passing there.
    pub discovery: bool,
    /// The registry host names (`host:port`) images name when they come
    /// from the registry followed for autodeploy.
    pub registry_names: Vec<String>,
}

impl Default for Tunables {
    fn default() -> Self {
        Self {
            heartbeat_period: Duration::from_secs(5),
            node_grace: Duration::from_secs(15),
            task_history: 5,
            versions_kept: 10,
            discovery: false,
            registry_names: Vec::new(),
        }
    }
}

/// What an agent says about itself when it joins.
#[derive(Debug, Clone)]
pub struct Hello {
    pub node_id: String,
    pub hostname: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub resources: Resources,
    pub engine: EngineInfo,
    pub address: String,
    /// Tasks whose containers exist there, with their state.
    pub tasks: Vec<(String, TaskStatus)>,
}

/// A change to the cluster, with where to send its answer.
pub enum Event {
    CreateService(ServiceSpec, oneshot::Sender<Result<String, Error>>),
    UpdateService {
        service: String,
        spec: Option<ServiceSpec>,
        replicas: Option<u64>,
        version: u64,
        force: bool,
        reply: oneshot::Sender<Result<String, Error>>,
    },
    Rollback(String, oneshot::Sender<Result<String, Error>>),
    RemoveService(String, oneshot::Sender<Result<String, Error>>),
    UpdateNode {
        node: String,
        availability: Option<Availability>,
        label_add: Vec<(String, String)>,
        label_rm: Vec<String>,
        reply: oneshot::Sender<Result<String, Error>>,
    },
    RemoveNode {
        node: String,
        force: bool,
        reply: oneshot::Sender<Result<String, Error>>,
    },
    RotateToken(oneshot::Sender<Result<String, Error>>),
    /// An agent joined (or came back): answers its node id.
    Hello {
        hello: Hello,
        session: u64,
        reply: oneshot::Sender<Result<String, Error>>,
    },
    /// Task status from a node's agent.
    Status {
        node: String,
        session: u64,
        reports: Vec<(String, TaskStatus)>,
    },
    /// A node's session ended.
    Gone {
        node: String,
        session: u64,
    },
    /// What discovery says of tasks' instances now: all passing, or not;
    /// `None`: no instance registered.
    Registered(Vec<(String, Option<bool>)>),
    /// The followed registry reported a push by tag (autodeploy).
    Pushed(Push),
    /// A secret or config created, or given a new version (which rolls
    /// the services that use it). Answers the name; the data was checked
    /// by the API (`object::validate`).
    PutObject {
        kind: Kind,
        name: String,
        data: Plain,
        labels: std::collections::BTreeMap<String, String>,
        how: Put,
        reply: oneshot::Sender<Result<String, Error>>,
    },
    /// Removes a secret or config no live service uses.
    RemoveObject {
        kind: Kind,
        name: String,
        reply: oneshot::Sender<Result<String, Error>>,
    },
}

/// What a [`Event::PutObject`] may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Create it; AlreadyExists when the name is taken.
    Create,
    /// A new version; NotFound when it does not exist.
    Update,
    /// A new version, or create it (stack deploy).
    Upsert,
}

/// The last time each node's agent was heard from; sessions write it
/// without going through the manager.
#[derive(Default)]
pub struct Heartbeats(Mutex<HashMap<String, Instant>>);

impl Heartbeats {
    pub fn beat(&self, node: &str) {
        self.0.lock().insert(node.to_string(), Instant::now());
    }

    fn last(&self, node: &str) -> Option<Instant> {
        self.0.lock().get(node).copied()
    }
}

type Reply = (
    oneshot::Sender<Result<String, Error>>,
    Result<String, Error>,
);

pub struct Manager {
    state: State,
    store: Arc<dyn Store>,
    published: watch::Sender<Arc<State>>,
    changes: Arc<ChangeLog>,
    heartbeats: Arc<Heartbeats>,
    tunables: Tunables,
    metrics: Arc<SchedulerMetrics>,
    started: Instant,
    /// The live session of each node (a newer one supersedes).
    sessions: HashMap<String, u64>,
    /// Services to reconcile this round.
    touched: HashSet<String>,
    /// Services waiting for a time (a rollout's batch delay): reconciled
    /// again when it comes, even if nothing else touches them.
    timers: BTreeSet<(Time, String)>,
    all_touched: bool,
    /// Answers to send once this round is committed.
    replies: Vec<Reply>,
    /// Seals secrets' data before it is stored.
    sealer: Arc<Sealer>,
}

/// Events taken in one round at most (the rest wait for the next).
const ROUND: usize = 1024;

impl Manager {
    pub fn new(
        state: State,
        store: Arc<dyn Store>,
        published: watch::Sender<Arc<State>>,
        changes: Arc<ChangeLog>,
        heartbeats: Arc<Heartbeats>,
        tunables: Tunables,
        metrics: Arc<SchedulerMetrics>,
    ) -> Self {
        let mut state = state;
        state.discovery = tunables.discovery;
        Self {
            state,
            store,
            published,
            changes,
            heartbeats,
            tunables,
            metrics,
            started: Instant::now(),
            sessions: HashMap::new(),
            touched: HashSet::new(),
            timers: BTreeSet::new(),
            all_touched: true,
            replies: Vec::new(),
            sealer: Arc::new(Sealer::ephemeral()),
        }
    }

    /// The key secrets are sealed with (the same the dispatcher opens them
    /// with).
    #[must_use]
    pub fn with_sealer(mut self, sealer: Arc<Sealer>) -> Self {
        self.sealer = sealer;
        self
    }

    /// Runs until the channel closes or `shutdown` fires.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Event>, shutdown: bronze_runtime::Shutdown) {
        if self.state.join_token.is_empty() {
            self.state.set_join_token(new_token());
        }
        let mut wake: Option<Instant> = None;
        loop {
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => {
                        self.apply(ev);
                        let mut n = 1;
                        while n < ROUND {
                            match rx.try_recv() {
                                Ok(ev) => { self.apply(ev); n += 1; }
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                () = sleep => {}
                () = shutdown.wait() => break,
            }
            wake = self.round().await;
        }
    }

    /// Runs the passes, commits, publishes, answers. Returns when to run
    /// again without an event (a restart delay, a batch delay, a node's
    /// heartbeat deadline).
    async fn round(&mut self) -> Option<Instant> {
        let started = Instant::now();
        let now = Time::now();
        let mut wake: Option<Time> = self.check_nodes(now);
        while let Some((at, _)) = self.timers.first()
            && *at <= now
        {
            if let Some((_, id)) = self.timers.pop_first() {
                self.touched.insert(id);
            }
        }
        let services: Vec<String> = if std::mem::take(&mut self.all_touched) {
            self.touched.clear();
            self.state.services.keys().cloned().collect()
        } else {
            self.touched.drain().collect()
        };
        for id in &services {
            if let Some(at) = orchestrator::mark_up(&mut self.state, id, now) {
                self.timers.insert((at, id.clone()));
            }
            orchestrator::reconcile(&mut self.state, id, now, self.tunables.task_history);
            let before = self.state.service(id).map(|s| s.update.state);
            if let Some(at) = update::advance(&mut self.state, id, now) {
                self.timers.insert((at, id.clone()));
            }
            self.autodeploy_outcome(id, before);
            if self.autodeploy_queued(id) {
                self.timers.insert((now, id.clone()));
            }
            orchestrator::reconcile(&mut self.state, id, now, self.tunables.task_history);
            self.prune_versions(id);
        }
        if let Some((at, _)) = self.timers.first() {
            wake = Some(wake.map_or(*at, |w| w.min(*at)));
        }
        let placed = placement::place(&mut self.state, now);
        if let Some(at) = placed.wake_at {
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        self.metrics.placed.inc_by(placed.placed as u64);
        self.commit().await;
        self.metrics
            .round_seconds
            .observe(started.elapsed().as_secs_f64());
        wake.map(|at| {
            let wait = at.since(Time::now());
            Instant::now() + wait
        })
    }

    async fn commit(&mut self) {
        let replies = std::mem::take(&mut self.replies);
        if !self.state.has_dirty() {
            for (tx, r) in replies {
                let _ = tx.send(r);
            }
            return;
        }
        let keys = self.state.take_dirty();
        let result = match persist::ops(&self.state, &keys) {
            Ok(ops) => {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.apply(&ops))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => {
                self.state.index += 1;
                let index = self.state.index;
                self.changes.push(index, keys.into_iter().collect());
                self.published.send_replace(Arc::new(self.state.clone()));
                self.metrics.commits.inc();
                for (tx, r) in replies {
                    let _ = tx.send(r);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot commit the cluster state; the round is undone");
                self.metrics.commit_errors.inc();
                self.state = State::clone(&self.published.borrow());
                self.all_touched = true;
                for (tx, _) in replies {
                    let _ = tx.send(Err(Error::Unavailable(format!(
                        "the scheduler cannot write its store ({e}); nothing was changed"
                    ))));
                }
            }
        }
    }

    fn reply(&mut self, tx: oneshot::Sender<Result<String, Error>>, r: Result<String, Error>) {
        self.replies.push((tx, r));
    }

    fn touch(&mut self, service_id: &str) {
        self.touched.insert(service_id.to_string());
    }

    fn apply(&mut self, ev: Event) {
        match ev {
            Event::CreateService(spec, reply) => {
                let r = self.create_service(spec);
                self.reply(reply, r);
            }
            Event::UpdateService {
                service,
                spec,
                replicas,
                version,
                force,
                reply,
            } => {
                let r = self.new_version(&service, spec, replicas, version, force, None);
                self.reply(reply, r);
            }
            Event::Rollback(service, reply) => {
                let r = self.rollback(&service);
                self.reply(reply, r);
            }
            Event::RemoveService(service, reply) => {
                let r = match self.state.find_service(&service).cloned() {
                    Some(s) => {
                        let mut s = Service::clone(&s);
                        s.removing = true;
                        s.updated_at = Time::now();
                        let id = s.id.clone();
                        self.state.put_service(s);
                        self.touch(&id);
                        Ok(id)
                    }
                    None => Err(no_service(&service)),
                };
                self.reply(reply, r);
            }
            Event::UpdateNode {
                node,
                availability,
                label_add,
                label_rm,
                reply,
            } => {
                let r = match self.state.find_node(&node).cloned() {
                    Some(n) => {
                        let mut n = Node::clone(&n);
                        if let Some(a) = availability {
                            n.availability = a;
                        }
                        for (k, v) in label_add {
                            n.labels.insert(k, v);
                        }
                        for k in label_rm {
                            n.labels.remove(&k);
                        }
                        n.updated_at = Time::now();
                        let id = n.id.clone();
                        self.state.put_node(n);
                        self.all_touched = true;
                        Ok(id)
                    }
                    None => Err(no_node(&node)),
                };
                self.reply(reply, r);
            }
            Event::RemoveNode { node, force, reply } => {
                let r = self.remove_node(&node, force);
                self.reply(reply, r);
            }
            Event::RotateToken(reply) => {
                let token = new_token();
                self.state.set_join_token(token.clone());
                self.reply(reply, Ok(token));
            }
            Event::Hello {
                hello,
                session,
                reply,
            } => {
                let r = self.hello(hello, session);
                self.reply(reply, r);
            }
            Event::Status {
                node,
                session,
                reports,
            } => {
                if self.sessions.get(&node) == Some(&session) {
                    self.status(&node, reports);
                }
            }
            Event::Gone { node, session } => {
                if self.sessions.get(&node) == Some(&session) {
                    self.sessions.remove(&node);
                }
            }
            Event::Pushed(push) => self.pushed(&push),
            Event::Registered(changes) => {
                for (task, passing) in changes {
                    match passing {
                        Some(p) => {
                            self.state.registered.insert(task.clone(), p);
                        }
                        None => {
                            self.state.registered.remove(&task);
                        }
                    }
                    if let Some(t) = self.state.task(&task) {
                        let service = t.service_id.clone();
                        self.touch(&service);
                    }
                }
            }
            Event::PutObject {
                kind,
                name,
                data,
                labels,
                how,
                reply,
            } => {
                let r = self.put_object(kind, &name, &data, labels, how);
                self.reply(reply, r);
            }
            Event::RemoveObject { kind, name, reply } => {
                let r = self.remove_object(kind, &name);
                self.reply(reply, r);
            }
        }
    }

    /// What is stored of a version's data: sealed for a secret.
    fn stored(&self, kind: Kind, name: &str, version: u64, data: &Plain) -> Stored {
        match kind {
            Kind::Secret => Stored(self.sealer.seal(&secrets::aad(name, version), &data.0)),
            Kind::Config => Stored(data.0.clone()),
        }
    }

    /// Whether a stored version holds `data`.
    fn holds(&self, kind: Kind, name: &str, v: &ObjectVersion, data: &Plain) -> bool {
        match kind {
            Kind::Secret => self
                .sealer
                .open(&secrets::aad(name, v.version), &v.data.0)
                .is_ok_and(|p| p == data.0),
            Kind::Config => v.data.0 == data.0,
        }
    }

    fn put_object(
        &mut self,
        kind: Kind,
        name: &str,
        data: &Plain,
        labels: std::collections::BTreeMap<String, String>,
        how: Put,
    ) -> Result<String, Error> {
        let now = Time::now();
        let existing = self.state.find_object(kind, name).cloned();
        let Some(existing) = existing else {
            if how == Put::Update {
                return Err(no_object(kind, name));
            }
            let version = ObjectVersion {
                version: 1,
                created_at: now,
                labels,
                size: data.0.len() as u64,
                data: self.stored(kind, name, 1, data),
            };
            self.state.put_object(Object {
                id: new_id(),
                kind,
                name: name.to_string(),
                created_at: now,
                updated_at: now,
                versions: vec![version],
            });
            return Ok(name.to_string());
        };
        if how == Put::Create {
            return Err(Error::AlreadyExists(format!(
                "{} {name:?} already exists (`bronze {} update` adds a version)",
                kind.as_str(),
                kind.as_str()
            )));
        }
        let name = existing.name.clone();
        let latest = existing.latest().ok_or_else(|| {
            Error::Unavailable(format!("{} {name:?} has no version", kind.as_str()))
        })?;
        let labels = if labels.is_empty() {
            latest.labels.clone()
        } else {
            labels
        };
        if self.holds(kind, &name, latest, data) && labels == latest.labels {
            return Ok(name);
        }
        let next = latest.version + 1;
        let mut object = Object::clone(&existing);
        object.versions.push(ObjectVersion {
            version: next,
            created_at: now,
            labels,
            size: data.0.len() as u64,
            data: self.stored(kind, &name, next, data),
        });
        object.updated_at = now;
        self.state.put_object(object);
        self.roll_users(kind, &name, next);
        self.prune_object_versions(kind, &name);
        Ok(name)
    }

    /// Moves every live service whose current spec mounts the object to
    /// its version `version`: a new service version, rolled out with the
    /// service's update_config.
    fn roll_users(&mut self, kind: Kind, name: &str, version: u64) {
        let services: Vec<Arc<Service>> = self.state.services.values().cloned().collect();
        for s in services {
            if s.removing {
                continue;
            }
            let Some(current) = self.state.current(&s).cloned() else {
                continue;
            };
            if !current.spec.uses(kind, name) {
                continue;
            }
            let mut spec = ServiceSpec::clone(&current.spec);
            for r in spec.refs_mut(kind).iter_mut().filter(|r| r.source == name) {
                r.version = version;
            }
            if let Err(e) = self.new_version(&s.id, Some(spec), None, 0, false, None) {
                tracing::warn!(service = %s.name, error = %e, "cannot roll a service to a new {} version", kind.as_str());
            }
        }
    }

    /// Drops versions of an object beyond the last few that no stored
    /// service version mounts (so a rollback always finds its value).
    fn prune_object_versions(&mut self, kind: Kind, name: &str) {
        let Some(object) = self.state.find_object(kind, name).cloned() else {
            return;
        };
        let keep_from = object
            .versions
            .len()
            .saturating_sub(self.tunables.versions_kept);
        if keep_from == 0 {
            return;
        }
        let used: BTreeSet<u64> = self
            .state
            .versions
            .values()
            .flat_map(|v| v.spec.refs(kind).iter())
            .filter(|r| r.source == name)
            .map(|r| r.version)
            .collect();
        let mut object = Object::clone(&object);
        let before = object.versions.len();
        let mut i = 0;
        object.versions.retain(|v| {
            i += 1;
            i > keep_from || used.contains(&v.version)
        });
        if object.versions.len() != before {
            self.state.put_object(object);
        }
    }

    fn remove_object(&mut self, kind: Kind, name: &str) -> Result<String, Error> {
        let object = self
            .state
            .find_object(kind, name)
            .cloned()
            .ok_or_else(|| no_object(kind, name))?;
        let users = self.state.object_users(kind, &object.name, true);
        if !users.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "{} {:?} is in use by service{} {}: remove {} or update {} first",
                kind.as_str(),
                object.name,
                if users.len() == 1 { "" } else { "s" },
                users.join(", "),
                if users.len() == 1 { "it" } else { "them" },
                if users.len() == 1 { "it" } else { "them" },
            )));
        }
        self.state.remove_object(kind, &object.name);
        Ok(object.name.clone())
    }

    /// Pins every secret and config a spec mounts to a version: the one it
    /// names, or the latest. Refuses an object that does not exist.
    fn pin_refs(&self, spec: &mut ServiceSpec) -> Result<(), Error> {
        for kind in [Kind::Secret, Kind::Config] {
            for (i, r) in spec.refs_mut(kind).iter_mut().enumerate() {
                let Some(object) = self.state.find_object(kind, &r.source) else {
                    return Err(Invalid::new(
                        format!("spec.{}[{i}].source", kind.field()),
                        format!(
                            "no {} {:?}: create it first (`bronze {} create`)",
                            kind.as_str(),
                            r.source,
                            kind.as_str()
                        ),
                    )
                    .into());
                };
                if r.version == 0 {
                    r.version = object.latest().map_or(0, |v| v.version);
                } else if object.version(r.version).is_none() {
                    return Err(Invalid::new(
                        format!("spec.{}[{i}].version", kind.field()),
                        format!(
                            "{} {:?} has no version {}",
                            kind.as_str(),
                            r.source,
                            r.version
                        ),
                    )
                    .into());
                }
            }
        }
        Ok(())
    }

    fn create_service(&mut self, mut spec: ServiceSpec) -> Result<String, Error> {
        self.pin_refs(&mut spec)?;
        if self.state.find_service(&spec.name).is_some() {
            return Err(Error::AlreadyExists(format!(
                "service {:?} already exists",
                spec.name
            )));
        }
        let now = Time::now();
        let id = new_id();
        let service = Service {
            id: id.clone(),
            name: spec.name.clone(),
            version: 1,
            previous_version: 0,
            created_at: now,
            updated_at: now,
            update: UpdateStatus::default(),
            removing: false,
            autodeploy_queued: None,
            autodeploy_failed: String::new(),
        };
        self.state.put_version(Version::new(&id, 1, spec));
        self.state.put_service(service);
        self.touch(&id);
        Ok(id)
    }

    /// A new version of a service's spec (an update); `push`: it came from
    /// a push to the registry (autodeploy), not from an API call.
    fn new_version(
        &mut self,
        name: &str,
        spec: Option<ServiceSpec>,
        replicas: Option<u64>,
        expected: u64,
        force: bool,
        push: Option<Push>,
    ) -> Result<String, Error> {
        let service = self
            .state
            .find_service(name)
            .cloned()
            .ok_or_else(|| no_service(name))?;
        if service.removing {
            return Err(Error::FailedPrecondition(format!(
                "service {name:?} is being removed"
            )));
        }
        if expected != 0 && expected != service.version {
            return Err(Error::FailedPrecondition(format!(
                "service {name:?} is at version {}, not {expected}: it changed meanwhile",
                service.version
            )));
        }
        let current =
            self.state.current(&service).cloned().ok_or_else(|| {
                Error::Unavailable("the service's current spec is missing".into())
            })?;
        let mut spec = spec.unwrap_or_else(|| ServiceSpec::clone(&current.spec));
        self.pin_refs(&mut spec)?;
        if spec.name != service.name {
            return Err(Invalid::new(
                "spec.name",
                format!(
                    "a service cannot be renamed ({:?} to {:?})",
                    service.name, spec.name
                ),
            )
            .into());
        }
        if let Some(n) = replicas {
            match spec.mode {
                Mode::Replicated { .. } => spec.mode = Mode::Replicated { replicas: n },
                Mode::Global => {
                    return Err(Error::FailedPrecondition(format!(
                        "service {name:?} is global: it runs one task per node and cannot be scaled"
                    )));
                }
            }
        }
        if matches!(
            (&spec.mode, &current.spec.mode),
            (Mode::Global, Mode::Replicated { .. }) | (Mode::Replicated { .. }, Mode::Global)
        ) {
            return Err(Invalid::new(
                "spec.mode",
                "a service cannot change between replicated and global",
            )
            .into());
        }
        if spec == *current.spec && !force {
            return Ok(service.id.clone());
        }
        let now = Time::now();
        let next = self
            .state
            .service_versions(&service.id)
            .last()
            .copied()
            .unwrap_or(service.version)
            + 1;
        let version = Version::new(&service.id, next, spec);
        let mut s = Service::clone(&service);
        s.previous_version = service.version;
        s.version = next;
        s.updated_at = now;
        if version.template != current.template || force {
            s.update = UpdateStatus {
                state: UpdateState::Updating,
                started_at: now,
                completed_at: Time(0),
                message: String::new(),
                next_batch_at: Time(0),
                config: version.spec.update,
                force_before: if force {
                    now
                } else {
                    service.update.force_before
                },
                automatic: false,
                autodeploy: push,
            };
            s.update.message = s.update.say("update in progress");
        }
        self.state.put_version(version);
        let id = s.id.clone();
        self.state.put_service(s);
        self.touch(&id);
        Ok(id)
    }

    fn rollback(&mut self, name: &str) -> Result<String, Error> {
        let service = self
            .state
            .find_service(name)
            .cloned()
            .ok_or_else(|| no_service(name))?;
        let from =
            self.state.current(&service).cloned().ok_or_else(|| {
                Error::Unavailable("the service's current spec is missing".into())
            })?;
        let Some(to) = (service.previous_version != 0)
            .then(|| {
                self.state
                    .version(&service.id, service.previous_version)
                    .cloned()
            })
            .flatten()
        else {
            return Err(Error::FailedPrecondition(format!(
                "service {name:?} has no previous version to roll back to"
            )));
        };
        let now = Time::now();
        let mut s = Service::clone(&service);
        s.version = to.version;
        s.previous_version = from.version;
        s.updated_at = now;
        s.update = UpdateStatus {
            state: UpdateState::RollbackStarted,
            started_at: now,
            completed_at: Time(0),
            message: format!("rollback to version {} in progress", to.version),
            next_batch_at: Time(0),
            config: from.spec.rollback,
            force_before: service.update.force_before,
            automatic: false,
            autodeploy: None,
        };
        let id = s.id.clone();
        self.state.put_service(s);
        self.touch(&id);
        Ok(id)
    }

    /// A push to the followed registry: every opted-in service it
    /// concerns rolls to it, or queues it when a rollout is under way.
    fn pushed(&mut self, push: &Push) {
        let services: Vec<Arc<Service>> = self.state.services.values().cloned().collect();
        for service in services {
            if service.removing || self.autodeploy_image(&service, push).is_none() {
                continue;
            }
            let result = if push.digest == service.autodeploy_failed {
                tracing::warn!(
                    service = %service.name, reference = %push.reference(), digest = %push.digest,
                    "autodeploy skipped: this digest was rolled back before"
                );
                "skipped"
            } else if service.update.state.in_progress() {
                tracing::info!(
                    service = %service.name, reference = %push.reference(), digest = %push.digest,
                    "autodeploy queued: a rollout is under way"
                );
                let mut s = Service::clone(&service);
                s.autodeploy_queued = Some(push.clone());
                self.state.put_service(s);
                "queued"
            } else {
                self.autodeploy(&service, push.clone())
            };
            self.metrics
                .autodeploys
                .get_or_create(&crate::metrics::AutodeployLabel { result })
                .inc();
        }
    }

    /// The image `push` gives `service`, if it is opted in and the push
    /// concerns it.
    fn autodeploy_image(&self, service: &Service, push: &Push) -> Option<String> {
        let current = self.state.current(service)?;
        let policy = autodeploy::policy(&current.spec.labels)?;
        autodeploy::plan(
            &policy,
            &current.spec.image,
            &self.tunables.registry_names,
            push,
        )
    }

    /// Starts the rolling update `push` asks of `service`; the metric's
    /// result.
    fn autodeploy(&mut self, service: &Service, push: Push) -> &'static str {
        let Some(image) = self.autodeploy_image(service, &push) else {
            return "unchanged";
        };
        let Some(current) = self.state.current(service).cloned() else {
            return "unchanged";
        };
        let mut spec = ServiceSpec::clone(&current.spec);
        spec.image = image;
        let (name, reference, digest) =
            (service.name.clone(), push.reference(), push.digest.clone());
        match self.new_version(&name, Some(spec), None, 0, false, Some(push)) {
            Ok(_) => {
                tracing::info!(service = %name, %reference, %digest, "autodeploy started");
                "started"
            }
            Err(e) => {
                tracing::warn!(service = %name, %reference, %digest, error = %e, "autodeploy refused");
                "refused"
            }
        }
    }

    /// Applies the push queued during a rollout once it ended; whether an
    /// update started.
    fn autodeploy_queued(&mut self, service_id: &str) -> bool {
        let Some(service) = self.state.service(service_id).cloned() else {
            return false;
        };
        if service.update.state.in_progress() || service.removing {
            return false;
        }
        let Some(push) = service.autodeploy_queued.clone() else {
            return false;
        };
        let mut s = Service::clone(&service);
        s.autodeploy_queued = None;
        self.state.put_service(s);
        let Some(service) = self.state.service(service_id).cloned() else {
            return false;
        };
        let result = if push.digest == service.autodeploy_failed {
            "skipped"
        } else {
            self.autodeploy(&service, push)
        };
        self.metrics
            .autodeploys
            .get_or_create(&crate::metrics::AutodeployLabel { result })
            .inc();
        result == "started"
    }

    /// Counts and logs how an autodeploy's rollout ended (this round's
    /// `advance` moved it from `before`), and remembers a digest rolled back.
    fn autodeploy_outcome(&mut self, service_id: &str, before: Option<UpdateState>) {
        let Some(service) = self.state.service(service_id).cloned() else {
            return;
        };
        let Some(push) = service.update.autodeploy.clone() else {
            return;
        };
        let now = service.update.state;
        if before == Some(now) {
            return;
        }
        let result = match now {
            UpdateState::Completed => {
                tracing::info!(
                    service = %service.name, reference = %push.reference(), digest = %push.digest,
                    "autodeploy completed"
                );
                "completed"
            }
            UpdateState::RollbackStarted if service.update.automatic => {
                tracing::warn!(
                    service = %service.name, reference = %push.reference(), digest = %push.digest,
                    reason = %service.update.message, "autodeploy rolled back"
                );
                let mut s = Service::clone(&service);
                s.autodeploy_failed = push.digest.clone();
                self.state.put_service(s);
                "rolled_back"
            }
            UpdateState::Paused => {
                tracing::warn!(
                    service = %service.name, reference = %push.reference(), digest = %push.digest,
                    reason = %service.update.message, "autodeploy paused"
                );
                "paused"
            }
            _ => return,
        };
        self.metrics
            .autodeploys
            .get_or_create(&crate::metrics::AutodeployLabel { result })
            .inc();
    }

    fn remove_node(&mut self, name: &str, force: bool) -> Result<String, Error> {
        let node = self
            .state
            .find_node(name)
            .cloned()
            .ok_or_else(|| no_node(name))?;
        if node.state == NodeState::Ready && !force {
            return Err(Error::FailedPrecondition(format!(
                "node {} is ready: stop its agent (or drain it) first, or use --force",
                node.hostname
            )));
        }
        let tasks: Vec<Arc<Task>> = self.state.node_tasks(&node.id).cloned().collect();
        for t in tasks {
            if !t.status.state.is_terminal() {
                let mut t = Task::clone(&t);
                t.status = TaskStatus::new(TaskState::Orphaned, "node removed");
                self.state.put_task(t);
            }
        }
        self.state.remove_node(&node.id);
        self.sessions.remove(&node.id);
        self.all_touched = true;
        Ok(node.id.clone())
    }

    fn hello(&mut self, hello: Hello, session: u64) -> Result<String, Error> {
        let now = Time::now();
        let known = (!hello.node_id.is_empty())
            .then(|| self.state.node(&hello.node_id).cloned())
            .flatten();
        let mut node = match known {
            Some(n) => Node::clone(&n),
            None => {
                let id = if hello.node_id.is_empty() {
                    new_id()
                } else {
                    hello.node_id.clone()
                };
                Node::new(id, hello.hostname.clone())
            }
        };
        node.hostname = hello.hostname;
        node.labels = hello.labels;
        node.resources = hello.resources;
        node.engine = hello.engine;
        node.address = hello.address;
        node.state = NodeState::Ready;
        node.state_message = String::new();
        node.updated_at = now;
        let id = node.id.clone();
        self.state.put_node(node);
        self.sessions.insert(id.clone(), session);
        self.heartbeats.beat(&id);
        // Reconcile: what the node runs is the truth about its tasks. Tasks
        // that moved while it was down are dropped: not in its assignment
        // set, their containers are removed.
        let reported: HashSet<&str> = hello.tasks.iter().map(|(t, _)| t.as_str()).collect();
        let ours: Vec<Arc<Task>> = self.state.node_tasks(&id).cloned().collect();
        for t in ours {
            if t.moved {
                self.state.remove_task(&t.id);
                continue;
            }
            let lost = matches!(
                t.status.state,
                TaskState::Preparing | TaskState::Starting | TaskState::Running
            ) || (t.status.state == TaskState::Orphaned
                && t.desired == Desired::Running);
            if lost && !reported.contains(t.id.as_str()) {
                let mut t = Task::clone(&t);
                t.status =
                    TaskStatus::new(TaskState::Failed, "its container is gone from the node");
                t.status.err = "container not found when the node's agent reconnected".into();
                self.touch(&t.service_id);
                self.state.put_task(t);
            }
        }
        self.status(&id, hello.tasks);
        self.all_touched = true;
        Ok(id)
    }

    /// Applies an agent's reports about its node's tasks. A report about a
    /// task of another node, an unknown task or a state the agent cannot
    /// set is ignored (and counted), never stored.
    fn status(&mut self, node: &str, reports: Vec<(String, TaskStatus)>) {
        for (id, mut status) in reports {
            let Some(task) = self.state.task(&id).cloned() else {
                self.metrics.reports_ignored.inc();
                continue;
            };
            if task.node_id != node || status.state < TaskState::Preparing {
                self.metrics.reports_ignored.inc();
                continue;
            }
            let cur = task.status.state;
            // Forward only, except that a node that comes back knows
            // better than "orphaned".
            let forward = status.state > cur
                || (status.state == cur && status != task.status)
                || cur == TaskState::Orphaned;
            if !forward || (cur.is_terminal() && cur != TaskState::Orphaned && status.state != cur)
            {
                continue;
            }
            if status.timestamp.is_zero() {
                status.timestamp = Time::now();
            }
            let mut t = Task::clone(&task);
            if status.state == TaskState::Running && t.started_at.is_zero() {
                t.started_at = status.timestamp;
            }
            t.status = status;
            self.touch(&t.service_id);
            self.state.put_task(t);
        }
    }

    /// Marks nodes down whose agent missed its heartbeats past the grace,
    /// and orphans their tasks. Returns the next deadline.
    fn check_nodes(&mut self, now: Time) -> Option<Time> {
        let grace = self.tunables.node_grace;
        let mut next: Option<Instant> = None;
        let since_start = self.started.elapsed();
        let nodes: Vec<Arc<Node>> = self.state.nodes.values().cloned().collect();
        for n in nodes {
            let deadline = match n.state {
                NodeState::Down => continue,
                NodeState::Ready => self
                    .heartbeats
                    .last(&n.id)
                    .map_or(self.started + grace, |t| t + grace),
                NodeState::Unknown => self.started + grace,
            };
            if Instant::now() < deadline {
                next = Some(next.map_or(deadline, |d: Instant| d.min(deadline)));
                continue;
            }
            let mut down = Node::clone(&n);
            down.state = NodeState::Down;
            down.state_message = if n.state == NodeState::Unknown {
                format!(
                    "its agent did not reconnect within {} of the scheduler starting",
                    bronze_runtime::duration::format(since_start.min(grace))
                )
            } else {
                format!(
                    "heartbeat missed for {}",
                    bronze_runtime::duration::format(grace)
                )
            };
            down.updated_at = now;
            tracing::warn!(node = %n.hostname, id = %n.id, reason = %down.state_message, "node down");
            self.state.put_node(down);
            self.sessions.remove(&n.id);
            let tasks: Vec<Arc<Task>> = self.state.node_tasks(&n.id).cloned().collect();
            for t in tasks {
                if !t.status.state.is_terminal() {
                    let mut t = Task::clone(&t);
                    t.status = TaskStatus::new(
                        TaskState::Orphaned,
                        format!("node {} is down", n.hostname),
                    );
                    self.state.put_task(t);
                }
            }
            self.all_touched = true;
        }
        next.map(|d| now.plus(d.saturating_duration_since(Instant::now())))
    }

    /// Drops versions no task uses, beyond the last few and the current
    /// and previous ones.
    fn prune_versions(&mut self, service_id: &str) {
        let Some(service) = self.state.service(service_id).cloned() else {
            return;
        };
        let versions = self.state.service_versions(service_id);
        if versions.len() <= self.tunables.versions_kept {
            return;
        }
        let used: BTreeSet<u64> = self
            .state
            .service_tasks(service_id)
            .map(|t| t.spec_version)
            .collect();
        let keep_from = versions.len() - self.tunables.versions_kept;
        for v in &versions[..keep_from] {
            if *v != service.version && *v != service.previous_version && !used.contains(v) {
                self.state.remove_version(service_id, *v);
            }
        }
    }
}

/// A new join token: `BRONZE-` and 32 random characters.
pub fn new_token() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut s = String::from("BRONZE-");
    for _ in 0..32 {
        s.push(char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]));
    }
    s
}

fn no_service(name: &str) -> Error {
    Error::NotFound(format!("no service {name:?}"))
}

fn no_object(kind: Kind, name: &str) -> Error {
    Error::NotFound(format!("no {} {name:?}", kind.as_str()))
}

fn no_node(name: &str) -> Error {
    Error::NotFound(format!("no node {name:?}"))
}
