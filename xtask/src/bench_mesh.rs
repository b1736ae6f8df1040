//! `cargo xtask bench mesh`: a call from one task of a stack to another
//! service of the stack by name (Bronze's path: the stack's DNS answer, a
//! virtual IP, the agent's DNAT rule to the instance's container address
//! on the stack network, or, without the kernel path, the agent's
//! userland forwarder) against the same call to the instance's own
//! address, in the same run. The bench says which path the agent took.
//!
//! Bronze runs as its release binaries in their own processes (discovery,
//! a registrator, the scheduler, one agent with `--discovery`). The stack
//! has two services: `api` (the busybox httpd test image, port 8080
//! published on a dynamic host port) and `client` (a shell that sleeps).
//! wrk runs inside the client task's network namespace (`nsenter -n`, so
//! it reaches what the task reaches), alternating: `direct` (the api
//! container's own address on the stack network, port 8080) and `by name`
//! (the address the stack's DNS gives `api`, port 8080). CPU per request:
//! the agent's (its forwarder, when it is in the path) for the path by
//! name.
//!
//! Swarm's VIP is measured only where the kernel has IPVS (Swarm's VIPs
//! and routing mesh are IPVS); without it the bench says so.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bronze_proto::scheduler::v1 as pb;

use crate::bench_gateway::latency;
use crate::bench_util::{OneNode, cpu_seconds};

const IMAGE: &str = "bronze-test/busybox-httpd:latest";
const POLL: Duration = Duration::from_millis(100);
const LIMIT: Duration = Duration::from_secs(120);
const NAMESPACE: &str = "com.docker.stack.namespace";

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker").args(args).output()?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Polls `f` until it gives `Some`, at most `LIMIT`.
async fn until<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if t0.elapsed() > LIMIT {
            bail!("{what}: not within {LIMIT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

fn container_of(service: &str) -> Option<String> {
    docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=bronze.service.name={service}"),
    ])
    .ok()
    .and_then(|s| s.split_whitespace().next().map(str::to_string))
}

struct Row {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The agent's CPU per request, in microseconds (its forwarder).
    agent_cpu_us: f64,
}

