//! `cargo xtask bench dns`: bronze-discovery against Knot DNS and dnsmasq,
//! the same records in each, the same dnsperf load, one after another on
//! this machine; then registration-to-DNS latency and memory at scale.

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::bench_util::{Proc, free_port, rss_mb};
use anyhow::{Context, bail};
use bronze_proto::discovery::v1 as pb;
use futures::StreamExt;
use pb::discovery_client::DiscoveryClient;
use tonic::transport::Channel;

const SERVICES: usize = 1000;
const INSTANCES: usize = 3;
const CLIENTS: &str = "4";

/// Installs the peers from Debian's packages when they are missing.
fn ensure_tools() -> anyhow::Result<()> {
    crate::prerequisites::apt(&[
        ("dnsperf", "dnsperf"),
        ("knotd", "knot"),
        ("dnsmasq", "dnsmasq-base"),
        ("dig", "dnsutils"),
    ])
}

fn ip_of(service: usize, instance: usize) -> [u8; 4] {
    [
        10,
        (service / 250) as u8,
        (service % 250) as u8,
        (instance + 1) as u8,
    ]
}

fn hex(ip: [u8; 4]) -> String {
    ip.iter().map(|b| format!("{b:02x}")).collect()
}

fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut p = vec![0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    let id = fastrand_u16();
    p[..2].copy_from_slice(&id.to_be_bytes());
    for l in name.split('.').filter(|l| !l.is_empty()) {
        p.push(l.len() as u8);
        p.extend_from_slice(l.as_bytes());
    }
    p.extend_from_slice(&[0]);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    p
}

fn fastrand_u16() -> u16 {
    let n = Instant::now().elapsed().as_nanos() as u64 ^ std::process::id() as u64;
    (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as u16
}

/// Asks `server` for `name` A over UDP; the answer count (None: no answer).
fn ask(sock: &UdpSocket, server: SocketAddr, name: &str) -> Option<u16> {
    let q = query(name, 1);
    sock.send_to(&q, server).ok()?;
    let mut buf = [0u8; 1500];
    loop {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        if n >= 12 && buf[..2] == q[..2] {
            return Some(u16::from_be_bytes([buf[6], buf[7]]));
        }
    }
}

fn wait_dns(server: SocketAddr, name: &str) -> anyhow::Result<()> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ask(&sock, server, name).is_some_and(|n| n > 0) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{server} never answered {name}")
}

struct Dnsperf {
    qps: f64,
    lost: u64,
}

