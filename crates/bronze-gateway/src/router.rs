//! The routing table: compiled from a declarative configuration, swapped
//! whole (never edited in place), matched per request without locks.
//!
//! Every (route, path) pair is one entry. Entries are ordered once, at
//! build time, by this deterministic priority; the first entry that matches
//! wins:
//!
//! 1. host: an exact host before a wildcard host (`*.example.com`,
//!    `api.example.*`) before a route with no hosts;
//! 2. path: regex paths (`~/users/\d+$`) first, higher `regex_priority`
//!    first; then prefixes, longest first; then routes with no paths;
//! 3. routes with `snis` before routes without; routes with methods
//!    before routes without; more header conditions before fewer;
//! 4. the order of the configuration.
//!
//! Lookup goes straight to the entries of the request's exact host (a hash
//! map), then the wildcard entries, then the host-less ones, so a table of
//! 10,000 routes costs one hash lookup and a short scan.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

use crate::balancer::{self, Registry, RetryBudget, Spec, Upstream};
use crate::declarative::{Declarative, Invalid};

/// Where a service's requests go.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    /// Its upstream (declared, or one made of its host and port).
    pub upstream: Arc<Upstream>,
    /// Bronze's retry budget for this service.
    pub budget: RetryBudget,
    /// Prepended to the forwarded path (`/` when none).
    pub path: String,
    /// HTTP/2 to the targets (Kong's `grpc` and `grpcs` protocols): with
    /// prior knowledge, or by ALPN over TLS.
    pub http2: bool,
    /// TLS to the targets (`https`, `grpcs`): the name they are checked
    /// against and sent as SNI, and whether they are verified.
    pub tls: Option<crate::upstream::UpstreamTls>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Further attempts for an idempotent request without a body whose
    /// target failed (Kong's `retries`, default 5).
    pub retries: u32,
}

impl Service {
    /// How many different targets the upstream has now.
    pub fn distinct_targets(&self) -> usize {
        self.upstream.distinct_targets()
    }

    /// Kong's connect and write timeouts, for `balancer::connect::scope`.
    pub fn timeouts(&self) -> balancer::connect::Timeouts {
        balancer::connect::Timeouts {
            connect: self.connect_timeout,
            write: self.write_timeout,
        }
    }
}

#[derive(Debug, Clone)]
enum HostMatch {
    Exact(String),
    /// `*.example.com`: the suffix `.example.com`.
    Suffix(String),
    /// `api.example.*`: the prefix `api.example.`.
    Prefix(String),
    Any,
}

#[derive(Debug, Clone)]
enum PathMatch {
    Regex(Regex, i64),
    Prefix(String),
    Any,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub service: Arc<Service>,
    /// Filled on first use by the proxy (the table knows no metrics).
    pub counters: std::sync::OnceLock<crate::metrics::RouteCounters>,
    pub strip_path: bool,
    pub preserve_host: bool,
    /// `protocols` has https and not http: plain HTTP gets
    /// `https_redirect` (426, or a redirect to https).
    pub https_only: bool,
    pub https_redirect: http::StatusCode,
    /// Its plugins, compiled (empty: none).
    pub plugins: crate::plugins::Chain,
}

/// An entry's sort key, smallest first: host class, path class, regex
/// priority (negated), prefix length (inverted), no methods, header count
/// (inverted), configuration order.
type Priority = (u8, u8, i64, usize, u8, u8, usize, usize);

#[derive(Debug)]
struct Entry {
    route: Arc<Route>,
    host: HostMatch,
    path: PathMatch,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, Vec<String>)>,
    /// Kong's route `snis`: the TLS server names it answers (any, when
    /// empty).
    snis: Arc<[crate::tls::Name]>,
}

/// A matched request: its route and how many leading bytes of the path the
/// route's path matched (stripped when `strip_path`).
pub struct Matched<'a> {
    pub route: &'a Arc<Route>,
    pub matched_len: usize,
    /// The regex of the path that matched, if it was one.
    pub regex: Option<&'a Regex>,
}

/// Request headers as the router reads them: hyper's `HeaderMap`, or the
/// HTTP/1.1 path's parsed head.
pub trait HeaderLookup {
    /// Whether some value of the header `name` satisfies `f`.
    fn any_value(&self, name: &HeaderName, f: &mut dyn FnMut(&[u8]) -> bool) -> bool;
}

impl HeaderLookup for HeaderMap {
    fn any_value(&self, name: &HeaderName, f: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.get_all(name).iter().any(|v| f(v.as_bytes()))
    }
}

impl HeaderLookup for [httparse::Header<'_>] {
    fn any_value(&self, name: &HeaderName, f: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.iter()
            .any(|h| h.name.eq_ignore_ascii_case(name.as_str()) && f(h.value))
    }
}

