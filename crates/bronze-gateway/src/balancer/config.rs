//! Kong's upstream fields for balancing and health checks (same names, same
//! defaults), Bronze's extension fields, and their validation into the
//! settings the balancer uses per request.
//!
//! Bronze extensions (not in Kong):
//! - upstream `algorithm: p2c`: power of two random choices on in-flight
//!   requests per weight;
//! - upstream `max_connections`, `max_connections_timeout`: requests in
//!   flight per target, and how long (ms) a request waits for one below
//!   the limit before a 503;
//! - upstream `circuit_breaker: {failures, open_timeout}`: a target that
//!   failed `failures` times in a row (connect errors, broken connections,
//!   timeouts)
//!   is skipped for `open_timeout` ms, then gets one probe request (when
//!   every target's circuit is open, circuits are ignored: panic mode);
//! - service `retry_budget: {percent, min_per_second}`: retries may add at
//!   most `percent` % to the service's request rate, plus
//!   `min_per_second`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::declarative::{Invalid, Upstream};

/// Kong's `healthchecks`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Healthchecks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<Active>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<Passive>,
    /// Kong's minimum healthy share of weight; accepted, only 0 is honoured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Active {
    /// `http` (Kong's default), `https`, `tcp`, `grpc` or `grpcs`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Seconds (Kong's default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Checks running at once (Kong's default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Kong's default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
    /// Headers sent with each check (name to values), as Kong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<std::collections::BTreeMap<String, Vec<String>>>,
    /// `https` checks: whether the target's certificate is verified
    /// (Kong's default: yes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_verify_certificate: Option<bool>,
    /// `https` checks: the name sent as SNI and checked (default: the
    /// target's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_sni: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<ActiveHealthy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy: Option<ActiveUnhealthy>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ActiveHealthy {
    /// Seconds between checks of a healthy target; 0 (default): none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_statuses: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successes: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ActiveUnhealthy {
    /// Seconds between checks of an unhealthy target; 0 (default): none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_statuses: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_failures: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Passive {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<PassiveHealthy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy: Option<PassiveUnhealthy>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_statuses: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successes: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PassiveUnhealthy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_statuses: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_failures: Option<u32>,
}

/// Bronze extension (upstream `circuit_breaker`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Consecutive failures that open a target's circuit (default 5; 0:
    /// never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// Milliseconds the circuit stays open before one probe (default
    /// 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_timeout: Option<u64>,
}

/// Bronze extension (service `retry_budget`), modeled on Finagle's and
/// Envoy's: over the last 10 seconds, retries may be at most `percent` % of
/// requests, plus `min_per_second` retries per second.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<u32>,
}

/// The algorithm choosing among a priority group's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastConnections,
    ConsistentHashing,
    Latency,
    P2c,
}

/// What a consistent hash is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    None,
    Ip,
    Header(http::HeaderName),
    /// Cookie name and the path of the cookie Bronze sets when absent.
    Cookie(String, String),
    Path,
    QueryArg(String),
    /// The consumer an auth plugin identified (its id).
    Consumer,
    /// A named group of the matched route's regex path.
    UriCapture(String),
}

#[derive(Debug, Clone)]
pub struct StatusSet([u64; 10]);

