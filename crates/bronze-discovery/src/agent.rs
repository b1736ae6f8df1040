//! The agent drives the catalog: it persists durable registrations before
//! they become visible, runs HTTP and TCP checks, expires TTL checks,
//! deregisters instances whose checks stay critical, and applies heartbeats.
//!
//! Both APIs (gRPC and Consul HTTP) call the agent; neither touches the
//! catalog's write side directly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bronze_runtime::Shutdown;
use bronze_store::Store;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::catalog::{Catalog, CheckState, Instance, Registered};
use crate::error::Error;
use crate::metrics::{DiscoveryMetrics, StatusLabel};
use crate::model::{CheckKind, CheckSpec, Health, InstanceKey, Registration};

const REGISTRATIONS: &str = "discovery.registrations";
/// Check output is cut to this many bytes, as Consul does.
const MAX_OUTPUT: usize = 4096;

type CheckRef = (InstanceKey, String);

/// Deadlines ordered by time, each at most once per key.
#[derive(Default)]
struct Deadlines {
    by_time: BTreeMap<(Instant, u64), CheckRef>,
    by_key: HashMap<CheckRef, (Instant, u64)>,
    seq: u64,
}

impl Deadlines {
    fn set(&mut self, key: CheckRef, at: Instant) {
        self.remove(&key);
        self.seq += 1;
        self.by_time.insert((at, self.seq), key.clone());
        self.by_key.insert(key, (at, self.seq));
    }

    fn contains(&self, key: &CheckRef) -> bool {
        self.by_key.contains_key(key)
    }

    fn remove(&mut self, key: &CheckRef) {
        if let Some(slot) = self.by_key.remove(key) {
            self.by_time.remove(&slot);
        }
    }

    fn next(&self) -> Option<Instant> {
        self.by_time.keys().next().map(|(t, _)| *t)
    }

    fn pop_due(&mut self, now: Instant) -> Vec<CheckRef> {
        let mut due = Vec::new();
        while let Some(entry) = self.by_time.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.by_key.remove(&key);
            due.push(key);
        }
        due
    }
}

#[derive(Default)]
struct Timers {
    /// When each TTL check turns critical unless refreshed.
    ttl: Deadlines,
    /// When each critical check with `deregister_critical_after` removes
    /// its instance.
    reap: Deadlines,
}

pub struct Agent {
    pub catalog: Arc<Catalog>,
    pub metrics: Arc<DiscoveryMetrics>,
    pub node: String,
    pub node_address: String,
    pub datacenter: String,
    /// Random per process start: lets owners notice a restart.
    pub epoch: String,
    store: Arc<dyn Store>,
    /// Serialises mutations so the store and the catalog see them in the
    /// same order.
    write_lock: tokio::sync::Mutex<()>,
    runners: Mutex<HashMap<CheckRef, JoinHandle<()>>>,
    timers: Mutex<Timers>,
    timers_changed: Notify,
    /// Verifies certificates; `Err` when the system has no CA store.
    https: Result<reqwest::Client, String>,
    /// For http:// URLs (no TLS involved) and tls_skip_verify checks.
    http: reqwest::Client,
    shutdown: Shutdown,
    this: Weak<Agent>,
}

pub struct AgentConfig {
    pub node: String,
    pub node_address: String,
    pub datacenter: String,
    pub base_index: u64,
    pub change_log: usize,
}

