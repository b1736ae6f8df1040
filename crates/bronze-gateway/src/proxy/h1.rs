//! The HTTP/1.1 proxy path: the common request (a route without plugins
//! to an HTTP/1.1 upstream, no upgrade, no chunked request body) is
//! forwarded without building `http` messages, as nginx and HAProxy do:
//! the head is parsed in place (httparse), the upstream head is written
//! straight from it (hop-by-hop headers dropped, `X-Forwarded-*` and
//! `X-Request-Id` added, as the general path does), and the answer's bytes
//! go back as they come, framed by the upstream's own `Content-Length` or
//! chunked encoding, which is checked as it passes. One task serves the
//! downstream connection and the upstream one in turn: no channel, no
//! second task.
//!
//! Anything else — HTTP/2 (prior knowledge or ALPN), HTTP/1.0, upgrades,
//! `Expect`, `Transfer-Encoding` on a request, routes with plugins, HTTPS
//! redirects, gRPC upstreams, hashing balancers, unmatched requests and
//! malformed or oversized heads — goes to the general path: the rest of
//! the connection, from the first byte of that request, is handed to hyper
//! (`Conn::serve_hyper`), so it gets exactly the answers it always did.

use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bronze_runtime::serve::{Conn, Stream};
use bytes::{Buf, BytesMut};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::{Downstream, Proxy, forwarded};
use crate::balancer::{Key, Outcome};
use crate::router::Route;

/// Most headers a message may carry on this path (more: a request goes to
/// hyper, a response is refused with 502).
const MAX_HEADERS: usize = 64;
/// The longest response head accepted from an upstream.
const MAX_RESPONSE_HEAD: usize = 64 << 10;
/// A listener's bounds on its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From a request's first byte to the end of its head (slow-loris).
    pub header_read_timeout: Duration,
    /// How long an idle connection waits for its next request.
    pub keepalive_timeout: Duration,
    /// The longest request head read here (longer: hyper answers 431).
    pub max_head: usize,
    /// Connections start with a PROXY protocol header (`--proxy-protocol`),
    /// whose client address counts when the balancer is in `trusted_ips`.
    pub proxy_protocol: bool,
}

/// Between two reads of a request body (nginx's `client_body_timeout`) and
/// for each write to the client (`send_timeout`).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a request head asks of this path.
enum Parse {
    /// The head is not complete yet.
    Partial,
    /// Not for this path: hyper serves it (and the rest of the connection).
    General,
    Forward(Plan),
    /// A plugin answered in the access phase.
    Answer(Plan, crate::plugins::Answer),
    /// A plugin needs this check run off the worker first; then the request
    /// is planned again (from its bytes, so nothing is applied twice) with
    /// the verdict in `Client::verdict`.
    Verify(crate::plugins::Verification),
}

/// A request this path forwards; its upstream head is in the connection's
/// `line`, `host` and `rest` buffers.
struct Plan {
    route: Arc<Route>,
    head_len: usize,
    body_len: u64,
    head: bool,
    /// The client asked to close after this answer.
    close: bool,
    /// Idempotent and bodyless, with another target to try.
    replayable: bool,
    /// The route's plugins' state, when it has plugins.
    ctx: Option<crate::plugins::Ctx>,
    /// When the request went upstream (plugins' latencies).
    sent_at: Option<std::time::Instant>,
}

/// Per connection buffers and timer, reused by every request on it.
struct Client {
    /// Bytes read from the client and not yet forwarded.
    buf: BytesMut,
    /// The upstream request line (with the rewritten path).
    line: Vec<u8>,
    /// The client's Host value.
    host: Vec<u8>,
    /// The upstream headers after Host, through the blank line.
    rest: Vec<u8>,
    /// Bytes on their way out (upstream head, downstream head and body).
    out: Vec<u8>,
    /// Bytes read from the upstream.
    up: BytesMut,
    timer: Pin<Box<Sleep>>,
    /// The server's drain: once triggered, each answer is the connection's
    /// last and says so (`connection: close`).
    draining: bronze_runtime::Shutdown,
    /// The verdict of the check `Parse::Verify` asked for, for the next
    /// planning of the same request.
    verdict: Option<crate::plugins::Verdict>,
}

impl Client {
    fn new(first_wait: Duration, draining: bronze_runtime::Shutdown) -> Self {
        Self {
            buf: BytesMut::with_capacity(8 << 10),
            line: Vec::with_capacity(256),
            host: Vec::with_capacity(64),
            rest: Vec::with_capacity(1024),
            out: Vec::with_capacity(4 << 10),
            up: BytesMut::with_capacity(16 << 10),
            timer: Box::pin(tokio::time::sleep(first_wait)),
            draining,
            verdict: None,
        }
    }

