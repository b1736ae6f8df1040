//! Kong's plugin model. Every plugin instance of a configuration is
//! compiled once, when the configuration is, into a [`Chain`] per route
//! (and one for requests no route matched): the instances that apply, the
//! most specific one per plugin name (Kong's precedence), ordered by Kong's
//! priorities. A route without plugins has an empty chain and pays nothing.
//!
//! Phases, as Kong's: `access` before a target is chosen (may answer early,
//! may rewrite the request, may identify a consumer), `header` on the
//! response head (the upstream's, or an early answer), `log` once the
//! response head is ready. Before `access`, `prepare` may name work that
//! must not run on the worker thread (basic-auth's bcrypt): the proxy runs
//! it on the blocking pool, awaits it, and `access` finds its verdict in
//! [`Ctx::verdict`].
//!
//! Consumer-scoped instances: when an access handler identifies a consumer
//! and some instance names that consumer, the rest of the request runs the
//! chain compiled for that consumer (from the position reached).

mod acl;
pub(crate) mod basic_auth;
mod correlation_id;
mod cors;
mod file_log;
mod hmac_auth;
mod http_log;
pub(crate) mod ip_restriction;
mod jwt;
mod key_auth;
mod prometheus;
mod queue;
mod rate_limiting;
mod request_size_limiting;
mod request_termination;
mod socket_log;
mod transformer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use serde::de::DeserializeOwned;

use crate::declarative::{self, Declarative, EntityRef, Invalid};
use crate::metrics::GatewayMetrics;
use crate::proxy::Body;

pub use basic_auth::{Verdict, Verification};

/// What plugins keep across configurations, owned by one gateway (its
/// `balancer::Registry`), never by the process, so two gateways in one
/// process (`bronze dev`, tests) share nothing; each part is bounded.
#[derive(Default)]
pub struct Shared {
    /// rate-limiting counters of the live instances (each bounded).
    pub rate_limits: rate_limiting::Live,
    /// bcrypt hashes of plain-text passwords (the most recent few
    /// thousand).
    pub hashes: basic_auth::HashCache,
    /// bcrypt checks at once.
    pub cpu: Arc<bronze_runtime::cpu::CpuSlots>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("hashes", &self.hashes.len())
            .finish_non_exhaustive()
    }
}
pub use request_size_limiting::{LimitedBody, TOO_LARGE};

/// The plugins Bronze has, with Kong's priorities (higher runs first).
pub const PLUGINS: &[(&str, i32)] = &[
    ("correlation-id", 100_001),
    ("cors", 2000),
    ("jwt", 1450),
    ("key-auth", 1250),
    ("basic-auth", 1100),
    ("hmac-auth", 1030),
    ("ip-restriction", 990),
    ("acl", 950),
    ("request-size-limiting", 951),
    ("rate-limiting", 910),
    ("request-transformer", 801),
    ("response-transformer", 800),
    ("prometheus", 13),
    ("http-log", 12),
    ("file-log", 9),
    ("udp-log", 8),
    ("tcp-log", 7),
    ("request-termination", 2),
];

/// The protocols a plugin runs on when its `protocols` is unset, as Kong
/// shows them (its HTTP subsystem's, sorted).
const HTTP_PROTOCOLS: &[&str] = &["grpc", "grpcs", "http", "https"];

/// A plugin's `config` and `protocols` as Kong shows them when nothing is
/// set: every field of its schema with Kong's default (null where it has
/// none); None for a plugin Bronze does not have.
pub fn kong_defaults(name: &str) -> Option<(serde_json::Value, &'static [&'static str])> {
    let config = match name {
        "acl" => acl::kong_defaults(),
        "basic-auth" => basic_auth::kong_defaults(),
        "correlation-id" => correlation_id::kong_defaults(),
        "cors" => cors::kong_defaults(),
        "file-log" => file_log::kong_defaults(),
        "hmac-auth" => hmac_auth::kong_defaults(),
        "http-log" => http_log::kong_defaults(),
        "ip-restriction" => ip_restriction::kong_defaults(),
        "jwt" => jwt::kong_defaults(),
        "key-auth" => key_auth::kong_defaults(),
        "prometheus" => prometheus::kong_defaults(),
        "rate-limiting" => rate_limiting::kong_defaults(),
        "request-size-limiting" => request_size_limiting::kong_defaults(),
        "request-termination" => request_termination::kong_defaults(),
        "request-transformer" => transformer::request_defaults(),
        "response-transformer" => transformer::response_defaults(),
        "tcp-log" => socket_log::kong_defaults(socket_log::Transport::Tcp),
        "udp-log" => socket_log::kong_defaults(socket_log::Transport::Udp),
        _ => return None,
    };
    // ip-restriction also limits Kong's stream routes by default.
    let protocols: &'static [&'static str] = if name == "ip-restriction" {
        &["http", "https", "tcp", "tls", "grpc", "grpcs"]
    } else {
        HTTP_PROTOCOLS
    };
    Some((config, protocols))
}

/// Plugins that log Kong's serializer entry: the request is copied for
/// them before any plugin runs.
const LOGGERS: &[&str] = &["file-log", "http-log", "tcp-log", "udp-log"];

/// Authentication plugins: cannot be scoped to a consumer (Kong's
/// `no_consumer`).
const NO_CONSUMER: &[&str] = &[
    "cors",
    "jwt",
    "key-auth",
    "basic-auth",
    "hmac-auth",
    "prometheus",
    "acl",
];