impl StatusSet {
    fn new(codes: &[u16]) -> Self {
        let mut bits = [0u64; 10];
        for &c in codes {
            if (100..740).contains(&c) {
                let i = usize::from(c - 100);
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        Self(bits)
    }

    pub fn contains(&self, code: u16) -> bool {
        (100..740).contains(&code) && {
            let i = usize::from(code - 100);
            self.0[i / 64] & (1 << (i % 64)) != 0
        }
    }
}

/// Failure thresholds (0: this kind of failure never marks unhealthy).
#[derive(Debug, Clone)]
pub struct Thresholds {
    pub successes: u32,
    pub http_failures: u32,
    pub tcp_failures: u32,
    pub timeouts: u32,
    pub healthy_statuses: StatusSet,
    pub unhealthy_statuses: StatusSet,
}

#[derive(Debug, Clone)]
pub struct ActiveSettings {
    pub kind: CheckKind,
    pub http_path: String,
    pub headers: http::HeaderMap,
    pub timeout: Duration,
    pub concurrency: usize,
    /// Zero: healthy (or unhealthy) targets are not checked.
    pub healthy_interval: Duration,
    pub unhealthy_interval: Duration,
    pub thresholds: Thresholds,
}

/// What an active check does.
#[derive(Debug, Clone)]
pub enum CheckKind {
    /// `GET http_path` over HTTP/1.1 (`https`: in TLS).
    Http { tls: Option<TlsCheck> },
    /// The gRPC health protocol (`grpc.health.v1.Health/Check`, the
    /// server as a whole) over HTTP/2: h2c, or TLS for `grpcs`.
    Grpc { tls: Option<TlsCheck> },
    /// A TCP connection that opens is a success.
    Tcp,
}

/// TLS for a check: `sni` (default: the target's host) is sent and, with
/// `verify`, checked against the certificate.
#[derive(Debug, Clone)]
pub struct TlsCheck {
    pub sni: Option<rustls_pki_types::ServerName<'static>>,
    pub verify: bool,
    /// The upstream's `client_certificate`, shown to targets that ask.
    pub own: Option<std::sync::Arc<crate::upstream::tls::Own>>,
}

/// An upstream's compiled balancing settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub algorithm: Algorithm,
    pub hash_on: HashOn,
    pub hash_fallback: HashOn,
    pub slots: u32,
    pub active: Option<ActiveSettings>,
    pub passive: Thresholds,
    pub max_connections: u32,
    pub max_connections_timeout: Duration,
    pub circuit_failures: u32,
    pub circuit_open: Duration,
    /// How long a target marked unhealthy passively stays out when there
    /// are no active checks (Bronze's choice; not configurable).
    pub passive_cooldown: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::RoundRobin,
            hash_on: HashOn::None,
            hash_fallback: HashOn::None,
            slots: 10_000,
            active: None,
            passive: passive_thresholds(&Passive::default()),
            max_connections: 0,
            max_connections_timeout: Duration::from_millis(100),
            circuit_failures: 5,
            circuit_open: Duration::from_secs(10),
            passive_cooldown: super::PASSIVE_COOLDOWN,
        }
    }
}

/// Kong's defaults.
const ACTIVE_HEALTHY: [u16; 2] = [200, 302];
const ACTIVE_UNHEALTHY: [u16; 8] = [429, 404, 500, 501, 502, 503, 504, 505];
const PASSIVE_HEALTHY: [u16; 19] = [
    200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 306, 307, 308,
];
const PASSIVE_UNHEALTHY: [u16; 3] = [429, 500, 503];

fn passive_thresholds(p: &Passive) -> Thresholds {
    let h = p.healthy.clone().unwrap_or_default();
    let u = p.unhealthy.clone().unwrap_or_default();
    Thresholds {
        successes: h.successes.unwrap_or(0),
        http_failures: u.http_failures.unwrap_or(0),
        tcp_failures: u.tcp_failures.unwrap_or(0),
        timeouts: u.timeouts.unwrap_or(0),
        healthy_statuses: StatusSet::new(h.http_statuses.as_deref().unwrap_or(&PASSIVE_HEALTHY)),
        unhealthy_statuses: StatusSet::new(
            u.http_statuses.as_deref().unwrap_or(&PASSIVE_UNHEALTHY),
        ),
    }
}

fn statuses(v: &Option<Vec<u16>>, field: &str) -> Result<(), Invalid> {
    if let Some(v) = v
        && let Some(bad) = v.iter().find(|c| !(100..=999).contains(*c))
    {
        return Err(Invalid::new(
            field,
            format!("{bad}: expected HTTP status codes (100-999)"),
        ));
    }
    Ok(())
}

/// Kong's health check seconds (0 to 65535).
fn seconds(v: Option<f64>, field: &str, default: f64) -> Result<Duration, Invalid> {
    crate::declarative::seconds(v, default, 65535.0, field)
}

