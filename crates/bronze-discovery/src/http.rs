//! The Consul-compatible HTTP subset: PascalCase JSON shaped as Consul's
//! clients decode it, blocking queries (`index`, `wait`) and `X-Consul-Index`
//! on every answer, plus `/metrics` and `/healthz`.
//!
//! Supported: agent self/services/service/checks, service register and
//! deregister, check pass/warn/fail/update, status leader/peers, catalog
//! datacenters/services/service/nodes/node, health service/checks.
//! Everything else answers 404 with the path, so a client learns at once
//! what it relies on that Bronze does not offer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use bronze_runtime::Shutdown;
use bronze_telemetry::Metrics;
use serde_json::{Map, Value, json};

use crate::agent::Agent;
use crate::catalog::{CheckState, Instance, Node};
use crate::error::Error;
use crate::metrics::ApiLabels;
use crate::model::{
    CheckKind, FieldNames, Health, InstanceKey, RawCheck, RawInstance, Registration,
    format_go_duration, parse_go_duration,
};

/// Version reported by `/v1/agent/self`: the Consul API level Bronze's subset
/// follows, so clients that gate features on it behave.
pub const CONSUL_VERSION: &str = "1.17.0";

const NAMES: FieldNames = FieldNames {
    id: "ID",
    service: "Name",
    node: "Node",
    node_address: "NodeAddress",
    address: "Address",
    port: "Port",
    tags: "Tags",
    meta: "Meta",
    weights: "Weights",
    checks: "Check",
    check_id: "CheckID",
    check_http: "HTTP",
    check_method: "Method",
    check_header: "Header",
    check_tcp: "TCP",
    check_ttl: "TTL",
    check_interval: "Interval",
    check_timeout: "Timeout",
    check_deregister: "DeregisterCriticalServiceAfter",
};

/// Largest registration body accepted.
const MAX_BODY: usize = 1 << 20;

#[derive(Clone)]
pub struct Api {
    pub agent: Arc<Agent>,
    pub max_wait: Duration,
    pub shutdown: Shutdown,
    pub draining: Arc<AtomicBool>,
}

pub fn router(api: Api, metrics: Arc<Metrics>) -> Router {
    let draining = api.draining.clone();
    Router::new()
        .route("/v1/agent/self", get(agent_self))
        .route("/v1/status/leader", get(status_leader))
        .route("/v1/status/peers", get(status_peers))
        .route("/v1/agent/service/register", put(register).post(register))
        .route(
            "/v1/agent/service/deregister/{*id}",
            put(deregister).post(deregister),
        )
        .route(
            "/v1/agent/service/maintenance/{*id}",
            put(maintenance).post(maintenance),
        )
        .route("/v1/agent/services", get(agent_services))
        .route("/v1/agent/service/{*id}", get(agent_service))
        .route("/v1/agent/checks", get(agent_checks))
        .route(
            "/v1/agent/check/pass/{*id}",
            put(check_pass).post(check_pass),
        )
        .route(
            "/v1/agent/check/warn/{*id}",
            put(check_warn).post(check_warn),
        )
        .route(
            "/v1/agent/check/fail/{*id}",
            put(check_fail).post(check_fail),
        )
        .route(
            "/v1/agent/check/update/{*id}",
            put(check_update).post(check_update),
        )
        .route("/v1/catalog/datacenters", get(catalog_datacenters))
        .route("/v1/catalog/services", get(catalog_services))
        .route("/v1/catalog/service/{name}", get(catalog_service))
        .route("/v1/catalog/nodes", get(catalog_nodes))
        .route("/v1/catalog/node/{node}", get(catalog_node))
        .route("/v1/health/service/{name}", get(health_service))
        .route("/v1/health/checks/{name}", get(health_checks))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(api.clone(), count_requests))
        .with_state(api)
        .merge(bronze_telemetry::ops_routes(metrics, move || {
            !draining.load(Ordering::Relaxed)
        }))
}

async fn count_requests(State(api): State<Api>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    api.agent
        .metrics
        .api_requests
        .get_or_create(&ApiLabels {
            api: "http",
            code: resp.status().as_u16(),
        })
        .inc();
    resp
}

async fn not_found(req: Request) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!(
            "{} {} is not part of Bronze's Consul-compatible API\n",
            req.method(),
            req.uri().path()
        ),
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// Query parameters and responses
// ---------------------------------------------------------------------------

