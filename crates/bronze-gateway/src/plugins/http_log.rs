//! http-log: Kong's log serializer entries (as file-log writes them) sent
//! to an HTTP endpoint (a log collector: Loki's, Logstash's or Vector's
//! HTTP input). Requests only hand an entry to a bounded queue; one sender
//! thread per instance (started with its first entry) batches them (Kong's `queue.max_batch_size`, at
//! most `queue.max_coalescing_delay` seconds apart) and sends each batch,
//! retrying with backoff for up to `queue.max_retry_time` seconds. A full
//! queue drops the entry and counts it: a slow collector never slows a
//! request. A batch of one is sent as the entry itself, a larger one as a
//! JSON array (Kong's behaviour).

use std::time::Duration;

use http::StatusCode;
use http::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::queue;
use super::{Ctx, Plugin, parse_config};
use crate::declarative::Invalid;
use crate::metrics::GatewayMetrics;

/// Kong's configuration of http-log with nothing set, as Kong shows it
/// (3.9's `kong/plugins/http-log/schema.lua`): every field, with its
/// default or null. Bronze reads an unset field as that default.
pub(crate) fn kong_defaults() -> serde_json::Value {
    serde_json::json!({
        "http_endpoint": null,
        "method": "POST",
        "content_type": "application/json",
        "timeout": 10000,
        "keepalive": 60000,
        // Deprecated in Kong 3 (`queue` replaces them), shown as null.
        "retry_count": null,
        "queue_size": null,
        "flush_timeout": null,
        "headers": null,
        "queue": {
            "max_batch_size": 1,
            "max_coalescing_delay": 1,
            "max_entries": 10000,
            "max_bytes": null,
            "max_retry_time": 60,
            "initial_retry_delay": 0.01,
            "max_retry_delay": 60,
            "concurrency_limit": 1,
        },
        "custom_fields_by_lua": null,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    http_endpoint: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    /// Milliseconds (Kong's default 10000).
    #[serde(default)]
    timeout: Option<u64>,
    /// Milliseconds an idle connection is kept (Kong's default 60000).
    #[serde(default)]
    keepalive: Option<u64>,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
    #[serde(default)]
    queue: Option<Queue>,
    #[serde(default)]
    custom_fields_by_lua: Option<Map<String, Value>>,
}

/// Kong 3's queue parameters (those Bronze honours).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Queue {
    #[serde(default)]
    max_batch_size: Option<usize>,
    /// Seconds.
    #[serde(default)]
    max_coalescing_delay: Option<f64>,
    #[serde(default)]
    max_entries: Option<usize>,
    /// Seconds.
    #[serde(default)]
    max_retry_time: Option<f64>,
    /// Seconds.
    #[serde(default)]
    initial_retry_delay: Option<f64>,
    /// Seconds.
    #[serde(default)]
    max_retry_delay: Option<f64>,
    /// Kong's 1 (one batch at a time, as here) or -1 (no limit).
    #[serde(default)]
    concurrency_limit: Option<i64>,
    #[serde(default)]
    max_bytes: Option<u64>,
}

/// Where and how batches go.
struct Target {
    /// The client's timeout and idle-connection lifetime (the client is
    /// built when the sender starts).
    timeout: Duration,
    keepalive: Duration,
    endpoint: reqwest::Url,
    method: reqwest::Method,
    headers: reqwest::header::HeaderMap,
    batch: usize,
    coalesce: Duration,
    retry_for: Duration,
    first_retry: Duration,
    max_retry: Duration,
}

type Msg = queue::Msg<Value>;

/// The sender thread starts with the first entry ([`queue::Queue`]).
pub struct HttpLog {
    entries: queue::Queue<Msg>,
}

/// Seconds as a duration: finite and not negative, or an error naming
/// the field.
fn seconds(v: Option<f64>, default: f64, field: &str) -> Result<Duration, Invalid> {
    crate::declarative::seconds(v, default, f64::INFINITY, field)
}

impl HttpLog {
    pub fn new(config: Option<&Value>, field: &str) -> Result<Self, Invalid> {
        let c: Config = parse_config(config, field)?;
        let f = |n: &str| format!("{field}.{n}");
        super::no_lua(c.custom_fields_by_lua.as_ref(), field)?;
        let endpoint = c
            .http_endpoint
            .filter(|e| !e.is_empty())
            .ok_or_else(|| Invalid::new(f("http_endpoint"), "required field missing"))?;
        let endpoint = reqwest::Url::parse(&endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                Invalid::new(
                    f("http_endpoint"),
                    format!("{endpoint:?}: expected an http:// or https:// URL"),
                )
            })?;
        let method = match c.method.as_deref().unwrap_or("POST") {
            "POST" => reqwest::Method::POST,
            "PUT" => reqwest::Method::PUT,
            "PATCH" => reqwest::Method::PATCH,
            other => {
                return Err(Invalid::new(
                    f("method"),
                    format!("{other:?}: expected POST, PUT or PATCH"),
                ));
            }
        };
        let content_type = c.content_type.as_deref().unwrap_or("application/json");
        if !matches!(
            content_type,
            "application/json" | "application/json; charset=utf-8"
        ) {
            return Err(Invalid::new(
                f("content_type"),
                format!("{content_type:?}: expected application/json"),
            ));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static(if content_type.contains("charset") {
                "application/json; charset=utf-8"
            } else {
                "application/json"
            }),
        );
        for (name, value) in c.headers.iter().flatten() {
            let bad = || {
                Invalid::new(
                    f(&format!("headers.{name}")),
                    "expected a header name and a string value",
                )
            };
            let n = reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
            let v = value
                .as_str()
                .and_then(|v| reqwest::header::HeaderValue::from_str(v).ok())
                .ok_or_else(bad)?;
            headers.insert(n, v);
        }
        let q = c.queue.unwrap_or_default();
        if q.concurrency_limit.is_some_and(|n| n != 1 && n != -1) {
            return Err(Invalid::new(
                f("queue.concurrency_limit"),
                "expected 1 or -1 (Bronze sends one batch at a time either way)",
            ));
        }
        if q.max_bytes.is_some() {
            return Err(Invalid::new(
                f("queue.max_bytes"),
                "not implemented in Bronze: expected null (batches are bounded by max_batch_size)",
            ));
        }
        let batch = q.max_batch_size.unwrap_or(1);
        let max_entries = q.max_entries.unwrap_or(10_000);
        if batch == 0 || batch > 1_000_000 {
            return Err(Invalid::new(
                f("queue.max_batch_size"),
                "expected 1 to 1000000",
            ));
        }
        if max_entries == 0 || max_entries > 1_000_000 {
            return Err(Invalid::new(
                f("queue.max_entries"),
                "expected 1 to 1000000",
            ));
        }
        let ms = |v: Option<u64>, default: u64, name: &str| match v.unwrap_or(default) {
            0 => Err(Invalid::new(f(name), "expected at least 1 (milliseconds)")),
            n => Ok(Duration::from_millis(n)),
        };
        let timeout = ms(c.timeout, 10_000, "timeout")?;
        let keepalive = ms(c.keepalive, 60_000, "keepalive")?;
        let target = Target {
            timeout,
            keepalive,
            endpoint,
            method,
            headers,
            batch,
            coalesce: seconds(
                q.max_coalescing_delay,
                1.0,
                &f("queue.max_coalescing_delay"),
            )?,
            retry_for: seconds(q.max_retry_time, 60.0, &f("queue.max_retry_time"))?,
            first_retry: seconds(q.initial_retry_delay, 0.01, &f("queue.initial_retry_delay"))?,
            max_retry: seconds(q.max_retry_delay, 60.0, &f("queue.max_retry_delay"))?,
        };
        Ok(Self {
            entries: queue::Queue::new("http-log", max_entries, move |rx| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                bronze_runtime::install_crypto_provider();
                let client = reqwest::Client::builder()
                    .timeout(target.timeout)
                    .pool_idle_timeout(target.keepalive)
                    .build();
                match (runtime, client) {
                    (Ok(rt), Ok(client)) => rt.block_on(send_batches(target, client, rx)),
                    (Err(e), _) => tracing::warn!(error = %e, "http-log cannot start"),
                    (_, Err(e)) => tracing::warn!(error = %e, "http-log cannot start"),
                }
            }),
        })
    }
}