#[derive(Debug, Default)]
pub struct Table {
    entries: Vec<Entry>,
    exact: HashMap<String, Vec<u32>>,
    wildcard: Vec<u32>,
    any_host: Vec<u32>,
    pub services: Vec<Arc<Service>>,
    pub routes: usize,
    /// TLS certificates by SNI, compiled with (and swapped with) the routes.
    pub certificates: Arc<crate::tls::Certificates>,
    /// Declared upstreams by name.
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// Per-target state shared with the tables before and after this one.
    pub registry: Arc<Registry>,
    /// Global plugins, for requests no route matched.
    pub unmatched: crate::plugins::Chain,
    /// Every plugin instance (shutdown flushes the loggers among them).
    pub plugins: crate::plugins::Instances,
}

fn host_match(h: &str, field: &str) -> Result<HostMatch, Invalid> {
    let h = h.to_ascii_lowercase();
    let valid = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    let m = if let Some(rest) = h.strip_prefix("*.") {
        valid(rest).then(|| HostMatch::Suffix(format!(".{rest}")))
    } else if let Some(rest) = h.strip_suffix(".*") {
        valid(rest).then(|| HostMatch::Prefix(format!("{rest}.")))
    } else {
        let name = h.split_once(':').map_or(h.as_str(), |(n, _)| n);
        valid(name).then(|| HostMatch::Exact(name.to_string()))
    };
    m.ok_or_else(|| {
        Invalid::new(
            field,
            format!("{h:?}: expected a host name, *.<domain> or <name>.*"),
        )
    })
}

fn path_match(p: &str, regex_priority: i64, field: &str) -> Result<PathMatch, Invalid> {
    if let Some(re) = p.strip_prefix('~') {
        if !re.starts_with('/') && !re.starts_with("^/") {
            return Err(Invalid::new(
                field,
                format!("{p:?}: a regex path must start with ~/"),
            ));
        }
        let anchored = if re.starts_with('^') {
            re.to_string()
        } else {
            format!("^{re}")
        };
        let compiled = regex::RegexBuilder::new(&anchored)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| Invalid::new(field, format!("{p:?}: invalid regex: {e}")))?;
        return Ok(PathMatch::Regex(compiled, regex_priority));
    }
    if !p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Invalid::new(
            field,
            format!("{p:?}: expected a path prefix starting with / (or a regex, ~/...)"),
        ));
    }
    Ok(PathMatch::Prefix(p.to_string()))
}

