//! bronze-registry: a private image registry that docker, skopeo and every
//! OCI client push to and pull from.
//!
//! - `reference`: names, tags, digests and `/v2/...` routes, checked first;
//! - `storage`: content-addressed files (verified, fsync'd, renamed into
//!   place) and metadata in the embedded store;
//! - `manifest`: which manifests are accepted;
//! - `api`: the HTTP API; `events`: push/delete events (gRPC, webhooks);
//! - `gc`: online mark and sweep.
//!
//! [`Server::bind`] binds the listeners and opens the storage;
//! [`Server::serve`] runs until the shutdown signal, then drains.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod events;
pub mod fuzzing;
pub mod gc;
pub mod manifest;
pub mod metrics;
pub mod reference;
pub mod storage;
pub mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use bronze_proto::registry::v1 as pb;
use bronze_runtime::Shutdown;
use bronze_store::{RedbStore, Store};
use bronze_telemetry::Metrics;
use tokio::net::TcpListener;

pub use config::Config;
pub use error::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("storage at {root}: {message}")]
    Storage { root: String, message: String },
    #[error("invalid configuration: {0}")]
    Config(String),
}

pub struct Server {
    config: Config,
    app: api::App,
    metrics: Arc<Metrics>,
    registry_metrics: Arc<metrics::RegistryMetrics>,
    http: TcpListener,
    grpc: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
}

struct RegistryService {
    app: api::App,
    shutdown: Shutdown,
    /// Uploads untouched this long are purged by a collection too.
    upload_ttl: Duration,
}

#[tonic::async_trait]
impl pb::registry_server::Registry for RegistryService {
    type EventsStream = events::EventStream;

    async fn events(
        &self,
        request: tonic::Request<pb::EventsRequest>,
    ) -> Result<tonic::Response<Self::EventsStream>, tonic::Status> {
        let repos = request.into_inner().repositories;
        Ok(tonic::Response::new(events::stream(
            &self.app.events,
            repos,
            self.shutdown.clone(),
        )))
    }

    async fn collect_garbage(
        &self,
        request: tonic::Request<pb::CollectGarbageRequest>,
    ) -> Result<tonic::Response<pb::CollectGarbageResponse>, tonic::Status> {
        let req = request.into_inner();
        let dry_run = req.dry_run;
        let grace = match req.grace {
            None => gc::GRACE,
            Some(d) if d.seconds < 0 || d.nanos < 0 => {
                return Err(tonic::Status::invalid_argument(
                    "grace: expected a non-negative duration",
                ));
            }
            Some(d) => Duration::new(d.seconds as u64, d.nanos as u32),
        };
        let purged = if dry_run {
            0
        } else {
            let (storage, ttl) = (self.app.storage.clone(), self.upload_ttl);
            tokio::task::spawn_blocking(move || storage.purge_uploads(ttl))
                .await
                .map_err(|e| tonic::Status::internal(e.to_string()))?
                .map_err(|e| tonic::Status::internal(e.to_string()))?
        };
        let report = gc::collect(&self.app.storage, &self.app.gc_lock, dry_run, grace)
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        tracing::info!(
            dry_run,
            freed = report.freed.len(),
            kept = report.kept,
            "garbage collection"
        );
        Ok(tonic::Response::new(pb::CollectGarbageResponse {
            bytes: report.freed.iter().map(|(_, s)| s).sum(),
            digests: report.freed.iter().map(|(d, _)| d.to_string()).collect(),
            kept: report.kept,
            uploads_purged: purged as u64,
        }))
    }
}