fn priority_of(name: &str) -> Option<i32> {
    PLUGINS.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

/// A consumer, with the header values the auth plugins send upstream.
#[derive(Debug)]
pub struct Consumer {
    pub index: u32,
    pub id: String,
    pub username: String,
    pub custom_id: Option<String>,
    id_header: HeaderValue,
    username_header: Option<HeaderValue>,
    custom_id_header: Option<HeaderValue>,
}

/// A response header's value an access handler asks for: rate-limiting's
/// are numbers, written as digits on the HTTP/1.1 path without building
/// a `HeaderValue` for each (an allocation per number per request).
#[derive(Debug, Clone)]
pub enum Value {
    Header(HeaderValue),
    Number(u64),
}

impl Value {
    pub fn into_header(self) -> HeaderValue {
        match self {
            Value::Header(v) => v,
            Value::Number(n) => HeaderValue::from(n),
        }
    }

    /// Calls `f` with the value's bytes (a number formatted on the stack).
    pub fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            Value::Header(v) => f(v.as_bytes()),
            Value::Number(n) => f(itoa::Buffer::new().format(*n).as_bytes()),
        }
    }
}

/// Per-request state shared by the phases of one request.
pub struct Ctx {
    pub peer: SocketAddr,
    pub started: Instant,
    /// `None` for a request no route matched.
    pub route: Option<Arc<crate::router::Route>>,
    /// The chain in effect (switched once a consumer with plugins of its
    /// own is identified).
    chain: Arc<[Arc<dyn Plugin>]>,
    pub consumer: Option<Arc<Consumer>>,
    /// The credential that authenticated the request (Kong's
    /// `X-Credential-Identifier`).
    pub credential: Option<HeaderValue>,
    /// request-size-limiting: the most body bytes the upstream may get.
    pub body_limit: Option<u64>,
    /// Headers access handlers want on the response (rate-limiting's).
    /// (Names are distinct: each replaces the upstream's header of that
    /// name.)
    pub response_headers: Vec<(HeaderName, Value)>,
    /// When the upstream answered (for latencies), if it was asked.
    pub upstream_latency: Option<Duration>,
    /// The upstream path sent (for logs).
    pub upstream_uri: Option<String>,
    /// A path a plugin set for the upstream request (request-transformer's
    /// `replace.uri`), sent as it is with the request's query.
    pub upstream_path: Option<Arc<str>>,
    /// A copy of the request for log plugins, taken in access.
    pub log_request: Option<Box<serde_json::Value>>,
    /// cors: the request's `Origin`.
    pub origin: Option<HeaderValue>,
    /// A plugin answered in the access phase.
    pub exited: bool,
    /// The outcome of the `Verification` `prepare` asked for, if any.
    pub verdict: Option<Verdict>,
}

impl Ctx {
    /// Whether a plugin of this request looks at the response's headers
    /// (`Plugin::sees_response_headers`).
    pub fn sees_response_headers(&self) -> bool {
        self.chain.iter().any(|p| p.sees_response_headers())
    }

    /// Kong's `source` of a response: `service`, `exit` or `kong`.
    pub fn source(&self) -> &'static str {
        if self.exited {
            "exit"
        } else if self.upstream_latency.is_some() {
            "service"
        } else {
            "kong"
        }
    }
}

/// One compiled plugin instance.
pub trait Plugin: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn priority(&self) -> i32;
    /// Before `access`: work this request needs done off the worker
    /// thread first (a password hash to check). The proxy runs it and puts
    /// its verdict in `Ctx::verdict`; `None` when there is nothing to do
    /// (no such credential, or its verdict is known).
    fn prepare(&self, _req: &http::request::Parts, _ctx: &Ctx) -> Option<Verification> {
        None
    }
    /// Before a target is chosen; `Err` answers the client at once.
    fn access(&self, _req: &mut http::request::Parts, _ctx: &mut Ctx) -> Result<(), Answer> {
        Ok(())
    }
    /// On the response head, upstream's or an early answer.
    fn header(&self, _status: StatusCode, _headers: &mut HeaderMap, _ctx: &mut Ctx) {}
    /// After the response head was produced.
    fn log(&self, _ctx: &Ctx, _status: StatusCode, _headers: &HeaderMap, _m: &GatewayMetrics) {}
    /// Whether `header` or `log` look at the response's headers: a plugin
    /// that implements `header` or reads headers in `log` must say so.
    /// When no plugin of a request does, the HTTP/1.1 path skips the header
    /// phase and writes the upstream's headers as they came (with
    /// `Ctx::response_headers` in place of those of the same name) instead
    /// of building a `HeaderMap` of them.
    fn sees_response_headers(&self) -> bool {
        false
    }
    /// A logger sends what it holds now (at shutdown): resolves when it
    /// is done; `None` for plugins that hold nothing.
    fn flush(&self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        None
    }
    /// An instance of its own for a given route (per-route state such as
    /// metric handles); `None`: the route shares this one.
    fn for_route(&self, _route: &str, _service: &str) -> Option<Arc<dyn Plugin>> {
        None
    }
}

/// Plugin instances in execution order.
type List = Arc<[Arc<dyn Plugin>]>;

/// The plugins of one route, compiled.
#[derive(Clone, Default)]
pub struct Chain {
    base: Option<Arc<[Arc<dyn Plugin>]>>,
    /// A log plugin wants a copy of the request.
    copy_request: bool,
    /// Consumer index to the chain for that consumer, when instances scoped
    /// to that consumer apply to this route.
    by_consumer: Option<Arc<HashMap<u32, List>>>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.base.iter().flat_map(|b| b.iter().map(|p| p.name())))
            .finish()
    }
}

fn sort_key(p: &dyn Plugin) -> (std::cmp::Reverse<i32>, &'static str) {
    (std::cmp::Reverse(p.priority()), p.name())
}

impl Chain {
    pub fn is_empty(&self) -> bool {
        self.base.is_none()
    }