    /// The upstream head in `out`: the request line, Host (`host`, or the
    /// client's), the rest.
    fn upstream_head(&mut self, host: Option<&http::HeaderValue>) {
        self.out.clear();
        self.out.extend_from_slice(&self.line);
        let host = host.map_or(&self.host[..], http::HeaderValue::as_bytes);
        header(&mut self.out, b"host", host);
        self.out.extend_from_slice(&self.rest);
    }
}

/// The upstream head the HTTP/1.1 path would send for `data` read from a
/// client (the fuzz targets' view), or `None` when it does not forward it
/// (incomplete, left to hyper, or answered by a plugin).
#[doc(hidden)]
pub fn plan_for_fuzzing(proxy: &Proxy, conn: &Downstream, data: &[u8]) -> Option<Vec<u8>> {
    let mut c = Client::new(Duration::from_secs(1), bronze_runtime::Shutdown::new());
    c.buf.extend_from_slice(data);
    match plan_request(proxy, conn, &mut c) {
        Parse::Forward(plan) => {
            assert!(plan.head_len <= data.len());
            c.upstream_head(None);
            Some(c.out)
        }
        Parse::Partial | Parse::General | Parse::Answer(..) | Parse::Verify(_) => None,
    }
}

/// Runs `fut` for at most `after`, on the connection's one timer.
async fn timed<F: Future>(
    timer: &mut Pin<Box<Sleep>>,
    after: Duration,
    fut: F,
) -> Option<F::Output> {
    super::until(timer, Instant::now() + after, fut).await
}

/// Serves a proxy connection: this path while requests suit it, then
/// hyper for the rest.
pub async fn serve_connection(mut conn: Conn, proxy: Arc<Proxy>, limits: Limits) {
    let Limits {
        header_read_timeout,
        keepalive_timeout,
        max_head,
        proxy_protocol: _,
    } = limits;
    // Behind a TCP balancer speaking the PROXY protocol, the client is the
    // one its header names, if the balancer is trusted.
    let peer = match conn.accepted.proxied {
        Some(client) if proxy.trust.ips.contains(conn.accepted.peer.ip()) => client,
        _ => conn.accepted.peer,
    };
    let trusted = proxy.trust.ips.contains(peer.ip());
    let downstream = Arc::new(Downstream::new(
        peer,
        conn.accepted.tls,
        conn.accepted.sni.clone(),
        trusted,
    ));
    let h2 = matches!(&conn.stream, Stream::Tls(s) if s.get_ref().1.alpn_protocol() == Some(b"h2"));
    let mut c = Client::new(header_read_timeout, conn.shutdown.clone());
    let mut stop = std::pin::pin!(conn.shutdown.waiter());
    if !h2 {
        loop {
            // A request head: its first byte within the keep-alive timeout, the
            // rest within `header_read_timeout` of that.
            let idle_until = Instant::now() + keepalive_timeout;
            let mut head_until = None;
            let plan = loop {
                if !c.buf.is_empty() {
                    match plan_request(&proxy, &downstream, &mut c) {
                        Parse::Partial if c.buf.len() < max_head => {}
                        Parse::Partial | Parse::General => break None,
                        Parse::Forward(p) => break Some((p, None)),
                        Parse::Answer(p, answer) => break Some((p, Some(answer))),
                        Parse::Verify(check) => {
                            c.verdict = Some(check.run().await);
                            continue;
                        }
                    }
                }
                if c.buf.capacity() - c.buf.len() < 1024 {
                    c.buf.reserve(8 << 10);
                }
                let idle = c.buf.is_empty();
                let deadline = if idle {
                    idle_until
                } else {
                    *head_until.get_or_insert_with(|| Instant::now() + header_read_timeout)
                };
                super::arm(&mut c.timer, deadline);
                // `until`'s loop, with a third branch: draining ends an
                // idle wait (through `until` with a nested select, 160 more
                // instructions a request).
                let read = tokio::select! {
                    biased;
                    r = conn.stream.read_buf(&mut c.buf) => r.ok(),
                    () = c.timer.as_mut() => {
                        if super::early(&mut c.timer, deadline) {
                            continue;
                        }
                        None
                    }
                    () = &mut stop, if idle => None,
                };
                match read {
                    Some(0) | None => return,
                    Some(_) => {}
                }
            };
            let keep_alive = match plan {
                None => break,
                Some((plan, None)) => forward(&proxy, &mut conn.stream, &mut c, plan).await,
                Some((mut plan, Some(answer))) => {
                    c.buf.advance(plan.head_len);
                    proxy.counters(&plan.route).count(answer.status());
                    // The body was not read: the connection cannot go on.
                    let close = plan.close || plan.body_len > 0;
                    let ctx = plan.ctx.as_mut();
                    answer_with(
                        &proxy,
                        &mut conn.stream,
                        &mut c,
                        *answer,
                        ctx,
                        plan.head,
                        close,
                    )
                    .await
                }
            };
            if !keep_alive || conn.shutdown.is_triggered() {
                let _ = conn.stream.shutdown().await;
                return;
            }
        }
    }
    let service = super::service(proxy, downstream);
    conn.serve_hyper(c.buf.split().freeze(), service).await;
}

