//! What every benchmark needs: child processes that die with it, free
//! ports, resident memory of a process.

use std::process::{Child, Command, Stdio};

use anyhow::Context;

use anyhow::bail;

/// A child process killed when dropped.
pub struct Proc(pub Child);

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
