//! `cargo xtask bench gateway`: one fast backend (Debian's nginx answering
//! a fixed 200 body), and wrk (`-t1 -c50`) against it directly and through
//! bronze-gateway (one worker thread), nginx as a proxy (one worker,
//! upstream keep-alive) and HAProxy (one thread), each with the same single
//! route; requests/s, p50/p99 and ratios. Also bronze-gateway with
//! key-auth, rate-limiting (a limit never reached) and prometheus (status
//! codes and latencies) on one route, against plain nginx (issue goal:
//! at least 0.9x). And the routing table: 10,000 routes, time per match.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench_util::{Proc, free_port};
use anyhow::{Context, bail};

fn wait_ready(port: u16, what: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        let ok = Command::new("curl")
            .args(["-s", "-f", "-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{port}/"))
            .status()?
            .success();
        if ok {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("{what} did not answer on port {port}")
}

fn spawn(cmd: &mut Command) -> anyhow::Result<Proc> {
    Ok(Proc(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("{cmd:?}"))?,
    ))
}

fn nginx(dir: &Path, name: &str, body: &str) -> anyhow::Result<Proc> {
    let prefix = dir.join(name);
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = format!(
        "daemon off;\nworker_processes 1;\nuser root;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log crit;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n access_log off;\n client_body_temp_path {p}/body;\n proxy_temp_path {p}/proxy;\n\
         fastcgi_temp_path {p}/fcgi;\n uwsgi_temp_path {p}/uwsgi;\n scgi_temp_path {p}/scgi;\n\
         keepalive_requests 1000000;\n{body}\n}}\n",
        p = prefix.display()
    );
    let file = prefix.join("nginx.conf");
    std::fs::write(&file, conf)?;
    spawn(
        Command::new("nginx")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&file),
    )
}

struct Run {
    name: String,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// wrk's "50%" and "99%" latency lines, in milliseconds.
fn latency(out: &str, pct: &str) -> f64 {
    out.lines()
        .find(|l| l.trim_start().starts_with(pct))
        .and_then(|l| l.split_whitespace().nth(1))
        .map_or(f64::NAN, |v| {
            let (n, unit) =
                v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
            let n: f64 = n.parse().unwrap_or(f64::NAN);
            match unit {
                "us" => n / 1000.0,
                "ms" => n,
                "s" => n * 1000.0,
                _ => f64::NAN,
            }
        })
}

fn wrk(name: &str, port: u16, seconds: u64) -> anyhow::Result<Run> {
    wrk_with(name, port, "/", &[], seconds)
}

/// wrk against `path` with extra request headers.
fn wrk_with(
    name: &str,
    port: u16,
    path: &str,
    headers: &[&str],
    seconds: u64,
) -> anyhow::Result<Run> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let header_args: Vec<&str> = headers.iter().flat_map(|h| ["-H", *h]).collect();
    // Warm-up (connections, pools), then the measured run.
    Command::new("wrk")
        .args(["-t1", "-c50", "-d2s"])
        .args(&header_args)
        .arg(&url)
        .output()?;
    let out = Command::new("wrk")
        .args(["-t1", "-c50", &format!("-d{seconds}s"), "--latency"])
        .args(&header_args)
        .arg(&url)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("{name}: wrk reported errors:\n{text}");
    }
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{name}: no Requests/sec in wrk output:\n{text}"))?;
    Ok(Run {
        name: name.into(),
        rps,
        p50_ms: latency(&text, "50%"),
        p99_ms: latency(&text, "99%"),
    })
}

const PLUGINS_PATH: &str = "/plugins/";
const PLUGINS_KEY: &str = "apikey: bench-key";

/// One route to the backend, and one with key-auth, rate-limiting (a limit
/// far above what a run reaches) and prometheus.
fn bench_config(backend: u16) -> serde_json::Value {
    serde_json::json!({"_format_version": "3.0",
    "consumers": [{"username": "bench", "keyauth_credentials": [{"key": "bench-key"}]}],
    "services": [{"name": "backend", "url": format!("http://127.0.0.1:{backend}"), "routes": [
        {"name": "all", "paths": ["/"]},
        {"name": "plugins", "paths": [PLUGINS_PATH.trim_end_matches('/')], "plugins": [
            {"name": "key-auth"},
            {"name": "rate-limiting", "config": {"second": 1_000_000_000u64, "limit_by": "consumer"}},
            {"name": "prometheus", "config": {"status_code_metrics": true, "latency_metrics": true}}
        ]}
    ]}]})
}

