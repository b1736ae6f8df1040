//! bronze-gateway: the API gateway. First slice (issue 5): Kong-style
//! services, routes and upstreams from a declarative file or the admin
//! API's `POST /config`, compiled into a routing table that is swapped
//! atomically; an HTTP/1.1 and h2c proxy on hyper with upstream keep-alive.
//!
//! - `declarative`: Kong's DB-less format, parsed with errors naming the
//!   field;
//! - `router`: the compiled table and its priority order;
//! - `proxy`: request rewriting and forwarding;
//! - this file: listeners, the accept loop, the admin API.

pub mod cli;
pub mod config;
pub mod declarative;
pub mod labels;
pub mod metrics;
pub mod plugins;
pub mod proxy;
pub mod router;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bronze_proto::discovery::v1 as pb;
use bronze_runtime::Shutdown;
use bronze_telemetry::Metrics;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use tokio::net::TcpListener;

pub use config::Config;
pub use declarative::{Declarative, Invalid};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("declarative_config {path}: {message}")]
    Declarative { path: String, message: String },
}

type InstanceKey = (String, String);

/// The configuration in effect and the proxy it feeds.
struct Gateway {
    proxy: Arc<proxy::Proxy>,
    /// The document given by file or `POST /config` (GET /config).
    current: Mutex<Declarative>,
    /// Discovery's instances (node, id), for label-driven routes.
    instances: Mutex<HashMap<InstanceKey, pb::Instance>>,
}

impl Gateway {
    /// Validates and compiles `d` (plus the routes discovery's labels ask
    /// for), then swaps it in; on error nothing changes.
    fn apply(&self, d: Declarative) -> Result<(), Invalid> {
        let mut current = self.current.lock();
        let table = router::Table::build(&d)?;
        // Compiled once more only when discovery adds label routes.
        let table = if self.instances.lock().is_empty() {
            table
        } else {
            self.with_labels(&d)
        };
        let (services, routes) = (table.services.len(), table.routes);
        self.proxy.swap(table);
        *current = d;
        tracing::info!(services, routes, "configuration applied");
        Ok(())
    }

    /// Rebuilds after discovery changed.
    fn refresh(&self) {
        let current = self.current.lock();
        let table = self.with_labels(&current);
        self.proxy.swap(table);
    }

    /// The table for `base` plus label-driven routes. A label route the
    /// table refuses (a bad host in a rule, say) is dropped with a warning;
    /// the others still apply.
    fn with_labels(&self, base: &Declarative) -> router::Table {
        let mut merged = labels::merge(base, self.instances.lock().values());
        loop {
            match router::Table::build(&merged) {
                Ok(t) => return t,
                Err(e) => {
                    let index = |prefix: &str| {
                        e.field
                            .strip_prefix(prefix)
                            .and_then(|r| r.split(']').next())
                            .and_then(|n| n.parse::<usize>().ok())
                    };
                    tracing::warn!(error = %e, "a route from discovery labels was refused");
                    match (index("services["), index("upstreams[")) {
                        (Some(i), _) if i >= base.services.len() => {
                            merged.services.remove(i);
                        }
                        (_, Some(i)) if i >= base.upstreams.len() => {
                            let name = merged.upstreams.remove(i).name;
                            merged.services.retain(|s| s.name != name);
                        }
                        // The base itself was valid when applied: unreachable
                        // in practice, but never serve nothing.
                        _ => return router::Table::build(base).unwrap_or_default(),
                    }
                }
            }
        }
    }
}

