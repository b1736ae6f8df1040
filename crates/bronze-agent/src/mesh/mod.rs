//! Service-to-service naming inside a stack (Swarm's overlay network and
//! virtual IPs, per host): with `--discovery`, a task of stack `shop`
//! reaches `http://api:8080` (or `shop_api:8080`) wherever `api`'s tasks
//! run.
//!
//! Per stack this node runs tasks of:
//!
//! * a Docker bridge network `bronze_<stack>_<node id, 12>` (node-scoped:
//!   agents sharing one engine in tests each have their own), subnet
//!   `10.210.N.0/24` (the first N from a hash of the name the engine
//!   accepts); containers get addresses from the lower half (`ip_range`
//!   `/25`), the upper half holds virtual IPs;
//! * a virtual IP per stack service (the stack's services are those of this
//!   node's tasks and those discovery knows of), added as a `/32` on the
//!   bridge's host interface (`ip addr add`), chosen from a hash of the
//!   service's name so it stays the same across agent restarts;
//! * a DNS responder on the gateway address, port 53 (`dns.rs`), which the
//!   stack's containers use (`HostConfig.dns`) behind Docker's embedded DNS;
//! * per (service, target port) a listener at `VIP:port` (`forward.rs`)
//!   splicing to the service's passing instances from discovery
//!   (`catalog.rs`), on this host or any other (host address and published
//!   port, as the registrator registered them).
//!
//! Level-triggered: each round (a discovery change, an assignment, or a
//! tick) computes what should exist from the node's assignments and the
//! catalog and makes it so. When the node has no task of a stack left, its
//! network is removed (the engine refuses while containers are attached:
//! the next round tries again), and its listeners and DNS responder stop;
//! the addresses go with the bridge. Networks of this node left over from
//! an earlier run whose stack has no task here are removed the same way.

pub mod catalog;
pub mod dns;
pub mod forward;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use bollard::query_parameters::ListNetworksOptions;
use bronze_runtime::Shutdown;
use parking_lot::RwLock;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Notify;

use crate::worker::Worker;

/// Labels on the networks the agent makes.
pub const NET_NODE_LABEL: &str = "bronze.mesh.node";
pub const NET_STACK_LABEL: &str = "bronze.mesh.stack";

/// What a stack's tasks on this node need: stack -> service (full name) ->
/// target ports (TCP).
pub type Local = BTreeMap<String, BTreeMap<String, BTreeSet<u16>>>;

/// How a task container joins its stack's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The network's name.
    pub network: String,
    /// The stack's DNS responder (the bridge gateway).
    pub dns: Ipv4Addr,
}

/// The network's name for `stack` on node `node`.
pub fn network_name(stack: &str, node: &str) -> String {
    let short: String = node.chars().take(12).collect();
    format!("bronze_{stack}_{short}")
}

/// FNV-1a: a stable hash (not randomized per process, unlike std's).
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The first host number of the virtual IPs, and how many there are
/// (`.128` to `.253`).
const VIP_FIRST: u8 = 128;
const VIP_COUNT: u8 = 126;

/// A virtual IP for `service` in the /24 of `prefix`, not in `used`: the
/// service's hash, then the next free one.
pub fn pick_vip(prefix: [u8; 3], service: &str, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let start = (stable_hash(service) % u64::from(VIP_COUNT)) as u8;
    (0..VIP_COUNT).find_map(|i| {
        let host = VIP_FIRST + (start + i) % VIP_COUNT;
        let ip = Ipv4Addr::new(prefix[0], prefix[1], prefix[2], host);
        (!used.contains(&ip)).then_some(ip)
    })
}

/// A service's short name in its stack (`shop_api` -> `api`).
pub fn short_name<'a>(stack: &str, service: &'a str) -> Option<&'a str> {
    service
        .strip_prefix(stack)
        .and_then(|s| s.strip_prefix('_'))
        .filter(|s| !s.is_empty())
}

/// One stack's network on this node and what serves it.
struct StackNet {
    network: String,
    bridge: String,
    prefix: [u8; 3],
    gateway: Ipv4Addr,
    vips: BTreeMap<String, Ipv4Addr>,
    names: dns::Names,
    listeners: HashMap<(String, u16), Listener>,
    /// Stops the DNS responder and the listeners.
    stop: Shutdown,
}

/// A listener at a virtual address and its instances.
struct Listener {
    pool: Arc<forward::Pool>,
    stop: Shutdown,
}

