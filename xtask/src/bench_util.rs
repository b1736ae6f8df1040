//! What every benchmark needs: child processes that die with it, free
//! ports, resident memory of a process, the docker CLI, swarm mode joined
//! and left, Debian's docker-registry, containers started and health-
//! checked on the engine alone.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bronze_proto::scheduler::v1 as pb;

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// Stops the process with SIGTERM, as a service manager would, and
    /// waits for it at most `within` (after that, the kill of drop).
    pub fn terminate(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        terminate(&mut self.0, within)
    }
}

/// Sends `child` SIGTERM and waits (polling) at most `within` for its exit.
pub fn terminate(child: &mut Child, within: Duration) -> anyhow::Result<ExitStatus> {
    let pid = child.id();
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .context("kill -TERM")?;
    if !sent.success() {
        bail!("kill -TERM {pid} failed");
    }
    let deadline = Instant::now() + within;
    loop {
        if let Some(code) = child.try_wait()? {
            return Ok(code);
        }
        if Instant::now() > deadline {
            bail!("process {pid} did not exit within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
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

/// `docker ARGS`; its standard output, or an error with its standard error.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("docker")?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails unless this engine is outside any swarm (a bench leaves the
/// swarm it made; it must not leave one it did not make).
pub fn swarm_inactive() -> anyhow::Result<()> {
    let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])?;
    if state.trim() != "inactive" {
        bail!(
            "this engine is already part of a swarm ({}); leave it first",
            state.trim()
        );
    }
    Ok(())
}

/// `docker swarm init` on loopback. Returns whether the engine had no
/// docker_gwbridge before (then [`swarm_leave`] removes the one made).
pub fn swarm_init() -> anyhow::Result<bool> {
    let had_gwbridge = docker(&["network", "inspect", "docker_gwbridge"]).is_ok();
    docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"])?;
    Ok(!had_gwbridge)
}

/// Leaves the swarm (its services' containers go with it) and removes
/// the docker_gwbridge network `swarm init` made: the engine as found.
pub fn swarm_leave(made_gwbridge: bool) {
    let _ = docker(&["swarm", "leave", "--force"]);
    if made_gwbridge {
        let _ = docker(&["network", "rm", "docker_gwbridge"]);
    }
}

/// Debian's docker-registry (distribution) on a free loopback port,
/// storage under `dir` (deletes enabled), logging errors only; returns it
/// and its port once `/v2/` answers.
pub fn spawn_distribution(dir: &Path) -> anyhow::Result<(Proc, u16)> {
    let port = free_port()?;
    std::fs::create_dir_all(dir)?;
    let config = dir.join("distribution.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("distribution").display()
        ),
    )?;
    let proc = Proc(
        Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry")?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answered = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut head = [0u8; 12];
            s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").is_ok()
                && s.read_exact(&mut head).is_ok()
                && head.ends_with(b"200")
        });
        if answered {
            return Ok((proc, port));
        }
        if Instant::now() > deadline {
            bail!("docker-registry did not answer on 127.0.0.1:{port}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A container health check, in `docker run`'s terms.
pub struct Health {
    pub cmd: &'static str,
    pub interval: &'static str,
    pub timeout: &'static str,
    pub retries: u32,
}

/// `docker run -d` of `image` with `label`, a 1 s stop timeout and the
/// health check; returns the container's id.
pub fn engine_run(label: &str, image: &str, health: &Health) -> anyhow::Result<String> {
    let retries = health.retries.to_string();
    Ok(docker(&[
        "run",
        "-d",
        "--label",
        label,
        "--stop-timeout",
        "1",
        "--health-cmd",
        health.cmd,
        "--health-interval",
        health.interval,
        "--health-timeout",
        health.timeout,
        "--health-retries",
        &retries,
        image,
    ])?
    .trim()
    .to_string())
}

/// `n` containers of `image` started at once ([`engine_run`]).
pub fn engine_run_many(
    n: usize,
    label: &str,
    image: &str,
    health: &Health,
) -> anyhow::Result<Vec<String>> {
    std::thread::scope(|s| {
        let started: Vec<_> = (0..n)
            .map(|_| s.spawn(|| engine_run(label, image, health)))
            .collect();
        started
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("docker run thread"))?)
            .collect()
    })
}

/// Polls (every 50 ms, until `deadline`) until every container in `ids`
/// is healthy.
pub fn wait_healthy(ids: &[String], deadline: Instant) -> anyhow::Result<()> {
    loop {
        let healthy = ids.iter().all(|id| {
            docker(&["inspect", "-f", "{{.State.Health.Status}}", id])
                .is_ok_and(|h| h.trim() == "healthy")
        });
        if healthy {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the engine's containers did not turn healthy");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes (forcibly) every container carrying `label`.
pub fn remove_labelled(label: &str) {
    if let Ok(ids) = docker(&["ps", "-aq", "--filter", &format!("label={label}")]) {
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            let _ = docker(&args);
        }
    }
}
