//! The proxy: match a route in the current table (one atomic load), pick a
//! target, rewrite the request (path, Host, hop-by-hop headers,
//! X-Forwarded-*, X-Request-Id) and stream it to the upstream over a
//! keep-alive pool; stream the answer back. Bodies are never buffered.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::balancer::{Key, Outcome, Pick, RequestInfo, Tracked};
use crate::metrics::GatewayMetrics;
use crate::router::{Matched, Route, Service, Table};
use crate::upstream::{Pool, PooledBody, SendError, UpstreamBody};

mod forwarded;
mod h1;
pub use h1::{Chunked, Limits, Malformed, plan_for_fuzzing, serve_connection};
pub use trusted::{RealIp, Trust, TrustedIps};

mod trusted;

pub type Body = Either<Tracked, Full<Bytes>>;

pub struct Proxy {
    pub table: ArcSwap<Table>,
    pool: Arc<Pool>,
    metrics: Arc<GatewayMetrics>,
    /// Requests no route matched.
    unmatched: crate::metrics::RouteCounters,
    request_ids: AtomicU64,
    id_prefix: u32,
    /// Peers whose X-Forwarded-Proto and -Host are kept and whose word on
    /// the client's address is taken (`trusted_ips`, `real_ip_header`).
    pub trust: Trust,
}

/// What the proxy knows of a downstream connection, computed once when it
/// is accepted rather than per request.
pub struct Downstream {
    pub peer: SocketAddr,
    /// The peer's IP as a header value (X-Forwarded-For, X-Real-IP).
    pub ip: HeaderValue,
    /// Whether the connection came over TLS (X-Forwarded-Proto, https-only
    /// routes).
    pub tls: bool,
    /// The server name the TLS client asked for (routes' `snis`).
    pub sni: Option<Arc<str>>,
    /// The peer is in `trusted_ips`: its X-Forwarded-Proto and -Host are
    /// kept (see `trusted`).
    pub trusted: bool,
    /// One timer per connection, moved forward for each request: moving a
    /// registered tokio timer later is an atomic store, where a new timer
    /// per request costs a registration and a removal in the timer wheel.
    /// (Concurrent HTTP/2 streams find it taken and make their own.)
    timer: parking_lot::Mutex<Option<Pin<Box<tokio::time::Sleep>>>>,
}

/// Runs `fut` until `deadline` on `timer` (`None`: it ran out). Both proxy
/// paths keep one such timer per connection, re-armed lazily (as nginx's
/// timers): most steps of a connection set a deadline later than the one
/// armed, and moving the timer costs more than the step's own work, so a
/// timer armed earlier is kept; when it fires before `deadline`, it is
/// moved then. A deadline earlier than the armed one moves it at once: a
/// timeout never fires late.
pub(crate) async fn until<F: Future>(
    timer: &mut Pin<Box<tokio::time::Sleep>>,
    deadline: tokio::time::Instant,
    fut: F,
) -> Option<F::Output> {
    arm(timer, deadline);
    let mut fut = std::pin::pin!(fut);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return Some(out),
            () = timer.as_mut() => {
                if !early(timer, deadline) {
                    return None;
                }
            }
        }
    }
}

/// Arms `timer` for `deadline` unless it is armed for an earlier instant
/// that has not passed (see `until`).
pub(crate) fn arm(timer: &mut Pin<Box<tokio::time::Sleep>>, deadline: tokio::time::Instant) {
    if timer.deadline() > deadline || timer.is_elapsed() {
        timer.as_mut().reset(deadline);
    }
}

/// `timer` fired: whether that was before `deadline` (then it is moved
/// there and the wait goes on) rather than the deadline itself.
fn early(timer: &mut Pin<Box<tokio::time::Sleep>>, deadline: tokio::time::Instant) -> bool {
    if tokio::time::Instant::now() >= deadline {
        return false;
    }
    timer.as_mut().reset(deadline);
    true
}

/// Runs `fut` until `deadline`, on the connection's reusable timer.
async fn within<F: Future>(
    conn: &Downstream,
    deadline: tokio::time::Instant,
    fut: F,
) -> Option<F::Output> {
    let taken = conn.timer.lock().take();
    let mut timer = taken.unwrap_or_else(|| Box::pin(tokio::time::sleep_until(deadline)));
    let out = until(&mut timer, deadline, fut).await;
    *conn.timer.lock() = Some(timer);
    out
}

