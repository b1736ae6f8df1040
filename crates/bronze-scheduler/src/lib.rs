//! bronze-scheduler: Bronze's orchestrator, the Swarm manager.
//!
//! It keeps every service's tasks running on the nodes whose agents joined.
//! The shape is SwarmKit's, with Nomad's one idea that matters at this size
//! (plan against a snapshot, commit once): one manager task owns the state
//! and runs small level-triggered passes over what changed, each pass a
//! module of its own:
//!
//! * `orchestrator`: service -> tasks (slots, restarts with backoff, drain
//!   hand-overs, the history reaper);
//! * `update`: rolling updates in batches, stop-first or start-first;
//! * `placement`: task -> node (filters that count what they reject, so a
//!   pending task always says why; spread; reservations never
//!   over-committed);
//! * `manager`: node health (heartbeat grace), agents' reports, API
//!   changes, and the one commit per round (`persist` -> `bronze-store`).
//!
//! The API (`api`) and the agents' sessions (`dispatcher`) read the
//! snapshot the manager publishes after each commit and send it events;
//! they never change state themselves. `model` holds the domain types and
//! their validation; `convert` is the only place that sees prost types.
//!
//! [`Server::bind`] binds the listener and loads the state; [`Server::serve`]
//! runs until the shutdown signal. [`run`] does both, for binaries.

pub mod api;
pub mod changes;
pub mod cli;
pub mod config;
pub mod convert;
pub mod discovery;
pub mod dispatcher;
pub mod error;
pub mod manager;
pub mod metrics;
pub mod model;
pub mod orchestrator;
pub mod persist;
pub mod placement;
pub mod registry;
pub mod secrets;
pub mod sim;
pub mod state;
pub mod update;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bronze_proto::scheduler::v1 as pb;
use bronze_runtime::Shutdown;
use bronze_store::{RedbStore, Store};
use bronze_telemetry::Metrics;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use config::Config;
pub use error::Error;

use crate::changes::ChangeLog;
use crate::dispatcher::Cluster;
use crate::manager::{Heartbeats, Manager};
use crate::metrics::SchedulerMetrics;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("state: {0}")]
    State(String),
    #[error("serving: {0}")]
    Serve(String),
}

/// A scheduler with its listener bound and its state loaded, not yet
/// running.
pub struct Server {
    listener: TcpListener,
    manager: Manager,
    events: mpsc::Receiver<manager::Event>,
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    admin_token: String,
    discovery: String,
    registry: Option<registry::Link>,
    internal: Shutdown,
}