fn target_authority(t: &str, field: &str) -> Result<(String, u16), Invalid> {
    let bad = || Invalid::new(field, format!("{t:?}: expected <host>:<port>"));
    let (host, port) = t.rsplit_once(':').ok_or_else(bad)?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(bad)?;
    if host.is_empty() || host.contains('/') {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// A service's upstream protocol (Kong's names): HTTP/2, TLS.
fn upstream_protocol(p: &str, field: &str) -> Result<(bool, bool), Invalid> {
    match p {
        "http" => Ok((false, false)),
        "https" => Ok((false, true)),
        "grpc" => Ok((true, false)),
        "grpcs" => Ok((true, true)),
        other => Err(Invalid::new(
            field,
            format!("{other:?}: expected http, https, grpc or grpcs"),
        )),
    }
}

/// Kong's name of an upstream protocol: (HTTP/2, TLS).
pub(crate) fn protocol_name(protocol: (bool, bool)) -> &'static str {
    match protocol {
        (false, false) => "http",
        (false, true) => "https",
        (true, false) => "grpc",
        (true, true) => "grpcs",
    }
}

/// The port of a service that names none: 443 over TLS (`https`,
/// `grpcs`), else 80. (Kong's schema defaults `port` to 80 whatever the
/// protocol; Bronze connects where the protocol's port is.)
pub(crate) fn default_port(tls: bool) -> u16 {
    if tls { 443 } else { 80 }
}

/// A service's `url` (Kong's shorthand), as the fields it stands for.
#[derive(Debug, PartialEq)]
pub(crate) struct ServiceUrl {
    pub host: String,
    pub port: u16,
    /// None for `http://host` (Kong: null), `/` for `http://host/`.
    pub path: Option<String>,
    /// (HTTP/2, TLS).
    pub protocol: (bool, bool),
}

/// `http://host[:port][/path]` (or `https://`, `grpc://`, `grpcs://`) of a
/// service's `url`: host, port ([`default_port`] when none), path,
/// protocol.
pub(crate) fn service_url(url: &str, field: &str) -> Result<ServiceUrl, Invalid> {
    let bad = |why: &str| Invalid::new(field, format!("{url:?}: {why}"));
    let uri: http::Uri = url
        .parse()
        .map_err(|_| bad("expected http://host[:port][/path]"))?;
    let protocol = upstream_protocol(uri.scheme_str().unwrap_or(""), field)?;
    let host = uri.host().ok_or_else(|| bad("no host"))?.to_string();
    let port = uri.port_u16().unwrap_or(default_port(protocol.1));
    // `http::Uri` reads `http://x` and `http://x/` alike; Kong does not.
    let written = url.split_once("://").is_some_and(|(_, rest)| {
        rest.split(['?', '#'])
            .next()
            .is_some_and(|r| r.contains('/'))
    });
    Ok(ServiceUrl {
        host,
        port,
        path: written.then(|| uri.path().to_string()),
        protocol,
    })
}

impl Table {
    /// Compiles a declarative configuration; errors name the field.
    pub fn build(d: &Declarative) -> Result<Self, Invalid> {
        Self::build_with(d, &Arc::new(Registry::default()))
    }

    /// As `build`, keeping the state of targets `registry` already knows.
    /// In steps: the plugins, the declared upstreams
    /// ([`compile_upstream`]), then each enabled service
    /// ([`compile_service`]) with its routes ([`compile_route`]), each
    /// route giving one entry per host and path ([`Rules::entries`]);
    /// last, the entries in priority order and indexed by host
    /// ([`Table::index`]).
    pub fn build_with(d: &Declarative, registry: &Arc<Registry>) -> Result<Self, Invalid> {
        let plugins = crate::plugins::Compiled::build(d, &registry.plugins)?;
        let mut upstreams: HashMap<&str, Arc<Upstream>> = HashMap::new();
        for (i, u) in d.upstreams.iter().enumerate() {
            let upstream = compile_upstream(d, i, u, registry)?;
            if upstreams.insert(u.name.as_str(), upstream).is_some() {
                return Err(Invalid::new(
                    format!("upstreams[{i}].name"),
                    format!("{:?} appears twice", u.name),
                ));
            }
        }
        let mut table = Table {
            registry: registry.clone(),
            unmatched: plugins.global("", ""),
            plugins: plugins.all(),
            ..Table::default()
        };
        let mut names = std::collections::HashSet::new();
        let mut keyed: Vec<(Priority, Entry)> = Vec::new();
        for (i, s) in d.services.iter().enumerate() {
            if !names.insert(s.name.clone()) {
                return Err(Invalid::new(
                    format!("services[{i}].name"),
                    format!("{:?} appears twice", s.name),
                ));
            }
            let service = compile_service(d, i, s, &upstreams, registry)?;
            if s.enabled == Some(false) {
                continue;
            }
            table.services.push(service.clone());
            for (j, r) in s.routes.iter().enumerate() {
                let (route, rules) = compile_route(i, j, r, &service, &plugins)?;
                table.routes += 1;
                rules.entries(&route, &mut keyed);
            }
        }
        table.upstreams = upstreams
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        table.index(keyed);
        Ok(table)
    }

    /// Puts `keyed` in priority order and indexes each entry by its host:
    /// exact hosts in the hash map, wildcards and host-less routes apart.
    fn index(&mut self, mut keyed: Vec<(Priority, Entry)>) {
        keyed.sort_by_key(|(k, _)| *k);
        for (i, (_, e)) in keyed.into_iter().enumerate() {
            let i = i as u32;
            match &e.host {
                HostMatch::Exact(h) => self.exact.entry(h.clone()).or_default().push(i),
                HostMatch::Suffix(_) | HostMatch::Prefix(_) => self.wildcard.push(i),
                HostMatch::Any => self.any_host.push(i),
            }
            self.entries.push(e);
        }
    }

    /// Starts the background work of its upstreams (active health checks,
    /// DNS refresh); it stops when this table is dropped.
    pub fn start(&self) {
        for u in self.upstreams.values() {
            u.start();
        }
        for s in &self.services {
            s.upstream.start();
        }
    }

    /// Every upstream in use (declared, or made for a service's host).
    pub fn all_upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.upstreams
            .values()
            .chain(self.services.iter().map(|s| &s.upstream))
    }

    /// Kong's `GET /upstreams/{name}/health` body for a declared upstream:
    /// each target with its weight and `HEALTHY`, `UNHEALTHY` or
    /// `HEALTHCHECKS_OFF`.
    pub fn upstream_health(&self, name: &str) -> Option<serde_json::Value> {
        self.upstreams.get(name).map(|u| u.health())
    }

    /// A declared upstream by name.
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(name)
    }

    /// The route for a request, if any; `sni` is the server name of its
    /// TLS connection.
    pub fn find<H: HeaderLookup + ?Sized>(
        &self,
        method: &Method,
        host: &str,
        path: &str,
        headers: &H,
        sni: Option<&str>,
    ) -> Option<Matched<'_>> {
        let host = host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let exact = self.exact.get(host).map(Vec::as_slice).unwrap_or_default();
        for &i in exact.iter().chain(&self.wildcard).chain(&self.any_host) {
            let e = &self.entries[i as usize];
            let host_ok = match &e.host {
                HostMatch::Exact(_) | HostMatch::Any => true,
                HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
                HostMatch::Prefix(p) => host.len() > p.len() && host.starts_with(p.as_str()),
            };
            if !host_ok || (!e.methods.is_empty() && !e.methods.contains(method)) {
                continue;
            }
            if !e.snis.is_empty() && !sni.is_some_and(|n| e.snis.iter().any(|s| s.matches(n))) {
                continue;
            }
            let headers_ok = e.headers.iter().all(|(name, values)| {
                headers.any_value(name, &mut |v| {
                    values
                        .iter()
                        .any(|want| want.as_bytes().eq_ignore_ascii_case(v))
                })
            });
            if !headers_ok {
                continue;
            }
            let matched_len = match &e.path {
                PathMatch::Any => Some(0),
                PathMatch::Prefix(p) => path.starts_with(p.as_str()).then_some(p.len()),
                PathMatch::Regex(r, _) => r.find(path).map(|m| m.end()),
            };
            if let Some(matched_len) = matched_len {
                return Some(Matched {
                    route: &e.route,
                    matched_len,
                    regex: match &e.path {
                        PathMatch::Regex(r, _) => Some(r),
                        _ => None,
                    },
                });
            }
        }
        None
    }
}