/// What a header means to this path.
enum Kind {
    Host,
    ContentLength,
    Connection,
    /// `Transfer-Encoding`, `Expect`: the general path's business.
    General,
    /// Hop-by-hop, or replaced by the gateway's own value.
    Dropped,
    /// The forwarding headers: left to `forwarded::write`.
    ForwardedFor,
    ForwardedProto,
    ForwardedHost,
    RequestId,
    Other,
}

fn classify(name: &[u8]) -> Kind {
    let is = |h: &http::HeaderName| name.eq_ignore_ascii_case(h.as_str().as_bytes());
    if is(&http::header::HOST) {
        Kind::Host
    } else if is(&http::header::CONTENT_LENGTH) {
        Kind::ContentLength
    } else if is(&http::header::CONNECTION) {
        Kind::Connection
    } else if is(&http::header::TRANSFER_ENCODING) || is(&http::header::EXPECT) {
        Kind::General
    } else if is(&super::X_FORWARDED_FOR) {
        Kind::ForwardedFor
    } else if is(&super::X_REQUEST_ID) {
        Kind::RequestId
    } else if is(&super::X_FORWARDED_PROTO) {
        Kind::ForwardedProto
    } else if is(&super::X_FORWARDED_HOST) {
        Kind::ForwardedHost
    } else if super::is_hop_by_hop(name) || is(&super::X_REAL_IP) {
        Kind::Dropped
    } else {
        Kind::Other
    }
}

/// A `Content-Length` value: digits only (no sign, no list).
fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn tokens(v: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

pub(super) fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Parses the head at the start of `c.buf` and, when this path takes it,
/// runs the route's plugins' access phase and writes the upstream head
/// into `c.line`, `c.host` and `c.rest`.
fn plan_request(proxy: &Proxy, conn: &Downstream, c: &mut Client) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(&c.buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(_) => return Parse::General,
    };
    let (Some(1), Some(method), Some(target)) = (req.version, req.method, req.path) else {
        return Parse::General;
    };
    if !target.starts_with('/') {
        return Parse::General;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parse::General;
    };
    // Framing and connection handling, from the client's own headers.
    let mut host = None;
    let mut body_len = None;
    let mut close = false;
    for h in req.headers.iter() {
        match classify(h.name.as_bytes()) {
            Kind::Host if host.is_none() => host = Some(h.value),
            Kind::ContentLength if body_len.is_none() => match content_length(h.value) {
                Some(n) => body_len = Some(n),
                None => return Parse::General,
            },
            Kind::Host | Kind::ContentLength | Kind::General => return Parse::General,
            Kind::Connection => {
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !t.is_empty() && !t.eq_ignore_ascii_case(b"keep-alive") {
                        // An upgrade, or headers named as hop-by-hop.
                        return Parse::General;
                    }
                }
            }
            _ => {}
        }
    }
    let Some(Ok(host)) = host.map(std::str::from_utf8) else {
        return Parse::General;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let table = proxy.table.load();
    let Some(m) = table.find(&method, host, path, &*req.headers, conn.sni.as_deref()) else {
        return Parse::General;
    };
    let route = m.route;
    if (route.https_only && !conn.tls)
        || route.service.http2
        || route.service.tls.is_some()
        || route.service.upstream.hashes()
    {
        return Parse::General;
    }
    let mut plan = Plan {
        head_len,
        body_len: body_len.unwrap_or(0),
        head: method == Method::HEAD,
        close,
        replayable: false,
        ctx: None,
        sent_at: None,
        route: route.clone(),
    };
    let service = &route.service;
    plan.replayable = matches!(
        method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::TRACE
    ) && plan.body_len == 0
        && service.distinct_targets() > 1;
    let strip = |path: &str| {
        if route.strip_path {
            path.get(m.matched_len..).unwrap_or("").to_string()
        } else {
            path.to_string()
        }
    };
    // The client's address: the peer's, or what a trusted one says.
    let client = if conn.trusted {
        let name = proxy.trust.real_ip.header.as_str().as_bytes();
        let values = req
            .headers
            .iter()
            .filter(|h| h.name.as_bytes().eq_ignore_ascii_case(name))
            .map(|h| h.value);
        proxy.client(conn, values)
    } else {
        conn.peer
    };
    let named = (client != conn.peer).then(|| client.ip().to_string());
    let real_ip = named.as_deref().map_or(conn.ip.as_bytes(), str::as_bytes);
    let Some(mut ctx) = route.plugins.start(Some(route), client) else {
        // No plugins: the upstream head straight from the client's.
        c.line.clear();
        request_line(
            &mut c.line,
            &method,
            &service.path,
            target,
            path,
            query,
            &strip(path),
        );
        c.host.clear();
        c.host.extend_from_slice(host.as_bytes());
        let names = req.headers.iter().map(|h| (h.name.as_bytes(), h.value));
        upstream_headers(
            proxy,
            conn,
            real_ip,
            &mut c.rest,
            names,
            body_len,
            Some(host.as_bytes()),
        );
        return Parse::Forward(plan);
    };
    // Plugins see the request as the general path gives it to them.
    // Room for what auth plugins add (X-Consumer-*, X-Credential-*).
    let mut map = http::HeaderMap::with_capacity(req.headers.len() + 4);
    for h in req.headers.iter() {
        let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) else {
            return Parse::General;
        };
        map.append(n, v);
    }
    let Ok(uri) = http::Uri::from_maybe_shared(bytes::Bytes::copy_from_slice(target.as_bytes()))
    else {
        return Parse::General;
    };
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.headers = map;
    ctx.verdict = c.verdict.take();
    if let Some(check) = crate::plugins::Chain::prepare(&parts, &ctx) {
        return Parse::Verify(check);
    }
    if let Err(answer) = route.plugins.access(&mut parts, &mut ctx) {
        plan.ctx = Some(ctx);
        return Parse::Answer(plan, answer);
    }
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let path = parts.uri.path();
    c.line.clear();
    match &ctx.upstream_path {
        // A plugin set the whole upstream path (request-transformer).
        Some(p) => {
            c.line.extend_from_slice(parts.method.as_str().as_bytes());
            c.line.push(b' ');
            c.line
                .extend_from_slice(super::with_query(p, parts.uri.query()).as_bytes());
            c.line.extend_from_slice(b" HTTP/1.1\r\n");
        }
        None => request_line(
            &mut c.line,
            &parts.method,
            &service.path,
            target,
            path,
            parts.uri.query(),
            &strip(path),
        ),
    }
    // A plugin may have changed the method: only idempotent ones go to
    // another target.
    plan.replayable &= matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::TRACE
    );
    if ctx.log_request.is_some() {
        ctx.upstream_uri = Some(
            String::from_utf8_lossy(&c.line[parts.method.as_str().len() + 1..c.line.len() - 11])
                .into_owned(),
        );
    }
    let host = parts
        .headers
        .get(http::header::HOST)
        .map(http::HeaderValue::as_bytes);
    c.host.clear();
    c.host.extend_from_slice(host.unwrap_or_default());
    let names = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
    upstream_headers(proxy, conn, real_ip, &mut c.rest, names, body_len, host);
    plan.head = parts.method == Method::HEAD;
    plan.ctx = Some(ctx);
    Parse::Forward(plan)
}

