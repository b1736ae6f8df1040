//! `cargo xtask bench gateway --soak <minutes>`: bronze-gateway (one
//! worker) in front of the nginx backend under a steady open-loop load with
//! connection churn, its whole configuration replaced through the admin
//! API's `POST /config` every few seconds, and its resident memory (VmRSS)
//! sampled throughout. Fails when memory keeps growing after the warm-up.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bench_gateway::{nginx, spawn, wait_ready};
use crate::bench_util::{free_port, rss_mb};
use crate::loadgen::{self, Plan};

/// Offered load: requests/s over `CONNECTIONS` connections, each closed and
/// reopened after `REQUESTS_PER_CONNECTION` requests (here 50 new
/// connections a second).
const RATE: f64 = 5_000.0;
const CONNECTIONS: usize = 50;
const REQUESTS_PER_CONNECTION: u64 = 100;
/// A configuration swap every this many seconds, alternating between a
/// one-route document and one with 1,000 more routes.
const SWAP_EVERY: Duration = Duration::from_secs(10);
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// After the warm-up, resident memory may grow by at most this many MB or
/// this fraction of its warm-up maximum, whichever is larger.
const BOUND_MB: f64 = 8.0;
const BOUND_FRACTION: f64 = 0.10;

/// The resident-memory series, judged.
#[derive(Debug, PartialEq)]
pub struct Verdict {
    pub start: f64,
    pub max: f64,
    pub end: f64,
    /// Largest sample during the warm-up: the baseline.
    pub warmed: f64,
    /// `end - warmed`.
    pub growth: f64,
    /// The growth allowed.
    pub bound: f64,
    /// Least-squares slope after the warm-up, MB per minute.
    pub slope_per_min: f64,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.growth <= self.bound
    }
}

/// Judges samples of (time since start, MB). The end is the median of the
/// last three samples, so one sample taken while two routing tables were
/// briefly alive (during a swap) does not decide.
pub fn judge(samples: &[(Duration, f64)], warmup: Duration) -> Option<Verdict> {
    let first = samples.first()?;
    let max = samples.iter().map(|s| s.1).fold(f64::MIN, f64::max);
    let warmed = samples
        .iter()
        .filter(|s| s.0 <= warmup)
        .map(|s| s.1)
        .fold(first.1, f64::max);
    let mut tail: Vec<f64> = samples.iter().rev().take(3).map(|s| s.1).collect();
    tail.sort_by(f64::total_cmp);
    let end = tail[tail.len() / 2];
    let after: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.0 > warmup)
        .map(|s| (s.0.as_secs_f64() / 60.0, s.1))
        .collect();
    let slope_per_min = slope(&after);
    let growth = end - warmed;
    Some(Verdict {
        start: first.1,
        max,
        end,
        warmed,
        growth,
        bound: BOUND_MB.max(BOUND_FRACTION * warmed),
        slope_per_min,
    })
}

fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// The warm-up: the first minute, or the first fifth of a shorter soak.
pub fn warmup(total: Duration) -> Duration {
    Duration::from_secs(60).min(total / 5)
}

/// The two documents swapped in: the benchmark's route alone, and the same
/// route plus `extra` services with 10 routes each.
fn document(backend: u16, extra: usize) -> String {
    let mut services = vec![serde_json::json!({"name": "backend",
        "url": format!("http://127.0.0.1:{backend}"), "routes": [{"name": "all", "paths": ["/"]}]})];
    services.extend((0..extra).map(|s| {
        let routes: Vec<_> = (0..10)
            .map(|r| serde_json::json!({"name": format!("r{s}-{r}"),
                "hosts": [format!("svc{s}.example.com")], "paths": [format!("/api/v{r}")]}))
            .collect();
        serde_json::json!({"name": format!("s{s}"), "url": format!("http://127.0.0.1:{backend}"), "routes": routes})
    }));
    serde_json::json!({"_format_version": "3.0", "services": services}).to_string()
}

/// `POST /config` with curl; the HTTP status.
fn post_config(admin: u16, file: &std::path::Path) -> anyhow::Result<u16> {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!("http://127.0.0.1:{admin}/config"))
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("curl printed no status")
}

