//! `cargo xtask bench e2e`: the seeds' flow (`tests/e2e/seeds.rs`) timed
//! phase by phase, Bronze against Docker swarm mode with nginx in front,
//! on this machine's engine, in the same run, alternating which goes first.
//!
//! One stack file for both (the seeds' file: 3 replicas, a health check
//! on `/www/ready`, a Traefik v1 routing label, start-first updates of
//! parallelism 1 that roll back on failure, a 2 s monitor), its port 8080
//! published in `mode: host` without a host port: this kernel has no IPVS,
//! so Swarm's ingress routing mesh never answers (see the rollout bench),
//! and each task gets a port of its own. The app is the busybox httpd test
//! image serving `/version`, built offline in three versions; v3 lacks
//! `/www/ready`, so it never turns healthy.
//!
//! * **Bronze**: `bronze dev --ephemeral` (release build; every component
//!   in one process): `docker push` to its registry, `bronze stack deploy
//!   --stable 1s`, answers through its gateway (`/app/version`, routed by
//!   the Traefik label).
//! * **Swarm**: `docker swarm init` on loopback, Debian's docker-registry
//!   (distribution), `docker stack deploy`, answers through Debian's nginx
//!   (`location /app/` to an upstream of the tasks' published ports). What
//!   Traefik's swarm provider does for a Swarm stack, a router here does
//!   for nginx: it lists the service's tasks (desired and current state
//!   running, so health-gated) every 100 ms (Traefik's default is 15 s),
//!   rewrites the upstream when the set of ports changes and reloads
//!   nginx (SIGHUP: old workers finish their requests).
//! * **Engine alone**: the floor, no orchestrator: 3 containers of the app
//!   started at once with the stack's health check, timed until all are
//!   healthy; and one alone (a start-first update of parallelism 1 waits
//!   for one such container per replica).
//!
//! Phases, each timed from its command: (1) `docker push` of v1; (2) the
//! deploy of v1 to the first 200 through the front; (3) the deploy of v2
//! under load to every answer being v2 and the deploy command returned;
//! (4) the deploy of v3 under load: Bronze's deploy rolls back by itself
//! and exits non-zero, Swarm reports `rollback_completed`; v2 must still
//! be served. Load: 2 clients, each at most 100 requests/s (keep-alive,
//! 2 s timeout), loopback only; failed = errors, timeouts and non-200
//! answers. Everything started is stopped, also on error: containers,
//! services, the swarm (and the docker_gwbridge it made), processes,
//! image tags.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bollard::models::{ServiceUpdateStatusStateEnum as UpdateState, TaskState};

use crate::bench_util::{
    Health, docker, engine_run_many, remove_labelled, spawn_distribution, swarm_inactive,
    swarm_init, swarm_leave, wait_healthy,
};
use crate::clients::{Clients, Tally};
use crate::dev::Dev;
use crate::images::SEEDS_STACK;

/// The app's three versions, built once: (version, has `/www/ready`).
const VERSIONS: [(&str, bool); 3] = [("v1", true), ("v2", true), ("v3", false)];
/// Where they are built, before each registry's tag.
const BUILT: &str = "bronze-bench/e2e-app";
const CLIENTS: usize = 2;
const RATE_PER_CLIENT: f64 = 100.0;
const BUDGET: u64 = 400_000;
const POLL: Duration = Duration::from_millis(50);
/// Swarm's router: how often it lists the tasks.
const ROUTER_POLL: Duration = Duration::from_millis(100);
const LIMIT: Duration = Duration::from_secs(300);
/// How long the answers must have been the wanted version, after the
/// orchestrator said it was done, before the load stops.
const SETTLE: Duration = Duration::from_secs(1);

/// The seeds' stack file, its port in host mode (Swarm's ingress needs
/// IPVS) and its rollback start-first (Swarm's default rollback order is
/// stop-first).
fn stack_file() -> anyhow::Result<String> {
    const PORT: &str = "      - target: 8080\n";
    if !SEEDS_STACK.contains(PORT) {
        bail!("the seeds' stack file no longer publishes 8080 as this bench expects");
    }
    let mut s = SEEDS_STACK.replace(PORT, &format!("{PORT}        mode: host\n"));
    s.push_str("      rollback_config:\n        parallelism: 1\n        order: start-first\n");
    Ok(s)
}

/// The same health check, for the engine alone.
const HEALTH: Health = Health {
    cmd: "/bin/busybox test -f /www/ready",
    interval: "500ms",
    timeout: "2s",
    retries: 2,
};

