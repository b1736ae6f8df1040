//! The agents' sessions (SwarmKit's dispatcher).
//!
//! An agent dials in and holds one bidirectional stream. Its first message
//! is a Hello with the join token; a wrong token is refused (and logged,
//! with the peer's address), a right one becomes an `Event::Hello` for the
//! manager, which answers the node's id. From then on:
//!
//! * down: the node's whole assignment set, then, after every commit that
//!   touched it, only the tasks whose `version` moved and the ids that left
//!   the set (computed from the published snapshot, so an agent is never
//!   told about a task that is not durable yet); log requests;
//! * up: heartbeats (straight into [`Heartbeats`], no manager round),
//!   status batches (checked, then an `Event::Status`), log chunks (routed
//!   to the reader that asked for them).
//!
//! A second session of the same node supersedes the first; a session whose
//! node was marked down meanwhile (a cut that healed on the same TCP
//! connection) is ended, so the agent joins again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bronze_proto::scheduler::v1 as pb;
use bronze_runtime::Shutdown;
use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::changes::ChangeLog;
use crate::convert;
use crate::manager::{Event, Heartbeats, Tunables};
use crate::metrics::SchedulerMetrics;
use crate::state::State;

/// What the API and the sessions share.
pub struct Cluster {
    pub snapshot: watch::Receiver<Arc<State>>,
    pub events: mpsc::Sender<Event>,
    pub changes: Arc<ChangeLog>,
    pub heartbeats: Arc<Heartbeats>,
    pub tunables: Tunables,
    pub metrics: Arc<SchedulerMetrics>,
    pub shutdown: Shutdown,
    pub sessions: Mutex<HashMap<String, SessionHandle>>,
    pub logs: LogRouter,
    /// Opens secrets' data for the assignments of the tasks that mount them.
    pub sealer: Arc<crate::secrets::Sealer>,
    next_session: AtomicU64,
}

impl Cluster {
    pub fn new(
        snapshot: watch::Receiver<Arc<State>>,
        events: mpsc::Sender<Event>,
        changes: Arc<ChangeLog>,
        heartbeats: Arc<Heartbeats>,
        tunables: Tunables,
        metrics: Arc<SchedulerMetrics>,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            snapshot,
            events,
            changes,
            heartbeats,
            tunables,
            metrics,
            shutdown,
            sessions: Mutex::new(HashMap::new()),
            logs: LogRouter::default(),
            sealer: Arc::new(crate::secrets::Sealer::ephemeral()),
            next_session: AtomicU64::new(1),
        }
    }

    /// The key secrets are opened with (the manager's).
    #[must_use]
    pub fn with_sealer(mut self, sealer: Arc<crate::secrets::Sealer>) -> Self {
        self.sealer = sealer;
        self
    }

    pub fn state(&self) -> Arc<State> {
        self.snapshot.borrow().clone()
    }

    /// Sends an event to the manager and waits for its answer (given once
    /// the change is committed).
    pub async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<String, crate::Error>>) -> Event,
    ) -> Result<String, Status> {
        let (tx, rx) = oneshot::channel();
        self.events
            .send(make(tx))
            .await
            .map_err(|_| Status::unavailable("the scheduler is shutting down"))?;
        rx.await
            .map_err(|_| Status::unavailable("the scheduler is shutting down"))?
            .map_err(Status::from)
    }
}

/// A live session: where to send it messages, and how to end it.
pub struct SessionHandle {
    pub id: u64,
    pub tx: mpsc::Sender<Result<pb::DispatcherMessage, Status>>,
    pub end: Shutdown,
}

/// Log chunks on their way from agents to readers, by request id.
#[derive(Default)]
pub struct LogRouter {
    next: AtomicU64,
    readers: Mutex<HashMap<u64, mpsc::Sender<LogMsg>>>,
}

pub enum LogMsg {
    Chunk(pb::LogChunk),
    End { error: String },
}

impl LogRouter {
    pub fn register(&self, tx: mpsc::Sender<LogMsg>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.readers.lock().insert(id, tx);
        id
    }

    pub fn unregister(&self, id: u64) {
        self.readers.lock().remove(&id);
    }

    async fn deliver(&self, id: u64, msg: LogMsg) {
        let tx = self.readers.lock().get(&id).cloned();
        if let Some(tx) = tx {
            // A reader that stopped reading loses chunks, never blocks the
            // session.
            let _ = tx.try_send(msg);
        }
    }
}