/// The query string, as Consul reads it: repeated keys allowed, flags
/// without values (`?passing`).
struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, key: &str) -> bool {
        self.0
            .iter()
            .any(|(k, v)| k == key && !matches!(v.as_str(), "false" | "0"))
    }

    fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut msg = msg.into();
    if !msg.ends_with('\n') {
        msg.push('\n');
    }
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg,
    )
        .into_response()
}

/// A request refused before any work: status and plain-text reason.
struct Reject(StatusCode, String);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        text(self.0, self.1)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        text(self.http_status(), self.to_string())
    }
}

fn consul_headers(index: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    h.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    h.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h
}

fn json_response(params: &Params, index: u64, body: &Value) -> Response {
    let bytes = if params.0.iter().any(|(k, _)| k == "pretty") {
        serde_json::to_vec_pretty(body)
    } else {
        serde_json::to_vec(body)
    }
    .unwrap_or_default();
    (StatusCode::OK, consul_headers(index), bytes).into_response()
}

impl Api {
    /// Rejects what this single-datacenter server cannot answer.
    fn check_params(&self, p: &Params) -> Result<(), Reject> {
        if let Some(dc) = p.get("dc")
            && !dc.is_empty()
            && !dc.eq_ignore_ascii_case(&self.agent.datacenter)
        {
            return Err(Reject(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("No path to datacenter {dc:?}"),
            ));
        }
        if p.get("filter").is_some_and(|f| !f.is_empty()) {
            return Err(Reject(
                StatusCode::BAD_REQUEST,
                "filter: filter expressions are not supported by Bronze; use tag, passing or node-meta".into(),
            ));
        }
        Ok(())
    }