/// Until the instance is dropped (and its queue drained): gathers up to
/// `batch` entries, waiting at most `coalesce` after the first, and sends
/// them; a flush request sends what is gathered at once.
async fn send_batches(t: Target, client: reqwest::Client, mut rx: mpsc::Receiver<Msg>) {
    let mut batch = Vec::with_capacity(t.batch);
    while let Some(first) = rx.recv().await {
        let mut flushed = None;
        match first {
            Msg::Entry(e) => batch.push(e),
            Msg::Flush(done) => flushed = Some(done),
        }
        let deadline = tokio::time::Instant::now() + t.coalesce;
        while flushed.is_none() && batch.len() < t.batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Msg::Entry(e))) => batch.push(e),
                Ok(Some(Msg::Flush(done))) => flushed = Some(done),
                Ok(None) | Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let body = if batch.len() == 1 {
                batch.pop().unwrap_or_default()
            } else {
                Value::Array(std::mem::take(&mut batch))
            };
            batch.clear();
            send(&t, &client, body.to_string()).await;
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

/// Sends one batch, retrying failures (no answer, or not 2xx) with
/// doubling delays for up to `retry_for`; then drops it with a warning.
async fn send(t: &Target, client: &reqwest::Client, body: String) {
    let started = tokio::time::Instant::now();
    let mut delay = t.first_retry;
    loop {
        let sent = client
            .request(t.method.clone(), t.endpoint.clone())
            .headers(t.headers.clone())
            .body(body.clone())
            .send()
            .await;
        let failure = match sent {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => format!("status {}", r.status()),
            Err(e) => e.to_string(),
        };
        if started.elapsed() + delay > t.retry_for {
            tracing::warn!(endpoint = %t.endpoint, %failure, "http-log gave up on a batch");
            return;
        }
        tracing::debug!(endpoint = %t.endpoint, %failure, "http-log retries a batch");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(t.max_retry);
    }
}

impl Plugin for HttpLog {
    fn name(&self) -> &'static str {
        "http-log"
    }

    fn priority(&self) -> i32 {
        12
    }

    fn sees_response_headers(&self) -> bool {
        true
    }

    fn flush(&self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        self.entries.flush()
    }

    fn log(&self, ctx: &Ctx, status: StatusCode, headers: &HeaderMap, _m: &GatewayMetrics) {
        self.entries
            .entry(super::file_log::entry(ctx, status, headers));
    }
}
