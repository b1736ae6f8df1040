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
//! * per (service, target port), the kernel path (`nat.rs`): DNAT rules
//!   sending `VIP:port` to the service's passing instances from discovery
//!   (`catalog.rs`): one on this node at its container's address on the
//!   stack network (no `docker-proxy`), one elsewhere at the host address
//!   and published port the registrator registered; no passing instance:
//!   the calls are refused (TCP reset);
//! * or, where the kernel path cannot serve (no usable iptables, or an
//!   instance of another node registered on loopback, which the kernel
//!   will not route to from a bridge), a listener at `VIP:port`
//!   (`forward.rs`) splicing to the instances in userland.
//!
//! Level-triggered: each round (a discovery change, an assignment, or a
//! tick) computes what should exist from the node's assignments and the
//! catalog and makes it so. When the node has no task of a stack left, its
//! network is removed (the engine refuses while containers are attached:
//! the next round tries again), and its listeners and DNS responder stop;
//! the addresses go with the bridge. Networks of this node left over from
//! an earlier run whose stack has no task here are removed the same way.
//! The rules of the whole node are written at the end of the round, in one
//! transaction, and the listeners they make useless are stopped only then;
//! they are removed at shutdown, and the rules of an agent gone without
//! removing them (no stack network of its node left) by the next agent
//! that looks.