impl Server {
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        config
            .validate()
            .map_err(|e| StartError::Config(e.to_string()))?;
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.addr,
                source,
            })?;
        let store: Arc<dyn Store> = if config.data_dir.is_empty() {
            Arc::new(RedbStore::in_memory().map_err(|e| StartError::State(e.to_string()))?)
        } else {
            let path = Path::new(&config.data_dir).join("scheduler.redb");
            let store = tokio::task::spawn_blocking(move || RedbStore::open(&path))
                .await
                .map_err(|e| StartError::State(e.to_string()))?
                .map_err(|e| StartError::State(e.to_string()))?;
            Arc::new(store)
        };
        let loader = store.clone();
        let mut state = tokio::task::spawn_blocking(move || persist::load(loader.as_ref()))
            .await
            .map_err(|e| StartError::State(e.to_string()))?
            .map_err(|e| StartError::State(e.to_string()))?;
        // The secrets key: kept apart from the store, recognised by the
        // check value the store keeps.
        let sealer = match config.secrets_key_path() {
            Some(path) => {
                tokio::task::spawn_blocking(move || secrets::Sealer::load_or_create(&path))
                    .await
                    .map_err(|e| StartError::State(e.to_string()))?
                    .map_err(|e| StartError::Config(e.to_string()))?
            }
            None => secrets::Sealer::ephemeral(),
        };
        if state.key_check.is_empty() {
            state.set_key_check(sealer.check_value());
        } else {
            sealer.verify(&state.key_check).map_err(|e| {
                StartError::Config(format!(
                    "{e}: secrets_key_file {}",
                    config
                        .secrets_key_path()
                        .map_or_else(String::new, |p| p.display().to_string())
                ))
            })?;
        }
        let sealer = Arc::new(sealer);
        // The join token: as configured, else as stored, else a new one.
        let token = if !config.join_token.is_empty() {
            config.join_token.clone()
        } else if !state.join_token.is_empty() {
            state.join_token.clone()
        } else {
            manager::new_token()
        };
        if token != state.join_token {
            state.set_join_token(token);
        }
        if state.has_dirty() {
            let keys = state.take_dirty();
            let ops = persist::ops(&state, &keys).map_err(|e| StartError::State(e.to_string()))?;
            let writer = store.clone();
            tokio::task::spawn_blocking(move || writer.apply(&ops))
                .await
                .map_err(|e| StartError::State(e.to_string()))?
                .map_err(|e| StartError::State(e.to_string()))?;
        }
        if config.admin_token.is_empty() {
            bronze_runtime::config::warn_if_unguarded(
                "the control API",
                config.addr,
                "can change the cluster (set --admin-token)",
            );
        }
        let mut metrics = Metrics::new("scheduler");
        let sm = Arc::new(SchedulerMetrics::register(&mut metrics));
        let (published, snapshot) = watch::channel(Arc::new(state.clone()));
        let changes = Arc::new(ChangeLog::default());
        let heartbeats = Arc::new(Heartbeats::default());
        let (tx, rx) = mpsc::channel(4096);
        let internal = Shutdown::new();
        let tunables = config.tunables();
        let cluster = Arc::new(
            Cluster::new(
                snapshot,
                tx,
                changes.clone(),
                heartbeats.clone(),
                tunables.clone(),
                sm.clone(),
                internal.clone(),
            )
            .with_sealer(sealer.clone()),
        );
        let manager = Manager::new(state, store, published, changes, heartbeats, tunables, sm)
            .with_sealer(sealer);
        Ok(Self {
            listener,
            manager,
            events: rx,
            cluster,
            metrics: Arc::new(metrics),
            admin_token: config.admin_token,
            discovery: config.discovery,
            registry: (!config.registry.is_empty()).then_some(registry::Link {
                url: config.registry,
                names: config.registry_names,
                http: config.registry_http,
            }),
            internal,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The token agents join with.
    pub fn join_token(&self) -> String {
        self.cluster.state().join_token.clone()
    }

    /// Runs until `shutdown`: stops taking requests, ends the agents'
    /// sessions and watches (agents keep their containers running and
    /// reconnect to the next scheduler), then returns.
    pub async fn serve(self, shutdown: Shutdown) -> Result<(), StartError> {
        let draining = Arc::new(AtomicBool::new(false));
        let d = draining.clone();
        let ops = bronze_telemetry::ops_routes::<()>(self.metrics.clone(), move || {
            !d.load(Ordering::Relaxed)
        });
        let (reporter, health) = bronze_runtime::grpc::health();
        let token = Arc::new(self.admin_token);
        let check = move |req: tonic::Request<()>| -> Result<tonic::Request<()>, tonic::Status> {
            authorize(&token, &req)?;
            Ok(req)
        };
        let api = pb::scheduler_server::SchedulerServer::with_interceptor(
            api::Api {
                cluster: self.cluster.clone(),
            },
            check,
        );
        let dispatcher = pb::dispatcher_server::DispatcherServer::new(dispatcher::Dispatcher {
            cluster: self.cluster.clone(),
        });
        let router = tonic::service::Routes::new(api)
            .add_service(dispatcher)
            .add_service(health)
            .into_axum_router()
            .merge(ops);
        let link = (!self.discovery.is_empty()).then(|| {
            tokio::spawn(discovery::run(
                self.discovery.clone(),
                self.cluster.events.clone(),
                self.cluster.snapshot.clone(),
                self.internal.clone(),
            ))
        });
        let pushes = self.registry.clone().map(|link| {
            tokio::spawn(registry::run(
                link,
                self.cluster.events.clone(),
                self.cluster.snapshot.clone(),
                self.internal.clone(),
            ))
        });
        let manager = tokio::spawn(self.manager.run(self.events, self.internal.clone()));
        let internal = self.internal.clone();
        let http_shutdown = shutdown.clone();
        tracing::info!(addr = %self.listener.local_addr().map_or_else(|_| String::new(), |a| a.to_string()), "scheduler serving");
        let server = axum::serve(self.listener, router).with_graceful_shutdown(async move {
            http_shutdown.wait().await;
            bronze_runtime::grpc::draining(&reporter).await;
            // Sessions, watches and log streams end, so the drain can finish.
            internal.trigger();
        });
        let result = server.await;
        draining.store(true, Ordering::Relaxed);
        self.internal.trigger();
        if let Some(link) = link {
            let _ = link.await;
        }
        if let Some(pushes) = pushes {
            let _ = pushes.await;
        }
        let _ = manager.await;
        result.map_err(|e| StartError::Serve(e.to_string()))
    }
}

/// The control API's check: with an admin token configured, every call
/// carries `authorization: Bearer <token>`.
fn authorize(token: &str, req: &tonic::Request<()>) -> Result<(), tonic::Status> {
    use subtle::ConstantTimeEq as _;
    if token.is_empty() {
        return Ok(());
    }
    let given = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(tonic::Status::unauthenticated(
            "the scheduler's API needs its admin token (authorization: Bearer <token>)",
        ))
    }
}

pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), StartError> {
    Server::bind(config).await?.serve(shutdown).await
}
