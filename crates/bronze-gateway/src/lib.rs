//! bronze-gateway: the API gateway, on Kong's model. Services, routes,
//! upstreams, targets, consumers, credentials, certificates and plugins
//! come from a declarative file, Kong's Admin API (kept in the embedded
//! store) and discovery's container labels; every change compiles a whole
//! routing table that is swapped atomically. The proxy speaks HTTP/1.1 on
//! its own path (`proxy::h1`), and HTTP/2, h2c, WebSockets and gRPC
//! through hyper, over plain TCP or TLS with certificates by SNI.
//!
//! - `declarative`: Kong's DB-less format (JSON or YAML), parsed with
//!   errors naming the field; `flat`: its flat form (top-level routes and
//!   targets) nested before compiling;
//! - `admin`, `entities`, `multipart`, `certs`, `secrets`, `shown`: Kong's
//!   Admin API (CRUD on entities kept in the embedded store, each change
//!   compiled and swapped like a document; entities shown as Kong shows
//!   them);
//! - `router`: the compiled table and its priority order;
//! - `proxy`, `upstream`: request rewriting and forwarding, upstream
//!   connections (pooled HTTP/1.1, HTTP/2 for gRPC, TLS);
//! - `balancer`: targets, algorithms, health checks, DNS SRV, circuit
//!   breaking, retry budgets;
//! - `plugins`: Kong's plugins (auth, rate limiting, transformers, logs);
//! - `labels`: routes from discovery's labelled instances;
//! - `tls`: certificates by SNI for the TLS listener;
//! - this file: listeners, start-up, the discovery follower.

pub mod admin;
pub mod balancer;
pub mod certs;
pub mod cli;
pub mod config;
pub mod declarative;
pub mod entities;
pub mod flat;
pub mod fuzzing;
pub mod labels;
mod lru;
pub mod metrics;
pub mod multipart;
mod percent;
pub mod plugins;
pub mod proxy;
pub mod router;
pub mod secrets;
mod shown;
pub mod tls;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bronze_proto::discovery::v1 as pb;
use bronze_runtime::Shutdown;
use bronze_telemetry::Metrics;
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
    #[error("{0}")]
    Store(#[from] bronze_store::StoreError),
    #[error(
        "admin_addr {addr} is not a loopback address: set admin_token (--admin-token, BRONZE_GATEWAY_ADMIN_TOKEN) so the admin API is not open to anyone who can reach it"
    )]
    AdminExposed { addr: SocketAddr },
    /// The default certificate (`tls_cert`, `tls_key`).
    #[error("{0}")]
    Tls(String),
    /// The CA file for TLS upstreams.
    #[error("upstream_ca_file {0}")]
    UpstreamCa(String),
    #[error("trusted_ips {0}")]
    TrustedIps(String),
    #[error("real_ip_header {0:?}: expected a header name")]
    RealIpHeader(String),
}

type InstanceKey = (String, String);

/// The configuration in effect and the proxy it feeds.
struct Gateway {
    proxy: Arc<proxy::Proxy>,
    /// The document given by file or `POST /config` (GET /config).
    current: Mutex<Declarative>,
    /// Discovery's instances (node, id), for label-driven routes.
    instances: Mutex<HashMap<InstanceKey, pb::Instance>>,
    /// Instances kept from before discovery restarted, until their owners
    /// register them again or `discovery_grace` ends: (node, id) to the
    /// restart they were kept at.
    carried: Mutex<Carried>,
    /// What the labels routed and could not (admin `GET /labels`).
    labels: labels::Published,
}

impl Gateway {
    /// Swaps in `table`, compiled from `d`.
    pub(crate) fn install(&self, d: Declarative, table: router::Table) {
        let mut current = self.current.lock();
        // Compiled once more only when discovery adds label routes.
        let table = if self.instances.lock().is_empty() {
            table
        } else {
            let mut labelled = self.with_labels(&d);
            labelled.certificates = table.certificates.clone();
            labelled
        };
        let (services, routes) = (table.services.len(), table.routes);
        self.follow_discovery(&table, None);
        self.proxy.swap(table);
        *current = d;
        tracing::info!(services, routes, "configuration applied");
    }

