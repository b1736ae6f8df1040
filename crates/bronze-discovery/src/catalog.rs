//! The in-memory catalog: nodes, services, instances and their health, one
//! monotonically increasing index, and a bounded log of changes.
//!
//! Every mutation takes the write lock for a few microseconds, bumps the
//! index, appends to the change log and publishes the new index on a
//! `watch` channel. Readers (HTTP, gRPC) take the read lock and copy out
//! `Arc`s. DNS never takes the lock: each mutation also publishes the
//! service's instance list to a lock-free map, so a writer (or a writer
//! descheduled while holding the lock) never stalls a query. Blocking queries and watch streams wait on the index channel
//! and then read what changed from the log, so no subscriber owns a queue
//! and a slow one cannot slow a writer down.
//!
//! The catalog knows nothing about persistence or check scheduling: the
//! [`crate::agent::Agent`] drives it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::error::Error;
use crate::model::{CheckSpec, Health, InstanceKey, InstanceSpec, Registration};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckState {
    pub spec: CheckSpec,
    pub status: Health,
    pub output: String,
}

/// One registered instance and its current health. Immutable: every change
/// replaces the `Arc`.
#[derive(Debug, Clone)]
pub struct Instance {
    pub key: InstanceKey,
    pub spec: InstanceSpec,
    pub owner: Option<String>,
    pub durable: bool,
    pub checks: Vec<CheckState>,
    pub health: Health,
    pub create_index: u64,
    pub modify_index: u64,
    /// The instance's address, or its node's when it registered none.
    pub address: String,
    /// `address` parsed, when it is an IP literal (host names have none).
    pub ip: Option<IpAddr>,
}

impl Instance {
    fn health_of(checks: &[CheckState]) -> Health {
        checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Health::Passing)
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.spec.tags.iter().any(|t| t.eq_ignore_ascii_case(tag))
    }

    /// SRV weight for the current health (0 when critical).
    pub fn weight(&self) -> u16 {
        let w = match self.health {
            Health::Passing => self.spec.weights.passing,
            Health::Warning => self.spec.weights.warning,
            Health::Critical => 0,
        };
        u16::try_from(w).unwrap_or(u16::MAX)
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub address: String,
    pub create_index: u64,
    pub modify_index: u64,
    /// The discovery server's own node: never removed.
    pub local: bool,
    pub(crate) instances: usize,
}

/// One entry of the change log.
#[derive(Debug, Clone)]
pub enum Change {
    /// Registered, re-registered, or its health changed.
    Upsert(Arc<Instance>),
    /// Removed; carries its last state.
    Remove(Arc<Instance>),
}

impl Change {
    pub fn instance(&self) -> &Arc<Instance> {
        match self {
            Change::Upsert(i) | Change::Remove(i) => i,
        }
    }
}

#[derive(Debug, Default)]
pub struct ServiceEntry {
    pub instances: BTreeMap<InstanceKey, Arc<Instance>>,
    /// Index of the last change to any instance of this service (kept after
    /// the last instance leaves, so blocking queries see the removal).
    pub modify_index: u64,
}

/// Summary of a service for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSummary {
    pub name: String,
    pub tags: Vec<String>,
    pub instances: u32,
    pub passing: u32,
}

/// What a register call did.
#[derive(Debug)]
pub struct Registered {
    pub index: u64,
    pub instance: Arc<Instance>,
    pub previous: Option<Arc<Instance>>,
    /// False when the registration was identical to what was there.
    pub changed: bool,
}

/// What a check status update did.
#[derive(Debug)]
pub struct CheckUpdated {
    pub index: u64,
    pub old: Health,
    pub new: Health,
    pub instance: Arc<Instance>,
}

pub enum ChangesSince {
    /// Every change after the requested index, in order.
    Changes(Vec<(u64, Change)>),
    /// The log no longer reaches back that far: start over from a snapshot.
    TooOld,
}

