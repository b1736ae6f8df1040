//! Discovery and registrator in process, containers on the real engine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HealthConfig, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, RemoveContainerOptionsBuilder,
};
use bronze_proto::discovery::v1 as pb;
use bronze_runtime::Shutdown;
use futures::StreamExt;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

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

/// A bronze-discovery in this process.
pub struct Discovery {
    pub grpc: SocketAddr,
    pub dns: SocketAddr,
    shutdown: Shutdown,
    task: Option<JoinHandle<()>>,
}

impl Discovery {
    pub async fn start() -> Self {
        Self::start_on(None).await
    }

    /// On the given listeners (to restart in place), or on port 0.
    pub async fn start_on(at: Option<(SocketAddr, SocketAddr, SocketAddr)>) -> Self {
        let mut config = bronze_discovery::Config::ephemeral();
        if let Some((grpc, dns, http)) = at {
            config.grpc.addr = grpc;
            config.dns.addr = dns;
            config.http.addr = http;
        }
        let server = bronze_discovery::Server::bind(config)
            .await
            .expect("discovery binds");
        let (grpc, dns) = (server.grpc_addr(), server.dns_addr());
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move { server.serve(s).await.expect("discovery serves") });
        Self {
            grpc,
            dns,
            shutdown,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.task.take() {
            t.await.expect("discovery task");
        }
    }

    pub async fn client(&self) -> pb::discovery_client::DiscoveryClient<tonic::transport::Channel> {
        pb::discovery_client::DiscoveryClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("grpc")
    }

    /// Instances of a service, as discovery holds them.
    pub async fn instances(&self, service: &str) -> Vec<pb::Instance> {
        self.client()
            .await
            .get_service(pb::GetServiceRequest {
                name: service.into(),
                ..Default::default()
            })
            .await
            .expect("get service")
            .into_inner()
            .instances
    }

    /// `dig SRV` answers for a service: (port, target).
    pub async fn srv(&self, service: &str) -> Vec<(u16, String)> {
        let out = dig(self.dns, &format!("{service}.service.bronze"), "SRV").await;
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((f.get(2)?.parse().ok()?, f.get(3)?.to_string()))
            })
            .collect()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub async fn dig(server: SocketAddr, name: &str, qtype: &str) -> String {
    let mut cmd = Command::new("dig");
    cmd.arg(format!("@{}", server.ip())).args([
        "-p",
        &server.port().to_string(),
        "+short",
        "+time=2",
        "+tries=2",
        name,
        qtype,
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A registrator in this process.
pub struct Reg {
    pub metrics: SocketAddr,
    shutdown: Shutdown,
    task: Option<JoinHandle<()>>,
}

pub fn reg_config(discovery: SocketAddr, node: &str) -> bronze_registrator::Config {
    bronze_registrator::Config {
        discovery: format!("http://{discovery}"),
        hostname: node.to_string(),
        ip: Some("127.0.0.1".parse().expect("ip")),
        heartbeat: Duration::from_millis(200),
        ttl: Duration::from_secs(3),
        deregister_after: Duration::from_secs(10),
        resync: Duration::from_secs(2),
        metrics_addr: "127.0.0.1:0".parse().expect("addr"),
        ..Default::default()
    }
}

impl Reg {
    pub async fn start(config: bronze_registrator::Config) -> Self {
        let server = bronze_registrator::Server::bind(config)
            .await
            .expect("registrator binds");
        let metrics = server.metrics_addr();
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move { server.serve(s).await.expect("registrator runs") });
        Self {
            metrics,
            shutdown,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.task.take() {
            t.await.expect("registrator task");
        }
    }

    /// The value of one metric from /metrics.
    pub async fn metric(&self, name: &str) -> f64 {
        bronze_runtime::install_crypto_provider();
        let text = reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

impl Drop for Reg {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A busybox httpd container, removed (forcibly) when dropped.
pub struct Container {
    pub name: String,
    pub id: String,
    pub host_port: u16,
    docker: Docker,
}

#[derive(Default)]
pub struct Spec {
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    /// Docker HEALTHCHECK fetching /health every 300ms.
    pub healthcheck: bool,
    pub cmd: Option<Vec<String>>,
    /// Container ports published on 127.0.0.1 besides 8080.
    pub extra_ports: Vec<u16>,
    /// Publish nothing (a Swarm stack's service, routed by its address).
    pub unpublished: bool,
}

impl Container {
    /// Creates and starts a container publishing 8080 on 127.0.0.1 (unless
    /// `spec.unpublished`).
    pub async fn run(name: &str, spec: Spec) -> Self {
        let unpublished = spec.unpublished;
        let mut c = Self::create(name, spec).await;
        c.start().await;
        if !unpublished {
            c.host_port = c.published_port().await;
        }
        c
    }

    pub async fn create(name: &str, spec: Spec) -> Self {
        image().await;
        let docker = docker().await;
        let healthcheck = spec.healthcheck.then(|| HealthConfig {
            test: Some(vec![
                "CMD".into(),
                "/bin/busybox".into(),
                "wget".into(),
                "-q".into(),
                "-O".into(),
                "/dev/null".into(),
                "http://127.0.0.1:8080/health".into(),
            ]),
            interval: Some(300_000_000),
            timeout: Some(1_000_000_000),
            retries: Some(1),
            start_period: None,
            start_interval: None,
        });
        let published = if spec.unpublished {
            Vec::new()
        } else {
            std::iter::once(8080).chain(spec.extra_ports).collect()
        };
        let bindings = published
            .iter()
            .map(|p| {
                (
                    format!("{p}/tcp"),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(String::new()),
                    }]),
                )
            })
            .collect();
        // The engine publishes only exposed ports (the image exposes 8080).
        let exposed = published.iter().map(|p| format!("{p}/tcp")).collect();
        let body = ContainerCreateBody {
            image: Some(IMAGE.into()),
            exposed_ports: Some(exposed),
            env: Some(spec.env),
            labels: Some(spec.labels),
            cmd: spec.cmd,
            healthcheck,
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(name).build()),
                body,
            )
            .await
            .expect("create container");
        Self {
            name: name.to_string(),
            id: created.id,
            host_port: 0,
            docker,
        }
    }

    pub async fn start(&self) {
        self.docker
            .start_container(&self.id, None)
            .await
            .expect("start");
    }

    /// The host port 8080 is published on (once started).
    pub async fn published_port(&self) -> u16 {
        let info = self
            .docker
            .inspect_container(&self.id, None::<InspectContainerOptions>)
            .await
            .expect("inspect");
        let ports = info.network_settings.and_then(|n| n.ports).expect("ports");
        ports["8080/tcp"].as_ref().expect("bound")[0]
            .host_port
            .as_ref()
            .expect("host port")
            .parse()
            .expect("number")
    }

    pub async fn exec(&self, cmd: &[&str]) {
        let exec = self
            .docker
            .create_exec(
                &self.id,
                CreateExecOptions {
                    cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .expect("create exec");
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .expect("start exec")
        {
            while output.next().await.is_some() {}
        }
    }

    pub async fn kill(&self) {
        self.docker
            .kill_container(
                &self.id,
                None::<bollard::query_parameters::KillContainerOptions>,
            )
            .await
            .expect("kill");
    }

    pub async fn remove(&self) {
        let _ = self
            .docker
            .remove_container(
                &self.id,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await;
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let (docker, id) = (self.docker.clone(), self.id.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    let _ = docker
                        .remove_container(
                            &id,
                            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                        )
                        .await;
                });
            }
        })
        .join();
    }
}

/// Polls `f` until true, for at most `within`; returns how long it took.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if f().await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
