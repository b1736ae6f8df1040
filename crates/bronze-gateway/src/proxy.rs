//! The proxy: match a route in the current table (one atomic load), pick a
//! target, rewrite the request (path, Host, hop-by-hop headers,
//! X-Forwarded-*, X-Request-Id) and stream it to the upstream over a
//! keep-alive pool; stream the answer back. Bodies are never buffered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::metrics::GatewayMetrics;
use crate::router::Table;

pub type Body = Either<Incoming, Full<Bytes>>;
/// What goes upstream: the client's body (limited in size by a plugin),
/// or nothing (a bodyless request that may be sent again on another
/// target).
type UpstreamBody = Either<Either<Incoming, crate::plugins::LimitedBody<Incoming>>, Empty<Bytes>>;

pub struct Proxy {
    pub table: ArcSwap<Table>,
    client: Client<HttpConnector, UpstreamBody>,
    metrics: Arc<GatewayMetrics>,
    /// Requests no route matched.
    unmatched: crate::metrics::RouteCounters,
    request_ids: AtomicU64,
    id_prefix: String,
}

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

/// Removes hop-by-hop headers, including those `Connection` names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
        h.remove(n);
    }
    h.remove(header::UPGRADE);
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

impl Proxy {
    pub fn new(table: Table, metrics: Arc<GatewayMetrics>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(10)));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        Self {
            table: ArcSwap::from_pointee(table),
            client,
            unmatched: metrics.route_counters("", ""),
            metrics,
            request_ids: AtomicU64::new(0),
            id_prefix: format!("{:08x}", fastrand::u32(..)),
        }
    }

    /// Replaces the routing table; requests already matched keep theirs.
    pub fn swap(&self, table: Table) {
        self.table.store(Arc::new(table));
    }

    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let mut ctx = None;
        let mut resp = self.forward(req, peer, &mut ctx).await;
        if let Some(ctx) = &mut ctx {
            crate::plugins::Chain::finish(&mut resp, ctx, &self.metrics);
        }
        resp
    }

    /// Routes and forwards; `ctx` is set when plugins apply.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        ctx: &mut Option<crate::plugins::Ctx>,
    ) -> Response<Body> {
        let table = self.table.load();
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("")
            .to_string();
        let path = req.uri().path().to_string();
        let Some(m) = table.find(req.method(), &host, &path, req.headers()) else {
            *ctx = table.unmatched.start(None, peer);
            if let Some(c) = ctx.as_mut() {
                table
                    .unmatched
                    .copy_request(req.method(), req.uri(), req.headers(), c);
            }
            self.unmatched.count(StatusCode::NOT_FOUND);
            return error(StatusCode::NOT_FOUND, "no Route matched with those values");
        };
        let route = m.route.clone();
        let service = &route.service;
        let counters = route
            .counters
            .get_or_init(|| self.metrics.route_counters(&route.name, &service.name));
        // Plugins' access phase: may answer, rewrite, identify a consumer.
        *ctx = route.plugins.start(Some(&route), peer);
        if let Some(c) = ctx.as_mut() {
            let (mut parts, body) = req.into_parts();
            if let Err(resp) = route.plugins.access(&mut parts, c) {
                counters.count(resp.status());
                return *resp;
            }
            req = Request::from_parts(parts, body);
        }
        let Some(target) = service.pick() else {
            counters.count(StatusCode::SERVICE_UNAVAILABLE);
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "failure to get a peer from the ring-balancer",
            );
        };

        // Path: the service's path, then what the route did not strip.
        let rest = if route.strip_path {
            &path[m.matched_len..]
        } else {
            path.as_str()
        };
        let mut upstream_path = String::with_capacity(service.path.len() + rest.len() + 1);
        upstream_path.push_str(&service.path);
        if upstream_path.ends_with('/') && rest.starts_with('/') {
            upstream_path.push_str(&rest[1..]);
        } else if !upstream_path.ends_with('/') && !rest.is_empty() && !rest.starts_with('/') {
            upstream_path.push('/');
            upstream_path.push_str(rest);
        } else {
            upstream_path.push_str(rest);
        }
        if let Some(q) = req.uri().query() {
            upstream_path.push('?');
            upstream_path.push_str(q);
        }
        if let Some(c) = ctx.as_mut()
            && c.log_request.is_some()
        {
            c.upstream_uri = Some(upstream_path.clone());
        }
        if upstream_path.parse::<http::uri::PathAndQuery>().is_err() {
            return error(
                StatusCode::BAD_REQUEST,
                "the request path cannot be forwarded",
            );
        }

        // A WebSocket (or other) upgrade: keep its two headers for the
        // upstream and splice the connections once it answers 101.
        let upgrade = upgrade_of(req.headers());
        let downstream = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if let Some(u) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, u.clone());
        }
        let ip = peer.ip().to_string();
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {ip}"),
            None => ip.clone(),
        };
        if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
            headers.insert("x-forwarded-for", v);
        }
        if let Ok(v) = HeaderValue::from_str(&ip) {
            headers.insert("x-real-ip", v);
        }
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        if let Ok(v) = HeaderValue::from_str(&host) {
            headers.insert("x-forwarded-host", v);
        }
        if !headers.contains_key("x-request-id") {
            let n = self.request_ids.fetch_add(1, Ordering::Relaxed);
            if let Ok(v) = HeaderValue::from_str(&format!("{}-{n:016x}", self.id_prefix)) {
                headers.insert("x-request-id", v);
            }
        }
        // Idempotent and bodyless: may go to another target if this one
        // fails before answering.
        let replayable = matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::TRACE
        ) && downstream.is_none()
            && !req.headers().contains_key(header::TRANSFER_ENCODING)
            && req
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_none_or(|v| v.as_bytes() == b"0");
        // Another attempt needs another target; with one, send once and
        // keep no copy of the headers.
        let replayable = replayable && service.distinct_targets() > 1;
        let (parts, body) = req.into_parts();
        let method = parts.method;
        let mut headers = Some(parts.headers);
        // request-size-limiting: a body without a length is cut at the limit.
        let mut too_large = None;
        let body = match ctx.as_ref().and_then(|c| c.body_limit) {
            Some(limit) => {
                let (limited, tripped) = crate::plugins::LimitedBody::new(body, limit);
                too_large = Some(tripped);
                Either::Right(limited)
            }
            None => Either::Left(body),
        };
        let mut body = Some(body);
        let tripped = || {
            too_large
                .as_ref()
                .is_some_and(|t| t.load(std::sync::atomic::Ordering::Acquire))
        };
        let sent_at = ctx.is_some().then(std::time::Instant::now);
        let mut target = target;
        let mut attempt = 0;
        let sent = loop {
            let mut builder = Request::builder()
                .method(method.clone())
                .version(Version::HTTP_11)
                .uri(
                    Uri::builder()
                        .scheme("http")
                        .authority(&*target)
                        .path_and_query(upstream_path.as_str())
                        .build()
                        .unwrap_or_default(),
                );
            if let Some(h) = builder.headers_mut() {
                *h = if replayable {
                    headers.clone().unwrap_or_default()
                } else {
                    headers.take().unwrap_or_default()
                };
                if !route.preserve_host
                    && let Ok(v) = HeaderValue::from_str(&target)
                {
                    h.insert(header::HOST, v);
                }
            }
            let upstream_body = match body.take() {
                Some(b) if !replayable => Either::Left(b),
                _ => Either::Right(Empty::new()),
            };
            let Ok(upstream_req) = builder.body(upstream_body) else {
                return error(StatusCode::BAD_REQUEST, "the request cannot be forwarded");
            };
            let sent =
                tokio::time::timeout(service.read_timeout, self.client.request(upstream_req)).await;
            match sent {
                Ok(Err(e)) if tripped() => break Ok(Err(e)),
                Ok(Err(e)) => {
                    service.eject(&target);
                    tracing::warn!(route = %route.name, %target, attempt, error = %e, "upstream failed; target ejected");
                    if replayable
                        && attempt < service.retries
                        && let Some(next) = service.pick()
                    {
                        attempt += 1;
                        target = next;
                        continue;
                    }
                    break Ok(Err(e));
                }
                other => break other,
            }
        };
        if let (Some(c), Some(at)) = (ctx.as_mut(), sent_at) {
            c.upstream_latency = Some(at.elapsed());
        }
        match sent {
            Ok(Err(_)) if tripped() => {
                counters.count(StatusCode::PAYLOAD_TOO_LARGE);
                error(StatusCode::PAYLOAD_TOO_LARGE, crate::plugins::TOO_LARGE)
            }
            Ok(Ok(mut resp)) => {
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                    && let Some(downstream) = downstream
                {
                    let upstream = hyper::upgrade::on(&mut resp);
                    let name = route.name.clone();
                    tokio::spawn(async move {
                        let (Ok(down), Ok(up)) = (downstream.await, upstream.await) else {
                            tracing::debug!(route = %name, "upgrade did not complete");
                            return;
                        };
                        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                        if let Err(error) = tokio::io::copy_bidirectional(&mut down, &mut up).await
                        {
                            tracing::debug!(route = %name, %error, "upgraded connection ended");
                        }
                    });
                    counters.count(StatusCode::SWITCHING_PROTOCOLS);
                    let (parts, body) = resp.into_parts();
                    return Response::from_parts(parts, Either::Left(body));
                }
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                counters.count(parts.status);
                Response::from_parts(parts, Either::Left(body))
            }
            Ok(Err(e)) => {
                tracing::warn!(route = %route.name, %target, error = %e, "upstream failed");
                counters.count(StatusCode::BAD_GATEWAY);
                error(
                    StatusCode::BAD_GATEWAY,
                    "An invalid response was received from the upstream server",
                )
            }
            Err(_) => {
                tracing::warn!(route = %route.name, %target, "upstream timed out");
                counters.count(StatusCode::GATEWAY_TIMEOUT);
                error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "The upstream server is timing out",
                )
            }
        }
    }
}