/// Declared upstream `i`: its balancing and health settings (with the
/// client certificate its https checks present) and its targets.
fn compile_upstream(
    d: &Declarative,
    i: usize,
    u: &crate::declarative::Upstream,
    registry: &Arc<Registry>,
) -> Result<Arc<Upstream>, Invalid> {
    let field = |f: &str| format!("upstreams[{i}].{f}");
    if u.name.is_empty() {
        return Err(Invalid::new(field("name"), "expected a name"));
    }
    let mut settings = balancer::config::compile(u, &format!("upstreams[{i}]"))?;
    if let Some(r) = &u.client_certificate {
        let (id, certified) = client_certificate(d, r, &field("client_certificate"))?;
        let checks = settings.active.as_mut().and_then(|a| match &mut a.kind {
            balancer::config::CheckKind::Http { tls }
            | balancer::config::CheckKind::Grpc { tls } => tls.as_mut(),
            balancer::config::CheckKind::Tcp => None,
        });
        if let Some(t) = checks {
            let own = crate::upstream::tls::Own::new(
                t.verify,
                &[],
                Some(certified),
                format!("client {id}"),
                registry.tls(),
            )
            .map_err(|(f, m)| Invalid::new(f, m))?;
            t.own = Some(Arc::new(own));
        }
    }
    let mut specs = Vec::new();
    for (j, t) in u.targets.iter().enumerate() {
        let (host, port) = target_authority(&t.target, &field(&format!("targets[{j}].target")))?;
        let weight = t.weight.unwrap_or(100);
        if weight > 65535 {
            return Err(Invalid::new(
                field(&format!("targets[{j}].weight")),
                "expected 0-65535",
            ));
        }
        specs.push(Spec {
            source: registry.source_of(&host),
            host,
            port,
            weight,
        });
    }
    Ok(Upstream::new(u.name.clone(), settings, specs, registry))
}

