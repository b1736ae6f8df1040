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
    /// The last sample.
    pub end: f64,
    /// Peak of the first window after the warm-up: the baseline.
    pub first_peak: f64,
    /// Peak of the last window.
    pub last_peak: f64,
    /// `last_peak - first_peak`: growth after the warm-up.
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

/// Judges samples of (time since start, MB). Memory moves with every swap
/// (two tables are briefly alive; the large document's table is bigger),
/// so like is compared with like: the peak of the first `window` after the
/// warm-up against the peak of the last `window` (a window spans at least
/// one swap of each document). A process that keeps growing reaches new
/// peaks; one that is flat repeats the same ones.
pub fn judge(samples: &[(Duration, f64)], warmup: Duration, window: Duration) -> Option<Verdict> {
    let first = samples.first()?;
    let last = samples.last()?;
    let peak = |from: Duration, to: Duration| {
        samples
            .iter()
            .filter(|s| s.0 >= from && s.0 <= to)
            .map(|s| s.1)
            .fold(f64::NAN, f64::max)
    };
    let max = peak(Duration::ZERO, last.0);
    let warmup = warmup.min(last.0);
    let first_peak = peak(warmup, warmup + window);
    let last_peak = peak(last.0.saturating_sub(window), last.0);
    let after: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.0 >= warmup)
        .map(|s| (s.0.as_secs_f64() / 60.0, s.1))
        .collect();
    let growth = last_peak - first_peak;
    Some(Verdict {
        start: first.1,
        max,
        end: last.1,
        first_peak,
        last_peak,
        growth,
        bound: BOUND_MB.max(BOUND_FRACTION * first_peak),
        slope_per_min: slope(&after),
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

/// The windows whose peaks are compared: a sixth of what follows the
/// warm-up, at least two swaps of each document.
pub fn window(total: Duration) -> Duration {
    ((total - warmup(total)) / 6).max(SWAP_EVERY * 4)
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

    let (warm, win) = (warmup(total), window(total));
    let v = judge(&samples, warm, win).context("no memory samples")?;
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
        "| growth after warm-up (peak of the last {} s minus peak of the first {} s after it) | {:+.1} MB ({:.1} -> {:.1}; bound {:.1} MB) |",
        win.as_secs(),
        win.as_secs(),
        v.growth,
        v.first_peak,
        v.last_peak,
        v.bound
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
        "| generator: CPU, send lag p99 on idle connections | {:.0}% of a core, {:.2} ms |",
        report.generator_cpu * 100.0,
        ms(report.send_lag.p99)
    );
    println!(
        "| errors / non-2xx / unanswered | {} / {} / {} |",
        report.errors, report.non_2xx, report.unfinished
    );
    println!(
        "| config swaps (POST /config) | {swaps}, {} failed |",
        failed_swaps.len()
    );
    let step = samples.len().div_ceil(20).max(1);
    let series: Vec<String> = samples
        .iter()
        .step_by(step)
        .map(|(t, mb)| format!("{}s {mb:.1}", t.as_secs()))
        .collect();
    println!("\nVmRSS (MB) over time: {}", series.join(", "));
    println!("\ncommands:");
    println!(
        "  bronze-gateway --workers 1 --data-dir '' --declarative-config small.json (RUST_LOG=error)"
    );
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
            "resident memory grew {:.1} MB after the warm-up (peaks {:.1} -> {:.1} MB), more than the bound of {:.1} MB",
            v.growth, v.first_peak, v.last_peak, v.bound
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

    const W: Duration = Duration::from_secs(60);
    const WIN: Duration = Duration::from_secs(40);

    /// Every 2 s for 5 minutes.
    fn series(mb: impl Fn(u64) -> f64) -> Vec<(Duration, f64)> {
        (0..=300)
            .step_by(2)
            .map(|t| (Duration::from_secs(t), mb(t)))
            .collect()
    }

    /// 30 MB with the small table, 34 MB for the 10 s the large one is in.
    fn swapping(t: u64) -> f64 {
        if (t / 10) % 2 == 1 { 34.0 } else { 30.0 }
    }

    #[test]
    fn flat_memory_that_moves_with_swaps_passes() {
        // Climbs in the first minute (pools, allocator), then only the
        // swaps move it.
        let s = series(|t| {
            if t < 60 {
                10.0 + t as f64 / 3.0
            } else {
                swapping(t)
            }
        });
        let v = judge(&s, W, WIN).unwrap();
        assert_eq!((v.start, v.max, v.end), (10.0, 34.0, 30.0));
        assert_eq!((v.first_peak, v.last_peak, v.growth), (34.0, 34.0, 0.0));
        assert!(v.ok(), "{v:?}");
        assert!(v.slope_per_min.abs() < 0.5, "{v:?}");
    }

    #[test]
    fn steady_growth_beyond_the_bound_fails() {
        // 3 MB a minute on top of the swaps: about 10 MB between the
        // windows' peaks, more than 8 MB.
        let s = series(|t| swapping(t) + t.saturating_sub(60) as f64 / 20.0);
        let v = judge(&s, W, WIN).unwrap();
        assert!(!v.ok(), "{v:?}");
        assert!((v.growth - 10.0).abs() < 0.6, "{v:?}");
        assert!((v.slope_per_min - 3.0).abs() < 0.2, "{v:?}");
    }

    #[test]
    fn slow_growth_within_the_bound_passes_and_the_bound_scales() {
        let s = series(|t| swapping(t) + t as f64 / 60.0);
        assert!(judge(&s, W, WIN).unwrap().ok());
        // 200 MB baseline: 10% = 20 MB allowed.
        let s = series(|t| if t <= 100 { 200.0 } else { 215.0 });
        let v = judge(&s, W, WIN).unwrap();
        assert_eq!(v.bound, 20.0);
        assert!(v.ok(), "{v:?}");
        assert!(judge(&[], W, WIN).is_none());
    }

    #[test]
    fn a_warm_up_spike_does_not_hide_later_growth() {
        // 60 MB once during the warm-up, then 20 MB growing to 30 MB: the
        // baseline is after the warm-up, so the growth shows.
        let s = series(|t| match t {
            10 => 60.0,
            t if t < 60 => 20.0,
            t => 20.0 + (t - 60) as f64 / 24.0,
        });
        let v = judge(&s, W, WIN).unwrap();
        assert_eq!(v.max, 60.0);
        assert!(!v.ok(), "{v:?}");
    }

    #[test]
    fn warm_up_and_window_lengths() {
        assert_eq!(warmup(Duration::from_secs(600)), Duration::from_secs(60));
        assert_eq!(warmup(Duration::from_secs(60)), Duration::from_secs(12));
        assert_eq!(window(Duration::from_secs(600)), Duration::from_secs(90));
        assert_eq!(window(Duration::from_secs(60)), Duration::from_secs(40));
    }
}