impl Downstream {
    pub fn new(peer: SocketAddr, tls: bool, sni: Option<Arc<str>>, trusted: bool) -> Self {
        Self {
            peer,
            tls,
            sni,
            trusted,
            ip: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or(HeaderValue::from_static("")),
            timer: parking_lot::Mutex::new(None),
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that describe one connection, not the message (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Whether `name` is one of the hop-by-hop headers (or `Upgrade`).
fn is_hop_by_hop(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"upgrade")
        || HOP_BY_HOP
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
}

/// Removes hop-by-hop headers, including those `Connection` names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names (cheaper than hashing each of the nine):
    // most messages carry none, or only `Connection: keep-alive`.
    let mut present = 0u16;
    for n in h.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == n) {
            present |= 1 << i;
        } else if n == header::UPGRADE {
            present |= 1 << HOP_BY_HOP.len();
        }
    }
    if present == 0 {
        return;
    }
    // `Connection` may name further headers; `keep-alive` and `close` are
    // options, not names.
    if present & 1 != 0 {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for n in &named {
            h.remove(n);
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(n);
        }
    }
    if present & (1 << HOP_BY_HOP.len()) != 0 {
        h.remove(header::UPGRADE);
    }
}

/// The `Upgrade` value of an HTTP/1.1 upgrade request (`Connection:
/// upgrade` with an `Upgrade` header).
fn upgrade_of(h: &HeaderMap) -> Option<HeaderValue> {
    let asks = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        h.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Kong's error shape: `{"message": "..."}`.
pub fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r.headers_mut()
        .insert("server", HeaderValue::from_static("bronze-gateway"));
    r
}

/// Kong's `X-Request-Id` shape: per process prefix and counter, in hex.
pub(crate) fn request_id(prefix: u32, n: u64) -> [u8; 25] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 25];
    for (i, b) in buf[..8].iter_mut().enumerate() {
        *b = HEX[((prefix >> (28 - 4 * i)) & 0xf) as usize];
    }
    buf[8] = b'-';
    for (i, b) in buf[9..].iter_mut().enumerate() {
        *b = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    buf
}

/// The upstream path: the service's path, then what the route did not
/// strip, then the query. The client's own path is reused untouched when
/// the result is the same (a route on `/` of a service on `/`).
fn upstream_path(service_path: &str, uri: &Uri, rest: &str) -> Option<PathAndQuery> {
    match rewrite_target(service_path, uri.path(), uri.query(), rest) {
        None => Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or(PathAndQuery::from_static("/")),
        ),
        Some(p) => PathAndQuery::from_maybe_shared(Bytes::from(p)).ok(),
    }
}

/// `path` and the request's `query`, as a request target.
pub(crate) fn with_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

/// The upstream request target for a client's `path` and `query`, or
/// `None` when it is the client's own (a route on `/` of a service on `/`).
pub(crate) fn rewrite_target(
    service_path: &str,
    path: &str,
    query: Option<&str>,
    rest: &str,
) -> Option<String> {
    if service_path == "/"
        && ((rest.len() == path.len() && rest.starts_with('/'))
            || (path.len() == rest.len() + 1 && !rest.starts_with('/')))
    {
        return None;
    }
    let mut p = String::with_capacity(service_path.len() + rest.len() + 1);
    p.push_str(service_path);
    if p.ends_with('/') && rest.starts_with('/') {
        p.push_str(&rest[1..]);
    } else if !p.ends_with('/') && !rest.is_empty() && !rest.starts_with('/') {
        p.push('/');
        p.push_str(rest);
    } else {
        p.push_str(rest);
    }
    if let Some(q) = query {
        p.push('?');
        p.push_str(q);
    }
    Some(p)
}

