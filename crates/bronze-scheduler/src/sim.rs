//! A manager with simulated agents, in process: no engine, no gRPC. The
//! placement benchmark (`cargo xtask bench placement`) and the
//! orchestration tests use it. A simulated agent does what a real one
//! reports: a task assigned to its node runs at once, a task asked to stop
//! is shut down; a test can also make tasks fail or nodes go silent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bronze_runtime::Shutdown;
use bronze_store::Store;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use crate::changes::ChangeLog;
use crate::manager::{Event, Heartbeats, Hello, Manager, Tunables};
use crate::metrics::SchedulerMetrics;
use crate::model::{Desired, EngineInfo, Resources, ServiceSpec, TaskState, TaskStatus, Time};
use crate::state::State;

pub struct Sim {
    pub events: mpsc::Sender<Event>,
    pub snapshot: watch::Receiver<Arc<State>>,
    pub heartbeats: Arc<Heartbeats>,
    shutdown: Shutdown,
    /// Nodes whose simulated agent answers (and heartbeats).
    live: Arc<Mutex<HashSet<String>>>,
    /// Each node's current session id.
    sessions: Arc<Mutex<HashMap<String, u64>>>,
    session: std::sync::atomic::AtomicU64,
}

impl Sim {
    /// A manager over `store` (its state loaded), with simulated agents
    /// answering for the nodes that join through [`Sim::join`].
    pub async fn start(store: Arc<dyn Store>, tunables: Tunables) -> Self {
        Self::start_with(store, tunables, true).await
    }

    /// As [`Sim::start`]; without `agents`, nodes heartbeat but never run
    /// their tasks (placement alone, for the benchmark).
    pub async fn start_with(store: Arc<dyn Store>, tunables: Tunables, agents: bool) -> Self {
        let state = crate::persist::load(store.as_ref()).expect("state loads");
        let mut metrics = bronze_telemetry::Metrics::new("scheduler_sim");
        let sm = Arc::new(SchedulerMetrics::register(&mut metrics));
        let (published, snapshot) = watch::channel(Arc::new(state.clone()));
        let heartbeats = Arc::new(Heartbeats::default());
        let (tx, rx) = mpsc::channel(65536);
        let shutdown = Shutdown::new();
        let manager = Manager::new(
            state,
            store,
            published,
            Arc::new(ChangeLog::default()),
            heartbeats.clone(),
            tunables.clone(),
            sm,
        );
        tokio::spawn(manager.run(rx, shutdown.clone()));
        let sim = Self {
            events: tx,
            snapshot,
            heartbeats,
            shutdown,
            live: Arc::new(Mutex::new(HashSet::new())),
            sessions: Arc::new(Mutex::new(HashMap::new())),
            session: std::sync::atomic::AtomicU64::new(1),
        };
        sim.spawn_agents(tunables.heartbeat_period, agents);
        sim
    }

    pub fn state(&self) -> Arc<State> {
        self.snapshot.borrow().clone()
    }

    pub async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<String, crate::Error>>) -> Event,
    ) -> Result<String, crate::Error> {
        let (tx, rx) = oneshot::channel();
        self.events
            .send(make(tx))
            .await
            .map_err(|_| crate::Error::Unavailable("manager stopped".into()))?;
        rx.await
            .map_err(|_| crate::Error::Unavailable("manager stopped".into()))?
    }

    /// A node joins (or comes back) with these facts; returns its id.
    pub async fn join(
        &self,
        node_id: &str,
        hostname: &str,
        labels: &[(&str, &str)],
        resources: Resources,
    ) -> String {
        let session = self
            .session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let hello = Hello {
            node_id: node_id.to_string(),
            hostname: hostname.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            resources,
            engine: EngineInfo {
                version: "sim".into(),
                os: "linux".into(),
                arch: "x86_64".into(),
                ..Default::default()
            },
            address: "127.0.0.1".into(),
            // What a returning agent finds on its host: the containers of
            // the tasks it ran, still there.
            tasks: self
                .state()
                .node_tasks(node_id)
                .filter(|t| !t.status.state.is_terminal() && t.status.state >= TaskState::Preparing)
                .map(|t| (t.id.clone(), t.status.clone()))
                .collect(),
        };
        let id = self
            .ask(|reply| Event::Hello {
                hello,
                session,
                reply,
            })
            .await
            .expect("join");
        self.live.lock().insert(id.clone());
        self.sessions.lock().insert(id.clone(), session);
        id
    }

    /// The node's simulated agent stops answering and heartbeating.
    pub fn silence(&self, node_id: &str) {
        self.live.lock().remove(node_id);
    }

    pub async fn create(&self, spec: ServiceSpec) -> Result<String, crate::Error> {
        self.ask(|reply| Event::CreateService(spec, reply)).await
    }

    /// Reports a task's state as its node's agent would.
    pub async fn report(&self, node: &str, task: &str, status: TaskStatus) {
        let session = self.sessions.lock().get(node).copied().unwrap_or(0);
        let _ = self
            .events
            .send(Event::Status {
                node: node.to_string(),
                session,
                reports: vec![(task.to_string(), status)],
            })
            .await;
    }

    /// Waits until `f` holds for the published state (at most `within`).
    pub async fn until(
        &self,
        within: Duration,
        what: &str,
        f: impl Fn(&State) -> bool,
    ) -> Arc<State> {
        let mut rx = self.snapshot.clone();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let s = rx.borrow_and_update().clone();
            if f(&s) {
                return s;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                panic!("not within {within:?}: {what}");
            }
        }
    }

    /// Simulated agents: assigned tasks of live nodes run, tasks asked to
    /// stop stop; live nodes heartbeat.
    fn spawn_agents(&self, period: Duration, run_tasks: bool) {
        let mut rx = self.snapshot.clone();
        let events = self.events.clone();
        let live = self.live.clone();
        let sessions = self.sessions.clone();
        let heartbeats = self.heartbeats.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                // Level-triggered: every change and every tick, the state
                // as it is (a node that joined after its first assignment
                // was published is caught up on the next tick).
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    _ = tick.tick() => {
                        for n in live.lock().iter() {
                            heartbeats.beat(n);
                        }
                    }
                    () = shutdown.wait() => return,
                }
                let state = rx.borrow_and_update().clone();
                if !run_tasks {
                    continue;
                }
                let live_nodes: Vec<String> = live.lock().iter().cloned().collect();
                for node in live_nodes {
                    let mut reports = Vec::new();
                    for t in state.node_tasks(&node) {
                        let next = match (t.desired, t.status.state) {
                            (Desired::Running, TaskState::Assigned) => Some(TaskState::Running),
                            (Desired::Shutdown, s) if !s.is_terminal() => Some(TaskState::Shutdown),
                            _ => None,
                        };
                        if let Some(state) = next {
                            let mut s = TaskStatus::new(state, "simulated");
                            s.container_id = format!("sim-{}", t.id);
                            s.timestamp = Time::now();
                            reports.push((t.id.clone(), s));
                        }
                    }
                    if !reports.is_empty() {
                        let session = sessions.lock().get(&node).copied().unwrap_or(0);
                        let _ = events
                            .send(Event::Status {
                                node,
                                session,
                                reports,
                            })
                            .await;
                    }
                }
            }
        });
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}