    /// The names in execution order (tests and the admin API).
    pub fn names(&self) -> Vec<&'static str> {
        self.base
            .iter()
            .flat_map(|b| b.iter().map(|p| p.name()))
            .collect()
    }

    /// Per-request state for a route with this chain; `None` when empty.
    pub fn start(
        &self,
        route: Option<&Arc<crate::router::Route>>,
        peer: SocketAddr,
    ) -> Option<Ctx> {
        let base = self.base.as_ref()?;
        Some(Ctx {
            peer,
            started: Instant::now(),
            route: route.cloned(),
            chain: base.clone(),
            consumer: None,
            credential: None,
            body_limit: None,
            response_headers: Vec::new(),
            upstream_latency: None,
            upstream_uri: None,
            upstream_path: None,
            log_request: None,
            origin: None,
            exited: false,
            verdict: None,
        })
    }

    /// Copies the request for log plugins, if one wants it.
    pub fn copy_request(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        h: &HeaderMap,
        ctx: &mut Ctx,
    ) {
        if self.copy_request {
            ctx.log_request = Some(Box::new(file_log::snapshot(method, uri, h)));
        }
    }

    /// What the access phase needs done off the worker thread first, if
    /// anything (see `Plugin::prepare`).
    pub fn prepare(req: &http::request::Parts, ctx: &Ctx) -> Option<Verification> {
        ctx.chain.iter().find_map(|p| p.prepare(req, ctx))
    }

    /// The access phase, in priority order.
    pub fn access(&self, req: &mut http::request::Parts, ctx: &mut Ctx) -> Result<(), Answer> {
        self.copy_request(&req.method, &req.uri, &req.headers, ctx);
        let mut list = ctx.chain.clone();
        let mut i = 0;
        let mut switched = false;
        while i < list.len() {
            let p = &list[i];
            if let Err(answer) = p.access(req, ctx) {
                ctx.exited = true;
                return Err(answer);
            }
            i += 1;
            if !switched
                && let (Some(by), Some(c)) = (&self.by_consumer, &ctx.consumer)
                && let Some(other) = by.get(&c.index)
            {
                switched = true;
                let key = sort_key(p.as_ref());
                i = other.partition_point(|q| sort_key(q.as_ref()) <= key);
                list = other.clone();
                ctx.chain = other.clone();
            }
        }
        Ok(())
    }

    /// The header phase, then the log phase.
    pub fn finish(resp: &mut Response<Body>, ctx: &mut Ctx, metrics: &GatewayMetrics) {
        let status = resp.status();
        Self::header_phase(status, resp.headers_mut(), ctx);
        Self::log(status, resp.headers(), ctx, metrics);
    }

    /// The header phase alone: the plugins' `header`, then
    /// `Ctx::response_headers` in place of same-named headers.
    pub fn header_phase(status: StatusCode, headers: &mut HeaderMap, ctx: &mut Ctx) {
        let chain = ctx.chain.clone();
        for p in chain.iter() {
            p.header(status, headers, ctx);
        }
        for (name, value) in ctx.response_headers.drain(..) {
            headers.insert(name, value.into_header());
        }
    }

    /// The log phase alone: for a response whose headers no plugin looks
    /// at (`Ctx::sees_response_headers`), the header phase is
    /// `Ctx::response_headers` written by the caller.
    pub fn log(status: StatusCode, headers: &HeaderMap, ctx: &Ctx, metrics: &GatewayMetrics) {
        for p in ctx.chain.iter() {
            p.log(ctx, status, headers, metrics);
        }
    }
}

/// An early answer from an access handler (boxed: the hot path returns
/// `Ok(())` and should not carry a whole response).
pub type Answer = Box<Response<Body>>;

/// A response produced by the gateway itself, in Kong's JSON shape.
pub fn exit(status: StatusCode, message: &str) -> Answer {
    Box::new(crate::proxy::error(status, message))
}

/// A response with a raw body and content type.
pub fn exit_raw(status: StatusCode, content_type: &str, body: Bytes) -> Answer {
    let mut r = Response::new(Either::Right(Full::new(body)));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r.headers_mut()
        .insert("server", HeaderValue::from_static("bronze-gateway"));
    Box::new(r)
}

/// Deserializes a plugin's `config` with its schema, naming the field of
/// the first error (`services[0].plugins[1].config.minut`).
pub(crate) fn parse_config<T: DeserializeOwned>(
    v: Option<&serde_json::Value>,
    field: &str,
) -> Result<T, Invalid> {
    let empty = serde_json::Value::Object(serde_json::Map::new());
    let v = match v {
        None | Some(serde_json::Value::Null) => &empty,
        Some(v) => v,
    };
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            field.to_string()
        } else {
            format!("{field}.{path}")
        };
        Invalid::new(field, e.into_inner().to_string())
    })
}

/// A stable id for an entity given without one, from its kind and name
/// (survives reloads): the same UUID v5 scheme as `entities::stable_id`.
pub(crate) fn derived_id(kind: &str, name: &str) -> String {
    crate::entities::stable_id(&format!("bronze:{kind}:{name}"))
}

/// Consumers and their credentials, compiled once per configuration and
/// shared by the auth plugins.
#[derive(Default)]
pub struct Credentials {
    pub consumers: Vec<Arc<Consumer>>,
    /// Consumer id or username to index.
    by_ref: HashMap<String, u32>,
    /// key-auth: key to (consumer, credential id); looked up with every
    /// request's key (foldhash, seeded: faster than SipHash).
    pub keys: HashMap<String, (u32, HeaderValue), foldhash::quality::RandomState>,
    /// basic-auth: username to credential.
    pub basic: HashMap<String, basic_auth::Credential>,
    /// jwt: key to secret.
    pub jwt: HashMap<String, jwt::Secret>,
    /// hmac-auth: username to (consumer, secret, credential id).
    pub hmac: HashMap<String, hmac_auth::Credential>,
    /// acl: each consumer's groups (by consumer index; sorted, distinct).
    pub groups: HashMap<u32, Vec<String>>,
}

