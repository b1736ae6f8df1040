//! Logs and metrics, set up the same way in every Bronze component.
//!
//! * [`init_logging`]: one tracing subscriber, plain or JSON, filtered by
//!   `RUST_LOG` (default `info`).
//! * [`Metrics`]: a Prometheus registry whose names follow
//!   `bronze_<component>_<what>_<unit>`, rendered in the text format, plus
//!   the process' own resident memory and CPU time.
//! * [`ops_routes`]: `/metrics` and `/healthz` for any axum server.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

pub use prometheus_client;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, one line per event.
    #[default]
    Plain,
    /// One JSON object per line, for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "plain" => Ok(Self::Plain),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "log format {other:?}: expected \"plain\" or \"json\""
            )),
        }
    }
}

/// Installs the global tracing subscriber. Safe to call more than once (only
/// the first call wins), so `bronze dev` and tests can call it freely.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// A component's metrics registry. Register metrics while building the
/// component, then share it (it is immutable afterwards).
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// A registry whose metric names all start with `bronze_<component>_`.
    pub fn new(component: &str) -> Self {
        Self {
            registry: Registry::with_prefix(format!("bronze_{component}")),
        }
    }

    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The Prometheus text exposition of every metric, then the process'
    /// resident memory and CPU seconds (read from /proc where it exists).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        if let Some((rss, cpu)) = process_stats() {
            let _ = write!(
                out,
                "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
                 # TYPE process_resident_memory_bytes gauge\n\
                 process_resident_memory_bytes {rss}\n\
                 # HELP process_cpu_seconds_total User and system CPU time spent in seconds.\n\
                 # TYPE process_cpu_seconds_total counter\n\
                 process_cpu_seconds_total {cpu}\n"
            );
        }
        out
    }
}

/// Resident bytes and CPU seconds of this process, from /proc/self/stat.
pub fn process_stats() -> Option<(u64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), rss is 24; `rest`
    // starts at field 3.
    let ticks: f64 = 100.0;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    Some((rss_pages * 4096, (utime + stime) / ticks))
}

/// `GET /metrics` (Prometheus text format) and `GET /healthz` (200 "ok"
/// while `healthy()` says so, 503 otherwise).
pub fn ops_routes<S: Clone + Send + Sync + 'static>(
    metrics: Arc<Metrics>,
    healthy: impl Fn() -> bool + Clone + Send + Sync + 'static,
) -> Router<S> {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let ok = healthy();
                async move {
                    if ok {
                        (StatusCode::OK, "ok\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                    }
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn renders_prefixed_metrics_and_process_stats() {
        let mut m = Metrics::new("demo");
        let c: Counter = Counter::default();
        m.registry()
            .register("requests", "Requests served", c.clone());
        c.inc_by(3);
        let text = m.render();
        assert!(text.contains("bronze_demo_requests_total 3"), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }

    #[test]
    fn log_format_parses_and_rejects() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        let err = "xml".parse::<LogFormat>().unwrap_err();
        assert!(err.contains("expected"), "{err}");
    }
}