/// Kong's answer to plain HTTP on an https-only route: 426 with
/// `Upgrade: TLS/1.2, HTTP/1.1`, or a redirect to `https://<host><uri>`
/// (the host without its port, as nginx's `$host`).
fn https_required(status: StatusCode, req: &Request<Incoming>, host: &str) -> Response<Body> {
    if status == StatusCode::UPGRADE_REQUIRED {
        let mut r = error(status, "Please use HTTPS protocol");
        // Connection-specific headers do not exist in HTTP/2.
        if req.version() <= Version::HTTP_11 {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            r.headers_mut().insert(
                header::UPGRADE,
                HeaderValue::from_static("TLS/1.2, HTTP/1.1"),
            );
        }
        return r;
    }
    let name = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    let uri = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
    *r.status_mut() = status;
    match HeaderValue::from_str(&format!("https://{name}{uri}")) {
        Ok(location) => {
            r.headers_mut().insert(header::LOCATION, location);
        }
        Err(_) => return error(StatusCode::BAD_REQUEST, "Please use HTTPS protocol"),
    }
    r.headers_mut()
        .insert("server", HeaderValue::from_static("bronze-gateway"));
    r
}

/// `X-Real-IP`: the client's address (the peer's unless a trusted peer
/// named another).
fn real_ip(conn: &Downstream, client: SocketAddr) -> HeaderValue {
    if client == conn.peer {
        conn.ip.clone()
    } else {
        HeaderValue::from_str(&client.ip().to_string()).unwrap_or_else(|_| conn.ip.clone())
    }
}

