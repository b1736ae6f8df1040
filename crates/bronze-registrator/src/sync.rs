//! Keeping discovery in step with the engine.
//!
//! Every trigger (an engine event, the periodic resync, a reconnect) ends in
//! [`Registrator::sync_container`]: inspect the container now, compute its
//! instances with the conventions, and register or deregister the
//! difference. Syncs of one container are serialised by a per-container
//! lock and always act on a fresh inspect, so the order in which events
//! arrive never matters and replayed events are harmless.
//!
//! The heartbeat loop reports every check's status (container state,
//! probes run here, Docker health) in one call per interval, or at once
//! when something changed; discovery's answer tells it what to register
//! again (discovery restarted, or expired an instance) and which of this
//! host's instances no longer have a container.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bollard::Docker;
use bollard::models::EventMessageTypeEnum;
use bollard::query_parameters::{EventsOptions, InspectContainerOptions, ListContainersOptions};
use bronze_proto::discovery::v1 as pb;
use bronze_runtime::Shutdown;
use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use pb::discovery_client::DiscoveryClient;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::config::{Config, DeregisterMode};
use crate::convention::{self, CheckPlan, DockerHealth, Probe, ServicePlan, Settings, Status};
use crate::engine;
use crate::metrics::{ActionLabel, RegistratorMetrics, ResultLabel};

/// Longest wait between two attempts to reach the engine.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The latest result of a check this registrator runs.
type Cell = Arc<Mutex<(Status, String)>>;

struct ProbeRun {
    plan: CheckPlan,
    result: Cell,
    task: Option<JoinHandle<()>>,
}

impl ProbeRun {
    /// What this check says now: its probe's last result, or the
    /// container's Docker health.
    fn status(&self, t: &Tracked) -> (Status, String) {
        match self.plan.probe {
            Probe::DockerHealth => docker_status(t.health),
            _ => self.result.lock().clone(),
        }
    }
}