    /// A blocking query: with `index`, waits (at most `wait`, default 5m)
    /// until `current()` moves away from it. Returns the index to report.
    async fn block(&self, p: &Params, current: impl Fn() -> u64) -> Result<u64, Reject> {
        let wanted = match p.get("index") {
            None | Some("") => return Ok(current()),
            Some(s) => s.parse::<u64>().map_err(|_| {
                Reject(
                    StatusCode::BAD_REQUEST,
                    format!("index: {s:?} is not a number"),
                )
            })?,
        };
        let wait = match p.get("wait") {
            None | Some("") => Duration::from_secs(300),
            Some(s) => parse_go_duration(s)
                .or_else(|_| s.parse::<u64>().map(Duration::from_secs).map_err(|_| ()))
                .map_err(|_| {
                    Reject(
                        StatusCode::BAD_REQUEST,
                        format!("wait: {s:?} is not a duration; expected e.g. \"30s\""),
                    )
                })?,
        };
        let wait = wait.min(self.max_wait);
        // Consul adds up to wait/16 of jitter so that many clients spread out.
        let wait = wait + wait.div_f64(16.0).mul_f64(fastrand::f64());
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = self.agent.catalog.subscribe();
        changes.borrow_and_update();
        loop {
            let now = current();
            if wanted == 0 || now != wanted {
                return Ok(now);
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return Ok(current()) },
                _ = tokio::time::sleep_until(deadline) => return Ok(current()),
                _ = self.shutdown.wait() => return Ok(current()),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// JSON shapes
// ---------------------------------------------------------------------------

/// A stable UUID-shaped node ID derived from the node name (Consul clients
/// expect one; Bronze nodes are identified by name).
fn node_id(name: &str) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in name.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    let x = format!("{h:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

fn node_json(agent: &Agent, n: &Node) -> Value {
    json!({
        "ID": node_id(&n.name),
        "Node": n.name,
        "Address": n.address,
        "Datacenter": agent.datacenter,
        "TaggedAddresses": {"lan": n.address, "lan_ipv4": n.address, "wan": n.address, "wan_ipv4": n.address},
        "Meta": {},
        "CreateIndex": n.create_index,
        "ModifyIndex": n.modify_index,
    })
}

fn weights_json(i: &Instance) -> Value {
    json!({"Passing": i.spec.weights.passing, "Warning": i.spec.weights.warning})
}

fn meta_json(m: &BTreeMap<String, String>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// The agent's and the health endpoint's view of a service instance.
fn service_json(agent: &Agent, i: &Instance, with_indexes: bool) -> Value {
    let mut v = json!({
        "Kind": "",
        "ID": i.spec.id,
        "Service": i.spec.service,
        "Tags": i.spec.tags,
        "Address": i.spec.address,
        "TaggedAddresses": {},
        "Meta": meta_json(&i.spec.meta),
        "Port": i.spec.port,
        "Weights": weights_json(i),
        "EnableTagOverride": false,
        "Proxy": {"MeshGateway": {}, "Expose": {}},
        "Connect": {},
        "Datacenter": agent.datacenter,
    });
    if with_indexes && let Value::Object(m) = &mut v {
        m.insert("CreateIndex".into(), i.create_index.into());
        m.insert("ModifyIndex".into(), i.modify_index.into());
    }
    v
}

fn check_json(i: &Instance, c: &CheckState) -> Value {
    let (kind, definition) = match &c.spec.kind {
        CheckKind::Http { url, method, .. } => ("http", json!({"HTTP": url, "Method": method})),
        CheckKind::Tcp { address } => ("tcp", json!({"TCP": address})),
        CheckKind::Ttl { ttl, .. } => ("ttl", json!({"TTL": format_go_duration(*ttl)})),
    };
    let interval = if c.spec.interval.is_zero() {
        String::new()
    } else {
        format_go_duration(c.spec.interval)
    };
    json!({
        "Node": i.spec.node,
        "CheckID": c.spec.id,
        "Name": c.spec.name,
        "Status": c.status.as_str(),
        "Notes": c.spec.notes,
        "Output": c.output,
        "ServiceID": i.spec.id,
        "ServiceName": i.spec.service,
        "ServiceTags": i.spec.tags,
        "Type": kind,
        "Interval": interval,
        "Timeout": if kind == "ttl" { String::new() } else { format_go_duration(c.spec.timeout) },
        "ExposedPort": 0,
        "Definition": definition,
        "CreateIndex": i.create_index,
        "ModifyIndex": i.modify_index,
    })
}

fn catalog_entry_json(agent: &Agent, node: Option<&Node>, i: &Instance) -> Value {
    let node_address = node.map_or(i.spec.node_address.as_str(), |n| n.address.as_str());
    json!({
        "ID": node_id(&i.spec.node),
        "Node": i.spec.node,
        "Address": node_address,
        "Datacenter": agent.datacenter,
        "TaggedAddresses": {"lan": node_address, "lan_ipv4": node_address, "wan": node_address, "wan_ipv4": node_address},
        "NodeMeta": {},
        "ServiceKind": "",
        "ServiceID": i.spec.id,
        "ServiceName": i.spec.service,
        "ServiceTags": i.spec.tags,
        "ServiceAddress": i.spec.address,
        "ServiceTaggedAddresses": {},
        "ServiceWeights": weights_json(i),
        "ServiceMeta": meta_json(&i.spec.meta),
        "ServicePort": i.spec.port,
        "ServiceSocketPath": "",
        "ServiceEnableTagOverride": false,
        "ServiceProxy": {"MeshGateway": {}, "Expose": {}},
        "ServiceConnect": {},
        "CreateIndex": i.create_index,
        "ModifyIndex": i.modify_index,
    })
}

/// `node-meta=key:value` filters (Bronze nodes carry no metadata, so any
/// such filter matches no node, as it would in Consul).
fn node_meta_matches(p: &Params) -> bool {
    p.all("node-meta").next().is_none()
}

/// Instances of a service matching every `tag` parameter.
fn tagged<'a>(p: &Params, instances: &'a [Arc<Instance>]) -> Vec<&'a Arc<Instance>> {
    let tags: Vec<&str> = p.all("tag").collect();
    instances
        .iter()
        .filter(|i| tags.iter().all(|t| i.spec.tags.iter().any(|x| x == t)))
        .filter(|_| node_meta_matches(p))
        .collect()
}

// ---------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------

async fn agent_self(State(api): State<Api>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let p = Params(q);
    let a = &api.agent;
    let body = json!({
        "Config": {
            "Datacenter": a.datacenter,
            "PrimaryDatacenter": a.datacenter,
            "NodeName": a.node,
            "NodeID": node_id(&a.node),
            "Revision": concat!("bronze-", env!("CARGO_PKG_VERSION")),
            "Server": true,
            "Version": CONSUL_VERSION,
        },
        "Coord": null,
        "Member": {
            "Name": a.node,
            "Addr": a.node_address,
            "Port": 8301,
            "Tags": {"dc": a.datacenter, "role": "consul", "build": CONSUL_VERSION, "id": node_id(&a.node)},
            "Status": 1,
            "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
            "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
        },
        "Meta": {},
        "Stats": {"bronze": {"catalog_index": a.catalog.index().to_string(), "epoch": a.epoch}},
    });
    json_response(&p, a.catalog.index(), &body)
}

async fn status_leader(State(api): State<Api>) -> Response {
    let leader = format!("{}:8300", api.agent.node_address);
    json_response(
        &Params(Vec::new()),
        api.agent.catalog.index(),
        &json!(leader),
    )
}

async fn status_peers(State(api): State<Api>) -> Response {
    let leader = format!("{}:8300", api.agent.node_address);
    json_response(
        &Params(Vec::new()),
        api.agent.catalog.index(),
        &json!([leader]),
    )
}

/// Looks up `key` in a JSON object the way Consul's decoder does: ignoring
/// case and underscores (`DeregisterCriticalServiceAfter`,
/// `deregister_critical_service_after`).
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_')
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let want = norm(name);
    obj.iter()
        .find(|(k, v)| norm(k) == want && !v.is_null())
        .map(|(_, v)| v)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn expected(name: &str, what: &str, got: &Value) -> Error {
    Error::invalid(name, format!("expected {what}, got {}", type_name(got)))
}

fn opt_string(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, Error> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(expected(name, "a string", v)),
    }
}

fn opt_bool(obj: &Map<String, Value>, name: &str) -> Result<bool, Error> {
    match field(obj, name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(expected(name, "true or false", v)),
    }
}

fn opt_int(obj: &Map<String, Value>, name: &str) -> Result<Option<i64>, Error> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| Error::invalid(name, format!("expected a whole number, got {n}"))),
        Some(v) => Err(expected(name, "a number", v)),
    }
}