/// One side's run.
#[derive(Default)]
struct Phases {
    push: f64,
    first_answer: f64,
    update: f64,
    update_load: Tally,
    rollback: f64,
    rollback_load: Tally,
    /// The update's parts: (answers all v2, the deploy command returned,
    /// the orchestrator reported it completed), for the analysis.
    update_parts: (f64, f64, f64),
}

/// What one deploy under load gave: seconds from the command to its
/// return, to the orchestrator's "done", and to the first answer of the
/// final unbroken run of the wanted body (0 when it never changed).
struct UnderLoad {
    returned: f64,
    done: f64,
    settled: f64,
    deploy: std::process::Output,
    load: Tally,
}

/// `docker push` of v1 (timed), then v2 and v3, to `registry`; the tags
/// are added to `tags` (removed at the end).
fn push_all(registry: &str, tags: &mut Vec<String>) -> anyhow::Result<f64> {
    let mut v1 = 0.0;
    for (version, _) in VERSIONS {
        let tag = format!("{registry}/seeds/app:{version}");
        docker(&["tag", &format!("{BUILT}:{version}"), &tag])?;
        tags.push(tag.clone());
        let t0 = Instant::now();
        docker(&["push", "-q", &tag])?;
        if version == "v1" {
            v1 = t0.elapsed().as_secs_f64();
        }
    }
    Ok(v1)
}

