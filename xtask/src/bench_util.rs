//! What every benchmark needs: child processes that die with it, free
//! ports, resident memory of a process.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bronze_proto::scheduler::v1 as pb;

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// Stops the process with SIGTERM, as a service manager would, and
    /// waits for it at most `within` (after that, the kill of drop).
    pub fn terminate(&mut self, within: Duration) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free on 127.0.0.1 for both UDP and TCP.
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port")
}

/// Resident memory of `pid` in MB (0 when it cannot be read).
pub fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time (user + system, in seconds) a process and its direct children
/// have used so far, from `/proc` (clock ticks of 1/100 s).
pub fn cpu_seconds(pid: u32) -> f64 {
    let ticks = |stat: &str| -> Option<(u32, u64)> {
        // Fields after the command name, which is in parentheses.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ppid = f.get(1)?.parse().ok()?;
        let used = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some((ppid, used))
    };
    let mut total = 0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(p) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            if let Some((ppid, used)) = ticks(&stat)
                && (p == pid || ppid == pid)
            {
                total += used;
            }
        }
    }
    total as f64 / 100.0
}

/// Starts the release binary `name` from `bin` with `args`, quiet.
pub fn spawn(bin: &std::path::Path, name: &str, args: &[String]) -> anyhow::Result<Proc> {
    Ok(Proc(
        Command::new(bin.join(name))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?,
    ))
}

/// bronze-discovery on free loopback ports, state in memory; returns it
/// and its gRPC address as a URL.
pub fn spawn_discovery(bin: &std::path::Path) -> anyhow::Result<(Proc, String)> {
    let (http, dns, grpc) = (free_port()?, free_port()?, free_port()?);
    let proc = spawn(
        bin,
        "bronze-discovery",
        &[
            "--data-dir".into(),
            String::new(),
            "--http-addr".into(),
            format!("127.0.0.1:{http}"),
            "--dns-addr".into(),
            format!("127.0.0.1:{dns}"),
            "--grpc-addr".into(),
            format!("127.0.0.1:{grpc}"),
        ],
    )?;
    Ok((proc, format!("http://127.0.0.1:{grpc}")))
}

pub type SchedulerClient = pb::scheduler_client::SchedulerClient<tonic::transport::Channel>;

/// One host of Bronze for a benchmark, each component its own release
/// process on free loopback ports: discovery, a registrator (registering
/// at 127.0.0.1), the scheduler following discovery, and one agent.
pub struct OneNode {
    /// bronze-discovery's gRPC address, as a URL.
    pub discovery: String,
    /// The scheduler's control API, as a URL.
    pub scheduler: String,
    pub agent: Proc,
    // Dropped (killed) after the agent.
    _scheduler: Proc,
    _registrator: Proc,
    _discovery: Proc,
}

impl OneNode {
    /// Starts it (state under `dir`, the node named `hostname`; with
    /// `mesh`, the agent follows discovery: service naming in stacks) and
    /// waits until its node is ready.
    pub async fn start(
        bin: &std::path::Path,
        dir: &std::path::Path,
        hostname: &str,
        mesh: bool,
    ) -> anyhow::Result<(Self, SchedulerClient)> {
        let s = |v: &str| v.to_string();
        let (discovery_proc, discovery) = spawn_discovery(bin)?;
        let registrator = spawn(
            bin,
            "bronze-registrator",
            &[
                discovery.clone(),
                s("--hostname"),
                s(hostname),
                s("--ip"),
                s("127.0.0.1"),
                s("--metrics-addr"),
                s("127.0.0.1:0"),
            ],
        )?;
        let port = free_port()?;
        let token = "BRONZE-bench-one-node-token-0123456789";
        let scheduler_proc = spawn(
            bin,
            "bronze-scheduler",
            &[
                s("--addr"),
                format!("127.0.0.1:{port}"),
                s("--data-dir"),
                dir.join("scheduler").display().to_string(),
                s("--join-token"),
                s(token),
                s("--discovery"),
                discovery.clone(),
            ],
        )?;
        let scheduler = format!("http://127.0.0.1:{port}");
        let mut args = vec![
            s("--scheduler"),
            scheduler.clone(),
            s("--join-token"),
            s(token),
            s("--data-dir"),
            dir.join("agent").display().to_string(),
            s("--hostname"),
            s(hostname),
            s("--address"),
            s("127.0.0.1"),
            s("--metrics-addr"),
            s("127.0.0.1:0"),
        ];
        if mesh {
            args.extend([s("--discovery"), discovery.clone()]);
        }
        let agent = spawn(bin, "bronze-agent", &args)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut c = loop {
            if let Ok(c) = SchedulerClient::connect(scheduler.clone()).await {
                break c;
            }
            if Instant::now() > deadline {
                bail!("the scheduler does not answer at {scheduler}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        loop {
            let nodes = c
                .list_nodes(pb::ListNodesRequest::default())
                .await?
                .into_inner()
                .nodes;
            if nodes.iter().any(|n| n.state() == pb::NodeState::Ready) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the agent's node is not ready");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok((
            Self {
                discovery,
                scheduler,
                agent,
                _scheduler: scheduler_proc,
                _registrator: registrator,
                _discovery: discovery_proc,
            },
            c,
        ))
    }
}