impl StackNet {
    /// The virtual IP of `key` (a service, or `service@task`), added to the
    /// bridge when new.
    async fn vip(&mut self, stack: &str, key: &str) -> Option<Ipv4Addr> {
        if let Some(v) = self.vips.get(key) {
            return Some(*v);
        }
        let used: BTreeSet<Ipv4Addr> = self.vips.values().copied().collect();
        let Some(vip) = pick_vip(self.prefix, key, &used) else {
            tracing::warn!(%stack, %key, "no virtual IP left in the stack's network");
            return None;
        };
        if let Err(e) = ip(&["addr", "add", &format!("{vip}/32"), "dev", &self.bridge]).await {
            tracing::warn!(%key, %vip, error = %e, "cannot add a virtual IP");
            return None;
        }
        self.vips.insert(key.to_string(), vip);
        Some(vip)
    }

    /// The listener of `key` at `vip:port`, started when new.
    async fn listener(
        &mut self,
        key: &str,
        vip: Ipv4Addr,
        port: u16,
    ) -> Option<Arc<forward::Pool>> {
        let k = (key.to_string(), port);
        if let Some(l) = self.listeners.get(&k) {
            return Some(l.pool.clone());
        }
        let addr = SocketAddr::from((vip, port));
        match TcpListener::bind(addr).await {
            Ok(l) => {
                let pool = Arc::new(forward::Pool::default());
                let stop = self.stop.child();
                tokio::spawn(forward::serve(l, pool.clone(), stop.clone()));
                self.listeners.insert(
                    k,
                    Listener {
                        pool: pool.clone(),
                        stop,
                    },
                );
                Some(pool)
            }
            Err(e) => {
                tracing::warn!(%key, %addr, error = %e, "cannot listen at a virtual address");
                None
            }
        }
    }

    /// Stops `key`'s listeners and takes its virtual IP off the bridge.
    async fn release(&mut self, key: &str) {
        self.listeners.retain(|(k, _), l| {
            let keep = k != key;
            if !keep {
                l.stop.trigger();
            }
            keep
        });
        if let Some(vip) = self.vips.remove(key)
            && let Err(e) = ip(&["addr", "del", &format!("{vip}/32"), "dev", &self.bridge]).await
        {
            tracing::debug!(%key, %vip, error = %e, "removing a virtual IP failed");
        }
    }
}

pub struct Mesh {
    docker: Docker,
    discovery: String,
    pub catalog: Arc<RwLock<catalog::Catalog>>,
    /// Wakes a round: a catalog change or an assignment.
    pub changed: Arc<Notify>,
    stacks: tokio::sync::Mutex<HashMap<String, StackNet>>,
    upstream: Arc<Vec<SocketAddr>>,
    shutdown: Shutdown,
    /// This node's advertised address, where ingress ports answer.
    address: String,
    /// When networks left from an earlier run were last looked for.
    stale_checked: parking_lot::Mutex<Option<std::time::Instant>>,
    /// Ingress listeners: published port -> (service, target, listener).
    ingress: tokio::sync::Mutex<HashMap<u16, (String, u16, Listener)>>,
}

/// A round runs at least this often (what the engine did meanwhile:
/// containers gone, so a network can go).
const TICK: Duration = Duration::from_secs(2);

/// Networks left from an earlier run are looked for this often.
const STALE_EVERY: Duration = Duration::from_secs(10);