fn dnsperf(server: SocketAddr, queries: &Path, seconds: u32) -> anyhow::Result<Dnsperf> {
    let out = Command::new("dnsperf")
        .args([
            "-s",
            &server.ip().to_string(),
            "-p",
            &server.port().to_string(),
        ])
        .args([
            "-d",
            &queries.display().to_string(),
            "-c",
            CLIENTS,
            "-l",
            &seconds.to_string(),
            "-q",
            "200",
        ])
        .output()
        .context("running dnsperf")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.trim_start().starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    match (field("Queries per second"), field("Queries lost")) {
        (Some(qps), Some(lost)) => Ok(Dnsperf {
            qps,
            lost: lost as u64,
        }),
        _ => bail!("unexpected dnsperf output: {text}"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn client(grpc: SocketAddr) -> anyhow::Result<DiscoveryClient<Channel>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match DiscoveryClient::connect(format!("http://{grpc}")).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn spec(service: &str, id: &str, ip: [u8; 4], port: u32) -> pb::InstanceSpec {
    pb::InstanceSpec {
        id: id.into(),
        service: service.into(),
        address: format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3]),
        port,
        tags: vec!["v1".into()],
        ..Default::default()
    }
}

/// Registers `services` x `instances` with 64 requests in flight; with an
/// owner they are soft state, as a registrator registers them.
async fn load(
    c: &DiscoveryClient<Channel>,
    services: usize,
    instances: usize,
    owner: &str,
) -> anyhow::Result<()> {
    let jobs = (0..services).flat_map(|s| (0..instances).map(move |i| (s, i)));
    let mut results = futures::stream::iter(jobs)
        .map(|(s, i)| {
            let mut c = c.clone();
            async move {
                c.register(pb::RegisterRequest {
                    instance: Some(spec(
                        &format!("svc{s}"),
                        &format!("svc{s}-{i}"),
                        ip_of(s, i),
                        8000 + i as u32,
                    )),
                    owner: owner.to_string(),
                })
                .await
            }
        })
        .buffer_unordered(64);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(())
}

struct Bronze {
    _proc: Proc,
    pid: u32,
    dns: SocketAddr,
    grpc: SocketAddr,
}

/// Starts bronze-discovery; `data_dir` "" keeps durable state in memory.
fn start_bronze(binary: &Path, data_dir: &str) -> anyhow::Result<Bronze> {
    let dns = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let child = Command::new(binary)
        .args(["--data-dir", data_dir, "--log-format", "json"])
        .args([
            "--dns-addr",
            &dns.to_string(),
            "--grpc-addr",
            &grpc.to_string(),
            "--http-addr",
            &http.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting bronze-discovery")?;
    Ok(Bronze {
        pid: child.id(),
        _proc: Proc(child),
        dns,
        grpc,
    })
}

fn write_knot(dir: &Path, port: u16) -> anyhow::Result<PathBuf> {
    let mut zone = String::from(
        "$ORIGIN bronze.\n$TTL 0\n@ SOA ns.bronze. hostmaster.bronze. 1 3600 600 86400 0\n@ NS ns.bronze.\nns A 127.0.0.1\n",
    );
    for s in 0..SERVICES {
        for i in 0..INSTANCES {
            let ip = ip_of(s, i);
            let dotted = format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3]);
            writeln!(zone, "svc{s}.service A {dotted}")?;
            writeln!(
                zone,
                "_svc{s}._tcp.service SRV 1 1 {} {}.addr",
                8000 + i,
                hex(ip)
            )?;
            writeln!(zone, "{}.addr A {dotted}", hex(ip))?;
        }
    }
    std::fs::write(dir.join("bronze.zone"), zone)?;
    let conf = format!(
        "server:\n  listen: 127.0.0.1@{port}\n  udp-workers: 2\n  tcp-workers: 1\n  background-workers: 1\n  rundir: {d}\n\
         log:\n  - target: stderr\n    any: error\n\
         database:\n  storage: {d}\n\
         zone:\n  - domain: bronze.\n    file: {d}/bronze.zone\n    storage: {d}\n    journal-content: none\n    zonefile-sync: -1\n",
        d = dir.display()
    );
    let path = dir.join("knot.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

fn write_dnsmasq(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut hosts = String::new();
    let mut conf = String::new();
    for s in 0..SERVICES {
        for i in 0..INSTANCES {
            let ip = ip_of(s, i);
            writeln!(
                hosts,
                "{}.{}.{}.{} svc{s}.service.bronze {}.addr.bronze",
                ip[0],
                ip[1],
                ip[2],
                ip[3],
                hex(ip)
            )?;
            writeln!(
                conf,
                "srv-host=_svc{s}._tcp.service.bronze,{}.addr.bronze,{},1,1",
                hex(ip),
                8000 + i
            )?;
        }
    }
    std::fs::write(dir.join("hosts"), hosts)?;
    writeln!(conf, "addn-hosts={}", dir.join("hosts").display())?;
    let path = dir.join("dnsmasq.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

fn sbin(name: &str) -> String {
    let p = format!("/usr/sbin/{name}");
    if Path::new(&p).exists() {
        p
    } else {
        name.to_string()
    }
}

/// Changes registrations at `per_second` until `stop`: each change
/// re-registers one of the queried instances with its port moved, so DNS
/// answers change while their size stays that of the static peers'.
async fn churn(
    c: DiscoveryClient<Channel>,
    per_second: u64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (per_second / 100).max(1);
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        for _ in 0..per_tick {
            n += 1;
            let mut c = c.clone();
            let s = (n % SERVICES as u64) as usize;
            let i = ((n / SERVICES as u64) % INSTANCES as u64) as usize;
            let port = if (n / (SERVICES * INSTANCES) as u64).is_multiple_of(2) {
                9000
            } else {
                8000
            } + i as u32;
            let done = done.clone();
            tokio::spawn(async move {
                let r = c
                    .register(pb::RegisterRequest {
                        instance: Some(spec(
                            &format!("svc{s}"),
                            &format!("svc{s}-{i}"),
                            ip_of(s, i),
                            port,
                        )),
                        owner: "bench".into(),
                    })
                    .await;
                if r.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
}

/// Throughput of each server with the same records and load; returns the
/// table rows.
async fn throughput(binary: &Path, tmp: &Path, seconds: u32, runs: u32) -> anyhow::Result<String> {
    let mut queries = String::new();
    for s in 0..SERVICES {
        writeln!(queries, "svc{s}.service.bronze A")?;
        writeln!(queries, "_svc{s}._tcp.service.bronze SRV")?;
    }
    let qfile = tmp.join("queries.txt");
    std::fs::write(&qfile, queries)?;

    // Bronze, loaded over gRPC.
    let bronze = start_bronze(binary, "")?;
    let c = client(bronze.grpc).await?;
    load(&c, SERVICES, INSTANCES, "bench").await?;
    wait_dns(bronze.dns, "svc999.service.bronze")?;

    let knot_port = free_port()?;
    let knot_conf = write_knot(tmp, knot_port)?;
    let knot_addr = SocketAddr::from(([127, 0, 0, 1], knot_port));
    let _knot = Proc(
        Command::new(sbin("knotd"))
            .args(["-c", &knot_conf.display().to_string()])
            .stdout(Stdio::null())
            .spawn()
            .context("starting knotd")?,
    );
    wait_dns(knot_addr, "svc999.service.bronze")?;

    let dnsmasq_port = free_port()?;
    let dnsmasq_conf = write_dnsmasq(tmp)?;
    let dnsmasq_addr = SocketAddr::from(([127, 0, 0, 1], dnsmasq_port));
    let _dnsmasq = Proc(
        Command::new(sbin("dnsmasq"))
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
            ])
            .arg(format!("--port={dnsmasq_port}"))
            .arg(format!("--conf-file={}", dnsmasq_conf.display()))
            .args([
                "--user=root",
                "--pid-file=",
                "--cache-size=10000",
                "--dns-forward-max=1000",
            ])
            .stdout(Stdio::null())
            .spawn()
            .context("starting dnsmasq")?,
    );
    wait_dns(dnsmasq_addr, "svc999.service.bronze")?;

    // Warm up each, then alternate.
    for addr in [bronze.dns, knot_addr, dnsmasq_addr] {
        dnsperf(addr, &qfile, 2)?;
    }
    let (mut b, mut b_churn, mut k, mut d) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut b_lost, mut b_churn_lost, mut k_lost, mut d_lost) = (0, 0, 0, 0);
    let mut churn_rate = Vec::new();
    for run in 0..runs {
        eprintln!("throughput run {}/{runs}", run + 1);
        let r = dnsperf(bronze.dns, &qfile, seconds)?;
        b.push(r.qps);
        b_lost += r.lost;
        let r = dnsperf(knot_addr, &qfile, seconds)?;
        k.push(r.qps);
        k_lost += r.lost;
        let r = dnsperf(dnsmasq_addr, &qfile, seconds)?;
        d.push(r.qps);
        d_lost += r.lost;
        // Bronze again, while registrations change at 1,000 per second.
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        // The load generator gets its own single-threaded runtime and
        // connection so it costs the machine as little as it can.
        let grpc = bronze.grpc;
        let (s2, d2) = (stop.clone(), done.clone());
        let task = std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let c = client(grpc).await?;
                churn(c, 1000, s2, d2).await;
                Ok(())
            })
        });
        let dns = bronze.dns;
        let q = qfile.clone();
        let perf = tokio::task::spawn_blocking(move || dnsperf(dns, &q, seconds)).await??;
        stop.store(true, Ordering::Relaxed);
        task.join()
            .map_err(|_| anyhow::anyhow!("churn thread panicked"))??;
        churn_rate.push(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64());
        b_churn.push(perf.qps);
        b_churn_lost += perf.lost;
    }
    let (bq, bcq, kq, dq) = (median(b), median(b_churn), median(k), median(d));
    let mut out = String::new();
    writeln!(
        out,
        "| server | queries/s | lost | bronze-discovery / peer |"
    )?;
    writeln!(out, "|---|---|---|---|")?;
    writeln!(out, "| bronze-discovery | {bq:.0} | {b_lost} | |")?;
    writeln!(
        out,
        "| bronze-discovery, {:.0} registration changes/s | {bcq:.0} | {b_churn_lost} | {:.2} of static |",
        median(churn_rate),
        bcq / bq
    )?;
    writeln!(
        out,
        "| Knot DNS | {kq:.0} | {k_lost} | {:.2} ({:.2} while changing) |",
        bq / kq,
        bcq / kq
    )?;
    writeln!(out, "| dnsmasq | {dq:.0} | {d_lost} | {:.2} |", bq / dq)?;
    Ok(out)
}

/// Time from a Register call to the first DNS answer that includes it.
async fn latency(binary: &Path) -> anyhow::Result<String> {
    let bronze = start_bronze(binary, "")?;
    let c = client(bronze.grpc).await?;
    load(&c, SERVICES, INSTANCES, "bench").await?;
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut lat = Vec::with_capacity(1000);
    for i in 0..1000usize {
        let name = format!("vis{i}");
        let started = Instant::now();
        c.clone()
            .register(pb::RegisterRequest {
                instance: Some(spec(
                    &name,
                    &name,
                    [10, 250, (i / 250) as u8, (i % 250) as u8],
                    1,
                )),
                owner: String::new(),
            })
            .await?;
        let q = format!("{name}.service.bronze");
        while ask(&sock, bronze.dns, &q) != Some(1) {
            if started.elapsed() > Duration::from_secs(5) {
                bail!("{q} not visible after 5s");
            }
        }
        lat.push(started.elapsed());
    }
    let p50 = percentile(&mut lat, 0.5);
    let p99 = percentile(&mut lat, 0.99);
    Ok(format!(
        "registration -> DNS answer (gRPC Register returns, then one UDP query; 1000 samples): p50 {:.2} ms, p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    ))
}

/// Resident memory idle and with 10,000 services x 5 instances, registered
/// as registrators do (soft state) and as durable registrations persisted
/// to a redb file.
async fn memory(binary: &Path, tmp: &Path) -> anyhow::Result<String> {
    let mut out = String::new();
    for (what, owner, dir) in [
        (
            "heartbeated (soft state)",
            "bench-registrator",
            String::new(),
        ),
        (
            "durable, persisted to disk",
            "",
            tmp.join("memory-data").display().to_string(),
        ),
    ] {
        let big = start_bronze(binary, &dir)?;
        let bc = client(big.grpc).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle = rss_mb(big.pid);
        load(&bc, 10_000, 5, owner).await?;
        wait_dns(big.dns, "svc9999.service.bronze")?;
        let loaded = rss_mb(big.pid);
        writeln!(
            out,
            "resident memory, 10,000 services x 5 instances {what}: {loaded:.1} MB (idle {idle:.1} MB)"
        )?;
    }
    Ok(out)
}

pub async fn run(seconds: u32, runs: u32, only: Option<&str>) -> anyhow::Result<()> {
    if let Some(o) = only
        && !matches!(o, "throughput" | "latency" | "memory")
    {
        bail!("--only {o:?}: expected throughput, latency or memory");
    }
    let want = |part: &str| only.is_none_or(|o| o == part);
    ensure_tools()?;
    let bin_dir = crate::build_binaries(crate::Profile::Release)?;
    let binary = bin_dir.join("bronze-discovery");
    let tmp = std::env::temp_dir().join(format!("bronze-bench-dns-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut report = format!("machine: {cores} cores, {cpu}\n\n");
    if want("throughput") {
        writeln!(
            report,
            "{SERVICES} services x {INSTANCES} instances, A+SRV mix, dnsperf -c {CLIENTS} -q 200 -l {seconds}, median of {runs}:\n"
        )?;
        report.push_str(&throughput(&binary, &tmp, seconds, runs).await?);
        report.push('\n');
    }
    if want("latency") {
        writeln!(report, "{}", latency(&binary).await?)?;
    }
    if want("memory") {
        report.push_str(&memory(&binary, &tmp).await?);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    println!("\n{report}");
    Ok(())
}
