//! tcp-log and udp-log: Kong's log serializer entries (as file-log writes
//! them) sent to a log collector's TCP or UDP input (Logstash, Fluentd,
//! Vector). Requests only queue an entry ([`Queue`]); one thread per
//! instance, started with the first entry, sends them.
//!
//! tcp-log writes one JSON object per line, what has gathered in one
//! write, on a connection kept open for `keepalive` milliseconds of
//! idleness (optionally TLS, which Kong does not verify: neither does
//! Bronze; `tls_sni` names the server). A failed write is tried once more
//! on a new connection, then the entries are dropped with a warning.
//! udp-log sends each entry as one datagram.

use std::time::Duration;

use http::StatusCode;
use http::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::queue::{Msg, Queue};
use super::{Ctx, Plugin, parse_config};
use crate::declarative::Invalid;
use crate::metrics::GatewayMetrics;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    host: Option<String>,
    port: Option<u16>,
    /// Milliseconds (Kong's default 10000).
    #[serde(default)]
    timeout: Option<u64>,
    /// tcp-log: milliseconds an idle connection is kept (Kong's 60000).
    #[serde(default)]
    keepalive: Option<u64>,
    #[serde(default)]
    tls: Option<bool>,
    #[serde(default)]
    tls_sni: Option<String>,
    #[serde(default)]
    custom_fields_by_lua: Option<Map<String, Value>>,
}

/// Kong's configuration of tcp-log or udp-log with nothing set, as Kong
/// shows it (3.9's `kong/plugins/{tcp,udp}-log/schema.lua`): every field,
/// with its default or null. Bronze reads an unset field as that default.
pub(crate) fn kong_defaults(transport: Transport) -> serde_json::Value {
    let mut v = serde_json::json!({
        "host": null,
        "port": null,
        "timeout": 10000,
        "custom_fields_by_lua": null,
    });
    if transport == Transport::Tcp {
        v["keepalive"] = 60000.into();
        v["tls"] = false.into();
        v["tls_sni"] = serde_json::Value::Null;
    }
    v
}

#[derive(Clone, Copy, PartialEq)]
pub enum Transport {
    Tcp,
    Udp,
}

struct Target {
    host: String,
    port: u16,
    timeout: Duration,
    keepalive: Duration,
    /// The server name for TLS, when TLS is on.
    tls: Option<rustls_pki_types::ServerName<'static>>,
}

pub struct SocketLog {
    name: &'static str,
    entries: Queue<Msg<String>>,
}

impl SocketLog {
    pub fn new(transport: Transport, config: Option<&Value>, field: &str) -> Result<Self, Invalid> {
        let c: Config = parse_config(config, field)?;
        let f = |n: &str| format!("{field}.{n}");
        super::no_lua(c.custom_fields_by_lua.as_ref(), field)?;
        let host = c
            .host
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Invalid::new(f("host"), "required field missing"))?;
        let port = c
            .port
            .filter(|p| *p != 0)
            .ok_or_else(|| Invalid::new(f("port"), "required field missing (1 to 65535)"))?;
        let ms = |v: Option<u64>, default: u64, name: &str| match v.unwrap_or(default) {
            0 => Err(Invalid::new(f(name), "expected at least 1 (milliseconds)")),
            n => Ok(Duration::from_millis(n)),
        };
        let timeout = ms(c.timeout, 10_000, "timeout")?;
        let name = match transport {
            Transport::Tcp => "tcp-log",
            Transport::Udp => {
                for (given, n) in [
                    (c.keepalive.is_some(), "keepalive"),
                    (c.tls.is_some(), "tls"),
                    (c.tls_sni.is_some(), "tls_sni"),
                ] {
                    if given {
                        return Err(Invalid::new(
                            f(n),
                            "unknown field (tcp-log's, not udp-log's)",
                        ));
                    }
                }
                "udp-log"
            }
        };
        let keepalive = ms(c.keepalive, 60_000, "keepalive")?;
        let tls = match c.tls.unwrap_or(false) {
            false => None,
            true => {
                let sni = c.tls_sni.clone().unwrap_or_else(|| host.clone());
                Some(
                    rustls_pki_types::ServerName::try_from(sni.clone()).map_err(|_| {
                        Invalid::new(f("tls_sni"), format!("{sni:?}: expected a server name"))
                    })?,
                )
            }
        };
        let target = Target {
            host,
            port,
            timeout,
            keepalive,
            tls,
        };
        let entries =
            Queue::new(
                name,
                10_000,
                move |rx| match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => match transport {
                        Transport::Tcp => rt.block_on(send_tcp(target, rx)),
                        Transport::Udp => rt.block_on(send_udp(target, rx)),
                    },
                    Err(error) => tracing::warn!(%error, plugin = name, "cannot start"),
                },
            );
        Ok(Self { name, entries })
    }
}