fn opt_duration(obj: &Map<String, Value>, name: &str) -> Result<Option<Duration>, Error> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => parse_go_duration(s)
            .map(Some)
            .map_err(|e| Error::invalid(name, e)),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|ns| Some(Duration::from_nanos(ns)))
            .ok_or_else(|| Error::invalid(name, format!("{n} is not a duration in nanoseconds"))),
        Some(v) => Err(expected(name, "a duration such as \"10s\"", v)),
    }
}

fn string_list(obj: &Map<String, Value>, name: &str) -> Result<Vec<String>, Error> {
    match field(obj, name) {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                v => Err(expected(name, "an array of strings", v)),
            })
            .collect(),
        Some(v) => Err(expected(name, "an array of strings", v)),
    }
}

fn string_map(obj: &Map<String, Value>, name: &str) -> Result<Vec<(String, String)>, Error> {
    match field(obj, name) {
        None => Ok(Vec::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                v => Err(expected(&format!("{name}.{k}"), "a string", v)),
            })
            .collect(),
        Some(v) => Err(expected(name, "an object of strings", v)),
    }
}

/// Keys Consul's decoder accepts in a service definition and in a check
/// (normalised: lower case, no underscores). Anything else is a typo or a
/// field of another API, and is refused as Consul refuses it.
const SERVICE_KEYS: &[&str] = &[
    "kind",
    "id",
    "name",
    "tags",
    "address",
    "taggedaddresses",
    "meta",
    "port",
    "socketpath",
    "check",
    "checks",
    "weights",
    "token",
    "enabletagoverride",
    "proxy",
    "connect",
    "namespace",
    "partition",
    "locality",
];
const CHECK_KEYS: &[&str] = &[
    "checkid",
    "id",
    "name",
    "status",
    "notes",
    "scriptargs",
    "args",
    "http",
    "h2ping",
    "h2pingusetls",
    "header",
    "method",
    "body",
    "disableredirects",
    "tcp",
    "tcpusetls",
    "udp",
    "interval",
    "aliasnode",
    "aliasservice",
    "dockercontainerid",
    "shell",
    "grpc",
    "grpcusetls",
    "osservice",
    "tlsservername",
    "tlsskipverify",
    "timeout",
    "ttl",
    "successbeforepassing",
    "failuresbeforewarning",
    "failuresbeforecritical",
    "proxyhttp",
    "proxygrpc",
    "deregistercriticalserviceafter",
    "outputmaxsize",
    "serviceid",
];