fn hash_on(
    u: &Upstream,
    what: Option<&str>,
    header: Option<&str>,
    query_arg: Option<&str>,
    fallback: bool,
    field: &dyn Fn(&str) -> String,
) -> Result<HashOn, Invalid> {
    let (name, header_field, arg_field, capture_field) = if fallback {
        (
            "hash_fallback",
            "hash_fallback_header",
            "hash_fallback_query_arg",
            "hash_fallback_uri_capture",
        )
    } else {
        (
            "hash_on",
            "hash_on_header",
            "hash_on_query_arg",
            "hash_on_uri_capture",
        )
    };
    let need = |v: Option<&str>, f: &str| -> Result<String, Invalid> {
        match v {
            Some(v) if !v.is_empty() => Ok(v.to_string()),
            _ => Err(Invalid::new(
                field(f),
                format!("required when {name} is {:?}", what.unwrap_or("")),
            )),
        }
    };
    Ok(match what.unwrap_or("none") {
        "none" => HashOn::None,
        "ip" => HashOn::Ip,
        "path" => HashOn::Path,
        "header" => {
            let h = need(header, header_field)?;
            HashOn::Header(http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                Invalid::new(
                    field(header_field),
                    format!("{h:?}: expected a header name"),
                )
            })?)
        }
        "query_arg" => HashOn::QueryArg(need(query_arg, arg_field)?),
        "cookie" if !fallback => {
            let name = need(u.hash_on_cookie.as_deref(), "hash_on_cookie")?;
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(Invalid::new(
                    field("hash_on_cookie"),
                    format!("{name:?}: expected a cookie name (letters, digits, - _ .)"),
                ));
            }
            let path = u.hash_on_cookie_path.clone().unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == b';') {
                return Err(Invalid::new(
                    field("hash_on_cookie_path"),
                    format!("{path:?}: expected a path starting with /"),
                ));
            }
            HashOn::Cookie(name, path)
        }
        "consumer" => HashOn::Consumer,
        "uri_capture" => {
            let capture = if fallback {
                u.hash_fallback_uri_capture.as_deref()
            } else {
                u.hash_on_uri_capture.as_deref()
            };
            HashOn::UriCapture(need(capture, capture_field)?)
        }
        other => {
            return Err(Invalid::new(
                field(name),
                format!(
                    "{other:?}: expected one of none, ip, header, {}path, query_arg, consumer, uri_capture",
                    if fallback { "" } else { "cookie, " }
                ),
            ));
        }
    })
}

