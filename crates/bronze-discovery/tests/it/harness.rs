//! Starting servers on port 0 and talking to them.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use bronze_discovery::{Config, Server};
use bronze_proto::discovery::v1::discovery_client::DiscoveryClient;
use bronze_runtime::Shutdown;
use tokio::task::JoinHandle;

pub struct Running {
    pub http: SocketAddr,
    pub dns: SocketAddr,
    pub grpc: SocketAddr,
    shutdown: Shutdown,
    task: Option<JoinHandle<()>>,
    client: reqwest::Client,
}

impl Running {
    /// An in-memory server on 127.0.0.1 port 0.
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(edit: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::ephemeral();
        edit(&mut config);
        let server = Server::bind(config).await.expect("discovery binds");
        let shutdown = Shutdown::new();
        let (http, dns, grpc) = (server.http_addr(), server.dns_addr(), server.grpc_addr());
        let s = shutdown.clone();
        let task = tokio::spawn(async move {
            server.serve(s).await.expect("discovery serves");
        });
        Self {
            http,
            dns,
            grpc,
            shutdown,
            task: Some(task),
            client: {
                bronze_runtime::install_crypto_provider();
                reqwest::Client::new()
            },
        }
    }

    /// Triggers shutdown and waits until the server has drained.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("server drains within 10s")
                .expect("server task");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn get_json(&self, path: &str) -> (u64, serde_json::Value) {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "GET {path}");
        let index = consul_index(&r);
        (index, r.json().await.expect("json body"))
    }

    pub async fn put(&self, path: &str, body: &str) -> (u16, String) {
        let r = self
            .client
            .put(self.url(path))
            .body(body.to_string())
            .send()
            .await
            .expect("PUT");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// Registers through the Consul API, asserting success.
    pub async fn register(&self, body: serde_json::Value) {
        let (code, text) = self
            .put("/v1/agent/service/register", &body.to_string())
            .await;
        assert_eq!(code, 200, "register {body}: {text}");
    }

    pub async fn grpc(&self) -> DiscoveryClient<tonic::transport::Channel> {
        DiscoveryClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("grpc connects")
    }

    pub async fn dig(&self, args: &[&str]) -> String {
        dig(self.dns, args).await
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub fn consul_index(r: &reqwest::Response) -> u64 {
    r.headers()
        .get("X-Consul-Index")
        .expect("X-Consul-Index header")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number")
}

/// Runs the real `dig` against `server`; returns its stdout.
pub async fn dig(server: SocketAddr, args: &[&str]) -> String {
    let mut cmd = Command::new("dig");
    cmd.arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+time=5", "+tries=2"])
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("dig runs (apt-get install dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` until it returns true, for at most `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The records of one section of `dig` output, as (name, type, data).
pub fn section(out: &str, name: &str) -> Vec<(String, String, String)> {
    let header = format!(";; {name} SECTION:");
    let mut lines = out.lines().skip_while(|l| !l.starts_with(&header)).skip(1);
    let mut recs = Vec::new();
    for l in lines.by_ref() {
        if l.trim().is_empty() {
            break;
        }
        let parts: Vec<&str> = l.split_whitespace().collect();
        if parts.len() >= 5 {
            recs.push((
                parts[0].to_string(),
                parts[3].to_string(),
                parts[4..].join(" "),
            ));
        }
    }
    recs
}

/// The status (NOERROR, NXDOMAIN, ...) of `dig` output.
pub fn status(out: &str) -> String {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("<no answer>")
        .to_string()
}

/// The header flags of `dig` output (qr aa tc rd ra).
pub fn flags(out: &str) -> Vec<String> {
    out.split(";; flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// Shows that refreshes keep a TTL check alive without racing the clock:
/// `round` refreshes, then says whether the check is as a refreshed one
/// should be. A round that took less than `ttl` must say yes (one that
/// took longer, on a loaded machine, proves nothing either way); this ends
/// once a conclusive round ended past `ttl` from the start, so the
/// refreshes, not the first registration, are what kept it.
pub async fn kept_alive_by_refreshes<F, Fut>(ttl: Duration, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(30);
    loop {
        let began = tokio::time::Instant::now();
        let held = round().await;
        if began.elapsed() < ttl {
            assert!(held, "the check was not kept alive by a refresh");
            if started.elapsed() > ttl {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no round finished within the TTL of its refresh in 30 s"
        );
    }
}