/// Follows discovery's Watch stream (snapshot, then changes), resuming from
/// the last index after a disconnect; every change rebuilds the table.
async fn watch_discovery(url: String, gateway: Arc<Gateway>, shutdown: Shutdown) {
    let mut from = 0u64;
    let mut backoff = Duration::from_millis(100);
    loop {
        let session = async {
            let mut client = pb::discovery_client::DiscoveryClient::connect(url.clone())
                .await
                .map_err(|e| e.to_string())?;
            let mut stream = client
                .watch(pb::WatchRequest {
                    from_index: from,
                    services: Vec::new(),
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            let mut snapshot: Option<Vec<pb::Instance>> = None;
            while let Some(ev) = stream.message().await.map_err(|e| e.to_string())? {
                backoff = Duration::from_millis(100);
                let changed = match ev.event {
                    Some(pb::watch_event::Event::Snapshot(chunk)) => {
                        let all = snapshot.get_or_insert_with(Vec::new);
                        all.extend(chunk.instances);
                        if chunk.last {
                            let all = snapshot.take().unwrap_or_default();
                            *gateway.instances.lock() = all
                                .into_iter()
                                .map(|i| ((i.node.clone(), i.id.clone()), i))
                                .collect();
                        }
                        chunk.last
                    }
                    Some(pb::watch_event::Event::Upsert(i)) => {
                        let touches = i.meta.contains_key(labels::RULE)
                            || gateway
                                .instances
                                .lock()
                                .contains_key(&(i.node.clone(), i.id.clone()));
                        gateway
                            .instances
                            .lock()
                            .insert((i.node.clone(), i.id.clone()), i);
                        touches
                    }
                    Some(pb::watch_event::Event::Removed(r)) => gateway
                        .instances
                        .lock()
                        .remove(&(r.node, r.id))
                        .is_some_and(|i| i.meta.contains_key(labels::RULE)),
                    Some(pb::watch_event::Event::Resumed(_)) | None => false,
                };
                from = ev.index;
                if changed {
                    gateway.refresh();
                }
            }
            Err::<(), String>("the watch stream ended".into())
        };
        tokio::select! {
            r = session => {
                if let Err(error) = r {
                    tracing::warn!(%url, %error, retry_in = ?backoff, "discovery watch interrupted");
                }
            }
            () = shutdown.wait() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.wait() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

pub struct Server {
    config: Config,
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
}

fn empty() -> Declarative {
    Declarative {
        format_version: "3.0".into(),
        ..Declarative::default()
    }
}

impl Server {
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let bind = |what: &'static str, addr: SocketAddr| {
            move |source| StartError::Bind { what, addr, source }
        };
        let proxy_listener = TcpListener::bind(config.addr)
            .await
            .map_err(bind("the proxy", config.addr))?;
        let admin_listener = TcpListener::bind(config.admin_addr)
            .await
            .map_err(bind("the admin API", config.admin_addr))?;
        let declarative = if config.declarative_config.is_empty() {
            empty()
        } else {
            let path = config.declarative_config.clone();
            let fail = |message: String| StartError::Declarative {
                path: path.clone(),
                message,
            };
            let text = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
            declarative::parse(&text).map_err(|e| fail(e.to_string()))?
        };
        let table = router::Table::build(&declarative).map_err(|e| StartError::Declarative {
            path: config.declarative_config.clone(),
            message: e.to_string(),
        })?;
        let mut metrics = Metrics::new("gateway");
        let gateway_metrics = Arc::new(metrics::GatewayMetrics::register(&mut metrics));
        Ok(Self {
            gateway: Arc::new(Gateway {
                proxy: Arc::new(proxy::Proxy::new(table, gateway_metrics)),
                current: Mutex::new(declarative),
                instances: Mutex::new(HashMap::new()),
            }),
            config,
            metrics: Arc::new(metrics),
            proxy_listener,
            admin_listener,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.proxy_listener.local_addr().unwrap_or(self.config.addr)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.config.admin_addr)
    }

    pub async fn serve(self, shutdown: Shutdown) -> Result<(), StartError> {
        let draining = Arc::new(AtomicBool::new(false));
        let d = draining.clone();
        let admin = Router::new()
            .route("/config", axum::routing::get(get_config).post(post_config))
            .route("/services", axum::routing::get(list_services))
            .route("/routes", axum::routing::get(list_routes))
            .with_state(self.gateway.clone())
            .merge(bronze_telemetry::ops_routes(
                self.metrics.clone(),
                move || !d.load(Ordering::Relaxed),
            ));
        let admin_shutdown = shutdown.clone();
        let admin_task = tokio::spawn(async move {
            axum::serve(self.admin_listener, admin)
                .with_graceful_shutdown(async move { admin_shutdown.wait().await })
                .await
        });
        let watcher = (!self.config.discovery.is_empty()).then(|| {
            tokio::spawn(watch_discovery(
                self.config.discovery.clone(),
                self.gateway.clone(),
                shutdown.clone(),
            ))
        });
        tracing::info!(proxy = %self.config.addr, admin = %self.config.admin_addr, "gateway serving");
        serve_proxy(
            self.proxy_listener,
            self.gateway.proxy.clone(),
            self.config.header_read_timeout,
            shutdown.clone(),
        )
        .await;
        draining.store(true, Ordering::Relaxed);
        let _ = admin_task.await;
        if let Some(w) = watcher {
            let _ = w.await;
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// Accepts until shutdown, then lets open connections finish.
async fn serve_proxy(
    listener: TcpListener,
    proxy: Arc<proxy::Proxy>,
    header_read_timeout: Duration,
    shutdown: Shutdown,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(64 << 10);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(64 << 10);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.wait() => break,
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let service = hyper::service::service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, std::convert::Infallible>(proxy.handle(req, peer).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let watched = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(error) = watched.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    // Bounded: a client holding a connection open cannot stall shutdown.
    let _ = tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await;
}

fn json(status: StatusCode, v: serde_json::Value) -> Response {
    (status, axum::Json(v)).into_response()
}

async fn get_config(State(g): State<Arc<Gateway>>) -> Response {
    let current = g.current.lock().clone();
    json(
        StatusCode::OK,
        serde_json::to_value(current).unwrap_or_default(),
    )
}

/// Kong's `POST /config`: replace the whole configuration. A refused
/// document changes nothing and gets 400 naming the field.
async fn post_config(State(g): State<Arc<Gateway>>, body: Bytes) -> Response {
    let applied = declarative::parse(&body).and_then(|d| g.apply(d));
    match applied {
        Ok(()) => {
            let current = g.current.lock().clone();
            json(
                StatusCode::CREATED,
                serde_json::to_value(current).unwrap_or_default(),
            )
        }
        Err(e) => json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({
                "code": 14,
                "name": "invalid declarative configuration",
                "message": format!("declarative config is invalid: {e}"),
                "fields": { e.field.clone(): e.message.clone() },
            }),
        ),
    }
}

async fn list_services(State(g): State<Arc<Gateway>>) -> Response {
    let current = g.current.lock();
    let data: Vec<serde_json::Value> = current
        .services
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.routes.clear();
            serde_json::to_value(s).unwrap_or_default()
        })
        .collect();
    json(
        StatusCode::OK,
        serde_json::json!({ "data": data, "next": null }),
    )
}

async fn list_routes(State(g): State<Arc<Gateway>>) -> Response {
    let current = g.current.lock();
    let data: Vec<serde_json::Value> = current
        .services
        .iter()
        .flat_map(|s| {
            s.routes.iter().map(move |r| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["service"] = serde_json::json!({ "name": s.name });
                v
            })
        })
        .collect();
    json(
        StatusCode::OK,
        serde_json::json!({ "data": data, "next": null }),
    )
}

pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), StartError> {
    Server::bind(config).await?.serve(shutdown).await
}