    /// Rebuilds after discovery changed.
    fn refresh(&self) {
        let current = self.current.lock();
        let mut table = self.with_labels(&current);
        table.certificates = self.proxy.table.load().certificates.clone();
        self.follow_discovery(&table, None);
        self.proxy.swap(table);
    }

    fn registry(&self) -> Arc<balancer::Registry> {
        self.proxy.table.load().registry.clone()
    }

    /// Gives upstreams following a discovery service (all of them, or
    /// those following `only`) its current healthy instances.
    fn follow_discovery(&self, table: &router::Table, only: Option<&str>) {
        let services: std::collections::BTreeSet<&str> = table
            .all_upstreams()
            .flat_map(|u| u.discovery_services())
            .filter(|s| only.is_none_or(|o| o.is_empty() || o == *s))
            .collect();
        if services.is_empty() {
            return;
        }
        let instances = self.instances.lock();
        for service in services {
            let targets = instances
                .values()
                .filter(|i| i.service == service && labels::routable(i) && i.port != 0)
                .map(|i| balancer::Resolved {
                    addr: if i.address.contains(':') {
                        format!("[{}]:{}", i.address, i.port)
                    } else {
                        format!("{}:{}", i.address, i.port)
                    },
                    // Consul's weights: by the instance's state.
                    weight: i.weights.as_ref().map_or(1, |w| {
                        if i.health == pb::HealthStatus::Warning as i32 {
                            w.warning.max(1)
                        } else {
                            w.passing.max(1)
                        }
                    }),
                    rank: 0,
                })
                .collect();
            balancer::set_discovery_instances(
                &table.registry,
                service,
                table.all_upstreams(),
                targets,
            );
        }
    }

    /// The table for `base` plus label-driven routes. A label route the
    /// table refuses (a bad host in a rule, say) is dropped with a warning;
    /// the others still apply.
    fn with_labels(&self, base: &Declarative) -> router::Table {
        let (mut merged, mut report) = labels::merge(base, self.instances.lock().values());
        let registry = self.registry();
        loop {
            match flat::compile_routes(&merged, &registry) {
                Ok(t) => {
                    self.labels.publish(report);
                    return t;
                }
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
                            let name = merged.services.remove(i).name;
                            report.refused(&name, &e.to_string());
                        }
                        (_, Some(i)) if i >= base.upstreams.len() => {
                            let name = merged.upstreams.remove(i).name;
                            merged.services.retain(|s| s.name != name);
                            report.refused(&name, &e.to_string());
                        }
                        // The base itself was valid when applied: unreachable
                        // in practice, but never serve nothing.
                        _ => return flat::compile_routes(base, &registry).unwrap_or_default(),
                    }
                }
            }
        }
    }
}

/// Instances carried over a discovery restart: (node, id) to the restart
/// (a generation) they were kept at.
#[derive(Default)]
struct Carried {
    next: u64,
    keys: HashMap<InstanceKey, u64>,
}

