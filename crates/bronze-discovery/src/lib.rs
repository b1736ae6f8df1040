//! bronze-discovery: Bronze's service catalog.
//!
//! Nodes, services and instances with health checks (HTTP, TCP, TTL) and
//! one monotonically increasing index, served three ways:
//! * DNS (`dns`): A/AAAA/SRV for `<svc>.service.<domain>` and friends;
//! * the Consul-compatible HTTP subset (`http`) with blocking queries;
//! * gRPC `bronze.discovery.v1` (`grpc`) with a streaming watch.
//!
//! [`Server::bind`] binds every listener (port 0 allowed) and loads the
//! durable registrations; [`Server::serve`] runs until the shutdown signal,
//! then drains. [`run`] does both, for binaries.

pub mod agent;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod dns;
pub mod error;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod model;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bronze_proto::discovery::v1::discovery_server::DiscoveryServer;
use bronze_runtime::Shutdown;
use bronze_store::{RedbStore, Store};
use bronze_telemetry::Metrics;
use tokio::net::TcpListener;

pub use config::Config;
pub use error::Error;

use agent::{Agent, AgentConfig};
use dns::answer::{Resolver, domain_labels};
use dns::server::DnsListeners;
use metrics::DiscoveryMetrics;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] bronze_store::StoreError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Catalog(#[from] Error),
}

/// A discovery server with every listener bound, not yet serving.
pub struct Server {
    config: Config,
    agent: Arc<Agent>,
    metrics: Arc<Metrics>,
    http: TcpListener,
    grpc: TcpListener,
    dns: DnsListeners,
    /// Stops the agent's background work once the listeners have drained.
    internal: Shutdown,
}

impl Server {
    pub async fn bind(mut config: Config) -> Result<Self, StartError> {
        config
            .validate()
            .map_err(|e| StartError::Config(e.to_string()))?;
        let bind = |what: &'static str, addr: SocketAddr| {
            move |source| StartError::Bind { what, addr, source }
        };
        let http = TcpListener::bind(config.http.addr)
            .await
            .map_err(bind("HTTP", config.http.addr))?;
        let grpc = TcpListener::bind(config.grpc.addr)
            .await
            .map_err(bind("gRPC", config.grpc.addr))?;
        let risk = "can register, deregister and read every service (Consul without ACLs)";
        bronze_runtime::config::warn_if_unguarded("the HTTP API", config.http.addr, risk);
        bronze_runtime::config::warn_if_unguarded("the gRPC API", config.grpc.addr, risk);
        let workers = match config.dns.udp_workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let dns =
            DnsListeners::bind(config.dns.addr, workers).map_err(bind("DNS", config.dns.addr))?;

        let store: Arc<dyn Store> = if config.data_dir.is_empty() {
            Arc::new(RedbStore::in_memory()?)
        } else {
            Arc::new(RedbStore::open(
                &Path::new(&config.data_dir).join("catalog.redb"),
            )?)
        };
        let mut metrics = Metrics::new("discovery");
        let dm = Arc::new(DiscoveryMetrics::register(&mut metrics));
        // Indexes start from the clock (in microseconds) so they keep growing
        // across restarts and clients never see them go backwards.
        let base_index = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        let internal = Shutdown::new();
        let agent = Agent::start(
            AgentConfig {
                node: config.node_name.clone(),
                node_address: config.advertise_address.to_string(),
                datacenter: config.datacenter.clone(),
                base_index,
                change_log: config.catalog.change_log,
            },
            store,
            dm,
            internal.clone(),
        )
        .await?;
        Ok(Self {
            config,
            agent,
            metrics: Arc::new(metrics),
            http,
            grpc,
            dns,
            internal,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or(self.config.http.addr)
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or(self.config.grpc.addr)
    }

    pub fn dns_addr(&self) -> SocketAddr {
        self.dns.addr
    }

    pub fn agent(&self) -> &Arc<Agent> {
        &self.agent
    }

    /// Serves until `shutdown` fires; then /healthz turns 503, listeners
    /// stop accepting, in-flight requests (blocking queries return at once,
    /// watch streams end) finish, and checks stop.
    pub async fn serve(self, shutdown: Shutdown) -> Result<(), StartError> {
        let Server {
            config,
            agent,
            metrics,
            http,
            grpc,
            dns,
            internal,
        } = self;
        let draining = Arc::new(AtomicBool::new(false));
        let recursors = Arc::new(
            config
                .dns
                .recursors
                .iter()
                .map(|r| config::parse_recursor(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(StartError::Config)?,
        );
        let resolver = Arc::new(Resolver {
            catalog: agent.catalog.clone(),
            domain: domain_labels(&config.dns.domain).map_err(StartError::Config)?,
            datacenter: config.datacenter.as_bytes().to_vec(),
            service_ttl: config.dns.service_ttl.as_secs() as u32,
            node_ttl: config.dns.node_ttl.as_secs() as u32,
            negative_ttl: config.dns.negative_ttl.as_secs() as u32,
            only_passing: config.dns.only_passing,
            recursion: !recursors.is_empty(),
            udp_max_payload: config.dns.udp_max_payload,
            ns_address: Some(config.advertise_address),
        });

        let api = http::Api {
            agent: agent.clone(),
            max_wait: config.http.max_wait,
            shutdown: shutdown.clone(),
            draining: draining.clone(),
        };
        let http_task = {
            let shutdown = shutdown.clone();
            let router = http::router(api, metrics.clone());
            tokio::spawn(async move {
                axum::serve(http, router)
                    .with_graceful_shutdown(async move { shutdown.wait().await })
                    .await
            })
        };
        let grpc_task = {
            let shutdown = shutdown.clone();
            let svc =
                DiscoveryServer::new(grpc::DiscoveryService::new(agent.clone(), shutdown.clone()));
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
            let (reporter, health) = bronze_runtime::grpc::health();
            tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(health)
                    .add_service(svc)
                    .serve_with_incoming_shutdown(incoming, async move {
                        shutdown.wait().await;
                        bronze_runtime::grpc::draining(&reporter).await;
                    })
                    .await
            })
        };
        let dns_task =
            tokio::spawn(dns.serve(resolver, recursors, agent.metrics.clone(), shutdown.clone()));

        tracing::info!(
            node = %agent.node,
            http = %config.http.addr,
            dns = %config.dns.addr,
            grpc = %config.grpc.addr,
            domain = %config.dns.domain,
            "discovery serving"
        );
        shutdown.wait().await;
        draining.store(true, Ordering::Relaxed);
        let (h, g, d) = tokio::join!(http_task, grpc_task, dns_task);
        internal.trigger();
        agent.stop();
        if let Ok(Err(error)) = h {
            tracing::warn!(%error, "http server ended with an error");
        }
        if let Ok(Err(error)) = g {
            tracing::warn!(%error, "grpc server ended with an error");
        }
        if let Ok(Err(error)) = d {
            tracing::warn!(%error, "dns server ended with an error");
        }
        tracing::info!("discovery stopped");
        Ok(())
    }
}

/// Binds and serves until `shutdown` (the binary's and `bronze dev`'s entry).
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), StartError> {
    Server::bind(config).await?.serve(shutdown).await
}