/// Polls `url` until it answers 200; seconds since `t0`.
async fn first_answer(url: &str, t0: Instant) -> anyhow::Result<f64> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    loop {
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return Ok(t0.elapsed().as_secs_f64());
        }
        if t0.elapsed() > LIMIT {
            bail!("no answer through {url} within {LIMIT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The body `url` answers now (trimmed), if 200.
async fn serves(url: &str) -> Option<String> {
    let r = reqwest::get(url).await.ok()?;
    (r.status() == 200)
        .then_some(())
        .and(r.text().await.ok())
        .map(|b| b.trim().to_string())
}

/// Starts the load through `url` and waits until it has seen only
/// `before` for [`SETTLE`]; then runs `deploy` and waits until it
/// returned, `done()` holds (polled) and the answers have been `want`
/// only for [`SETTLE`]; errors if `done()` does.
async fn under_load<D, Fut>(
    url: &str,
    [before, want]: [&str; 2],
    mut deploy: Command,
    mut done: D,
) -> anyhow::Result<UnderLoad>
where
    D: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let load = Clients::start_paced(url, CLIENTS, BUDGET, RATE_PER_CLIENT);
    // The load reaches its pace before the deploy.
    let t = Instant::now();
    while !load.settled_on(before, SETTLE) {
        if t.elapsed() > LIMIT {
            bail!("{url} does not serve {before} before the deploy");
        }
        tokio::time::sleep(POLL).await;
    }
    let t0 = Instant::now();
    let mut child = tokio::task::spawn_blocking(move || deploy.output());
    let (mut returned, mut done_at) = (None, None);
    let mut output = None;
    loop {
        if returned.is_none() && child.is_finished() {
            returned = Some(t0.elapsed().as_secs_f64());
            output = Some((&mut child).await?.context("running the deploy")?);
        }
        if done_at.is_none() && done().await? {
            done_at = Some(t0.elapsed().as_secs_f64());
        }
        if returned.is_some() && done_at.is_some() && load.settled_on(want, SETTLE) {
            break;
        }
        if t0.elapsed() > LIMIT {
            bail!("not done within {LIMIT:?} (returned: {returned:?}, done: {done_at:?})");
        }
        tokio::time::sleep(POLL).await;
    }
    let (load, since) = load.finish_settled().await;
    let settled = since.map_or(0.0, |s| {
        s.checked_duration_since(t0)
            .unwrap_or_default()
            .as_secs_f64()
    });
    Ok(UnderLoad {
        returned: returned.unwrap_or_default(),
        done: done_at.unwrap_or_default(),
        settled,
        deploy: output.context("the deploy's output")?,
        load,
    })
}

fn said(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Removes what a side left: containers of the stack, image tags.
struct Leftovers {
    stack: String,
    tags: Vec<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        remove_labelled(&format!("com.docker.stack.namespace={}", self.stack));
        for tag in &self.tags {
            let _ = docker(&["rmi", tag]);
        }
    }
}

async fn bronze(bin: &Path, dir: &Path) -> anyhow::Result<Phases> {
    std::fs::create_dir_all(dir)?;
    let mut dev = Dev::start(bin, &dir.join("dev.log"), &["--ephemeral"], dir)?;
    let stack = format!("e2eb{}", std::process::id());
    let mut left = Leftovers {
        stack: stack.clone(),
        tags: Vec::new(),
    };
    let result = async {
        let registry = format!("127.0.0.1:{}", dev.registry.port());
        let mut p = Phases {
            push: push_all(&registry, &mut left.tags)?,
            ..Phases::default()
        };
        let file = dir.join("stack.yml");
        std::fs::write(&file, stack_file()?)?;
        let file = file.display().to_string();
        let deploy = |version: &str| {
            let mut c = Command::new(bin.join("bronze"));
            c.env("BRONZE_SCHEDULER", &dev.scheduler)
                .env("REGISTRY", &registry)
                .env("VERSION", version)
                .args(["stack", "deploy", "--stable", "1s", "-c", &file, &stack]);
            c
        };
        let url = format!("http://{}/app/version", dev.gateway);

        let t0 = Instant::now();
        let mut v1 = deploy("v1");
        let v1 = tokio::task::spawn_blocking(move || v1.output());
        p.first_answer = first_answer(&url, t0).await?;
        let out = v1.await?.context("bronze stack deploy")?;
        if !out.status.success() {
            bail!("bronze stack deploy v1: {}", said(&out));
        }

        let u = under_load(&url, ["v1", "v2"], deploy("v2"), || async { Ok(true) }).await?;
        if !u.deploy.status.success() {
            bail!("bronze stack deploy v2: {}", said(&u.deploy));
        }
        p.update = u.returned.max(u.settled);
        p.update_parts = (u.settled, u.returned, u.returned);
        p.update_load = u.load;

        let u = under_load(&url, ["v2", "v2"], deploy("v3"), || async { Ok(true) }).await?;
        if u.deploy.status.success() {
            bail!("bronze stack deploy v3 succeeded: {}", said(&u.deploy));
        }
        if serves(&url).await.as_deref() != Some("v2") {
            bail!("v2 is not served after the rollback");
        }
        p.rollback = u.returned;
        p.rollback_load = u.load;
        Ok(p)
    }
    .await;
    let _ = dev.terminate(Duration::from_secs(30));
    drop(left);
    result
}

/// The published ports of the service's running tasks (sorted).
async fn running_ports(d: &bollard::Docker, service: &str) -> Vec<u16> {
    let filters: HashMap<String, Vec<String>> = [
        ("service".to_string(), vec![service.to_string()]),
        ("desired-state".to_string(), vec!["running".to_string()]),
    ]
    .into();
    let tasks = d
        .list_tasks(Some(bollard::query_parameters::ListTasksOptions {
            filters: Some(filters),
        }))
        .await
        .unwrap_or_default();
    let mut ports: Vec<u16> = tasks
        .iter()
        .filter_map(|t| t.status.as_ref())
        .filter(|s| s.state == Some(TaskState::RUNNING))
        .filter_map(|s| s.port_status.as_ref()?.ports.as_ref())
        .flatten()
        .filter_map(|p| u16::try_from(p.published_port?).ok())
        .collect();
    ports.sort_unstable();
    ports
}

/// The nginx upstream for these ports (none: one server marked down,
/// which answers 502).
fn upstream(ports: &[u16]) -> String {
    if ports.is_empty() {
        return "server 127.0.0.1:9 down;\n".into();
    }
    ports
        .iter()
        .map(|p| format!("server 127.0.0.1:{p};\n"))
        .collect()
}

/// Swarm's router: until `stop`, keeps nginx's upstream file at `file`
/// equal to the service's running tasks' ports, reloading nginx (`pid`)
/// on every change.
fn router(
    d: bollard::Docker,
    service: String,
    file: PathBuf,
    pid: u32,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let mut current = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let ports = running_ports(&d, &service).await;
            if ports != current {
                std::fs::write(&file, upstream(&ports))?;
                let ok = Command::new("kill")
                    .args(["-HUP", &pid.to_string()])
                    .status()?
                    .success();
                if !ok {
                    bail!("reloading nginx ({pid})");
                }
                current = ports;
            }
            tokio::time::sleep(ROUTER_POLL).await;
        }
        Ok(())
    })
}