impl Agent {
    /// Builds the agent, loads durable registrations from `store` and
    /// starts the timer task. Background work stops when `shutdown` fires.
    pub async fn start(
        config: AgentConfig,
        store: Arc<dyn Store>,
        metrics: Arc<DiscoveryMetrics>,
        shutdown: Shutdown,
    ) -> Result<Arc<Self>, Error> {
        let catalog = Arc::new(Catalog::new(
            config.base_index,
            &config.node,
            &config.node_address,
            config.change_log,
        ));
        bronze_runtime::install_crypto_provider();
        let client = |insecure: bool| {
            reqwest::Client::builder()
                .tls_backend_rustls()
                .danger_accept_invalid_certs(insecure)
                .pool_max_idle_per_host(0)
                .redirect(reqwest::redirect::Policy::limited(5))
                .user_agent("bronze-discovery health check")
                .build()
                .map_err(|e| Error::invalid("http client", e.to_string()))
        };
        let https = client(false).map_err(|e| e.to_string());
        if let Err(error) = &https {
            tracing::warn!(%error, "https checks that verify certificates will fail");
        }
        let http = client(true)?;
        let agent = Arc::new_cyclic(|this| Agent {
            catalog,
            metrics,
            node: config.node,
            node_address: config.node_address,
            datacenter: config.datacenter,
            epoch: format!("{:016x}", fastrand::u64(..)),
            store,
            write_lock: tokio::sync::Mutex::new(()),
            runners: Mutex::new(HashMap::new()),
            timers: Mutex::new(Timers::default()),
            timers_changed: Notify::new(),
            https,
            http,
            shutdown,
            this: this.clone(),
        });
        agent.metrics.index.set(agent.catalog.index());
        agent.load().await?;
        tokio::spawn(timer_loop(Arc::downgrade(&agent), agent.shutdown.clone()));
        Ok(agent)
    }

    async fn load(&self) -> Result<(), Error> {
        let store = self.store.clone();
        let entries = tokio::task::spawn_blocking(move || store.list(REGISTRATIONS))
            .await
            .map_err(|e| Error::invalid("store", e.to_string()))??;
        let mut loaded = 0;
        for (key, bytes) in entries {
            match serde_json::from_slice::<Registration>(&bytes) {
                Ok(reg) => match self.catalog.register(reg, true) {
                    Ok(r) => {
                        self.after_register(&r);
                        loaded += 1;
                    }
                    Err(error) => tracing::error!(%key, %error, "stored registration skipped"),
                },
                // Kept in the store so nothing is lost; reported loudly.
                Err(error) => {
                    tracing::error!(%key, %error, "stored registration unreadable, skipped")
                }
            }
        }
        tracing::info!(registrations = loaded, "catalog loaded");
        Ok(())
    }

