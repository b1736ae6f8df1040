//! file-log: one JSON object per request (Kong's log serializer fields),
//! one per line, appended to `path`. Requests only hand a line to a
//! bounded queue ([`Queue`]); one writer thread per instance, started with
//! the first line, writes what has gathered with one write (a full queue
//! drops the line and counts it, never blocks a request). Shutdown waits
//! for the lines queued before it.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use http::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::queue::{self, Queue};
use super::{Ctx, Plugin, parse_config};
use crate::declarative::Invalid;
use crate::metrics::GatewayMetrics;

/// Kong's configuration of file-log with nothing set, as Kong shows it
/// (3.9's `kong/plugins/file-log/schema.lua`): every field, with its
/// default or null. Bronze reads an unset field as that default.
pub(crate) fn kong_defaults() -> serde_json::Value {
    serde_json::json!({
        "path": null,
        "reopen": false,
        "custom_fields_by_lua": null,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    path: Option<String>,
    #[serde(default)]
    reopen: Option<bool>,
    #[serde(default)]
    custom_fields_by_lua: Option<Map<String, Value>>,
}

type Msg = queue::Msg<String>;

pub struct FileLog {
    lines: Queue<Msg>,
}

fn open(path: &str) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl FileLog {
    pub fn new(config: Option<&Value>, field: &str) -> Result<Self, Invalid> {
        let c: Config = parse_config(config, field)?;
        let f = |n: &str| format!("{field}.{n}");
        let path = c
            .path
            .filter(|p| !p.is_empty())
            .ok_or_else(|| Invalid::new(f("path"), "required field missing"))?;
        super::no_lua(c.custom_fields_by_lua.as_ref(), field)?;
        // Checked, not created: a refused configuration leaves no file.
        let p = std::path::Path::new(&path);
        if p.is_dir()
            || !p
                .parent()
                .is_some_and(|d| d.as_os_str().is_empty() || d.is_dir())
        {
            return Err(Invalid::new(
                f("path"),
                format!("{path}: expected a file in an existing directory"),
            ));
        }
        let reopen = c.reopen.unwrap_or(false);
        Ok(Self {
            lines: Queue::new("file-log", 8192, move |rx| write_lines(&path, reopen, rx)),
        })
    }
}

/// Until the instance is dropped: appends the lines that have gathered
/// (up to 64 KiB at a time) with one write, opening the file for each
/// such write when `reopen` (log rotation) or after a failure.
fn write_lines(path: &str, reopen: bool, mut rx: tokio::sync::mpsc::Receiver<Msg>) {
    let mut file: Option<std::fs::File> = None;
    let mut buf = String::new();
    let mut flushed = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        queue::gather(first, &mut rx, &mut flushed, |line| {
            buf.push_str(&line);
            buf.len()
        });
        if !buf.is_empty() {
            if reopen || file.is_none() {
                file = open(path).ok();
            }
            match file.as_mut() {
                None => tracing::warn!(%path, "file-log cannot open its file; lines dropped"),
                Some(out) => {
                    if let Err(error) = out.write_all(buf.as_bytes()) {
                        tracing::warn!(%path, %error, "file-log write failed");
                        file = None;
                    }
                }
            }
            buf.clear();
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

fn headers_json(h: &HeaderMap) -> Value {
    let mut m = Map::new();
    for name in h.keys() {
        let values: Vec<&str> = h
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        // Kong's serializer never logs credentials.
        let v = if name == http::header::AUTHORIZATION || name == http::header::PROXY_AUTHORIZATION
        {
            Value::from("REDACTED")
        } else if values.len() == 1 {
            Value::from(values[0])
        } else {
            Value::from(values)
        };
        m.insert(name.as_str().to_string(), v);
    }
    Value::Object(m)
}

/// Kong's `request` object, taken before any plugin runs (so that
/// requests refused by an earlier plugin are logged too).
pub fn snapshot(method: &http::Method, uri: &http::Uri, h: &HeaderMap) -> Value {
    let host = h
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut query = Map::new();
    if let Some(q) = uri.query() {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .map_or((pair, Value::Bool(true)), |(k, v)| {
                    (
                        k,
                        Value::from(super::key_auth::percent_decode(v).into_owned()),
                    )
                });
            query.insert(super::key_auth::percent_decode(k).into_owned(), v);
        }
    }
    let size = h
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    json!({
        "method": method.as_str(),
        "uri": path,
        "url": format!("http://{host}{path}"),
        "querystring": query,
        "headers": headers_json(h),
        "size": size,
    })
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Plugin for FileLog {
    fn name(&self) -> &'static str {
        "file-log"
    }

    fn priority(&self) -> i32 {
        9
    }

    fn sees_response_headers(&self) -> bool {
        true
    }

    fn flush(&self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        self.lines.flush()
    }

    fn log(&self, ctx: &Ctx, status: StatusCode, headers: &HeaderMap, _m: &GatewayMetrics) {
        let mut line = entry(ctx, status, headers).to_string();
        line.push('\n');
        self.lines.entry(line);
    }
}

/// Kong's log serializer: one request's JSON object, as file-log writes it
/// and http-log sends it.
pub fn entry(ctx: &Ctx, status: StatusCode, headers: &HeaderMap) -> Value {
    let total = ctx.started.elapsed();
    let started_at = millis(SystemTime::now() - total);
    let request = ctx.log_request.as_deref().cloned().unwrap_or(Value::Null);
    let size = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut entry = json!({
        "request": request,
        "response": {
            "status": status.as_u16(),
            "headers": headers_json(headers),
            "size": size,
        },
        "latencies": {
            "request": total.as_millis() as u64,
            "proxy": ctx.upstream_latency.map(|d| d.as_millis() as u64),
            "kong": total.saturating_sub(ctx.upstream_latency.unwrap_or_default()).as_millis() as u64,
        },
        "client_ip": ctx.peer.ip().to_string(),
        "started_at": started_at,
        "source": ctx.source(),
    });
    if let Some(u) = &ctx.upstream_uri {
        entry["upstream_uri"] = Value::from(u.as_str());
    }
    if let Some(r) = &ctx.route {
        entry["route"] = json!({ "name": r.name });
        entry["service"] = json!({ "name": r.service.name });
    }
    if let Some(c) = &ctx.consumer {
        entry["consumer"] = json!({
            "id": c.id,
            "username": c.username,
            "custom_id": c.custom_id,
        });
    }
    if let Some(c) = ctx.credential.as_ref().and_then(|v| v.to_str().ok()) {
        entry["authenticated_entity"] = json!({ "id": c });
    }
    entry
}