pub fn run(minutes: u32) -> anyhow::Result<()> {
    if minutes == 0 {
        bail!("--soak needs at least 1 minute");
    }
    crate::prerequisites::apt(&[("nginx", "nginx-light"), ("curl", "curl")])?;
    let bin = crate::build_packages(&["bronze-gateway"], crate::Profile::Release)?;
    let dir = std::env::temp_dir().join(format!("bronze-bench-soak-{}", std::process::id()));
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

    let docs = [dir.join("small.json"), dir.join("large.json")];
    std::fs::write(&docs[0], document(backend, 0))?;
    std::fs::write(&docs[1], document(backend, 100))?;
    let (gw, admin) = (free_port()?, free_port()?);
    let gateway = spawn(
        Command::new(bin.join("bronze-gateway"))
            .args(["--workers", "1", "--addr", &format!("127.0.0.1:{gw}")])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            // Entities in memory, as the peers' configuration: no store
            // file written (nor left in the working directory).
            .args(["--data-dir", ""])
            .arg("--declarative-config")
            .arg(&docs[0])
            .env("RUST_LOG", "error"),
    )?;
    wait_ready(gw, "bronze-gateway")?;
    let pid = gateway.0.id();

    let total = Duration::from_secs(u64::from(minutes) * 60);
    let plan = Plan {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], gw)),
        host: format!("127.0.0.1:{gw}"),
        path: "/".into(),
        rate: RATE,
        connections: CONNECTIONS,
        threads: 1,
        duration: total,
        requests_per_connection: Some(REQUESTS_PER_CONNECTION),
    };
    eprintln!("soak: {minutes} min; {}", plan.describe());
    let started = Instant::now();
    let (report, samples, swaps, failed_swaps) = std::thread::scope(|s| {
        let load = s.spawn(|| loadgen::run(&plan));
        let mut samples = vec![(Duration::ZERO, rss_mb(pid))];
        let (mut swaps, mut failed) = (0u32, Vec::new());
        let mut next_swap = started + SWAP_EVERY;
        while !load.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
            let now = Instant::now();
            if now >= next_swap {
                swaps += 1;
                let doc = &docs[(swaps % 2) as usize];
                match post_config(admin, doc) {
                    Ok(200 | 201) => {}
                    Ok(code) => failed.push(format!("swap {swaps}: HTTP {code}")),
                    Err(e) => failed.push(format!("swap {swaps}: {e}")),
                }
                next_swap += SWAP_EVERY;
            }
            let last = samples.last().map_or(Duration::ZERO, |s| s.0);
            if now - started >= last + SAMPLE_EVERY {
                samples.push((now - started, rss_mb(pid)));
            }
        }
        samples.push((started.elapsed(), rss_mb(pid)));
        let report = load
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("load generator panicked")));
        (report, samples, swaps, failed)
    });
    let report = report?;
    drop(gateway);
    let _ = std::fs::remove_dir_all(&dir);

    let warm = warmup(total);
    let v = judge(&samples, warm).context("no memory samples")?;
    let l = &report.latencies;
    println!(
        "\nsoak: bronze-gateway --workers 1, {minutes} min, {} RSS samples (every {} s), warm-up {} s\n",
        samples.len(),
        SAMPLE_EVERY.as_secs(),
        warm.as_secs()
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!("| VmRSS at start | {:.1} MB |", v.start);
    println!("| VmRSS max | {:.1} MB |", v.max);
    println!("| VmRSS at end | {:.1} MB |", v.end);
    println!(
        "| growth after warm-up (end - warm-up max {:.1} MB) | {:+.1} MB (bound {:.1} MB) |",
        v.warmed, v.growth, v.bound
    );
    println!("| slope after warm-up | {:+.2} MB/min |", v.slope_per_min);
    println!(
        "| load: achieved / offered | {:.0} / {:.0} requests/s{} |",
        report.achieved_rate,
        RATE,
        if report.reached() {
            ""
        } else {
            " (target not reached)"
        }
    );
    println!(
        "| latency from schedule p50 / p99 / p99.9 / max | {:.2} / {:.2} / {:.2} / {:.2} ms |",
        ms(l.p50),
        ms(l.p99),
        ms(l.p999),
        ms(l.max)
    );
    println!(
        "| errors / non-2xx / unanswered | {} / {} / {} |",
        report.errors, report.non_2xx, report.unfinished
    );
    println!(
        "| config swaps (POST /config) | {swaps}, {} failed |",
        failed_swaps.len()
    );
    println!("\ncommands:");
    println!("  bronze-gateway --workers 1 --declarative-config small.json (RUST_LOG=error)");
    println!(
        "  load: {}",
        plan.describe().replace(&plan.addr.to_string(), "GATEWAY")
    );
    println!(
        "  every {} s: curl -X POST -H 'Content-Type: application/json' --data-binary @{{small,large}}.json ADMIN/config \
         (1 route / 1,001 routes)",
        SWAP_EVERY.as_secs()
    );
    println!(
        "  every {} s: VmRSS from /proc/PID/status",
        SAMPLE_EVERY.as_secs()
    );

    let mut problems = failed_swaps;
    if !v.ok() {
        problems.push(format!(
            "resident memory grew {:.1} MB after the warm-up ({:.1} -> {:.1} MB), more than the bound of {:.1} MB",
            v.growth, v.warmed, v.end, v.bound
        ));
    }
    if report.errors + report.non_2xx + report.unfinished > 0 {
        problems.push(format!(
            "{} errors, {} non-2xx answers, {} requests unanswered",
            report.errors, report.non_2xx, report.unfinished
        ));
    }
    if !problems.is_empty() {
        bail!("soak FAILED:\n  {}", problems.join("\n  "));
    }
    println!("\nsoak passed: memory flat within the bound, every swap and request answered");
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(mb: impl Fn(u64) -> f64) -> Vec<(Duration, f64)> {
        (0..=300)
            .step_by(2)
            .map(|t| (Duration::from_secs(t), mb(t)))
            .collect()
    }

    #[test]
    fn flat_memory_after_a_warm_up_climb_passes() {
        // Climbs to 30 MB in the first minute (pools, allocator), then flat
        // with swap spikes.
        let s = series(|t| {
            if t < 60 {
                10.0 + t as f64 / 3.0
            } else if t % 10 == 0 {
                33.0
            } else {
                30.0
            }
        });
        let v = judge(&s, Duration::from_secs(60)).unwrap();
        assert_eq!(v.start, 10.0);
        assert_eq!(v.max, 33.0);
        assert_eq!(v.end, 30.0);
        assert!(v.ok(), "{v:?}");
        assert!(v.slope_per_min.abs() < 0.5, "{v:?}");
    }

    #[test]
    fn steady_growth_beyond_the_bound_fails() {
        // 3 MB a minute for 4 minutes after the warm-up: 12 MB > 8 MB.
        let s = series(|t| 20.0 + t.saturating_sub(60) as f64 / 20.0);
        let v = judge(&s, Duration::from_secs(60)).unwrap();
        assert!(!v.ok(), "{v:?}");
        assert!((v.growth - 12.0).abs() < 0.2, "{v:?}");
        assert!((v.slope_per_min - 3.0).abs() < 0.05, "{v:?}");
    }

    #[test]
    fn the_bound_scales_with_a_large_baseline() {
        // 200 MB baseline: 10% = 20 MB allowed; 15 MB of growth passes.
        let s = series(|t| if t <= 60 { 200.0 } else { 215.0 });
        let v = judge(&s, Duration::from_secs(60)).unwrap();
        assert_eq!(v.bound, 20.0);
        assert!(v.ok(), "{v:?}");
        assert!(judge(&[], Duration::from_secs(60)).is_none());
    }

    #[test]
    fn one_spike_at_the_end_does_not_decide() {
        let mut s = series(|_| 20.0);
        s.last_mut().unwrap().1 = 60.0;
        let v = judge(&s, Duration::from_secs(60)).unwrap();
        assert_eq!(v.end, 20.0);
        assert!(v.ok());
    }

    #[test]
    fn warm_up_is_a_minute_or_a_fifth() {
        assert_eq!(warmup(Duration::from_secs(600)), Duration::from_secs(60));
        assert_eq!(warmup(Duration::from_secs(60)), Duration::from_secs(12));
    }
}