/// `METHOD target HTTP/1.1`: the target rewritten for the service's path
/// and the route's `strip_path` (`rest`: what the route left of `path`).
fn request_line(
    out: &mut Vec<u8>,
    method: &Method,
    service_path: &str,
    target: &str,
    path: &str,
    query: Option<&str>,
    rest: &str,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    match super::rewrite_target(service_path, path, query, rest) {
        Some(t) => out.extend_from_slice(t.as_bytes()),
        None => out.extend_from_slice(target.as_bytes()),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// The upstream headers after Host, through the blank line: the client's
/// (or the plugins') end-to-end headers, `Content-Length` as framed here,
/// then the forwarding headers (`forwarded.rs`: `X-Forwarded-*`,
/// `X-Real-IP` from `real_ip`, `X-Request-Id`), whose client values the
/// copy leaves to that writer.
fn upstream_headers<'a>(
    proxy: &Proxy,
    conn: &Downstream,
    real_ip: &[u8],
    out: &mut Vec<u8>,
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    body_len: Option<u64>,
    host: Option<&[u8]>,
) {
    out.clear();
    let mut sink = forwarded::Raw::new(out);
    for (name, value) in headers {
        match classify(name) {
            Kind::ForwardedFor => {
                sink.forwarded_for.get_or_insert(value);
            }
            Kind::ForwardedProto => {
                sink.forwarded_proto.get_or_insert(value);
            }
            Kind::ForwardedHost => {
                sink.forwarded_host.get_or_insert(value);
            }
            Kind::RequestId => {
                sink.request_id.get_or_insert(value);
            }
            Kind::Other => header(sink.out, name, value),
            // Host, framing, hop-by-hop and X-Real-IP: the gateway's.
            _ => {}
        }
    }
    if let Some(n) = body_len {
        let _ = write!(sink.out, "content-length: {n}\r\n");
    }
    forwarded::write(
        &mut sink,
        proxy,
        conn,
        forwarded::Value::Bytes(real_ip),
        host.map(forwarded::Value::Bytes),
    );
    out.extend_from_slice(b"\r\n");
}

/// How the upstream's answer ends.
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes (then the client's connection closes too).
    UntilClose,
}

/// Why an exchange with the upstream failed before an answer came.
enum Failed {
    /// Connect, write or read failed (`true`: by timing out).
    Upstream(bool),
    /// The upstream's answer was not HTTP/1.1 this path can forward.
    Invalid,
    /// The client went away or stalled while sending its body.
    Client,
}

/// Forwards one planned request and its answer; returns whether the
/// client connection may carry another request.
async fn forward(proxy: &Proxy, stream: &mut Stream, c: &mut Client, mut plan: Plan) -> bool {
    let mut ctx = plan.ctx.take();
    let route = &plan.route;
    let service = &route.service;
    let counters = proxy.counters(route);
    c.buf.advance(plan.head_len);
    service.budget.request();
    let key = Key::default();
    let mut pick = match service.upstream.pick(&key, None).await {
        Ok(p) => p,
        Err(no_peer) => {
            counters.count(StatusCode::SERVICE_UNAVAILABLE);
            let resp = super::error(StatusCode::SERVICE_UNAVAILABLE, no_peer.message());
            let close = plan.close || plan.body_len > 0;
            return answer_with(proxy, stream, c, resp, ctx.as_mut(), plan.head, close).await;
        }
    };
    let mut attempt = 0;
    let mut reuse = true;
    plan.sent_at = ctx.is_some().then(std::time::Instant::now);
    let (mut up, ready) = loop {
        let host = pick.target.host_header.as_ref();
        c.upstream_head(host.filter(|_| !route.preserve_host));
        let sent = exchange(proxy, stream, c, &plan, ctx.as_mut(), pick.addr(), reuse);
        let (failed, reused) = match sent.await {
            Ok(done) => break done,
            Err(f) => f,
        };
        // A pooled connection the upstream had closed: once more on a new
        // one (nothing was answered, and a bodyless request is whole in
        // `out`), without blaming the target.
        if reused && plan.body_len == 0 && matches!(failed, Failed::Upstream(false)) {
            reuse = false;
            continue;
        }
        match failed {
            Failed::Client => return false,
            Failed::Upstream(timeout) => pick.report(if timeout {
                Outcome::Timeout
            } else {
                Outcome::TcpFailure
            }),
            Failed::Invalid => pick.report(Outcome::TcpFailure),
        }
        tracing::warn!(route = %route.name, target = %pick.addr(), attempt, "upstream failed");
        if plan.replayable
            && attempt < service.retries
            && service.budget.try_retry()
            && let Ok(next) = service.upstream.try_pick(&key, Some(&pick.target))
        {
            attempt += 1;
            pick = next;
            reuse = true;
            continue;
        }
        let (status, message) = if matches!(failed, Failed::Upstream(true)) {
            (
                StatusCode::GATEWAY_TIMEOUT,
                "The upstream server is timing out",
            )
        } else {
            (
                StatusCode::BAD_GATEWAY,
                "An invalid response was received from the upstream server",
            )
        };
        counters.count(status);
        let close = plan.close || plan.body_len > 0;
        let resp = super::error(status, message);
        return answer_with(proxy, stream, c, resp, ctx.as_mut(), plan.head, close).await;
    };

    // The answer's head, rewritten for the client in `c.out`.
    let Ready {
        len: head_len,
        status,
        mut framing,
        mut reusable,
    } = ready;
    pick.report(Outcome::Status(status));
    counters.count(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY));
    let keep_alive = !plan.close && !matches!(framing, Framing::UntilClose);
    c.up.advance(head_len);

    // The body: what came with the head, then the rest as it arrives.
    loop {
        let done = match &mut framing {
            Framing::Empty => true,
            Framing::Length(left) => {
                let n = c.up.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                c.out.extend_from_slice(&c.up[..n]);
                c.up.advance(n);
                *left -= n as u64;
                *left == 0
            }
            Framing::Chunked(chunks) => match chunks.scan(&c.up) {
                Ok(Some(end)) => {
                    c.out.extend_from_slice(&c.up[..end]);
                    c.up.advance(end);
                    true
                }
                Ok(None) => {
                    c.out.extend_from_slice(&c.up);
                    c.up.clear();
                    false
                }
                Err(Malformed) => {
                    tracing::warn!(route = %route.name, target = %pick.addr(), "upstream sent a malformed chunked body");
                    return false;
                }
            },
            Framing::UntilClose => {
                c.out.extend_from_slice(&c.up);
                c.up.clear();
                false
            }
        };
        if !c.out.is_empty() {
            let written = timed(&mut c.timer, CLIENT_TIMEOUT, async {
                stream.write_all(&c.out).await?;
                stream.flush().await
            })
            .await;
            c.out.clear();
            if !matches!(written, Some(Ok(()))) {
                return false;
            }
        }
        if done {
            break;
        }
        c.up.reserve(16 << 10);
        match timed(&mut c.timer, service.read_timeout, up.read_buf(&mut c.up)).await {
            Some(Ok(0)) if matches!(framing, Framing::UntilClose) => {
                reusable = false;
                break;
            }
            Some(Ok(n)) if n > 0 => {}
            _ => {
                // Cut short: the client sees its connection close before
                // the promised end, the only way HTTP/1.1 can say so.
                tracing::warn!(route = %route.name, target = %pick.addr(), "upstream body cut short");
                return false;
            }
        }
    }
    // Bytes past the end of the answer: the connection is out of step.
    if reusable && c.up.is_empty() {
        proxy.pool.put_back_raw(pick.addr(), up);
    } else {
        let _ = up.shutdown().await;
    }
    drop(pick);
    keep_alive
}