fn normalise(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn reject_unknown(obj: &Map<String, Value>, known: &[&str], prefix: &str) -> Result<(), Error> {
    match obj.keys().find(|k| !known.contains(&normalise(k).as_str())) {
        Some(k) if k.is_empty() => Err(Error::invalid(
            format!("{prefix}\"\""),
            "unknown field (empty key)",
        )),
        Some(k) => Err(Error::invalid(format!("{prefix}{k}"), "unknown field")),
        None => Ok(()),
    }
}

/// Fields Consul accepts that change behaviour Bronze does not implement:
/// refused when set, never silently ignored.
fn reject_unsupported(obj: &Map<String, Value>, fields: &[&str]) -> Result<(), Error> {
    for name in fields {
        let set = match field(obj, name) {
            None | Some(Value::Bool(false)) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Number(n)) => n.as_f64() != Some(0.0),
            Some(Value::Object(m)) => !m.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        if set {
            return Err(Error::invalid(*name, "not supported by Bronze"));
        }
    }
    Ok(())
}

fn raw_check(v: &Value) -> Result<Option<RawCheck>, Error> {
    let Value::Object(c) = v else {
        return Err(expected("Check", "an object", v));
    };
    // `{}` is no check at all, as in Consul.
    if c.values().all(Value::is_null) {
        return Ok(None);
    }
    reject_unknown(c, CHECK_KEYS, "Check.")?;
    reject_unsupported(
        c,
        &[
            "Body",
            "DisableRedirects",
            "TLSServerName",
            "TCPUseTLS",
            "SuccessBeforePassing",
            "FailuresBeforeWarning",
            "FailuresBeforeCritical",
            "OutputMaxSize",
        ],
    )?;
    for (key, kind) in [
        ("Args", "script"),
        ("ScriptArgs", "script"),
        ("Script", "script"),
        ("DockerContainerID", "docker"),
        ("GRPC", "gRPC"),
        ("H2PING", "H2PING"),
        ("UDP", "UDP"),
        ("OSService", "OS service"),
        ("AliasService", "alias"),
        ("AliasNode", "alias"),
    ] {
        if field(c, key).is_some() {
            return Ok(Some(RawCheck {
                unsupported: Some(kind.into()),
                ..Default::default()
            }));
        }
    }
    let headers = match field(c, "Header") {
        None => Vec::new(),
        Some(Value::Object(m)) => {
            let mut out = Vec::new();
            for (k, v) in m {
                match v {
                    Value::Array(vals) => {
                        for x in vals {
                            match x {
                                Value::String(s) => out.push((k.clone(), s.clone())),
                                x => {
                                    return Err(expected(
                                        &format!("Header.{k}"),
                                        "an array of strings",
                                        x,
                                    ));
                                }
                            }
                        }
                    }
                    Value::String(s) => out.push((k.clone(), s.clone())),
                    v => return Err(expected(&format!("Header.{k}"), "an array of strings", v)),
                }
            }
            out
        }
        Some(v) => return Err(expected("Header", "an object of string arrays", v)),
    };
    let status = match opt_string(c, "Status")? {
        Some(s) if !s.is_empty() => Some(Health::parse("Status", &s)?),
        _ => None,
    };
    let id = match opt_string(c, "CheckID")? {
        Some(id) => Some(id),
        None => opt_string(c, "ID")?,
    };
    Ok(Some(RawCheck {
        id,
        name: opt_string(c, "Name")?,
        http: opt_string(c, "HTTP")?.filter(|s| !s.is_empty()),
        method: opt_string(c, "Method")?,
        headers,
        tls_skip_verify: opt_bool(c, "TLSSkipVerify")?,
        tcp: opt_string(c, "TCP")?.filter(|s| !s.is_empty()),
        ttl: opt_duration(c, "TTL")?,
        ttl_external: true,
        interval: opt_duration(c, "Interval")?,
        timeout: opt_duration(c, "Timeout")?,
        status,
        deregister_critical_after: opt_duration(c, "DeregisterCriticalServiceAfter")?,
        notes: opt_string(c, "Notes")?,
        unsupported: None,
    }))
}

/// Parses and validates an agent service registration body for the agent
/// of `node` (whose address is `node_address`).
pub fn parse_registration(
    node: &str,
    node_address: &str,
    body: &[u8],
) -> Result<Registration, Error> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Error::invalid("body", format!("request decode failed: {e}")))?;
    let Value::Object(o) = &v else {
        return Err(expected("body", "a JSON object", &v));
    };
    reject_unknown(o, SERVICE_KEYS, "")?;
    reject_unsupported(o, &["SocketPath", "Proxy", "Connect", "Locality"])?;
    if let Some(kind) = opt_string(o, "Kind")?
        && !kind.is_empty()
    {
        return Err(Error::invalid(
            "Kind",
            format!("{kind:?}: only typical services are supported"),
        ));
    }
    let weights = match field(o, "Weights") {
        None => None,
        Some(Value::Object(w)) => Some((
            opt_int(w, "Passing")?.unwrap_or(1),
            opt_int(w, "Warning")?.unwrap_or(1),
        )),
        Some(v) => return Err(expected("Weights", "an object", v)),
    };
    let mut checks = Vec::new();
    if let Some(c) = field(o, "Check") {
        checks.extend(raw_check(c)?);
    }
    match field(o, "Checks") {
        None => {}
        Some(Value::Array(a)) => {
            for c in a {
                checks.extend(raw_check(c)?);
            }
        }
        Some(v) => return Err(expected("Checks", "an array of checks", v)),
    }
    let raw = RawInstance {
        id: opt_string(o, "ID")?,
        service: opt_string(o, "Name")?.unwrap_or_default(),
        node: None,
        node_address: None,
        address: opt_string(o, "Address")?,
        port: opt_int(o, "Port")?.unwrap_or(0),
        tags: string_list(o, "Tags")?,
        meta: string_map(o, "Meta")?,
        weights,
        checks,
    };
    Ok(Registration {
        instance: raw.validate(&NAMES, node, node_address)?,
        owner: None,
    })
}

