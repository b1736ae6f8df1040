//! rate-limiting, policy `local`: fixed windows aligned as Kong's (second,
//! minute, hour, day, calendar month and year, UTC), counted in memory in
//! sharded maps (one short lock of one shard of 64 per request, no global
//! lock). Counters belong to the plugin instance: a service-wide instance
//! counts across the service's routes, as Kong's.
//!
//! The table is bounded, as Kong's fixed-size shared dictionary is: an
//! instance counts at most [`ENTRIES`] identifiers (512 in each shard),
//! each in a fixed-size entry (a client-chosen value, such as a header,
//! is kept as its bytes up to 32 and as its SHA-256 beyond), so a flood
//! of distinct identifiers costs at most about 8 MB an instance. A full
//! shard forgets its least recently counted identifier to make room:
//! that identifier starts from zero if it comes back, so a flood can make
//! the limits more lenient for quiet clients, never stricter for anyone.
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::{Arc, Weak};

use http::StatusCode;
use http::header::{HeaderName, HeaderValue};
use parking_lot::Mutex;
use serde::Deserialize;

use super::{Answer, Ctx, Plugin, Value, exit, parse_config};
use crate::declarative::Invalid;
use crate::lru::Lru;

/// Kong's configuration of rate-limiting with nothing set, as Kong shows it
/// (3.9's `kong/plugins/rate-limiting/schema.lua`): every field, with its
/// default or null. Bronze reads an unset field as that default.
pub(crate) fn kong_defaults() -> serde_json::Value {
    serde_json::json!({
        "second": null,
        "minute": null,
        "hour": null,
        "day": null,
        "month": null,
        "year": null,
        "limit_by": "consumer",
        "header_name": null,
        "path": null,
        "policy": "local",
        "fault_tolerant": true,
        // Kong's `kong/tools/redis/schema.lua`.
        "redis": {
            "host": null,
            "port": 6379,
            "timeout": 2000,
            "username": null,
            "password": null,
            "database": 0,
            "ssl": false,
            "ssl_verify": false,
            "server_name": null,
        },
        "hide_client_headers": false,
        "error_code": 429,
        "error_message": "API rate limit exceeded",
        "sync_rate": -1,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    second: Option<f64>,
    #[serde(default)]
    minute: Option<f64>,
    #[serde(default)]
    hour: Option<f64>,
    #[serde(default)]
    day: Option<f64>,
    #[serde(default)]
    month: Option<f64>,
    #[serde(default)]
    year: Option<f64>,
    #[serde(default)]
    limit_by: Option<String>,
    #[serde(default)]
    header_name: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    fault_tolerant: Option<bool>,
    #[serde(default)]
    hide_client_headers: Option<bool>,
    #[serde(default)]
    error_code: Option<u16>,
    #[serde(default)]
    error_message: Option<String>,
    #[serde(default)]
    sync_rate: Option<f64>,
    /// Only used by policy `redis`; accepted so Kong's dumps load.
    #[serde(default)]
    redis: Option<serde_json::Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Second,
    Minute,
    Hour,
    Day,
    Month,
    Year,
}

impl Period {
    /// The window holding unix time `now` (seconds): (start, length).
    pub fn window(self, now: u64) -> (u64, u64) {
        let fixed = |len: u64| (now - now % len, len);
        match self {
            Period::Second => fixed(1),
            Period::Minute => fixed(60),
            Period::Hour => fixed(3600),
            Period::Day => fixed(86_400),
            Period::Month | Period::Year => {
                let days = (now / 86_400) as i64;
                let (y, m, _) = civil_from_days(days);
                let (start, end) = if self == Period::Month {
                    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                    (days_from_civil(y, m, 1), days_from_civil(ny, nm, 1))
                } else {
                    (days_from_civil(y, 1, 1), days_from_civil(y + 1, 1, 1))
                };
                let start = start as u64 * 86_400;
                (start, end as u64 * 86_400 - start)
            }
        }
    }

    fn headers(self) -> (HeaderName, HeaderName) {
        let (l, r) = match self {
            Period::Second => ("x-ratelimit-limit-second", "x-ratelimit-remaining-second"),
            Period::Minute => ("x-ratelimit-limit-minute", "x-ratelimit-remaining-minute"),
            Period::Hour => ("x-ratelimit-limit-hour", "x-ratelimit-remaining-hour"),
            Period::Day => ("x-ratelimit-limit-day", "x-ratelimit-remaining-day"),
            Period::Month => ("x-ratelimit-limit-month", "x-ratelimit-remaining-month"),
            Period::Year => ("x-ratelimit-limit-year", "x-ratelimit-remaining-year"),
        };
        (HeaderName::from_static(l), HeaderName::from_static(r))
    }
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Ident {
    fn value(v: &HeaderValue) -> Self {
        Ident::Value(Key::of(v.as_bytes()))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LimitBy {
    Consumer,
    Credential,
    Ip,
    Service,
    Header,
    Path,
}

/// Whom a request is counted for.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Ident {
    Ip(IpAddr),
    Consumer(u32),
    Value(Key),
    Fixed,
}

/// A client-chosen value as a fixed-size key: its bytes up to 32 of them,
/// its SHA-256 beyond (`len` 255 marks a digest, so a 32-byte value never
/// equals one).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Key {
    len: u8,
    bytes: [u8; 32],
}

impl Key {
    fn of(value: &[u8]) -> Self {
        let mut bytes = [0; 32];
        match u8::try_from(value.len()) {
            Ok(len) if value.len() <= bytes.len() => {
                bytes[..value.len()].copy_from_slice(value);
                Key { len, bytes }
            }
            _ => {
                bytes.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, value).as_ref());
                Key {
                    len: u8::MAX,
                    bytes,
                }
            }
        }
    }
}

const SHARDS: usize = 64;
/// Identifiers one instance counts at most (`ENTRIES / SHARDS` a shard).
pub const ENTRIES: usize = 32_768;

/// Counts of one identifier: per configured period, (window start, count).
type Windows = [(u64, u64); 6];

pub struct RateLimiting {
    /// (period, limit) for each configured period.
    limits: Vec<(Period, u64)>,
    /// Per configured period: its two header names and the limit's value.
    header_names: Vec<(HeaderName, HeaderName, HeaderValue)>,
    limit_by: LimitBy,
    header_name: Option<HeaderName>,
    path: Option<String>,
    hide_client_headers: bool,
    error_code: StatusCode,
    error_message: String,
    counters: Arc<Counters>,
}

/// The counts of one instance: kept across configuration rebuilds that
/// keep the instance (same scope and config), as Kong's shared memory.
pub struct Counters {
    /// Keyed by client-controlled values: a seeded hash (foldhash's
    /// quality variant), much cheaper than SipHash per request.
    shards: Box<[Mutex<Lru<Ident, Windows, foldhash::quality::RandomState>>]>,
    hasher: foldhash::quality::RandomState,
}

impl Counters {
    fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Lru::with_hasher(ENTRIES / SHARDS, Default::default())))
                .collect(),
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    /// Identifiers counted now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