/// Whether the client's request came over TLS: to the gateway, or to a
/// trusted proxy in front of it that says so in `X-Forwarded-Proto`.
fn secure(conn: &Downstream, headers: &HeaderMap) -> bool {
    conn.tls
        || (conn.trusted
            && headers
                .get(X_FORWARDED_PROTO)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https")))
}

/// The hyper service of one downstream connection (HTTP/2, and what the
/// HTTP/1.1 path leaves to the general one).
pub fn service(
    proxy: Arc<Proxy>,
    downstream: Arc<Downstream>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send,
> + Send
+ 'static {
    hyper::service::service_fn(move |req| {
        let proxy = proxy.clone();
        let downstream = downstream.clone();
        async move { Ok(proxy.handle(req, &downstream).await) }
    })
}

impl Proxy {
    /// `upstream_idle`: how long idle upstream connections are kept;
    /// `tls`: the client side of TLS to upstreams; `trust`: the
    /// `trusted_ips` and how to read the client's address from them.
    pub fn new(
        table: Table,
        metrics: Arc<GatewayMetrics>,
        upstream_idle: Duration,
        tls: crate::upstream::tls::Clients,
        trust: Trust,
    ) -> Self {
        table.start();
        Self {
            trust,
            table: ArcSwap::from_pointee(table),
            pool: Arc::new(Pool::new(upstream_idle, 1024, tls)),
            unmatched: metrics.route_counters("", ""),
            metrics,
            request_ids: AtomicU64::new(0),
            id_prefix: fastrand::u32(..),
        }
    }

    /// Closes idle upstream connections past their timeout, every half
    /// timeout, until `shutdown`.
    pub async fn sweep_idle(&self, shutdown: bronze_runtime::Shutdown) {
        let every = (self.pool.idle_timeout() / 2).max(Duration::from_millis(50));
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => self.pool.sweep(),
                () = shutdown.wait() => return,
            }
        }
    }

    /// A route's request counters, made on its first request.
    fn counters<'r>(&self, route: &'r crate::router::Route) -> &'r crate::metrics::RouteCounters {
        route.counters.get_or_init(|| {
            self.metrics
                .route_counters(&route.name, &route.service.name)
        })
    }

    /// Replaces the routing table; requests already matched keep theirs.
    pub fn swap(&self, table: Table) {
        table.start();
        self.table.store(Arc::new(table));
    }

    /// The client's address for a request on `conn`: the peer's, or, from
    /// a trusted peer, what its `real_ip_header` says (`values`: that
    /// header's values, in order).
    pub fn client<'a>(
        &self,
        conn: &Downstream,
        values: impl Iterator<Item = &'a [u8]>,
    ) -> SocketAddr {
        if !conn.trusted {
            return conn.peer;
        }
        self.trust
            .real_ip
            .client(&self.trust.ips, values)
            .map_or(conn.peer, |ip| SocketAddr::new(ip, conn.peer.port()))
    }

    /// A new `X-Request-Id` value.
    pub(crate) fn next_request_id(&self) -> [u8; 25] {
        let n = self.request_ids.fetch_add(1, Ordering::Relaxed);
        request_id(self.id_prefix, n)
    }

    pub async fn handle(&self, req: Request<Incoming>, conn: &Downstream) -> Response<Body> {
        let mut ctx = None;
        let mut resp = self.forward(req, conn, &mut ctx).await;
        if let Some(ctx) = &mut ctx {
            crate::plugins::Chain::finish(&mut resp, ctx, &self.metrics);
        }
        resp
    }

    /// Routes and forwards; `ctx` is set when plugins apply. One step after
    /// the other, each ending the request with its answer when it must:
    /// the route ([`Self::route`]), the https-only rule, the plugins'
    /// access phase ([`access`]), the balancer's pick ([`balance_key`]),
    /// the upstream target ([`upstream_target`]) and headers
    /// ([`Self::upstream_headers`]), the exchange with its retries
    /// ([`Self::exchange`]), the answer ([`answer`]).
    async fn forward(
        &self,
        req: Request<Incoming>,
        conn: &Downstream,
        ctx: &mut Option<crate::plugins::Ctx>,
    ) -> Response<Body> {
        let table = self.table.load();
        let client = self.client(
            conn,
            req.headers()
                .get_all(&self.trust.real_ip.header)
                .iter()
                .map(HeaderValue::as_bytes),
        );
        // HTTP/1.1 names the host in `Host`, HTTP/2 in `:authority`.
        let host_value = match req.headers().get(header::HOST) {
            Some(h) => Some(h.clone()),
            None => req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };
        let host = host_value
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let m = match self.route(&table, &req, host, conn, client, ctx) {
            Ok(m) => m,
            Err(answer) => return *answer,
        };
        let route = m.route.clone();
        let service = &route.service;
        let counters = self.counters(&route);
        if route.https_only && !secure(conn, req.headers()) {
            counters.count(route.https_redirect);
            return https_required(route.https_redirect, &req, host);
        }
        *ctx = route.plugins.start(Some(&route), client);
        let mut req = match access(&route, req, ctx).await {
            Ok(req) => req,
            Err(answer) => {
                counters.count(answer.status());
                return *answer;
            }
        };
        let key = balance_key(service, m.regex, &req, client, ctx.as_ref());
        service.budget.request();
        let pick = match service.upstream.pick(&key, None).await {
            Ok(p) => p,
            Err(no_peer) => {
                counters.count(StatusCode::SERVICE_UNAVAILABLE);
                return error(StatusCode::SERVICE_UNAVAILABLE, no_peer.message());
            }
        };
        let Some(target) = upstream_target(&route, m.matched_len, &req, ctx) else {
            return error(
                StatusCode::BAD_REQUEST,
                "the request path cannot be forwarded",
            );
        };
        // A WebSocket (or other) upgrade: its two headers go upstream, and
        // the connections are spliced once it answers 101.
        let upgrade = upgrade_of(req.headers());
        let downstream = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        self.upstream_headers(
            req.headers_mut(),
            &route,
            conn,
            client,
            host_value.as_ref(),
            upgrade,
        );
        let mut out = Outgoing::new(req, target, ctx.as_ref(), downstream.is_some(), service);
        let sent_at = ctx.is_some().then(std::time::Instant::now);
        let (sent, pick) = self.exchange(conn, &route, &key, pick, &mut out).await;
        if let (Some(c), Some(at)) = (ctx.as_mut(), sent_at) {
            c.upstream_latency = Some(at.elapsed());
        }
        answer(
            sent,
            &route,
            counters,
            pick,
            key.set_cookie,
            downstream,
            out.tripped(),
        )
    }

    /// The route for `req`, or the 404 of no route (the miss counted, the
    /// plugins that run on unmatched requests started in `ctx`).
    fn route<'t>(
        &self,
        table: &'t Table,
        req: &Request<Incoming>,
        host: &str,
        conn: &Downstream,
        client: SocketAddr,
        ctx: &mut Option<crate::plugins::Ctx>,
    ) -> Result<Matched<'t>, crate::plugins::Answer> {
        let path = req.uri().path();
        if let Some(m) = table.find(req.method(), host, path, req.headers(), conn.sni.as_deref()) {
            return Ok(m);
        }
        *ctx = table.unmatched.start(None, client);
        if let Some(c) = ctx.as_mut() {
            table
                .unmatched
                .copy_request(req.method(), req.uri(), req.headers(), c);
        }
        self.unmatched.count(StatusCode::NOT_FOUND);
        Err(Box::new(error(
            StatusCode::NOT_FOUND,
            "no Route matched with those values",
        )))
    }

    /// The request's headers as they go upstream: hop-by-hop ones dropped
    /// (an upgrade's two, and `TE: trailers` toward HTTP/2, put back), the
    /// forwarding headers (`forwarded.rs`), and the client's Host on a route
    /// that preserves it.
    fn upstream_headers(
        &self,
        headers: &mut HeaderMap,
        route: &Route,
        conn: &Downstream,
        client: SocketAddr,
        host: Option<&HeaderValue>,
        upgrade: Option<HeaderValue>,
    ) {
        // `TE: trailers` is the one TE value HTTP/2 allows, and gRPC servers
        // may insist on it.
        let te_trailers = route.service.http2
            && headers
                .get(header::TE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        strip_hop_by_hop(headers);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if let Some(u) = upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, u);
        }
        let real = real_ip(conn, client);
        forwarded::write(
            &mut forwarded::Map(headers),
            self,
            conn,
            forwarded::Value::Header(&real),
            host.map(forwarded::Value::Header),
        );
        if route.preserve_host
            && !headers.contains_key(header::HOST)
            && let Some(h) = host
        {
            headers.insert(header::HOST, h.clone());
        }
    }

    /// Sends `out` to `pick`'s target, and on to others while a failed
    /// attempt may be repeated (replayable, retries and retry budget left,
    /// a target not tried yet): how it ended, and the pick that saw it.
    async fn exchange(
        &self,
        conn: &Downstream,
        route: &Route,
        key: &Key,
        mut pick: Pick,
        out: &mut Outgoing,
    ) -> (Sent, Pick) {
        let service = &route.service;
        let mut attempt = 0;
        loop {
            let target = pick.addr().clone();
            let mut req = out.attempt();
            if !route.preserve_host
                && let Some(v) = &pick.target.host_header
            {
                req.headers_mut().insert(header::HOST, v.clone());
            }
            let deadline = tokio::time::Instant::now() + service.read_timeout;
            let send = self.send(service, &target, req, &out.target, out.upgrade);
            match within(conn, deadline, send).await {
                Some(Err(e)) if out.tripped() => return (Sent::Failed(e), pick),
                Some(Err(e)) => {
                    pick.report(if e.is_timeout() {
                        Outcome::Timeout
                    } else {
                        Outcome::TcpFailure
                    });
                    tracing::warn!(route = %route.name, %target, attempt, error = %e, "upstream failed");
                    if out.replayable
                        && attempt < service.retries
                        && service.budget.try_retry()
                        && let Ok(next) = service.upstream.try_pick(key, Some(&pick.target))
                    {
                        attempt += 1;
                        pick = next;
                        continue;
                    }
                    return (Sent::Failed(e), pick);
                }
                Some(Ok(resp)) => {
                    pick.report(Outcome::Status(resp.status().as_u16()));
                    return (Sent::Answer(resp), pick);
                }
                None => {
                    pick.report(Outcome::Timeout);
                    return (Sent::TimedOut, pick);
                }
            }
        }
    }

    /// One attempt to `target`: HTTP/2 for gRPC services, else HTTP/1.1
    /// (`upgrade`: the connection is the client's after a 101).
    async fn send(
        &self,
        service: &Service,
        target: &Arc<str>,
        mut req: Request<UpstreamBody>,
        path: &PathAndQuery,
        upgrade: bool,
    ) -> Result<Response<PooledBody>, SendError> {
        let timeouts = service.timeouts();
        if service.http2 {
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(if service.tls.is_some() {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            });
            uri.authority = target.parse().ok();
            uri.path_and_query = Some(path.clone());
            *req.uri_mut() = Uri::from_parts(uri).unwrap_or_default();
            self.pool
                .send_http2(target, req, timeouts, service.tls.as_ref())
                .await
                .map(|r| r.map(PooledBody::unpooled))
        } else {
            *req.uri_mut() = Uri::from(path.clone());
            self.pool
                .send_http1(target, req, timeouts, upgrade, service.tls.as_ref())
                .await
        }
    }
}