async fn register(State(api): State<Api>, body: Bytes) -> Response {
    if body.len() > MAX_BODY {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body: larger than {MAX_BODY} bytes"),
        );
    }
    let reg = match parse_registration(&api.agent.node, &api.agent.node_address, &body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match api.agent.register(reg).await {
        Ok(r) => (StatusCode::OK, consul_headers(r.index), "").into_response(),
        Err(e) => e.into_response(),
    }
}

async fn deregister(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let key = InstanceKey::new(&api.agent.node, &id);
    match api.agent.deregister(&key).await {
        Ok(Some(index)) => (StatusCode::OK, consul_headers(index), "").into_response(),
        Ok(None) => text(StatusCode::NOT_FOUND, format!("Unknown service ID {id:?}")),
        Err(e) => e.into_response(),
    }
}

/// Consul's `PUT /v1/agent/service/maintenance/:id?enable=true|false&reason=`:
/// for an instance of this server's node.
async fn maintenance(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let p = Params(q);
    let enable = match p.get("enable") {
        Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("Invalid value for \"enable\": {other:?}: expected true or false"),
            );
        }
        None => {
            return text(
                StatusCode::BAD_REQUEST,
                "Missing value for enable".to_string(),
            );
        }
    };
    let reason =
        enable.then(|| crate::model::maintenance_reason(p.get("reason").unwrap_or_default()));
    let key = InstanceKey::new(&api.agent.node, &id);
    match api.agent.catalog.set_maintenance(&key, reason) {
        Ok(index) => (StatusCode::OK, consul_headers(index), "").into_response(),
        Err(crate::error::Error::NotFound(_)) => {
            text(StatusCode::NOT_FOUND, format!("Unknown service ID {id:?}"))
        }
        Err(e) => e.into_response(),
    }
}

async fn agent_services(
    State(api): State<Api>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let p = Params(q);
    if let Err(r) = api.check_params(&p) {
        return r.into_response();
    }
    let body: Map<String, Value> = api
        .agent
        .catalog
        .node_instances(&api.agent.node)
        .iter()
        .map(|i| (i.spec.id.clone(), service_json(&api.agent, i, false)))
        .collect();
    json_response(&p, api.agent.catalog.index(), &Value::Object(body))
}

async fn agent_service(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let p = Params(q);
    match api
        .agent
        .catalog
        .instance(&InstanceKey::new(&api.agent.node, &id))
    {
        Some(i) => json_response(&p, i.modify_index, &service_json(&api.agent, &i, false)),
        None => text(StatusCode::NOT_FOUND, format!("unknown service ID: {id}")),
    }
}

async fn agent_checks(State(api): State<Api>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let p = Params(q);
    let mut body = Map::new();
    for i in api.agent.catalog.node_instances(&api.agent.node) {
        for c in &i.checks {
            body.insert(c.spec.id.clone(), check_json(&i, c));
        }
    }
    json_response(&p, api.agent.catalog.index(), &Value::Object(body))
}

fn set_check(api: &Api, id: &str, status: Health, output: &str) -> Response {
    let Some(instance) = api.agent.catalog.find_check(&api.agent.node, id) else {
        return text(StatusCode::NOT_FOUND, format!("Unknown check ID {id:?}"));
    };
    match api.agent.update_ttl(&instance.key, id, status, output) {
        Ok(index) => (StatusCode::OK, consul_headers(index), "").into_response(),
        Err(e) => e.into_response(),
    }
}