struct State {
    index: u64,
    services: HashMap<String, ServiceEntry>,
    by_key: HashMap<InstanceKey, String>,
    nodes: BTreeMap<String, Node>,
    owners: HashMap<String, BTreeSet<InstanceKey>>,
    log: VecDeque<(u64, Change)>,
    /// Every change after this index is in `log`.
    log_floor: u64,
    /// Last index at which the set of services or their tags changed.
    services_index: u64,
    /// Last index at which a node was added, changed or removed.
    nodes_index: u64,
    /// Check IDs are unique per node (as in Consul's agent API).
    checks: HashMap<(Arc<str>, String), InstanceKey>,
    /// Instances in maintenance (Consul's maintenance mode), with the
    /// reason: critical whatever their checks say, until it is lifted or
    /// they are deregistered. Re-registering keeps it.
    maintenance: HashMap<InstanceKey, String>,
}

/// The check id Consul gives an instance's maintenance mode.
pub fn maintenance_check_id(instance: &str) -> String {
    format!("_service_maintenance:{instance}")
}

/// `checks` with the maintenance check added when `reason` is set.
fn with_maintenance(
    mut checks: Vec<CheckState>,
    instance: &str,
    reason: Option<&String>,
) -> Vec<CheckState> {
    let id = maintenance_check_id(instance);
    checks.retain(|c| c.spec.id != id);
    if let Some(reason) = reason {
        checks.push(CheckState {
            spec: CheckSpec {
                id,
                name: "Service Maintenance Mode".into(),
                kind: crate::model::CheckKind::Ttl {
                    ttl: std::time::Duration::ZERO,
                    external: true,
                },
                interval: std::time::Duration::ZERO,
                timeout: std::time::Duration::ZERO,
                initial_status: Health::Critical,
                deregister_critical_after: None,
                notes: reason.clone(),
            },
            status: Health::Critical,
            output: reason.clone(),
        });
    }
    checks
}

pub struct Catalog {
    state: RwLock<State>,
    /// Service name -> its instances, republished on every change (the DNS
    /// read path).
    published: papaya::HashMap<String, Arc<Vec<Arc<Instance>>>>,
    index_tx: watch::Sender<u64>,
    log_capacity: usize,
}

impl Catalog {
    /// An empty catalog whose index starts at `base_index` (so indexes keep
    /// increasing across restarts when the base is taken from the clock) and
    /// which holds its own node.
    pub fn new(
        base_index: u64,
        local_node: &str,
        local_address: &str,
        log_capacity: usize,
    ) -> Self {
        let base = base_index.max(1);
        let mut nodes = BTreeMap::new();
        nodes.insert(
            local_node.to_string(),
            Node {
                name: local_node.to_string(),
                address: local_address.to_string(),
                create_index: base,
                modify_index: base,
                local: true,
                instances: 0,
            },
        );
        let (index_tx, _) = watch::channel(base);
        Self {
            state: RwLock::new(State {
                index: base,
                services: HashMap::new(),
                by_key: HashMap::new(),
                nodes,
                owners: HashMap::new(),
                log: VecDeque::new(),
                log_floor: base,
                services_index: base,
                nodes_index: base,
                checks: HashMap::new(),
                maintenance: HashMap::new(),
            }),
            index_tx,
            log_capacity: log_capacity.max(1),
            published: papaya::HashMap::new(),
        }
    }

    /// Republishes one service for the lock-free readers. Called with the
    /// write lock held, so publications happen in index order.
    fn publish(&self, st: &State, service: &str) {
        let map = self.published.pin();
        match st.services.get(service).filter(|e| !e.instances.is_empty()) {
            Some(e) => {
                map.insert(
                    service.to_string(),
                    Arc::new(e.instances.values().cloned().collect()),
                );
            }
            None => {
                map.remove(service);
            }
        }
    }

    pub fn index(&self) -> u64 {
        self.state.read().index
    }