/// How long an agent has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Dispatcher {
    pub cluster: Arc<Cluster>,
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::DispatcherMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::dispatcher_server::Dispatcher for Dispatcher {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let cluster = self.cluster.clone();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10s"))??;
        let Some(pb::AgentMessage {
            message: Some(pb::agent_message::Message::Hello(hello)),
        }) = first
        else {
            cluster.metrics.sessions_refused.inc();
            return Err(Status::invalid_argument(
                "the first message of a session is a hello",
            ));
        };
        let token = cluster.state().join_token.clone();
        if !token_matches(&hello.join_token, &token) {
            cluster.metrics.sessions_refused.inc();
            tracing::warn!(
                peer = %peer.map_or_else(|| "unknown".into(), |p: SocketAddr| p.to_string()),
                hostname = %hello.hostname,
                "agent refused: wrong join token"
            );
            return Err(crate::Error::Unauthenticated.into());
        }
        let hello = convert::hello_from(&hello).map_err(|e| {
            cluster.metrics.sessions_refused.inc();
            Status::invalid_argument(e.to_string())
        })?;
        let hostname = hello.hostname.clone();
        let session = cluster.next_session.fetch_add(1, Ordering::Relaxed);
        let node_id = cluster
            .ask(|reply| Event::Hello {
                hello,
                session,
                reply,
            })
            .await?;
        tracing::info!(node = %hostname, id = %node_id, "agent joined");
        let (tx, rx) = mpsc::channel(256);
        let end = cluster.shutdown.child();
        if let Some(old) = cluster.sessions.lock().insert(
            node_id.clone(),
            SessionHandle {
                id: session,
                tx: tx.clone(),
                end: end.clone(),
            },
        ) {
            old.end.trigger();
        }
        cluster.metrics.sessions.inc();
        tokio::spawn(outbound(cluster.clone(), node_id.clone(), tx, end.clone()));
        tokio::spawn(async move {
            inbound_loop(&cluster, &node_id, session, &mut inbound, &end).await;
            end.trigger();
            cluster.metrics.sessions.dec();
            {
                let mut sessions = cluster.sessions.lock();
                if sessions.get(&node_id).is_some_and(|h| h.id == session) {
                    sessions.remove(&node_id);
                }
            }
            let _ = cluster
                .events
                .send(Event::Gone {
                    node: node_id.clone(),
                    session,
                })
                .await;
            tracing::info!(node = %hostname, "agent session ended");
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

fn token_matches(given: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

async fn inbound_loop(
    cluster: &Cluster,
    node_id: &str,
    session: u64,
    inbound: &mut Streaming<pb::AgentMessage>,
    end: &Shutdown,
) {
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            () = end.wait() => return,
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(node = node_id, error = %e, "agent stream broke");
                return;
            }
        };
        // A node marked down (its heartbeats were lost: a network cut that
        // healed on the same connection) or removed must join again: its
        // session ends, its agent dials and says hello, and the hello
        // reconciles what happened meanwhile.
        let down = cluster
            .state()
            .node(node_id)
            .is_none_or(|n| n.state == crate::model::NodeState::Down);
        if down {
            tracing::info!(
                node = node_id,
                "ending the session of a node marked down or removed: it joins again"
            );
            return;
        }
        cluster.heartbeats.beat(node_id);
        match msg.message {
            Some(pb::agent_message::Message::Heartbeat(_)) => {}
            Some(pb::agent_message::Message::Status(batch)) => {
                let mut reports = Vec::with_capacity(batch.reports.len());
                for r in batch.reports {
                    match r.status.as_ref().and_then(convert::status_from) {
                        Some(s) => reports.push((r.task_id, s)),
                        None => {
                            cluster.metrics.reports_ignored.inc();
                        }
                    }
                }
                if !reports.is_empty()
                    && cluster
                        .events
                        .send(Event::Status {
                            node: node_id.to_string(),
                            session,
                            reports,
                        })
                        .await
                        .is_err()
                {
                    return;
                }
            }
            Some(pb::agent_message::Message::Log(log)) => {
                if let Some(chunk) = log.chunk {
                    cluster
                        .logs
                        .deliver(log.request_id, LogMsg::Chunk(chunk))
                        .await;
                }
            }
            Some(pb::agent_message::Message::LogEnd(e)) => {
                cluster
                    .logs
                    .deliver(e.request_id, LogMsg::End { error: e.error })
                    .await;
            }
            Some(pb::agent_message::Message::Hello(_)) | None => {
                cluster.metrics.reports_ignored.inc();
            }
        }
    }
}

/// Sends the welcome, then the node's assignments as they change.
async fn outbound(
    cluster: Arc<Cluster>,
    node_id: String,
    tx: mpsc::Sender<Result<pb::DispatcherMessage, Status>>,
    end: Shutdown,
) {
    let welcome = pb::DispatcherMessage {
        message: Some(pb::dispatcher_message::Message::Welcome(pb::Welcome {
            node_id: node_id.clone(),
            heartbeat_period: Some(convert::duration_to(cluster.tunables.heartbeat_period)),
        })),
    };
    if tx.send(Ok(welcome)).await.is_err() {
        return;
    }
    let mut snapshots = cluster.snapshot.clone();
    let mut sent: HashMap<String, u64> = HashMap::new();
    let mut full = true;
    loop {
        let state = snapshots.borrow_and_update().clone();
        if let Some(msg) = assignments(&state, &cluster.sealer, &node_id, &mut sent, full)
            && tx.send(Ok(msg)).await.is_err()
        {
            return;
        }
        full = false;
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { return },
            () = end.wait() => return,
        }
    }
}

