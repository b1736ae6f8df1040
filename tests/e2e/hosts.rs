//! Three hosts on one machine, the whole chain across them: a control host
//! (discovery and the scheduler, sharing one network namespace) and three
//! hosts, each a container with its own address on a private network this
//! test makes, running an agent (its own node id) and a registrator in the
//! agent's network namespace (registering only its own node's tasks,
//! `--only-label bronze.node.id=...`, as on a host of its own where the
//! engine holds nothing else). Tasks join that network (`--task-network`)
//! and are registered at their own addresses (`--internal`); the gateway,
//! on this machine's loopback, follows discovery and routes a Traefik
//! label to them. The engine's socket is shared, as the issue allows.
//!
//! Under constant load through the gateway (bounded, loopback), with zero
//! failed requests throughout:
//! - three replicas, one per host;
//! - host c killed (its agent, registrator and tasks): its task starts on
//!   the others, discovery drops its instance within the TTL, the gateway
//!   leaves its address out after the first failed attempt;
//! - host c back: nothing runs twice, its dead task's container removed,
//!   discovery holds exactly three instances;
//! - host a cut from the network (agent, registrator and tasks: its
//!   traffic cut, no process killed): the same, and its tasks keep running
//!   where they are until the cut heals; healed, they are removed.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bronze_proto::scheduler::v1 as pb;
use xtask::clients::{Clients, Tally};

use crate::cluster::{Client, Teardown, docker, node_becomes, running, sh, spread, until};
use crate::containers::{free_port, images_and_workload};
use xtask::images::build_app;

/// The registrator's heartbeat and TTL on every host.
const HEARTBEAT: &str = "500ms";
const TTL: Duration = Duration::from_secs(3);

