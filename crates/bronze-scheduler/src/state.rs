//! The cluster's state: nodes, services, spec versions, tasks, and the
//! indexes derived from them (tasks per service and per node, what each
//! node has reserved).
//!
//! Maps are persistent (`imbl`): cloning a `State` is O(1) and shares
//! everything. The manager works on its own copy, commits what it changed
//! to the store, then publishes the copy as the new snapshot every reader
//! (the API, the watches, the agents' sessions) sees. Readers therefore
//! never see a change that is not durable, and never wait for the manager.
//!
//! Every write goes through a `put_*`/`remove_*` method, which keeps the
//! derived indexes right and records the key as dirty for the commit.

use std::collections::BTreeSet;
use std::sync::Arc;

use imbl::{HashMap, OrdMap, OrdSet};

use crate::model::{
    Desired, Kind, Node, Object, PortConfig, Protocol, Resources, Service, Task, TaskState, Time,
    Version,
};

/// What a commit writes (or deletes) in the store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Node(String),
    Service(String),
    Version(String, u64),
    Task(String),
    JoinToken,
    /// A secret or config, by name.
    Object(Kind, String),
    /// The sealed value that recognises the secrets key.
    KeyCheck,
}

/// What a node has given to the tasks placed on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub reserved: Resources,
    /// Tasks whose container may exist there (placed and not yet ended).
    pub tasks: u64,
    /// The same, per service id.
    pub per_service: HashMap<String, u64>,
    /// Fixed host ports in use, with how many tasks hold each (two tasks
    /// of a start-first hand-over may).
    pub ports: HashMap<(u16, Protocol), u32>,
}

#[derive(Clone, Default)]
pub struct State {
    /// Bumped by every commit.
    pub index: u64,
    pub nodes: OrdMap<String, Arc<Node>>,
    pub services: OrdMap<String, Arc<Service>>,
    /// Service name -> id.
    pub names: HashMap<String, String>,
    pub versions: OrdMap<(String, u64), Arc<Version>>,
    pub tasks: OrdMap<String, Arc<Task>>,
    pub by_service: HashMap<String, OrdSet<String>>,
    pub by_node: HashMap<String, OrdSet<String>>,
    pub usage: HashMap<String, Usage>,
    /// Tasks that want a node (see `placement::wants_node`).
    pub pending: OrdSet<String>,
    /// What discovery says of each task's instances: all passing or not
    /// (absent: not registered). Soft state, from the discovery link.
    pub registered: HashMap<String, bool>,
    /// The scheduler follows discovery: tasks of services with published
    /// ports are up only once registered and passing.
    pub discovery: bool,
    pub join_token: String,
    /// Secrets and configs by kind and name.
    pub objects: OrdMap<(Kind, String), Arc<Object>>,
    /// [`crate::secrets::Sealer::check_value`] of the key the secrets are
    /// sealed with; empty until the first start that sets it.
    pub key_check: Vec<u8>,
    /// Keys changed since the last commit.
    dirty: BTreeSet<Key>,
}

/// How long a running task that publishes ports may take to show up in
/// discovery before it counts as up without it.
pub const REGISTRATION_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Whether a task holds resources (and ports) on its node: placed, and its
/// container not known to be gone.
fn holds(t: &Task) -> bool {
    !t.node_id.is_empty() && !t.status.state.is_terminal()
}

fn fixed_ports(ports: &[PortConfig]) -> impl Iterator<Item = (u16, Protocol)> + '_ {
    ports
        .iter()
        .filter(|p| p.published != 0)
        .map(|p| (p.published, p.protocol))
}