/// Validates an upstream's balancing fields; errors name Kong's field path
/// under `prefix` (e.g. `upstreams[0]`).
pub fn compile(u: &Upstream, prefix: &str) -> Result<Settings, Invalid> {
    let field = |f: &str| format!("{prefix}.{f}");
    let mut s = Settings::default();
    if u.host_header.is_some() {
        return Err(Invalid::new(
            field("host_header"),
            "not supported yet (use the route's preserve_host)",
        ));
    }
    if u.use_srv_name == Some(true) {
        return Err(Invalid::new(
            field("use_srv_name"),
            "not supported yet: expected false",
        ));
    }
    let hashing = u.hash_on.as_deref().is_some_and(|h| h != "none");
    s.algorithm = match u.algorithm.as_deref() {
        None if hashing => Algorithm::ConsistentHashing,
        None | Some("round-robin") => Algorithm::RoundRobin,
        Some("least-connections") => Algorithm::LeastConnections,
        Some("consistent-hashing") => Algorithm::ConsistentHashing,
        Some("latency") => Algorithm::Latency,
        Some("p2c") => Algorithm::P2c,
        Some(other) => {
            return Err(Invalid::new(
                field("algorithm"),
                format!(
                    "{other:?}: expected one of round-robin, least-connections, consistent-hashing, latency, p2c"
                ),
            ));
        }
    };
    s.hash_on = hash_on(
        u,
        u.hash_on.as_deref(),
        u.hash_on_header.as_deref(),
        u.hash_on_query_arg.as_deref(),
        false,
        &field,
    )?;
    s.hash_fallback = hash_on(
        u,
        u.hash_fallback.as_deref(),
        u.hash_fallback_header.as_deref(),
        u.hash_fallback_query_arg.as_deref(),
        true,
        &field,
    )?;
    if hashing && s.algorithm != Algorithm::ConsistentHashing {
        return Err(Invalid::new(
            field("hash_on"),
            "hashing needs algorithm consistent-hashing",
        ));
    }
    if s.hash_fallback != HashOn::None {
        if s.hash_on == HashOn::None {
            return Err(Invalid::new(
                field("hash_fallback"),
                "must be \"none\" when hash_on is \"none\"",
            ));
        }
        if matches!(s.hash_on, HashOn::Cookie(..)) {
            return Err(Invalid::new(
                field("hash_fallback"),
                "must be \"none\" when hash_on is \"cookie\" (the cookie is always set)",
            ));
        }
        if s.hash_fallback == s.hash_on {
            return Err(Invalid::new(
                field("hash_fallback"),
                "must differ from hash_on",
            ));
        }
    }
    s.slots = u.slots.unwrap_or(10_000);
    if !(10..=65_536).contains(&s.slots) {
        return Err(Invalid::new(field("slots"), "expected 10-65536"));
    }
    let hc = u.healthchecks.clone().unwrap_or_default();
    if let Some(t) = hc.threshold
        && t != 0.0
    {
        return Err(Invalid::new(
            field("healthchecks.threshold"),
            "only 0 is supported",
        ));
    }
    let passive = hc.passive.unwrap_or_default();
    if let Some(k) = passive.kind.as_deref().filter(|k| *k != "http") {
        return Err(Invalid::new(
            field("healthchecks.passive.type"),
            format!("{k:?}: only http is supported"),
        ));
    }
    let ph = passive.healthy.clone().unwrap_or_default();
    let pu = passive.unhealthy.clone().unwrap_or_default();
    statuses(
        &ph.http_statuses,
        &field("healthchecks.passive.healthy.http_statuses"),
    )?;
    statuses(
        &pu.http_statuses,
        &field("healthchecks.passive.unhealthy.http_statuses"),
    )?;
    s.passive = passive_thresholds(&passive);
    if let Some(a) = hc.active {
        let f = |x: &str| field(&format!("healthchecks.active.{x}"));
        let kind = a.kind.as_deref().unwrap_or("http");
        let tls = if matches!(kind, "https" | "grpcs") {
            let sni = match &a.https_sni {
                None => None,
                Some(n) => Some(
                    crate::upstream::UpstreamTls::new(n, true)
                        .map_err(|why| Invalid::new(f("https_sni"), why))?
                        .name,
                ),
            };
            Some(TlsCheck {
                sni,
                verify: a.https_verify_certificate.unwrap_or(true),
                own: None,
            })
        } else if a.https_sni.is_some() {
            return Err(Invalid::new(
                f("https_sni"),
                "only for https and grpcs checks",
            ));
        } else {
            None
        };
        let kind = match kind {
            "http" | "https" => CheckKind::Http { tls },
            "grpc" | "grpcs" => CheckKind::Grpc { tls },
            "tcp" => CheckKind::Tcp,
            k => {
                return Err(Invalid::new(
                    f("type"),
                    format!("{k:?}: expected http, https, tcp, grpc or grpcs"),
                ));
            }
        };
        let h = a.healthy.clone().unwrap_or_default();
        let un = a.unhealthy.clone().unwrap_or_default();
        let healthy_interval = seconds(h.interval, &f("healthy.interval"), 0.0)?;
        let unhealthy_interval = seconds(un.interval, &f("unhealthy.interval"), 0.0)?;
        let timeout = seconds(a.timeout, &f("timeout"), 1.0)?;
        if timeout.is_zero() {
            return Err(Invalid::new(f("timeout"), "expected more than 0 seconds"));
        }
        let concurrency = a.concurrency.unwrap_or(10);
        if concurrency == 0 {
            return Err(Invalid::new(f("concurrency"), "expected at least 1"));
        }
        let http_path = a.http_path.clone().unwrap_or_else(|| "/".into());
        if http_path.parse::<http::uri::PathAndQuery>().is_err() || !http_path.starts_with('/') {
            return Err(Invalid::new(
                f("http_path"),
                format!("{http_path:?}: expected a path starting with /"),
            ));
        }
        let mut headers = http::HeaderMap::new();
        for (name, values) in a.headers.iter().flatten() {
            let bad = || {
                Invalid::new(
                    f("headers"),
                    format!("{name:?}: expected a header name and values"),
                )
            };
            let n = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
            for v in values {
                headers.append(n.clone(), v.parse().map_err(|_| bad())?);
            }
        }
        statuses(&h.http_statuses, &f("healthy.http_statuses"))?;
        statuses(&un.http_statuses, &f("unhealthy.http_statuses"))?;
        if !healthy_interval.is_zero() || !unhealthy_interval.is_zero() {
            s.active = Some(ActiveSettings {
                kind,
                http_path,
                headers,
                timeout,
                concurrency: concurrency as usize,
                healthy_interval,
                unhealthy_interval,
                thresholds: Thresholds {
                    successes: h.successes.unwrap_or(0),
                    http_failures: un.http_failures.unwrap_or(0),
                    tcp_failures: un.tcp_failures.unwrap_or(0),
                    timeouts: un.timeouts.unwrap_or(0),
                    healthy_statuses: StatusSet::new(
                        h.http_statuses.as_deref().unwrap_or(&ACTIVE_HEALTHY),
                    ),
                    unhealthy_statuses: StatusSet::new(
                        un.http_statuses.as_deref().unwrap_or(&ACTIVE_UNHEALTHY),
                    ),
                },
            });
        }
    }
    s.max_connections = u.max_connections.unwrap_or(0);
    s.max_connections_timeout = Duration::from_millis(u.max_connections_timeout.unwrap_or(100));
    if s.max_connections_timeout > Duration::from_secs(60) {
        return Err(Invalid::new(
            field("max_connections_timeout"),
            "expected at most 60000 (milliseconds)",
        ));
    }
    if let Some(cb) = &u.circuit_breaker {
        s.circuit_failures = cb.failures.unwrap_or(5);
        let open = cb.open_timeout.unwrap_or(10_000);
        if open == 0 || open > 3_600_000 {
            return Err(Invalid::new(
                field("circuit_breaker.open_timeout"),
                "expected 1-3600000 (milliseconds)",
            ));
        }
        s.circuit_open = Duration::from_millis(open);
    }
    Ok(s)
}