trait Writer: tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncWrite + Unpin + Send> Writer for T {}

async fn connect(t: &Target) -> std::io::Result<Box<dyn Writer>> {
    let tcp = tokio::time::timeout(
        t.timeout,
        tokio::net::TcpStream::connect((t.host.as_str(), t.port)),
    )
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let _ = tcp.set_nodelay(true);
    let Some(name) = &t.tls else {
        return Ok(Box::new(tcp));
    };
    let config = crate::upstream::tls::unverified_client().map_err(std::io::Error::other)?;
    let tls = tokio::time::timeout(
        t.timeout,
        tokio_rustls::TlsConnector::from(config).connect(name.clone(), tcp),
    )
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(Box::new(tls))
}

/// Until the instance is dropped: writes what has gathered (up to 64 KiB
/// of lines) in one write, keeping the connection while it is used.
async fn send_tcp(t: Target, mut rx: mpsc::Receiver<Msg<String>>) {
    let mut conn: Option<Box<dyn Writer>> = None;
    let mut buf = Vec::new();
    // Batches dropped so far: warned at the 1st, 2nd, 4th, 8th... (a
    // collector that is down does not flood the gateway's own log).
    let mut dropped = 0u64;
    let mut flushed = Vec::new();
    loop {
        let first = match &conn {
            // Idle past `keepalive`: close, then wait for the next entry.
            Some(_) => match tokio::time::timeout(t.keepalive, rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    conn = None;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(first) = first else {
            return;
        };
        super::queue::gather(first, &mut rx, &mut flushed, |line| {
            buf.extend_from_slice(line.as_bytes());
            buf.len()
        });
        if !buf.is_empty() {
            let mut sent = false;
            let mut failure = String::new();
            for _ in 0..2 {
                if conn.is_none() {
                    match connect(&t).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            failure = e.to_string();
                            continue;
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                match tokio::time::timeout(t.timeout, c.write_all(&buf)).await {
                    Ok(Ok(())) => {
                        sent = true;
                        break;
                    }
                    Ok(Err(e)) => failure = e.to_string(),
                    Err(_) => failure = "timed out".into(),
                }
                conn = None;
            }
            if !sent {
                dropped += 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(host = %t.host, port = t.port, %failure, batches = dropped, "tcp-log dropped entries");
                }
            }
            buf.clear();
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Until the instance is dropped: one datagram per entry.
async fn send_udp(t: Target, mut rx: mpsc::Receiver<Msg<String>>) {
    let mut socket: Option<tokio::net::UdpSocket> = None;
    while let Some(msg) = rx.recv().await {
        let entry = match msg {
            Msg::Entry(e) => e,
            Msg::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        if socket.is_none() {
            let bound = async {
                let s = tokio::net::UdpSocket::bind(("0.0.0.0", 0)).await?;
                s.connect((t.host.as_str(), t.port)).await?;
                Ok::<_, std::io::Error>(s)
            };
            match bound.await {
                Ok(s) => socket = Some(s),
                Err(error) => {
                    tracing::warn!(host = %t.host, port = t.port, %error, "udp-log dropped an entry");
                    continue;
                }
            }
        }
        if let Some(s) = &socket
            && let Err(error) = s.send(entry.as_bytes()).await
        {
            tracing::debug!(host = %t.host, port = t.port, %error, "udp-log dropped an entry");
            socket = None;
        }
    }
}

impl Plugin for SocketLog {
    fn name(&self) -> &'static str {
        self.name
    }

    fn priority(&self) -> i32 {
        // Kong's: tcp-log 7, udp-log 8.
        if self.name == "tcp-log" { 7 } else { 8 }
    }

    fn sees_response_headers(&self) -> bool {
        true
    }

    fn flush(&self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        self.entries.flush()
    }

    fn log(&self, ctx: &Ctx, status: StatusCode, headers: &HeaderMap, _m: &GatewayMetrics) {
        let mut entry = super::file_log::entry(ctx, status, headers).to_string();
        if self.name == "tcp-log" {
            entry.push('\n');
        }
        self.entries.entry(entry);
    }
}
