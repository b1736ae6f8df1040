//! `cargo xtask bench rollout`: a health-gated rolling update under
//! constant load, Bronze against Docker swarm mode on this engine, same
//! image, same settings, same run.
//!
//! The service: 20 replicas of the busybox httpd test image serving
//! `/version` (its `$VERSION`), a HEALTHCHECK (`test -f /www/health`, every
//! 500 ms), a 1 s stop grace (busybox as PID 1 ignores SIGTERM), and an
//! update of parallelism 2, start-first, Swarm's default monitor (5 s) and
//! failure action (pause). The update changes `VERSION`.
//!
//! * **Bronze**: discovery, a registrator, the gateway (routing by the
//!   container label `bronze.http.rule`), the scheduler following
//!   discovery, one agent: release binaries in their own processes. Load
//!   through the gateway.
//! * **Swarm**: `docker swarm init`, `docker stack deploy` of the same
//!   service (published in ingress mode), then again with the new
//!   `VERSION`. Load through the ingress published port.
//!
//! The load: the open-loop generator at a fixed rate (GET /version), in
//! one-second runs back to back from before the update until it completed;
//! errors and non-2xx answers counted. Timed: the update, from the request
//! to `completed`. The engine is left as found (`docker swarm leave
//! --force`).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bronze_proto::scheduler::v1 as pb;

use crate::bench_util::{Proc, free_port};
use crate::loadgen::{self, Plan};

const IMAGE: &str = "bronze-test/busybox-httpd:latest";
const REPLICAS: u64 = 20;
const RATE: f64 = 200.0;
const POLL: Duration = Duration::from_millis(100);
const LIMIT: Duration = Duration::from_secs(600);

/// What one side did.
struct Outcome {
    update: f64,
    requests: u64,
    /// Connection errors and non-2xx answers.
    failed: u64,
    /// Not answered within a second after their run ended (slow, not
    /// failed: the generator stops waiting).
    late: u64,
}

fn docker(args: &[&str]) -> anyhow::Result<String> {
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

fn stack_file(version: &str) -> String {
    format!(
        r#"version: "3.8"
services:
  web:
    image: {IMAGE}
    command: ["sh", "-c", "/bin/busybox echo $$VERSION > /www/version && exec /bin/busybox httpd -f -p 8080 -h /www"]
    environment:
      VERSION: "{version}"
    healthcheck:
      test: ["CMD", "/bin/busybox", "test", "-f", "/www/health"]
      interval: 500ms
      timeout: 1s
      retries: 1
    stop_grace_period: 1s
    ports:
      - "{{PORT}}:8080"
    deploy:
      replicas: {REPLICAS}
      update_config:
        parallelism: 2
        order: start-first
"#
    )
}

async fn swarm() -> anyhow::Result<Outcome> {
    let d = crate::images::docker().await?;
    docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"])?;
    let result = async {
        let dir = std::env::temp_dir().join(format!("bronze-bench-rollout-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let write = |v: &str| -> anyhow::Result<String> {
            let path = dir.join(format!("stack-{v}.yml"));
            std::fs::write(&path, stack_file(v).replace("{PORT}", &port.to_string()))?;
            Ok(path.display().to_string())
        };
        let v1 = write("v1")?;
        docker(&[
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-c",
            &v1,
            "bench",
        ])?;
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
                    break 'found *ip;
                }
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("swarm's ingress does not answer on {candidates:?}");
            }
            tokio::time::sleep(POLL).await;
        };
        let stop = Arc::new(AtomicBool::new(false));
        let loader = load(ip, port, "/version", stop.clone());
        std::thread::sleep(Duration::from_secs(2));
        let v2 = write("v2")?;
        let t1 = Instant::now();
        docker(&[
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-c",
            &v2,
            "bench",
        ])?;
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
        let (requests, failed, late) = loader.join().map_err(|_| anyhow::anyhow!("load thread"))?;
        docker(&["stack", "rm", "bench"])?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Outcome {
            update,
            requests,
            failed,
            late,
        })
    }
    .await;
    // Leaves the engine as found, containers of the stack included.
    let _ = docker(&["swarm", "leave", "--force"]);
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