    /// Receives every new index; wake-ups may be coalesced.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.index_tx.subscribe()
    }

    /// Adds or replaces an instance. Checks that keep their ID and definition
    /// keep their status; an identical re-registration changes nothing.
    /// Fails (changing nothing) when a check ID is taken by another
    /// instance of the same node.
    pub fn register(&self, reg: Registration, durable: bool) -> Result<Registered, Error> {
        let key = InstanceKey::new(&reg.instance.node, &reg.instance.id);
        let mut st = self.state.write();
        st.check_conflicts(&key, &reg)?;
        let previous = st.lookup(&key).cloned();
        if let Some(prev) = &previous
            && prev.spec == reg.instance
            && prev.owner == reg.owner
        {
            return Ok(Registered {
                index: st.index,
                instance: prev.clone(),
                previous,
                changed: false,
            });
        }
        let index = st.index + 1;
        let checks: Vec<CheckState> = reg
            .instance
            .checks
            .iter()
            .map(|spec| {
                let kept = previous
                    .as_ref()
                    .and_then(|p| p.checks.iter().find(|c| c.spec == *spec));
                CheckState {
                    spec: spec.clone(),
                    status: kept.map_or(spec.initial_status, |c| c.status),
                    output: kept.map(|c| c.output.clone()).unwrap_or_default(),
                }
            })
            .collect();
        let checks = with_maintenance(checks, &reg.instance.id, st.maintenance.get(&key));

        // The node: created on first use, its address refreshed when given.
        let node_name = reg.instance.node.clone();
        let node_address = reg.instance.node_address.clone();
        let node_changed = match st.nodes.get_mut(&node_name) {
            Some(node) => {
                if previous.is_none() {
                    node.instances += 1;
                }
                if !node_address.is_empty() && node.address != node_address {
                    node.address = node_address;
                    node.modify_index = index;
                    true
                } else {
                    false
                }
            }
            None => {
                st.nodes.insert(
                    node_name.clone(),
                    Node {
                        name: node_name.clone(),
                        address: node_address,
                        create_index: index,
                        modify_index: index,
                        local: false,
                        instances: 1,
                    },
                );
                true
            }
        };
        if node_changed {
            st.nodes_index = index;
        }
        let node_address = st
            .nodes
            .get(&node_name)
            .map(|n| n.address.clone())
            .unwrap_or_default();
        let address = if reg.instance.address.is_empty() {
            node_address
        } else {
            reg.instance.address.clone()
        };

        let instance = Arc::new(Instance {
            key: key.clone(),
            ip: address.parse().ok(),
            address,
            health: Instance::health_of(&checks),
            checks,
            create_index: previous.as_ref().map_or(index, |p| p.create_index),
            modify_index: index,
            durable,
            owner: reg.owner,
            spec: reg.instance,
        });

        // A re-registration may move the instance to another service or owner.
        if let Some(prev) = &previous {
            if prev.spec.service != instance.spec.service {
                st.remove_from_service(&key, &prev.spec.service, index);
            }
            if prev.owner != instance.owner {
                st.remove_owner(&key, prev.owner.as_deref());
            }
        }
        if previous.as_ref().is_none_or(|p| {
            p.spec.service != instance.spec.service || p.spec.tags != instance.spec.tags
        }) {
            st.services_index = index;
        }
        if let Some(owner) = &instance.owner {
            st.owners
                .entry(owner.clone())
                .or_default()
                .insert(key.clone());
        }
        if let Some(prev) = &previous {
            st.forget_checks(prev);
        }
        for check in &instance.checks {
            st.checks
                .insert((key.node.clone(), check.spec.id.clone()), key.clone());
        }
        st.by_key.insert(key.clone(), instance.spec.service.clone());
        let entry = st
            .services
            .entry(instance.spec.service.clone())
            .or_default();
        entry.instances.insert(key, instance.clone());
        entry.modify_index = index;
        self.publish(&st, &instance.spec.service);
        if let Some(prev) = &previous
            && prev.spec.service != instance.spec.service
        {
            self.publish(&st, &prev.spec.service);
        }
        self.commit(&mut st, index, Change::Upsert(instance.clone()));
        Ok(Registered {
            index,
            instance,
            previous,
            changed: true,
        })
    }

    /// Puts an instance in maintenance (`reason` set: critical, out of
    /// answers and passing-only reads) or takes it out (`None`). Returns
    /// the index, moved only when something changed.
    pub fn set_maintenance(&self, key: &InstanceKey, reason: Option<String>) -> Result<u64, Error> {
        let mut st = self.state.write();
        let current = st
            .lookup(key)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("instance {key}")))?;
        if st.maintenance.get(key) == reason.as_ref() {
            return Ok(st.index);
        }
        match &reason {
            Some(r) => st.maintenance.insert(key.clone(), r.clone()),
            None => st.maintenance.remove(key),
        };
        let index = st.index + 1;
        let mut next = Instance::clone(&current);
        next.checks = with_maintenance(next.checks, &key.id, reason.as_ref());
        next.health = Instance::health_of(&next.checks);
        next.modify_index = index;
        let next = Arc::new(next);
        st.forget_checks(&current);
        for check in &next.checks {
            st.checks
                .insert((key.node.clone(), check.spec.id.clone()), key.clone());
        }
        let service = next.spec.service.clone();
        let entry = st.services.entry(service.clone()).or_default();
        entry.instances.insert(key.clone(), next.clone());
        entry.modify_index = index;
        self.publish(&st, &service);
        self.commit(&mut st, index, Change::Upsert(next));
        Ok(index)
    }

    /// Removes an instance; `None` if it was not registered.
    pub fn deregister(&self, key: &InstanceKey) -> Option<(u64, Arc<Instance>)> {
        let mut st = self.state.write();
        st.maintenance.remove(key);
        let service = st.by_key.remove(key)?;
        let index = st.index + 1;
        let instance = st.remove_from_service(key, &service, index)?;
        self.publish(&st, &service);
        st.remove_owner(key, instance.owner.as_deref());
        st.forget_checks(&instance);
        st.services_index = index;
        let node_name: &str = &key.node;
        if let Some(node) = st.nodes.get_mut(node_name) {
            node.instances = node.instances.saturating_sub(1);
            if node.instances == 0 && !node.local {
                st.nodes.remove(node_name);
                st.nodes_index = index;
            }
        }
        self.commit(&mut st, index, Change::Remove(instance.clone()));
        Some((index, instance))
    }

    /// Sets one check's status and output. The index moves only when the
    /// status does.
    pub fn set_check(
        &self,
        key: &InstanceKey,
        check_id: &str,
        status: Health,
        output: &str,
    ) -> Result<CheckUpdated, Error> {
        let mut st = self.state.write();
        let current = st
            .lookup(key)
            .ok_or_else(|| Error::NotFound(format!("instance {key}")))?;
        let pos = current
            .checks
            .iter()
            .position(|c| c.spec.id == check_id)
            .ok_or_else(|| Error::NotFound(format!("check {check_id:?} of instance {key}")))?;
        let old = current.checks[pos].status;
        if old == status && current.checks[pos].output == output {
            return Ok(CheckUpdated {
                index: st.index,
                old,
                new: status,
                instance: current.clone(),
            });
        }
        let mut next = Instance::clone(current);
        next.checks[pos].status = status;
        next.checks[pos].output = output.to_string();
        next.health = Instance::health_of(&next.checks);
        let moved = old != status;
        let index = if moved { st.index + 1 } else { st.index };
        if moved {
            next.modify_index = index;
        }
        let next = Arc::new(next);
        let service = next.spec.service.clone();
        let entry = st.services.entry(service).or_default();
        entry.instances.insert(key.clone(), next.clone());
        if moved {
            entry.modify_index = index;
            self.publish(&st, &next.spec.service);
            self.commit(&mut st, index, Change::Upsert(next.clone()));
        }
        Ok(CheckUpdated {
            index,
            old,
            new: status,
            instance: next,
        })
    }

    fn commit(&self, st: &mut State, index: u64, change: Change) {
        st.index = index;
        st.log.push_back((index, change));
        while st.log.len() > self.log_capacity {
            if let Some((i, _)) = st.log.pop_front() {
                st.log_floor = i;
            }
        }
        self.index_tx.send_replace(index);
    }

    // ----- reads -----

    /// Fails when `reg` would take a check ID another instance of its node
    /// holds.
    pub fn check_conflicts(&self, reg: &Registration) -> Result<(), Error> {
        let key = InstanceKey::new(&reg.instance.node, &reg.instance.id);
        self.state.read().check_conflicts(&key, reg)
    }

    /// The instance owning check `check_id` on `node`; failing that, the
    /// one instance on any node that has such a check (services registered
    /// by a registrator refresh their own TTL checks through this server's
    /// agent API, though they live on their host's node).
    pub fn find_check(&self, node: &str, check_id: &str) -> Option<Arc<Instance>> {
        let st = self.state.read();
        if let Some(key) = st.checks.get(&(Arc::from(node), check_id.to_string())) {
            return st.lookup(key).cloned();
        }
        let mut found = st.checks.iter().filter(|((_, id), _)| id == check_id);
        match (found.next(), found.next()) {
            (Some((_, key)), None) => st.lookup(key).cloned(),
            _ => None,
        }
    }

    pub fn instance(&self, key: &InstanceKey) -> Option<Arc<Instance>> {
        self.state.read().lookup(key).cloned()
    }

    /// Runs `f` on a service's published instances (in key order) without
    /// taking any lock: the DNS hot path.
    pub fn with_published<R>(
        &self,
        name: &str,
        f: impl FnOnce(Option<&[Arc<Instance>]>) -> R,
    ) -> R {
        let map = self.published.pin();
        f(map.get(name).map(|v| v.as_slice()))
    }

    /// The instances of a service (in key order) and the index a blocking
    /// query on it should report.
    pub fn service(&self, name: &str) -> (u64, Vec<Arc<Instance>>) {
        let st = self.state.read();
        match st.services.get(name) {
            Some(e) => (e.modify_index, e.instances.values().cloned().collect()),
            None => (st.services_index, Vec::new()),
        }
    }

    /// Index a blocking query on one service waits past.
    pub fn service_index(&self, name: &str) -> u64 {
        let st = self.state.read();
        st.services
            .get(name)
            .map_or(st.services_index, |e| e.modify_index)
    }

    pub fn services_index(&self) -> u64 {
        self.state.read().services_index
    }

    pub fn nodes_index(&self) -> u64 {
        self.state.read().nodes_index
    }

    /// Every live service, by name.
    pub fn services(&self) -> (u64, Vec<ServiceSummary>) {
        let st = self.state.read();
        let mut out: Vec<ServiceSummary> = st
            .services
            .iter()
            .filter(|(_, e)| !e.instances.is_empty())
            .map(|(name, e)| {
                let mut tags: Vec<String> = Vec::new();
                let mut passing = 0;
                for i in e.instances.values() {
                    for t in &i.spec.tags {
                        if !tags.contains(t) {
                            tags.push(t.clone());
                        }
                    }
                    if i.health == Health::Passing {
                        passing += 1;
                    }
                }
                tags.sort();
                ServiceSummary {
                    name: name.clone(),
                    tags,
                    instances: e.instances.len() as u32,
                    passing,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        (st.services_index, out)
    }

    pub fn nodes(&self) -> (u64, Vec<Node>) {
        let st = self.state.read();
        (st.nodes_index, st.nodes.values().cloned().collect())
    }

    pub fn node(&self, name: &str) -> Option<Node> {
        self.state.read().nodes.get(name).cloned()
    }

    /// Instances registered on one node, by ID.
    pub fn node_instances(&self, node: &str) -> Vec<Arc<Instance>> {
        let st = self.state.read();
        let mut out: Vec<Arc<Instance>> = st
            .by_key
            .iter()
            .filter(|(k, _)| &*k.node == node)
            .filter_map(|(k, _)| st.lookup(k).cloned())
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Keys of the instances an owner has registered.
    pub fn owner_instances(&self, owner: &str) -> Vec<Arc<Instance>> {
        let st = self.state.read();
        st.owners
            .get(owner)
            .map(|keys| keys.iter().filter_map(|k| st.lookup(k).cloned()).collect())
            .unwrap_or_default()
    }

    /// Every instance (optionally of some services only) and the index
    /// they are current at.
    pub fn snapshot(&self, services: &[String]) -> (u64, Vec<Arc<Instance>>) {
        let st = self.state.read();
        let mut out = Vec::new();
        if services.is_empty() {
            let mut names: Vec<&String> = st.services.keys().collect();
            names.sort();
            for name in names {
                out.extend(st.services[name].instances.values().cloned());
            }
        } else {
            for name in services {
                if let Some(e) = st.services.get(name) {
                    out.extend(e.instances.values().cloned());
                }
            }
        }
        (st.index, out)
    }

    /// Every change after `from` (at most up to the current index).
    pub fn changes_since(&self, from: u64) -> ChangesSince {
        let st = self.state.read();
        if from < st.log_floor || from > st.index {
            return ChangesSince::TooOld;
        }
        let start = st.log.partition_point(|(i, _)| *i <= from);
        ChangesSince::Changes(st.log.range(start..).cloned().collect())
    }
}

impl State {
    fn lookup(&self, key: &InstanceKey) -> Option<&Arc<Instance>> {
        let service = self.by_key.get(key)?;
        self.services.get(service)?.instances.get(key)
    }

    fn remove_from_service(
        &mut self,
        key: &InstanceKey,
        service: &str,
        index: u64,
    ) -> Option<Arc<Instance>> {
        let entry = self.services.get_mut(service)?;
        let removed = entry.instances.remove(key);
        entry.modify_index = index;
        removed
    }

    fn check_conflicts(&self, key: &InstanceKey, reg: &Registration) -> Result<(), Error> {
        for check in &reg.instance.checks {
            if let Some(other) = self.checks.get(&(key.node.clone(), check.id.clone()))
                && other != key
            {
                return Err(Error::invalid(
                    "CheckID",
                    format!(
                        "check ID {:?} is already used by instance {:?} on node {:?}",
                        check.id, other.id, other.node
                    ),
                ));
            }
        }
        Ok(())
    }

    fn forget_checks(&mut self, instance: &Instance) {
        for check in &instance.checks {
            self.checks
                .remove(&(instance.key.node.clone(), check.spec.id.clone()));
        }
    }

    fn remove_owner(&mut self, key: &InstanceKey, owner: Option<&str>) {
        if let Some(owner) = owner
            && let Some(keys) = self.owners.get_mut(owner)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.owners.remove(owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CheckKind, Weights};
    use std::time::Duration;

    fn reg(id: &str, service: &str, ttl: bool) -> Registration {
        let checks = if ttl {
            vec![CheckSpec {
                id: format!("service:{id}"),
                name: "ttl".into(),
                kind: CheckKind::Ttl {
                    ttl: Duration::from_secs(5),
                    external: false,
                },
                interval: Duration::ZERO,
                timeout: Duration::from_secs(1),
                initial_status: Health::Critical,
                deregister_critical_after: None,
                notes: String::new(),
            }]
        } else {
            Vec::new()
        };
        Registration {
            instance: InstanceSpec {
                id: id.into(),
                service: service.into(),
                node: "n1".into(),
                node_address: "10.0.0.1".into(),
                address: String::new(),
                port: 80,
                tags: vec!["v1".into()],
                meta: Default::default(),
                weights: Weights::default(),
                checks,
            },
            owner: None,
        }
    }

    #[test]
    fn index_moves_on_every_change_and_not_otherwise() {
        let c = Catalog::new(100, "n1", "10.0.0.1", 16);
        let r = c.register(reg("a", "web", false), true).expect("register");
        assert_eq!(r.index, 101);
        assert_eq!(r.instance.address, "10.0.0.1");
        assert_eq!(r.instance.health, Health::Passing);
        // Identical re-registration: nothing changes.
        let again = c.register(reg("a", "web", false), true).expect("register");
        assert!(!again.changed);
        assert_eq!(c.index(), 101);
        let (i, _) = c
            .deregister(&InstanceKey::new("n1", "a"))
            .expect("was there");
        assert_eq!(i, 102);
        assert!(c.deregister(&InstanceKey::new("n1", "a")).is_none());
        assert_eq!(c.index(), 102);
        // The service's index remembers the removal.
        assert_eq!(c.service_index("web"), 102);
        assert!(c.services().1.is_empty());
    }

    #[test]
    fn check_status_drives_health_and_survives_reregistration() {
        let c = Catalog::new(1, "n1", "10.0.0.1", 16);
        let r = c.register(reg("a", "web", true), false).expect("register");
        assert_eq!(r.instance.health, Health::Critical);
        let key = InstanceKey::new("n1", "a");
        let u = c
            .set_check(&key, "service:a", Health::Passing, "ok")
            .expect("set");
        assert_eq!((u.old, u.new), (Health::Critical, Health::Passing));
        let idx = c.index();
        // Same output and status: no index change.
        c.set_check(&key, "service:a", Health::Passing, "ok")
            .expect("set");
        assert_eq!(c.index(), idx);
        // Output-only change: stored, index unchanged.
        c.set_check(&key, "service:a", Health::Passing, "still ok")
            .expect("set");
        assert_eq!(c.index(), idx);
        assert_eq!(
            c.instance(&key).expect("there").checks[0].output,
            "still ok"
        );
        // Re-registering with a new tag keeps the check's status.
        let mut r2 = reg("a", "web", true);
        r2.instance.tags.push("v2".into());
        let r2 = c.register(r2, false).expect("register");
        assert_eq!(r2.instance.health, Health::Passing);
        assert!(matches!(
            c.set_check(&key, "nope", Health::Passing, ""),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn change_log_resumes_or_says_too_old() {
        let c = Catalog::new(10, "n1", "10.0.0.1", 3);
        for i in 0..5 {
            c.register(reg(&format!("i{i}"), "web", false), true)
                .expect("register");
        }
        assert_eq!(c.index(), 15);
        assert!(matches!(c.changes_since(11), ChangesSince::TooOld));
        match c.changes_since(12) {
            ChangesSince::Changes(v) => {
                assert_eq!(
                    v.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
                    vec![13, 14, 15]
                )
            }
            ChangesSince::TooOld => panic!("12 is within the log"),
        }
        assert!(matches!(c.changes_since(15), ChangesSince::Changes(v) if v.is_empty()));
        assert!(matches!(c.changes_since(99), ChangesSince::TooOld));
    }

    #[test]
    fn published_view_follows_every_change() {
        let c = Catalog::new(1, "n1", "10.0.0.1", 16);
        let count = |c: &Catalog, s: &str| c.with_published(s, |v| v.map(<[_]>::len));
        assert_eq!(count(&c, "web"), None);
        c.register(reg("a", "web", true), false).expect("register");
        c.register(reg("b", "web", false), false).expect("register");
        assert_eq!(count(&c, "web"), Some(2));
        let key = InstanceKey::new("n1", "a");
        c.set_check(&key, "service:a", Health::Passing, "")
            .expect("set");
        let health = c.with_published("web", |v| {
            v.and_then(|v| v.iter().find(|i| &*i.key.id == "a").map(|i| i.health))
        });
        assert_eq!(health, Some(Health::Passing));
        // Moving an instance to another service republishes both.
        c.register(reg("a", "api", true), false).expect("register");
        assert_eq!((count(&c, "web"), count(&c, "api")), (Some(1), Some(1)));
        c.deregister(&InstanceKey::new("n1", "b"));
        assert_eq!(count(&c, "web"), None);
    }

    #[test]
    fn check_ids_are_unique_per_node() {
        let c = Catalog::new(1, "n1", "10.0.0.1", 16);
        c.register(reg("a", "web", true), false).expect("register");
        let mut clash = reg("b", "web", true);
        clash.instance.checks[0].id = "service:a".into();
        assert!(matches!(
            c.register(clash, false),
            Err(Error::Invalid { .. })
        ));
        assert_eq!(c.service("web").1.len(), 1);
        let found = c.find_check("n1", "service:a").expect("found");
        assert_eq!(&*found.key.id, "a");
        c.deregister(&InstanceKey::new("n1", "a"));
        assert!(c.find_check("n1", "service:a").is_none());
    }

    #[test]
    fn nodes_come_and_go_with_their_instances() {
        let c = Catalog::new(1, "local", "127.0.0.1", 16);
        let mut r = reg("a", "web", false);
        r.instance.node = "remote".into();
        c.register(r, false).expect("register");
        assert_eq!(c.nodes().1.len(), 2);
        c.deregister(&InstanceKey::new("remote", "a"));
        let names: Vec<String> = c.nodes().1.into_iter().map(|n| n.name).collect();
        assert_eq!(names, vec!["local".to_string()]);
    }
}
