//! The stack services' instances, from bronze-discovery's Watch stream
//! (a snapshot, then changes). The registrator registers a stack task's
//! published ports with the container's `bronze.*` labels as metadata:
//! `bronze.stack` (the stack), `bronze.service.name` (the service's full
//! name, `shop_api`) and `bronze.container.port` (the target port the
//! instance is for), so an instance maps to (stack, service, target port)
//! whatever the registrator named it (`shop_api`, or `shop_api-8080` when
//! a container publishes several ports).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use bronze_proto::discovery::v1 as dpb;
use bronze_proto::discovery::{Change, Watch};
use bronze_runtime::Shutdown;
use parking_lot::RwLock;
use tokio::sync::Notify;

/// Metadata (and container label) naming a task's stack.
pub const STACK: &str = "bronze.stack";
/// Metadata naming the service (the agent's container label).
pub const SERVICE: &str = "bronze.service.name";
/// Metadata naming the container port an instance is for.
pub const CONTAINER_PORT: &str = "bronze.container.port";
/// Metadata (and container label) of a `dnsrr` service's tasks.
pub const ENDPOINT_MODE: &str = "bronze.endpoint_mode";
/// Metadata (and container label) of an ingress service's tasks: its
/// published ports, `published:target,...` (TCP).
pub const INGRESS: &str = "bronze.ingress";

/// `published:target,...` -> the pairs (unreadable entries left out).
pub fn parse_ingress(v: &str) -> Vec<(u16, u16)> {
    v.split(',')
        .filter_map(|e| {
            let (p, t) = e.trim().split_once(':')?;
            Some((p.parse().ok()?, t.parse().ok()?))
        })
        .filter(|(p, t)| *p != 0 && *t != 0)
        .collect()
}

/// Metadata naming the instance's task.
pub const TASK: &str = "bronze.task.id";

/// One instance of a stack service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub stack: String,
    pub service: String,
    pub target: u16,
    pub addr: SocketAddr,
    pub passing: bool,
    /// The task it belongs to (its address when unnamed).
    pub task: String,
    /// Its service answers one address per task (`dnsrr`).
    pub dnsrr: bool,
    /// Its service's ingress ports: (published, target).
    pub ingress: Vec<(u16, u16)>,
}

impl Endpoint {
    /// The instance as a stack endpoint, if it is one (TCP only).
    pub fn of(i: &dpb::Instance) -> Option<Self> {
        let stack = i.meta.get(STACK)?.clone();
        let service = i.meta.get(SERVICE)?.clone();
        let target = i.meta.get(CONTAINER_PORT)?.parse::<u16>().ok()?;
        let ip = i.address.parse::<std::net::IpAddr>().ok()?;
        let port = u16::try_from(i.port).ok().filter(|p| *p != 0)?;
        let addr = SocketAddr::new(ip, port);
        Some(Self {
            stack,
            service,
            target,
            addr,
            passing: i.health() == dpb::HealthStatus::Passing,
            task: i
                .meta
                .get(TASK)
                .cloned()
                .unwrap_or_else(|| addr.to_string()),
            dnsrr: i.meta.get(ENDPOINT_MODE).is_some_and(|m| m == "dnsrr"),
            ingress: i
                .meta
                .get(INGRESS)
                .map(|v| parse_ingress(v))
                .unwrap_or_default(),
        })
    }
}

/// Every stack instance discovery knows, by (node, instance id).
#[derive(Debug, Default)]
pub struct Catalog {
    instances: HashMap<(String, String), Endpoint>,
}

impl Catalog {
    /// The services of `stack` and their target ports.
    pub fn services(&self, stack: &str) -> BTreeMap<String, BTreeSet<u16>> {
        let mut out: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
        for e in self.instances.values().filter(|e| e.stack == stack) {
            out.entry(e.service.clone()).or_default().insert(e.target);
        }
        out
    }

    /// The passing instances of `service` for `target`, sorted.
    pub fn passing(&self, service: &str, target: u16) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self
            .passing_instances(service, target)
            .into_iter()
            .map(|(_, addr)| addr)
            .collect();
        out.dedup();
        out
    }

    /// The passing instances of `service` for `target` with their tasks,
    /// sorted by address.
    pub fn passing_instances(&self, service: &str, target: u16) -> Vec<(String, SocketAddr)> {
        let mut out: Vec<(String, SocketAddr)> = self
            .instances
            .values()
            .filter(|e| e.passing && e.service == service && e.target == target)
            .map(|e| (e.task.clone(), e.addr))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// Every ingress port any instance names: published -> (service,
    /// target). Two services claiming one port: the first by name wins.
    pub fn ingress(&self) -> BTreeMap<u16, (String, u16)> {
        let mut claims: BTreeSet<(u16, String, u16)> = BTreeSet::new();
        for e in &self.instances {
            for (published, target) in &e.1.ingress {
                claims.insert((*published, e.1.service.clone(), *target));
            }
        }
        let mut out = BTreeMap::new();
        for (published, service, target) in claims {
            out.entry(published).or_insert((service, target));
        }
        out
    }

    /// Whether `service` answers one address per task.
    pub fn dnsrr(&self, service: &str) -> bool {
        self.instances
            .values()
            .any(|e| e.service == service && e.dnsrr)
    }

    /// The passing tasks of `service`: task -> (target port, instance).
    pub fn passing_tasks(&self, service: &str) -> BTreeMap<String, Vec<(u16, SocketAddr)>> {
        let mut out: BTreeMap<String, Vec<(u16, SocketAddr)>> = BTreeMap::new();
        for e in self
            .instances
            .values()
            .filter(|e| e.passing && e.service == service)
        {
            out.entry(e.task.clone())
                .or_default()
                .push((e.target, e.addr));
        }
        for ports in out.values_mut() {
            ports.sort();
        }
        out
    }

    /// Applies one change of discovery's Watch; whether anything here
    /// changed.
    fn apply(&mut self, change: Change) -> bool {
        match change {
            Change::Snapshot(all) => {
                self.instances.clear();
                for i in all {
                    if let Some(e) = Endpoint::of(&i) {
                        self.instances.insert((i.node, i.id), e);
                    }
                }
                true
            }
            Change::Upsert(i) => {
                let key = (i.node.clone(), i.id.clone());
                match Endpoint::of(&i) {
                    Some(e) => self.instances.insert(key, e.clone()).as_ref() != Some(&e),
                    None => self.instances.remove(&key).is_some(),
                }
            }
            Change::Removed(r) => self.instances.remove(&(r.node, r.id)).is_some(),
        }
    }
}

