//! `cargo xtask bench scheduler`: Bronze against Docker swarm mode on this
//! machine's engine, same image, same work, alternating.
//!
//! For each: create a service of N replicas (the test image, no published
//! port, no registry resolution) and time until N tasks run; then a rolling
//! update of all of them (an environment change, parallelism 10,
//! stop-first: Swarm's default order; a stop grace of 1 s for both, since
//! busybox httpd as PID 1 ignores SIGTERM and would make every batch wait
//! the default 10 s) and time until the update is complete; then remove the service and wait until its containers are
//! gone. Bronze runs as its two release binaries (scheduler and one agent)
//! in their own processes; Swarm runs inside dockerd. Both are polled
//! through their own API every 50 ms. CPU is the engine's (dockerd and
//! containerd) plus Bronze's processes, per replica, so both pay for the
//! same container work. The engine is left as found (`docker swarm leave
//! --force`).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bollard::query_parameters::ListTasksOptions;
use bronze_proto::scheduler::v1 as pb;

use crate::bench_util::{
    Proc, cpu_seconds, docker, free_port, swarm_inactive, swarm_init, swarm_leave,
};

const IMAGE: &str = "bronze-test/busybox-httpd:latest";
const PARALLELISM: u32 = 10;
const POLL: Duration = Duration::from_millis(50);
const LIMIT: Duration = Duration::from_secs(300);

struct Timing {
    converge: f64,
    update: f64,
    cpu_ms_per_replica: f64,
}

/// dockerd's and containerd's pids (the engine's CPU is counted for both).
fn engine_pids() -> Vec<u32> {
    let mut pids = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if matches!(comm.trim(), "dockerd" | "containerd") {
                pids.push(pid);
            }
        }
    }
    pids
}

