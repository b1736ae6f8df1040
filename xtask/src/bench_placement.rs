//! `cargo xtask bench placement`: the scheduler's placement alone, agents
//! simulated in process (no engine): 1,000 nodes join, then services of
//! 30,000 tasks in all, with constraints and reservations, are created at
//! once. Reports the time until every task is placed (placements per
//! second), the p50/p99 decision latency (a task's creation to its
//! assignment, from the tasks' own timestamps), the manager's rounds and
//! commits, and this process' resident memory (peak and after).
//!
//! The state is a real redb file (fsync'd commits), as in production.
//! Anchors: Swarm's published test (1,000 nodes, 30,000 containers,
//! scheduling p99 400 ms) and Nomad's C1M (about 3,750 containers/s per
//! scheduler). Goal: all placed in under 2 s on 2 cores, under 200 MB.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bronze_scheduler::manager::Tunables;
use bronze_scheduler::model::{Constraint, Mode, Resources, ServiceSpec, TaskState};
use bronze_scheduler::sim::Sim;

const NODES: usize = 1000;
const SERVICES: usize = 30;
const ZONES: [&str; 4] = ["a", "b", "c", "d"];

fn vm(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub async fn run(tasks: usize, runs: usize) -> anyhow::Result<()> {
    println!(
        "placement: {NODES} simulated nodes, {tasks} tasks in {SERVICES} services \
         (half constrained to one of {} zones; reservations 0.1 CPU, 64 MiB), state in a redb file",
        ZONES.len()
    );
    println!(
        "run | placed | seconds | placements/s | p50 ms | p99 ms | rounds | peak RSS MB | RSS after MB"
    );
    let mut seconds = Vec::new();
    for run in 1..=runs {
        let r = once(tasks).await?;
        println!(
            "{run} | {} | {:.2} | {:.0} | {} | {} | {} | {:.0} | {:.0}",
            r.placed,
            r.seconds,
            r.placed as f64 / r.seconds,
            r.p50,
            r.p99,
            r.rounds,
            r.peak,
            r.after
        );
        seconds.push(r.seconds);
    }
    seconds.sort_by(f64::total_cmp);
    let median = seconds[seconds.len() / 2];
    println!(
        "median: {median:.2} s for {tasks} placements ({:.0}/s); goal: under 2 s and 200 MB",
        tasks as f64 / median
    );
    Ok(())
}

struct Run {
    placed: usize,
    seconds: f64,
    p50: u64,
    p99: u64,
    rounds: u64,
    peak: f64,
    after: f64,
}

async fn once(total: usize) -> anyhow::Result<Run> {
    let dir = tempfile_dir()?;
    let store: Arc<dyn bronze_store::Store> =
        Arc::new(bronze_store::RedbStore::open(&dir.join("scheduler.redb"))?);
    let tunables = Tunables {
        heartbeat_period: Duration::from_secs(5),
        node_grace: Duration::from_secs(60),
        ..Tunables::default()
    };
    let sim = Sim::start_with(store, tunables, false).await;
    for i in 0..NODES {
        let zone = ZONES[i % ZONES.len()];
        sim.join(
            &format!("node{i:04}"),
            &format!("host-{i:04}"),
            &[("zone", zone)],
            Resources {
                nano_cpus: 8_000_000_000,
                memory_bytes: 32 << 30,
                pids: 0,
            },
        )
        .await;
    }
    let per = total / SERVICES;
    let started = Instant::now();
    for s in 0..SERVICES {
        let mut spec = ServiceSpec::new(&format!("svc{s:02}"), "127.0.0.1:5000/bench/app:1");
        let replicas = if s == SERVICES - 1 {
            total - per * (SERVICES - 1)
        } else {
            per
        };
        spec.mode = Mode::Replicated {
            replicas: replicas as u64,
        };
        spec.reservations = Resources {
            nano_cpus: 100_000_000,
            memory_bytes: 64 << 20,
            pids: 0,
        };
        if s % 2 == 0 {
            let zone = ZONES[(s / 2) % ZONES.len()];
            spec.placement.constraints = vec![
                Constraint::parse(&format!("node.labels.zone=={zone}"))
                    .map_err(anyhow::Error::msg)?,
            ];
        }
        sim.create(spec).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let state = sim
        .until(Duration::from_secs(300), "every task placed", |s| {
            s.tasks.len() == total && s.pending.is_empty()
        })
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies: Vec<u64> = state
        .tasks
        .values()
        .filter(|t| t.status.state == TaskState::Assigned)
        .map(|t| t.status.timestamp.0.saturating_sub(t.created_at.0))
        .collect();
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    let placed = latencies.len();
    let run = Run {
        placed,
        seconds,
        p50: pick(0.5),
        p99: pick(0.99),
        rounds: state.index,
        peak: vm("VmHWM:"),
        after: vm("VmRSS:"),
    };
    drop(state);
    drop(sim);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(run)
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "bronze-bench-placement-{}-{}",
        std::process::id(),
        fastrand_u64()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn fastrand_u64() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