/// Service `i`: where its requests go (`url`, or protocol, host, port and
/// path), over TLS or not, through a declared upstream or one made of its
/// host and port; its timeouts, retries and retry budget.
fn compile_service(
    d: &Declarative,
    i: usize,
    s: &crate::declarative::Service,
    upstreams: &HashMap<&str, Arc<Upstream>>,
    registry: &Arc<Registry>,
) -> Result<Arc<Service>, Invalid> {
    let field = |f: &str| format!("services[{i}].{f}");
    if s.name.is_empty() {
        return Err(Invalid::new(field("name"), "expected a name"));
    }
    let (host, port, path, (http2, tls)) = match &s.url {
        Some(url) => {
            let u = service_url(url, &field("url"))?;
            (u.host, u.port, u.path.unwrap_or_default(), u.protocol)
        }
        None => {
            let protocol = match &s.protocol {
                Some(p) => upstream_protocol(p, &field("protocol"))?,
                None => (false, false),
            };
            let host = s
                .host
                .clone()
                .ok_or_else(|| Invalid::new(field("host"), "expected url, or host (and port)"))?;
            (
                host,
                s.port.unwrap_or(default_port(protocol.1)),
                s.path.clone().unwrap_or_default(),
                protocol,
            )
        }
    };
    let tls = if tls {
        let mut settings = crate::upstream::UpstreamTls::new(&host, s.tls_verify.unwrap_or(true))
            .map_err(|why| Invalid::new(field("host"), why))?;
        settings.own = own_tls(d, s, &host, settings.verify, registry.tls(), &field)?;
        Some(settings)
    } else {
        for (set, name) in [
            (s.client_certificate.is_some(), "client_certificate"),
            (!s.ca_certificates.is_empty(), "ca_certificates"),
        ] {
            if set {
                return Err(Invalid::new(
                    field(name),
                    format!("{name} can only be set when protocol is https or grpcs"),
                ));
            }
        }
        None
    };
    if s.tls_verify_depth.is_some() {
        return Err(Invalid::new(
            field("tls_verify_depth"),
            "not implemented in Bronze (rustls sets no depth): expected null",
        ));
    }
    let upstream = match upstreams.get(host.as_str()) {
        Some(u) => u.clone(),
        None => {
            let (host, port) = target_authority(&format!("{host}:{port}"), &field("host"))?;
            let spec = Spec {
                source: registry.source_of(&host),
                host: host.clone(),
                port,
                weight: 100,
            };
            Upstream::new(
                host,
                balancer::config::Settings::default(),
                vec![spec],
                registry,
            )
        }
    };
    let ms = |v: Option<u64>, f: &str, default: u64| -> Result<Duration, Invalid> {
        match v.unwrap_or(default) {
            0 => Err(Invalid::new(field(f), "expected at least 1 (milliseconds)")),
            n => Ok(Duration::from_millis(n)),
        }
    };
    let (percent, min_per_second) =
        balancer::config::retry_budget(s.retry_budget.as_ref(), &field("retry_budget"))?;
    Ok(Arc::new(Service {
        name: s.name.clone(),
        upstream,
        budget: RetryBudget::new(percent, min_per_second),
        retries: s.retries.unwrap_or(5),
        path: if path.is_empty() { "/".into() } else { path },
        http2,
        tls,
        connect_timeout: ms(s.connect_timeout, "connect_timeout", 60_000)?,
        read_timeout: ms(s.read_timeout, "read_timeout", 60_000)?,
        write_timeout: ms(s.write_timeout, "write_timeout", 60_000)?,
    }))
}

/// Each item of the list field `name` compiled by `f`, which is given the
/// item's own field (`name[k]`) for its errors.
fn each<T, U>(
    list: &[T],
    name: &str,
    mut f: impl FnMut(&T, String) -> Result<U, Invalid>,
) -> Result<Vec<U>, Invalid> {
    list.iter()
        .enumerate()
        .map(|(k, x)| f(x, format!("{name}[{k}]")))
        .collect()
}

/// What a route matches on, compiled: each of its hosts and paths, and the
/// methods, headers and server names every entry of it checks.
struct Rules {
    hosts: Vec<HostMatch>,
    paths: Vec<PathMatch>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, Vec<String>)>,
    snis: Arc<[crate::tls::Name]>,
}

impl Rules {
    /// One entry per host and path of `route`, keyed by its priority (the
    /// configuration order last: `keyed` holds the entries made so far).
    fn entries(self, route: &Arc<Route>, keyed: &mut Vec<(Priority, Entry)>) {
        for host in &self.hosts {
            for path in &self.paths {
                let host_rank = match host {
                    HostMatch::Exact(_) => 0,
                    HostMatch::Suffix(_) | HostMatch::Prefix(_) => 1,
                    HostMatch::Any => 2,
                };
                let (path_rank, regex_prio, prefix_len) = match path {
                    PathMatch::Regex(_, p) => (0u8, -*p, 0usize),
                    PathMatch::Prefix(p) => (1, 0, usize::MAX - p.len()),
                    PathMatch::Any => (2, 0, 0),
                };
                let key = (
                    host_rank,
                    path_rank,
                    regex_prio,
                    prefix_len,
                    u8::from(self.snis.is_empty()),
                    u8::from(self.methods.is_empty()),
                    usize::MAX - self.headers.len(),
                    keyed.len(),
                );
                let entry = Entry {
                    route: route.clone(),
                    host: host.clone(),
                    path: path.clone(),
                    methods: self.methods.clone(),
                    headers: self.headers.clone(),
                    snis: self.snis.clone(),
                };
                keyed.push((key, entry));
            }
        }
    }
}

