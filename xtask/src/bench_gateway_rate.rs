//! The fixed-rate part of `cargo xtask bench gateway`: every target at the
//! same offered rate (half the backend's measured maximum), with the
//! open-loop generator in [`crate::loadgen`], latency from each request's
//! scheduled send time.

use std::time::Duration;

use crate::loadgen::{self, Plan, Report};

/// Connections, as wrk's `-c50`.
pub const CONNECTIONS: usize = 50;
/// Generator threads, as wrk's `-t1`. (Two were tried: on two cores they
/// take the CPU the target and the backend need, and every figure got
/// worse.)
pub const THREADS: usize = 1;
/// A generator that sends requests on idle connections later than this
/// (p99) is itself, or the machine is, part of what is measured.
const LAG_LIMIT: Duration = Duration::from_millis(1);

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

/// Lines on the generator's own part, per target: its CPU share, and how
/// late it sent requests on idle connections (p99). A late send is the
/// generator's (or a busy machine's) delay, counted in the latency but not
/// the target's doing; "none idle" means every connection was always
/// waiting for an answer (the target was the limit).
pub fn generator_note(names: &[&str], reports: &[Report]) -> String {
    let per_request = reports.first().map_or(0.0, |r| {
        r.generator_cpu_time.as_secs_f64() * 1e6 / r.completed.max(1) as f64
    });
    let rows: Vec<String> = names
        .iter()
        .zip(reports)
        .map(|(name, r)| {
            let lag = if r.send_lag.count == 0 {
                "none idle".to_string()
            } else {
                ms(r.send_lag.p99)
            };
            format!(
                "{name}: {:.0}% CPU, send lag p99 {lag}",
                r.generator_cpu * 100.0
            )
        })
        .collect();
    let limited = reports
        .iter()
        .any(|r| r.generator_cpu > 0.85 || r.send_lag.p99 > LAG_LIMIT);
    let verdict = if limited {
        "the generator or the machine took part in some figures (over 85% CPU or send lag p99 over 1 ms)"
    } else {
        "the generator kept its schedule"
    };
    format!(
        "open-loop generator ({} thread, {per_request:.1} us CPU per request against the backend): {verdict}\n  {}",
        THREADS,
        rows.join("; ")
    )
}