impl Credentials {
    /// The consumer an `anonymous` setting or a reference names.
    pub fn find(&self, key: &str) -> Option<&Arc<Consumer>> {
        self.by_ref.get(key).map(|&i| &self.consumers[i as usize])
    }

    fn build(d: &Declarative, hashes: &basic_auth::HashCache) -> Result<Self, Invalid> {
        let mut c = Credentials::default();
        for (i, k) in d.consumers.iter().enumerate() {
            let field = |f: &str| format!("consumers[{i}].{f}");
            let name = match (k.username.as_str(), k.custom_id.as_deref()) {
                ("", None | Some("")) => {
                    return Err(Invalid::new(
                        field("username"),
                        "at least one of these fields must be non-empty: 'custom_id', 'username'",
                    ));
                }
                ("", Some(c)) => format!("custom_id:{c}"),
                (u, _) => u.to_string(),
            };
            let id =
                k.id.clone()
                    .unwrap_or_else(|| derived_id("consumer", &name));
            let header = |v: &str, f: &str| {
                HeaderValue::from_str(v).map_err(|_| {
                    Invalid::new(field(f), "expected a value that fits an HTTP header")
                })
            };
            let consumer = Consumer {
                index: i as u32,
                id_header: header(&id, "id")?,
                username_header: (!k.username.is_empty())
                    .then(|| header(&k.username, "username"))
                    .transpose()?,
                custom_id_header: k
                    .custom_id
                    .as_deref()
                    .map(|v| header(v, "custom_id"))
                    .transpose()?,
                id: id.clone(),
                username: k.username.clone(),
                custom_id: k.custom_id.clone(),
            };
            let username = (!k.username.is_empty()).then_some(&k.username);
            for key in [Some(&id), username].into_iter().flatten() {
                if c.by_ref.insert(key.clone(), i as u32).is_some() {
                    return Err(Invalid::new(
                        field("username"),
                        format!("{key:?}: another consumer has this id or username"),
                    ));
                }
            }
            c.consumers.push(Arc::new(consumer));
        }
        // Credentials nested under consumers, then the top-level lists.
        for (i, k) in d.consumers.iter().enumerate() {
            let prefix = format!("consumers[{i}]");
            for (j, cred) in k.keyauth_credentials.iter().enumerate() {
                c.add_key(
                    cred,
                    i as u32,
                    &format!("{prefix}.keyauth_credentials[{j}]"),
                )?;
            }
            for (j, cred) in k.basicauth_credentials.iter().enumerate() {
                c.add_basic(
                    cred,
                    i as u32,
                    &format!("{prefix}.basicauth_credentials[{j}]"),
                    hashes,
                )?;
            }
            for (j, cred) in k.jwt_secrets.iter().enumerate() {
                c.add_jwt(cred, i as u32, &format!("{prefix}.jwt_secrets[{j}]"))?;
            }
            for (j, cred) in k.hmacauth_credentials.iter().enumerate() {
                c.add_hmac(
                    cred,
                    i as u32,
                    &format!("{prefix}.hmacauth_credentials[{j}]"),
                )?;
            }
            for (j, acl) in k.acls.iter().enumerate() {
                c.add_group(acl, i as u32, &format!("{prefix}.acls[{j}]"))?;
            }
        }
        let owner = |r: &Option<EntityRef>, field: &str, c: &Credentials| {
            let r = r.as_ref().ok_or_else(|| {
                Invalid::new(
                    format!("{field}.consumer"),
                    "expected the consumer it belongs to",
                )
            })?;
            c.by_ref.get(r.key()).copied().ok_or_else(|| {
                Invalid::new(
                    format!("{field}.consumer"),
                    format!("{:?}: no such consumer", r.key()),
                )
            })
        };
        for (j, cred) in d.keyauth_credentials.iter().enumerate() {
            let field = format!("keyauth_credentials[{j}]");
            let i = owner(&cred.consumer, &field, &c)?;
            c.add_key(cred, i, &field)?;
        }
        for (j, cred) in d.basicauth_credentials.iter().enumerate() {
            let field = format!("basicauth_credentials[{j}]");
            let i = owner(&cred.consumer, &field, &c)?;
            c.add_basic(cred, i, &field, hashes)?;
        }
        for (j, cred) in d.jwt_secrets.iter().enumerate() {
            let field = format!("jwt_secrets[{j}]");
            let i = owner(&cred.consumer, &field, &c)?;
            c.add_jwt(cred, i, &field)?;
        }
        for (j, cred) in d.hmacauth_credentials.iter().enumerate() {
            let field = format!("hmacauth_credentials[{j}]");
            let i = owner(&cred.consumer, &field, &c)?;
            c.add_hmac(cred, i, &field)?;
        }
        for (j, acl) in d.acls.iter().enumerate() {
            let field = format!("acls[{j}]");
            let i = owner(&acl.consumer, &field, &c)?;
            c.add_group(acl, i, &field)?;
        }
        Ok(c)
    }

    fn add_key(
        &mut self,
        cred: &declarative::KeyAuthCredential,
        consumer: u32,
        field: &str,
    ) -> Result<(), Invalid> {
        if cred.key.is_empty() {
            return Err(Invalid::new(format!("{field}.key"), "expected a key"));
        }
        let id = cred
            .id
            .clone()
            .unwrap_or_else(|| derived_id("keyauth_credential", &cred.key));
        let id = HeaderValue::from_str(&id)
            .map_err(|_| Invalid::new(format!("{field}.id"), "expected a header-safe id"))?;
        if self.keys.insert(cred.key.clone(), (consumer, id)).is_some() {
            return Err(Invalid::new(
                format!("{field}.key"),
                "UNIQUE violation: another credential has this key",
            ));
        }
        Ok(())
    }