impl Mesh {
    pub fn new(
        docker: Docker,
        discovery: String,
        address: String,
        shutdown: Shutdown,
    ) -> Arc<Self> {
        let upstream = std::fs::read_to_string("/etc/resolv.conf")
            .map(|t| dns::resolvers(&t))
            .unwrap_or_default();
        Arc::new(Self {
            docker,
            discovery,
            catalog: Arc::default(),
            changed: Arc::new(Notify::new()),
            stacks: tokio::sync::Mutex::new(HashMap::new()),
            upstream: Arc::new(upstream),
            shutdown,
            address,
            stale_checked: parking_lot::Mutex::new(None),
            ingress: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Follows discovery and keeps the stacks' networks, addresses, DNS
    /// and listeners as the node's tasks and the catalog say, until
    /// shutdown.
    pub async fn run(self: Arc<Self>, worker: Arc<Worker>) {
        tokio::spawn(catalog::follow(
            self.discovery.clone(),
            self.catalog.clone(),
            self.changed.clone(),
            self.shutdown.clone(),
        ));
        loop {
            let node = worker.node_id();
            if !node.is_empty() {
                self.round(&node, &worker).await;
            }
            self.ingress_round().await;
            tokio::select! {
                () = self.changed.notified() => {}
                () = tokio::time::sleep(TICK) => {}
                () = self.shutdown.wait() => break,
            }
        }
        for (_, net) in self.stacks.lock().await.drain() {
            net.stop.trigger();
        }
    }

    /// Swarm's ingress: every published port an ingress service's
    /// instances name answers on this node's address, forwarded to the
    /// service's passing instances; ports no instance names any more close.
    async fn ingress_round(&self) {
        let (wanted, catalog) = {
            let c = self.catalog.read();
            let wanted = c.ingress();
            let pools: BTreeMap<u16, Vec<SocketAddr>> = wanted
                .iter()
                .map(|(p, (service, target))| (*p, c.passing(service, *target)))
                .collect();
            (wanted, pools)
        };
        let mut open = self.ingress.lock().await;
        open.retain(|published, (service, target, l)| {
            let keep = wanted.get(published) == Some(&(service.clone(), *target));
            if !keep {
                l.stop.trigger();
            }
            keep
        });
        for (published, (service, target)) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = open.entry(published) {
                let addr = format!("{}:{published}", self.address);
                match TcpListener::bind(&addr).await {
                    Ok(l) => {
                        let pool = Arc::new(forward::Pool::default());
                        let stop = self.shutdown.child();
                        tokio::spawn(forward::serve(l, pool.clone(), stop.clone()));
                        tracing::info!(%service, %addr, "ingress port answered here");
                        slot.insert((service, target, Listener { pool, stop }));
                    }
                    Err(e) => {
                        tracing::warn!(%service, %addr, error = %e, "cannot listen on an ingress port");
                        continue;
                    }
                }
            }
            if let (Some((_, _, l)), Some(addrs)) = (open.get(&published), catalog.get(&published))
            {
                l.pool.set(addrs.clone());
            }
        }
    }

    /// Makes sure `stack`'s network exists and is served here; how a
    /// container joins it.
    pub async fn attach(&self, stack: &str, node: &str) -> Result<Attachment, String> {
        let mut stacks = self.stacks.lock().await;
        if !stacks.contains_key(stack) {
            let net = self.open(stack, node).await?;
            stacks.insert(stack.to_string(), net);
        }
        self.changed.notify_one();
        let net = &stacks[stack];
        Ok(Attachment {
            network: net.network.clone(),
            dns: net.gateway,
        })
    }

    async fn round(&self, node: &str, worker: &Worker) {
        let mut stacks = self.stacks.lock().await;
        // Read under the lock: an attach for a new task (whose assignment
        // is already in the worker) cannot slip between.
        let local = worker.stacks();
        let gone: Vec<String> = stacks
            .keys()
            .filter(|s| !local.contains_key(*s))
            .cloned()
            .collect();
        for stack in gone {
            let network = stacks[&stack].network.clone();
            match self.docker.remove_network(&network).await {
                Ok(()) => {}
                Err(e) if crate::engine::is_not_found(&e) => {}
                Err(e) => {
                    tracing::debug!(%network, error = %e, "stack network still in use; removing it later");
                    continue;
                }
            }
            tracing::info!(%stack, %network, "no task of the stack here: its network is removed");
            if let Some(net) = stacks.remove(&stack) {
                net.stop.trigger();
            }
        }
        // Not at every discovery change: a list of the engine's networks
        // each time would cost the engine more than the leftovers do.
        let due = {
            let mut at = self.stale_checked.lock();
            let due = at.is_none_or(|t| t.elapsed() >= STALE_EVERY);
            if due {
                *at = Some(std::time::Instant::now());
            }
            due
        };
        if due {
            self.remove_stale(node, &local, &stacks).await;
        }
        let catalog = self.catalog.read().services_by_stack(local.keys());
        for (stack, mine) in &local {
            if !stacks.contains_key(stack) {
                match self.open(stack, node).await {
                    Ok(net) => {
                        stacks.insert(stack.clone(), net);
                    }
                    Err(e) => {
                        tracing::warn!(%stack, error = %e, "cannot set up the stack network");
                        continue;
                    }
                }
            }
            let Some(net) = stacks.get_mut(stack) else {
                continue;
            };
            let mut services = catalog.get(stack).cloned().unwrap_or_default();
            for (service, ports) in mine {
                services
                    .entry(service.clone())
                    .or_default()
                    .extend(ports.iter().copied());
            }
            self.serve_services(stack, net, &services).await;
        }
    }

    /// Virtual IPs, names and listeners of `services`, and each
    /// listener's instances. A `dnsrr` service has an address per passing
    /// task (key `service@task`), each forwarding to that task only; its
    /// names answer all of them.
    async fn serve_services(
        &self,
        stack: &str,
        net: &mut StackNet,
        services: &BTreeMap<String, BTreeSet<u16>>,
    ) {
        for (service, ports) in services {
            let (dnsrr, tasks) = {
                let catalog = self.catalog.read();
                (catalog.dnsrr(service), catalog.passing_tasks(service))
            };
            let mut answers = Vec::new();
            if dnsrr {
                let prefix = format!("{service}@");
                for (task, instances) in &tasks {
                    let key = format!("{prefix}{task}");
                    let Some(vip) = net.vip(stack, &key).await else {
                        continue;
                    };
                    answers.push(vip);
                    for (port, addr) in instances {
                        if let Some(pool) = net.listener(&key, vip, *port).await {
                            pool.set(vec![*addr]);
                        }
                    }
                }
                let gone: Vec<String> = net
                    .vips
                    .keys()
                    .filter(|k| {
                        k.strip_prefix(&prefix)
                            .is_some_and(|task| !tasks.contains_key(task))
                    })
                    .cloned()
                    .collect();
                for key in gone {
                    net.release(&key).await;
                }
            } else if let Some(vip) = net.vip(stack, service).await {
                answers.push(vip);
                for port in ports {
                    if let Some(pool) = net.listener(service, vip, *port).await {
                        pool.set(self.catalog.read().passing(service, *port));
                    }
                }
            }
            answers.sort();
            let mut names = net.names.write();
            names.insert(service.to_ascii_lowercase(), answers.clone());
            if let Some(short) = short_name(stack, service) {
                names.insert(short.to_ascii_lowercase(), answers);
            }
        }
    }

    /// Removes this node's stack networks that nothing here uses (left by
    /// an earlier run).
    async fn remove_stale(&self, node: &str, local: &Local, open: &HashMap<String, StackNet>) {
        let filters: HashMap<String, Vec<String>> = [(
            "label".to_string(),
            vec![format!("{NET_NODE_LABEL}={node}")],
        )]
        .into();
        let Ok(list) = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
        else {
            return;
        };
        for n in list {
            let stack = n
                .labels
                .as_ref()
                .and_then(|l| l.get(NET_STACK_LABEL))
                .cloned()
                .unwrap_or_default();
            if local.contains_key(&stack) || open.contains_key(&stack) {
                continue;
            }
            if let Some(name) = n.name
                && self.docker.remove_network(&name).await.is_ok()
            {
                tracing::info!(network = %name, "removed a stack network left from an earlier run");
            }
        }
    }

    /// The stack's network (found or made) with its DNS responder started.
    async fn open(&self, stack: &str, node: &str) -> Result<StackNet, String> {
        let network = network_name(stack, node);
        let inspect = match self.docker.inspect_network(&network, None).await {
            Ok(n) => n,
            Err(e) if crate::engine::is_not_found(&e) => {
                self.create(&network, stack, node).await?;
                self.docker
                    .inspect_network(&network, None)
                    .await
                    .map_err(|e| format!("inspecting network {network}: {e}"))?
            }
            Err(e) => return Err(format!("inspecting network {network}: {e}")),
        };
        let config = inspect
            .ipam
            .as_ref()
            .and_then(|i| i.config.as_ref())
            .and_then(|c| c.first())
            .cloned()
            .unwrap_or_default();
        let subnet = config.subnet.unwrap_or_default();
        let prefix = subnet
            .strip_suffix(".0/24")
            .and_then(|p| {
                let parts: Vec<u8> = p.split('.').filter_map(|x| x.parse().ok()).collect();
                <[u8; 3]>::try_from(parts).ok()
            })
            .ok_or_else(|| {
                format!("network {network} has subnet {subnet:?}, expected the /24 Bronze gives it; remove the network")
            })?;
        let gateway = Ipv4Addr::new(prefix[0], prefix[1], prefix[2], 1);
        let id = inspect.id.unwrap_or_default();
        let bridge = inspect
            .options
            .as_ref()
            .and_then(|o| o.get("com.docker.network.bridge.name"))
            .cloned()
            .unwrap_or_else(|| format!("br-{}", id.chars().take(12).collect::<String>()));
        let stop = self.shutdown.child();
        let names: dns::Names = Arc::default();
        match UdpSocket::bind((gateway, 53)).await {
            Ok(socket) => {
                tokio::spawn(dns::serve(
                    socket,
                    names.clone(),
                    self.upstream.clone(),
                    stop.clone(),
                ));
            }
            Err(e) => {
                stop.trigger();
                return Err(format!(
                    "cannot answer DNS on {gateway}:53 for network {network}: {e} (the agent needs root or CAP_NET_BIND_SERVICE)"
                ));
            }
        }
        tracing::info!(%stack, %network, %subnet, %bridge, "stack network served");
        Ok(StackNet {
            network,
            bridge,
            prefix,
            gateway,
            vips: BTreeMap::new(),
            names,
            listeners: HashMap::new(),
            stop,
        })
    }

    /// Creates the network in the first free `10.210.N.0/24`.
    async fn create(&self, network: &str, stack: &str, node: &str) -> Result<(), String> {
        let start = stable_hash(network);
        let bridge = format!("bzm{:011x}", start & 0xfff_ffff_ffff);
        let mut last = String::new();
        for i in 0..64u64 {
            let n = ((start >> 8).wrapping_add(i) % 256) as u8;
            let request = NetworkCreateRequest {
                name: network.to_string(),
                driver: Some("bridge".into()),
                ipam: Some(Ipam {
                    driver: Some("default".into()),
                    config: Some(vec![IpamConfig {
                        subnet: Some(format!("10.210.{n}.0/24")),
                        ip_range: Some(format!("10.210.{n}.0/25")),
                        gateway: Some(format!("10.210.{n}.1")),
                        auxiliary_addresses: None,
                    }]),
                    options: None,
                }),
                options: Some(
                    [("com.docker.network.bridge.name".to_string(), bridge.clone())].into(),
                ),
                labels: Some(
                    [
                        (NET_NODE_LABEL.to_string(), node.to_string()),
                        (NET_STACK_LABEL.to_string(), stack.to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            };
            match self.docker.create_network(request).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    last = crate::engine::engine_message(&e);
                    if last.contains("already exists") {
                        return Ok(());
                    }
                }
            }
        }
        Err(format!(
            "creating network {network}: no free 10.210.N.0/24 subnet ({last})"
        ))
    }
}

impl catalog::Catalog {
    /// [`catalog::Catalog::services`] of each of `stacks`.
    fn services_by_stack<'a>(
        &self,
        stacks: impl Iterator<Item = &'a String>,
    ) -> BTreeMap<String, BTreeMap<String, BTreeSet<u16>>> {
        stacks.map(|s| (s.clone(), self.services(s))).collect()
    }
}

/// Runs `ip ARGS`; an address already there is fine.
async fn ip(args: &[&str]) -> Result<(), String> {
    let args: Vec<String> = args.iter().map(|s| (*s).to_string()).collect();
    let out =
        tokio::task::spawn_blocking(move || std::process::Command::new("ip").args(&args).output())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("running ip: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || stderr.contains("File exists") {
        Ok(())
    } else {
        Err(stderr.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_virtual_ips() {
        assert_eq!(
            network_name("shop", "abcdef0123456789"),
            "bronze_shop_abcdef012345"
        );
        assert_eq!(short_name("shop", "shop_api"), Some("api"));
        assert_eq!(short_name("shop", "shop_"), None);
        assert_eq!(short_name("shop", "shopping_api"), None);
        let prefix = [10, 210, 7];
        let mut used = BTreeSet::new();
        let first = pick_vip(prefix, "shop_api", &used).expect("vip");
        assert_eq!(pick_vip(prefix, "shop_api", &used), Some(first), "stable");
        assert!((128..=253).contains(&first.octets()[3]));
        used.insert(first);
        let second = pick_vip(prefix, "shop_api", &used).expect("vip");
        assert_ne!(second, first, "a taken address is skipped");
        // Every address of the range, then none.
        let mut used = BTreeSet::new();
        for i in 0..126 {
            let ip = pick_vip(prefix, &format!("s{i}"), &used).expect("a free one");
            assert!(used.insert(ip));
        }
        assert_eq!(pick_vip(prefix, "one-more", &used), None);
    }
}
