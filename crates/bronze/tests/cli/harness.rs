//! A real scheduler (and, where tasks must run, real agents on this
//! machine's engine) in this process, and the real `bronze` binary run
//! against it. Names are unique per run; containers of a test's services
//! are removed when its `Cleanup` drops, also when the test fails.

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bronze_runtime::Shutdown;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

pub const BIN: &str = env!("CARGO_BIN_EXE_bronze");
pub const IMAGE: &str = "bronze-test/busybox-httpd:latest";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

static BUILT: OnceCell<()> = OnceCell::const_new();

/// The busybox test image (ENTRYPOINT busybox, CMD httpd on 8080), built
/// offline once.
pub async fn image() {
    BUILT
        .get_or_init(|| async {
            xtask::images::build_busybox_httpd(IMAGE)
                .await
                .expect("test image builds offline");
        })
        .await;
}

/// Fast heartbeats, so a stopped agent's node is down within seconds.
pub fn fast() -> bronze_scheduler::Config {
    bronze_scheduler::Config {
        heartbeat: Duration::from_millis(200),
        node_grace: Duration::from_secs(2),
        ..bronze_scheduler::Config::ephemeral()
    }
}

pub struct Scheduler {
    pub addr: SocketAddr,
    pub join_token: String,
    shutdown: Shutdown,
}

impl Scheduler {
    pub async fn start(config: bronze_scheduler::Config) -> Self {
        let server = bronze_scheduler::Server::bind(config)
            .await
            .expect("scheduler binds");
        let addr = server.addr();
        let join_token = server.join_token();
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        tokio::spawn(async move { server.serve(s).await.expect("scheduler serves") });
        Self {
            addr,
            join_token,
            shutdown,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `bronze ARGS` against this scheduler (BRONZE_SCHEDULER), without a
    /// token.
    pub async fn bronze(&self, args: &[&str]) -> Out {
        bronze(&[("BRONZE_SCHEDULER", &self.url())], args).await
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// What a run of the binary gave.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Out {
    /// Asserts exit 0 and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "bronze failed: {self:#?}");
        &self.stdout
    }

    /// Asserts the exit code and returns stderr.
    pub fn fails(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "{self:#?}");
        &self.stderr
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {self:#?}"))
    }
}

pub fn command(env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("BRONZE_SCHEDULER")
        .env_remove("BRONZE_SCHEDULER_TOKEN")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the binary to its end (on a blocking thread: the scheduler serves
/// on this runtime meanwhile).
pub async fn bronze(env: &[(&str, &str)], args: &[&str]) -> Out {
    run(command(env, args)).await
}

/// Runs a shell command line under `script`, which gives it a
/// pseudo-terminal (as a person at a terminal runs it).
pub async fn on_terminal(env: &[(&str, &str)], line: &str) -> Out {
    let mut cmd = Command::new("script");
    cmd.args(["-qec", line, "/dev/null"])
        .env_remove("BRONZE_SCHEDULER")
        .env_remove("BRONZE_SCHEDULER_TOKEN")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(cmd).await
}

async fn run(mut cmd: Command) -> Out {
    let start = Instant::now();
    let out: Output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("bronze runs");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: start.elapsed(),
    }
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

/// An agent in this process on this machine's engine, as node `hostname`.
pub struct Agent {
    shutdown: Shutdown,
    task: Option<JoinHandle<()>>,
    _data: tempfile::TempDir,
    /// Where it writes tasks' secrets and configs: its own, on a tmpfs.
    pub files: tempfile::TempDir,
}

impl Agent {
    pub async fn start(s: &Scheduler, hostname: &str, labels: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().expect("dir");
        let files = tempfile::Builder::new()
            .prefix("bronze-test-agent-")
            .tempdir_in("/dev/shm")
            .expect("a directory on /dev/shm (a tmpfs)");
        let config = bronze_agent::Config {
            files_dir: files.path().display().to_string(),
            scheduler: s.url(),
            join_token: s.join_token.clone(),
            hostname: hostname.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            address: "127.0.0.1".into(),
            metrics_addr: "127.0.0.1:0".parse().expect("addr"),
            data_dir: data.path().display().to_string(),
            ..Default::default()
        };
        let server = bronze_agent::Server::bind(config)
            .await
            .expect("agent binds (is the docker engine running?)");
        let shutdown = Shutdown::new();
        let sd = shutdown.clone();
        let task = tokio::spawn(async move { server.serve(sd).await.expect("agent runs") });
        Self {
            shutdown,
            task: Some(task),
            _data: data,
            files,
        }
    }

    /// Stops the agent; its node goes down after the grace.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.task.take() {
            t.await.expect("agent task");
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Waits until `bronze node ls` shows `hostname` with `status`.
pub async fn node_status(s: &Scheduler, hostname: &str, status: &str) {
    eventually(
        Duration::from_secs(30),
        &format!("{hostname} {status}"),
        || async {
            let out = s.bronze(&["node", "ls"]).await;
            out.stdout
                .lines()
                .any(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    cols.get(1) == Some(&hostname) && cols.get(2) == Some(&status)
                })
                .then_some(())
        },
    )
    .await;
}

/// Removes every container of these services when dropped (with the
/// docker CLI: a failed test leaves nothing behind).
pub struct Cleanup(pub Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for service in &self.0 {
            let Ok(out) = Command::new("docker")
                .args([
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=bronze.service.name={service}"),
                ])
                .output()
            else {
                continue;
            };
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .arg("rm")
                    .arg("-f")
                    .args(&ids)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}