fn cpu(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

async fn containers_gone(d: &bollard::Docker, label: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let filters: HashMap<String, Vec<String>> =
            [("label".to_string(), vec![label.to_string()])].into();
        let list = d
            .list_containers(Some(
                bollard::query_parameters::ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        if list.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("containers with {label} still there");
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn swarm(replicas: usize) -> anyhow::Result<Timing> {
    let d = crate::images::docker().await?;
    let made_gwbridge = swarm_init()?;
    let result = async {
        let name = format!("bench-swarm-{}", std::process::id());
        let engine = engine_pids();
        let cpu0 = cpu(&engine);
        let t0 = Instant::now();
        docker(&[
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--name",
            &name,
            "--replicas",
            &replicas.to_string(),
            "--env",
            "V=1",
            "--update-parallelism",
            &PARALLELISM.to_string(),
            "--stop-grace-period",
            "1s",
            IMAGE,
        ])?;
        let running = || async {
            let filters: HashMap<String, Vec<String>> = [
                ("service".to_string(), vec![name.clone()]),
                ("desired-state".to_string(), vec!["running".to_string()]),
            ]
            .into();
            let tasks = d
                .list_tasks(Some(ListTasksOptions {
                    filters: Some(filters),
                }))
                .await
                .unwrap_or_default();
            tasks
                .iter()
                .filter(|t| {
                    t.status.as_ref().and_then(|s| s.state)
                        == Some(bollard::models::TaskState::RUNNING)
                })
                .count()
        };
        while running().await < replicas {
            if t0.elapsed() > LIMIT {
                bail!("swarm did not converge");
            }
            tokio::time::sleep(POLL).await;
        }
        let converge = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        docker(&["service", "update", "--detach", "--env-add", "V=2", &name])?;
        loop {
            let s = d
                .inspect_service(
                    &name,
                    None::<bollard::query_parameters::InspectServiceOptions>,
                )
                .await?;
            let done = s
                .update_status
                .and_then(|u| u.state)
                .is_some_and(|st| st == bollard::models::ServiceUpdateStatusStateEnum::COMPLETED);
            if done && running().await == replicas {
                break;
            }
            if t1.elapsed() > LIMIT {
                bail!("swarm did not finish the update");
            }
            tokio::time::sleep(POLL).await;
        }
        let update = t1.elapsed().as_secs_f64();
        let used = cpu(&engine) - cpu0;
        docker(&["service", "rm", &name])?;
        containers_gone(&d, &format!("com.docker.swarm.service.name={name}")).await?;
        Ok(Timing {
            converge,
            update,
            cpu_ms_per_replica: used * 1000.0 / replicas as f64,
        })
    }
    .await;
    swarm_leave(made_gwbridge);
    result
}

async fn bronze(replicas: usize, bin: &std::path::Path) -> anyhow::Result<Timing> {
    let d = crate::images::docker().await?;
    let dir = std::env::temp_dir().join(format!("bronze-bench-scheduler-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let token = "BRONZE-bench-scheduler-token-0123456789";
    let scheduler = Proc(
        Command::new(bin.join("bronze-scheduler"))
            .args([
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                &dir.join("scheduler").display().to_string(),
                "--join-token",
                token,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bronze-scheduler")?,
    );
    let agent = Proc(
        Command::new(bin.join("bronze-agent"))
            .args([
                "--scheduler",
                &format!("http://127.0.0.1:{port}"),
                "--join-token",
                token,
                "--data-dir",
                &dir.join("agent").display().to_string(),
                "--hostname",
                "bench",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bronze-agent")?,
    );
    let url = format!("http://127.0.0.1:{port}");
    let mut c = loop {
        if let Ok(c) = pb::scheduler_client::SchedulerClient::connect(url.clone()).await {
            break c;
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
    let name = format!("bench-bronze-{}", std::process::id());
    let mut pids = engine_pids();
    pids.push(scheduler.0.id());
    pids.push(agent.0.id());
    let cpu0 = cpu(&pids);
    let spec = pb::ServiceSpec {
        name: name.clone(),
        image: IMAGE.into(),
        env: vec!["V=1".into()],
        mode: Some(pb::service_spec::Mode::Replicated(pb::Replicated {
            replicas: replicas as u64,
        })),
        update_config: Some(pb::UpdateConfig {
            parallelism: PARALLELISM,
            order: "stop-first".into(),
            ..Default::default()
        }),
        stop_grace_period: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    };
    let t0 = Instant::now();
    c.create_service(pb::CreateServiceRequest {
        spec: Some(spec.clone()),
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
    loop {
        let r = status(&mut c).await;
        if r.as_ref()
            .and_then(|r| r.status.as_ref())
            .is_some_and(|s| s.running == replicas as u64)
        {
            break;
        }
        if t0.elapsed() > LIMIT {
            bail!("bronze did not converge");
        }
        tokio::time::sleep(POLL).await;
    }
    let converge = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut updated = spec;
    updated.env = vec!["V=2".into()];
    c.update_service(pb::UpdateServiceRequest {
        service: name.clone(),
        spec: Some(updated),
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
        if t1.elapsed() > LIMIT {
            bail!("bronze did not finish the update");
        }
        tokio::time::sleep(POLL).await;
    }
    let update = t1.elapsed().as_secs_f64();
    let used = cpu(&pids) - cpu0;
    c.remove_service(pb::RemoveServiceRequest {
        service: name.clone(),
    })
    .await?;
    containers_gone(&d, &format!("bronze.service.name={name}")).await?;
    drop(agent);
    drop(scheduler);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Timing {
        converge,
        update,
        cpu_ms_per_replica: used * 1000.0 / replicas as f64,
    })
}

/// Creates and starts containers `names`, `parallel` at a time.
async fn start_all(
    d: &bollard::Docker,
    names: Vec<String>,
    env: &str,
    label: &str,
    parallel: usize,
) -> anyhow::Result<()> {
    use bollard::query_parameters::{CreateContainerOptionsBuilder, StartContainerOptions};
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut set = tokio::task::JoinSet::new();
    for name in names {
        let (d, sem, label, env) = (d.clone(), sem.clone(), label.to_string(), env.to_string());
        set.spawn(async move {
            let _permit = sem.acquire().await?;
            let (k, v) = label.split_once('=').unwrap_or_default();
            let body = bollard::models::ContainerCreateBody {
                image: Some(IMAGE.into()),
                env: Some(vec![env]),
                labels: Some([(k.to_string(), v.to_string())].into()),
                stop_timeout: Some(1),
                ..Default::default()
            };
            d.create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await?;
            d.start_container(&name, None::<StartContainerOptions>)
                .await?;
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

/// The engine's own floor, with no orchestrator at all: N containers of the
/// image created and started straight through the API, `parallel` at a
/// time (the agent's default); then the same rolling update by hand
/// (batches of PARALLELISM: stop them with the 1 s grace, start their
/// replacements); then everything removed. Returns (converge, update).
async fn engine_floor(replicas: usize, parallel: usize) -> anyhow::Result<(f64, f64)> {
    use bollard::query_parameters::{RemoveContainerOptionsBuilder, StopContainerOptionsBuilder};
    let d = crate::images::docker().await?;
    let label = format!("bench-floor={}", std::process::id());
    let name = |v: usize, i: usize| format!("bench-floor-{}-v{v}-{i}", std::process::id());
    let t0 = Instant::now();
    start_all(
        &d,
        (0..replicas).map(|i| name(1, i)).collect(),
        "V=1",
        &label,
        parallel,
    )
    .await?;
    let converge = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let batch = PARALLELISM as usize;
    for first in (0..replicas).step_by(batch) {
        let slots: Vec<usize> = (first..(first + batch).min(replicas)).collect();
        let mut set = tokio::task::JoinSet::new();
        for i in &slots {
            let (d, n) = (d.clone(), name(1, *i));
            set.spawn(async move {
                d.stop_container(
                    &n,
                    Some(StopContainerOptionsBuilder::default().t(1).build()),
                )
                .await
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        start_all(
            &d,
            slots.iter().map(|i| name(2, *i)).collect(),
            "V=2",
            &label,
            parallel,
        )
        .await?;
    }
    let update = t1.elapsed().as_secs_f64();
    let took = (converge, update);
    let filters: HashMap<String, Vec<String>> = [("label".to_string(), vec![label.clone()])].into();
    for c in d
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await?
    {
        if let Some(id) = c.id {
            let _ = d
                .remove_container(
                    &id,
                    Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                )
                .await;
        }
    }
    Ok(took)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn run(replicas: usize, runs: usize) -> anyhow::Result<()> {
    swarm_inactive()?;
    crate::images::build_busybox_httpd(IMAGE).await?;
    let bin = crate::build_packages(
        &["bronze-scheduler", "bronze-agent"],
        crate::Profile::Release,
    )?;
    println!(
        "scheduler: {replicas} replicas of {IMAGE} on this engine, then a rolling update \
         (parallelism {PARALLELISM}, stop-first); {runs} runs each, alternating"
    );
    println!("run | who | converge s | update s | engine+orchestrator CPU ms/replica");
    let (mut b, mut s, mut f) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let floor = engine_floor(replicas, 8).await?;
        println!(
            "{run} | engine alone (no orchestrator) | {:.2} | {:.2} | -",
            floor.0, floor.1
        );
        f.push(floor);
        let t = bronze(replicas, &bin).await?;
        println!(
            "{run} | bronze | {:.2} | {:.2} | {:.1}",
            t.converge, t.update, t.cpu_ms_per_replica
        );
        b.push(t);
        let t = swarm(replicas).await?;
        println!(
            "{run} | swarm | {:.2} | {:.2} | {:.1}",
            t.converge, t.update, t.cpu_ms_per_replica
        );
        s.push(t);
    }
    let m = |v: &[Timing], f: fn(&Timing) -> f64| median(v.iter().map(f).collect());
    let (bc, bu, bcpu) = (
        m(&b, |t| t.converge),
        m(&b, |t| t.update),
        m(&b, |t| t.cpu_ms_per_replica),
    );
    let (sc, su, scpu) = (
        m(&s, |t| t.converge),
        m(&s, |t| t.update),
        m(&s, |t| t.cpu_ms_per_replica),
    );
    println!("median | converge s | update s | CPU ms/replica");
    let (fc, fu) = (
        median(f.iter().map(|x| x.0).collect()),
        median(f.iter().map(|x| x.1).collect()),
    );
    println!("engine alone | {fc:.2} | {fu:.2} | -");
    println!("bronze | {bc:.2} | {bu:.2} | {bcpu:.1}");
    println!("swarm | {sc:.2} | {su:.2} | {scpu:.1}");
    println!(
        "ratio (bronze/swarm) | {:.2}x | {:.2}x | {:.2}x   (goal: at most 0.5x for both times)",
        bc / sc,
        bu / su,
        bcpu / scpu
    );
    println!(
        "engine alone / swarm | {:.2}x | {:.2}x | -   (the floor no orchestrator goes under)",
        fc / sc,
        fu / su
    );
    Ok(())
}