fn spawn(bin: &std::path::Path, name: &str, args: &[String]) -> anyhow::Result<Proc> {
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

fn bronze_spec(name: &str, version: &str) -> pb::ServiceSpec {
    let ms = |n: i32| prost_types::Duration {
        seconds: 0,
        nanos: n * 1_000_000,
    };
    pb::ServiceSpec {
        name: name.into(),
        image: IMAGE.into(),
        args: vec![
            "sh".into(),
            "-c".into(),
            "/bin/busybox echo $VERSION > /www/version && exec /bin/busybox httpd -f -p 8080 -h /www".into(),
        ],
        env: vec![format!("VERSION={version}")],
        mode: Some(pb::service_spec::Mode::Replicated(pb::Replicated { replicas: REPLICAS })),
        ports: vec![pb::PortConfig {
            target: 8080,
            published: 0,
            protocol: "tcp".into(),
        }],
        container_labels: [
            ("bronze.http.rule".to_string(), "PathPrefix(`/`)".to_string()),
        ]
        .into(),
        healthcheck: Some(pb::HealthCheck {
            test: vec!["CMD".into(), "/bin/busybox".into(), "test".into(), "-f".into(), "/www/health".into()],
            interval: Some(ms(500)),
            timeout: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            retries: 1,
            start_period: None,
        }),
        stop_grace_period: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        update_config: Some(pb::UpdateConfig {
            parallelism: 2,
            order: "start-first".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn bronze(bin: &std::path::Path) -> anyhow::Result<Outcome> {
    let dir = std::env::temp_dir().join(format!("bronze-bench-rollout-b-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (http, dns, grpc) = (free_port()?, free_port()?, free_port()?);
    let (gw, admin, sched) = (free_port()?, free_port()?, free_port()?);
    let s = |v: &str| v.to_string();
    let _discovery = spawn(
        bin,
        "bronze-discovery",
        &[
            s("--data-dir"),
            s(""),
            s("--http-addr"),
            format!("127.0.0.1:{http}"),
            s("--dns-addr"),
            format!("127.0.0.1:{dns}"),
            s("--grpc-addr"),
            format!("127.0.0.1:{grpc}"),
        ],
    )?;
    let _registrator = spawn(
        bin,
        "bronze-registrator",
        &[
            format!("http://127.0.0.1:{grpc}"),
            s("--hostname"),
            s("bench-rollout"),
            s("--ip"),
            s("127.0.0.1"),
            s("--metrics-addr"),
            s("127.0.0.1:0"),
        ],
    )?;
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
            format!("http://127.0.0.1:{grpc}"),
        ],
    )?;
    let token = "BRONZE-bench-rollout-token-0123456789";
    let _scheduler = spawn(
        bin,
        "bronze-scheduler",
        &[
            s("--addr"),
            format!("127.0.0.1:{sched}"),
            s("--data-dir"),
            dir.join("scheduler").display().to_string(),
            s("--join-token"),
            s(token),
            s("--discovery"),
            format!("http://127.0.0.1:{grpc}"),
        ],
    )?;
    let _agent = spawn(
        bin,
        "bronze-agent",
        &[
            s("--scheduler"),
            format!("http://127.0.0.1:{sched}"),
            s("--join-token"),
            s(token),
            s("--data-dir"),
            dir.join("agent").display().to_string(),
            s("--hostname"),
            s("bench-rollout"),
            s("--address"),
            s("127.0.0.1"),
            s("--metrics-addr"),
            s("127.0.0.1:0"),
        ],
    )?;
    let url = format!("http://127.0.0.1:{sched}");
    let t0 = Instant::now();
    let mut c = loop {
        if let Ok(c) = pb::scheduler_client::SchedulerClient::connect(url.clone()).await {
            break c;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("the scheduler does not answer");
        }
        tokio::time::sleep(POLL).await;
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
        tokio::time::sleep(POLL).await;
    }
    let name = format!("bench-rollout-{}", std::process::id());
    c.create_service(pb::CreateServiceRequest {
        spec: Some(bronze_spec(&name, "v1")),
    })
    .await?;
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
    c.update_service(pb::UpdateServiceRequest {
        service: name.clone(),
        spec: Some(bronze_spec(&name, "v2")),
        version: 0,
        force: false,
    })
    .await?;
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
        requests,
        failed,
        late,
    })
}

pub async fn run(runs: usize) -> anyhow::Result<()> {
    let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])?;
    if state.trim() != "inactive" {
        bail!(
            "this engine is already part of a swarm ({}); leave it first",
            state.trim()
        );
    }
    crate::images::build_busybox_httpd(IMAGE).await?;
    let bin = crate::build_packages(
        &[
            "bronze-discovery",
            "bronze-registrator",
            "bronze-gateway",
            "bronze-scheduler",
            "bronze-agent",
        ],
        crate::Profile::Release,
    )?;
    println!(
        "rollout: {REPLICAS} replicas, health-gated update (parallelism 2, start-first, monitor 5s) \
         under {RATE:.0} requests/s; {runs} runs each, alternating"
    );
    println!("run | who | update s | requests | failed | late (>1 s)");
    let (mut b, mut s) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let o = bronze(&bin).await?;
        println!(
            "{run} | bronze (gateway) | {:.2} | {} | {} | {}",
            o.update, o.requests, o.failed, o.late
        );
        b.push(o);
        let o = swarm().await?;
        println!(
            "{run} | swarm (ingress) | {:.2} | {} | {} | {}",
            o.update, o.requests, o.failed, o.late
        );
        s.push(o);
    }
    let median = |v: &[Outcome]| {
        let mut t: Vec<f64> = v.iter().map(|o| o.update).collect();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let failed = |v: &[Outcome]| v.iter().map(|o| o.failed).sum::<u64>();
    let requests = |v: &[Outcome]| v.iter().map(|o| o.requests).sum::<u64>();
    println!(
        "median update: bronze {:.2} s, swarm {:.2} s: {:.2}x (goal: at most 0.5x)",
        median(&b),
        median(&s),
        median(&b) / median(&s)
    );
    println!(
        "failed requests: bronze {} of {}, swarm {} of {} (goal: zero for bronze)",
        failed(&b),
        requests(&b),
        failed(&s),
        requests(&s)
    );
    Ok(())
}
