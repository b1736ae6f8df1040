//! Upstreams: which target gets a request, and what is known of each
//! target's health.
//!
//! An [`Upstream`] holds its targets in priority groups (RFC 2782: the
//! first group with a usable target is used; a static target is in the
//! first group) behind an `ArcSwap`, so DNS SRV answers and discovery
//! changes replace the target list without rebuilding the routing table.
//! A request asks for a [`Pick`] (one atomic load, then per algorithm:
//! round robin one `fetch_add`; consistent hashing a binary search;
//! p2c/latency two random probes; least-connections a scan of the group's
//! in-flight counters, without a lock), reports the outcome to it, and the
//! pick releases its in-flight count when dropped (when the response body
//! ends, or the request is abandoned).
//!
//! Per-target state ([`TargetState`]: in-flight count, latency, health
//! counters, circuit breaker) is kept in the gateway's [`Registry`] keyed
//! by upstream name and target, so it survives configuration swaps for
//! targets that stay.

pub mod config;
pub mod connect;
pub mod dns;
pub mod health;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderValue};
use parking_lot::Mutex;

use config::{Algorithm, HashOn, Settings};

/// How long a target marked unhealthy by passive checks stays out when the
/// upstream has no active checks to bring it back (Bronze's choice; Kong
/// keeps it out until an operator intervenes).
pub const PASSIVE_COOLDOWN: Duration = Duration::from_secs(10);

/// Milliseconds since the first call (a monotonic clock that fits an
/// atomic).
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Health counters of one target (Kong's: consecutive, reset by the
/// opposite outcome).
#[derive(Debug, Default)]
struct Counters {
    successes: u32,
    http_failures: u32,
    tcp_failures: u32,
    timeouts: u32,
}

/// What happened to a request (or an active check) sent to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered with this status.
    Status(u16),
    /// A check without an HTTP status passed (a TCP connection opened, a
    /// gRPC server said SERVING).
    Passed,
    /// A gRPC health check answered, but not SERVING: counted as an HTTP
    /// failure.
    Failed,
    /// Could not connect, or the connection broke.
    TcpFailure,
    Timeout,
}

/// One target's live state, shared by every configuration that has it.
#[derive(Debug)]
pub struct TargetState {
    /// `host:port` as sent upstream.
    pub addr: Arc<str>,
    /// `addr` as a `Host` header value, made once rather than per request
    /// (`None` if it is not a valid header value).
    pub host_header: Option<http::HeaderValue>,
    in_flight: AtomicU32,
    /// Exponentially weighted response time, microseconds (0: unknown).
    ewma_us: AtomicU64,
    healthy: AtomicBool,
    /// When it was last marked unhealthy (`now_ms`).
    unhealthy_at: AtomicU64,
    /// Whether any failure counter is non-zero (successes skip the lock
    /// otherwise).
    failing: AtomicBool,
    counters: Mutex<Counters>,
    consecutive_failures: AtomicU32,
    /// 0: circuit closed; otherwise open until then (`now_ms`).
    open_until: AtomicU64,
    /// A half-open probe is in flight.
    probing: AtomicBool,
    /// Set unhealthy through the Admin API: stays so (no passive
    /// cool-down) until set healthy, or an active check passes.
    held: AtomicBool,
}

impl TargetState {
    fn new(addr: Arc<str>) -> Self {
        Self {
            host_header: http::HeaderValue::from_str(&addr).ok(),
            addr,
            in_flight: AtomicU32::new(0),
            ewma_us: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            unhealthy_at: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            counters: Mutex::new(Counters::default()),
            consecutive_failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            held: AtomicBool::new(false),
        }
    }

    /// Kong's `PUT .../targets/{t}/healthy` and `/unhealthy`: the target's
    /// health set by hand, its counters reset.
    pub fn set_by_hand(&self, healthy: bool) {
        *self.counters.lock() = Counters::default();
        self.failing.store(false, Ordering::Relaxed);
        self.held.store(!healthy, Ordering::Relaxed);
        self.set_healthy(
            healthy,
            if healthy {
                "set healthy through the Admin API"
            } else {
                "set unhealthy through the Admin API"
            },
        );
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn set_healthy(&self, healthy: bool, why: &str) {
        if healthy {
            self.held.store(false, Ordering::Relaxed);
        }
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            if !healthy {
                self.unhealthy_at.store(now_ms(), Ordering::Relaxed);
            }
            tracing::info!(target = %self.addr, healthy, reason = why, "target health changed");
        }
    }

