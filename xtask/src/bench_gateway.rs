//! `cargo xtask bench gateway`: one fast backend (Debian's nginx answering
//! a fixed 200 body), and wrk (`-t1 -c50`) against it directly and through
//! bronze-gateway (one worker thread), nginx as a proxy (one worker,
//! upstream keep-alive), HAProxy (one thread) and Caddy (GOMAXPROCS=1),
//! each with the same single route; requests/s, p50/p99 and ratios. Also
//! bronze-gateway with key-auth, rate-limiting (a limit never reached) and
//! prometheus on one route, against plain nginx (issue goal: at least
//! 0.9x). Then every target at one fixed rate, half the backend's maximum,
//! latency corrected for coordinated omission (`bench_gateway_rate`). And
//! the routing table: 10,000 routes, time per match. `--soak` is in
//! `bench_gateway_soak`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench_util::{Proc, cpu_seconds, free_port};
use anyhow::{Context, bail};

pub(crate) fn wait_ready(port: u16, what: &str) -> anyhow::Result<()> {
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

pub(crate) fn spawn(cmd: &mut Command) -> anyhow::Result<Proc> {
    Ok(Proc(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("{cmd:?}"))?,
    ))
}

pub(crate) fn nginx(dir: &Path, name: &str, body: &str) -> anyhow::Result<Proc> {
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

/// Caddy as a reverse proxy on `port` to the backend: one route, upstream
/// keep-alive (64 idle connections, as nginx's `keepalive 64`), no access
/// log (Caddy logs none unless asked), admin endpoint off, run with
/// GOMAXPROCS=1 (one thread running Go code, as one nginx worker).
fn caddy(dir: &Path, port: u16, backend: u16) -> anyhow::Result<Proc> {
    let home = dir.join("caddy");
    std::fs::create_dir_all(&home)?;
    let file = home.join("Caddyfile");
    std::fs::write(
        &file,
        format!(
            "{{\n admin off\n auto_https off\n}}\n\
             http://:{port} {{\n bind 127.0.0.1\n reverse_proxy 127.0.0.1:{backend} {{\n  transport http {{\n   \
             keepalive 5m\n   keepalive_idle_conns 64\n   keepalive_idle_conns_per_host 64\n  }}\n }}\n}}\n"
        ),
    )?;
    spawn(
        Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&file)
            .env("GOMAXPROCS", "1")
            .env("HOME", &home)
            .env("XDG_DATA_HOME", &home)
            .env("XDG_CONFIG_HOME", &home),
    )
}

struct Run {
    name: String,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The measured server's CPU time per request (user + system), in
    /// microseconds: what it costs the machine, whatever else shares it.
    cpu_us: f64,
}