/// A service's compiled retry budget.
pub fn retry_budget(b: Option<&RetryBudget>, field: &str) -> Result<(f64, u32), Invalid> {
    let percent = b.and_then(|b| b.percent).unwrap_or(20.0);
    if !(0.0..=1000.0).contains(&percent) || !percent.is_finite() {
        return Err(Invalid::new(
            format!("{field}.percent"),
            "expected 0-1000 (percent of requests)",
        ));
    }
    Ok((percent, b.and_then(|b| b.min_per_second).unwrap_or(10)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream as Kong exports it (every field with its default, plus
    /// active checks switched on) loads unchanged.
    #[test]
    fn kong_exported_upstreams_load() {
        let d = crate::declarative::parse(
            br#"{"_format_version": "3.0", "upstreams": [{
              "name": "users", "algorithm": "round-robin", "hash_on": "none",
              "hash_fallback": "none", "hash_on_cookie_path": "/", "slots": 10000,
              "use_srv_name": false,
              "healthchecks": {
                "threshold": 0,
                "active": {"type": "http", "concurrency": 10, "http_path": "/status",
                  "https_verify_certificate": true, "timeout": 1,
                  "headers": {"x-check": ["bronze"]},
                  "healthy": {"http_statuses": [200, 302], "interval": 5, "successes": 2},
                  "unhealthy": {"http_failures": 3, "http_statuses": [429, 404, 500, 501, 502, 503, 504, 505],
                                "interval": 1, "tcp_failures": 2, "timeouts": 3}},
                "passive": {"type": "http",
                  "healthy": {"http_statuses": [200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 306, 307, 308], "successes": 0},
                  "unhealthy": {"http_failures": 0, "http_statuses": [429, 500, 503], "tcp_failures": 0, "timeouts": 0}}},
              "targets": [{"target": "10.0.0.1:8080", "weight": 100}]}]}"#,
        )
        .expect("parses");
        let s = compile(&d.upstreams[0], "upstreams[0]").expect("valid");
        let a = s.active.expect("active checks on");
        assert_eq!(a.http_path, "/status");
        assert_eq!(a.healthy_interval, Duration::from_secs(5));
        assert_eq!(a.unhealthy_interval, Duration::from_secs(1));
        assert_eq!(a.thresholds.tcp_failures, 2);
        assert_eq!(a.headers["x-check"], "bronze");
        assert!(a.thresholds.unhealthy_statuses.contains(404));
        assert!(!a.thresholds.unhealthy_statuses.contains(200));
        assert_eq!(s.algorithm, Algorithm::RoundRobin);
        assert_eq!(s.passive.http_failures, 0);
    }
}