    /// Counts an outcome against `t` (Kong's healthcheck state machine:
    /// failures of a kind reaching its threshold mark unhealthy; successes
    /// reaching theirs mark healthy again).
    fn record(&self, outcome: Outcome, t: &config::Thresholds, source: &str) {
        let failure = match outcome {
            Outcome::Status(s) if t.unhealthy_statuses.contains(s) => Some(0),
            Outcome::Status(s) if t.healthy_statuses.contains(s) => None,
            Outcome::Status(_) => return,
            Outcome::Passed => None,
            Outcome::Failed => Some(0),
            Outcome::TcpFailure => Some(1),
            Outcome::Timeout => Some(2),
        };
        match failure {
            None => {
                // As Kong: a source whose success threshold is 0 does not
                // count successes (nor reset failures with them).
                if t.successes == 0 || (self.is_healthy() && !self.failing.load(Ordering::Relaxed))
                {
                    return;
                }
                let mut c = self.counters.lock();
                c.http_failures = 0;
                c.tcp_failures = 0;
                c.timeouts = 0;
                self.failing.store(false, Ordering::Relaxed);
                c.successes = c.successes.saturating_add(1);
                if !self.is_healthy() && t.successes > 0 && c.successes >= t.successes {
                    c.successes = 0;
                    self.set_healthy(true, source);
                }
            }
            Some(kind) => {
                let limit = match kind {
                    0 => t.http_failures,
                    1 => t.tcp_failures,
                    _ => t.timeouts,
                };
                // Likewise for failures of a kind with threshold 0.
                if limit == 0 {
                    return;
                }
                let mut c = self.counters.lock();
                c.successes = 0;
                self.failing.store(true, Ordering::Relaxed);
                let n = match kind {
                    0 => &mut c.http_failures,
                    1 => &mut c.tcp_failures,
                    _ => &mut c.timeouts,
                };
                *n = n.saturating_add(1);
                if *n >= limit && self.is_healthy() {
                    *c = Counters::default();
                    self.failing.store(false, Ordering::Relaxed);
                    self.set_healthy(false, source);
                }
            }
        }
    }
}

/// Where an upstream's targets come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// An IP address (or a name the connector resolves).
    Static,
    /// A name resolved through DNS: SRV records when it has them.
    Dns,
    /// A discovery service's healthy instances, from the Watch stream.
    Discovery(String),
}

fn discovery_key(service: &str) -> String {
    format!("discovery:{service}")
}

/// Records a discovery service's healthy instances (as targets) for every
/// upstream that follows it, now and in later configurations.
pub fn set_discovery_instances<'a>(
    registry: &Registry,
    service: &str,
    upstreams: impl Iterator<Item = &'a Arc<Upstream>>,
    mut targets: Vec<Resolved>,
) {
    targets.sort_by(|a, b| a.addr.cmp(&b.addr));
    registry
        .resolved
        .lock()
        .insert(discovery_key(service), (targets, Instant::now()));
    for u in upstreams {
        if u.discovery_services().any(|s| s == service) {
            u.recompute();
        }
    }
}

/// A configured target: `host:port` with a weight.
#[derive(Debug, Clone)]
pub struct Spec {
    pub host: String,
    pub port: u16,
    pub weight: u32,
    pub source: Source,
}

/// A target as resolved: its authority, weight and priority rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub addr: String,
    pub weight: u32,
    /// 0 for the lowest SRV priority (and static targets), 1 for the
    /// next, ...
    pub rank: u32,
}

#[derive(Debug)]
struct Member {
    state: Arc<TargetState>,
    weight: u32,
}

/// Targets of one priority rank and the structures each algorithm uses.
#[derive(Debug)]
struct Group {
    members: Vec<Member>,
    /// Member indexes in smooth weighted round-robin order.
    ring: Vec<u32>,
    next: AtomicUsize,
    /// Consistent-hashing points (hash, member), sorted.
    points: Vec<(u64, u32)>,
}

/// The current target list of an upstream (swapped whole).
#[derive(Debug, Default)]
pub struct Targets {
    groups: Vec<Group>,
    /// As resolved (for the health report and change detection).
    pub resolved: Vec<Resolved>,
}

/// FNV-1a with a final mix: a fast, stable 64-bit hash.
pub fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Group {
    fn build(members: Vec<Member>, settings: &Settings) -> Self {
        // Round robin: weights divided by their gcd, capped at 10,000
        // slots, in nginx's smooth weighted order.
        let g = members.iter().fold(0, |g, m| gcd(g, m.weight)).max(1);
        let mut w: Vec<u64> = members.iter().map(|m| u64::from(m.weight / g)).collect();
        let total: u64 = w.iter().sum();
        if total > 10_000 {
            for x in &mut w {
                *x = (*x * 10_000 / total).max(1);
            }
        }
        let total: i64 = w.iter().sum::<u64>() as i64;
        let mut current = vec![0i64; w.len()];
        let mut ring = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for i in 0..w.len() {
                current[i] += w[i] as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            ring.push(best as u32);
        }
        // Consistent hashing: a fixed number of points per unit of weight
        // (slots / 5000 per weight 100 ... i.e. 200 by default), so adding
        // a target only moves the keys its own points take.
        let mut points = Vec::new();
        if settings.algorithm == Algorithm::ConsistentHashing {
            for (i, m) in members.iter().enumerate() {
                let n = (u64::from(m.weight) * u64::from(settings.slots) / 5000).max(1);
                for k in 0..n.min(1 << 16) {
                    points.push((
                        hash64(&[m.state.addr.as_bytes(), &k.to_le_bytes()]),
                        i as u32,
                    ));
                }
            }
            points.sort_unstable();
        }
        Self {
            members,
            ring,
            next: AtomicUsize::new(0),
            points,
        }
    }
}