/// The gateway, a process of this machine on loopback, stopped on drop.
struct Gateway {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Gateway {
    fn start(bin: &std::path::Path, discovery: &str, dir: &std::path::Path) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join("gateway.log");
        let child = Command::new(bin.join("bronze-gateway"))
            .env("BRONZE_GATEWAY_ADDR", addr.to_string())
            .env(
                "BRONZE_GATEWAY_ADMIN_ADDR",
                format!("127.0.0.1:{}", free_port()),
            )
            .env("BRONZE_GATEWAY_DATA_DIR", dir.join("gateway"))
            .env("BRONZE_GATEWAY_DISCOVERY", discovery)
            .env("RUST_LOG", "info")
            .env("BRONZE_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("gateway log"))
            .spawn()
            .expect("bronze-gateway starts");
        Self { child, addr, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- gateway:\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What discovery's Consul API says of `service`: (node, address:port,
/// passing) per instance.
async fn instances(http: SocketAddr, service: &str) -> Option<Vec<(String, String, bool)>> {
    let url = format!("http://{http}/v1/health/service/{service}");
    let entries: Vec<serde_json::Value> = reqwest::get(url).await.ok()?.json().await.ok()?;
    Some(
        entries
            .iter()
            .map(|e| {
                let passing = e["Checks"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().all(|c| c["Status"] == "passing"));
                (
                    e["Node"]["Node"].as_str().unwrap_or_default().to_string(),
                    format!(
                        "{}:{}",
                        e["Service"]["Address"].as_str().unwrap_or_default(),
                        e["Service"]["Port"]
                    ),
                    passing,
                )
            })
            .collect(),
    )
}

/// The service's containers on `node`'s tasks (any state).
async fn containers_of(service: &str, node: &str) -> Vec<String> {
    let out = sh(vec![
        "ps".into(),
        "-aq".into(),
        "--filter".into(),
        format!("label=bronze.service.name={service}"),
        "--filter".into(),
        format!("label=bronze.node.id={node}"),
    ])
    .await;
    out.lines().map(str::to_string).collect()
}

async fn address_on(container: &str, network: &str) -> String {
    sh(vec![
        "inspect".into(),
        "-f".into(),
        format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        container.into(),
    ])
    .await
}

/// One host: its agent's container (whose network namespace the
/// registrator's container shares) and its registrator's.
struct Host {
    name: String,
    node: String,
    registrator: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_lose_one_then_cut_one_with_no_failed_request() {
    bronze_runtime::install_crypto_provider();
    let bin = images_and_workload().await;
    let id = std::process::id();
    let app = format!("bronze-test/hosts-app:{id}");
    build_app(&app, "v1", true).await.expect("app image builds");
    let network = format!("bronze-e2e-hosts-{id}");
    let ctl = format!("bronze-e2e-ctl-{id}");
    let sched = format!("bronze-e2e-sched-{id}");
    let hosts: Vec<Host> = ["a", "b", "c"]
        .iter()
        .map(|h| Host {
            name: format!("host-{h}-{id}"),
            node: format!("host{h}{id}"),
            registrator: format!("reg-{h}-{id}"),
        })
        .collect();
    let service = format!("hosts{id}");
    let mut containers = vec![sched.clone()];
    // The registrators first: they leave with their hosts' namespaces.
    containers.extend(hosts.iter().map(|h| h.registrator.clone()));
    containers.extend(hosts.iter().map(|h| h.name.clone()));
    containers.push(ctl.clone());
    let _teardown = Teardown {
        containers,
        network: network.clone(),
        service_label: format!("bronze.service.name={service}"),
        image: Some(app.clone()),
    };
    let token = "BRONZE-e2e-three-hosts-token-0123456789";
    let (http, grpc, sched_port) = (free_port(), free_port(), free_port());
    docker(&["network", "create", &network]);
    // The control host: discovery, and the scheduler in its namespace.
    docker(&[
        "run",
        "-d",
        "--name",
        &ctl,
        "--network",
        &network,
        "-p",
        &format!("127.0.0.1:{http}:8500"),
        "-p",
        &format!("127.0.0.1:{grpc}:8502"),
        "-p",
        &format!("127.0.0.1:{sched_port}:7700"),
        "bronze/discovery:latest",
    ]);
    docker(&[
        "run",
        "-d",
        "--name",
        &sched,
        "--network",
        &format!("container:{ctl}"),
        "-e",
        &format!("BRONZE_SCHEDULER_JOIN_TOKEN={token}"),
        "-e",
        "BRONZE_SCHEDULER_HEARTBEAT=200ms",
        "-e",
        "BRONZE_SCHEDULER_NODE_GRACE=3s",
        "bronze/scheduler:latest",
    ]);
    let ctl_ip = address_on(&ctl, &network).await;
    for h in &hosts {
        docker(&[
            "run",
            "-d",
            "--name",
            &h.name,
            "--hostname",
            &h.name,
            "--network",
            &network,
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-e",
            &format!("BRONZE_AGENT_SCHEDULER=http://{ctl_ip}:7700"),
            "-e",
            &format!("BRONZE_AGENT_JOIN_TOKEN={token}"),
            "-e",
            &format!("BRONZE_AGENT_HOSTNAME={}", h.name),
            "-e",
            &format!("BRONZE_AGENT_NODE_ID={}", h.node),
            "-e",
            &format!("BRONZE_AGENT_TASK_NETWORK={network}"),
            "bronze/agent:latest",
        ]);
        docker(&[
            "run",
            "-d",
            "--name",
            &h.registrator,
            "--network",
            &format!("container:{}", h.name),
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-e",
            &format!("BRONZE_REGISTRATOR_DISCOVERY=http://{ctl_ip}:8502"),
            "-e",
            &format!("BRONZE_REGISTRATOR_HOSTNAME={}", h.name),
            "-e",
            "BRONZE_REGISTRATOR_INTERNAL=true",
            "-e",
            &format!("BRONZE_REGISTRATOR_ONLY_LABELS=bronze.node.id={}", h.node),
            "-e",
            &format!("BRONZE_REGISTRATOR_HEARTBEAT={HEARTBEAT}"),
            "-e",
            &format!("BRONZE_REGISTRATOR_TTL={}s", TTL.as_secs()),
            "-e",
            "BRONZE_REGISTRATOR_DEREGISTER_AFTER=6s",
            "-e",
            "BRONZE_REGISTRATOR_METRICS_ADDR=0.0.0.0:9600",
            "bronze/registrator:latest",
        ]);
    }
    let dir = tempfile::tempdir().expect("dir");
    let gateway = Gateway::start(bin, &format!("http://127.0.0.1:{grpc}"), dir.path());
    let http = SocketAddr::from(([127, 0, 0, 1], http));

    let url = format!("http://127.0.0.1:{sched_port}");
    let mut c = until("the scheduler answers", || {
        let url = url.clone();
        async move { Client::connect(url).await.ok() }
    })
    .await;
    for h in &hosts {
        node_becomes(&c, &h.name, pb::NodeState::Ready).await;
    }
    // Spread: one replica per host.
    let tasks = spread(
        &mut c,
        pb::ServiceSpec {
            name: service.clone(),
            image: app.clone(),
            labels: [(
                "traefik.frontend.rule".to_string(),
                "PathPrefixStrip:/app".to_string(),
            )]
            .into(),
            ..Default::default()
        },
        3,
    )
    .await;
    assert_eq!(
        tasks
            .iter()
            .map(|t| t.node_id.as_str())
            .collect::<HashSet<_>>(),
        hosts
            .iter()
            .map(|h| h.node.as_str())
            .collect::<HashSet<_>>()
    );
    // Registered by each host's registrator at the task's own address.
    let mut addr_of: BTreeMap<String, String> = BTreeMap::new();
    for h in &hosts {
        let on = containers_of(&service, &h.node).await;
        assert_eq!(on.len(), 1, "one container on {}", h.name);
        addr_of.insert(
            h.name.clone(),
            format!("{}:8080", address_on(&on[0], &network).await),
        );
    }
    let registered = until("discovery holds three passing instances", || async {
        let is = instances(http, &service).await?;
        (is.len() == 3 && is.iter().all(|i| i.2)).then_some(is)
    })
    .await;
    for (node, addr, _) in &registered {
        assert_eq!(addr_of.get(node), Some(addr), "{registered:?}");
    }
    let version = format!("http://{}/app/version", gateway.addr);
    until("the gateway serves the app", || async {
        let r = reqwest::get(&version).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let load = Clients::start(&version, 4, 1_000_000);

    // Host c dies: agent, registrator, tasks.
    let host_c = &hosts[2];
    let dead = addr_of[&host_c.name].clone();
    let on_c = containers_of(&service, &host_c.node).await;
    sh(["kill", &host_c.registrator, &host_c.name]
        .map(str::to_string)
        .to_vec())
    .await;
    sh(["kill".to_string()]
        .into_iter()
        .chain(on_c.clone())
        .collect())
    .await;
    let killed = Instant::now();
    until("discovery drops host c's instance", || async {
        let is = instances(http, &service).await?;
        (!is.iter().any(|i| i.1 == dead && i.2)).then_some(())
    })
    .await;
    let dropped = killed.elapsed();
    assert!(
        dropped <= TTL + Duration::from_secs(3),
        "discovery dropped the dead host's instance after {dropped:?} (TTL {TTL:?})"
    );
    moved_off(&c, http, &service, host_c).await;
    // The gateway tried the dead address once, then left it out.
    let said = gateway.log();
    assert!(
        said.lines().any(|l| l.contains("circuit opened")
            && l.contains(&dead)
            && l.contains("\"failures\":1")),
        "no circuit opened for {dead} at its first failure:\n{said}"
    );

    // Host c comes back: its dead task's container removed, nothing twice.
    sh(["start", &host_c.name].map(str::to_string).to_vec()).await;
    sh(["start", &host_c.registrator].map(str::to_string).to_vec()).await;
    back(&mut c, http, &service, host_c, &on_c).await;

    // Host a cut off: agent, registrator and tasks lose the network; no
    // process stops.
    let host_a = &hosts[0];
    let on_a = containers_of(&service, &host_a.node).await;
    assert!(!on_a.is_empty());
    sh(["network", "disconnect", &network, &host_a.name]
        .map(str::to_string)
        .to_vec())
    .await;
    for id in &on_a {
        sh(vec![
            "network".into(),
            "disconnect".into(),
            network.clone(),
            id.clone(),
        ])
        .await;
    }
    // (A moved task may take the address a cut one had on the network.)
    moved_off(&c, http, &service, host_a).await;
    // Cut off, the host's tasks keep running where they are.
    for id in &on_a {
        let state = sh(vec![
            "inspect".into(),
            "-f".into(),
            "{{.State.Running}}".into(),
            id.clone(),
        ])
        .await;
        assert_eq!(
            state, "true",
            "host a's task {id} kept running while cut off"
        );
    }
    // Healed: host a's agent removes the tasks that moved.
    sh(["network", "connect", &network, &host_a.name]
        .map(str::to_string)
        .to_vec())
    .await;
    back(&mut c, http, &service, host_a, &on_a).await;

    let Tally { ok, failed, .. } = load.finish().await;
    assert_eq!(
        failed, 0,
        "failed requests through a host's death and a host's cut ({ok} ok)"
    );
    assert!(ok > 0);
}

/// Waits until `host`'s node is down, the service's three tasks run on
/// the other hosts, and discovery holds three passing instances there.
async fn moved_off(c: &Client, http: SocketAddr, service: &str, host: &Host) {
    node_becomes(c, &host.name, pb::NodeState::Down).await;
    until("the host's tasks running on the others", || {
        let mut c = c.clone();
        async move {
            let ts = running(&mut c, service).await;
            (ts.len() == 3 && ts.iter().all(|t| t.node_id != host.node)).then_some(())
        }
    })
    .await;
    until("three passing instances on the other hosts", || async {
        let is = instances(http, service).await?;
        let passing: Vec<_> = is.iter().filter(|i| i.2).collect();
        (passing.len() == 3 && passing.iter().all(|i| i.0 != host.name)).then_some(())
    })
    .await;
}

/// Waits until `host` is ready again and its containers `old` (of tasks
/// that moved) are removed, and nothing runs twice: three running
/// containers of the service on the engine, three running tasks, and
/// exactly three instances in discovery, all passing.
async fn back(c: &mut Client, http: SocketAddr, service: &str, host: &Host, old: &[String]) {
    node_becomes(c, &host.name, pb::NodeState::Ready).await;
    until("the host's moved tasks' containers removed", || async {
        let left = containers_of(service, &host.node).await;
        (!left.iter().any(|id| old.contains(id))).then_some(())
    })
    .await;
    until("three containers, three tasks, three instances", || {
        let mut c = c.clone();
        async move {
            let ps = sh(vec![
                "ps".into(),
                "-q".into(),
                "--filter".into(),
                format!("label=bronze.service.name={service}"),
            ])
            .await;
            let is = instances(http, service).await?;
            (ps.lines().count() == 3
                && running(&mut c, service).await.len() == 3
                && is.len() == 3
                && is.iter().all(|i| i.2))
            .then_some(())
        }
    })
    .await;
}