/// Sends `c.out` (the upstream head) and the request body to `target`,
/// then reads until the answer's head is complete (skipping 1xx interim
/// answers): returns the connection and the head's length in `c.up`.
async fn exchange(
    proxy: &Proxy,
    stream: &mut Stream,
    c: &mut Client,
    plan: &Plan,
    mut ctx: Option<&mut crate::plugins::Ctx>,
    target: &Arc<str>,
    reuse: bool,
) -> Result<(TcpStream, Ready), (Failed, bool)> {
    let timeouts = plan.route.service.timeouts();
    let conn = proxy
        .pool
        .raw(target, timeouts, reuse)
        .await
        .map_err(|e| (Failed::Upstream(e.is_timeout()), false))?;
    let reused = conn.reused;
    let mut up = conn.stream;
    let failed = |f| (f, reused);
    // The body bytes already read come along with the head.
    let mut left = plan.body_len;
    let now = c.buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
    c.out.extend_from_slice(&c.buf[..now]);
    c.buf.advance(now);
    left -= now as u64;
    let sent = timed(&mut c.timer, timeouts.write, up.write_all(&c.out)).await;
    match sent {
        Some(Ok(())) => {}
        Some(Err(_)) => return Err(failed(Failed::Upstream(false))),
        None => return Err(failed(Failed::Upstream(true))),
    }
    while left > 0 {
        c.buf.reserve(16 << 10);
        match timed(&mut c.timer, CLIENT_TIMEOUT, stream.read_buf(&mut c.buf)).await {
            Some(Ok(n)) if n > 0 => {}
            _ => return Err(failed(Failed::Client)),
        }
        let n = c.buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        match timed(&mut c.timer, timeouts.write, up.write_all(&c.buf[..n])).await {
            Some(Ok(())) => {}
            Some(Err(_)) => return Err(failed(Failed::Upstream(false))),
            None => return Err(failed(Failed::Upstream(true))),
        }
        c.buf.advance(n);
        left -= n as u64;
    }
    // The answer's head; the read timeout runs from the request's end.
    c.up.clear();
    let deadline = Instant::now() + plan.route.service.read_timeout;
    loop {
        if !c.up.is_empty() {
            match answer_head(proxy, c, plan, ctx.as_deref_mut()) {
                Head::Partial if c.up.len() < MAX_RESPONSE_HEAD => {}
                Head::Partial | Head::Invalid => return Err(failed(Failed::Invalid)),
                // 100 Continue and the like: not forwarded.
                Head::Interim(n) => {
                    c.up.advance(n);
                    continue;
                }
                Head::Ready(ready) => return Ok((up, ready)),
            }
        }
        c.up.reserve(16 << 10);
        match super::until(&mut c.timer, deadline, up.read_buf(&mut c.up)).await {
            Some(Ok(n)) if n > 0 => {}
            // Closed before a complete head (a reused connection closed
            // just as the request went out, or a broken upstream). Sent
            // again elsewhere only if not a byte of an answer came: the
            // upstream may have acted on it otherwise.
            Some(_) => return Err((Failed::Upstream(false), reused && c.up.is_empty())),
            None => return Err(failed(Failed::Upstream(true))),
        }
    }
}