impl Gateway {
    /// Takes a whole snapshot as the instances. When discovery restarted
    /// (`restarted`), the instances it no longer knows are kept for
    /// `grace`: their owners (registrators) hold them as soft state and
    /// register them again at their next heartbeat, and dropping them
    /// meanwhile would turn every request to them into a 503. Passive
    /// checks still leave out one that really went away.
    fn resync(
        self: &Arc<Self>,
        mut fresh: HashMap<InstanceKey, pb::Instance>,
        restarted: bool,
        grace: Duration,
        shutdown: &Shutdown,
    ) {
        let carry_new = restarted && !grace.is_zero();
        let (generation, kept) = {
            let mut instances = self.instances.lock();
            let mut carried = self.carried.lock();
            let generation = carried.next;
            let mut keys = HashMap::new();
            for (key, instance) in std::mem::take(&mut *instances) {
                if fresh.contains_key(&key) {
                    continue;
                }
                let kept_at = match carried.keys.get(&key) {
                    Some(&g) => Some(g),
                    None if carry_new => Some(generation),
                    None => None,
                };
                if let Some(g) = kept_at {
                    keys.insert(key.clone(), g);
                    fresh.insert(key, instance);
                }
            }
            let kept = keys.values().filter(|g| **g == generation).count();
            carried.keys = keys;
            *instances = fresh;
            if kept > 0 {
                carried.next += 1;
            }
            (generation, kept)
        };
        if kept == 0 {
            return;
        }
        tracing::info!(
            kept,
            grace = ?grace,
            "discovery restarted: its instances' owners register them again; the last known are kept meanwhile"
        );
        let gateway = self.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(grace) => gateway.expire(generation),
                () = shutdown.wait() => {}
            }
        });
    }

    /// Drops what was kept at restart `generation` and was not registered
    /// again.
    fn expire(&self, generation: u64) {
        let (dropped, labelled) = {
            let mut instances = self.instances.lock();
            let mut carried = self.carried.lock();
            let gone: Vec<InstanceKey> = carried
                .keys
                .iter()
                .filter(|(_, g)| **g == generation)
                .map(|(k, _)| k.clone())
                .collect();
            let mut labelled = false;
            for key in &gone {
                carried.keys.remove(key);
                if let Some(i) = instances.remove(key) {
                    labelled |= labels::is_labelled(&i.meta);
                }
            }
            (gone.len(), labelled)
        };
        if dropped > 0 {
            tracing::info!(
                dropped,
                "instances kept over a discovery restart were not registered again: dropped"
            );
            if labelled {
                self.refresh();
            } else {
                let table = self.proxy.table.load();
                self.follow_discovery(&table, None);
            }
        }
    }

    /// An instance discovery now speaks of is no longer a carried one.
    fn heard_of(&self, key: &InstanceKey) {
        let mut carried = self.carried.lock();
        if !carried.keys.is_empty() {
            carried.keys.remove(key);
        }
    }
}