async fn swarm(dir: &Path) -> anyhow::Result<Phases> {
    std::fs::create_dir_all(dir)?;
    let made_gwbridge = swarm_init()?;
    let stack = format!("e2es{}", std::process::id());
    let mut left = Leftovers {
        stack: stack.clone(),
        tags: Vec::new(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let result = async {
        let d = crate::images::docker().await?;
        let (_registry, port) = spawn_distribution(&dir.join("registry"))?;
        let registry = format!("127.0.0.1:{port}");
        let mut p = Phases {
            push: push_all(&registry, &mut left.tags)?,
            ..Phases::default()
        };
        let front = crate::bench_util::free_port()?;
        let upstream_file = dir.join("upstream.conf");
        std::fs::write(&upstream_file, upstream(&[]))?;
        let nginx = crate::bench_gateway::nginx(
            dir,
            "nginx",
            &format!(
                "upstream app {{\n include {};\n}}\n\
                 server {{\n listen 127.0.0.1:{front};\n location /app/ {{\n  \
                 proxy_pass http://app/;\n  proxy_connect_timeout 1s;\n }}\n}}\n",
                upstream_file.display()
            ),
        )?;
        let service = format!("{stack}_app");
        let routing = router(
            d.clone(),
            service.clone(),
            upstream_file.clone(),
            nginx.0.id(),
            stop.clone(),
        );
        let url = format!("http://127.0.0.1:{front}/app/version");
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", front)).is_err() {
            if t.elapsed() > Duration::from_secs(30) {
                bail!("nginx does not listen on 127.0.0.1:{front}");
            }
            tokio::time::sleep(POLL).await;
        }
        let file = dir.join("stack.yml");
        std::fs::write(&file, stack_file()?)?;
        let file = file.display().to_string();
        let deploy = |version: &str| {
            let mut c = Command::new("docker");
            c.env("REGISTRY", &registry)
                .env("VERSION", version)
                .args(["stack", "deploy", "-c", &file, &stack]);
            c
        };
        let update_state = || {
            let (d, service) = (d.clone(), service.clone());
            async move {
                let s = d
                    .inspect_service(
                        &service,
                        None::<bollard::query_parameters::InspectServiceOptions>,
                    )
                    .await?;
                let u = s.update_status.unwrap_or_default();
                anyhow::Ok((u.state, u.message.unwrap_or_default()))
            }
        };

        let t0 = Instant::now();
        let out = deploy("v1").output()?;
        if !out.status.success() {
            bail!("docker stack deploy v1: {}", said(&out));
        }
        p.first_answer = first_answer(&url, t0).await?;

        let u = under_load(&url, ["v1", "v2"], deploy("v2"), || async {
            let (state, message) = update_state().await?;
            match state {
                Some(UpdateState::COMPLETED) => Ok(true),
                Some(UpdateState::UPDATING) | None => Ok(false),
                Some(other) => bail!("swarm's update to v2: {other:?} ({message})"),
            }
        })
        .await?;
        if !u.deploy.status.success() {
            bail!("docker stack deploy v2: {}", said(&u.deploy));
        }
        p.update = u.returned.max(u.settled);
        p.update_parts = (u.settled, u.returned, u.done);
        p.update_load = u.load;

        let u = under_load(&url, ["v2", "v2"], deploy("v3"), || async {
            let (state, message) = update_state().await?;
            match state {
                Some(UpdateState::ROLLBACK_COMPLETED) => Ok(true),
                Some(UpdateState::PAUSED | UpdateState::ROLLBACK_PAUSED) => {
                    bail!("swarm's update to v3 paused: {message}")
                }
                _ => Ok(false),
            }
        })
        .await?;
        if serves(&url).await.as_deref() != Some("v2") {
            bail!("v2 is not served after swarm's rollback");
        }
        p.rollback = u.returned.max(u.done);
        p.rollback_load = u.load;
        stop.store(true, Ordering::Relaxed);
        routing.await??;
        let _ = docker(&["stack", "rm", &stack]);
        drop(nginx);
        Ok(p)
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    swarm_leave(made_gwbridge);
    drop(left);
    result
}

/// The engine alone: seconds for `n` containers of the app, started at
/// once with the stack's health check, to be healthy.
fn engine_alone(n: usize) -> anyhow::Result<f64> {
    const LABEL: &str = "bronze-bench-e2e-floor";
    let result = (|| {
        let t0 = Instant::now();
        let ids = engine_run_many(n, LABEL, &format!("{BUILT}:v1"), &HEALTH)?;
        wait_healthy(&ids, t0 + LIMIT)?;
        Ok(t0.elapsed().as_secs_f64())
    })();
    remove_labelled(LABEL);
    result
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn run(runs: usize) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs: expected at least 1");
    }
    swarm_inactive()?;
    // reqwest (the load's clients) is built without a default one.
    bronze_runtime::install_crypto_provider();
    crate::prerequisites::apt(&[
        ("docker-registry", "docker-registry"),
        ("nginx", "nginx-light"),
    ])?;
    crate::images::build_busybox_httpd("bronze-test/busybox-httpd:latest").await?;
    for (version, ready) in VERSIONS {
        crate::images::build_app(&format!("{BUILT}:{version}"), version, ready).await?;
    }
    let bin = crate::build_packages(&["bronze"], crate::Profile::Release)?;
    let dir = std::env::temp_dir().join(format!("bronze-bench-e2e-{}", std::process::id()));
    let result = measure(&bin, &dir, runs).await;
    let _ = std::fs::remove_dir_all(&dir);
    for (version, _) in VERSIONS {
        let _ = docker(&["rmi", &format!("{BUILT}:{version}")]);
    }
    result
}

async fn measure(bin: &Path, dir: &Path, runs: usize) -> anyhow::Result<()> {
    println!(
        "e2e: the seeds' flow, 3 replicas; load {CLIENTS} clients x {RATE_PER_CLIENT:.0} requests/s; \
         {runs} runs, alternating which side goes first"
    );
    println!(
        "run | who | push v1 s | deploy to first 200 s | update to all v2 s (failed/requests) | \
         rollback s (failed/requests)"
    );
    let (mut b, mut s, mut floor3, mut floor1) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let row = |run: usize, who: &str, p: &Phases| {
        let (all_v2, returned, done) = p.update_parts;
        println!(
            "{run} | {who} | {:.2} | {:.2} | {:.2} [all v2 {all_v2:.2}, command returned \
             {returned:.2}, reported completed {done:.2}] ({}/{}) | {:.2} ({}/{})",
            p.push,
            p.first_answer,
            p.update,
            p.update_load.failed,
            p.update_load.ok + p.update_load.failed,
            p.rollback,
            p.rollback_load.failed,
            p.rollback_load.ok + p.rollback_load.failed,
        );
    };
    for run in 1..=runs {
        let f3 = engine_alone(3)?;
        let f1 = engine_alone(1)?;
        println!(
            "{run} | engine alone: 3 at once / 1 alone, started to healthy | {f3:.2} / {f1:.2}"
        );
        floor3.push(f3);
        floor1.push(f1);
        let bronze_dir = dir.join(format!("bronze-{run}"));
        let swarm_dir = dir.join(format!("swarm-{run}"));
        if run % 2 == 1 {
            let p = bronze(bin, &bronze_dir).await?;
            row(run, "bronze (gateway)", &p);
            b.push(p);
            let p = swarm(&swarm_dir).await?;
            row(run, "swarm (nginx)", &p);
            s.push(p);
        } else {
            let p = swarm(&swarm_dir).await?;
            row(run, "swarm (nginx)", &p);
            s.push(p);
            let p = bronze(bin, &bronze_dir).await?;
            row(run, "bronze (gateway)", &p);
            b.push(p);
        }
    }
    let phase = |v: &[Phases], f: fn(&Phases) -> f64| median(v.iter().map(f).collect());
    type Phase = (&'static str, fn(&Phases) -> f64);
    let phases: [Phase; 4] = [
        ("push v1", |p| p.push),
        ("deploy to first 200", |p| p.first_answer),
        ("update to all v2", |p| p.update),
        ("rollback", |p| p.rollback),
    ];
    println!("\nmedian of {runs} | bronze s | swarm s | bronze / swarm (goal: at most 0.5x)");
    for (name, f) in phases {
        let (mb, ms) = (phase(&b, f), phase(&s, f));
        println!("{name} | {mb:.2} | {ms:.2} | {:.2}x", mb / ms);
    }
    let (f3, f1) = (median(floor3), median(floor1));
    println!(
        "engine alone: 3 containers started to healthy {f3:.2} s ({:.2}x swarm's deploy to first 200); \
         one {f1:.2} s",
        f3 / phase(&s, |p| p.first_answer)
    );
    let failed = |v: &[Phases], f: fn(&Phases) -> &Tally| {
        let (bad, all) = v.iter().map(f).fold((0, 0), |(bad, all), t| {
            (bad + t.failed, all + t.ok + t.failed)
        });
        format!("{bad} of {all}")
    };
    println!(
        "failed requests: update bronze {}, swarm {}; rollback bronze {}, swarm {}",
        failed(&b, |p| &p.update_load),
        failed(&s, |p| &p.update_load),
        failed(&b, |p| &p.rollback_load),
        failed(&s, |p| &p.rollback_load),
    );
    Ok(())
}