/// An upstream answer's head, as far as it has come.
enum Head {
    Partial,
    /// A 1xx interim answer of this many bytes.
    Interim(usize),
    Ready(Ready),
    /// Not an answer this path can forward.
    Invalid,
}

struct Ready {
    len: usize,
    status: u16,
    framing: Framing,
    /// The upstream connection may carry another request afterwards.
    reusable: bool,
}

/// Hop-by-hop response headers (RFC 9110 7.6.1), `Transfer-Encoding`
/// aside: a chunked body is forwarded chunked, as it came.
fn hop_by_hop(name: &[u8]) -> bool {
    super::is_hop_by_hop(name) && !name.eq_ignore_ascii_case(b"transfer-encoding")
}

/// Parses the upstream answer at the start of `c.up`; once complete (and
/// final), writes the client's head for it into `c.out`.
fn answer_head(
    proxy: &Proxy,
    c: &mut Client,
    plan: &Plan,
    mut ctx: Option<&mut crate::plugins::Ctx>,
) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(&c.up) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Invalid,
    };
    let Some(code) = resp.code else {
        return Head::Invalid;
    };
    match code {
        // A 101 nobody asked for.
        101 => return Head::Invalid,
        100..=199 => return Head::Interim(len),
        _ => {}
    }
    let mut reusable = resp.version == Some(1);
    let mut chunked = None;
    let mut length = None;
    let mut names_headers = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    reusable = false;
                } else if !t.is_empty() && !t.eq_ignore_ascii_case(b"keep-alive") {
                    names_headers = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Chunked only when it is the last coding.
            chunked = Some(
                tokens(h.value)
                    .next_back()
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")),
            );
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let Some(n) = content_length(h.value) else {
                return Head::Invalid;
            };
            if length.is_some_and(|l| l != n) {
                return Head::Invalid;
            }
            length = Some(n);
        }
    }
    let framing = if plan.head || code == 204 || code == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked(Chunked::default()),
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    // Headers `Connection` names are hop-by-hop too.
    let named = |name: &[u8]| {
        names_headers
            && resp.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("connection")
                    && tokens(h.value).any(|t| t.eq_ignore_ascii_case(name))
            })
    };
    status_line(&mut c.out, code, resp.reason.unwrap_or(""));
    let framing_header = |name: &[u8]| {
        name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
    };
    // The upstream's end-to-end headers as they came, but those named in
    // `replaced`.
    let copy = |out: &mut Vec<u8>, replaced: &[(http::HeaderName, crate::plugins::Value)]| {
        for h in resp.headers.iter() {
            let name = h.name.as_bytes();
            // With a Transfer-Encoding, a Content-Length means nothing.
            let dropped = hop_by_hop(name)
                || (chunked.is_some() && name.eq_ignore_ascii_case(b"content-length"))
                || named(name)
                || replaced
                    .iter()
                    .any(|(n, _)| name.eq_ignore_ascii_case(n.as_str().as_bytes()));
            if !dropped {
                header(out, name, h.value);
            }
        }
    };
    if let (Some(ctx), Some(at)) = (ctx.as_deref_mut(), plan.sent_at) {
        ctx.upstream_latency = Some(at.elapsed());
    }
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
    match ctx {
        None => copy(&mut c.out, &[]),
        // The plugins add headers (rate-limiting's) and count, but none
        // looks at the upstream's: no HeaderMap of them.
        Some(ctx) if !ctx.sees_response_headers() => {
            copy(&mut c.out, &ctx.response_headers);
            for (name, value) in ctx.response_headers.drain(..) {
                value.with_bytes(|v| header(&mut c.out, name.as_str().as_bytes(), v));
            }
            crate::plugins::Chain::log(status, &http::HeaderMap::new(), ctx, &proxy.metrics);
        }
        Some(ctx) => {
            // Plugins see and change the end-to-end headers; the framing
            // stays the upstream's.
            // Room for what plugins add (rate-limiting's five, CORS').
            let mut map = http::HeaderMap::with_capacity(resp.headers.len() + 8);
            for h in resp.headers.iter() {
                let name = h.name.as_bytes();
                if hop_by_hop(name) || framing_header(name) || named(name) {
                    continue;
                }
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(name),
                    http::HeaderValue::from_bytes(h.value),
                ) {
                    map.append(n, v);
                }
            }
            crate::plugins::Chain::header_phase(status, &mut map, ctx);
            write_headers(&mut c.out, &map);
            for h in resp.headers.iter() {
                let name = h.name.as_bytes();
                let kept = if name.eq_ignore_ascii_case(b"content-length") {
                    chunked.is_none()
                } else {
                    name.eq_ignore_ascii_case(b"transfer-encoding")
                };
                if kept {
                    header(&mut c.out, name, h.value);
                    // Log plugins see the answer as sent (file-log's size).
                    if let (Ok(n), Ok(v)) = (
                        http::HeaderName::from_bytes(name),
                        http::HeaderValue::from_bytes(h.value),
                    ) {
                        map.append(n, v);
                    }
                }
            }
            crate::plugins::Chain::log(status, &map, ctx, &proxy.metrics);
        }
    }
    let until_close = matches!(framing, Framing::UntilClose);
    if plan.close || until_close || c.draining.is_triggered() {
        c.out.extend_from_slice(b"connection: close\r\n");
    }
    c.out.extend_from_slice(b"\r\n");
    Head::Ready(Ready {
        len,
        status: code,
        framing,
        reusable: reusable && !until_close,
    })
}