/// The plugins' access phase (after the check `prepare` asks for, which
/// runs off the workers): the request as they leave it, or their answer.
async fn access(
    route: &Route,
    req: Request<Incoming>,
    ctx: &mut Option<crate::plugins::Ctx>,
) -> Result<Request<Incoming>, crate::plugins::Answer> {
    let Some(c) = ctx.as_mut() else {
        return Ok(req);
    };
    let (mut parts, body) = req.into_parts();
    if let Some(check) = crate::plugins::Chain::prepare(&parts, c) {
        c.verdict = Some(check.run().await);
    }
    route.plugins.access(&mut parts, c)?;
    Ok(Request::from_parts(parts, body))
}

/// The request's key for the service's balancer (the matched regex's
/// captures only when the upstream hashes on one).
fn balance_key(
    service: &Service,
    regex: Option<&regex::Regex>,
    req: &Request<Incoming>,
    client: SocketAddr,
    ctx: Option<&crate::plugins::Ctx>,
) -> Key {
    let path = req.uri().path();
    let captures = regex
        .filter(|_| service.upstream.wants_captures())
        .and_then(|r| r.captures(path));
    service.upstream.key(&RequestInfo {
        captures: captures.as_ref(),
        headers: req.headers(),
        peer: client.ip(),
        path,
        query: req.uri().query(),
        consumer: ctx.and_then(|c| c.consumer.as_ref()).map(|c| c.id.as_str()),
    })
}

