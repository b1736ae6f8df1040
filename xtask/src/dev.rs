//! `bronze dev` started as a child process, with the addresses it prints
//! before `ready`: for the tests and the benchmarks that run the seeds'
//! platform (every component in one process).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// `bronze dev ARGS` from a build's directory, killed when dropped.
pub struct Dev {
    pub child: Child,
    pub registry: SocketAddr,
    pub gateway: SocketAddr,
    pub dns: SocketAddr,
    /// The scheduler's control API, as a URL.
    pub scheduler: String,
}

impl Dev {
    /// Starts `bronze dev ARGS` (the seeds' flow: `--ephemeral`) from
    /// `bin` in `cwd`, its log into `log`, and reads the addresses it
    /// prints until its `ready` line.
    pub fn start(bin: &Path, log: &Path, args: &[&str], cwd: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(bin.join("bronze"))
            .arg("dev")
            .args(args)
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).context("bronze dev's log file")?)
            .spawn()
            .context("starting bronze dev")?;
        let stdout = BufReader::new(child.stdout.take().context("bronze dev's stdout")?);
        let (mut registry, mut gateway, mut dns, mut scheduler) = (None, None, None, None);
        let addr = |line: &str, n: usize| -> anyhow::Result<SocketAddr> {
            let word = line
                .split_whitespace()
                .nth(n)
                .with_context(|| format!("an address in {line:?}"))?;
            let word = word.strip_prefix("http://").unwrap_or(word);
            word.parse()
                .with_context(|| format!("a socket address in {line:?}"))
        };
        let mut ready = false;
        for line in stdout.lines().map_while(Result::ok) {
            match line.split_whitespace().next() {
                Some("registry") => registry = Some(addr(&line, 1)?),
                Some("gateway") if !line.starts_with("gateway tls") => {
                    gateway = Some(addr(&line, 1)?)
                }
                Some("scheduler") => scheduler = Some(format!("http://{}", addr(&line, 1)?)),
                Some("discovery") if line.starts_with("discovery dns") => {
                    dns = Some(addr(&line, 2)?)
                }
                _ => {}
            }
            if line.starts_with("ready") {
                ready = true;
                break;
            }
        }
        if !ready {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "bronze dev exited before ready (its log: {})",
                log.display()
            );
        }
        Ok(Self {
            registry: registry.context("bronze dev lists no registry")?,
            gateway: gateway.context("bronze dev lists no gateway")?,
            dns: dns.context("bronze dev lists no discovery dns")?,
            scheduler: scheduler.context("bronze dev lists no scheduler")?,
            child,
        })
    }

    /// `bronze ARGS` (from `bin`) against this platform's scheduler.
    pub fn bronze(
        &self,
        bin: &Path,
        env: &[(&str, String)],
        args: &[&str],
    ) -> std::io::Result<Output> {
        Command::new(bin.join("bronze"))
            .env("BRONZE_SCHEDULER", &self.scheduler)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .args(args)
            .output()
    }
}

impl Dev {
    /// Sends SIGTERM and waits (polling, at most `limit`) for the exit:
    /// `bronze dev` drains and, with `--ephemeral`, removes its state.
    pub fn terminate(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        crate::bench_util::terminate(&mut self.child, limit).context("bronze dev")
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