/// `HTTP/1.1 NNN reason`.
fn status_line(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
    out.extend_from_slice(code.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn write_headers(out: &mut Vec<u8>, map: &http::HeaderMap) {
    for (name, value) in map {
        header(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

/// Answers the client with a response the gateway made (an error, or a
/// plugin's early answer), after the plugins' header and log phases;
/// returns whether its connection may carry another request.
async fn answer_with(
    proxy: &Proxy,
    stream: &mut Stream,
    c: &mut Client,
    mut resp: http::Response<super::Body>,
    ctx: Option<&mut crate::plugins::Ctx>,
    head: bool,
    close: bool,
) -> bool {
    if let Some(ctx) = ctx {
        crate::plugins::Chain::finish(&mut resp, ctx, &proxy.metrics);
    }
    let close = close || c.draining.is_triggered();
    let (parts, body) = resp.into_parts();
    let body = match body {
        http_body_util::Either::Right(full) => http_body_util::BodyExt::collect(full)
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default(),
        http_body_util::Either::Left(_) => bytes::Bytes::new(),
    };
    status_line(
        &mut c.out,
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or(""),
    );
    let mut map = parts.headers;
    map.remove(http::header::CONTENT_LENGTH);
    map.remove(http::header::TRANSFER_ENCODING);
    map.remove(http::header::CONNECTION);
    write_headers(&mut c.out, &map);
    let _ = write!(c.out, "content-length: {}\r\n", body.len());
    if close {
        c.out.extend_from_slice(b"connection: close\r\n");
    }
    c.out.extend_from_slice(b"\r\n");
    if !head {
        c.out.extend_from_slice(&body);
    }
    let written = timed(&mut c.timer, CLIENT_TIMEOUT, async {
        stream.write_all(&c.out).await?;
        stream.flush().await
    })
    .await;
    c.out.clear();
    !close && matches!(written, Some(Ok(())))
}

/// A chunked body whose framing is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct Malformed;

/// Follows a chunked body as its bytes pass through, to find where it
/// ends (RFC 9112 7.1): chunk sizes in hex with optional extensions, data,
/// CRLFs, the last chunk and trailer fields.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
}

impl Chunked {
    /// Scans the next bytes of the body: `Some(n)` when the body ends
    /// after its first `n` bytes, `None` when it goes on, `Err` when the
    /// framing is broken.
    pub fn scan(&mut self, bytes: &[u8]) -> Result<Option<usize>, Malformed> {
        let mut i = 0;
        while i < bytes.len() {
            use ChunkState::*;
            if self.state == Data {
                let n = (bytes.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                self.size -= n as u64;
                i += n;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = bytes[i];
            self.state = match (self.state, b) {
                (Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') if self.digits < 15 => {
                    let d = (b as char).to_digit(16).ok_or(Malformed)?;
                    self.size = self.size * 16 + u64::from(d);
                    self.digits += 1;
                    Size
                }
                (Size, b';' | b' ' | b'\t') if self.digits > 0 => Extension,
                (Size, b'\r') if self.digits > 0 => SizeLf,
                (Extension, b'\r') => SizeLf,
                (SizeLf, b'\n') => {
                    self.digits = 0;
                    if self.size == 0 { TrailerStart } else { Data }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size,
                (TrailerStart, b'\r') => EndLf,
                (Trailer, b'\r') => TrailerLf,
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => return Ok(Some(i + 1)),
                // Any other byte but a bare LF is text of an extension or
                // a trailer field.
                (Extension, b) if b != b'\n' => Extension,
                (TrailerStart | Trailer, b) if b != b'\n' => Trailer,
                _ => return Err(Malformed),
            };
            i += 1;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Result<Option<usize>, Malformed> {
        Chunked::default().scan(body)
    }

    #[test]
    fn chunked_bodies_end_where_the_last_chunk_and_trailers_end() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT";
        assert_eq!(whole(body), Ok(Some(body.len() - 4)));
        let trailers = b"A\r\n0123456789\r\n0\r\nx-sum: 1\r\nx-b: 2\r\n\r\n";
        assert_eq!(whole(trailers), Ok(Some(trailers.len())));
        assert_eq!(whole(b"5\r\nhel"), Ok(None));
        // Every split point gives the same end.
        for cut in 0..=body.len() {
            let mut c = Chunked::default();
            let first = c.scan(&body[..cut]).unwrap();
            let end = match first {
                Some(n) => n,
                None => cut + c.scan(&body[cut..]).unwrap().unwrap(),
            };
            assert_eq!(end, body.len() - 4, "cut at {cut}");
        }
    }

    #[test]
    fn broken_chunk_framing_is_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"1234567890abcdef0\r\n",
            b"0\r\nbad\ntrailer\r\n\r\n",
            b"0\r\n\r\r",
        ] {
            assert_eq!(
                whole(bad),
                Err(Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn content_lengths_are_plain_digits() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"1234"), Some(1234));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1,1",
            b" 1",
            b"99999999999999999999",
        ] {
            assert_eq!(content_length(bad), None);
        }
    }
}