/// Route `j` of service `i`: its settings and plugin chain, and what it
/// matches on; refused by field where Kong's rules (or Bronze's) say no.
fn compile_route(
    i: usize,
    j: usize,
    r: &crate::declarative::Route,
    service: &Arc<Service>,
    plugins: &crate::plugins::Compiled,
) -> Result<(Arc<Route>, Rules), Invalid> {
    let field = |f: &str| format!("services[{i}].routes[{j}].{f}");
    if r.name.is_empty() {
        return Err(Invalid::new(field("name"), "expected a name"));
    }
    if r.hosts.is_empty()
        && r.paths.is_empty()
        && r.methods.is_empty()
        && r.headers.is_empty()
        && r.snis.is_empty()
    {
        return Err(Invalid::new(
            field("paths"),
            "a route needs at least one of hosts, paths, methods, headers or snis",
        ));
    }
    if let Some(p) = r
        .protocols
        .iter()
        .find(|p| !matches!(p.as_str(), "http" | "https" | "grpc" | "grpcs"))
    {
        return Err(Invalid::new(
            field("protocols"),
            format!("{p:?}: expected http, https, grpc or grpcs"),
        ));
    }
    if let Some(h) = r.path_handling.as_deref().filter(|h| *h != "v0") {
        return Err(Invalid::new(
            field("path_handling"),
            format!("{h:?}: expected v0 (Bronze joins paths as Kong's v0)"),
        ));
    }
    let https_redirect = match r.https_redirect_status_code.unwrap_or(426) {
        c @ (426 | 301 | 302 | 307 | 308) => {
            http::StatusCode::from_u16(c).unwrap_or(http::StatusCode::UPGRADE_REQUIRED)
        }
        c => {
            return Err(Invalid::new(
                field("https_redirect_status_code"),
                format!("{c}: expected one of 426, 301, 302, 307, 308"),
            ));
        }
    };
    let route = Arc::new(Route {
        name: r.name.clone(),
        service: service.clone(),
        counters: std::sync::OnceLock::new(),
        strip_path: r.strip_path.unwrap_or(true),
        https_only: r.protocols.iter().any(|p| p == "https")
            && !r.protocols.iter().any(|p| p == "http"),
        https_redirect,
        preserve_host: r.preserve_host.unwrap_or(false),
        plugins: plugins.chain_for(i, j, &r.name, &service.name),
    });
    let methods = each(&r.methods, &field("methods"), |m, at| {
        Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| Invalid::new(at, format!("{m:?}: expected an HTTP method")))
    })?;
    // Kong's rule: SNIs only where TLS may be (http and grpc requests
    // carry none); no protocols is Kong's default, http and https.
    if !r.snis.is_empty()
        && !r.protocols.is_empty()
        && !r.protocols.iter().any(|p| p == "https" || p == "grpcs")
    {
        return Err(Invalid::new(
            field("snis"),
            "'snis' can only be set when 'protocols' is 'grpcs' or 'https'",
        ));
    }
    let snis = each(&r.snis, &field("snis"), |n, at| {
        crate::tls::sni_name(n).map_err(|why| Invalid::new(at, why))
    })?
    .into();
    let mut headers = Vec::new();
    for (name, values) in &r.headers {
        let h = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            Invalid::new(
                field("headers"),
                format!("{name:?}: expected a header name"),
            )
        })?;
        if h == http::header::HOST {
            return Err(Invalid::new(
                field("headers"),
                "use hosts to match the Host header",
            ));
        }
        headers.push((h, values.clone()));
    }
    let hosts = if r.hosts.is_empty() {
        vec![HostMatch::Any]
    } else {
        each(&r.hosts, &field("hosts"), |h, at| host_match(h, &at))?
    };
    let priority = r.regex_priority.unwrap_or(0);
    let paths = if r.paths.is_empty() {
        vec![PathMatch::Any]
    } else {
        each(&r.paths, &field("paths"), |p, at| {
            path_match(p, priority, &at)
        })?
    };
    Ok((
        route,
        Rules {
            hosts,
            paths,
            methods,
            headers,
            snis,
        },
    ))
}

/// The certificate `r` names (by id) among the document's, parsed; errors
/// name `field`, or the certificate's own fields.
fn client_certificate<'d>(
    d: &'d Declarative,
    r: &'d crate::declarative::Ref,
    field: &str,
) -> Result<(&'d str, rustls::sign::CertifiedKey), Invalid> {
    let id = r
        .key()
        .ok_or_else(|| Invalid::new(field, "expected a certificate's id"))?;
    let (i, c) = d
        .certificates
        .iter()
        .enumerate()
        .find(|(_, c)| c.id.as_deref() == Some(id))
        .ok_or_else(|| Invalid::new(field, format!("{id:?}: no certificate with this id")))?;
    let certified = crate::tls::certified(&crate::tls::provider(), &c.cert, &c.key)
        .map_err(|(which, m)| Invalid::new(format!("certificates[{i}].{which}"), m))?;
    Ok((id, certified))
}