/// The counters of a gateway's live instances by identity (scope and
/// config): an instance rebuilt with the same identity takes over its
/// counters. Owned by one gateway (`plugins::Shared`), never the process;
/// it holds live instances only (dead ones are dropped as instances are
/// made).
#[derive(Default)]
pub struct Live(Mutex<HashMap<String, Weak<Counters>>>);

impl Live {
    fn counters(&self, identity: &str) -> Arc<Counters> {
        let mut live = self.0.lock();
        if let Some(c) = live.get(identity).and_then(Weak::upgrade) {
            return c;
        }
        live.retain(|_, w| w.strong_count() > 0);
        let c = Arc::new(Counters::new());
        live.insert(identity.to_string(), Arc::downgrade(&c));
        c
    }
}

/// The decision for one request.
#[derive(Debug, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// Remaining requests for each configured period (`limits`' order).
    pub remaining_per_period: [u64; 6],
    /// Kong's `RateLimit-*`: the window closest to its limit.
    pub limit: u64,
    pub remaining: u64,
    pub reset: u64,
}

impl RateLimiting {
    /// `identity`: what the instance is (scope and config); an instance of
    /// the same identity still alive lends its counters.
    pub fn new(
        config: Option<&serde_json::Value>,
        field: &str,
        identity: &str,
        live: &Live,
    ) -> Result<Self, Invalid> {
        let c: Config = parse_config(config, field)?;
        let f = |n: &str| format!("{field}.{n}");
        let mut limits = Vec::new();
        for (period, v, name) in [
            (Period::Second, c.second, "second"),
            (Period::Minute, c.minute, "minute"),
            (Period::Hour, c.hour, "hour"),
            (Period::Day, c.day, "day"),
            (Period::Month, c.month, "month"),
            (Period::Year, c.year, "year"),
        ] {
            if let Some(v) = v {
                if !(v >= 0.0 && v.fract() == 0.0 && v < 1e15) {
                    return Err(Invalid::new(f(name), "expected a whole number of requests"));
                }
                if let Some((_, prev)) = limits.last()
                    && v < *prev as f64
                {
                    return Err(Invalid::new(
                        f(name),
                        "the limit of a longer period must be at least that of a shorter one",
                    ));
                }
                limits.push((period, v as u64));
            }
        }
        if limits.is_empty() {
            return Err(Invalid::new(
                f("second"),
                "at least one of these fields must be non-empty: 'config.second', 'config.minute', 'config.hour', 'config.day', 'config.month', 'config.year'",
            ));
        }
        let limit_by = match c.limit_by.as_deref().unwrap_or("consumer") {
            "consumer" => LimitBy::Consumer,
            "credential" => LimitBy::Credential,
            "ip" => LimitBy::Ip,
            "service" => LimitBy::Service,
            "header" => LimitBy::Header,
            "path" => LimitBy::Path,
            other => {
                return Err(Invalid::new(
                    f("limit_by"),
                    format!(
                        "{other:?}: expected one of: consumer, credential, ip, service, header, path"
                    ),
                ));
            }
        };
        let header_name = match (&c.header_name, limit_by) {
            (Some(h), _) => Some(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                Invalid::new(f("header_name"), format!("{h:?}: expected a header name"))
            })?),
            (None, LimitBy::Header) => {
                return Err(Invalid::new(
                    f("header_name"),
                    "required field missing (limit_by is header)",
                ));
            }
            (None, _) => None,
        };
        if limit_by == LimitBy::Path && c.path.as_deref().is_none_or(|p| !p.starts_with('/')) {
            return Err(Invalid::new(
                f("path"),
                "required field missing (limit_by is path): expected a path starting with /",
            ));
        }
        match c.policy.as_deref().unwrap_or("local") {
            "local" => {}
            "cluster" | "redis" => {
                return Err(Invalid::new(
                    f("policy"),
                    "not implemented: only policy local exists in Bronze so far",
                ));
            }
            other => {
                return Err(Invalid::new(
                    f("policy"),
                    format!("{other:?}: expected one of: local, cluster, redis"),
                ));
            }
        }
        let _ = (c.fault_tolerant, c.sync_rate, c.redis);
        let error_code = StatusCode::from_u16(c.error_code.unwrap_or(429))
            .ok()
            .filter(|s| s.as_u16() >= 400)
            .ok_or_else(|| Invalid::new(f("error_code"), "expected an HTTP error status"))?;
        Ok(Self {
            header_names: limits
                .iter()
                .map(|(p, l)| {
                    let (a, b) = p.headers();
                    (a, b, HeaderValue::from(*l))
                })
                .collect(),
            limits,
            limit_by,
            header_name,
            path: c.path,
            hide_client_headers: c.hide_client_headers.unwrap_or(false),
            error_code,
            error_message: c
                .error_message
                .unwrap_or_else(|| "API rate limit exceeded".into()),
            counters: live.counters(identity),
        })
    }

    fn ident(&self, req: &http::request::Parts, ctx: &Ctx) -> Ident {
        let found = match self.limit_by {
            LimitBy::Service => Some(Ident::Fixed),
            LimitBy::Consumer => ctx
                .consumer
                .as_ref()
                .map(|c| Ident::Consumer(c.index))
                .or_else(|| ctx.credential.as_ref().map(Ident::value)),
            LimitBy::Credential => ctx.credential.as_ref().map(Ident::value),
            LimitBy::Header => self
                .header_name
                .as_ref()
                .and_then(|h| req.headers.get(h))
                .map(Ident::value),
            LimitBy::Path => (Some(req.uri.path()) == self.path.as_deref()).then_some(Ident::Fixed),
            LimitBy::Ip => None,
        };
        found.unwrap_or(Ident::Ip(ctx.peer.ip()))
    }

    /// Counts one request of `ident` at unix time `now`.
    fn decide(&self, ident: Ident, now: u64) -> Decision {
        let c = &self.counters;
        let shard = &c.shards[(c.hasher.hash_one(ident) as usize) % SHARDS];
        let mut map = shard.lock();
        let windows = map.get_or_insert_with(ident, || [(0, 0); 6]);
        let mut allowed = true;
        for (k, (period, limit)) in self.limits.iter().enumerate() {
            let (start, _) = period.window(now);
            if windows[k].0 != start {
                windows[k] = (start, 0);
            }
            if windows[k].1 >= *limit {
                allowed = false;
            }
        }
        let mut d = Decision {
            allowed,
            remaining_per_period: [0; 6],
            limit: 0,
            remaining: u64::MAX,
            reset: 0,
        };
        let mut best_len = 0;
        for (k, (period, limit)) in self.limits.iter().enumerate() {
            if allowed {
                windows[k].1 += 1;
            }
            let remaining = limit.saturating_sub(windows[k].1);
            let (start, len) = period.window(now);
            d.remaining_per_period[k] = remaining;
            if remaining < d.remaining || (remaining == d.remaining && len > best_len) {
                d.limit = *limit;
                d.remaining = remaining;
                d.reset = (start + len - now).max(1);
                best_len = len;
            }
        }
        d
    }
}

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