async fn check_pass(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    set_check(
        &api,
        &id,
        Health::Passing,
        Params(q).get("note").unwrap_or_default(),
    )
}

async fn check_warn(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    set_check(
        &api,
        &id,
        Health::Warning,
        Params(q).get("note").unwrap_or_default(),
    )
}

async fn check_fail(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    set_check(
        &api,
        &id,
        Health::Critical,
        Params(q).get("note").unwrap_or_default(),
    )
}

async fn check_update(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> Response {
    let parsed = (|| {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| Error::invalid("body", format!("request decode failed: {e}")))?;
        let Value::Object(o) = &v else {
            return Err(expected("body", "a JSON object", &v));
        };
        let status = Health::parse("Status", &opt_string(o, "Status")?.unwrap_or_default())?;
        Ok((status, opt_string(o, "Output")?.unwrap_or_default()))
    })();
    match parsed {
        Ok((status, output)) => set_check(&api, &id, status, &output),
        Err(e) => e.into_response(),
    }
}

async fn catalog_datacenters(State(api): State<Api>) -> Response {
    json_response(
        &Params(Vec::new()),
        api.agent.catalog.index(),
        &json!([api.agent.datacenter]),
    )
}

async fn catalog_services(
    State(api): State<Api>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let p = Params(q);
    if let Err(r) = api.check_params(&p) {
        return r.into_response();
    }
    let catalog = api.agent.catalog.clone();
    let index = match api.block(&p, || catalog.services_index()).await {
        Ok(i) => i,
        Err(r) => return r.into_response(),
    };
    let (_, services) = api.agent.catalog.services();
    let body: Map<String, Value> = if node_meta_matches(&p) {
        services
            .into_iter()
            .map(|s| (s.name, json!(s.tags)))
            .collect()
    } else {
        Map::new()
    };
    json_response(&p, index, &Value::Object(body))
}

async fn catalog_service(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let p = Params(q);
    if let Err(r) = api.check_params(&p) {
        return r.into_response();
    }
    let name = name.to_ascii_lowercase();
    let catalog = api.agent.catalog.clone();
    let index = match api.block(&p, || catalog.service_index(&name)).await {
        Ok(i) => i,
        Err(r) => return r.into_response(),
    };
    let (_, instances) = api.agent.catalog.service(&name);
    let body: Vec<Value> = tagged(&p, &instances)
        .into_iter()
        .map(|i| catalog_entry_json(&api.agent, api.agent.catalog.node(&i.spec.node).as_ref(), i))
        .collect();
    json_response(&p, index, &Value::Array(body))
}

async fn catalog_nodes(State(api): State<Api>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let p = Params(q);
    if let Err(r) = api.check_params(&p) {
        return r.into_response();
    }
    let catalog = api.agent.catalog.clone();
    let index = match api.block(&p, || catalog.nodes_index()).await {
        Ok(i) => i,
        Err(r) => return r.into_response(),
    };
    let (_, nodes) = api.agent.catalog.nodes();
    let body: Vec<Value> = nodes
        .iter()
        .filter(|_| node_meta_matches(&p))
        .map(|n| node_json(&api.agent, n))
        .collect();
    json_response(&p, index, &Value::Array(body))
}

async fn catalog_node(
    State(api): State<Api>,
    Path(node): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let p = Params(q);
    if let Err(r) = api.check_params(&p) {
        return r.into_response();
    }
    let node = node.to_ascii_lowercase();
    let index = api.agent.catalog.index();
    let Some(n) = api.agent.catalog.node(&node) else {
        return json_response(&p, index, &Value::Null);
    };
    let services: Map<String, Value> = api
        .agent
        .catalog
        .node_instances(&node)
        .iter()
        .map(|i| (i.spec.id.clone(), service_json(&api.agent, i, true)))
        .collect();
    json_response(
        &p,
        index,
        &json!({"Node": node_json(&api.agent, &n), "Services": services}),
    )
}