impl Drop for ProbeRun {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// One instance this registrator keeps registered.
struct Active {
    plan: ServicePlan,
    registered: bool,
    probes: Vec<ProbeRun>,
}

/// A container this registrator knows about.
struct Tracked {
    name: String,
    services: Vec<Active>,
    paused: bool,
    /// Exited with this code and kept registered (`--deregister on-success`).
    exited: Option<i64>,
    health: Option<DockerHealth>,
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Tracked>,
    /// Discovery's server epoch when last heard from.
    epoch: Option<String>,
    /// This host's instances in discovery that no container backs.
    orphans: Vec<String>,
    /// Deregistrations discovery has not confirmed yet.
    pending_removals: HashSet<String>,
    /// Warnings already logged, per container.
    warned: HashSet<(String, String)>,
    /// A full resync has completed since start-up (orphans are only
    /// computed after it).
    synced_once: bool,
}

pub struct Registrator {
    config: Config,
    settings: Settings,
    owner: String,
    docker: RwLock<Docker>,
    discovery: DiscoveryClient<Channel>,
    state: Mutex<State>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    report_now: Notify,
    pub metrics: Arc<RegistratorMetrics>,
    http: reqwest::Client,
    shutdown: Shutdown,
    this: Weak<Registrator>,
}

fn liveness_id(id: &str) -> String {
    format!("service:{id}")
}

fn container_check_id(id: &str) -> String {
    format!("service:{id}:container")
}

fn probe_id(id: &str, suffix: &str) -> String {
    format!("service:{id}:{suffix}")
}

fn health_of(s: Status) -> i32 {
    match s {
        Status::Passing => pb::HealthStatus::Passing as i32,
        Status::Warning => pb::HealthStatus::Warning as i32,
        Status::Critical => pb::HealthStatus::Critical as i32,
    }
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn ttl_check(
    id: String,
    name: String,
    ttl: Duration,
    external: bool,
    initial: Status,
    dereg: Option<Duration>,
) -> pb::CheckSpec {
    pb::CheckSpec {
        id,
        name,
        kind: Some(pb::check_spec::Kind::Ttl(pb::TtlCheck {
            ttl: Some(duration(ttl)),
            external,
        })),
        initial_status: health_of(initial),
        deregister_critical_after: dereg.map(duration),
        ..Default::default()
    }
}

fn docker_status(h: Option<DockerHealth>) -> (Status, String) {
    match h {
        Some(DockerHealth::Healthy) => (Status::Passing, "Docker HEALTHCHECK: healthy".into()),
        Some(DockerHealth::Unhealthy) => (Status::Critical, "Docker HEALTHCHECK: unhealthy".into()),
        Some(DockerHealth::Starting) => (Status::Critical, "Docker HEALTHCHECK: starting".into()),
        None => (Status::Critical, "Docker HEALTHCHECK: no result yet".into()),
    }
}

impl Tracked {
    fn container_status(&self) -> (Status, String) {
        match (self.exited, self.paused) {
            (Some(code), _) => (
                Status::Critical,
                format!("container {} exited with code {code}", self.name),
            ),
            (None, true) => (
                Status::Critical,
                format!("container {} is paused", self.name),
            ),
            (None, false) => (
                Status::Passing,
                format!("container {} is running", self.name),
            ),
        }
    }
}

impl Registrator {
    pub fn new(
        config: Config,
        metrics: Arc<RegistratorMetrics>,
        shutdown: Shutdown,
    ) -> Result<Arc<Self>, String> {
        let docker = match config.docker_host.as_str() {
            "" => Docker::connect_with_defaults(),
            h => Docker::connect_with_host(h),
        }
        .map_err(|e| format!("docker_host: {e}"))?;
        let channel = tonic::transport::Endpoint::from_shared(config.discovery.clone())
            .map_err(|e| format!("discovery: {e}"))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .connect_lazy();
        bronze_runtime::install_crypto_provider();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .user_agent("bronze-registrator health check")
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let settings = Settings {
            hostname: config.hostname.clone(),
            host_ip: config.host_ip(),
            internal: config.internal,
            explicit: config.explicit,
            tags: config.tags.clone(),
            ip_from_label: config.use_ip_from_label.clone(),
            only_labels: config.only_labels.clone(),
        };
        Ok(Arc::new_cyclic(|this| Registrator {
            owner: format!("bronze-registrator@{}", config.hostname),
            settings,
            docker: RwLock::new(docker),
            discovery: DiscoveryClient::new(channel),
            state: Mutex::new(State::default()),
            locks: Mutex::new(HashMap::new()),
            report_now: Notify::new(),
            metrics,
            http,
            shutdown,
            this: this.clone(),
            config,
        }))
    }

    pub fn node(&self) -> &str {
        &self.settings.hostname
    }

    pub fn host_ip(&self) -> std::net::IpAddr {
        self.settings.host_ip
    }

    fn docker(&self) -> Docker {
        self.docker.read().clone()
    }

    /// Runs until shutdown: the event stream, the heartbeat loop and the
    /// periodic resync. Ends with one last heartbeat, so instances stay
    /// registered (and trusted for one TTL) across a restart.
    pub async fn run(self: Arc<Self>) {
        let events = tokio::spawn(self.clone().event_loop());
        let beats = tokio::spawn(self.clone().heartbeat_loop());
        let resync = tokio::spawn(self.clone().resync_loop());
        self.shutdown.wait().await;
        let _ = tokio::join!(events, beats, resync);
        self.heartbeat_once().await;
        tracing::info!("registrator stopped");
    }

    // ----- the engine -----

    async fn event_loop(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        let mut since: Option<i64> = None;
        loop {
            if self.shutdown.is_triggered() {
                return;
            }
            let negotiated = tokio::select! {
                r = self.docker().negotiate_version() => r,
                _ = self.shutdown.wait() => return,
            };
            let docker = match negotiated {
                Ok(d) => d,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "docker engine unreachable");
                    self.sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            *self.docker.write() = docker.clone();
            // Replay from a second before now (or from the last event seen)
            // so nothing falls between subscribing and the resync below.
            let start = since.map_or_else(|| unix_now() - 1, |s| s / 1_000_000_000);
            let options = EventsOptions {
                since: Some(start.to_string()),
                until: None,
                filters: Some([("type".to_string(), vec!["container".to_string()])].into()),
            };
            let mut stream = docker.events(Some(options));
            tracing::info!("watching the docker engine's events");
            let this = self.clone();
            tokio::spawn(async move { this.resync().await });
            let ended = loop {
                let next = tokio::select! {
                    e = stream.next() => e,
                    _ = self.shutdown.wait() => return,
                };
                match next {
                    Some(Ok(event)) => {
                        backoff = Duration::from_millis(100);
                        if let Some(t) = event.time_nano {
                            since = Some(t);
                        }
                        self.on_event(event);
                    }
                    Some(Err(error)) => break error.to_string(),
                    None => break "closed by the engine".to_string(),
                }
            };
            self.metrics.stream_reconnects.inc();
            tracing::warn!(reason = %ended, retry_in = ?backoff, "docker event stream ended; reconnecting");
            self.sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn sleep(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.shutdown.wait() => {}
        }
    }

    fn on_event(&self, event: bollard::models::EventMessage) {
        if event.typ != Some(EventMessageTypeEnum::CONTAINER) {
            return;
        }
        let (Some(action), Some(id)) = (event.action, event.actor.and_then(|a| a.id)) else {
            return;
        };
        // "health_status: healthy" and the like: the part before the colon.
        let kind = action
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let relevant = matches!(
            kind.as_str(),
            "start"
                | "restart"
                | "die"
                | "stop"
                | "kill"
                | "destroy"
                | "pause"
                | "unpause"
                | "health_status"
                | "rename"
                | "update"
        );
        if !relevant {
            return;
        }
        self.metrics
            .events
            .get_or_create(&ActionLabel { action: kind })
            .inc();
        let Some(this) = self.this.upgrade() else {
            return;
        };
        let received = tokio::time::Instant::now();
        tokio::spawn(async move { this.sync_container(&id, Some(received)).await });
    }

    async fn resync_loop(self: Arc<Self>) {
        if self.config.resync.is_zero() {
            return;
        }
        loop {
            self.sleep(self.config.resync).await;
            if self.shutdown.is_triggered() {
                return;
            }
            self.resync().await;
        }
    }

    /// Reconciles every running container and every tracked one.
    pub async fn resync(&self) {
        let list = self
            .docker()
            .list_containers(Some(ListContainersOptions {
                all: false,
                filters: (!self.settings.only_labels.is_empty())
                    .then(|| [("label".to_string(), self.settings.only_labels.clone())].into()),
                ..Default::default()
            }))
            .await;
        let running = match list {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(%error, "resync: cannot list containers");
                return;
            }
        };
        self.metrics.resyncs.inc();
        let mut ids: HashSet<String> = running.into_iter().filter_map(|c| c.id).collect();
        ids.extend(self.state.lock().containers.keys().cloned());
        futures::future::join_all(ids.iter().map(|id| self.sync_container(id, None))).await;
        self.state.lock().synced_once = true;
        self.report_now.notify_one();
    }

    fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().entry(id.to_string()).or_default().clone()
    }

    /// Brings one container's instances in line with what the engine says
    /// about it now. `received`: when the event that asked for it arrived
    /// (for the event-to-registration latency metric).
    pub async fn sync_container(&self, id: &str, received: Option<tokio::time::Instant>) {
        let lock = self.lock_for(id);
        {
            let _guard = lock.lock().await;
            self.sync_locked(id, received).await;
        }
        let mut locks = self.locks.lock();
        if Arc::strong_count(&lock) == 2 {
            locks.remove(id);
        }
    }

    async fn sync_locked(&self, id: &str, received: Option<tokio::time::Instant>) {
        let inspected = self
            .docker()
            .inspect_container(id, None::<InspectContainerOptions>)
            .await;
        let response = match inspected {
            Ok(r) => r,
            Err(e) if engine::is_not_found(&e) => return self.forget(id).await,
            Err(error) => {
                tracing::debug!(container = id, %error, "inspect failed; the next resync retries");
                return;
            }
        };
        let exit = engine::exit_code(&response);
        let info = engine::container_info(response);
        if !info.running {
            let keep =
                self.config.deregister == DeregisterMode::OnSuccess && exit.is_some_and(|c| c != 0);
            if keep {
                let mut st = self.state.lock();
                if let Some(t) = st.containers.get_mut(id) {
                    t.exited = exit;
                    drop(st);
                    self.report_now.notify_one();
                    return;
                }
                drop(st);
            }
            return self.forget(id).await;
        }

        let (plans, warnings) = convention::plan(&info, &self.settings);
        let mut removed: Vec<String> = Vec::new();
        let mut to_register: Vec<pb::InstanceSpec> = Vec::new();
        {
            let mut st = self.state.lock();
            for w in warnings {
                if st.warned.insert((id.to_string(), w.to_string())) {
                    self.metrics.warnings.inc();
                    tracing::warn!(container = %w.container, key = %w.key, "{}", w.message);
                }
            }
            let tracked = st
                .containers
                .entry(id.to_string())
                .or_insert_with(|| Tracked {
                    name: info.name.clone(),
                    services: Vec::new(),
                    paused: false,
                    exited: None,
                    health: None,
                });
            let changed_state = tracked.paused != info.paused
                || tracked.health != info.health
                || tracked.exited.is_some();
            tracked.name = info.name.clone();
            tracked.paused = info.paused;
            tracked.health = info.health;
            tracked.exited = None;
            let mut old = std::mem::take(&mut tracked.services);
            let mut new = Vec::with_capacity(plans.len());
            for plan in plans {
                match old.iter().position(|a| a.plan == plan) {
                    Some(pos) => new.push(old.swap_remove(pos)),
                    None => new.push(self.activate(plan)),
                }
            }
            for gone in old {
                if !new.iter().any(|a| a.plan.id == gone.plan.id) {
                    removed.push(gone.plan.id.clone());
                }
            }
            for a in &new {
                if !a.registered {
                    to_register.push(self.instance_spec(a, tracked));
                }
            }
            tracked.services = new;
            if changed_state {
                self.report_now.notify_one();
            }
        }
        for instance_id in removed {
            self.deregister(&instance_id).await;
        }
        let registering = !to_register.is_empty();
        self.register_all(id, to_register).await;
        if let (true, Some(t)) = (registering, received) {
            self.metrics
                .event_to_registered
                .observe(t.elapsed().as_secs_f64());
        }
    }

    /// Forgets a container that is gone: its instances are deregistered.
    async fn forget(&self, id: &str) {
        let tracked = {
            let mut st = self.state.lock();
            st.warned.retain(|(c, _)| c != id);
            st.containers.remove(id)
        };
        if let Some(t) = tracked {
            for a in &t.services {
                self.deregister(&a.plan.id).await;
            }
        }
    }

    // ----- discovery -----

    /// Starts the probes of a new instance.
    fn activate(&self, plan: ServicePlan) -> Active {
        let probes = plan
            .checks
            .iter()
            .map(|c| {
                let result: Cell = Arc::new(Mutex::new((plan.initial_status, String::new())));
                let task = match &c.probe {
                    Probe::DockerHealth => None,
                    probe => Some(tokio::spawn(run_probe(
                        self.this.clone(),
                        probe.clone(),
                        plan.interval,
                        plan.timeout,
                        result.clone(),
                        self.shutdown.clone(),
                    ))),
                };
                ProbeRun {
                    plan: c.clone(),
                    result,
                    task,
                }
            })
            .collect();
        Active {
            plan,
            registered: false,
            probes,
        }
    }

    /// The registration of `active`, its checks at what they say now (a
    /// new instance's probes start at their initial status; one registered
    /// again after discovery restarted keeps the status it had, so it does
    /// not leave its balancers until the next report).
    fn instance_spec(&self, active: &Active, tracked: &Tracked) -> pb::InstanceSpec {
        let plan = &active.plan;
        let ttl = self.config.ttl;
        let mut checks = vec![
            ttl_check(
                liveness_id(&plan.id),
                format!("bronze-registrator on {}", self.settings.hostname),
                ttl,
                false,
                Status::Passing,
                Some(self.config.deregister_after),
            ),
            ttl_check(
                container_check_id(&plan.id),
                format!("container {}", tracked.name),
                ttl,
                false,
                tracked.container_status().0,
                None,
            ),
        ];
        for p in &active.probes {
            let name = match &p.plan.probe {
                Probe::Http { url } => format!("HTTP GET {url}"),
                Probe::Tcp { address } => format!("TCP {address}"),
                Probe::DockerHealth => "Docker HEALTHCHECK".to_string(),
            };
            checks.push(ttl_check(
                probe_id(&plan.id, p.plan.suffix),
                name,
                ttl,
                false,
                p.status(tracked).0,
                plan.deregister_after,
            ));
        }
        if let Some(t) = plan.ttl {
            checks.push(ttl_check(
                probe_id(&plan.id, "ttl"),
                format!("TTL {}", humantime::format_duration(t)),
                t,
                true,
                plan.initial_status,
                plan.deregister_after,
            ));
        }
        pb::InstanceSpec {
            id: plan.id.clone(),
            service: plan.name.clone(),
            node: self.settings.hostname.clone(),
            node_address: self.settings.host_ip.to_string(),
            address: plan.address.clone(),
            port: u32::from(plan.port),
            tags: plan.tags.clone(),
            meta: plan
                .meta
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            weights: None,
            checks,
        }
    }

    async fn register_all(&self, container: &str, specs: Vec<pb::InstanceSpec>) {
        if specs.is_empty() {
            return;
        }
        let results = futures::future::join_all(specs.into_iter().map(|spec| {
            let mut client = self.discovery.clone();
            let owner = self.owner.clone();
            async move {
                let id = spec.id.clone();
                let r = client
                    .register(pb::RegisterRequest {
                        instance: Some(spec),
                        owner,
                    })
                    .await;
                (id, r)
            }
        }))
        .await;
        let mut any = false;
        let mut st = self.state.lock();
        for (instance_id, result) in results {
            let Some(t) = st.containers.get_mut(container) else {
                continue;
            };
            match result {
                Ok(_) => {
                    if let Some(a) = t.services.iter_mut().find(|a| a.plan.id == instance_id) {
                        a.registered = true;
                        any = true;
                    }
                    self.metrics.registrations.inc();
                    st.pending_removals.remove(&instance_id);
                }
                Err(status) if status.code() == tonic::Code::InvalidArgument => {
                    let name = t.name.clone();
                    t.services.retain(|a| a.plan.id != instance_id);
                    self.metrics.warnings.inc();
                    tracing::warn!(container = %name, instance = %instance_id, reason = %status.message(), "discovery refused the registration; skipped");
                }
                Err(status) => {
                    tracing::debug!(instance = %instance_id, error = %status.message(), "registration failed; retried with the next heartbeat");
                }
            }
        }
        self.metrics.instances.set(count_registered(&st));
        drop(st);
        if any {
            // Report the real statuses (probes, Docker health) at once.
            self.report_now.notify_one();
        }
    }

    async fn deregister(&self, instance_id: &str) {
        let r = self
            .discovery
            .clone()
            .deregister(pb::DeregisterRequest {
                node: self.settings.hostname.clone(),
                id: instance_id.to_string(),
            })
            .await;
        let mut st = self.state.lock();
        match r {
            Ok(_) => {
                st.pending_removals.remove(instance_id);
                self.metrics.deregistrations.inc();
            }
            Err(status) => {
                tracing::debug!(instance = instance_id, error = %status.message(), "deregistration failed; retried");
                st.pending_removals.insert(instance_id.to_string());
            }
        }
        self.metrics.instances.set(count_registered(&st));
    }

    fn reports(&self) -> Vec<pb::CheckReport> {
        let st = self.state.lock();
        let mut out = Vec::new();
        for t in st.containers.values() {
            let (cs, co) = t.container_status();
            for a in t.services.iter().filter(|a| a.registered) {
                out.push(pb::CheckReport {
                    instance_id: a.plan.id.clone(),
                    check_id: container_check_id(&a.plan.id),
                    status: health_of(cs),
                    output: co.clone(),
                });
                for p in &a.probes {
                    let (status, output) = p.status(t);
                    out.push(pb::CheckReport {
                        instance_id: a.plan.id.clone(),
                        check_id: probe_id(&a.plan.id, p.plan.suffix),
                        status: health_of(status),
                        output,
                    });
                }
            }
        }
        for orphan in &st.orphans {
            out.push(pb::CheckReport {
                instance_id: orphan.clone(),
                check_id: liveness_id(orphan),
                status: health_of(Status::Critical),
                output: format!("no such container on {}", self.settings.hostname),
            });
        }
        out
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.heartbeat) => {}
                _ = self.report_now.notified() => {}
                _ = self.shutdown.wait() => return,
            }
            self.heartbeat_once().await;
        }
    }

    /// Retries what failed, reports every status, and acts on discovery's
    /// answer.
    async fn heartbeat_once(&self) {
        let pending: Vec<String> = self.state.lock().pending_removals.iter().cloned().collect();
        for id in pending {
            self.deregister(&id).await;
        }
        self.register_unregistered().await;
        let reports = self.reports();
        let answer = self
            .discovery
            .clone()
            .heartbeat(pb::HeartbeatRequest {
                owner: self.owner.clone(),
                reports,
                // Vouch only for the containers this registrator knows:
                // after a restart, an instance of a container gone meanwhile
                // must not pass again.
                only_reported: true,
            })
            .await;
        let resp = match answer {
            Ok(r) => r.into_inner(),
            Err(status) => {
                self.metrics
                    .heartbeats
                    .get_or_create(&ResultLabel { result: "failed" })
                    .inc();
                tracing::debug!(error = %status.message(), "heartbeat failed");
                return;
            }
        };
        self.metrics
            .heartbeats
            .get_or_create(&ResultLabel { result: "ok" })
            .inc();
        let known: HashSet<String> = resp.instance_ids.into_iter().collect();
        let (redo, orphans) = {
            let mut st = self.state.lock();
            let restarted = st.epoch.as_ref().is_some_and(|e| *e != resp.server_epoch);
            if restarted {
                tracing::info!("discovery restarted; registering everything again");
            }
            st.epoch = Some(resp.server_epoch);
            let mut redo = false;
            let mut ours: HashSet<String> = HashSet::new();
            for t in st.containers.values_mut() {
                for a in &mut t.services {
                    ours.insert(a.plan.id.clone());
                    if a.registered && (restarted || !known.contains(&a.plan.id)) {
                        a.registered = false;
                        redo = true;
                    }
                }
            }
            let orphans: Vec<String> = if st.synced_once {
                known
                    .iter()
                    .filter(|id| !ours.contains(*id) && !st.pending_removals.contains(*id))
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            st.orphans = if self.config.cleanup {
                Vec::new()
            } else {
                orphans.clone()
            };
            (redo, orphans)
        };
        if self.config.cleanup {
            for id in &orphans {
                tracing::info!(instance = %id, "cleanup: no container for it on this host");
                self.deregister(id).await;
            }
        }
        if redo {
            self.register_unregistered().await;
        }
    }

    async fn register_unregistered(&self) {
        let work: Vec<(String, Vec<pb::InstanceSpec>)> = {
            let st = self.state.lock();
            st.containers
                .iter()
                .map(|(cid, t)| {
                    let specs = t
                        .services
                        .iter()
                        .filter(|a| !a.registered)
                        .map(|a| self.instance_spec(a, t))
                        .collect::<Vec<_>>();
                    (cid.clone(), specs)
                })
                .filter(|(_, s)| !s.is_empty())
                .collect()
        };
        for (container, specs) in work {
            self.register_all(&container, specs).await;
        }
    }

    fn probe_changed(&self) {
        self.report_now.notify_one();
    }
}