/// wrk from inside the network namespace of `pid`.
fn wrk(pid: &str, url: &str, conns: u32, seconds: u64, agent: u32) -> anyhow::Result<Row> {
    let run = |d: &str, latency_flag: bool| {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", pid, "-n", "wrk", "-t1"])
            .arg(format!("-c{conns}"))
            .arg(format!("-d{d}"));
        if latency_flag {
            cmd.arg("--latency");
        }
        cmd.arg(url).output()
    };
    run("1s", false)?;
    let before = cpu_seconds(agent);
    let out = run(&format!("{seconds}s"), true)?;
    let cpu = cpu_seconds(agent) - before;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("{url}: wrk reported errors:\n{text}");
    }
    let rps: f64 = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{url}: no Requests/sec in wrk output:\n{text}"))?;
    Ok(Row {
        rps,
        p50_ms: latency(&text, "50%"),
        p99_ms: latency(&text, "99%"),
        agent_cpu_us: cpu * 1e6 / (rps * seconds as f64),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub async fn run(seconds: u64, runs: usize) -> anyhow::Result<()> {
    crate::prerequisites::apt(&[("wrk", "wrk"), ("nsenter", "util-linux")])?;
    crate::images::build_busybox_httpd(IMAGE).await?;
    let bin = crate::build_packages(
        &[
            "bronze-discovery",
            "bronze-registrator",
            "bronze-scheduler",
            "bronze-agent",
        ],
        crate::Profile::Release,
    )?;
    let dir = std::env::temp_dir().join(format!("bronze-bench-mesh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (mut node, mut c) = OneNode::start(&bin, &dir, "bench-mesh", true).await?;
    let s = |v: &str| v.to_string();
    let stack = format!("benchmesh{}", std::process::id());
    let service = |name: &str, args: Vec<String>, ports: Vec<pb::PortConfig>| pb::ServiceSpec {
        name: format!("{stack}_{name}"),
        image: IMAGE.into(),
        args,
        ports,
        mode: Some(pb::service_spec::Mode::Replicated(pb::Replicated {
            replicas: 1,
        })),
        container_labels: [(NAMESPACE.to_string(), stack.clone())].into(),
        stop_grace_period: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    };
    let api = format!("{stack}_api");
    let client = format!("{stack}_client");
    let result = async {
        c.create_service(pb::CreateServiceRequest {
            spec: Some(service(
                "api",
                Vec::new(),
                vec![pb::PortConfig {
                    target: 8080,
                    ..Default::default()
                }],
            )),
        })
        .await?;
        c.create_service(pb::CreateServiceRequest {
            spec: Some(service("client", vec![s("sleep"), s("3600")], Vec::new())),
        })
        .await?;
        let (api_c, client_c) = until("both tasks run", || async {
            Some((container_of(&api)?, container_of(&client)?))
        })
        .await?;
        let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &client_c])?;
        let direct = docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            &api_c,
        ])?
        .split_whitespace()
        .next()
        .context("the api container's address")?
        .to_string();
        // What the stack's DNS answers for `api` inside the client.
        let vip = until("the stack's DNS answers api", || async {
            let out = Command::new("docker")
                .args(["exec", &client_c, "/bin/busybox", "nslookup", "api"])
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.lines()
                .skip_while(|l| !l.starts_with("Name:"))
                .find_map(|l| l.strip_prefix("Address:").map(|a| a.trim().to_string()))
                .filter(|a| !a.contains('#'))
        })
        .await?;
        let by_name = format!("http://{vip}:8080/index.html");
        let own = format!("http://{direct}:8080/index.html");
        until("api answers through its name", || async {
            let out = Command::new("nsenter")
                .args(["-t", &pid, "-n", "wrk", "-t1", "-c1", "-d1s", &by_name])
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            (!text.contains("Non-2xx") && !text.contains("Socket errors")).then_some(())
        })
        .await?;
        // The kernel path: a DNAT rule of the agent's to api's container.
        let dnat = format!("-j DNAT --to-destination {direct}:8080");
        let kernel = Command::new("iptables-save")
            .args(["-t", "nat"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.starts_with("-A BZM-") && l.ends_with(&dnat))
            })
            .unwrap_or(false);
        let path = if kernel {
            "the agent's DNAT rule"
        } else {
            "the agent's userland forwarder"
        };
        println!(
            "mesh: from the client task of stack {stack}, to api at its own address \
             ({direct}:8080) and by name ({vip}:8080, {path}); \
             wrk -t1, {seconds} s, {runs} runs alternating"
        );
        println!("run | conns | path | req/s | p50 ms | p99 ms | agent CPU us/req");
        let mut rows: Vec<(u32, &str, Row)> = Vec::new();
        for run in 1..=runs {
            for conns in [1u32, 16] {
                for (path, url) in [("direct", &own), ("by name", &by_name)] {
                    let r = wrk(&pid, url, conns, seconds, node.agent.0.id())?;
                    println!(
                        "{run} | {conns} | {path} | {:.0} | {:.3} | {:.3} | {:.1}",
                        r.rps, r.p50_ms, r.p99_ms, r.agent_cpu_us
                    );
                    rows.push((conns, path, r));
                }
            }
        }
        println!("median | conns | path | req/s | p50 ms | p99 ms | agent CPU us/req");
        for conns in [1u32, 16] {
            let pick = |path: &str, f: fn(&Row) -> f64| {
                median(
                    rows.iter()
                        .filter(|(c, p, _)| *c == conns && *p == path)
                        .map(|(_, _, r)| f(r))
                        .collect(),
                )
            };
            for path in ["direct", "by name"] {
                println!(
                    "median | {conns} | {path} | {:.0} | {:.3} | {:.3} | {:.1}",
                    pick(path, |r| r.rps),
                    pick(path, |r| r.p50_ms),
                    pick(path, |r| r.p99_ms),
                    pick(path, |r| r.agent_cpu_us)
                );
            }
            println!(
                "ratio by name / direct, {conns} conns | throughput {:.2}x | p50 {:.2}x | p99 {:.2}x   \
                 (goal: latency at most 1.2x)",
                pick("by name", |r| r.rps) / pick("direct", |r| r.rps),
                pick("by name", |r| r.p50_ms) / pick("direct", |r| r.p50_ms),
                pick("by name", |r| r.p99_ms) / pick("direct", |r| r.p99_ms),
            );
        }
        if std::path::Path::new("/proc/net/ip_vs").exists() {
            println!(
                "swarm: this kernel has IPVS; Swarm's overlay VIP is not measured by this \
                 bench yet"
            );
        } else {
            println!(
                "swarm: not measurable here: Swarm's service VIPs are IPVS virtual servers, \
                 and this kernel has no IPVS (/proc/net/ip_vs is missing)"
            );
        }
        anyhow::Ok(())
    }
    .await;
    for name in [&api, &client] {
        let _ = c
            .remove_service(pb::RemoveServiceRequest {
                service: name.clone(),
            })
            .await;
    }
    let _ = until("the stack's containers are gone", || async {
        (container_of(&api).is_none() && container_of(&client).is_none()).then_some(())
    })
    .await;
    // Stopped as at SIGTERM: the agent removes its mesh rules.
    if let Err(e) = node.agent.terminate(Duration::from_secs(10)) {
        eprintln!("the agent did not stop cleanly, its mesh rules may be left: {e:#}");
    }
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
    result
}