    fn add_basic(
        &mut self,
        cred: &declarative::BasicAuthCredential,
        consumer: u32,
        field: &str,
        hashes: &basic_auth::HashCache,
    ) -> Result<(), Invalid> {
        let compiled = basic_auth::Credential::new(cred, consumer, field, hashes)?;
        if self.basic.insert(cred.username.clone(), compiled).is_some() {
            return Err(Invalid::new(
                format!("{field}.username"),
                "UNIQUE violation: another credential has this username",
            ));
        }
        Ok(())
    }

    fn add_jwt(
        &mut self,
        cred: &declarative::JwtSecret,
        consumer: u32,
        field: &str,
    ) -> Result<(), Invalid> {
        let secret = jwt::Secret::new(cred, consumer, field)?;
        if self.jwt.insert(secret.key.clone(), secret).is_some() {
            return Err(Invalid::new(
                format!("{field}.key"),
                "UNIQUE violation: another jwt secret has this key",
            ));
        }
        Ok(())
    }
}

impl Credentials {
    fn add_hmac(
        &mut self,
        cred: &declarative::HmacAuthCredential,
        consumer: u32,
        field: &str,
    ) -> Result<(), Invalid> {
        let compiled = hmac_auth::Credential::new(cred, consumer, field)?;
        if self.hmac.insert(cred.username.clone(), compiled).is_some() {
            return Err(Invalid::new(
                format!("{field}.username"),
                "UNIQUE violation: another credential has this username",
            ));
        }
        Ok(())
    }

    fn add_group(
        &mut self,
        acl: &declarative::Acl,
        consumer: u32,
        field: &str,
    ) -> Result<(), Invalid> {
        let group = acl.group.trim();
        if group.is_empty() || HeaderValue::from_str(group).is_err() || group.contains(',') {
            return Err(Invalid::new(
                format!("{field}.group"),
                "expected a group name (no comma)",
            ));
        }
        let groups = self.groups.entry(consumer).or_default();
        match groups.binary_search_by(|g| g.as_str().cmp(group)) {
            Ok(_) => Err(Invalid::new(
                format!("{field}.group"),
                format!("UNIQUE violation: the consumer is in {group:?} already"),
            )),
            Err(at) => {
                groups.insert(at, group.to_string());
                Ok(())
            }
        }
    }
}

/// An auth plugin's end when the request carries no credential it
/// accepts: the `anonymous` consumer when one is configured (Kong's
/// logical OR of auth plugins), else the 401 `refused` makes.
pub(crate) fn anonymous_or(
    req: &mut http::request::Parts,
    ctx: &mut Ctx,
    anonymous: Option<&Arc<Consumer>>,
    refused: impl FnOnce() -> Answer,
) -> Result<(), Answer> {
    match anonymous {
        Some(a) => {
            set_consumer(req, ctx, Some(a), None);
            Ok(())
        }
        None => Err(refused()),
    }
}

/// Kong's 401 with a `WWW-Authenticate` challenge.
pub(crate) fn unauthorized(challenge: &HeaderValue, message: &str) -> Answer {
    with_challenge(exit(StatusCode::UNAUTHORIZED, message), challenge)
}

/// `answer` with a `WWW-Authenticate` challenge.
pub(crate) fn with_challenge(mut answer: Answer, challenge: &HeaderValue) -> Answer {
    answer
        .headers_mut()
        .insert(http::header::WWW_AUTHENTICATE, challenge.clone());
    answer
}

/// Log plugins take `custom_fields_by_lua` only empty: Bronze runs no Lua.
pub(crate) fn no_lua(
    fields: Option<&serde_json::Map<String, serde_json::Value>>,
    field: &str,
) -> Result<(), Invalid> {
    if fields.is_some_and(|m| !m.is_empty()) {
        return Err(Invalid::new(
            format!("{field}.custom_fields_by_lua"),
            "not implemented: Bronze runs no Lua",
        ));
    }
    Ok(())
}

/// Sets Kong's consumer headers upstream (and clears any the client sent).
pub(crate) fn set_consumer(
    req: &mut http::request::Parts,
    ctx: &mut Ctx,
    consumer: Option<&Arc<Consumer>>,
    credential: Option<HeaderValue>,
) {
    const ID: HeaderName = HeaderName::from_static("x-consumer-id");
    const USERNAME: HeaderName = HeaderName::from_static("x-consumer-username");
    const CUSTOM: HeaderName = HeaderName::from_static("x-consumer-custom-id");
    const CREDENTIAL: HeaderName = HeaderName::from_static("x-credential-identifier");
    const ANONYMOUS: HeaderName = HeaderName::from_static("x-anonymous-consumer");
    let h = &mut req.headers;
    // Whatever the client sent under these names goes (one pass over the
    // few headers a request has, rather than five removals by hash).
    let names = [&ID, &USERNAME, &CUSTOM, &CREDENTIAL, &ANONYMOUS];
    if h.keys().any(|k| names.contains(&k)) {
        for n in names {
            h.remove(n);
        }
    }
    if let Some(c) = consumer {
        h.insert(ID, c.id_header.clone());
        if let Some(v) = &c.username_header {
            h.insert(USERNAME, v.clone());
        }
        if let Some(v) = &c.custom_id_header {
            h.insert(CUSTOM, v.clone());
        }
    }
    match &credential {
        Some(v) => {
            h.insert(CREDENTIAL, v.clone());
        }
        None => {
            h.insert(ANONYMOUS, HeaderValue::from_static("true"));
        }
    }
    ctx.consumer = consumer.cloned();
    ctx.credential = credential;
}

