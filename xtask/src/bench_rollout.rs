//! `cargo xtask bench rollout`: a health-gated rolling update under
//! constant load, Bronze against Docker swarm mode on this engine, same
//! image, same settings, same run.
//!
//! One stack file for both, deployed by each one's `stack deploy`: 20
//! replicas of the busybox httpd test image serving `/version` (its
//! `$VERSION`, interpolated from the environment), a HEALTHCHECK (`test -f
//! /www/health`, every 500 ms, 2 s timeout, 3 retries: a loaded 2-core
//! host runs some checks late), a 1 s stop grace (busybox as PID 1 ignores
//! SIGTERM), port 8080 published without a fixed host port, Traefik v1
//! routing labels under `deploy.labels` (Swarm ignores them), and an
//! update of parallelism 2, start-first, Swarm's default monitor (5 s) and
//! failure action (pause). The update deploys the same file with another
//! `VERSION`.
//!
//! * **Bronze**: discovery, a registrator, the gateway (routing by the
//!   Traefik labels the registrator copied from the tasks), the scheduler
//!   following discovery, one agent: release binaries in their own
//!   processes; `bronze stack deploy --detach`. Load through the gateway.
//! * **Engine alone**: the floor, no orchestrator: the same start-first
//!   update by hand with the docker CLI (see [`engine_alone`]), no load.
//! * **Swarm**: `docker swarm init`, `docker stack deploy` (the port in
//!   ingress mode: Swarm picks the published port). Load through the
//!   ingress published port.
//!
//! The load: the open-loop generator at a fixed rate (GET /version), in
//! one-second runs back to back from before the update until it completed;
//! errors and non-2xx answers counted. Timed: the update, from the deploy
//! command to the service's update status `completed` (both polled the same
//! way). The engine is left as found (`docker swarm leave --force`).

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bronze_proto::scheduler::v1 as pb;

use crate::bench_util::{
    Health, OneNode, docker, engine_run, engine_run_many, free_port, remove_labelled, spawn,
    swarm_inactive, swarm_init, swarm_leave, wait_healthy,
};
use crate::loadgen::{self, Plan};

const IMAGE: &str = "bronze-test/busybox-httpd:latest";
const REPLICAS: u64 = 20;
const RATE: f64 = 200.0;
const POLL: Duration = Duration::from_millis(100);
const LIMIT: Duration = Duration::from_secs(600);

/// What one side did.
struct Outcome {
    update: f64,
    /// Whether the load ran (Swarm's ingress needs the kernel's IPVS;
    /// without it the published port never answers, and only the update's
    /// time is measured).
    loaded: bool,
    requests: u64,
    /// Connection errors and non-2xx answers.
    failed: u64,
    /// Not answered within a second after their run ended (slow, not
    /// failed: the generator stops waiting).
    late: u64,
}

/// Load on `ip:port` (GET `path`) from a thread until `stop`: one-second
/// runs back to back. Returns (requests, failed, late).
fn load(
    ip: std::net::IpAddr,
    port: u16,
    path: &str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64, u64)> {
    let plan = Plan {
        addr: std::net::SocketAddr::new(ip, port),
        host: format!("{ip}:{port}"),
        path: path.into(),
        rate: RATE,
        connections: 10,
        threads: 1,
        duration: Duration::from_secs(1),
        requests_per_connection: None,
    };
    std::thread::spawn(move || {
        let (mut total, mut failed, mut late) = (0, 0, 0);
        while !stop.load(Ordering::Relaxed) {
            match loadgen::run(&plan) {
                Ok(r) => {
                    total += r.completed + r.errors + r.unfinished;
                    failed += r.non_2xx + r.errors;
                    late += r.unfinished;
                }
                Err(_) => failed += 1,
            }
        }
        (total, failed, late)
    })
}

/// The stack file both deploy; `$VERSION` comes from the environment.
fn stack_file() -> String {
    format!(
        r#"version: "3.8"
services:
  web:
    image: {IMAGE}
    command: ["sh", "-c", "/bin/busybox echo $$VERSION > /www/version && exec /bin/busybox httpd -f -p 8080 -h /www"]
    environment:
      VERSION: "${{VERSION:?the version to serve}}"
    healthcheck:
      test: ["CMD", "/bin/busybox", "test", "-f", "/www/health"]
      interval: 500ms
      timeout: 2s
      retries: 3
    stop_grace_period: 1s
    ports:
      - target: 8080
    deploy:
      replicas: {REPLICAS}
      update_config:
        parallelism: 2
        order: start-first
      labels:
        - "traefik.frontend.rule=PathPrefix:/"
        - "traefik.port=8080"
"#
    )
}