impl Server {
    pub async fn bind(mut config: Config) -> Result<Self, StartError> {
        config
            .validate()
            .map_err(|e| StartError::Config(e.to_string()))?;
        let bind = |what: &'static str, addr: SocketAddr| {
            move |source| StartError::Bind { what, addr, source }
        };
        let http = TcpListener::bind(config.addr)
            .await
            .map_err(bind("the registry API", config.addr))?;
        let grpc = TcpListener::bind(config.grpc_addr)
            .await
            .map_err(bind("gRPC", config.grpc_addr))?;
        if config.auth.mode == auth::Mode::None {
            bronze_runtime::config::warn_if_unguarded(
                "the registry API",
                config.addr,
                "can push, overwrite and delete images (auth mode none; see --auth)",
            );
        }
        bronze_runtime::config::warn_if_unguarded(
            "the gRPC API (events, garbage collection)",
            config.grpc_addr,
            "can read every push and start a garbage collection",
        );
        let root = Path::new(&config.root);
        let storage_err = |message: String| StartError::Storage {
            root: config.root.clone(),
            message,
        };
        std::fs::create_dir_all(root).map_err(|e| storage_err(e.to_string()))?;
        let meta: Arc<dyn Store> = Arc::new(
            RedbStore::open(&root.join("registry.redb")).map_err(|e| storage_err(e.to_string()))?,
        );
        let storage =
            Arc::new(storage::Storage::open(root, meta).map_err(|e| storage_err(e.to_string()))?);
        let auth = auth::Auth::new(config.auth.clone(), root).map_err(StartError::Config)?;
        let tls = if config.tls_cert.is_empty() {
            None
        } else {
            bronze_runtime::install_crypto_provider();
            Some(
                tls::load(Path::new(&config.tls_cert), Path::new(&config.tls_key))
                    .map_err(StartError::Config)?,
            )
        };
        let mut metrics = Metrics::new("registry");
        let registry_metrics = Arc::new(metrics::RegistryMetrics::register(&mut metrics));
        Ok(Self {
            app: api::App {
                storage,
                events: events::Events::new(),
                gc_lock: Arc::new(tokio::sync::RwLock::new(())),
                auth: Arc::new(auth),
                tls: tls.is_some(),
            },
            config,
            metrics: Arc::new(metrics),
            registry_metrics,
            http,
            grpc,
            tls,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or(self.config.addr)
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or(self.config.grpc_addr)
    }

    pub fn events(&self) -> &events::Events {
        &self.app.events
    }

    pub async fn serve(self, shutdown: Shutdown) -> Result<(), StartError> {
        // The bound addresses (port 0 resolved): what scripts and tests read.
        tracing::info!(addr = %self.addr(), grpc = %self.grpc_addr(), root = %self.config.root, "registry serving");
        let draining = Arc::new(AtomicBool::new(false));
        let d = draining.clone();
        self.app
            .events
            .spawn_webhooks(self.config.webhooks.clone(), shutdown.clone());
        let router = Router::new()
            .route("/v2", axum::routing::any(api::dispatch))
            .route("/v2/", axum::routing::any(api::dispatch))
            .route("/v2/{*rest}", axum::routing::any(api::dispatch))
            .route("/token", axum::routing::any(api::token))
            .with_state(self.app.clone())
            .layer(middleware::from_fn_with_state(
                self.registry_metrics.clone(),
                access_log,
            ))
            .merge(bronze_telemetry::ops_routes(
                self.metrics.clone(),
                move || !d.load(Ordering::Relaxed),
            ));
        let http_shutdown = shutdown.clone();
        let listener = self.http;
        let header_read_timeout = self.config.header_read_timeout;
        let tls_config = self.tls;
        let http = tokio::spawn(async move {
            tls::serve(
                listener,
                tls_config,
                router,
                header_read_timeout,
                http_shutdown,
            )
            .await;
        });
        let grpc_shutdown = shutdown.clone();
        let svc = pb::registry_server::RegistryServer::new(RegistryService {
            app: self.app.clone(),
            shutdown: shutdown.clone(),
            upload_ttl: self.config.upload_ttl,
        });
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(self.grpc);
        // grpc.health.v1 (grpc_health_probe, the gateway's grpc checks):
        // SERVING until the drain starts.
        let (reporter, health) = bronze_runtime::grpc::health();
        let grpc = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(health)
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async move {
                    grpc_shutdown.wait().await;
                    bronze_runtime::grpc::draining(&reporter).await;
                })
                .await
        });
        // Stale uploads are purged hourly.
        let storage = self.app.storage.clone();
        let ttl = self.config.upload_ttl;
        let purge_shutdown = shutdown.clone();
        let purger = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(3600).min(ttl)) => {}
                    _ = purge_shutdown.wait() => return,
                }
                let s = storage.clone();
                match tokio::task::spawn_blocking(move || s.purge_uploads(ttl)).await {
                    Ok(Ok(n)) if n > 0 => tracing::info!(purged = n, "stale uploads purged"),
                    Ok(Err(error)) => tracing::warn!(%error, "purging uploads failed"),
                    _ => {}
                }
            }
        });
        shutdown.wait().await;
        draining.store(true, Ordering::Relaxed);
        let _ = tokio::join!(http, grpc, purger);
        tracing::info!("registry stopped");
        Ok(())
    }
}

/// Counts every request and writes one structured access-log line
/// (target `access`): method, path, status, user, duration.
async fn access_log(
    State(m): State<Arc<metrics::RegistryMetrics>>,
    req: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    m.requests
        .get_or_create(&metrics::RequestLabels {
            method: method.to_string(),
            code: status,
        })
        .inc();
    let user = resp
        .extensions()
        .get::<auth::Identity>()
        .map_or("-", auth::Identity::name);
    tracing::info!(
        target: "access",
        %method,
        path,
        status,
        user,
        ms = started.elapsed().as_secs_f64() * 1e3,
        "request"
    );
    resp
}

pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), StartError> {
    Server::bind(config).await?.serve(shutdown).await
}