/// Where an instance applies.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Scope {
    service: Option<usize>,
    /// (service, route) indexes.
    route: Option<(usize, usize)>,
    consumer: Option<u32>,
}

impl Scope {
    /// Kong's precedence, most specific first (smaller wins).
    fn rank(&self) -> u8 {
        match (
            self.consumer.is_some(),
            self.route.is_some(),
            self.service.is_some(),
        ) {
            (true, true, true) => 0,
            (true, true, false) => 1,
            (true, false, true) => 2,
            (false, true, true) => 3,
            (true, false, false) => 4,
            (false, true, false) => 5,
            (false, false, true) => 6,
            (false, false, false) => 7,
        }
    }

    fn applies(&self, service: usize, route: (usize, usize), consumer: Option<u32>) -> bool {
        self.service.is_none_or(|s| s == service)
            && self.route.is_none_or(|r| r == route)
            && self.consumer.is_none_or(|c| Some(c) == consumer)
    }
}

struct Instance {
    scope: Scope,
    plugin: Arc<dyn Plugin>,
}

/// A configuration's plugin instances, in no particular order.
#[derive(Default, Clone)]
pub struct Instances(pub Vec<Arc<dyn Plugin>>);

impl std::fmt::Debug for Instances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|p| p.name()))
            .finish()
    }
}

/// Every plugin instance of a configuration, compiled.
pub struct Compiled {
    instances: Vec<Instance>,
    /// Consumers some instance is scoped to.
    scoped_consumers: Vec<u32>,
    pub credentials: Arc<Credentials>,
}

impl Compiled {
    /// Validates and compiles `d`'s consumers, credentials and plugins.
    pub fn build(d: &Declarative, shared: &Shared) -> Result<Self, Invalid> {
        let credentials = Arc::new(Credentials::build(d, &shared.hashes)?);
        let service_index = |r: &EntityRef| {
            d.services
                .iter()
                .position(|s| s.name == r.key() || s.id.as_deref() == Some(r.key()))
        };
        let route_index = |r: &EntityRef| {
            d.services.iter().enumerate().find_map(|(i, s)| {
                s.routes
                    .iter()
                    .position(|x| x.name == r.key() || x.id.as_deref() == Some(r.key()))
                    .map(|j| (i, j))
            })
        };
        // Where an instance applies: its references (by name or id), plus
        // the entity it is nested under.
        let resolve = |p: &declarative::Plugin,
                       field: &str,
                       parent: Scope|
         -> Result<Scope, Invalid> {
            let missing = |what: &str, r: &EntityRef| {
                Invalid::new(
                    format!("{field}.{what}"),
                    format!("{:?}: no such {what}", r.key()),
                )
            };
            let nested = |what: &str| {
                Invalid::new(
                    format!("{field}.{what}"),
                    format!(
                        "the plugin is nested under a {what} already; expected no {what} reference"
                    ),
                )
            };
            let mut scope = parent;
            if let Some(r) = &p.service {
                if parent.service.is_some() {
                    return Err(nested("service"));
                }
                scope.service = Some(service_index(r).ok_or_else(|| missing("service", r))?);
            }
            if let Some(r) = &p.route {
                if parent.route.is_some() {
                    return Err(nested("route"));
                }
                scope.route = Some(route_index(r).ok_or_else(|| missing("route", r))?);
            }
            if let Some(r) = &p.consumer {
                if parent.consumer.is_some() {
                    return Err(nested("consumer"));
                }
                scope.consumer = Some(
                    credentials
                        .find(r.key())
                        .map(|c| c.index)
                        .ok_or_else(|| missing("consumer", r))?,
                );
            }
            Ok(scope)
        };
        let none = Scope {
            service: None,
            route: None,
            consumer: None,
        };
        let mut all: Vec<(&declarative::Plugin, String, Scope)> = Vec::new();
        for (k, p) in d.plugins.iter().enumerate() {
            let field = format!("plugins[{k}]");
            all.push((p, field.clone(), resolve(p, &field, none)?));
        }
        for (i, s) in d.services.iter().enumerate() {
            for (k, p) in s.plugins.iter().enumerate() {
                let field = format!("services[{i}].plugins[{k}]");
                let parent = Scope {
                    service: Some(i),
                    ..none
                };
                all.push((p, field.clone(), resolve(p, &field, parent)?));
            }
            for (j, r) in s.routes.iter().enumerate() {
                for (k, p) in r.plugins.iter().enumerate() {
                    let field = format!("services[{i}].routes[{j}].plugins[{k}]");
                    let parent = Scope {
                        route: Some((i, j)),
                        ..none
                    };
                    all.push((p, field.clone(), resolve(p, &field, parent)?));
                }
            }
        }
        for (i, c) in d.consumers.iter().enumerate() {
            for (k, p) in c.plugins.iter().enumerate() {
                let field = format!("consumers[{i}].plugins[{k}]");
                let parent = Scope {
                    consumer: Some(i as u32),
                    ..none
                };
                all.push((p, field.clone(), resolve(p, &field, parent)?));
            }
        }

        let mut instances = Vec::new();
        let mut seen: HashMap<(String, Scope), String> = HashMap::new();
        for (p, field, scope) in all {
            if priority_of(&p.name).is_none() {
                let names: Vec<&str> = PLUGINS.iter().map(|(n, _)| *n).collect();
                return Err(Invalid::new(
                    format!("{field}.name"),
                    format!(
                        "plugin '{}' not enabled; Bronze has: {}",
                        p.name,
                        names.join(", ")
                    ),
                ));
            }
            // Kong's stream protocols select stream routes, which Bronze
            // has none of: listed, they change nothing (Kong lists tcp and
            // tls in ip-restriction's default).
            if let Some(bad) = p.protocols.iter().find(|x| {
                !matches!(
                    x.as_str(),
                    "http"
                        | "https"
                        | "grpc"
                        | "grpcs"
                        | "ws"
                        | "wss"
                        | "tcp"
                        | "tls"
                        | "udp"
                        | "tls_passthrough"
                )
            }) {
                return Err(Invalid::new(
                    format!("{field}.protocols"),
                    format!(
                        "{bad:?}: expected http, https, grpc, grpcs, ws, wss, tcp, tls, udp or tls_passthrough"
                    ),
                ));
            }
            // Bronze runs a plugin on every request of the routes it
            // applies to: a list that leaves out plain HTTP or HTTPS
            // would be ignored, so it is refused.
            let has = |x: &str| p.protocols.iter().any(|y| y == x);
            let all = p.protocols.is_empty() || (has("http") && has("https"));
            if !all {
                return Err(Invalid::new(
                    format!("{field}.protocols"),
                    "not implemented in Bronze: plugins run for every protocol; expected a list with http and https (Kong's default)",
                ));
            }
            if scope.consumer.is_some() && NO_CONSUMER.contains(&p.name.as_str()) {
                return Err(Invalid::new(
                    format!("{field}.consumer"),
                    format!(
                        "value must be null: {} cannot be scoped to a consumer",
                        p.name
                    ),
                ));
            }
            if let Some(other) = seen.insert((p.name.clone(), scope), field.clone()) {
                return Err(Invalid::new(
                    format!("{field}.name"),
                    format!(
                        "{:?} is already configured for the same entities at {other}",
                        p.name
                    ),
                ));
            }
            let cfg = format!("{field}.config");
            // What the instance is, whatever its place in the document:
            // state such as rate-limiting's counters survives a rebuild
            // that keeps the instance.
            let identity = format!(
                "{}|{:?}|{:?}|{:?}|{}",
                p.id.as_deref().unwrap_or(""),
                scope.service.map(|i| &d.services[i].name),
                scope
                    .route
                    .map(|(i, j)| (&d.services[i].name, &d.services[i].routes[j].name)),
                scope
                    .consumer
                    .map(|c| &credentials.consumers[c as usize].username),
                p.config.as_ref().map(|c| c.to_string()).unwrap_or_default(),
            );
            let plugin = build_one(
                &p.name,
                p.config.as_ref(),
                &cfg,
                &credentials,
                &identity,
                shared,
            )?;
            // Kong loads enabled instances only: a disabled one is checked,
            // then left out (a less specific instance applies instead).
            if p.enabled != Some(false) {
                instances.push(Instance { scope, plugin });
            }
        }
        let mut scoped_consumers: Vec<u32> =
            instances.iter().filter_map(|i| i.scope.consumer).collect();
        scoped_consumers.sort_unstable();
        scoped_consumers.dedup();
        Ok(Self {
            instances,
            scoped_consumers,
            credentials,
        })
    }