/// Writes the stack file into a fresh directory; returns its path.
fn write_stack(dir: &std::path::Path) -> anyhow::Result<String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let path = dir.join("stack.yml");
    std::fs::write(&path, stack_file())?;
    Ok(path.display().to_string())
}

/// Runs a `stack deploy` command line with `VERSION` set.
fn deploy(program: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .with_context(|| format!("{}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} {}: {}{}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

async fn swarm() -> anyhow::Result<Outcome> {
    let d = crate::images::docker().await?;
    let made_gwbridge = swarm_init()?;
    let result = async {
        let dir = std::env::temp_dir().join(format!("bronze-bench-rollout-{}", std::process::id()));
        let file = write_stack(&dir)?;
        let args = [
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-c",
            &file,
            "bench",
        ];
        let docker_bin = std::path::Path::new("docker");
        deploy(docker_bin, &args, &[("VERSION", "v1")])?;
        let service = "bench_web";
        let running = || async {
            let filters: HashMap<String, Vec<String>> = [
                ("service".to_string(), vec![service.to_string()]),
                ("desired-state".to_string(), vec!["running".to_string()]),
            ]
            .into();
            d.list_tasks(Some(bollard::query_parameters::ListTasksOptions {
                filters: Some(filters),
            }))
            .await
            .unwrap_or_default()
            .iter()
            .filter(|t| {
                t.status.as_ref().and_then(|s| s.state) == Some(bollard::models::TaskState::RUNNING)
            })
            .count() as u64
        };
        let t0 = Instant::now();
        while running().await < REPLICAS {
            if t0.elapsed() > LIMIT {
                bail!("swarm did not converge");
            }
            tokio::time::sleep(POLL).await;
        }
        // The port Swarm published for 8080.
        let port: u16 = docker(&[
            "service",
            "inspect",
            service,
            "--format",
            "{{(index .Endpoint.Ports 0).PublishedPort}}",
        ])?
        .trim()
        .parse()
        .context("swarm's published port")?;
        // The ingress answers before the load starts: on loopback where the
        // kernel lets Docker's DNAT reach it (route_localnet), else on the
        // host's end of docker_gwbridge, the bridge `swarm init` made.
        let gwbridge: Option<std::net::IpAddr> = docker(&[
            "network",
            "inspect",
            "docker_gwbridge",
            "--format",
            "{{(index .IPAM.Config 0).Gateway}}",
        ])
        .ok()
        .and_then(|s| s.trim().parse().ok());
        let mut candidates = vec![std::net::IpAddr::from([127, 0, 0, 1])];
        candidates.extend(gwbridge);
        let t0 = Instant::now();
        let ip = 'found: loop {
            for ip in &candidates {
                if answers(*ip, port).await.is_some() {
                    break 'found Some(*ip);
                }
            }
            if t0.elapsed() > Duration::from_secs(30) {
                let ipvs = std::path::Path::new("/proc/net/ip_vs").exists();
                eprintln!(
                    "swarm's ingress does not answer on {candidates:?} port {port} \
                     (the kernel's IPVS, which the routing mesh needs, is {}): \
                     timing swarm's update without load",
                    if ipvs { "present" } else { "absent" }
                );
                break 'found None;
            }
            tokio::time::sleep(POLL).await;
        };
        let stop = Arc::new(AtomicBool::new(false));
        let loader = ip.map(|ip| load(ip, port, "/version", stop.clone()));
        if loader.is_some() {
            std::thread::sleep(Duration::from_secs(2));
        }
        let t1 = Instant::now();
        deploy(docker_bin, &args, &[("VERSION", "v2")])?;
        loop {
            let s = d
                .inspect_service(
                    service,
                    None::<bollard::query_parameters::InspectServiceOptions>,
                )
                .await?;
            let done = s
                .update_status
                .and_then(|u| u.state)
                .is_some_and(|st| st == bollard::models::ServiceUpdateStatusStateEnum::COMPLETED);
            if done {
                break;
            }
            if t1.elapsed() > LIMIT {
                bail!("swarm did not finish the update");
            }
            tokio::time::sleep(POLL).await;
        }
        let update = t1.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let loaded = loader.is_some();
        let (requests, failed, late) = match loader {
            Some(l) => l.join().map_err(|_| anyhow::anyhow!("load thread"))?,
            None => (0, 0, 0),
        };
        docker(&["stack", "rm", "bench"])?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Outcome {
            update,
            loaded,
            requests,
            failed,
            late,
        })
    }
    .await;
    // Leaves the engine as found, containers of the stack included.
    swarm_leave(made_gwbridge);
    result
}

async fn answers(ip: std::net::IpAddr, port: u16) -> Option<()> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((ip, port)),
    )
    .await
    .ok()?
    .ok()?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /version HTTP/1.0\r\n\r\n").await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .is_some_and(|l| l.starts_with("HTTP/1.") && l.contains(" 200"))
        .then_some(())
}