/// 10,000 routes (one per host, a path each), nanoseconds per match of a
/// route in the middle.
fn table_match_ns() -> anyhow::Result<f64> {
    let services: Vec<serde_json::Value> = (0..100)
        .map(|s| {
            let routes: Vec<serde_json::Value> = (0..100)
                .map(|r| {
                    serde_json::json!({"name": format!("r{s}-{r}"),
                        "hosts": [format!("svc{s}-{r}.example.com")], "paths": [format!("/api/v{r}")]})
                })
                .collect();
            serde_json::json!({"name": format!("s{s}"), "url": "http://127.0.0.1:1", "routes": routes})
        })
        .collect();
    let doc = serde_json::json!({"_format_version": "3.0", "services": services}).to_string();
    let d =
        bronze_gateway::declarative::parse(doc.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let table = bronze_gateway::router::Table::build(&d).map_err(|e| anyhow::anyhow!("{e}"))?;
    let headers = http::HeaderMap::new();
    let n = 2_000_000u32;
    let started = Instant::now();
    let mut found = 0usize;
    for i in 0..n {
        let host = if i % 2 == 0 {
            "svc50-50.example.com"
        } else {
            "svc99-99.example.com"
        };
        let path = if i % 2 == 0 {
            "/api/v50/users"
        } else {
            "/api/v99"
        };
        found += usize::from(
            table
                .find(
                    &http::Method::GET,
                    std::hint::black_box(host),
                    std::hint::black_box(path),
                    &headers,
                )
                .is_some(),
        );
    }
    let ns = started.elapsed().as_nanos() as f64 / f64::from(n);
    if found != n as usize {
        bail!("route table benchmark: {found} of {n} matched");
    }
    Ok(ns)
}

pub fn run(seconds: u64) -> anyhow::Result<()> {
    crate::prerequisites::apt(&[
        ("nginx", "nginx-light"),
        ("haproxy", "haproxy"),
        ("wrk", "wrk"),
        ("curl", "curl"),
    ])?;
    let bin = crate::build_binaries(crate::Profile::Release)?;
    let dir = std::env::temp_dir().join(format!("bronze-bench-gateway-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let backend = free_port()?;
    let _backend = nginx(
        &dir,
        "backend",
        &format!(
            " server {{ listen 127.0.0.1:{backend} backlog=4096; location / {{ default_type text/plain; return 200 'hello from the backend\\n'; }} }}"
        ),
    )?;
    wait_ready(backend, "backend nginx")?;

    let gw = free_port()?;
    let kong = dir.join("kong.json");
    std::fs::write(&kong, bench_config(backend).to_string())?;
    let _gateway = spawn(
        Command::new(bin.join("bronze-gateway"))
            .args(["--workers", "1", "--addr", &format!("127.0.0.1:{gw}")])
            .args(["--admin-addr", &format!("127.0.0.1:{}", free_port()?)])
            .arg("--declarative-config")
            .arg(&kong)
            .env("RUST_LOG", "error"),
    )?;
    wait_ready(gw, "bronze-gateway")?;

    let ngx = free_port()?;
    let _nginx_proxy = nginx(
        &dir,
        "proxy",
        &format!(
            " upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; keepalive_requests 1000000; }}\n \
             server {{ listen 127.0.0.1:{ngx} backlog=4096; location / {{ proxy_pass http://backend; \
             proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
        ),
    )?;
    wait_ready(ngx, "nginx proxy")?;

    let hap = free_port()?;
    let hap_cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &hap_cfg,
        format!(
            "global\n nbthread 1\n maxconn 4096\ndefaults\n mode http\n timeout connect 5s\n timeout client 30s\n \
             timeout server 30s\n http-reuse always\nfrontend fe\n bind 127.0.0.1:{hap}\n default_backend be\n\
             backend be\n server b1 127.0.0.1:{backend}\n"
        ),
    )?;
    let _haproxy = spawn(Command::new("haproxy").arg("-f").arg(&hap_cfg))?;
    wait_ready(hap, "haproxy")?;

    let plugins_ready = Command::new("curl")
        .args(["-s", "-f", "-o", "/dev/null", "-H", PLUGINS_KEY])
        .arg(format!("http://127.0.0.1:{gw}{PLUGINS_PATH}"))
        .status()?
        .success();
    if !plugins_ready {
        bail!("bronze-gateway refused the key-auth route's key");
    }
    let runs = vec![
        wrk("backend directly", backend, seconds)?,
        wrk("bronze-gateway (1 worker)", gw, seconds)?,
        wrk("nginx proxy (1 worker, keep-alive)", ngx, seconds)?,
        wrk("HAProxy (1 thread)", hap, seconds)?,
        wrk_with(
            "bronze-gateway + key-auth, rate-limiting, prometheus",
            gw,
            PLUGINS_PATH,
            &[PLUGINS_KEY],
            seconds,
        )?,
    ];
    let ns = table_match_ns()?;
    let _ = std::fs::remove_dir_all(&dir);

    let (bronze, nginx_rps, haproxy) = (runs[1].rps, runs[2].rps, runs[3].rps);
    println!(
        "\nwrk -t1 -c50 -d{seconds}s, one route to one nginx backend; {} cores\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| target | requests/s | p50 | p99 | bronze-gateway / this |");
    println!("|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {:.0} | {:.2} ms | {:.2} ms | {:.2}x |",
            r.name,
            r.rps,
            r.p50_ms,
            r.p99_ms,
            bronze / r.rps
        );
    }
    println!(
        "\nbronze-gateway: {:.2}x nginx, {:.2}x HAProxy",
        bronze / nginx_rps,
        bronze / haproxy
    );
    println!(
        "bronze-gateway with key-auth, rate-limiting and prometheus: {:.2}x plain nginx (goal: 0.9x)",
        runs[4].rps / nginx_rps
    );
    println!("routing table of 10,000 routes: {ns:.0} ns per match");
    Ok(())
}