    fn pick(
        &self,
        service: usize,
        route: (usize, usize),
        consumer: Option<u32>,
        names: (&str, &str),
    ) -> Option<Arc<[Arc<dyn Plugin>]>> {
        let mut best: HashMap<&'static str, (u8, &Arc<dyn Plugin>)> = HashMap::new();
        for i in &self.instances {
            if !i.scope.applies(service, route, consumer) {
                continue;
            }
            let rank = i.scope.rank();
            let e = best.entry(i.plugin.name()).or_insert((rank, &i.plugin));
            if rank < e.0 {
                *e = (rank, &i.plugin);
            }
        }
        let mut list: Vec<Arc<dyn Plugin>> = best
            .into_values()
            .map(|(_, p)| p)
            .map(|p| p.for_route(names.0, names.1).unwrap_or_else(|| p.clone()))
            .collect();
        if list.is_empty() {
            return None;
        }
        list.sort_by_key(|p| sort_key(p.as_ref()));
        Some(list.into())
    }

    /// The chain of route `j` of service `i`.
    pub fn chain_for(&self, i: usize, j: usize, route: &str, service: &str) -> Chain {
        if self.instances.is_empty() {
            return Chain::default();
        }
        let base = self.pick(i, (i, j), None, (route, service));
        let mut by = HashMap::new();
        for &c in &self.scoped_consumers {
            let applies = self
                .instances
                .iter()
                .any(|x| x.scope.consumer == Some(c) && x.scope.applies(i, (i, j), Some(c)));
            if applies && let Some(list) = self.pick(i, (i, j), Some(c), (route, service)) {
                by.insert(c, list);
            }
        }
        // A consumer chain is reached only through an auth plugin in base.
        let base = base.or_else(|| (!by.is_empty()).then(|| Arc::from(Vec::new())));
        let copy_request = base
            .iter()
            .chain(by.values())
            .any(|l| l.iter().any(|p| LOGGERS.contains(&p.name())));
        Chain {
            base,
            copy_request,
            by_consumer: (!by.is_empty()).then(|| Arc::new(by)),
        }
    }

    /// Every instance, for shutdown's `Plugin::flush`.
    pub fn all(&self) -> Instances {
        Instances(self.instances.iter().map(|i| i.plugin.clone()).collect())
    }

    /// Global instances: what requests no route matched see (their log
    /// phase), and routes added from discovery labels.
    pub fn global(&self, route: &str, service: &str) -> Chain {
        let globals: Vec<Arc<dyn Plugin>> = self
            .instances
            .iter()
            .filter(|i| {
                i.scope
                    == Scope {
                        service: None,
                        route: None,
                        consumer: None,
                    }
            })
            .map(|i| {
                i.plugin
                    .for_route(route, service)
                    .unwrap_or_else(|| i.plugin.clone())
            })
            .collect();
        let mut globals = globals;
        globals.sort_by_key(|p| sort_key(p.as_ref()));
        Chain {
            copy_request: globals.iter().any(|p| LOGGERS.contains(&p.name())),
            base: (!globals.is_empty()).then(|| globals.into()),
            by_consumer: None,
        }
    }
}