async fn bronze(bin: &std::path::Path) -> anyhow::Result<Outcome> {
    let dir = std::env::temp_dir().join(format!("bronze-bench-rollout-b-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (node, mut c) = OneNode::start(bin, &dir, "bench-rollout", false).await?;
    let (gw, admin) = (free_port()?, free_port()?);
    let s = |v: &str| v.to_string();
    let _gateway = spawn(
        bin,
        "bronze-gateway",
        &[
            s("--addr"),
            format!("127.0.0.1:{gw}"),
            s("--admin-addr"),
            format!("127.0.0.1:{admin}"),
            s("--data-dir"),
            s(""),
            s("--discovery"),
            node.discovery.clone(),
        ],
    )?;
    let url = node.scheduler.clone();
    let file = write_stack(&dir.join("stack"))?;
    let cli = bin.join("bronze");
    let stack = format!("bench{}", std::process::id());
    let args = [
        "stack",
        "deploy",
        "--detach",
        "--resolve-image",
        "never",
        "-c",
        &file,
        &stack,
    ];
    let env = |version| [("BRONZE_SCHEDULER", url.as_str()), ("VERSION", version)];
    deploy(&cli, &args, &env("v1"))?;
    let name = format!("{stack}_web");
    let status = |c: &mut pb::scheduler_client::SchedulerClient<tonic::transport::Channel>| {
        let mut c = c.clone();
        let name = name.clone();
        async move {
            c.get_service(pb::GetServiceRequest { service: name })
                .await
                .map(|r| r.into_inner())
                .ok()
        }
    };
    let t0 = Instant::now();
    loop {
        let r = status(&mut c).await;
        if r.as_ref()
            .and_then(|r| r.status.as_ref())
            .is_some_and(|s| s.converged)
        {
            break;
        }
        if t0.elapsed() > LIMIT {
            bail!("bronze did not converge");
        }
        tokio::time::sleep(POLL).await;
    }
    // Every replica routed by the gateway before the load starts.
    let t0 = Instant::now();
    let lo = std::net::IpAddr::from([127, 0, 0, 1]);
    while answers(lo, gw).await.is_none() {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("the gateway does not route to the service");
        }
        tokio::time::sleep(POLL).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(lo, gw, "/version", stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t1 = Instant::now();
    deploy(&cli, &args, &env("v2"))?;
    loop {
        let r = status(&mut c).await;
        let done = r.as_ref().is_some_and(|r| {
            r.service
                .as_ref()
                .and_then(|s| s.update_status.as_ref())
                .is_some_and(|u| u.state == "completed")
                && r.status.as_ref().is_some_and(|s| s.converged)
        });
        if done {
            break;
        }
        let update = r
            .as_ref()
            .and_then(|r| r.service.as_ref())
            .and_then(|s| s.update_status.clone())
            .unwrap_or_default();
        if matches!(
            update.state.as_str(),
            "paused" | "rollback_started" | "rollback_paused"
        ) {
            bail!("bronze's update {}: {}", update.state, update.message);
        }
        if t1.elapsed() > LIMIT {
            bail!(
                "bronze did not finish the update: {} ({}); {:?}",
                update.state,
                update.message,
                r.and_then(|r| r.status)
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let update = t1.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (requests, failed, late) = loader.join().map_err(|_| anyhow::anyhow!("load thread"))?;
    c.remove_service(pb::RemoveServiceRequest {
        service: name.clone(),
    })
    .await?;
    let d = crate::images::docker().await?;
    let t0 = Instant::now();
    loop {
        let filters: HashMap<String, Vec<String>> = [(
            "label".to_string(),
            vec![format!("bronze.service.name={name}")],
        )]
        .into();
        let left = d
            .list_containers(Some(
                bollard::query_parameters::ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        if left.is_empty() || t0.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Outcome {
        update,
        loaded: true,
        requests,
        failed,
        late,
    })
}

/// The engine alone, no orchestrator: the same update done by hand with
/// the docker CLI. 20 containers of the image with the stack's health
/// check; then ten batches: start two new ones, wait (polling every 50 ms)
/// until both are healthy, and stop the two old ones (1 s grace) in the
/// background while the next batch starts, as start-first does. Returns
/// the batches' seconds; both orchestrators then watch the last tasks for
/// the monitor window (5 s) before they call the update complete.
fn engine_alone() -> anyhow::Result<f64> {
    const LABEL: &str = "bronze-bench-rollout-floor";
    let health = Health {
        cmd: "/bin/busybox test -f /www/health",
        interval: "500ms",
        timeout: "2s",
        retries: 3,
    };
    let result = (|| {
        let mut old = Vec::new();
        for _ in 0..REPLICAS {
            old.push(engine_run(LABEL, IMAGE, &health)?);
        }
        let t0 = Instant::now();
        let mut stops = Vec::new();
        for batch in old.chunks(2) {
            let new = engine_run_many(batch.len(), LABEL, IMAGE, &health)?;
            wait_healthy(&new, t0 + LIMIT)?;
            let batch = batch.to_vec();
            stops.push(std::thread::spawn(move || {
                let mut args = vec!["stop"];
                args.extend(batch.iter().map(String::as_str));
                docker(&args).map(|_| ())
            }));
        }
        let took = t0.elapsed().as_secs_f64();
        for s in stops {
            let _ = s.join();
        }
        Ok(took)
    })();
    remove_labelled(LABEL);
    result
}

pub async fn run(runs: usize) -> anyhow::Result<()> {
    swarm_inactive()?;
    crate::images::build_busybox_httpd(IMAGE).await?;
    let bin = crate::build_packages(
        &[
            "bronze-discovery",
            "bronze-registrator",
            "bronze-gateway",
            "bronze-scheduler",
            "bronze-agent",
            "bronze",
        ],
        crate::Profile::Release,
    )?;
    println!(
        "rollout: {REPLICAS} replicas, health-gated update (parallelism 2, start-first, monitor 5s) \
         under {RATE:.0} requests/s; {runs} runs each, alternating"
    );
    println!("run | who | update s | requests | failed | late (>1 s)");
    let (mut b, mut s, mut e) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let floor = engine_alone()?;
        println!("{run} | engine alone (by hand, no load) | {floor:.2} + 5 (monitor) | - | - | -");
        e.push(floor + 5.0);
        let o = bronze(&bin).await?;
        println!(
            "{run} | bronze (gateway) | {:.2} | {} | {} | {}",
            o.update, o.requests, o.failed, o.late
        );
        b.push(o);
        let o = swarm().await?;
        if o.loaded {
            println!(
                "{run} | swarm (ingress) | {:.2} | {} | {} | {}",
                o.update, o.requests, o.failed, o.late
            );
        } else {
            println!(
                "{run} | swarm (no load: ingress unreachable) | {:.2} | - | - | -",
                o.update
            );
        }
        s.push(o);
    }
    let median = |v: &[Outcome]| {
        let mut t: Vec<f64> = v.iter().map(|o| o.update).collect();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let failed = |v: &[Outcome]| v.iter().map(|o| o.failed).sum::<u64>();
    let requests = |v: &[Outcome]| v.iter().map(|o| o.requests).sum::<u64>();
    e.sort_by(f64::total_cmp);
    let floor = e[e.len() / 2];
    println!(
        "median update: bronze {:.2} s, swarm {:.2} s: {:.2}x (goal: at most 0.5x); \
         the engine alone {floor:.2} s: {:.2}x",
        median(&b),
        median(&s),
        median(&b) / median(&s),
        floor / median(&s)
    );
    if s.iter().all(|o| o.loaded) {
        println!(
            "failed requests: bronze {} of {}, swarm {} of {} (goal: zero for bronze)",
            failed(&b),
            requests(&b),
            failed(&s),
            requests(&s)
        );
    } else {
        println!(
            "failed requests: bronze {} of {} (goal: zero); swarm's ingress did not answer here",
            failed(&b),
            requests(&b)
        );
    }
    Ok(())
}