async fn health_service(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let p = Params(q);
    if let Err(r) = api.check_params(&p) {
        return r.into_response();
    }
    let name = name.to_ascii_lowercase();
    let catalog = api.agent.catalog.clone();
    let index = match api.block(&p, || catalog.service_index(&name)).await {
        Ok(i) => i,
        Err(r) => return r.into_response(),
    };
    let (_, instances) = api.agent.catalog.service(&name);
    let passing_only = p.has("passing");
    let body: Vec<Value> = tagged(&p, &instances)
        .into_iter()
        .filter(|i| !passing_only || i.health == Health::Passing)
        .map(|i| {
            let node = api
                .agent
                .catalog
                .node(&i.spec.node)
                .unwrap_or_else(|| Node {
                    name: i.spec.node.clone(),
                    address: i.spec.node_address.clone(),
                    create_index: i.create_index,
                    modify_index: i.modify_index,
                    local: false,
                    instances: 0,
                });
            json!({
                "Node": node_json(&api.agent, &node),
                "Service": service_json(&api.agent, i, true),
                "Checks": i.checks.iter().map(|c| check_json(i, c)).collect::<Vec<_>>(),
            })
        })
        .collect();
    json_response(&p, index, &Value::Array(body))
}

async fn health_checks(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let p = Params(q);
    if let Err(r) = api.check_params(&p) {
        return r.into_response();
    }
    let name = name.to_ascii_lowercase();
    let catalog = api.agent.catalog.clone();
    let index = match api.block(&p, || catalog.service_index(&name)).await {
        Ok(i) => i,
        Err(r) => return r.into_response(),
    };
    let (_, instances) = api.agent.catalog.service(&name);
    let body: Vec<Value> = instances
        .iter()
        .flat_map(|i| i.checks.iter().map(move |c| check_json(i, c)))
        .collect();
    json_response(&p, index, &Value::Array(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The fuzzing corpus (fuzz/corpus/consul_registration) replayed on
    /// every test run.
    #[test]
    fn fuzz_corpus_replays() {
        bronze_runtime::replay_fuzz_corpus(
            "consul_registration",
            |bytes| match parse_registration("n1", "127.0.0.1", bytes) {
                Ok(reg) => assert!(!reg.instance.service.is_empty()),
                Err(Error::Invalid { field, .. }) => assert!(!field.is_empty()),
                Err(e) => panic!("unexpected error kind {e}"),
            },
        );
    }

    /// JSON values of every type, nested a little.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|n| json!(n)),
            "\\PC{0,12}".prop_map(Value::String),
            prop::sample::select(vec![
                "10s",
                "1m",
                "-1s",
                "0",
                "http://127.0.0.1:1/",
                "127.0.0.1:80",
                "passing",
                "web"
            ])
            .prop_map(|s| Value::String(s.to_string())),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((field_name(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn field_name() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "ID",
            "Name",
            "Tags",
            "Address",
            "Port",
            "Meta",
            "Weights",
            "Passing",
            "Warning",
            "Check",
            "Checks",
            "CheckID",
            "HTTP",
            "TCP",
            "TTL",
            "Interval",
            "Timeout",
            "Status",
            "Header",
            "Method",
            "DeregisterCriticalServiceAfter",
            "TLSSkipVerify",
            "Kind",
            "Args",
            "x",
        ])
        .prop_map(str::to_string)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any JSON body: a registration or an error naming a field, never a
        /// panic (fuzz/ runs the same property coverage-guided).
        #[test]
        fn registration_parser_never_panics(v in json_value(), raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            match parse_registration("n1", "127.0.0.1", v.to_string().as_bytes()) {
                Ok(reg) => prop_assert!(!reg.instance.service.is_empty()),
                Err(Error::Invalid { field, .. }) => prop_assert!(!field.is_empty()),
                Err(e) => prop_assert!(false, "unexpected error kind {e}"),
            }
            prop_assert!(parse_registration("n1", "127.0.0.1", &raw).is_err() || serde_json::from_slice::<Value>(&raw).is_ok());
        }
    }

    #[test]
    fn node_ids_are_stable_uuids() {
        let a = node_id("node-1");
        assert_eq!(a, node_id("node-1"));
        assert_ne!(a, node_id("node-2"));
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
    }

    #[test]
    fn fields_match_like_consul() {
        let v: Value =
            serde_json::from_str(r#"{"deregister_critical_service_after":"1m","port":5}"#)
                .expect("json");
        let Value::Object(o) = v else {
            panic!("object")
        };
        assert!(field(&o, "DeregisterCriticalServiceAfter").is_some());
        assert_eq!(opt_int(&o, "Port").expect("int"), Some(5));
        assert!(opt_string(&o, "Port").is_err());
    }
}