fn build_one(
    name: &str,
    config: Option<&serde_json::Value>,
    field: &str,
    credentials: &Arc<Credentials>,
    identity: &str,
    shared: &Shared,
) -> Result<Arc<dyn Plugin>, Invalid> {
    Ok(match name {
        "key-auth" => Arc::new(key_auth::KeyAuth::new(config, field, credentials)?),
        "basic-auth" => Arc::new(basic_auth::BasicAuth::new(
            config,
            field,
            credentials,
            &shared.cpu,
        )?),
        "hmac-auth" => Arc::new(hmac_auth::HmacAuth::new(config, field, credentials)?),
        "jwt" => Arc::new(jwt::Jwt::new(config, field, credentials)?),
        "rate-limiting" => Arc::new(rate_limiting::RateLimiting::new(
            config,
            field,
            identity,
            &shared.rate_limits,
        )?),
        "prometheus" => Arc::new(prometheus::Prometheus::new(config, field)?),
        "ip-restriction" => Arc::new(ip_restriction::IpRestriction::new(config, field)?),
        "acl" => Arc::new(acl::Acl::new(config, field, credentials)?),
        "request-size-limiting" => Arc::new(request_size_limiting::RequestSizeLimiting::new(
            config, field,
        )?),
        "cors" => Arc::new(cors::Cors::new(config, field)?),
        "correlation-id" => Arc::new(correlation_id::CorrelationId::new(config, field)?),
        "request-termination" => {
            Arc::new(request_termination::RequestTermination::new(config, field)?)
        }
        "request-transformer" => Arc::new(transformer::RequestTransformer::new(config, field)?),
        "response-transformer" => Arc::new(transformer::ResponseTransformer::new(config, field)?),
        "file-log" => Arc::new(file_log::FileLog::new(config, field)?),
        "http-log" => Arc::new(http_log::HttpLog::new(config, field)?),
        "tcp-log" => Arc::new(socket_log::SocketLog::new(
            socket_log::Transport::Tcp,
            config,
            field,
        )?),
        "udp-log" => Arc::new(socket_log::SocketLog::new(
            socket_log::Transport::Udp,
            config,
            field,
        )?),
        other => {
            return Err(Invalid::new(field, format!("plugin '{other}' not enabled")));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(doc: serde_json::Value) -> Result<Compiled, Invalid> {
        Compiled::build(
            &crate::declarative::parse(doc.to_string().as_bytes())?,
            &Shared::default(),
        )
    }

    #[test]
    fn chains_follow_kong_priorities_and_cost_nothing_when_empty() {
        let c = compiled(serde_json::json!({"_format_version": "3.0",
            "plugins": [{"name": "prometheus"}, {"name": "cors"}],
            "services": [{"name": "s", "url": "http://127.0.0.1:1",
              "plugins": [{"name": "rate-limiting", "config": {"minute": 5}},
                          {"name": "request-termination"}],
              "routes": [
                {"name": "a", "paths": ["/a"], "plugins": [
                    {"name": "ip-restriction", "config": {"deny": ["10.0.0.0/8"]}},
                    {"name": "key-auth"}]},
                {"name": "b", "paths": ["/b"]}]},
              {"name": "t", "url": "http://127.0.0.1:1", "routes": [{"name": "c", "paths": ["/c"]}]}]}))
        .unwrap();
        assert_eq!(
            c.chain_for(0, 0, "a", "s").names(),
            [
                "cors",
                "key-auth",
                "ip-restriction",
                "rate-limiting",
                "prometheus",
                "request-termination"
            ]
        );
        assert_eq!(
            c.chain_for(0, 1, "b", "s").names(),
            ["cors", "rate-limiting", "prometheus", "request-termination"]
        );
        assert_eq!(c.chain_for(1, 0, "c", "t").names(), ["cors", "prometheus"]);
        let none = compiled(serde_json::json!({"_format_version": "3.0",
            "services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"name": "a", "paths": ["/"]}]}]}))
        .unwrap();
        assert!(none.chain_for(0, 0, "a", "s").is_empty());
        assert!(none.global("", "").is_empty());
    }

    #[test]
    fn precedence_ranks_follow_kong() {
        let s = |service, route, consumer| Scope {
            service,
            route,
            consumer,
        };
        let order = [
            s(Some(0), Some((0, 0)), Some(0)),
            s(None, Some((0, 0)), Some(0)),
            s(Some(0), None, Some(0)),
            s(Some(0), Some((0, 0)), None),
            s(None, None, Some(0)),
            s(None, Some((0, 0)), None),
            s(Some(0), None, None),
            s(None, None, None),
        ];
        let ranks: Vec<u8> = order.iter().map(Scope::rank).collect();
        assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{ranks:?}");
        assert!(order[1].applies(0, (0, 0), Some(0)));
        assert!(!order[1].applies(0, (0, 0), Some(1)));
        assert!(!order[1].applies(0, (0, 1), Some(0)));
        assert!(order[7].applies(3, (3, 2), None));
    }

    #[test]
    fn unknown_names_list_what_exists() {
        let e = compiled(
            serde_json::json!({"_format_version": "3.0", "plugins": [{"name": "oauth2"}]}),
        )
        .err()
        .unwrap();
        assert_eq!(e.field, "plugins[0].name");
        assert!(
            e.message.contains("'oauth2'") && e.message.contains("key-auth, basic-auth"),
            "{e}"
        );
        assert_eq!(derived_id("consumer", "bob"), derived_id("consumer", "bob"));
        assert_ne!(derived_id("consumer", "bob"), derived_id("consumer", "bib"));
    }
}