/// The upstream request target: the whole path a plugin set
/// (request-transformer's `replace.uri`), or the service's path then what
/// the route did not strip (`matched_len`); then the query. `None`: it is
/// not a request target (400).
fn upstream_target(
    route: &Route,
    matched_len: usize,
    req: &Request<Incoming>,
    ctx: &mut Option<crate::plugins::Ctx>,
) -> Option<PathAndQuery> {
    let uri = req.uri();
    let path = uri.path();
    let rest = if route.strip_path {
        path.get(matched_len..).unwrap_or("")
    } else {
        path
    };
    let target = match ctx.as_ref().and_then(|c| c.upstream_path.as_deref()) {
        Some(p) => PathAndQuery::from_maybe_shared(Bytes::from(with_query(p, uri.query()))).ok(),
        None => upstream_path(&route.service.path, uri, rest),
    }?;
    if let Some(c) = ctx.as_mut()
        && c.log_request.is_some()
    {
        c.upstream_uri = Some(target.as_str().to_string());
    }
    Some(target)
}

/// The request as it goes upstream, taken apart for one attempt or more: a
/// request that may go to another target keeps its headers for each
/// attempt and has no body; any other goes whole with its one attempt.
struct Outgoing {
    method: Method,
    headers: Option<HeaderMap>,
    body: Option<Either<Incoming, crate::plugins::LimitedBody<Incoming>>>,
    target: PathAndQuery,
    /// Idempotent, bodyless, no upgrade, and another target to try.
    replayable: bool,
    upgrade: bool,
    /// request-size-limiting's: set once a body without a length passed
    /// the limit (it is cut there).
    too_large: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Outgoing {
    fn new(
        req: Request<Incoming>,
        target: PathAndQuery,
        ctx: Option<&crate::plugins::Ctx>,
        upgrade: bool,
        service: &Service,
    ) -> Self {
        let replayable = matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::TRACE
        ) && !upgrade
            && !req.headers().contains_key(header::TRANSFER_ENCODING)
            && req
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_none_or(|v| v.as_bytes() == b"0")
            // With one target, send once and keep no copy of the headers.
            && service.distinct_targets() > 1;
        let (parts, body) = req.into_parts();
        let (body, too_large) = match ctx.and_then(|c| c.body_limit) {
            Some(limit) => {
                let (limited, tripped) = crate::plugins::LimitedBody::new(body, limit);
                (Either::Right(limited), Some(tripped))
            }
            None => (Either::Left(body), None),
        };
        Self {
            method: parts.method,
            headers: Some(parts.headers),
            body: Some(body),
            target,
            replayable,
            upgrade,
            too_large,
        }
    }

    /// Whether request-size-limiting cut the body.
    fn tripped(&self) -> bool {
        self.too_large
            .as_ref()
            .is_some_and(|t| t.load(Ordering::Acquire))
    }