/// The gateway-wide state behind every configuration: per-target state,
/// the last DNS answers, the resolver, and what plugins keep (rate-limiting
/// counters, password hashes, bcrypt slots). One per gateway.
#[derive(Debug, Default)]
pub struct Registry {
    pub plugins: Arc<crate::plugins::Shared>,
    states: Mutex<HashMap<(String, String), Weak<TargetState>>>,
    /// Last answer for each DNS name (`dns:host:port`; empty: no SRV
    /// records) and until when it holds, and each discovery service's
    /// instances (`discovery:name`): a new configuration starts from them
    /// without waiting.
    resolved: Mutex<HashMap<String, (Vec<Resolved>, Instant)>>,
    /// DNS server for SRV lookups (tests, `bronze dev`); none: the
    /// system's (`/etc/resolv.conf`).
    pub dns_resolver: Option<SocketAddr>,
    /// Whether discovery is configured: hosts `<name>.service.bronze`
    /// then follow its Watch stream instead of DNS.
    pub discovery: bool,
    resolver: OnceLock<Option<dns::Resolver>>,
    /// The client side of TLS (with `upstream_ca_file`), for https active
    /// checks; set once by the server.
    tls: OnceLock<crate::upstream::tls::Clients>,
}

/// The host suffix naming a discovery service.
pub const DISCOVERY_SUFFIX: &str = ".service.bronze";

impl Registry {
    pub fn new(dns_resolver: Option<SocketAddr>, discovery: bool) -> Self {
        Self {
            dns_resolver,
            discovery,
            ..Self::default()
        }
    }

    /// A registry for a compile that only validates: no target state of
    /// its own, this one's plugin state (so passwords hashed while
    /// validating are not hashed again).
    pub fn scratch(&self) -> Arc<Self> {
        Arc::new(Self {
            plugins: self.plugins.clone(),
            ..Self::default()
        })
    }

    /// Gives https active checks the server's TLS client configurations
    /// (the first call wins).
    pub fn set_tls(&self, clients: crate::upstream::tls::Clients) {
        let _ = self.tls.set(clients);
    }

    /// The TLS client configurations, once the server set them.
    pub fn tls(&self) -> Option<&crate::upstream::tls::Clients> {
        self.tls.get()
    }

    /// How a configured host is followed: an IP address (or `localhost`)
    /// is static; `<name>.service.bronze` follows discovery when it is
    /// configured; any other name is looked up as SRV.
    pub fn source_of(&self, host: &str) -> Source {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<IpAddr>().is_ok() || bare.eq_ignore_ascii_case("localhost") {
            return Source::Static;
        }
        let lower = host.to_ascii_lowercase();
        match lower.strip_suffix(DISCOVERY_SUFFIX) {
            Some(name) if self.discovery && !name.is_empty() && !name.contains('.') => {
                Source::Discovery(name.to_string())
            }
            _ => Source::Dns,
        }
    }

    fn state(&self, upstream: &str, addr: &str) -> Arc<TargetState> {
        let mut states = self.states.lock();
        let key = (upstream.to_string(), addr.to_string());
        if let Some(s) = states.get(&key).and_then(Weak::upgrade) {
            return s;
        }
        if states.len() > 64 && states.len().is_power_of_two() {
            states.retain(|_, w| w.strong_count() > 0);
        }
        let s = Arc::new(TargetState::new(addr.into()));
        states.insert(key, Arc::downgrade(&s));
        s
    }

    fn resolver(&self) -> Option<&dns::Resolver> {
        self.resolver
            .get_or_init(|| dns::Resolver::new(self.dns_resolver))
            .as_ref()
    }
}

/// What a request offers for hashing.
pub struct RequestInfo<'a> {
    pub headers: &'a HeaderMap,
    pub peer: IpAddr,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The id of the consumer an auth plugin identified, if any.
    pub consumer: Option<&'a str>,
    /// The named groups of the matched route's regex path, when the
    /// upstream hashes on one (`Upstream::wants_captures`).
    pub captures: Option<&'a regex::Captures<'a>>,
}

/// A request's hash (if the upstream hashes and the request has the value)
/// and the cookie to set when `hash_on: cookie` found none.
#[derive(Debug, Default)]
pub struct Key {
    hash: Option<u64>,
    pub set_cookie: Option<HeaderValue>,
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

fn hash_of(on: &HashOn, r: &RequestInfo<'_>) -> Option<u64> {
    match on {
        HashOn::None | HashOn::Cookie(..) => None,
        HashOn::Ip => Some(match r.peer {
            IpAddr::V4(a) => hash64(&[&a.octets()]),
            IpAddr::V6(a) => hash64(&[&a.octets()]),
        }),
        HashOn::Header(h) => {
            let mut values = r.headers.get_all(h).iter();
            let first = values.next()?;
            // Several values hash as Kong's joined list would: in order.
            let rest: Vec<&[u8]> = values.map(|v| v.as_bytes()).collect();
            let mut parts = vec![first.as_bytes()];
            parts.extend(rest);
            Some(hash64(&parts))
        }
        HashOn::Path => Some(hash64(&[r.path.as_bytes()])),
        HashOn::Consumer => r.consumer.map(|c| hash64(&[c.as_bytes()])),
        HashOn::UriCapture(name) => r
            .captures
            .and_then(|c| c.name(name))
            .map(|m| hash64(&[m.as_str().as_bytes()])),
        HashOn::QueryArg(name) => r.query.and_then(|q| {
            q.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == name).then(|| hash64(&[v.as_bytes()]))
            })
        }),
    }
}

/// The time of a pick, and whether circuits are ignored.
#[derive(Debug, Clone, Copy)]
struct At {
    now: u64,
    panic: bool,
}

/// Why no target was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPeer {
    /// The upstream has no targets (none configured, or DNS/discovery
    /// returned none).
    NoTargets,
    /// Every target is unhealthy or its circuit is open.
    Unavailable,
    /// Every usable target is at `max_connections`.
    Busy,
}

