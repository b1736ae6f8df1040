//! `cargo xtask bench registrator`: start N containers at once and measure,
//! per container, the time from the engine's start event to its SRV record
//! in discovery's DNS; report p50/p99 and the registrator's CPU time and
//! resident memory, busy and idle.
//!
//! Timing: the engine's start event carries its own nanosecond timestamp;
//! the moment an instance becomes visible is taken from discovery's watch
//! stream (it publishes to DNS before the registration call returns) and
//! confirmed with a DNS query. Both clocks are this host's.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::bench_util::{Proc, free_port};
use anyhow::{Context, bail};
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptions, RemoveContainerOptionsBuilder,
};
use bronze_proto::discovery::v1 as pb;
use futures::StreamExt;

const IMAGE: &str = "bronze-test/busybox-httpd:latest";

/// (user + system CPU seconds, resident MB) of a process.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    let rss = f.get(21).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) * 4096.0 / 1048576.0;
    (ticks(11) + ticks(12), rss)
}

fn srv_present(dns: SocketAddr, name: &str) -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(500)));
    let mut q = vec![0x42, 0x42, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 33, 0, 1]);
    if sock.send_to(&q, dns).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    matches!(sock.recv(&mut buf), Ok(n) if n >= 12 && u16::from_be_bytes([buf[6], buf[7]]) > 0)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