    async fn store_op(
        &self,
        op: impl FnOnce(&dyn Store) -> Result<(), bronze_store::StoreError> + Send + 'static,
    ) -> Result<(), Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || op(&*store))
            .await
            .map_err(|e| Error::invalid("store", e.to_string()))??;
        Ok(())
    }

    /// Registers (or replaces) an instance. A durable registration is
    /// fsync'd before it becomes visible; on any error nothing changed.
    pub async fn register(&self, reg: Registration) -> Result<Registered, Error> {
        if self.shutdown.is_triggered() {
            return Err(Error::ShuttingDown);
        }
        let _guard = self.write_lock.lock().await;
        let key = InstanceKey::new(&reg.instance.node, &reg.instance.id);
        let previous = self.catalog.instance(&key);
        if previous
            .as_ref()
            .is_some_and(|p| p.spec == reg.instance && p.owner == reg.owner)
        {
            // Identical: nothing to persist, nothing to restart.
            return self
                .catalog
                .register(reg, previous.is_some_and(|p| p.durable));
        }
        // Refuse conflicts before anything is written anywhere.
        self.catalog.check_conflicts(&reg)?;
        let durable = reg.is_durable();
        if durable {
            let bytes = serde_json::to_vec(&reg)
                .map_err(|e| Error::invalid("registration", e.to_string()))?;
            let skey = key.storage_key();
            self.store_op(move |s| s.put(REGISTRATIONS, &skey, &bytes))
                .await?;
        } else if previous.as_ref().is_some_and(|p| p.durable) {
            let skey = key.storage_key();
            self.store_op(move |s| s.delete(REGISTRATIONS, &skey).map(|_| ()))
                .await?;
        }
        // Cannot fail: conflicts were checked under the same write lock.
        let registered = self.catalog.register(reg, durable)?;
        self.after_register(&registered);
        Ok(registered)
    }

    fn after_register(&self, r: &Registered) {
        if !r.changed {
            return;
        }
        self.metrics.registrations.inc();
        self.metrics.index.set(r.index);
        if r.previous.is_none() {
            self.metrics.instances.inc();
        }
        if let Some(prev) = &r.previous {
            for old in &prev.checks {
                if !r.instance.checks.iter().any(|c| c.spec == old.spec) {
                    self.stop_check(&(prev.key.clone(), old.spec.id.clone()));
                }
            }
        }
        for check in &r.instance.checks {
            // Maintenance mode is the catalog's, with no timer or probe.
            if check.spec.id == crate::catalog::maintenance_check_id(&r.instance.key.id) {
                continue;
            }
            let key = (r.instance.key.clone(), check.spec.id.clone());
            let kept = r
                .previous
                .as_ref()
                .is_some_and(|p| p.checks.iter().any(|c| c.spec == check.spec));
            if kept {
                continue;
            }
            match &check.spec.kind {
                CheckKind::Ttl { ttl, .. } => {
                    self.timers
                        .lock()
                        .ttl
                        .set(key.clone(), Instant::now() + *ttl);
                    self.timers_changed.notify_one();
                }
                CheckKind::Http { .. } | CheckKind::Tcp { .. } => {
                    self.start_runner(key.clone(), check.spec.clone())
                }
            }
            self.track_critical(&key, check);
        }
    }

    /// Schedules or cancels the reaping of a check's instance according to
    /// its status.
    fn track_critical(&self, key: &CheckRef, check: &CheckState) {
        let Some(after) = check.spec.deregister_critical_after else {
            return;
        };
        let mut timers = self.timers.lock();
        if check.status == Health::Critical {
            if !timers.reap.contains(key) {
                timers.reap.set(key.clone(), Instant::now() + after);
                drop(timers);
                self.timers_changed.notify_one();
            }
        } else {
            timers.reap.remove(key);
        }
    }

    fn stop_check(&self, key: &CheckRef) {
        if let Some(handle) = self.runners.lock().remove(key) {
            handle.abort();
        }
        let mut timers = self.timers.lock();
        timers.ttl.remove(key);
        timers.reap.remove(key);
    }

    fn start_runner(&self, key: CheckRef, spec: CheckSpec) {
        let agent = self.this.clone();
        let shutdown = self.shutdown.clone();
        let client = match &spec.kind {
            CheckKind::Http {
                url,
                tls_skip_verify: false,
                ..
            } if url.starts_with("https:") => self.https.clone(),
            _ => Ok(self.http.clone()),
        };
        let task_key = key.clone();
        let handle = tokio::spawn(async move {
            // Stagger the first run so a burst of registrations does not
            // probe everything at once, but report promptly.
            let first = spec.interval.min(Duration::from_millis(250));
            let mut next = Instant::now() + first.mul_f64(fastrand::f64());
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {}
                    _ = shutdown.wait() => return,
                }
                next = Instant::now() + spec.interval;
                let (status, output) = match &client {
                    Ok(client) => probe(client, &spec).await,
                    Err(e) => (
                        Health::Critical,
                        format!("cannot verify TLS certificates: {e}"),
                    ),
                };
                let Some(agent) = agent.upgrade() else { return };
                agent
                    .metrics
                    .check_results
                    .get_or_create(&StatusLabel {
                        status: status.as_str(),
                    })
                    .inc();
                // The instance may be gone by now: then this task is aborted.
                let _ = agent.apply_status(&task_key.0, &task_key.1, status, &output);
            }
        });
        if let Some(old) = self.runners.lock().insert(key, handle) {
            old.abort();
        }
    }

    /// Sets a check's status and keeps the reaper in step.
    fn apply_status(
        &self,
        key: &InstanceKey,
        check_id: &str,
        status: Health,
        output: &str,
    ) -> Result<u64, Error> {
        let output = truncate(output, MAX_OUTPUT);
        let updated = self.catalog.set_check(key, check_id, status, output)?;
        if updated.old != updated.new {
            self.metrics.index.set(updated.index);
            if let Some(check) = updated
                .instance
                .checks
                .iter()
                .find(|c| c.spec.id == check_id)
            {
                self.track_critical(&(key.clone(), check_id.to_string()), check);
            }
        }
        Ok(updated.index)
    }

    /// Removes an instance (and its stored copy). `Ok(None)` when unknown.
    pub async fn deregister(&self, key: &InstanceKey) -> Result<Option<u64>, Error> {
        let _guard = self.write_lock.lock().await;
        self.deregister_locked(key).await
    }

    async fn deregister_locked(&self, key: &InstanceKey) -> Result<Option<u64>, Error> {
        let Some(current) = self.catalog.instance(key) else {
            return Ok(None);
        };
        if current.durable {
            let skey = key.storage_key();
            self.store_op(move |s| s.delete(REGISTRATIONS, &skey).map(|_| ()))
                .await?;
        }
        let Some((index, removed)) = self.catalog.deregister(key) else {
            return Ok(None);
        };
        for check in &removed.checks {
            self.stop_check(&(key.clone(), check.spec.id.clone()));
        }
        self.metrics.deregistrations.inc();
        self.metrics.instances.dec();
        self.metrics.index.set(index);
        Ok(Some(index))
    }

    /// Sets a TTL check's status (Consul's check pass/warn/fail/update) and
    /// restarts its TTL.
    pub fn update_ttl(
        &self,
        key: &InstanceKey,
        check_id: &str,
        status: Health,
        output: &str,
    ) -> Result<u64, Error> {
        let instance = self
            .catalog
            .instance(key)
            .ok_or_else(|| Error::NotFound(format!("instance {key}")))?;
        let check = instance
            .checks
            .iter()
            .find(|c| c.spec.id == check_id)
            .ok_or_else(|| Error::NotFound(format!("check {check_id:?}")))?;
        let CheckKind::Ttl { ttl, .. } = check.spec.kind else {
            return Err(Error::invalid(
                "CheckID",
                format!(
                    "check {check_id:?} is a {} check; only TTL checks take updates",
                    check.spec.kind.name()
                ),
            ));
        };
        self.refresh_ttl(key, check_id, ttl);
        self.apply_status(key, check_id, status, output)
    }

    fn refresh_ttl(&self, key: &InstanceKey, check_id: &str, ttl: Duration) {
        self.timers
            .lock()
            .ttl
            .set((key.clone(), check_id.to_string()), Instant::now() + ttl);
        self.timers_changed.notify_one();
    }

    /// Refreshes every TTL check of `owner` (to passing, or to the status a
    /// report gives), or with `only_reported` those of the instances the
    /// reports name, and applies the reports. Returns how many TTL checks
    /// were refreshed and the owner's instances as the catalog holds them.
    pub fn heartbeat(
        &self,
        owner: &str,
        reports: &[CheckReport],
        only_reported: bool,
    ) -> (u32, Vec<Arc<Instance>>) {
        let instances = self.catalog.owner_instances(owner);
        let by_check: HashMap<(&str, &str), &CheckReport> = reports
            .iter()
            .map(|r| ((r.instance_id.as_str(), r.check_id.as_str()), r))
            .collect();
        let named: HashSet<&str> = reports.iter().map(|r| r.instance_id.as_str()).collect();
        let mut refreshed = 0;
        for instance in &instances {
            if only_reported && !named.contains(&*instance.key.id) {
                continue;
            }
            for check in &instance.checks {
                let report = by_check.get(&(&*instance.key.id, check.spec.id.as_str()));
                if let CheckKind::Ttl { ttl, external } = check.spec.kind {
                    if external {
                        // The service refreshes it itself.
                        continue;
                    }
                    self.refresh_ttl(&instance.key, &check.spec.id, ttl);
                    refreshed += 1;
                    let (status, output) = match report {
                        Some(r) => (r.status, r.output.as_str()),
                        None => (Health::Passing, ""),
                    };
                    let _ = self.apply_status(&instance.key, &check.spec.id, status, output);
                } else if let Some(r) = report {
                    let _ = self.apply_status(&instance.key, &check.spec.id, r.status, &r.output);
                }
            }
        }
        (refreshed, self.catalog.owner_instances(owner))
    }

    async fn on_timers(&self) {
        let now = Instant::now();
        let (expired, reap) = {
            let mut t = self.timers.lock();
            (t.ttl.pop_due(now), t.reap.pop_due(now))
        };
        for (key, check_id) in expired {
            let _ = self.apply_status(&key, &check_id, Health::Critical, "TTL expired");
        }
        for (key, check_id) in reap {
            let still_critical = self.catalog.instance(&key).and_then(|i| {
                i.checks
                    .iter()
                    .find(|c| c.spec.id == check_id)
                    .map(|c| c.status)
            }) == Some(Health::Critical);
            if still_critical {
                tracing::info!(instance = %key, check = %check_id, "deregistering: check critical too long");
                if let Err(error) = self.deregister(&key).await {
                    tracing::warn!(instance = %key, %error, "deregistration of a critical instance failed");
                }
            }
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        let t = self.timers.lock();
        match (t.ttl.next(), t.reap.next()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Stops every check runner (shutdown).
    pub fn stop(&self) {
        for (_, handle) in self.runners.lock().drain() {
            handle.abort();
        }
    }
}

/// One check result reported by an owner.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub instance_id: String,
    pub check_id: String,
    pub status: Health,
    pub output: String,
}

async fn timer_loop(agent: Weak<Agent>, shutdown: Shutdown) {
    loop {
        let Some(a) = agent.upgrade() else { return };
        {
            let notified = a.timers_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = a.next_timer();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = notified => {}
                _ = shutdown.wait() => return,
            }
        }
        a.on_timers().await;
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Runs one HTTP or TCP probe: 2xx passing, 429 warning, anything else
/// (including a timeout) critical; TCP passing when the connection opens.
async fn probe(client: &reqwest::Client, spec: &CheckSpec) -> (Health, String) {
    match &spec.kind {
        CheckKind::Http {
            url,
            method,
            headers,
            ..
        } => {
            let method = http::Method::from_bytes(method.as_bytes()).unwrap_or(http::Method::GET);
            let mut req = client.request(method.clone(), url).timeout(spec.timeout);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            match req.send().await {
                Ok(resp) => {
                    let code = resp.status();
                    let status = if code.is_success() {
                        Health::Passing
                    } else if code == http::StatusCode::TOO_MANY_REQUESTS {
                        Health::Warning
                    } else {
                        Health::Critical
                    };
                    let body = tokio::time::timeout(spec.timeout, resp.text())
                        .await
                        .ok()
                        .and_then(|r| r.ok())
                        .unwrap_or_default();
                    let body = truncate(&body, 1024);
                    (
                        status,
                        format!("HTTP {method} {url}: {code} Output: {body}"),
                    )
                }
                Err(e) => (Health::Critical, format!("HTTP {method} {url}: {e}")),
            }
        }
        CheckKind::Tcp { address } => {
            match tokio::time::timeout(
                spec.timeout,
                tokio::net::TcpStream::connect(address.as_str()),
            )
            .await
            {
                Ok(Ok(_)) => (Health::Passing, format!("TCP connect {address}: Success")),
                Ok(Err(e)) => (Health::Critical, format!("TCP connect {address}: {e}")),
                Err(_) => (
                    Health::Critical,
                    format!("TCP connect {address}: timed out"),
                ),
            }
        }
        CheckKind::Ttl { .. } => (Health::Critical, "TTL checks are not probed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_pop_in_order_once() {
        let mut d = Deadlines::default();
        let now = Instant::now();
        let k = |s: &str| (InstanceKey::new("n", s), "c".to_string());
        d.set(k("b"), now + Duration::from_secs(2));
        d.set(k("a"), now + Duration::from_secs(1));
        d.set(k("b"), now + Duration::from_secs(3));
        assert_eq!(d.next(), Some(now + Duration::from_secs(1)));
        assert_eq!(d.pop_due(now + Duration::from_secs(2)), vec![k("a")]);
        assert!(d.pop_due(now + Duration::from_secs(2)).is_empty());
        assert_eq!(d.pop_due(now + Duration::from_secs(3)), vec![k("b")]);
        assert_eq!(d.next(), None);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
