//! The fixed-rate part of `cargo xtask bench gateway`: every target at the
//! same offered rate (half the backend's measured maximum), with the
//! open-loop generator in [`crate::loadgen`], latency from each request's
//! scheduled send time.

use std::time::Duration;

use crate::loadgen::{self, Plan, Report};

/// Connections, as wrk's `-c50`.
pub const CONNECTIONS: usize = 50;
/// Generator threads (each a current-thread runtime): one, as wrk's `-t1`,
/// unless one thread is busier than this share of a core during the first
/// warm-up (against the backend directly), then two.
const ONE_THREAD_LIMIT: f64 = 0.7;

/// The plan for one target.
pub fn plan(port: u16, rate: f64, seconds: u64, threads: usize) -> Plan {
    Plan {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        host: format!("127.0.0.1:{port}"),
        path: "/".into(),
        rate,
        connections: CONNECTIONS,
        threads,
        duration: Duration::from_secs(seconds),
        requests_per_connection: None,
    }
}

/// Each target in turn at `rate` requests/s: a one-second warm-up at the
/// same rate, then `seconds` measured. The first target should be the
/// backend directly: its warm-up decides the generator's thread count.
pub fn fixed_rate(targets: &[(&str, u16)], rate: f64, seconds: u64) -> anyhow::Result<Vec<Report>> {
    let mut reports = Vec::new();
    let mut threads = 1;
    for (i, (name, port)) in targets.iter().enumerate() {
        let warm = loadgen::run(&plan(*port, rate, 1, threads))?;
        if i == 0 && warm.generator_cpu > ONE_THREAD_LIMIT {
            threads = 2;
            eprintln!(
                "open-loop generator: one thread was {:.0}% busy at {rate:.0} requests/s; using two",
                warm.generator_cpu * 100.0
            );
            loadgen::run(&plan(*port, rate, 1, threads))?;
        }
        let r = loadgen::run(&plan(*port, rate, seconds, threads))?;
        if !r.reached() || r.errors > 0 || r.non_2xx > 0 {
            eprintln!(
                "{name}: {:.0} of {:.0} requests/s answered, {} errors, {} non-2xx, {} unanswered at the cut-off",
                r.achieved_rate, rate, r.errors, r.non_2xx, r.unfinished
            );
        }
        reports.push(r);
    }
    Ok(reports)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// The fixed-rate columns of one table row: achieved rate (marked when the
/// target was not reached), p50, p99, p99.9, max.
pub fn columns(r: &Report) -> String {
    let s = &r.latencies;
    let achieved = if r.reached() {
        format!("{:.0}", r.achieved_rate)
    } else {
        format!("**{:.0} (target not reached)**", r.achieved_rate)
    };
    let errors = if r.errors + r.non_2xx > 0 {
        format!(" ({} errors, {} non-2xx)", r.errors, r.non_2xx)
    } else {
        String::new()
    };
    format!(
        "{achieved}{errors} | {} | {} | {} | {}",
        ms(s.p50),
        ms(s.p99),
        ms(s.p999),
        ms(s.max)
    )
}

/// A line on the generator's own load: when its busiest thread is near a
/// whole core, its numbers include its own queueing.
pub fn generator_note(reports: &[Report]) -> String {
    let busiest = reports.iter().map(|r| r.generator_cpu).fold(0.0, f64::max);
    let per_request = reports.first().map_or(0.0, |r| {
        r.generator_cpu_time.as_secs_f64() * 1e6 / r.completed.max(1) as f64
    });
    let verdict = if busiest > 0.85 {
        "near a whole core: the generator may be limiting; use a lower --rate"
    } else {
        "it had spare time"
    };
    format!(
        "open-loop generator: {} thread(s), at most {:.0}% of a core per thread ({verdict}); {per_request:.1} us of CPU per request against the backend",
        reports.first().map_or(1, |r| r.plan.threads),
        busiest * 100.0
    )
}