fn unix_now() -> u64 {
    bronze_runtime::unix_time().as_secs()
}

impl Plugin for RateLimiting {
    fn name(&self) -> &'static str {
        "rate-limiting"
    }

    fn priority(&self) -> i32 {
        910
    }

    fn access(&self, req: &mut http::request::Parts, ctx: &mut Ctx) -> Result<(), Answer> {
        let d = self.decide(self.ident(req, ctx), unix_now());
        let mut headers = Vec::new();
        if !self.hide_client_headers {
            headers.reserve(self.header_names.len() * 2 + 3);
            for (k, (l, r, limit)) in self.header_names.iter().enumerate() {
                headers.push((l.clone(), Value::Header(limit.clone())));
                headers.push((r.clone(), Value::Number(d.remaining_per_period[k])));
            }
            headers.push((RATELIMIT_LIMIT, Value::Number(d.limit)));
            headers.push((RATELIMIT_REMAINING, Value::Number(d.remaining)));
            headers.push((RATELIMIT_RESET, Value::Number(d.reset)));
        }
        if d.allowed {
            // Set on the response once it comes (the header phase).
            if ctx.response_headers.is_empty() {
                ctx.response_headers = headers;
            } else {
                ctx.response_headers.extend(headers);
            }
            return Ok(());
        }
        let mut answer = exit(self.error_code, &self.error_message);
        let answer_headers = answer.headers_mut();
        for (name, value) in headers {
            answer_headers.insert(name, value.into_header());
        }
        answer_headers.insert(http::header::RETRY_AFTER, HeaderValue::from(d.reset));
        Err(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_windows() {
        // 2026-11-23T14:30:00Z
        let now = 1_795_444_200;
        assert_eq!(civil_from_days((now / 86_400) as i64), (2026, 11, 23));
        let (start, len) = Period::Month.window(now);
        assert_eq!(civil_from_days((start / 86_400) as i64), (2026, 11, 1));
        assert_eq!(len, 30 * 86_400);
        let (start, len) = Period::Year.window(now);
        assert_eq!(civil_from_days((start / 86_400) as i64), (2026, 1, 1));
        assert_eq!(len, 365 * 86_400);
        assert_eq!(Period::Minute.window(now + 59), (now, 60));
        assert_eq!(Period::Minute.window(now + 60), (now + 60, 60));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }

    #[test]
    fn windows_count_and_roll_over() {
        let rl = RateLimiting::new(
            Some(&serde_json::json!({"second": 2, "minute": 3, "limit_by": "ip"})),
            "config",
            "test-windows",
            &Live::default(),
        )
        .unwrap();
        let ip = Ident::Ip("10.0.0.1".parse().unwrap());
        let t = 1_795_444_200;
        let a = rl.decide(ip, t);
        assert!(a.allowed);
        assert_eq!(a.remaining_per_period[..2], [1, 2]);
        assert_eq!((a.limit, a.remaining, a.reset), (2, 1, 1));
        assert!(rl.decide(ip, t).allowed);
        // The second window is full.
        let c = rl.decide(ip, t);
        assert!(!c.allowed);
        assert_eq!(c.remaining, 0);
        // The next second: the minute still has one left, then none.
        let d = rl.decide(ip, t + 1);
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining, d.reset), (3, 0, 59));
        assert!(!rl.decide(ip, t + 2).allowed);
        // Another client is counted apart; a new minute starts afresh.
        assert!(
            rl.decide(Ident::Ip("10.0.0.2".parse().unwrap()), t + 2)
                .allowed
        );
        assert!(rl.decide(ip, t + 60).allowed);
    }

    /// A flood of distinct identifiers, long ones too, keeps the table at
    /// its bound; it forgets the least recently counted, so a client
    /// counted all along keeps its count.
    #[test]
    fn the_table_is_bounded_and_forgets_the_least_recent() {
        let rl = RateLimiting::new(
            Some(&serde_json::json!({"hour": 3, "limit_by": "header", "header_name": "x-k"})),
            "config",
            "test-bounded",
            &Live::default(),
        )
        .unwrap();
        let t = 1_795_444_200;
        let steady = Ident::value(&HeaderValue::from_static("steady"));
        assert_eq!(rl.decide(steady, t).remaining, 2);
        let long = "k".repeat(100);
        for i in 0..4 * ENTRIES {
            let v = HeaderValue::from_str(&format!("{i}{long}")).unwrap();
            assert!(rl.decide(Ident::value(&v), t).allowed);
            if i % 1000 == 0 {
                // Counted often enough never to be the least recent.
                rl.decide(steady, t);
            }
        }
        assert!(rl.counters.len() <= ENTRIES, "{}", rl.counters.len());
        assert!(rl.counters.len() > ENTRIES / 2, "{}", rl.counters.len());
        assert!(!rl.decide(steady, t).allowed, "its count was kept");
        // The first flooded key was forgotten: it starts again.
        let first = HeaderValue::from_str(&format!("0{long}")).unwrap();
        assert_eq!(rl.decide(Ident::value(&first), t).remaining, 2);
    }

    #[test]
    fn long_values_are_kept_as_digests_short_ones_as_they_are() {
        let short = Key::of(b"abc");
        assert_eq!((short.len, &short.bytes[..3]), (3, &b"abc"[..]));
        let exact = Key::of(&[7; 32]);
        assert_eq!(exact.len, 32);
        let long = Key::of(&[7; 33]);
        assert_eq!(long.len, u8::MAX);
        assert_ne!(long, Key::of(&[7; 34]));
        assert_eq!(long, Key::of(&[7; 33]));
    }

    #[test]
    fn bad_configs_are_named() {
        let e = |v: serde_json::Value| {
            RateLimiting::new(Some(&v), "plugins[0].config", "test-bad", &Live::default())
                .err()
                .unwrap()
        };
        assert_eq!(
            e(serde_json::json!({"minut": 5})).field,
            "plugins[0].config.minut"
        );
        assert_eq!(e(serde_json::json!({})).field, "plugins[0].config.second");
        assert_eq!(
            e(serde_json::json!({"minute": 5, "policy": "redis"})).field,
            "plugins[0].config.policy"
        );
        assert_eq!(
            e(serde_json::json!({"minute": 5, "limit_by": "header"})).field,
            "plugins[0].config.header_name"
        );
        assert_eq!(
            e(serde_json::json!({"second": 10, "minute": 5})).field,
            "plugins[0].config.minute"
        );
    }
}