pub async fn run(count: usize) -> anyhow::Result<()> {
    crate::prerequisites::apt(&[("busybox", "busybox-static")])?;
    let bin = crate::build_binaries(crate::Profile::Release)?;
    crate::images::build_busybox_httpd(IMAGE).await?;
    let docker = crate::images::docker().await?;

    let (dns, grpc, http, metrics) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let dns = SocketAddr::from(([127, 0, 0, 1], dns));
    let grpc = SocketAddr::from(([127, 0, 0, 1], grpc));
    let _discovery = Proc(
        Command::new(bin.join("bronze-discovery"))
            .args([
                "--data-dir",
                "",
                "--dns-addr",
                &dns.to_string(),
                "--grpc-addr",
                &grpc.to_string(),
            ])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting bronze-discovery")?,
    );
    let node = format!("bench-{}", std::process::id());
    let registrator = Proc(
        Command::new(bin.join("bronze-registrator"))
            .arg(format!("http://{grpc}"))
            .args([
                "--hostname",
                &node,
                "--ip",
                "127.0.0.1",
                "--metrics-addr",
                &format!("127.0.0.1:{metrics}"),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting bronze-registrator")?,
    );
    let pid = registrator.0.id();

    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) =
            pb::discovery_client::DiscoveryClient::connect(format!("http://{grpc}")).await
        {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = client.context("discovery did not start")?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Create first (the slow part), start all at once later.
    let prefix = format!("benchreg{}", std::process::id());
    let mut ids = Vec::with_capacity(count);
    eprintln!("creating {count} containers");
    for i in 0..count {
        let body = ContainerCreateBody {
            image: Some(IMAGE.into()),
            env: Some(vec![format!("SERVICE_NAME={prefix}-{i}")]),
            host_config: Some(HostConfig {
                port_bindings: Some(
                    [(
                        "8080/tcp".to_string(),
                        Some(vec![PortBinding {
                            host_ip: Some("127.0.0.1".into()),
                            host_port: Some(String::new()),
                        }]),
                    )]
                    .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = format!("{prefix}-{i}");
        let c = docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await?;
        ids.push(c.id);
    }
    let cleanup = Cleanup(docker.clone(), ids.clone());

    let (cpu_before, _) = usage(pid);
    let since = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() - 1;
    let mut events = docker.events(Some(EventsOptions {
        since: Some(since.to_string()),
        until: None,
        filters: Some(
            [
                ("type".to_string(), vec!["container".to_string()]),
                ("event".to_string(), vec!["start".to_string()]),
            ]
            .into(),
        ),
    }));
    let mut watch = client
        .watch(pb::WatchRequest::default())
        .await?
        .into_inner();

    eprintln!("starting {count} containers at once");
    let starts =
        futures::future::join_all(ids.iter().map(|id| docker.start_container(id, None))).await;
    for s in starts {
        s?;
    }
    let started_all = Instant::now();

    let mut start_ns: HashMap<String, i64> = HashMap::new();
    let mut delivered: Vec<Duration> = Vec::new();
    let mut delivered_ns: HashMap<String, i64> = HashMap::new();
    let mut visible_ns: HashMap<String, i64> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while visible_ns.len() < count || start_ns.len() < count {
        tokio::select! {
            e = events.next() => {
                let Some(e) = e else { bail!("event stream ended") };
                let e = e?;
                if let (Some(actor), Some(t)) = (e.actor, e.time_nano)
                    && let Some(id) = actor.id
                    && ids.contains(&id)
                {
                    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as i64;
                    delivered.push(Duration::from_nanos((now - t).max(0) as u64));
                    delivered_ns.insert(id.clone(), now);
                    start_ns.insert(id, t);
                }
            }
            m = watch.message() => {
                let Some(m) = m? else { bail!("watch ended") };
                let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as i64;
                if let Some(pb::watch_event::Event::Upsert(i)) = m.event
                    && i.service.starts_with(&prefix)
                    && i.health == pb::HealthStatus::Passing as i32
                {
                    visible_ns.entry(i.service.clone()).or_insert(now);
                }
            }
            _ = tokio::time::sleep_until(deadline) => bail!("only {} of {count} visible after 120s", visible_ns.len()),
        }
    }
    let all_visible = started_all.elapsed();
    let (cpu_busy, rss_busy) = usage(pid);
    // Confirm in DNS.
    for i in 0..count {
        if !srv_present(dns, &format!("{prefix}-{i}.service.bronze")) {
            bail!("{prefix}-{i} visible in the catalog but not in DNS");
        }
    }
    // Map container -> service through the names we gave.
    let mut lat = Vec::with_capacity(count);
    let mut own = Vec::with_capacity(count);
    for (i, id) in ids.iter().enumerate() {
        let start = start_ns[id];
        let seen = visible_ns[&format!("{prefix}-{i}")];
        lat.push(Duration::from_nanos((seen - start).max(0) as u64));
        own.push(Duration::from_nanos((seen - delivered_ns[id]).max(0) as u64));
    }
    let _ = &mut own;
    let (o50, o99) = registrator_quantiles(metrics).await?;
    let p50 = percentile(&mut lat, 0.5);
    let p99 = percentile(&mut lat, 0.99);
    let max = *lat.last().unwrap_or(&Duration::ZERO);

    // Idle: nothing changes for 10 s.
    let (cpu_idle_start, _) = usage(pid);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (cpu_idle_end, rss_idle) = usage(pid);
    drop(cleanup);

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "\nmachine: {} cores, {cpu}\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{count} containers started at once (all visible {:.2} s after the starts were issued):\n",
        all_visible.as_secs_f64()
    );
    println!("| engine start event -> SRV in DNS | p50 | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| bronze-registrator | {:.1} ms | {:.1} ms | {:.1} ms |",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    let d50 = percentile(&mut delivered, 0.5);
    let d99 = percentile(&mut delivered, 0.99);
    println!(
        "| of which the engine: start event -> delivered on an event stream | {:.1} ms | {:.1} ms | |",
        d50.as_secs_f64() * 1e3,
        d99.as_secs_f64() * 1e3
    );
    println!(
        "| of which bronze: event received -> registered (registrator histogram, bucket upper bounds) | <= {o50} ms | <= {o99} ms | |"
    );
    println!();
    println!(
        "registrator CPU while registering {count}: {:.2} s; idle with {count} containers: {:.3} s CPU over 10 s ({:.2}% of a core)",
        cpu_busy - cpu_before,
        cpu_idle_end - cpu_idle_start,
        (cpu_idle_end - cpu_idle_start) * 10.0
    );
    println!(
        "registrator resident memory: {rss_busy:.1} MB after the burst, {rss_idle:.1} MB idle"
    );
    Ok(())
}

/// p50 and p99 (as bucket upper bounds, in ms) of the registrator's
/// `event_to_registered_seconds` histogram.
async fn registrator_quantiles(metrics_port: u16) -> anyhow::Result<(String, String)> {
    let text = {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", metrics_port)).await?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        body
    };
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("bronze_registrator_event_to_registered_seconds_bucket{le=\"")
        })
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    let q = |p: f64| -> String {
        buckets
            .iter()
            .find(|(_, c)| *c >= total * p)
            .map_or("?".into(), |(le, _)| {
                if le.is_finite() {
                    format!("{:.0}", le * 1e3)
                } else {
                    "inf".into()
                }
            })
    };
    Ok((q(0.5), q(0.99)))
}

/// Removes the benchmark's containers, whatever happens.
struct Cleanup(bollard::Docker, Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (docker, ids) = (self.0.clone(), std::mem::take(&mut self.1));
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    let opts = RemoveContainerOptionsBuilder::default().force(true).build();
                    futures::future::join_all(
                        ids.iter()
                            .map(|id| docker.remove_container(id, Some(opts.clone()))),
                    )
                    .await;
                });
            }
        })
        .join();
    }
}