/// A TLS service's own client settings: its `ca_certificates` (by id, the
/// only roots then) and `client_certificate` (a certificate by id; else
/// that of the upstream named as its host), or `None` when there are none. Errors name the service's field.
fn own_tls(
    d: &Declarative,
    s: &crate::declarative::Service,
    host: &str,
    verify: bool,
    defaults: Option<&crate::upstream::tls::Clients>,
    field: &dyn Fn(&str) -> String,
) -> Result<Option<Arc<crate::upstream::tls::Own>>, Invalid> {
    // The service's certificate, else its upstream's (Kong's order).
    let upstream = d
        .upstreams
        .iter()
        .enumerate()
        .find(|(_, u)| u.name == host)
        .and_then(|(i, u)| Some((i, u.client_certificate.as_ref()?)));
    if s.client_certificate.is_none() && upstream.is_none() && s.ca_certificates.is_empty() {
        return Ok(None);
    }
    let mut identity = String::new();
    let mut roots = Vec::new();
    for (k, id) in s.ca_certificates.iter().enumerate() {
        let f = field(&format!("ca_certificates[{k}]"));
        let (i, ca) = d
            .ca_certificates
            .iter()
            .enumerate()
            .find(|(_, c)| c.id.as_deref() == Some(id.as_str()))
            .ok_or_else(|| Invalid::new(&f, format!("{id:?}: no ca_certificates with this id")))?;
        identity.push_str(&format!("ca {id} "));
        roots.push((format!("ca_certificates[{i}].cert"), ca.cert.as_str()));
    }
    let named = match (&s.client_certificate, upstream) {
        (Some(r), _) => Some((r, field("client_certificate"))),
        (None, Some((i, r))) => Some((r, format!("upstreams[{i}].client_certificate"))),
        (None, None) => None,
    };
    let client = match named {
        None => None,
        Some((r, f)) => {
            let (id, certified) = client_certificate(d, r, &f)?;
            identity.push_str(&format!("client {id}"));
            Some(certified)
        }
    };
    crate::upstream::tls::Own::new(verify, &roots, client, identity, defaults)
        .map(|own| Some(Arc::new(own)))
        .map_err(|(f, m)| Invalid::new(f, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::declarative::parse;

    fn table(json: &str) -> Table {
        Table::build(&parse(json.as_bytes()).unwrap()).unwrap()
    }

    fn route_of(t: &Table, method: &str, host: &str, path: &str) -> Option<(String, usize)> {
        t.find(
            &Method::from_bytes(method.as_bytes()).unwrap(),
            host,
            path,
            &HeaderMap::new(),
            None,
        )
        .map(|m| (m.route.name.clone(), m.matched_len))
    }

    #[test]
    fn snis_choose_among_routes_by_the_tls_server_name() {
        let t = table(
            r#"{"_format_version": "3.0", "services": [{"name": "s", "url": "http://x", "routes": [
                {"name": "plain", "paths": ["/"]},
                {"name": "a", "paths": ["/"], "snis": ["a.example.com"]},
                {"name": "wild", "paths": ["/"], "snis": ["*.wild.example.com", "api.example.*"], "protocols": ["https"]}]}]}"#,
        );
        let find = |sni: Option<&str>| {
            t.find(&Method::GET, "any", "/x", &HeaderMap::new(), sni)
                .map(|m| m.route.name.clone())
        };
        // A route with snis comes first, but only for its names.
        assert_eq!(find(Some("a.example.com")).as_deref(), Some("a"));
        assert_eq!(find(Some("x.wild.example.com")).as_deref(), Some("wild"));
        assert_eq!(find(Some("api.example.org")).as_deref(), Some("wild"));
        assert_eq!(find(Some("x.y.wild.example.com")).as_deref(), Some("plain"));
        assert_eq!(find(Some("b.example.com")).as_deref(), Some("plain"));
        assert_eq!(find(None).as_deref(), Some("plain"));

        let refused = |route: &str| {
            Table::build(
                &parse(
                    format!(r#"{{"_format_version": "3.0", "services": [{{"name": "s", "url": "http://x", "routes": [{route}]}}]}}"#)
                        .as_bytes(),
                )
                .unwrap(),
            )
            .err()
            .map(|e| (e.field, e.message))
        };
        let (field, message) =
            refused(r#"{"name": "r", "snis": ["a.example.com"], "protocols": ["http"]}"#)
                .expect("refused");
        assert_eq!(field, "services[0].routes[0].snis");
        assert!(message.contains("https"), "{message}");
        let (field, _) =
            refused(r#"{"name": "r", "snis": ["a.example.com", "10.0.0.1"]}"#).expect("refused");
        assert_eq!(field, "services[0].routes[0].snis[1]");
        assert!(refused(r#"{"name": "r", "snis": ["a.example.com"]}"#).is_none());
    }

    #[test]
    fn priority_is_documented_and_deterministic() {
        let t = table(
            r#"{"_format_version": "3.0", "services": [{"name": "s", "url": "http://127.0.0.1:1",
              "routes": [
                {"name": "any-root", "paths": ["/"]},
                {"name": "api", "paths": ["/api"]},
                {"name": "api-users", "paths": ["/api/users"]},
                {"name": "api-users-get", "paths": ["/api/users"], "methods": ["GET"]},
                {"name": "user-by-id", "paths": ["~/api/users/\\d+$"]},
                {"name": "wild", "hosts": ["*.example.com"], "paths": ["/"]},
                {"name": "exact", "hosts": ["api.example.com"], "paths": ["/"]},
                {"name": "suffix-port", "hosts": ["shop.*"]}
              ]}]}"#,
        );
        assert_eq!(
            route_of(&t, "GET", "x", "/index.html"),
            Some(("any-root".into(), 1))
        );
        assert_eq!(
            route_of(&t, "GET", "x", "/api/orders"),
            Some(("api".into(), 4))
        );
        assert_eq!(
            route_of(&t, "POST", "x", "/api/users/x"),
            Some(("api-users".into(), 10))
        );
        assert_eq!(
            route_of(&t, "GET", "x", "/api/users/x"),
            Some(("api-users-get".into(), 10))
        );
        assert_eq!(
            route_of(&t, "GET", "x", "/api/users/42"),
            Some(("user-by-id".into(), 13))
        );
        assert_eq!(
            route_of(&t, "GET", "www.example.com", "/api"),
            Some(("wild".into(), 1))
        );
        assert_eq!(
            route_of(&t, "GET", "API.example.com:8000", "/api"),
            Some(("exact".into(), 1))
        );
        assert_eq!(
            route_of(&t, "GET", "shop.example.org", "/api"),
            Some(("suffix-port".into(), 0))
        );
        assert_eq!(
            route_of(&t, "GET", "example.com", "/api"),
            Some(("api".into(), 4))
        );
    }

    #[test]
    fn headers_and_no_match() {
        let t = table(
            r#"{"_format_version": "3.0", "services": [{"name": "s", "url": "http://127.0.0.1:1",
              "routes": [{"name": "v2", "paths": ["/x"], "headers": {"x-version": ["v2", "V3"]}}]}]}"#,
        );
        let mut h = HeaderMap::new();
        assert!(t.find(&Method::GET, "a", "/x", &h, None).is_none());
        h.insert("x-version", "v3".parse().unwrap());
        assert_eq!(
            t.find(&Method::GET, "a", "/x", &h, None)
                .unwrap()
                .route
                .name,
            "v2"
        );
        assert!(t.find(&Method::GET, "a", "/y", &h, None).is_none());
    }

    #[test]
    fn weights_spread_round_robin() {
        let t = table(
            r#"{"_format_version": "3.0",
               "upstreams": [{"name": "up", "targets": [{"target": "10.0.0.1:80", "weight": 300}, {"target": "10.0.0.2:80", "weight": 100}]}],
               "services": [{"name": "s", "host": "up", "routes": [{"name": "r", "paths": ["/"]}]}]}"#,
        );
        let s = &t.services[0];
        let picks: Vec<String> = (0..40)
            .map(|_| {
                let key = crate::balancer::Key::default();
                s.upstream.try_pick(&key, None).unwrap().addr().to_string()
            })
            .collect();
        assert_eq!(picks.iter().filter(|p| *p == "10.0.0.1:80").count(), 30);
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let err = |json: &str| Table::build(&parse(json.as_bytes()).unwrap()).unwrap_err();
        let e = err(
            r#"{"_format_version": "3.0", "services": [{"name": "s", "url": "http://a:1", "routes": [{"name": "r", "paths": ["~/(unclosed"]}]}]}"#,
        );
        assert_eq!(e.field, "services[0].routes[0].paths[0]");
        assert!(e.message.contains("invalid regex"), "{e}");
        let e =
            err(r#"{"_format_version": "3.0", "services": [{"name": "s", "url": "ftp://a:1"}]}"#);
        assert_eq!(e.field, "services[0].url");
        let e = err(
            r#"{"_format_version": "3.0", "services": [{"name": "s", "url": "http://a:1", "routes": [{"name": "r", "hosts": ["bad host"]}]}]}"#,
        );
        assert_eq!(e.field, "services[0].routes[0].hosts[0]");
        let e = err(
            r#"{"_format_version": "3.0", "services": [{"name": "s", "url": "http://a:1", "routes": [{"name": "r"}]}]}"#,
        );
        assert_eq!(e.field, "services[0].routes[0].paths");
        let e = err(
            r#"{"_format_version": "3.0", "upstreams": [{"name": "u", "targets": [{"target": "nope"}]}]}"#,
        );
        assert_eq!(e.field, "upstreams[0].targets[0].target");
    }
}
