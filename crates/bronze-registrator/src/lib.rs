//! bronze-registrator: every container of a Docker host registers itself in
//! bronze-discovery, with no code in the application.
//!
//! It keeps gliderlabs/registrator's conventions (`convention`) and fixes
//! its failures: it reconciles with the engine at start-up, periodically and
//! after every reconnect; it never exits because the engine or discovery
//! went away; it runs each container's checks next to it and reports them
//! with a heartbeat, so discovery expires this host's instances when the
//! host or the registrator dies (`sync`).
//!
//! [`Server::bind`] binds the metrics listener; [`Server::serve`] runs until
//! the shutdown signal. [`run`] does both, for binaries.

pub mod cli;
pub mod config;
pub mod convention;
pub mod engine;
pub mod metrics;
pub mod sync;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bronze_runtime::Shutdown;
use bronze_telemetry::Metrics;
use tokio::net::TcpListener;

pub use config::Config;
pub use sync::Registrator;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// A registrator with its metrics listener bound, not yet running.
pub struct Server {
    registrator: Arc<Registrator>,
    metrics: Arc<Metrics>,
    listener: TcpListener,
    /// Stops the registrator's loops once serve's caller asks to.
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
        let mut metrics = Metrics::new("registrator");
        let rm = Arc::new(metrics::RegistratorMetrics::register(&mut metrics));
        let internal = Shutdown::new();
        let registrator =
            Registrator::new(config, rm, internal.clone()).map_err(StartError::Config)?;
        Ok(Self {
            registrator,
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

    pub fn registrator(&self) -> &Arc<Registrator> {
        &self.registrator
    }

    /// Runs until `shutdown`; then sends a last heartbeat and returns.
    /// Registrations are kept: containers keep running while the
    /// registrator restarts, and discovery trusts them for one TTL.
    pub async fn serve(self, shutdown: Shutdown) -> Result<(), StartError> {
        let draining = Arc::new(AtomicBool::new(false));
        let d = draining.clone();
        let router = bronze_telemetry::ops_routes::<()>(self.metrics.clone(), move || {
            !d.load(Ordering::Relaxed)
        });
        let http_shutdown = shutdown.clone();
        let http = tokio::spawn(async move {
            axum::serve(self.listener, router)
                .with_graceful_shutdown(async move { http_shutdown.wait().await })
                .await
        });
        tracing::info!(
            node = self.registrator.node(),
            ip = %self.registrator.host_ip(),
            "registrator running"
        );
        let internal = self.internal.clone();
        let run = tokio::spawn(self.registrator.clone().run());
        shutdown.wait().await;
        draining.store(true, Ordering::Relaxed);
        internal.trigger();
        let _ = run.await;
        let _ = http.await;
        Ok(())
    }
}

pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), StartError> {
    Server::bind(config).await?.serve(shutdown).await
}
