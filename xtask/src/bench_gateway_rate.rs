//! The fixed-rate part of `cargo xtask bench gateway`: every target at the
//! same offered rate (half the backend's measured maximum), with the
//! open-loop generator in [`crate::loadgen`], latency from each request's
//! scheduled send time.

use std::time::Duration;

use crate::loadgen::{self, Plan, Report};

/// Connections, as wrk's `-c50`.
pub const CONNECTIONS: usize = 50;
/// Generator threads (each a current-thread runtime).
pub const THREADS: usize = 1;

/// The plan for one target.
pub fn plan(port: u16, rate: f64, seconds: u64) -> Plan {
    Plan {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        host: format!("127.0.0.1:{port}"),
        path: "/".into(),
        rate,
        connections: CONNECTIONS,
        threads: THREADS,
        duration: Duration::from_secs(seconds),
        requests_per_connection: None,
    }
}

/// Each target in turn at `rate` requests/s: a one-second warm-up at the
/// same rate, then `seconds` measured.
pub fn fixed_rate(targets: &[(&str, u16)], rate: f64, seconds: u64) -> anyhow::Result<Vec<Report>> {
    let mut reports = Vec::new();
    for (name, port) in targets {
        loadgen::run(&plan(*port, rate, 1))?;
        let r = loadgen::run(&plan(*port, rate, seconds))?;
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
    let verdict = if busiest > 0.85 {
        "near a whole core: the generator may be limiting; re-run with fewer targets at once or a lower rate"
    } else {
        "the generator had spare time"
    };
    format!(
        "open-loop generator CPU: at most {:.0}% of a core per thread ({verdict})",
        busiest * 100.0
    )
}