    /// The next attempt's request (its URI and Host are the exchange's).
    fn attempt(&mut self) -> Request<UpstreamBody> {
        let mut req = Request::new(match self.body.take() {
            Some(b) if !self.replayable => Either::Left(b),
            _ => Either::Right(Empty::new()),
        });
        *req.method_mut() = self.method.clone();
        *req.headers_mut() = if self.replayable {
            self.headers.clone().unwrap_or_default()
        } else {
            self.headers.take().unwrap_or_default()
        };
        req
    }
}

/// How an exchange with the upstream ended.
enum Sent {
    Answer(Response<PooledBody>),
    Failed(SendError),
    /// The service's read timeout passed first.
    TimedOut,
}

/// The client's answer to how the exchange ended: the upstream's
/// (hop-by-hop headers dropped, the balancer's cookie set; a 101 to an
/// upgrade spliced into a tunnel), or Kong's 413, 502 or 504.
fn answer(
    sent: Sent,
    route: &Route,
    counters: &crate::metrics::RouteCounters,
    pick: Pick,
    set_cookie: Option<HeaderValue>,
    downstream: Option<hyper::upgrade::OnUpgrade>,
    too_large: bool,
) -> Response<Body> {
    match sent {
        Sent::Failed(_) if too_large => {
            counters.count(StatusCode::PAYLOAD_TOO_LARGE);
            error(StatusCode::PAYLOAD_TOO_LARGE, crate::plugins::TOO_LARGE)
        }
        Sent::Answer(mut resp) => {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                && let Some(downstream) = downstream
            {
                let upstream = hyper::upgrade::on(&mut resp);
                tunnel(route.name.clone(), downstream, upstream, pick);
                counters.count(StatusCode::SWITCHING_PROTOCOLS);
                let (parts, body) = resp.into_parts();
                return Response::from_parts(parts, Either::Left(Tracked::new(body, None)));
            }
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            if let Some(cookie) = set_cookie {
                parts.headers.append(header::SET_COOKIE, cookie);
            }
            counters.count(parts.status);
            Response::from_parts(parts, Either::Left(Tracked::new(body, Some(pick))))
        }
        Sent::Failed(e) if !e.is_timeout() => {
            tracing::warn!(route = %route.name, target = %pick.addr(), error = %e, "upstream failed");
            counters.count(StatusCode::BAD_GATEWAY);
            error(
                StatusCode::BAD_GATEWAY,
                "An invalid response was received from the upstream server",
            )
        }
        Sent::Failed(_) | Sent::TimedOut => {
            tracing::warn!(route = %route.name, target = %pick.addr(), "upstream timed out");
            counters.count(StatusCode::GATEWAY_TIMEOUT);
            error(
                StatusCode::GATEWAY_TIMEOUT,
                "The upstream server is timing out",
            )
        }
    }
}

/// Splices an upgraded client connection and its upstream one, in a task
/// of its own; the pick counts as in flight while the tunnel lasts.
fn tunnel(
    route: String,
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    pick: Pick,
) {
    tokio::spawn(async move {
        let _pick = pick;
        let (Ok(down), Ok(up)) = (downstream.await, upstream.await) else {
            tracing::debug!(%route, "upgrade did not complete");
            return;
        };
        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
        if let Err(error) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            tracing::debug!(%route, %error, "upgraded connection ended");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("transfer-encoding", "chunked"),
            ("x-keep", "yes"),
        ] {
            h.append(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");

        let mut plain = HeaderMap::new();
        plain.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn request_ids_are_fixed_width_hex() {
        assert_eq!(&request_id(0xdead_beef, 0x2a), b"deadbeef-000000000000002a");
    }

    #[test]
    fn the_client_path_is_reused_only_when_unchanged() {
        let uri: Uri = "/a/b?x=1".parse().unwrap();
        let same = upstream_path("/", &uri, "/a/b").unwrap();
        assert_eq!(same.as_str(), "/a/b?x=1");
        assert_eq!(
            upstream_path("/", &uri, "a/b").unwrap().as_str(),
            "/a/b?x=1"
        );
        assert_eq!(
            upstream_path("/v1", &uri, "/b").unwrap().as_str(),
            "/v1/b?x=1"
        );
        assert_eq!(
            upstream_path("/v1/", &uri, "/b").unwrap().as_str(),
            "/v1/b?x=1"
        );
        assert_eq!(upstream_path("/", &uri, "").unwrap().as_str(), "/?x=1");
    }
}