/// Follows discovery at `url` until `stop`, reconnecting with a backoff;
/// `changed` is notified after every change to `catalog`.
pub async fn follow(
    url: String,
    catalog: Arc<RwLock<Catalog>>,
    changed: Arc<Notify>,
    stop: Shutdown,
) {
    let what = format!("discovery watch ({url})");
    stop.retry(&what, || follow_once(&url, &catalog, &changed, &stop))
        .await;
}

async fn follow_once(
    url: &str,
    catalog: &RwLock<Catalog>,
    changed: &Notify,
    stop: &Shutdown,
) -> String {
    let mut watch = match Watch::open(url).await {
        Ok(w) => w,
        Err(e) => return e,
    };
    loop {
        let change = tokio::select! {
            c = watch.next() => c,
            () = stop.wait() => return "shutdown".into(),
        };
        match change {
            Ok(change) => {
                if catalog.write().apply(change) {
                    changed.notify_one();
                }
            }
            Err(e) => return e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(
        id: &str,
        service: &str,
        port: u32,
        target: &str,
        health: dpb::HealthStatus,
    ) -> dpb::Instance {
        dpb::Instance {
            id: id.into(),
            service: format!("{service}-{target}"),
            node: "host-1".into(),
            address: "127.0.0.1".into(),
            port,
            meta: [
                (STACK.to_string(), "shop".to_string()),
                (SERVICE.to_string(), service.to_string()),
                (CONTAINER_PORT.to_string(), target.to_string()),
            ]
            .into(),
            health: health.into(),
            ..Default::default()
        }
    }

    #[test]
    fn instances_map_to_services_and_target_ports() {
        use dpb::HealthStatus::{Critical, Passing};
        let mut c = Catalog::default();
        assert!(c.apply(Change::Snapshot(vec![
            instance("a1", "shop_api", 32001, "8080", Passing),
            instance("a2", "shop_api", 32002, "8080", Critical),
            instance("a3", "shop_api", 32003, "9090", Passing),
            instance("u1", "shop_dns", 32004, "53/udp", Passing),
            dpb::Instance {
                id: "plain".into(),
                service: "web".into(),
                address: "127.0.0.1".into(),
                port: 80,
                ..Default::default()
            },
        ])));
        let services = c.services("shop");
        assert_eq!(
            services.len(),
            1,
            "UDP and non-stack instances left out: {services:?}"
        );
        assert_eq!(
            services["shop_api"].iter().copied().collect::<Vec<_>>(),
            vec![8080, 9090]
        );
        assert!(c.services("other").is_empty());
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        assert_eq!(c.passing("shop_api", 8080), vec![addr(32001)]);
        assert_eq!(c.passing("shop_api", 9090), vec![addr(32003)]);
        // Turns passing; then the first goes away.
        assert!(c.apply(Change::Upsert(instance(
            "a2", "shop_api", 32002, "8080", Passing
        ))));
        assert!(
            !c.apply(Change::Upsert(instance(
                "a2", "shop_api", 32002, "8080", Passing
            ))),
            "the same instance again changes nothing"
        );
        assert_eq!(c.passing("shop_api", 8080), vec![addr(32001), addr(32002)]);
        assert!(c.apply(Change::Removed(dpb::InstanceRef {
            node: "host-1".into(),
            id: "a1".into(),
            service: "shop_api-8080".into(),
        })));
        assert_eq!(c.passing("shop_api", 8080), vec![addr(32002)]);
        assert!(!c.dnsrr("shop_api"));
        let tasks = c.passing_tasks("shop_api");
        assert_eq!(tasks.len(), 2, "{tasks:?}");
        // dnsrr, and tasks named by their metadata.
        let mut i = instance("d1", "shop_db", 32010, "5432", Passing);
        i.meta.insert(ENDPOINT_MODE.into(), "dnsrr".into());
        i.meta.insert(TASK.into(), "task-1".into());
        assert!(c.apply(Change::Upsert(i)));
        assert!(c.dnsrr("shop_db"));
        assert!(c.ingress().is_empty());
        let mut i = instance("w1", "shop_web", 32020, "8080", Passing);
        i.meta
            .insert(INGRESS.into(), "80:8080, 443:8443,bad,0:1".into());
        assert!(c.apply(Change::Upsert(i)));
        assert_eq!(
            c.ingress(),
            [
                (80, ("shop_web".to_string(), 8080)),
                (443, ("shop_web".to_string(), 8443))
            ]
            .into()
        );
        assert_eq!(
            c.passing_tasks("shop_db"),
            [("task-1".to_string(), vec![(5432, addr(32010))])].into()
        );
    }
}