/// wrk's "50%" and "99%" latency lines, in milliseconds.
pub(crate) fn latency(out: &str, pct: &str) -> f64 {
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

fn wrk(name: &str, server: &Proc, port: u16, seconds: u64) -> anyhow::Result<Run> {
    wrk_with(name, server, port, "/", &[], seconds)
}

/// wrk against `path` with extra request headers.
fn wrk_with(
    name: &str,
    server: &Proc,
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
    let pid = server.0.id();
    let cpu_before = cpu_seconds(pid);
    let out = Command::new("wrk")
        .args(["-t1", "-c50", &format!("-d{seconds}s"), "--latency"])
        .args(&header_args)
        .arg(&url)
        .output()?;
    let cpu = cpu_seconds(pid) - cpu_before;
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
        cpu_us: cpu * 1e6 / (rps * seconds as f64),
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
                    None,
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

/// Each target's median run (by requests/s) over the rounds.
fn median_runs(rounds: Vec<Vec<Run>>) -> Vec<Run> {
    let n = rounds.first().map_or(0, Vec::len);
    let mut per_target: Vec<Vec<Run>> = (0..n).map(|_| Vec::new()).collect();
    for round in rounds {
        for (i, r) in round.into_iter().enumerate() {
            per_target[i].push(r);
        }
    }
    per_target
        .into_iter()
        .filter_map(|mut runs| {
            runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            let mid = runs.len() / 2;
            (!runs.is_empty()).then(|| runs.swap_remove(mid))
        })
        .collect()
}

/// `repeat`: rounds of wrk runs (the median is reported); `rate`: the
/// fixed-rate run's requests/s (default: half the backend's wrk maximum).
pub fn run(seconds: u64, repeat: usize, rate: Option<f64>) -> anyhow::Result<()> {
    crate::prerequisites::apt(&[
        ("nginx", "nginx-light"),
        ("haproxy", "haproxy"),
        ("caddy", "caddy"),
        ("wrk", "wrk"),
        ("curl", "curl"),
    ])?;
    let bin = crate::build_packages(&["bronze-gateway"], crate::Profile::Release)?;
    let dir = std::env::temp_dir().join(format!("bronze-bench-gateway-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let backend = free_port()?;
    let backend_proc = nginx(
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
    let gateway = spawn(
        Command::new(bin.join("bronze-gateway"))
            .args(["--workers", "1", "--addr", &format!("127.0.0.1:{gw}")])
            .args(["--admin-addr", &format!("127.0.0.1:{}", free_port()?)])
            // Entities in memory, as the peers' configuration: no store
            // file written (nor left in the working directory).
            .args(["--data-dir", ""])
            .arg("--declarative-config")
            .arg(&kong)
            .env("RUST_LOG", "error"),
    )?;
    wait_ready(gw, "bronze-gateway")?;

    let ngx = free_port()?;
    let nginx_proxy = nginx(
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
    let haproxy = spawn(Command::new("haproxy").arg("-f").arg(&hap_cfg))?;
    wait_ready(hap, "haproxy")?;

    let plugins_ready = Command::new("curl")
        .args(["-s", "-f", "-o", "/dev/null", "-H", PLUGINS_KEY])
        .arg(format!("http://127.0.0.1:{gw}{PLUGINS_PATH}"))
        .status()?
        .success();
    if !plugins_ready {
        bail!("bronze-gateway refused the key-auth route's key");
    }
    let cdy = free_port()?;
    let caddy_proc = caddy(&dir, cdy, backend)?;
    wait_ready(cdy, "caddy")?;

    // Rounds over every target in turn (so a slow patch of the machine
    // hits them all alike); each target's median run by requests/s.
    let mut rounds: Vec<Vec<Run>> = Vec::new();
    for _ in 0..repeat.max(1) {
        rounds.push(vec![
            wrk("backend directly", &backend_proc, backend, seconds)?,
            wrk("bronze-gateway (1 worker)", &gateway, gw, seconds)?,
            wrk(
                "nginx proxy (1 worker, keep-alive)",
                &nginx_proxy,
                ngx,
                seconds,
            )?,
            wrk("HAProxy (1 thread)", &haproxy, hap, seconds)?,
            wrk("Caddy (GOMAXPROCS=1)", &caddy_proc, cdy, seconds)?,
            wrk_with(
                "bronze-gateway + key-auth, rate-limiting, prometheus",
                &gateway,
                gw,
                PLUGINS_PATH,
                &[PLUGINS_KEY],
                seconds,
            )?,
        ]);
    }
    let runs = median_runs(rounds);
    let rate = rate.unwrap_or((runs[0].rps / 2.0).round());
    let ports = [backend, gw, ngx, hap, cdy];
    let targets: Vec<(&str, u16)> = runs.iter().map(|r| r.name.as_str()).zip(ports).collect();
    let fixed = crate::bench_gateway_rate::fixed_rate(&targets, rate, seconds)?;
    let ns = table_match_ns()?;
    let _ = std::fs::remove_dir_all(&dir);

    print_table(&runs, &fixed, seconds, repeat, ns);
    Ok(())
}

/// One table: wrk's closed-loop figures and the fixed-rate ones per target,
/// then the ratios and the exact load commands.
fn print_table(
    runs: &[Run],
    fixed: &[crate::loadgen::Report],
    seconds: u64,
    repeat: usize,
    match_ns: f64,
) {
    let bronze = runs[1].rps;
    let rate = fixed.first().map_or(0.0, |r| r.plan.rate);
    println!(
        "\none route to one nginx backend; {} cores\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "| target | requests/s | p50 | p99 | bronze-gateway / this | server CPU per request | at {rate:.0}/s: achieved | p50 | p99 | p99.9 | max |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, r) in runs.iter().enumerate() {
        println!(
            "| {} | {:.0} | {:.2} ms | {:.2} ms | {:.2}x | {:.1} us | {} |",
            r.name,
            r.rps,
            r.p50_ms,
            r.p99_ms,
            bronze / r.rps,
            r.cpu_us,
            fixed.get(i).map_or_else(
                || "- | - | - | - | -".into(),
                crate::bench_gateway_rate::columns
            )
        );
    }
    println!(
        "\nbronze-gateway: {:.2}x nginx, {:.2}x HAProxy, {:.2}x Caddy",
        bronze / runs[2].rps,
        bronze / runs[3].rps,
        bronze / runs[4].rps
    );
    let cpu = runs[1].cpu_us;
    println!(
        "CPU per proxied request: bronze-gateway {cpu:.1} us; nginx needs {:.2}x that, HAProxy {:.2}x, Caddy {:.2}x",
        runs[2].cpu_us / cpu,
        runs[3].cpu_us / cpu,
        runs[4].cpu_us / cpu
    );
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    println!(
        "{}",
        crate::bench_gateway_rate::generator_note(&names, fixed)
    );
    println!("routing table of 10,000 routes: {match_ns:.0} ns per match");
    println!("\ncommands (every target in turn; configs written by xtask/src/bench_gateway.rs):");
    println!(
        "  requests/s, p50, p99: wrk -t1 -c50 -d2s URL (warm-up), then wrk -t1 -c50 -d{seconds}s --latency URL;\n  every target in turn, {} rounds, each target's median round shown (--runs)",
        repeat.max(1)
    );
    if let Some(r) = fixed.first() {
        println!(
            "  fixed rate: 1 s warm-up, then {}",
            r.plan
                .describe()
                .replace(&r.plan.addr.to_string(), "TARGET")
        );
    }
    println!(
        "  bronze-gateway --workers 1 --data-dir '' --declarative-config kong.json (RUST_LOG=error)"
    );
    println!(
        "  nginx -p DIR -c nginx.conf (worker_processes 1, upstream keepalive 64, access_log off)"
    );
    println!("  haproxy -f haproxy.cfg (nbthread 1, http-reuse always, no log)");
    println!(
        "  GOMAXPROCS=1 caddy run --adapter caddyfile --config Caddyfile (admin off, keepalive_idle_conns 64)"
    );
    if let Some(p) = runs.get(5) {
        println!(
            "bronze-gateway with key-auth, rate-limiting and prometheus: {:.2}x plain nginx (goal: 0.9x)",
            p.rps / runs[2].rps
        );
    }
}