impl NoPeer {
    /// Kong's message for a 503 (Bronze's for the extension's limit).
    pub fn message(self) -> &'static str {
        match self {
            NoPeer::NoTargets | NoPeer::Unavailable => {
                "failure to get a peer from the ring-balancer"
            }
            NoPeer::Busy => "upstream connection limit reached",
        }
    }
}

/// A service's view of an upstream, with its own retry budget.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub settings: Settings,
    pub specs: Vec<Spec>,
    targets: ArcSwap<Targets>,
    registry: Arc<Registry>,
    released: tokio::sync::Notify,
    started: AtomicBool,
}

impl Upstream {
    /// An upstream over `specs`; names resolved earlier (by a previous
    /// configuration) start from their last answer.
    pub fn new(
        name: String,
        settings: Settings,
        specs: Vec<Spec>,
        registry: &Arc<Registry>,
    ) -> Arc<Self> {
        let u = Arc::new(Self {
            name,
            settings,
            specs,
            targets: ArcSwap::from_pointee(Targets::default()),
            registry: registry.clone(),
            released: tokio::sync::Notify::new(),
            started: AtomicBool::new(false),
        });
        u.recompute();
        u
    }

    /// Rebuilds the target list from the specs and the registry's latest
    /// DNS answers and discovery instances.
    pub fn recompute(&self) {
        let all: Vec<Resolved> = {
            let cache = self.registry.resolved.lock();
            self.specs
                .iter()
                .flat_map(|s| match &s.source {
                    Source::Static => vec![static_of(s)],
                    Source::Dns => match cache.get(&dns::cache_key(&s.host, s.port)) {
                        Some((r, _)) if !r.is_empty() => r.clone(),
                        _ => vec![static_of(s)],
                    },
                    Source::Discovery(service) => cache
                        .get(&discovery_key(service))
                        .map(|(r, _)| r.clone())
                        .unwrap_or_default(),
                })
                .collect()
        };
        self.set_targets(all);
    }