/// Follows discovery's Watch stream (snapshot, then changes), resuming from
/// the last index after a disconnect; every change rebuilds the table. A
/// snapshot from a restarted discovery (a new server epoch) keeps the
/// instances it lacks for `grace` (`Gateway::resync`).
async fn watch_discovery(url: String, gateway: Arc<Gateway>, grace: Duration, shutdown: Shutdown) {
    let mut from = 0u64;
    let mut epoch = String::new();
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
                let touched: Option<String> = match &ev.event {
                    Some(pb::watch_event::Event::Upsert(i)) => Some(i.service.clone()),
                    // An empty service (older servers): follow every service.
                    Some(pb::watch_event::Event::Removed(r)) => Some(r.service.clone()),
                    _ => None,
                };
                let snapshot_done =
                    matches!(&ev.event, Some(pb::watch_event::Event::Snapshot(c)) if c.last);
                let changed = match ev.event {
                    Some(pb::watch_event::Event::Snapshot(chunk)) => {
                        let all = snapshot.get_or_insert_with(Vec::new);
                        all.extend(chunk.instances);
                        if chunk.last {
                            let all = snapshot.take().unwrap_or_default();
                            // An empty epoch: a server that does not say.
                            let restarted = !epoch.is_empty()
                                && !chunk.server_epoch.is_empty()
                                && epoch != chunk.server_epoch;
                            epoch = chunk.server_epoch;
                            gateway.resync(
                                all.into_iter()
                                    .map(|i| ((i.node.clone(), i.id.clone()), i))
                                    .collect(),
                                restarted,
                                grace,
                                &shutdown,
                            );
                        }
                        chunk.last
                    }
                    Some(pb::watch_event::Event::Upsert(i)) => {
                        gateway.heard_of(&(i.node.clone(), i.id.clone()));
                        let touches = labels::is_labelled(&i.meta)
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
                    Some(pb::watch_event::Event::Removed(r)) => {
                        let key = (r.node, r.id);
                        gateway.heard_of(&key);
                        gateway
                            .instances
                            .lock()
                            .remove(&key)
                            .is_some_and(|i| labels::is_labelled(&i.meta))
                    }
                    Some(pb::watch_event::Event::Resumed(_)) | None => false,
                };
                from = ev.index;
                if changed {
                    gateway.refresh();
                } else if snapshot_done || touched.is_some() {
                    let table = gateway.proxy.table.load();
                    gateway.follow_discovery(&table, touched.as_deref());
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
    admin: Arc<admin::Admin>,
    metrics: Arc<Metrics>,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
    /// The TLS proxy listener (`tls_addr`) and its rustls configuration.
    tls: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
}

impl Server {
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        if !config.admin_addr.ip().is_loopback() && config.admin_token.is_empty() {
            return Err(StartError::AdminExposed {
                addr: config.admin_addr,
            });
        }
        let bind = |what: &'static str, addr: SocketAddr| {
            move |source| StartError::Bind { what, addr, source }
        };
        let proxy_listener = TcpListener::bind(config.addr)
            .await
            .map_err(bind("the proxy", config.addr))?;
        let admin_listener = TcpListener::bind(config.admin_addr)
            .await
            .map_err(bind("the admin API", config.admin_addr))?;
        let store: Arc<dyn bronze_store::Store> = if config.data_dir.is_empty() {
            Arc::new(bronze_store::RedbStore::in_memory()?)
        } else {
            Arc::new(bronze_store::RedbStore::open(
                &std::path::Path::new(&config.data_dir).join("gateway.redb"),
            )?)
        };
        let stored = admin::load(&*store)?;
        // Per-target state (health, in-flight counts, DNS answers) kept
        // across every table compiled from now on.
        let registry = Arc::new(balancer::Registry::new(
            config.dns_resolver.parse().ok(),
            !config.discovery.is_empty(),
        ));
        // Before the first table: services with a client certificate of
        // their own trust these roots too.
        let upstream_tls = upstream::tls::Clients::new(&config.upstream_ca_file)
            .map_err(StartError::UpstreamCa)?;
        registry.set_tls(upstream_tls.clone());
        // A declarative file replaces what the store held; without one, the
        // store's entities (from the Admin API) are the configuration.
        let (entities, declarative, table) = if config.declarative_config.is_empty() {
            let invalid = |e: Invalid| StartError::Declarative {
                path: format!("{} (stored configuration)", config.data_dir),
                message: e.to_string(),
            };
            // Passwords an older build stored in clear are hashed now.
            let mut hashed = stored.clone();
            secrets::hash_all(&mut hashed, &registry.plugins.hashes).map_err(invalid)?;
            store.apply(&admin::diff(&stored, &hashed))?;
            let (d, table) = admin::check(&hashed, &registry).map_err(invalid)?;
            (hashed, d, table)
        } else {
            let path = config.declarative_config.clone();
            let fail = |message: String| StartError::Declarative {
                path: path.clone(),
                message,
            };
            let text = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
            let doc = declarative::to_value(&text).map_err(|e| fail(e.to_string()))?;
            let (entities, d, table) =
                admin::from_document(&doc, &registry).map_err(|e| fail(e.to_string()))?;
            store.apply(&admin::diff(&stored, &entities))?;
            (entities, d, table)
        };
        let default_cert = if config.tls_cert.is_empty() {
            None
        } else {
            Some(tls::load_default(&config.tls_cert, &config.tls_key).map_err(StartError::Tls)?)
        };
        let tls_listener = match config.tls_addr() {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(bind("the TLS proxy", addr))?,
            ),
            None => None,
        };
        let mut metrics = Metrics::new("gateway");
        let gateway_metrics = Arc::new(metrics::GatewayMetrics::register(&mut metrics));
        metrics::CpuWork(registry.plugins.cpu.clone()).register(&mut metrics);
        let label_report = labels::Published::register(&mut metrics);
        let trust = proxy::Trust {
            ips: proxy::TrustedIps::parse(&config.trusted_ips).map_err(StartError::TrustedIps)?,
            real_ip: proxy::RealIp {
                header: http::HeaderName::from_bytes(config.real_ip_header.as_bytes())
                    .map_err(|_| StartError::RealIpHeader(config.real_ip_header.clone()))?,
                recursive: config.real_ip_recursive,
            },
        };
        let proxy = Arc::new(proxy::Proxy::new(
            table,
            gateway_metrics,
            config.upstream_keepalive_idle_timeout,
            upstream_tls,
            trust,
        ));
        if tls_listener.is_some() && default_cert.is_none() {
            tracing::info!(
                "TLS listener without a default certificate (tls_cert): clients whose SNI matches no certificate get an alert"
            );
        }
        let tls = tls_listener.map(|l| (l, tls::server_config(proxy.clone(), default_cert)));
        let gateway = Arc::new(Gateway {
            proxy,
            current: Mutex::new(declarative),
            instances: Mutex::new(HashMap::new()),
            carried: Mutex::new(Carried::default()),
            labels: label_report,
        });
        let info = admin::NodeInfo {
            proxy_listen: proxy_listener
                .local_addr()
                .unwrap_or(config.addr)
                .to_string(),
            admin_listen: admin_listener
                .local_addr()
                .unwrap_or(config.admin_addr)
                .to_string(),
            data_dir: config.data_dir.clone(),
            declarative_config: config.declarative_config.clone(),
        };
        Ok(Self {
            admin: Arc::new(admin::Admin::new(
                gateway.clone(),
                store,
                entities,
                &config.admin_token,
                info,
            )),
            gateway,
            tls,
            config,
            metrics: Arc::new(metrics),
            proxy_listener,
            admin_listener,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.proxy_listener.local_addr().unwrap_or(self.config.addr)
    }

    /// The TLS proxy listener's address, when `tls_addr` is set.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.config.admin_addr)
    }

    pub async fn serve(self, shutdown: Shutdown) -> Result<(), StartError> {
        // The bound addresses (port 0 in a configuration is a real port
        // here): what tests and scripts read to reach the gateway.
        tracing::info!(proxy = %self.addr(), admin = %self.admin_addr(), tls = ?self.tls_addr(), "gateway serving");
        let draining = Arc::new(AtomicBool::new(false));
        let d = draining.clone();
        let admin = admin::router(self.admin.clone()).merge(bronze_telemetry::ops_routes(
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
                self.config.discovery_grace,
                shutdown.clone(),
            ))
        });
        let limits = proxy::Limits {
            header_read_timeout: self.config.header_read_timeout,
            keepalive_timeout: self.config.keepalive_timeout,
            max_head: MAX_HEADER_BYTES,
            proxy_protocol: self.config.proxy_protocol,
        };
        let sweeper = {
            let proxy = self.gateway.proxy.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { proxy.sweep_idle(shutdown).await })
        };
        let tls_task = self.tls.map(|(listener, config)| {
            tokio::spawn(serve_proxy(
                listener,
                Some(tokio_rustls::TlsAcceptor::from(config)),
                self.gateway.proxy.clone(),
                limits,
                shutdown.clone(),
            ))
        });
        serve_proxy(
            self.proxy_listener,
            None,
            self.gateway.proxy.clone(),
            limits,
            shutdown.clone(),
        )
        .await;
        if let Some(t) = tls_task {
            let _ = t.await;
        }
        let _ = sweeper.await;
        draining.store(true, Ordering::Relaxed);
        let _ = admin_task.await;
        if let Some(w) = watcher {
            let _ = w.await;
        }
        // Loggers send what they still hold (http-log's batches, file-log's
        // lines), for at most 5 s.
        let table = self.gateway.proxy.table.load();
        let flushed: Vec<_> = table.plugins.0.iter().filter_map(|p| p.flush()).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        for f in flushed {
            if tokio::time::timeout_at(deadline, f).await.is_err() {
                tracing::warn!("a log plugin did not finish sending before shutdown");
                break;
            }
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// The largest request head a client may send.
const MAX_HEADER_BYTES: usize = 64 << 10;

/// Accepts until shutdown, then lets open connections finish (at most
/// 30 s: a client holding a connection open cannot stall shutdown). With
/// `tls`, the handshake must finish within `header_read_timeout` too.
async fn serve_proxy(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    proxy: Arc<proxy::Proxy>,
    limits: proxy::Limits,
    shutdown: Shutdown,
) {
    let header_read_timeout = limits.header_read_timeout;
    let options = bronze_runtime::serve::Options {
        tls,
        handshake_timeout: header_read_timeout,
        header_read_timeout: Some(header_read_timeout),
        max_header_bytes: Some(MAX_HEADER_BYTES),
        drain_timeout: Some(Duration::from_secs(30)),
        proxy_protocol: limits.proxy_protocol,
    };
    bronze_runtime::serve::serve_with(
        listener,
        options,
        move |conn| proxy::serve_connection(conn, proxy.clone(), limits),
        shutdown,
    )
    .await;
}

pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), StartError> {
    Server::bind(config).await?.serve(shutdown).await
}

pub(crate) use bronze_jwt::sha256;