/// The changes of a node's assignment set since `sent` (the whole set when
/// `full`); `None` when nothing changed.
fn assignments(
    state: &State,
    sealer: &crate::secrets::Sealer,
    node_id: &str,
    sent: &mut HashMap<String, u64>,
    full: bool,
) -> Option<pb::DispatcherMessage> {
    let mut updates = Vec::new();
    let mut specs: HashMap<(String, u64), pb::ServiceSpec> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for t in state.node_tasks(node_id) {
        seen.insert(t.id.clone());
        if !full && sent.get(&t.id) == Some(&t.version) {
            continue;
        }
        let Some(version) = state.version(&t.service_id, t.spec_version) else {
            continue;
        };
        let spec = specs
            .entry((t.service_id.clone(), t.spec_version))
            .or_insert_with(|| convert::spec_to_proto(&version.spec))
            .clone();
        // The data of what it mounts, for a task that should run (one that
        // stops needs none).
        let (secrets, configs) = if t.desired == crate::model::Desired::Running {
            (
                files(state, sealer, crate::model::Kind::Secret, &version.spec),
                files(state, sealer, crate::model::Kind::Config, &version.spec),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        updates.push(pb::Assignment {
            task: Some(convert::task_to(t, &version.spec.image)),
            spec: Some(spec),
            registry_auth: String::new(),
            secrets,
            configs,
        });
        sent.insert(t.id.clone(), t.version);
    }
    let removed: Vec<String> = sent
        .keys()
        .filter(|id| !seen.contains(*id))
        .cloned()
        .collect();
    for id in &removed {
        sent.remove(id);
    }
    if !full && updates.is_empty() && removed.is_empty() {
        return None;
    }
    Some(pb::DispatcherMessage {
        message: Some(pb::dispatcher_message::Message::Assignments(
            pb::Assignments {
                full,
                updates,
                removed,
            },
        )),
    })
}

/// The data of the objects of `kind` a spec mounts, at the versions it
/// pins (secrets opened). One that is gone or does not open is left out:
/// the agent then refuses the task, naming it.
fn files(
    state: &State,
    sealer: &crate::secrets::Sealer,
    kind: crate::model::Kind,
    spec: &crate::model::ServiceSpec,
) -> Vec<pb::FileData> {
    let mut out: Vec<pb::FileData> = Vec::new();
    for r in spec.refs(kind) {
        if out
            .iter()
            .any(|f| f.name == r.source && f.version == r.version)
        {
            continue;
        }
        let Some(v) = state
            .find_object(kind, &r.source)
            .and_then(|o| o.version(r.version))
        else {
            continue;
        };
        let data = match kind {
            crate::model::Kind::Config => v.data.0.clone(),
            crate::model::Kind::Secret => {
                match sealer.open(&crate::secrets::aad(&r.source, r.version), &v.data.0) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(secret = %r.source, version = r.version, error = %e, "cannot open a secret for an assignment");
                        continue;
                    }
                }
            }
        };
        out.push(pb::FileData {
            name: r.source.clone(),
            version: r.version,
            data,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches("BRONZE-abc", "BRONZE-abc"));
        assert!(!token_matches("BRONZE-ab", "BRONZE-abc"));
        assert!(!token_matches("", ""));
    }
}
