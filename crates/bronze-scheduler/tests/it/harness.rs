//! A scheduler and agents in this process, containers on the real engine.
//! Every test names its services uniquely and removes its containers at
//! the end (also when it fails: `Cluster` cleans up in `Drop`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use bronze_proto::scheduler::v1 as pb;
use bronze_runtime::Shutdown;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub const IMAGE: &str = "bronze-test/busybox-httpd:latest";

static BUILT: OnceCell<()> = OnceCell::const_new();

pub async fn image() {
    BUILT
        .get_or_init(|| async {
            xtask::images::build_busybox_httpd(IMAGE)
                .await
                .expect("test image builds offline");
        })
        .await;
}

pub async fn docker() -> Docker {
    xtask::images::docker().await.expect("docker engine")
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn fast() -> bronze_scheduler::Config {
    bronze_scheduler::Config {
        heartbeat: Duration::from_millis(200),
        node_grace: Duration::from_secs(3),
        ..bronze_scheduler::Config::ephemeral()
    }
}

/// A registry in this process storing under `root`, until `stop`: its
/// HTTP (docker push/pull) and gRPC (events) addresses.
pub async fn registry(root: &std::path::Path, stop: &Shutdown) -> (SocketAddr, SocketAddr) {
    let registry = bronze_registry::Server::bind(bronze_registry::Config::ephemeral(
        &root.display().to_string(),
    ))
    .await
    .expect("registry");
    let addrs = (registry.addr(), registry.grpc_addr());
    tokio::spawn(registry.serve(stop.clone()));
    addrs
}

/// A scheduler in this process.
pub struct Scheduler {
    pub addr: SocketAddr,
    pub token: String,
    shutdown: Shutdown,
    task: Option<JoinHandle<()>>,
}

impl Scheduler {
    pub async fn start(config: bronze_scheduler::Config) -> Self {
        let server = bronze_scheduler::Server::bind(config)
            .await
            .expect("scheduler binds");
        let addr = server.addr();
        let token = server.join_token();
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move { server.serve(s).await.expect("scheduler serves") });
        Self {
            addr,
            token,
            shutdown,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.task.take() {
            t.await.expect("scheduler task");
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// An agent in this process, with its own node identity.
pub struct Agent {
    shutdown: Shutdown,
    task: Option<JoinHandle<()>>,
    pub data: tempfile::TempDir,
}

pub fn agent_config(
    scheduler: &str,
    token: &str,
    hostname: &str,
    labels: &[(&str, &str)],
) -> bronze_agent::Config {
    bronze_agent::Config {
        scheduler: scheduler.to_string(),
        join_token: token.to_string(),
        hostname: hostname.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        address: "127.0.0.1".into(),
        metrics_addr: "127.0.0.1:0".parse().expect("addr"),
        ..Default::default()
    }
}

impl Agent {
    pub async fn start(mut config: bronze_agent::Config) -> Self {
        let data = tempfile::tempdir().expect("dir");
        if config.data_dir == bronze_agent::Config::default().data_dir {
            config.data_dir = data.path().display().to_string();
        }
        Self::start_in(config, data).await
    }

    /// With the data directory of an earlier agent (the same node).
    pub async fn start_in(mut config: bronze_agent::Config, data: tempfile::TempDir) -> Self {
        config.data_dir = data.path().display().to_string();
        let server = bronze_agent::Server::bind(config)
            .await
            .expect("agent binds");
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move { server.serve(s).await.expect("agent runs") });
        Self {
            shutdown,
            task: Some(task),
            data,
        }
    }

    /// Stops the agent (its containers keep running); gives back its data
    /// directory, to start it again as the same node.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown.trigger();
        if let Some(t) = self.task.take() {
            t.await.expect("agent task");
        }
        let dir = tempfile::tempdir().expect("dir");
        std::mem::replace(&mut self.data, dir)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub type Client = pb::scheduler_client::SchedulerClient<Channel>;

pub async fn client(addr: SocketAddr) -> Client {
    pb::scheduler_client::SchedulerClient::connect(format!("http://{addr}"))
        .await
        .expect("scheduler client")
}

/// A spec of the test image with `replicas`, restarting fast.
pub fn spec(name: &str, replicas: u64) -> pb::ServiceSpec {
    pb::ServiceSpec {
        name: name.into(),
        image: IMAGE.into(),
        mode: Some(pb::service_spec::Mode::Replicated(pb::Replicated {
            replicas,
        })),
        restart_policy: Some(pb::RestartPolicy {
            condition: "any".into(),
            delay: Some(prost_types::Duration {
                seconds: 0,
                nanos: 200_000_000,
            }),
            ..Default::default()
        }),
        stop_grace_period: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    }
}

pub async fn tasks(c: &mut Client, service: &str) -> Vec<pb::Task> {
    c.list_tasks(pb::ListTasksRequest {
        service: service.into(),
        ..Default::default()
    })
    .await
    .expect("list tasks")
    .into_inner()
    .tasks
}

pub fn running(tasks: &[pb::Task]) -> Vec<&pb::Task> {
    tasks
        .iter()
        .filter(|t| {
            t.desired_state() == pb::TaskState::Running
                && t.status
                    .as_ref()
                    .is_some_and(|s| s.state() == pb::TaskState::Running)
        })
        .collect()
}

/// Polls `f` until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Waits until the service has `n` running tasks (and nothing else live).
pub async fn converged(c: &mut Client, service: &str, n: usize) -> Vec<pb::Task> {
    let last;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ts = tasks(c, service).await;
        let live = ts
            .iter()
            .filter(|t| {
                t.status.as_ref().is_some_and(|s| {
                    !matches!(
                        s.state(),
                        pb::TaskState::Complete
                            | pb::TaskState::Failed
                            | pb::TaskState::Shutdown
                            | pb::TaskState::Rejected
                            | pb::TaskState::Orphaned
                    )
                })
            })
            .count();
        if running(&ts).len() == n && live == n {
            return ts;
        }
        if Instant::now() > deadline {
            last = ts;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{service} did not converge to {n}: {last:#?}");
}

/// Waits until `n` nodes are ready; returns them.
pub async fn ready_nodes(c: &mut Client, n: usize) -> Vec<pb::Node> {
    eventually(Duration::from_secs(30), "nodes ready", || {
        let mut c = c.clone();
        async move {
            let nodes = c
                .list_nodes(pb::ListNodesRequest::default())
                .await
                .ok()?
                .into_inner()
                .nodes;
            let ready: Vec<pb::Node> = nodes
                .into_iter()
                .filter(|n| n.state() == pb::NodeState::Ready)
                .collect();
            (ready.len() == n).then_some(ready)
        }
    })
    .await
}

/// Containers of a service on the engine: container id -> running.
pub async fn containers(docker: &Docker, service: &str) -> HashMap<String, bool> {
    let filters: HashMap<String, Vec<String>> = [(
        "label".to_string(),
        vec![format!("bronze.service.name={service}")],
    )]
    .into();
    docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .expect("list")
        .into_iter()
        .filter_map(|c| {
            Some((
                c.id?,
                c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
            ))
        })
        .collect()
}

/// Removes every container of these services (test clean-up).
pub async fn remove_containers(docker: &Docker, services: &[String]) {
    for s in services {
        for id in containers(docker, s).await.into_keys() {
            let _ = docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                )
                .await;
        }
    }
}

/// Removes the named services' containers when dropped (a failed test
/// leaves nothing behind).
pub struct Cleanup(pub Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let services = std::mem::take(&mut self.0);
        // A runtime of its own: Drop may run while the test's runtime is
        // shutting down.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    if let Ok(d) = xtask::images::docker().await {
                        remove_containers(&d, &services).await;
                    }
                });
            }
        })
        .join();
    }
}