    /// The discovery services this upstream follows.
    pub fn discovery_services(&self) -> impl Iterator<Item = &str> {
        self.specs.iter().filter_map(|s| match &s.source {
            Source::Discovery(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Replaces the target list (DNS, discovery); unchanged lists are
    /// left alone so round-robin positions and hash rings stay.
    pub fn set_targets(&self, resolved: Vec<Resolved>) {
        if self.targets.load().resolved == resolved && !resolved.is_empty() {
            return;
        }
        tracing::debug!(upstream = %self.name, targets = resolved.len(), "targets changed");
        let ranks = resolved.iter().map(|r| r.rank).max().map_or(0, |m| m + 1);
        let groups = (0..ranks)
            .filter_map(|rank| {
                let members: Vec<Member> = resolved
                    .iter()
                    .filter(|r| r.rank == rank && r.weight > 0)
                    .map(|r| Member {
                        state: self.registry.state(&self.name, &r.addr),
                        weight: r.weight,
                    })
                    .collect();
                (!members.is_empty()).then(|| Group::build(members, &self.settings))
            })
            .collect();
        self.targets.store(Arc::new(Targets { groups, resolved }));
    }

    pub fn targets(&self) -> arc_swap::Guard<Arc<Targets>> {
        self.targets.load()
    }

    /// How many different targets a request could go to.
    pub fn distinct_targets(&self) -> usize {
        self.targets
            .load()
            .groups
            .iter()
            .map(|g| g.members.len())
            .sum()
    }

    /// The request's hash key; sets `Key::set_cookie` for `hash_on: cookie`
    /// when the request has no such cookie (Kong's sticky behaviour).
    /// Whether picks depend on the request (consistent hashing), so
    /// [`Upstream::key`] must see it.
    pub fn hashes(&self) -> bool {
        self.settings.algorithm == Algorithm::ConsistentHashing
    }

    /// Whether picking needs the route's regex captures (`uri_capture`).
    pub fn wants_captures(&self) -> bool {
        self.hashes()
            && [&self.settings.hash_on, &self.settings.hash_fallback]
                .iter()
                .any(|h| matches!(h, HashOn::UriCapture(_)))
    }

    pub fn key(&self, r: &RequestInfo<'_>) -> Key {
        if self.settings.algorithm != Algorithm::ConsistentHashing {
            return Key::default();
        }
        if let HashOn::Cookie(name, path) = &self.settings.hash_on {
            if let Some(v) = cookie(r.headers, name) {
                return Key {
                    hash: Some(hash64(&[v.as_bytes()])),
                    set_cookie: None,
                };
            }
            let value = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
            return Key {
                hash: Some(hash64(&[value.as_bytes()])),
                set_cookie: HeaderValue::from_str(&format!(
                    "{name}={value}; Path={path}; SameSite=Lax; HttpOnly"
                ))
                .ok(),
            };
        }
        Key {
            hash: hash_of(&self.settings.hash_on, r)
                .or_else(|| hash_of(&self.settings.hash_fallback, r)),
            set_cookie: None,
        }
    }

    /// Whether `t` may take a request now; with `claim`, takes the
    /// half-open probe of a target whose circuit timed out. In panic mode
    /// (every circuit open) circuits are ignored.
    fn usable(&self, t: &TargetState, at: At, claim: bool) -> bool {
        let now = at.now;
        if !t.is_healthy() {
            let back = self.settings.active.is_none()
                && !t.held.load(Ordering::Relaxed)
                && now
                    >= t.unhealthy_at.load(Ordering::Relaxed)
                        + self.settings.passive_cooldown.as_millis() as u64;
            if !back {
                return false;
            }
            if claim {
                *t.counters.lock() = Counters::default();
                t.set_healthy(true, "passive cool-down over");
            }
        }
        let max = self.settings.max_connections;
        if max > 0 && t.in_flight() >= max {
            return false;
        }
        let open = t.open_until.load(Ordering::Relaxed);
        if open == 0 || at.panic {
            return true;
        }
        if now < open || t.probing.load(Ordering::Relaxed) {
            return false;
        }
        !claim
            || t.probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Takes one in-flight slot of `t` (false when `max_connections` was
    /// reached meanwhile).
    fn take(&self, t: &TargetState) -> bool {
        let max = self.settings.max_connections;
        if max == 0 {
            t.in_flight.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        t.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    fn score(&self, m: &Member) -> u64 {
        let load = u64::from(m.state.in_flight()) + 1;
        let base = if self.settings.algorithm == Algorithm::Latency {
            m.state.ewma_us.load(Ordering::Relaxed).max(1)
        } else {
            1000
        };
        base.saturating_mul(load).saturating_mul(1000) / u64::from(m.weight.max(1))
    }

    /// Tries `i` (claiming probe and slot); `Some` on success.
    fn try_member(&self, g: &Group, i: usize, at: At, avoid: Option<&TargetState>) -> bool {
        let t = &g.members[i].state;
        if avoid.is_some_and(|a| std::ptr::eq(a, &**t)) {
            return false;
        }
        if !self.usable(t, at, true) {
            return false;
        }
        if self.take(t) {
            return true;
        }
        // Give back the probe this call claimed.
        if !at.panic && t.open_until.load(Ordering::Relaxed) != 0 {
            t.probing.store(false, Ordering::Relaxed);
        }
        false
    }

    fn choose(&self, g: &Group, key: &Key, at: At, avoid: Option<&TargetState>) -> Option<usize> {
        let n = g.members.len();
        let round_robin = |g: &Group| {
            let start = g.next.fetch_add(1, Ordering::Relaxed);
            let len = g.ring.len();
            // A few ring slots (in weight order), then each member once:
            // at most 2n checks even when nothing is usable.
            (0..len.min(n))
                .map(|k| g.ring[(start + k) % len] as usize)
                .find(|&i| self.try_member(g, i, at, avoid))
                .or_else(|| (0..n).find(|&i| self.try_member(g, i, at, avoid)))
        };
        let avoided = |i: usize| avoid.is_some_and(|a| std::ptr::eq(a, &*g.members[i].state));
        match self.settings.algorithm {
            Algorithm::RoundRobin => round_robin(g),
            Algorithm::ConsistentHashing => {
                let Some(h) = key.hash else {
                    return round_robin(g);
                };
                let len = g.points.len();
                let start = g.points.partition_point(|(p, _)| *p < h);
                // The next points on the ring, then (bounded, when most
                // targets are out) each member from one the key chose.
                (0..len.min(8 * n))
                    .map(|k| g.points[(start + k) % len].1 as usize)
                    .find(|&i| self.try_member(g, i, at, avoid))
                    .or_else(|| {
                        (0..n)
                            .map(|k| (h as usize).wrapping_add(k) % n)
                            .find(|&i| self.try_member(g, i, at, avoid))
                    })
            }
            Algorithm::LeastConnections if n <= 64 => {
                let offset = g.next.fetch_add(1, Ordering::Relaxed);
                let best = (0..n)
                    .map(|k| (offset + k) % n)
                    .filter(|&i| !avoided(i) && self.usable(&g.members[i].state, at, false))
                    .min_by_key(|&i| self.score(&g.members[i]));
                match best {
                    Some(i) if self.try_member(g, i, at, avoid) => Some(i),
                    _ => round_robin(g),
                }
            }
            Algorithm::LeastConnections | Algorithm::P2c | Algorithm::Latency => {
                if n == 1 {
                    return round_robin(g);
                }
                let len = g.ring.len();
                let a = g.ring[fastrand::usize(..len)] as usize;
                let mut b = g.ring[fastrand::usize(..len)] as usize;
                if a == b {
                    b = (a + 1 + fastrand::usize(..n - 1)) % n;
                }
                let ok = |i: usize| !avoided(i) && self.usable(&g.members[i].state, at, false);
                let pick = match (ok(a), ok(b)) {
                    (true, true) => {
                        if self.score(&g.members[b]) < self.score(&g.members[a]) {
                            Some(b)
                        } else {
                            Some(a)
                        }
                    }
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    (false, false) => None,
                };
                match pick {
                    Some(i) if self.try_member(g, i, at, avoid) => Some(i),
                    _ => round_robin(g),
                }
            }
        }
    }

    /// A target for a request now, never `avoid` (the one that just
    /// failed).
    pub fn try_pick(
        self: &Arc<Self>,
        key: &Key,
        avoid: Option<&TargetState>,
    ) -> Result<Pick, NoPeer> {
        let targets = self.targets.load();
        if targets.groups.is_empty() {
            return Err(NoPeer::NoTargets);
        }
        let now = now_ms();
        // Envoy's panic mode: when every target's circuit is open, spread
        // requests over them rather than refuse all (health checks and
        // connection limits still apply).
        for panic in [false, true] {
            let at = At { now, panic };
            for g in &targets.groups {
                if let Some(i) = self.choose(g, key, at, avoid) {
                    let state = g.members[i].state.clone();
                    let probe = !panic
                        && state.open_until.load(Ordering::Relaxed) != 0
                        && state.probing.load(Ordering::Relaxed);
                    return Ok(Pick {
                        target: state,
                        upstream: self.clone(),
                        started: (self.settings.algorithm == Algorithm::Latency).then(Instant::now),
                        probe,
                        reported: false,
                    });
                }
            }
        }
        let max = self.settings.max_connections;
        let busy = max > 0
            && targets.groups.iter().any(|g| {
                g.members
                    .iter()
                    .any(|m| m.state.in_flight() >= max && m.state.is_healthy())
            });
        Err(if busy {
            NoPeer::Busy
        } else {
            NoPeer::Unavailable
        })
    }

    /// As `try_pick`, but waits up to `max_connections_timeout` for a
    /// target under its connection limit.
    pub async fn pick(
        self: &Arc<Self>,
        key: &Key,
        avoid: Option<&TargetState>,
    ) -> Result<Pick, NoPeer> {
        let mut result = self.try_pick(key, avoid);
        if result.as_ref().err() != Some(&NoPeer::Busy) {
            return result;
        }
        let deadline = tokio::time::Instant::now() + self.settings.max_connections_timeout;
        while result.as_ref().err() == Some(&NoPeer::Busy) {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            result = self.try_pick(key, avoid);
            if result.is_ok() {
                break;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return self.try_pick(key, avoid);
            }
            result = self.try_pick(key, avoid);
        }
        result
    }

    /// Starts this upstream's background work (active health checks, DNS
    /// refresh) once; it ends when the upstream is dropped.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if self.settings.active.is_some() {
            tokio::spawn(health::run_active(Arc::downgrade(self)));
        }
        if self.specs.iter().any(|s| s.source == Source::Dns) {
            tokio::spawn(dns::run(Arc::downgrade(self)));
        }
    }

    /// Sets the health of the targets at `addr` by hand; how many there
    /// were.
    pub fn set_health_by_hand(&self, addr: &str, healthy: bool) -> usize {
        let targets = self.targets.load();
        let mut n = 0;
        for m in targets.groups.iter().flat_map(|g| g.members.iter()) {
            if &*m.state.addr == addr {
                m.state.set_by_hand(healthy);
                n += 1;
            }
        }
        n
    }

    /// Kong's `/upstreams/{u}/health` shape for this upstream's targets.
    pub fn health(&self) -> serde_json::Value {
        let now = now_ms();
        let targets = self.targets.load();
        let data: Vec<serde_json::Value> = targets
            .groups
            .iter()
            .flat_map(|g| g.members.iter())
            .map(|m| {
                let t = &m.state;
                let health = if t.held.load(Ordering::Relaxed) {
                    "UNHEALTHY"
                } else if self.settings.active.is_none()
                    && self.settings.passive.http_failures == 0
                    && self.settings.passive.tcp_failures == 0
                    && self.settings.passive.timeouts == 0
                {
                    "HEALTHCHECKS_OFF"
                } else if self.usable(t, At { now, panic: false }, false) || t.is_healthy() {
                    "HEALTHY"
                } else {
                    "UNHEALTHY"
                };
                let open = t.open_until.load(Ordering::Relaxed);
                serde_json::json!({
                    "target": &*t.addr,
                    "weight": m.weight,
                    "health": health,
                    "data": {
                        "in_flight": t.in_flight(),
                        "circuit": if open == 0 { "closed" } else if now < open { "open" } else { "half-open" },
                    },
                })
            })
            .collect();
        serde_json::json!({
            "data": data,
            "next": null,
            "node_id": null,
        })
    }
}

fn static_of(s: &Spec) -> Resolved {
    let addr = if s.host.contains(':') && !s.host.starts_with('[') {
        format!("[{}]:{}", s.host, s.port)
    } else {
        format!("{}:{}", s.host, s.port)
    };
    Resolved {
        addr,
        weight: s.weight,
        rank: 0,
    }
}

/// One request's target: releases its in-flight slot when dropped, and
/// takes the outcome for passive health checks, the circuit breaker and
/// the latency average.
#[derive(Debug)]
pub struct Pick {
    pub target: Arc<TargetState>,
    upstream: Arc<Upstream>,
    /// When it was sent (for `latency` only).
    started: Option<Instant>,
    probe: bool,
    reported: bool,
}

impl Pick {
    pub fn addr(&self) -> &Arc<str> {
        &self.target.addr
    }

    /// Records how the target answered (once; later calls are ignored).
    pub fn report(&mut self, outcome: Outcome) {
        if self.reported {
            return;
        }
        self.reported = true;
        let t = &self.target;
        let s = &self.upstream.settings;
        if let (Outcome::Status(_), Some(started)) = (outcome, self.started) {
            let us = started.elapsed().as_micros() as u64;
            let old = t.ewma_us.load(Ordering::Relaxed);
            let new = if old == 0 { us } else { (old * 7 + us) / 8 };
            t.ewma_us.store(new.max(1), Ordering::Relaxed);
        }
        t.record(outcome, &s.passive, "passive check");
        // The circuit counts transport failures; statuses are the passive
        // checks' business.
        let failed = matches!(outcome, Outcome::TcpFailure | Outcome::Timeout);
        if failed {
            let n = t.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if self.probe || (s.circuit_failures > 0 && n >= s.circuit_failures) {
                let until = now_ms() + s.circuit_open.as_millis() as u64;
                if t.open_until.swap(until, Ordering::Relaxed) == 0 {
                    tracing::warn!(target = %t.addr, failures = n, "circuit opened");
                }
                t.probing.store(false, Ordering::Relaxed);
            }
        } else if t.consecutive_failures.load(Ordering::Relaxed) != 0
            || t.open_until.load(Ordering::Relaxed) != 0
        {
            t.consecutive_failures.store(0, Ordering::Relaxed);
            if t.open_until.swap(0, Ordering::Relaxed) != 0 {
                tracing::info!(target = %t.addr, "circuit closed");
            }
            t.probing.store(false, Ordering::Relaxed);
        }
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.target.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.probe && !self.reported {
            self.target.probing.store(false, Ordering::Relaxed);
        }
        if self.upstream.settings.max_connections > 0 {
            self.upstream.released.notify_one();
        }
    }
}

/// A response body that keeps its request's [`Pick`] (counted in flight)
/// until the body ends or is dropped.
pub struct Tracked {
    body: crate::upstream::PooledBody,
    pick: Option<Pick>,
}

impl Tracked {
    pub fn new(body: crate::upstream::PooledBody, pick: Option<Pick>) -> Self {
        Self { body, pick }
    }
}

impl From<hyper::body::Incoming> for Tracked {
    fn from(body: hyper::body::Incoming) -> Self {
        Self {
            body: crate::upstream::PooledBody::unpooled(body),
            pick: None,
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if let std::task::Poll::Ready(None | Some(Err(_))) = r {
            this.pick = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Bronze's retry budget: per 1-second bucket over the last 10, counts
/// requests and retries; a retry is allowed while retries stay under
/// `percent` % of requests plus `min_per_second` per second.
#[derive(Debug)]
pub struct RetryBudget {
    percent: f64,
    min_per_second: u32,
    /// (second, requests, retries) per slot of a 10-slot ring.
    slots: [AtomicU64; 10],
    retries: [AtomicU32; 10],
}

impl RetryBudget {
    pub fn new(percent: f64, min_per_second: u32) -> Self {
        Self {
            percent,
            min_per_second,
            slots: Default::default(),
            retries: Default::default(),
        }
    }

    /// The slot for the current second, reset when it is reused.
    fn slot(&self) -> usize {
        // Stamps start at 1: 0 marks a slot never used.
        let sec = (now_ms() / 1000 + 1) & 0xffff_ffff;
        let i = (sec % 10) as usize;
        let v = self.slots[i].load(Ordering::Relaxed);
        if v >> 32 != sec {
            // A new second: (second << 32) | requests.
            if self.slots[i]
                .compare_exchange(v, sec << 32, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.retries[i].store(0, Ordering::Relaxed);
            }
        }
        i
    }

    /// Counts a request.
    pub fn request(&self) {
        let i = self.slot();
        self.slots[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether one more retry fits; counts it when it does.
    pub fn try_retry(&self) -> bool {
        let i = self.slot();
        let sec = (now_ms() / 1000 + 1) & 0xffff_ffff;
        let (mut requests, mut retries, mut seconds) = (0u64, 0u64, 0u64);
        for k in 0..10 {
            let v = self.slots[k].load(Ordering::Relaxed);
            if v >> 32 != 0 && (v >> 32) + 10 > sec {
                requests += v & 0xffff_ffff;
                retries += u64::from(self.retries[k].load(Ordering::Relaxed));
                seconds += 1;
            }
        }
        let allowed = (requests as f64 * self.percent / 100.0) as u64
            + u64::from(self.min_per_second) * seconds.max(1);
        if retries >= allowed {
            return false;
        }
        self.retries[i].fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(settings: Settings, targets: &[(&str, u32)]) -> Arc<Upstream> {
        let specs = targets
            .iter()
            .map(|(a, w)| {
                let (h, p) = a.rsplit_once(':').expect("host:port");
                Spec {
                    host: h.into(),
                    port: p.parse().expect("port"),
                    weight: *w,
                    source: Source::Static,
                }
            })
            .collect();
        Upstream::new("u".into(), settings, specs, &Arc::new(Registry::default()))
    }

    fn hashing() -> Settings {
        Settings {
            algorithm: Algorithm::ConsistentHashing,
            hash_on: HashOn::Header(http::HeaderName::from_static("x-user")),
            ..Settings::default()
        }
    }

    fn owner(u: &Arc<Upstream>, user: &str) -> String {
        let mut h = HeaderMap::new();
        h.insert("x-user", user.parse().expect("value"));
        let key = u.key(&RequestInfo {
            headers: &h,
            peer: IpAddr::from([127, 0, 0, 1]),
            path: "/",
            query: None,
            consumer: None,
            captures: None,
        });
        u.try_pick(&key, None).expect("pick").addr().to_string()
    }

    #[test]
    fn consistent_hashing_moves_only_the_keys_a_new_target_takes() {
        let three = upstream(
            hashing(),
            &[
                ("10.0.0.1:80", 100),
                ("10.0.0.2:80", 100),
                ("10.0.0.3:80", 100),
            ],
        );
        let four = upstream(
            hashing(),
            &[
                ("10.0.0.1:80", 100),
                ("10.0.0.2:80", 100),
                ("10.0.0.3:80", 100),
                ("10.0.0.4:80", 100),
            ],
        );
        let (mut moved, mut per) = (0, HashMap::<String, usize>::new());
        for k in 0..4000 {
            let user = format!("user-{k}");
            let (a, b) = (owner(&three, &user), owner(&four, &user));
            *per.entry(b.clone()).or_default() += 1;
            if a != b {
                moved += 1;
                assert_eq!(b, "10.0.0.4:80", "a moved key goes to the new target");
            }
        }
        // About a quarter moves (all to the new target); none reshuffles.
        assert!((700..1300).contains(&moved), "{moved} of 4000 moved");
        for (t, n) in per {
            assert!((600..1400).contains(&n), "{t} has {n} of 4000");
        }
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        let u = upstream(
            Settings::default(),
            &[("10.0.0.1:80", 300), ("10.0.0.2:80", 100)],
        );
        let picks: Vec<String> = (0..8)
            .map(|_| {
                u.try_pick(&Key::default(), None)
                    .expect("pick")
                    .addr()
                    .to_string()
            })
            .collect();
        assert_eq!(picks.iter().filter(|p| *p == "10.0.0.2:80").count(), 2);
        // No two picks of the lighter target in a row.
        assert!(
            !picks
                .windows(2)
                .any(|w| w[0] == "10.0.0.2:80" && w[1] == w[0])
        );
    }

    #[test]
    fn passive_failures_take_a_target_out_and_the_health_report_says_so() {
        let passive = config::Passive {
            unhealthy: Some(config::PassiveUnhealthy {
                tcp_failures: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        };
        let settings = config::compile(
            &crate::declarative::Upstream {
                name: "u".into(),
                healthchecks: Some(config::Healthchecks {
                    passive: Some(passive),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "upstreams[0]",
        )
        .expect("valid");
        let u = upstream(settings, &[("10.0.0.1:80", 100), ("10.0.0.2:80", 100)]);
        for _ in 0..2 {
            let mut p = u
                .try_pick(
                    &Key::default(),
                    Some(&u.targets().groups[0].members[1].state),
                )
                .expect("pick");
            assert_eq!(&**p.addr(), "10.0.0.1:80");
            p.report(Outcome::TcpFailure);
        }
        // Out: every pick goes to the other target, and the report says so.
        for _ in 0..4 {
            let p = u.try_pick(&Key::default(), None).expect("pick");
            assert_eq!(&**p.addr(), "10.0.0.2:80");
        }
        let health = u.health();
        assert_eq!(health["data"][0]["target"], "10.0.0.1:80");
        assert_eq!(health["data"][0]["health"], "UNHEALTHY");
        assert_eq!(health["data"][1]["health"], "HEALTHY");
        assert_eq!(health["data"][1]["weight"], 100);
        // Nothing usable but an unhealthy target: no peer.
        let other = u.targets().groups[0].members[1].state.clone();
        assert_eq!(
            u.try_pick(&Key::default(), Some(&other)).err(),
            Some(NoPeer::Unavailable)
        );
    }

    #[test]
    fn without_active_checks_a_passively_ejected_target_returns_after_the_cool_down() {
        let mut settings = Settings {
            passive_cooldown: Duration::from_millis(200),
            ..Settings::default()
        };
        settings.passive.tcp_failures = 1;
        let u = upstream(settings, &[("10.0.0.1:80", 100), ("10.0.0.2:80", 100)]);
        let first = u.targets().groups[0].members[0].state.clone();
        let second = u.targets().groups[0].members[1].state.clone();
        u.try_pick(&Key::default(), Some(&second))
            .expect("pick")
            .report(Outcome::TcpFailure);
        assert!(!first.is_healthy());
        assert_eq!(
            u.try_pick(&Key::default(), Some(&second)).err(),
            Some(NoPeer::Unavailable)
        );
        std::thread::sleep(Duration::from_millis(250));
        let p = u.try_pick(&Key::default(), Some(&second)).expect("back");
        assert_eq!(p.addr(), &first.addr);
        assert!(first.is_healthy());
    }

    #[test]
    fn in_flight_counts_are_released_by_dropping_the_pick() {
        let u = upstream(
            Settings {
                algorithm: Algorithm::LeastConnections,
                ..Settings::default()
            },
            &[("10.0.0.1:80", 100), ("10.0.0.2:80", 100)],
        );
        let held = u.try_pick(&Key::default(), None).expect("pick");
        // The busy target is avoided while its pick lives...
        for _ in 0..5 {
            let p = u.try_pick(&Key::default(), None).expect("pick");
            assert_ne!(p.addr(), held.addr());
        }
        assert_eq!(held.target.in_flight(), 1);
        let target = held.target.clone();
        drop(held);
        assert_eq!(target.in_flight(), 0);
    }

    #[test]
    fn retry_budget_caps_retries() {
        let b = RetryBudget::new(20.0, 0);
        for _ in 0..100 {
            b.request();
        }
        let allowed = (0..100).filter(|_| b.try_retry()).count();
        assert_eq!(allowed, 20);
        let b = RetryBudget::new(0.0, 3);
        assert_eq!((0..10).filter(|_| b.try_retry()).count(), 3);
    }
}
