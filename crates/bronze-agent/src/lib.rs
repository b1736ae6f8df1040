//! bronze-agent: Bronze's worker, one per Docker host (the Swarm worker).
//!
//! It dials the scheduler and holds one session (`session`): a hello with
//! the join token, this node's facts and every task container it has; then
//! heartbeats and task status up, assignments and log requests down. The
//! `worker` runs each assigned task on the local engine with one
//! level-triggered loop per task (inspect, compare, do the missing step,
//! report), woken by assignments and by the engine's events; `engine` is
//! what a task's container looks like; `logs` streams container output on
//! request.
//!
//! Containers outlive the agent and the session: restarting either leaves
//! them running, and the next hello reconciles.
//!
//! [`Server::bind`] binds the metrics listener and connects to the engine;
//! [`Server::serve`] runs until the shutdown signal. [`run`] does both.

pub mod cli;
pub mod config;
pub mod engine;
pub mod files;
pub mod logs;
pub mod mesh;
pub mod metrics;
pub mod session;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;

use bronze_runtime::Shutdown;
use bronze_telemetry::Metrics;
use tokio::net::TcpListener;

pub use config::Config;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("docker engine: {0}")]
    Engine(String),
}

/// An agent with its metrics listener bound and its engine reached, not
/// yet joined.
pub struct Server {
    session: Arc<session::Session>,
    metrics: Arc<Metrics>,
    listener: TcpListener,
    internal: Shutdown,
}

impl Server {
    pub async fn bind(mut config: Config) -> Result<Self, StartError> {
        config
            .validate()
            .map_err(|e| StartError::Config(e.to_string()))?;
        let listener = TcpListener::bind(config.metrics_addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.metrics_addr,
                source,
            })?;
        files::prepare_root(std::path::Path::new(&config.files_dir)).map_err(StartError::Config)?;
        let docker_host = (!config.docker_host.is_empty()).then_some(config.docker_host.as_str());
        let docker = engine::connect(docker_host)
            .await
            .map_err(|e| StartError::Engine(e.to_string()))?;
        let mut metrics = Metrics::new("agent");
        let am = Arc::new(metrics::AgentMetrics::register(&mut metrics));
        let internal = Shutdown::new();
        let node_id = {
            let c = config.clone();
            tokio::task::spawn_blocking(move || session::kept_node_id(&c))
                .await
                .unwrap_or_default()
        };
        let mesh = (!config.discovery.is_empty()).then(|| {
            mesh::Mesh::new(
                docker.clone(),
                config.discovery.clone(),
                config.address.clone(),
                internal.clone(),
            )
        });
        let config = Arc::new(config);
        let worker = worker::Worker::new(
            docker,
            node_id,
            config.clone(),
            am.clone(),
            internal.clone(),
            mesh,
        );
        let session = Arc::new(session::Session {
            config,
            worker,
            logs: Arc::new(logs::Logs::default()),
            metrics: am,
            shutdown: internal.clone(),
        });
        Ok(Self {
            session,
            metrics: Arc::new(metrics),
            listener,
            internal,
        })
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// This node's id once joined (empty before the first welcome, unless
    /// kept from an earlier run).
    pub fn node_id(&self) -> String {
        self.session.worker.node_id()
    }

    /// Runs until `shutdown`; then closes the session and returns. Task
    /// containers keep running.
    pub async fn serve(self, shutdown: Shutdown) -> Result<(), StartError> {
        let connected = self.session.metrics.connected.clone();
        let router =
            bronze_telemetry::ops_routes::<()>(self.metrics.clone(), move || connected.get() == 1);
        let http_shutdown = shutdown.clone();
        let http = tokio::spawn(async move {
            axum::serve(self.listener, router)
                .with_graceful_shutdown(async move { http_shutdown.wait().await })
                .await
        });
        tracing::info!(
            scheduler = %self.session.config.scheduler,
            hostname = %self.session.config.hostname,
            "agent running"
        );
        let mesh = self
            .session
            .worker
            .mesh
            .clone()
            .map(|m| tokio::spawn(m.run(self.session.worker.clone())));
        let run = tokio::spawn(self.session.clone().run());
        shutdown.wait().await;
        self.internal.trigger();
        let _ = run.await;
        if let Some(m) = mesh {
            let _ = m.await;
        }
        let _ = http.await;
        Ok(())
    }
}

pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), StartError> {
    Server::bind(config).await?.serve(shutdown).await
}