fn count_registered(st: &State) -> i64 {
    st.containers
        .values()
        .map(|t| t.services.iter().filter(|a| a.registered).count() as i64)
        .sum()
}

fn unix_now() -> i64 {
    i64::try_from(bronze_runtime::unix_time().as_secs()).unwrap_or(i64::MAX)
}

/// Runs one HTTP or TCP probe every `interval` (the first at once), as a
/// Consul agent would: 2xx passing, 429 warning, anything else critical.
async fn run_probe(
    registrator: Weak<Registrator>,
    probe: Probe,
    interval: Duration,
    timeout: Duration,
    result: Cell,
    shutdown: Shutdown,
) {
    loop {
        let Some(r) = registrator.upgrade() else {
            return;
        };
        let (status, output) = match &probe {
            Probe::Http { url } => match r.http.get(url).timeout(timeout).send().await {
                Ok(resp) if resp.status().is_success() => (
                    Status::Passing,
                    format!("HTTP GET {url}: {}", resp.status()),
                ),
                Ok(resp) if resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => (
                    Status::Warning,
                    format!("HTTP GET {url}: {}", resp.status()),
                ),
                Ok(resp) => (
                    Status::Critical,
                    format!("HTTP GET {url}: {}", resp.status()),
                ),
                Err(e) => (Status::Critical, format!("HTTP GET {url}: {e}")),
            },
            Probe::Tcp { address } => {
                match tokio::time::timeout(
                    timeout,
                    tokio::net::TcpStream::connect(address.as_str()),
                )
                .await
                {
                    Ok(Ok(_)) => (Status::Passing, format!("TCP connect {address}: Success")),
                    Ok(Err(e)) => (Status::Critical, format!("TCP connect {address}: {e}")),
                    Err(_) => (
                        Status::Critical,
                        format!("TCP connect {address}: timed out"),
                    ),
                }
            }
            Probe::DockerHealth => return,
        };
        let changed = {
            let mut cell = result.lock();
            let changed = cell.0 != status;
            *cell = (status, output);
            changed
        };
        if changed {
            r.probe_changed();
        }
        drop(r);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait() => return,
        }
    }
}