pub mod catalog;
pub mod dns;
pub mod forward;
pub mod nat;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{Ipam, IpamConfig, Network, NetworkCreateRequest};
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

    /// Stops `key`'s listener at `port` (the kernel path serves it).
    fn stop_listener(&mut self, key: &str, port: u16) {
        if let Some(l) = self.listeners.remove(&(key.to_string(), port)) {
            l.stop.trigger();
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
    /// The kernel path, once tried.
    kernel: tokio::sync::Mutex<Kernel>,
    /// This node's instances' container addresses on their stack network,
    /// by (task, registered address).
    addresses: parking_lot::Mutex<HashMap<(String, SocketAddr), Ipv4Addr>>,
}

/// Whether the kernel path serves the virtual addresses.
enum Kernel {
    Untried,
    /// Userland only (said once in the log).
    Off,
    On(nat::Nat),
}

/// What a round decided for the kernel: the rules, and the listeners they
/// replace once written: (stack, key, port).
#[derive(Default)]
struct Plan {
    desired: nat::Desired,
    replaced: Vec<(String, String, u16)>,
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
            kernel: tokio::sync::Mutex::new(Kernel::Untried),
            addresses: parking_lot::Mutex::new(HashMap::new()),
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
        if let Kernel::On(n) = &mut *self.kernel.lock().await {
            match n.teardown().await {
                Ok(()) => tracing::info!(chains = %nat::top_chain(n.tag()), "mesh rules removed"),
                Err(e) => tracing::warn!(error = %e, "cannot remove the mesh rules"),
            }
        }
        for (_, net) in self.stacks.lock().await.drain() {
            net.stop.trigger();
        }
    }

    /// Tries the kernel path once `node` is known.
    async fn kernel_on(&self, node: &str) -> bool {
        let mut k = self.kernel.lock().await;
        if matches!(*k, Kernel::Untried) {
            *k = match nat::Nat::start(node).await {
                Ok(n) => {
                    tracing::info!(chains = %nat::top_chain(n.tag()), "mesh virtual addresses served by the kernel (iptables DNAT)");
                    Kernel::On(n)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no kernel path for the mesh: calls by name go through the agent's userland forwarder");
                    Kernel::Off
                }
            };
        }
        matches!(*k, Kernel::On(_))
    }

    /// Writes the round's rules; then stops the listeners they replace. A
    /// failed write turns the kernel path off (the next round serves in
    /// userland).
    async fn apply(&self, plan: Plan, stacks: &mut HashMap<String, StackNet>) {
        let mut k = self.kernel.lock().await;
        let Kernel::On(n) = &mut *k else {
            return;
        };
        match n.apply(&plan.desired).await {
            Ok(()) => {
                for (stack, key, port) in plan.replaced {
                    if let Some(net) = stacks.get_mut(&stack) {
                        net.stop_listener(&key, port);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "writing the mesh rules failed: calls by name go through the agent's userland forwarder from now on");
                if let Err(e) = n.teardown().await {
                    tracing::warn!(error = %e, "cannot remove the mesh rules");
                }
                *k = Kernel::Off;
                self.changed.notify_one();
            }
        }
    }

    /// Where the kernel sends the calls to `port` of `instances`: a task
    /// of this node's at its container's address on `network`, another's at
    /// its registered address; `None` when one can only be reached in
    /// userland (another node's, registered on loopback or IPv6).
    async fn kernel_backends(
        &self,
        worker: &Worker,
        network: &str,
        port: u16,
        instances: &[(String, SocketAddr)],
    ) -> Option<Vec<(SocketAddrV4, bool)>> {
        let mut out = Vec::new();
        for (task, addr) in instances {
            if worker.has_task(task) {
                let ip = self.container_address(worker, network, task, *addr).await?;
                out.push((SocketAddrV4::new(ip, port), true));
            } else {
                match addr.ip() {
                    IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => {
                        out.push((SocketAddrV4::new(ip, addr.port()), false));
                    }
                    _ => return None,
                }
            }
        }
        out.sort();
        out.dedup();
        Some(out)
    }

    /// The address on `network` of task `task`'s container (registered at
    /// `registered`), looked up once.
    async fn container_address(
        &self,
        worker: &Worker,
        network: &str,
        task: &str,
        registered: SocketAddr,
    ) -> Option<Ipv4Addr> {
        let key = (task.to_string(), registered);
        if let Some(ip) = self.addresses.lock().get(&key) {
            return Some(*ip);
        }
        let id = worker.container_of(task).await?;
        let inspect = match self.docker.inspect_container(&id, None).await {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!(%task, container = %id, error = %e, "cannot inspect a task's container");
                return None;
            }
        };
        let ip: Ipv4Addr = inspect
            .network_settings?
            .networks?
            .get(network)?
            .ip_address
            .as_deref()?
            .parse()
            .ok()?;
        self.addresses.lock().insert(key, ip);
        Some(ip)
    }

    /// Removes the rules of nodes with no stack network on this engine
    /// (agents gone without removing them), keeping this node's, which
    /// are written again if something else removed them.
    async fn remove_stale_rules(&self, node: &str, list: &[Network]) {
        let mut kernel = self.kernel.lock().await;
        let Kernel::On(n) = &mut *kernel else {
            return;
        };
        let mut live: BTreeSet<String> = list
            .iter()
            .filter_map(|net| net.labels.as_ref()?.get(NET_NODE_LABEL))
            .map(|node| nat::tag(node))
            .collect();
        live.insert(nat::tag(node));
        let stale: BTreeSet<String> = match nat::tags_present().await {
            Ok(t) => {
                n.check(&t);
                t.difference(&live).cloned().collect()
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the mesh rules");
                return;
            }
        };
        if stale.is_empty() {
            return;
        }
        match nat::remove_tags(stale.clone()).await {
            Ok(()) => tracing::info!(?stale, "removed mesh rules of agents gone"),
            Err(e) => tracing::warn!(?stale, error = %e, "cannot remove mesh rules of agents gone"),
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
        let kernel = self.kernel_on(node).await;
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
        if due && let Some(list) = self.mesh_networks().await {
            self.remove_stale(node, &local, &stacks, &list).await;
            self.remove_stale_rules(node, &list).await;
        }
        self.addresses
            .lock()
            .retain(|(task, _), _| worker.has_task(task));
        let mut plan = kernel.then(Plan::default);
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
            self.serve_services(stack, net, &services, worker, plan.as_mut())
                .await;
        }
        if let Some(plan) = plan {
            self.apply(plan, &mut stacks).await;
        }
    }

    /// Virtual IPs, names and paths (kernel or listener) of `services`,
    /// and their instances. A `dnsrr` service has an address per passing
    /// task (key `service@task`), each going to that task only; its names
    /// answer all of them.
    async fn serve_services(
        &self,
        stack: &str,
        net: &mut StackNet,
        services: &BTreeMap<String, BTreeSet<u16>>,
        worker: &Worker,
        mut plan: Option<&mut Plan>,
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
                        let one = [(task.clone(), *addr)];
                        self.route(
                            stack,
                            net,
                            &key,
                            (vip, *port),
                            &one,
                            worker,
                            plan.as_deref_mut(),
                        )
                        .await;
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
                    let instances = self.catalog.read().passing_instances(service, *port);
                    self.route(
                        stack,
                        net,
                        service,
                        (vip, *port),
                        &instances,
                        worker,
                        plan.as_deref_mut(),
                    )
                    .await;
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

    /// Serves `key`'s `vip:port` with `instances`: by the kernel when there
    /// is a `plan` and it can reach them all, by a listener otherwise.
    #[allow(clippy::too_many_arguments)]
    async fn route(
        &self,
        stack: &str,
        net: &mut StackNet,
        key: &str,
        (vip, port): (Ipv4Addr, u16),
        instances: &[(String, SocketAddr)],
        worker: &Worker,
        plan: Option<&mut Plan>,
    ) {
        if let Some(plan) = plan
            && let Some(backends) = self
                .kernel_backends(worker, &net.network, port, instances)
                .await
        {
            for (b, local) in &backends {
                if *local {
                    plan.desired.local.insert(*b.ip());
                }
            }
            plan.desired
                .services
                .insert((vip, port), backends.into_iter().map(|(b, _)| b).collect());
            plan.replaced
                .push((stack.to_string(), key.to_string(), port));
            return;
        }
        if let Some(pool) = net.listener(key, vip, port).await {
            let mut addrs: Vec<SocketAddr> = instances.iter().map(|(_, a)| *a).collect();
            addrs.dedup();
            pool.set(addrs);
        }
    }

    /// The stack networks of every node on this engine (`None` when the
    /// engine does not answer).
    async fn mesh_networks(&self) -> Option<Vec<Network>> {
        let filters: HashMap<String, Vec<String>> =
            [("label".to_string(), vec![NET_NODE_LABEL.to_string()])].into();
        self.docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| tracing::debug!(error = %e, "cannot list the stack networks"))
            .ok()
    }

    /// Removes this node's stack networks that nothing here uses (left by
    /// an earlier run).
    async fn remove_stale(
        &self,
        node: &str,
        local: &Local,
        open: &HashMap<String, StackNet>,
        list: &[Network],
    ) {
        for n in list {
            let label = |key: &str| n.labels.as_ref().and_then(|l| l.get(key)).cloned();
            if label(NET_NODE_LABEL).as_deref() != Some(node) {
                continue;
            }
            let stack = label(NET_STACK_LABEL).unwrap_or_default();
            if local.contains_key(&stack) || open.contains_key(&stack) {
                continue;
            }
            if let Some(name) = &n.name
                && self.docker.remove_network(name).await.is_ok()
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