impl State {
    pub fn take_dirty(&mut self) -> BTreeSet<Key> {
        std::mem::take(&mut self.dirty)
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    pub fn node(&self, id: &str) -> Option<&Arc<Node>> {
        self.nodes.get(id)
    }

    /// A node by id, or by hostname when no id matches (hostnames are not
    /// unique: the first in id order wins, as `docker node inspect`).
    pub fn find_node(&self, name: &str) -> Option<&Arc<Node>> {
        self.nodes
            .get(name)
            .or_else(|| self.nodes.values().find(|n| n.hostname == name))
    }

    pub fn service(&self, id: &str) -> Option<&Arc<Service>> {
        self.services.get(id)
    }

    /// A service by name or id.
    pub fn find_service(&self, name: &str) -> Option<&Arc<Service>> {
        self.names
            .get(name)
            .and_then(|id| self.services.get(id))
            .or_else(|| self.services.get(name))
    }

    pub fn version(&self, service_id: &str, version: u64) -> Option<&Arc<Version>> {
        self.versions.get(&(service_id.to_string(), version))
    }

    /// The version a service is at.
    pub fn current(&self, service: &Service) -> Option<&Arc<Version>> {
        self.version(&service.id, service.version)
    }

    pub fn task(&self, id: &str) -> Option<&Arc<Task>> {
        self.tasks.get(id)
    }

    pub fn service_tasks<'a>(
        &'a self,
        service_id: &str,
    ) -> impl Iterator<Item = &'a Arc<Task>> + 'a {
        self.by_service
            .get(service_id)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.tasks.get(id))
    }

    pub fn node_tasks<'a>(&'a self, node_id: &str) -> impl Iterator<Item = &'a Arc<Task>> + 'a {
        self.by_node
            .get(node_id)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.tasks.get(id))
    }

    pub fn usage(&self, node_id: &str) -> Usage {
        self.usage.get(node_id).cloned().unwrap_or_default()
    }

    pub fn put_node(&mut self, node: Node) {
        self.dirty.insert(Key::Node(node.id.clone()));
        self.nodes.insert(node.id.clone(), Arc::new(node));
    }

    pub fn remove_node(&mut self, id: &str) {
        self.dirty.insert(Key::Node(id.to_string()));
        self.nodes.remove(id);
    }

    pub fn put_service(&mut self, service: Service) {
        self.dirty.insert(Key::Service(service.id.clone()));
        self.names.insert(service.name.clone(), service.id.clone());
        self.services.insert(service.id.clone(), Arc::new(service));
    }

    /// Removes a service and every version of it (its tasks go first).
    pub fn remove_service(&mut self, id: &str) {
        if let Some(s) = self.services.remove(id)
            && self.names.get(&s.name).is_some_and(|i| i == id)
        {
            self.names.remove(&s.name);
        }
        self.dirty.insert(Key::Service(id.to_string()));
        let versions: Vec<u64> = self
            .versions
            .range((id.to_string(), 0)..=(id.to_string(), u64::MAX))
            .map(|((_, v), _)| *v)
            .collect();
        for v in versions {
            self.remove_version(id, v);
        }
        self.by_service.remove(id);
    }

    pub fn put_version(&mut self, version: Version) {
        let key = (version.service_id.clone(), version.version);
        self.dirty
            .insert(Key::Version(version.service_id.clone(), version.version));
        self.versions.insert(key, Arc::new(version));
    }

    pub fn remove_version(&mut self, service_id: &str, version: u64) {
        self.dirty
            .insert(Key::Version(service_id.to_string(), version));
        self.versions.remove(&(service_id.to_string(), version));
    }

    /// Versions of a service, oldest first.
    pub fn service_versions(&self, service_id: &str) -> Vec<u64> {
        self.versions
            .range((service_id.to_string(), 0)..=(service_id.to_string(), u64::MAX))
            .map(|((_, v), _)| *v)
            .collect()
    }

    /// Inserts or replaces a task; its `version` becomes the index of the
    /// commit that will carry it.
    pub fn put_task(&mut self, mut task: Task) {
        task.version = self.index + 1;
        let old = self.tasks.get(&task.id).cloned();
        if let Some(old) = &old {
            self.unindex(old);
        }
        self.index_task(&task);
        self.dirty.insert(Key::Task(task.id.clone()));
        self.tasks.insert(task.id.clone(), Arc::new(task));
    }

    pub fn remove_task(&mut self, id: &str) {
        if let Some(old) = self.tasks.remove(id) {
            self.unindex(&old);
        }
        self.dirty.insert(Key::Task(id.to_string()));
    }

    pub fn set_join_token(&mut self, token: String) {
        self.join_token = token;
        self.dirty.insert(Key::JoinToken);
    }

    /// A secret or config by name, or by id.
    pub fn find_object(&self, kind: Kind, name: &str) -> Option<&Arc<Object>> {
        self.objects.get(&(kind, name.to_string())).or_else(|| {
            self.objects
                .range((kind, String::new())..)
                .take_while(|((k, _), _)| *k == kind)
                .map(|(_, o)| o)
                .find(|o| o.id == name)
        })
    }

    pub fn put_object(&mut self, object: Object) {
        self.dirty
            .insert(Key::Object(object.kind, object.name.clone()));
        self.objects
            .insert((object.kind, object.name.clone()), Arc::new(object));
    }

    pub fn remove_object(&mut self, kind: Kind, name: &str) {
        self.dirty.insert(Key::Object(kind, name.to_string()));
        self.objects.remove(&(kind, name.to_string()));
    }

    pub fn set_key_check(&mut self, check: Vec<u8>) {
        self.key_check = check;
        self.dirty.insert(Key::KeyCheck);
    }

    /// Names of the services with a stored version (current, kept for a
    /// rollback, or run by a task) that mounts the object; with
    /// `live_only`, services being removed are left out.
    pub fn object_users(&self, kind: Kind, name: &str, live_only: bool) -> Vec<String> {
        let mut users: Vec<String> = self
            .services
            .values()
            .filter(|s| !(live_only && s.removing))
            .filter(|s| {
                self.versions
                    .range((s.id.clone(), 0)..=(s.id.clone(), u64::MAX))
                    .any(|(_, v)| v.spec.uses(kind, name))
            })
            .map(|s| s.name.clone())
            .collect();
        users.sort();
        users
    }

    fn index_task(&mut self, t: &Task) {
        if crate::placement::wants_node(t) {
            self.pending.insert(t.id.clone());
        }
        self.by_service
            .entry(t.service_id.clone())
            .or_default()
            .insert(t.id.clone());
        if !t.node_id.is_empty() {
            self.by_node
                .entry(t.node_id.clone())
                .or_default()
                .insert(t.id.clone());
        }
        if holds(t) {
            let ports = self
                .versions
                .get(&(t.service_id.clone(), t.spec_version))
                .map(|v| fixed_ports(&v.spec.ports).collect::<Vec<_>>())
                .unwrap_or_default();
            let reserve = self
                .versions
                .get(&(t.service_id.clone(), t.spec_version))
                .map(|v| v.spec.reservations)
                .unwrap_or_default();
            let u = self.usage.entry(t.node_id.clone()).or_default();
            u.reserved.nano_cpus += reserve.nano_cpus;
            u.reserved.memory_bytes += reserve.memory_bytes;
            u.tasks += 1;
            *u.per_service.entry(t.service_id.clone()).or_default() += 1;
            for p in ports {
                *u.ports.entry(p).or_default() += 1;
            }
        }
    }

    fn unindex(&mut self, t: &Task) {
        self.pending.remove(&t.id);
        if let Some(ids) = self.by_service.get_mut(&t.service_id) {
            ids.remove(&t.id);
        }
        if !t.node_id.is_empty()
            && let Some(ids) = self.by_node.get_mut(&t.node_id)
        {
            ids.remove(&t.id);
            if ids.is_empty() {
                self.by_node.remove(&t.node_id);
            }
        }
        if holds(t) {
            let version = self
                .versions
                .get(&(t.service_id.clone(), t.spec_version))
                .cloned();
            if let Some(u) = self.usage.get_mut(&t.node_id) {
                if let Some(v) = &version {
                    u.reserved.nano_cpus -= v.spec.reservations.nano_cpus;
                    u.reserved.memory_bytes -= v.spec.reservations.memory_bytes;
                    for p in fixed_ports(&v.spec.ports) {
                        if let Some(n) = u.ports.get_mut(&p) {
                            *n -= 1;
                            if *n == 0 {
                                u.ports.remove(&p);
                            }
                        }
                    }
                }
                u.tasks = u.tasks.saturating_sub(1);
                if let Some(n) = u.per_service.get_mut(&t.service_id) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        u.per_service.remove(&t.service_id);
                    }
                }
            }
        }
    }

    /// Whether a task counts as up: running (its health check passed, when
    /// it has one) and, when discovery is followed and the task publishes
    /// ports, registered and passing there. A task not registered within
    /// [`REGISTRATION_WAIT`] of running counts as up (no registrator on its
    /// host). Returns `Err(at)` when only time can make it up.
    pub fn up(&self, t: &Task, now: Time) -> Result<bool, Time> {
        if t.status.state != TaskState::Running {
            return Ok(false);
        }
        if let Some(passing) = self.registered.get(&t.id) {
            return Ok(*passing);
        }
        let expects = self.discovery
            && self
                .version(&t.service_id, t.spec_version)
                .is_some_and(|v| !v.spec.ports.is_empty());
        if !expects {
            return Ok(true);
        }
        let deadline = t.started_at.plus(REGISTRATION_WAIT);
        if now >= deadline {
            Ok(true)
        } else {
            Err(deadline)
        }
    }

    /// Tasks a service wants running, per state (for `service ls`).
    pub fn running_tasks(&self, service_id: &str) -> usize {
        self.service_tasks(service_id)
            .filter(|t| t.desired == Desired::Running && t.status.state == TaskState::Running)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ServiceSpec, TaskStatus, Time};

    fn task(id: &str, node: &str, state: TaskState) -> Task {
        Task {
            id: id.into(),
            service_id: "s1".into(),
            service_name: "web".into(),
            slot: 1,
            node_id: node.into(),
            spec_version: 1,
            desired: Desired::Running,
            status: TaskStatus::new(state, ""),
            created_at: Time::now(),
            restarts: Vec::new(),
            failures: 0,
            start_after: Time(0),
            started_at: Time(0),
            replaces: None,
            moved: false,
            drain: std::time::Duration::ZERO,
            up_at: Time(0),
            version: 0,
        }
    }

    #[test]
    fn usage_follows_tasks_and_snapshots_are_independent() {
        let mut s = State::default();
        let mut spec = ServiceSpec::new("web", "busybox");
        spec.reservations.memory_bytes = 100;
        spec.ports.push(PortConfig {
            target: 80,
            published: 8080,
            protocol: Protocol::Tcp,
        });
        s.put_version(Version::new("s1", 1, spec));
        s.put_task(task("t1", "n1", TaskState::Running));
        let snapshot = s.clone();
        assert_eq!(s.usage("n1").reserved.memory_bytes, 100);
        assert!(s.usage("n1").ports.contains_key(&(8080, Protocol::Tcp)));
        s.put_task(task("t1", "n1", TaskState::Failed));
        assert_eq!(s.usage("n1").reserved.memory_bytes, 0);
        assert_eq!(s.usage("n1").tasks, 0);
        assert!(s.usage("n1").ports.is_empty());
        assert_eq!(
            snapshot.usage("n1").reserved.memory_bytes,
            100,
            "old snapshot kept"
        );
        s.remove_task("t1");
        assert!(s.node_tasks("n1").next().is_none());
        assert_eq!(snapshot.node_tasks("n1").count(), 1);
        assert!(s.take_dirty().contains(&Key::Task("t1".into())));
    }
}
