//! gliderlabs/registrator's conventions: which ports of a container become
//! service instances, and how `SERVICE_*` environment variables and labels
//! name, tag and check them. Pure functions over [`ContainerInfo`], so
//! every rule is unit-tested without an engine.
//!
//! | key (env or label) | effect |
//! |---|---|
//! | `SERVICE_NAME`, `SERVICE_<port>_NAME` | service name (default: image base name, `-<port>` when several ports) |
//! | `SERVICE_ID`, `SERVICE_<port>_ID` | instance ID (default `<hostname>:<container>:<port>[:udp]`) |
//! | `SERVICE_TAGS` | comma-separated tags (plus `--tags`) |
//! | `SERVICE_IGNORE` | any value: do not register (the container, or one port) |
//! | `SERVICE_CHECK_HTTP` / `_HTTPS` | path probed on the instance's address; 2xx passing, 429 warning |
//! | `SERVICE_CHECK_TCP` | `true`: connect to the instance's address |
//! | `SERVICE_CHECK_TTL` | a TTL check the service refreshes itself (Consul's check pass API) |
//! | `SERVICE_CHECK_INTERVAL`, `_TIMEOUT` | probe interval (default 10s) and timeout (default 5s) |
//! | `SERVICE_CHECK_INITIAL_STATUS` | status before the first result (default critical) |
//! | `SERVICE_CHECK_DEREGISTER_AFTER` | remove the instance after this long critical |
//! | any other `SERVICE_<KEY>` | instance metadata `<key>` (lower case) |
//! | labels `bronze.*` | instance metadata, unchanged (gateway routing rules) |
//! | labels `traefik.*` | instance metadata (Traefik's routing labels, which the gateway reads); secrets (basic/digest auth users) replaced |
//! | label `bronze.network`, `traefik.docker.network` | with `--internal`: the network whose address is registered |
//! | label `bronze.stack` (a Bronze stack task) | instances also carry `bronze.container` and `bronze.container.port` |
//!
//! Labels override environment variables; `SERVICE_<port>_<KEY>` overrides
//! `SERVICE_<KEY>` for that port. A Docker HEALTHCHECK adds a check that is
//! passing only while the engine says the container is healthy.
//!
//! A container with `traefik.*` labels is one Traefik routes to: its
//! instances also carry `bronze.container` (the container's name) and
//! `bronze.container.port` (the container-side port, `53/udp` for UDP),
//! since Traefik's port labels (`traefik.port`,
//! `traefik.<segment>.port`, `traefik.http.services.S.loadbalancer.server.port`)
//! name container ports. With `--internal` those ports are registered even
//! when the image does not EXPOSE them (Swarm stacks routed by Traefik
//! rarely publish or expose anything); without it, a routed port that is not
//! published is warned about, since the gateway cannot reach it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        }
    }
}

/// The label a Bronze agent puts on a stack task's container.
pub const STACK_LABEL: &str = "bronze.stack";

/// A published port: container port -> host address and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub port: u16,
    pub proto: Proto,
    pub host_ip: String,
    pub host_port: u16,
}

/// Docker's view of a container's HEALTHCHECK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerHealth {
    Starting,
    Healthy,
    Unhealthy,
}

impl DockerHealth {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "starting" => Some(Self::Starting),
            "healthy" => Some(Self::Healthy),
            "unhealthy" => Some(Self::Unhealthy),
            _ => None,
        }
    }
}

/// What the conventions need to know about a container.
#[derive(Debug, Clone, Default)]
pub struct ContainerInfo {
    pub id: String,
    /// Without the leading '/'.
    pub name: String,
    pub image: String,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub exposed: Vec<(u16, Proto)>,
    pub published: Vec<Binding>,
    /// The container's address on its first network (by name), for
    /// `--internal`.
    pub ip: Option<IpAddr>,
    /// Its address on each network, by network name.
    pub networks: BTreeMap<String, IpAddr>,
    pub has_healthcheck: bool,
    pub health: Option<DockerHealth>,
    pub running: bool,
    pub paused: bool,
}

/// Registrator's settings that shape registrations.
#[derive(Debug, Clone)]
pub struct Settings {
    pub hostname: String,
    /// Address for ports published on every interface (`--ip`).
    pub host_ip: IpAddr,
    /// Register exposed ports at the container's own address.
    pub internal: bool,
    /// Only containers with SERVICE_NAME (or SERVICE_<port>_NAME).
    pub explicit: bool,
    /// Added to every instance (`--tags`).
    pub tags: Vec<String>,
    /// Take the address from this label when it holds an IP.
    pub ip_from_label: Option<String>,
    /// Only containers carrying every one of these labels (`KEY` or
    /// `KEY=VALUE`, as `docker ps --filter label=...`).
    pub only_labels: Vec<String>,
}

/// Whether `labels` carry every `KEY` or `KEY=VALUE` of `filters`.
pub fn selected(labels: &BTreeMap<String, String>, filters: &[String]) -> bool {
    filters.iter().all(|f| match f.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
        None => labels.contains_key(f.as_str()),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Passing,
    Warning,
    Critical,
}

impl Status {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "passing" => Some(Self::Passing),
            "warning" => Some(Self::Warning),
            "critical" => Some(Self::Critical),
            _ => None,
        }
    }
}

/// A check the registrator runs itself, near the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Http { url: String },
    Tcp { address: String },
    DockerHealth,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckPlan {
    /// Suffix of the check ID (`service:<id>:<suffix>`).
    pub suffix: &'static str,
    pub probe: Probe,
}

/// One instance to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub proto: Proto,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub checks: Vec<CheckPlan>,
    /// A TTL check the service itself refreshes.
    pub ttl: Option<Duration>,
    pub interval: Duration,
    pub timeout: Duration,
    pub initial_status: Status,
    pub deregister_after: Option<Duration>,
}

/// A problem with one container's settings: it is skipped, or registered
/// without the bad part. Displayed as one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub container: String,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "container {}: {}: {}",
            self.container, self.key, self.message
        )
    }
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

const RESERVED: &[&str] = &[
    "name",
    "id",
    "tags",
    "ignore",
    "check_http",
    "check_https",
    "check_tcp",
    "check_ttl",
    "check_interval",
    "check_timeout",
    "check_initial_status",
    "check_deregister_after",
];
const UNSUPPORTED_CHECKS: &[&str] = &[
    "check_script",
    "check_cmd",
    "check_docker",
    "check_grpc",
    "check_udp",
];

/// `SERVICE_*` settings of a container: the container-wide ones and the
/// per-port ones, each value with the original key (for warnings).
#[derive(Debug, Default)]
struct Metadata {
    all: BTreeMap<String, (String, String)>,
    ports: BTreeMap<u16, BTreeMap<String, (String, String)>>,
}

impl Metadata {
    fn read(c: &ContainerInfo, warnings: &mut Vec<Warning>) -> Self {
        let mut m = Metadata::default();
        let env = c.env.iter().filter_map(|e| e.split_once('='));
        let labels = c.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        // Labels come last: they override the environment.
        for (key, value) in env.chain(labels) {
            let Some(rest) = key.strip_prefix("SERVICE_") else {
                continue;
            };
            let (port, name) = match rest.split_once('_') {
                Some((p, k)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                    match p.parse::<u16>() {
                        Ok(port) if port > 0 => (Some(port), k),
                        _ => {
                            warnings.push(Warning {
                                container: c.name.clone(),
                                key: key.to_string(),
                                message: format!("{p} is not a port (1-65535); ignored"),
                            });
                            continue;
                        }
                    }
                }
                _ => (None, rest),
            };
            if name.is_empty() {
                continue;
            }
            let entry = (key.to_string(), value.to_string());
            let name = name.to_ascii_lowercase();
            match port {
                Some(p) => {
                    m.ports.entry(p).or_default().insert(name, entry);
                }
                None => {
                    m.all.insert(name, entry);
                }
            }
        }
        m
    }

    /// Settings for one port: the port's own over the container's.
    fn for_port(&self, port: u16) -> BTreeMap<String, (String, String)> {
        let mut merged = self.all.clone();
        if let Some(p) = self.ports.get(&port) {
            merged.extend(p.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        merged
    }
}

/// The image's base name: no registry, path, tag or digest.
fn image_base(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last)
}

/// Makes a DNS label out of anything: letters, digits and '-', at most 63.
pub fn sanitize_name(s: &str) -> String {
    let mapped: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches(['-', '_']);
    let name: String = trimmed.chars().take(63).collect();
    let name = name.trim_end_matches(['-', '_']).to_string();
    if name.is_empty() {
        "service".into()
    } else {
        name
    }
}

/// Go duration text ("10s", "1m30s", "250ms"), as registrator users write it.
pub fn parse_duration(s: &str) -> Option<Duration> {
    bronze_runtime::duration::parse_go(s).ok()
}

fn is_unspecified(ip: &str) -> bool {
    ip.is_empty() || ip.parse::<IpAddr>().is_ok_and(|a| a.is_unspecified())
}

/// One port to register: container port, protocol, address and port.
struct Endpoint {
    port: u16,
    proto: Proto,
    address: String,
    service_port: u16,
}

/// Labels naming the network whose address `--internal` registers.
pub const NETWORK_LABELS: [&str; 2] = ["bronze.network", "traefik.docker.network"];

/// The container's address for `--internal`: on the network a label names,
/// else on its first network.
fn internal_ip(c: &ContainerInfo, warnings: &mut Vec<Warning>) -> Option<IpAddr> {
    let Some((label, want)) = NETWORK_LABELS
        .iter()
        .find_map(|l| c.labels.get(*l).map(|v| (*l, v)))
    else {
        return c.ip;
    };
    if let Some(ip) = c.networks.get(want) {
        return Some(*ip);
    }
    let fallback = c
        .networks
        .iter()
        .find(|(_, ip)| Some(**ip) == c.ip)
        .map_or("none".to_string(), |(n, ip)| format!("{ip} on {n}"));
    warnings.push(Warning {
        container: c.name.clone(),
        key: label.to_string(),
        message: format!(
            "the container is not on network {want:?} (it is on: {}); registered at its first address ({fallback})",
            c.networks.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    });
    c.ip
}

fn endpoints(
    c: &ContainerInfo,
    s: &Settings,
    routed: &[(u16, String)],
    warnings: &mut Vec<Warning>,
) -> Vec<Endpoint> {
    let label_ip = s.ip_from_label.as_ref().and_then(|label| {
        let v = c.labels.get(label)?;
        match v.parse::<IpAddr>() {
            Ok(ip) => Some(ip.to_string()),
            Err(_) => {
                warnings.push(Warning {
                    container: c.name.clone(),
                    key: label.clone(),
                    message: format!("{v:?} is not an IP address; using the usual address"),
                });
                None
            }
        }
    });
    let mut out: Vec<Endpoint> = Vec::new();
    if s.internal {
        let ip = match label_ip {
            Some(ip) => Some(ip),
            None => internal_ip(c, warnings).map(|ip| ip.to_string()),
        };
        let Some(ip) = ip else {
            if !c.exposed.is_empty() || !routed.is_empty() {
                warnings.push(Warning {
                    container: c.name.clone(),
                    key: "network".into(),
                    message: "no container address for --internal; skipped".into(),
                });
            }
            return out;
        };
        let mut exposed = c.exposed.clone();
        // Ports Traefik's labels route to, exposed or not.
        exposed.extend(routed.iter().map(|(p, _)| (*p, Proto::Tcp)));
        exposed.sort();
        exposed.dedup();
        for (port, proto) in exposed {
            out.push(Endpoint {
                port,
                proto,
                address: ip.clone(),
                service_port: port,
            });
        }
    } else {
        let mut bindings = c.published.clone();
        // One instance per container port: IPv4 bindings first, then the
        // lowest host port, so the choice is stable.
        bindings.sort_by_key(|b| (b.port, b.proto, b.host_ip.contains(':'), b.host_port));
        for b in bindings {
            if b.host_port == 0 || out.iter().any(|e| e.port == b.port && e.proto == b.proto) {
                continue;
            }
            let address = label_ip.clone().unwrap_or_else(|| {
                if is_unspecified(&b.host_ip) {
                    s.host_ip.to_string()
                } else {
                    b.host_ip.clone()
                }
            });
            out.push(Endpoint {
                port: b.port,
                proto: b.proto,
                address,
                service_port: b.host_port,
            });
        }
        for (port, key) in routed {
            if !out.iter().any(|e| e.port == *port && e.proto == Proto::Tcp) {
                warnings.push(Warning {
                    container: c.name.clone(),
                    key: key.clone(),
                    message: format!(
                        "port {port} is not published, so the gateway cannot route to it: publish it, or run the registrator with --internal"
                    ),
                });
            }
        }
    }
    out
}

/// Whether a label is Traefik's (case-insensitive, as Traefik reads them).
fn is_traefik(key: &str) -> bool {
    key.get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("traefik."))
}

/// Whether Traefik would route the container: it has Traefik labels and
/// `traefik.enable` is not false.
fn routed_by_traefik(c: &ContainerInfo) -> bool {
    let mut labels = c.labels.iter().filter(|(k, _)| is_traefik(k));
    let enabled = c
        .labels
        .get("traefik.enable")
        .is_none_or(|v| !matches!(v.trim(), "0" | "f" | "F" | "false" | "FALSE" | "False"));
    enabled && labels.next().is_some()
}

/// The container ports Traefik's labels route to, each with the label
/// naming it; a port label that is not a port is left to the gateway to
/// report.
fn traefik_ports(c: &ContainerInfo) -> Vec<(u16, String)> {
    let mut out: Vec<(u16, String)> = Vec::new();
    for (k, v) in c.labels.iter().filter(|(k, _)| is_traefik(k)) {
        let lower = k.to_ascii_lowercase();
        let v2 = lower.starts_with("traefik.http.services.")
            && lower.ends_with(".loadbalancer.server.port");
        let v1 = !lower.starts_with("traefik.http.")
            && !lower.starts_with("traefik.tcp.")
            && !lower.starts_with("traefik.udp.")
            && lower.ends_with(".port");
        if let (true, Ok(p)) = (v1 || v2, v.trim().parse::<u16>())
            && p > 0
            && !out.iter().any(|(q, _)| *q == p)
        {
            out.push((p, k.clone()));
        }
    }
    out
}

/// Label values that are secrets (Traefik's basic and digest auth users):
/// the gateway only needs to know the middleware exists.
fn secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "basicauth.users",
        "digestauth.users",
        "frontend.auth.basic",
        "frontend.auth.digest",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// What discovery accepts as a metadata key.
fn meta_key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 128
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

/// Discovery's limit of metadata entries per instance.
const MAX_META: usize = 128;

/// The instances a container should have, and what was wrong with its
/// settings.
pub fn plan(c: &ContainerInfo, s: &Settings) -> (Vec<ServicePlan>, Vec<Warning>) {
    let mut warnings = Vec::new();
    if !selected(&c.labels, &s.only_labels) {
        return (Vec::new(), warnings);
    }
    let meta = Metadata::read(c, &mut warnings);
    let traefik = routed_by_traefik(c);
    let routed = if traefik {
        traefik_ports(c)
    } else {
        Vec::new()
    };
    let eps = endpoints(c, s, &routed, &mut warnings);
    if traefik && eps.is_empty() && routed.is_empty() && !s.internal {
        warnings.push(Warning {
            container: c.name.clone(),
            key: "traefik.*".into(),
            message: "the container publishes no port, so the gateway cannot route to it: publish one, or run the registrator with --internal".into(),
        });
    }
    let group = eps.len() > 1;
    let mut plans = Vec::new();
    for ep in eps {
        let m = meta.for_port(ep.port);
        let get = |k: &str| m.get(k).map(|(_, v)| v.as_str());
        let key_of = |k: &str| {
            m.get(k)
                .map(|(key, _)| key.clone())
                .unwrap_or_else(|| k.to_string())
        };
        let warn = |warnings: &mut Vec<Warning>, k: &str, message: String| {
            warnings.push(Warning {
                container: c.name.clone(),
                key: key_of(k),
                message,
            })
        };
        if get("ignore").is_some_and(|v| !v.is_empty()) {
            continue;
        }
        let explicit_name = get("name").filter(|v| !v.is_empty());
        if s.explicit && explicit_name.is_none() {
            continue;
        }
        let name = match explicit_name {
            Some(n) => {
                let clean = sanitize_name(n);
                if clean != n.to_ascii_lowercase() {
                    warn(
                        &mut warnings,
                        "name",
                        format!("{n:?} is not a DNS label; registered as {clean:?}"),
                    );
                }
                clean
            }
            None => {
                let base = sanitize_name(image_base(&c.image));
                if group {
                    sanitize_name(&format!("{base}-{}", ep.port))
                } else {
                    base
                }
            }
        };
        let udp = if ep.proto == Proto::Udp { ":udp" } else { "" };
        let id = get("id")
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}:{}:{}{udp}", s.hostname, c.name, ep.port));
        let mut tags: Vec<String> = get("tags")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        for t in &s.tags {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }

        let duration_of = |warnings: &mut Vec<Warning>, k: &str| -> Option<Duration> {
            let v = get(k)?;
            match parse_duration(v) {
                Some(d) if !d.is_zero() => Some(d),
                _ => {
                    warn(
                        warnings,
                        k,
                        format!("{v:?} is not a duration (e.g. \"10s\"); ignored"),
                    );
                    None
                }
            }
        };
        let interval = duration_of(&mut warnings, "check_interval").unwrap_or(DEFAULT_INTERVAL);
        let timeout = duration_of(&mut warnings, "check_timeout").unwrap_or(DEFAULT_TIMEOUT);
        let deregister_after = duration_of(&mut warnings, "check_deregister_after");
        let ttl = duration_of(&mut warnings, "check_ttl");
        let initial_status = match get("check_initial_status") {
            None => Status::Critical,
            Some(v) => Status::parse(v).unwrap_or_else(|| {
                warn(
                    &mut warnings,
                    "check_initial_status",
                    format!("{v:?}: expected passing, warning or critical; using critical"),
                );
                Status::Critical
            }),
        };

        let mut checks = Vec::new();
        for (key, scheme) in [("check_http", "http"), ("check_https", "https")] {
            if let Some(path) = get(key).filter(|p| !p.is_empty()) {
                if path.starts_with('/') && !path.chars().any(char::is_whitespace) {
                    let host = if ep.address.contains(':') {
                        format!("[{}]", ep.address)
                    } else {
                        ep.address.clone()
                    };
                    checks.push(CheckPlan {
                        suffix: scheme,
                        probe: Probe::Http {
                            url: format!("{scheme}://{host}:{}{path}", ep.service_port),
                        },
                    });
                } else {
                    warn(
                        &mut warnings,
                        key,
                        format!("{path:?}: expected a path such as /health; check left out"),
                    );
                }
            }
        }
        match get("check_tcp") {
            None => {}
            Some(v) if v.eq_ignore_ascii_case("true") => {
                let host = if ep.address.contains(':') {
                    format!("[{}]", ep.address)
                } else {
                    ep.address.clone()
                };
                checks.push(CheckPlan {
                    suffix: "tcp",
                    probe: Probe::Tcp {
                        address: format!("{host}:{}", ep.service_port),
                    },
                });
            }
            Some(v) if v.eq_ignore_ascii_case("false") || v.is_empty() => {}
            Some(v) => warn(
                &mut warnings,
                "check_tcp",
                format!("{v:?}: expected true; check left out"),
            ),
        }
        if c.has_healthcheck {
            checks.push(CheckPlan {
                suffix: "docker",
                probe: Probe::DockerHealth,
            });
        }
        for k in UNSUPPORTED_CHECKS {
            if get(k).is_some() {
                warn(
                    &mut warnings,
                    k,
                    "this check kind is not supported (use CHECK_HTTP, CHECK_HTTPS, CHECK_TCP, CHECK_TTL or a HEALTHCHECK); left out".into(),
                );
            }
        }

        let mut service_meta = BTreeMap::new();
        for (k, (_, v)) in &m {
            if RESERVED.contains(&k.as_str()) || UNSUPPORTED_CHECKS.contains(&k.as_str()) {
                continue;
            }
            if v.len() > 4096 {
                warn(
                    &mut warnings,
                    k,
                    "value longer than 4096 bytes; left out of the metadata".into(),
                );
                continue;
            }
            service_meta.insert(k.clone(), v.clone());
        }
        for (k, v) in &c.labels {
            if k.starts_with("bronze.") {
                service_meta.insert(k.clone(), v.clone());
            }
        }
        let has_traefik = c.labels.keys().any(|k| is_traefik(k));
        // Traefik's port labels and Bronze's stack mesh (agents map an
        // instance to the service's target port) both need the container
        // side of the port.
        if has_traefik || c.labels.contains_key(STACK_LABEL) {
            service_meta.insert("bronze.container".into(), c.name.clone());
            let port = match ep.proto {
                Proto::Tcp => ep.port.to_string(),
                Proto::Udp => format!("{}/udp", ep.port),
            };
            service_meta.insert("bronze.container.port".into(), port);
        }
        for (k, v) in c
            .labels
            .iter()
            .filter(|(k, _)| has_traefik && is_traefik(k))
        {
            let problem = if !meta_key_ok(k) {
                Some(
                    "not a metadata key discovery takes (at most 128 letters, digits, '-', '_', '.', '/')",
                )
            } else if v.len() > 4096 {
                Some("value longer than 4096 bytes")
            } else if service_meta.len() >= MAX_META {
                Some("more than 128 metadata entries")
            } else {
                None
            };
            if let Some(why) = problem {
                warn(
                    &mut warnings,
                    k,
                    format!("{why}; left out of the metadata, so the gateway does not see it"),
                );
                continue;
            }
            let value = if secret(k) {
                "(a secret: not copied)".to_string()
            } else {
                v.clone()
            };
            service_meta.insert(k.clone(), value);
        }

        plans.push(ServicePlan {
            id,
            name,
            address: ep.address,
            port: ep.service_port,
            proto: ep.proto,
            tags,
            meta: service_meta,
            checks,
            ttl,
            interval,
            timeout,
            initial_status,
            deregister_after,
        });
    }
    (plans, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            hostname: "host1".into(),
            host_ip: "10.0.0.10".parse().expect("ip"),
            internal: false,
            explicit: false,
            tags: vec![],
            ip_from_label: None,
            only_labels: vec![],
        }
    }

    fn container() -> ContainerInfo {
        ContainerInfo {
            id: "abc".into(),
            name: "web-1".into(),
            image: "registry.local:5000/shop/web:1.2".into(),
            exposed: vec![(8080, Proto::Tcp)],
            published: vec![Binding {
                port: 8080,
                proto: Proto::Tcp,
                host_ip: "0.0.0.0".into(),
                host_port: 32768,
            }],
            ip: Some("172.17.0.2".parse().expect("ip")),
            running: true,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_follow_registrator() {
        let (plans, warnings) = plan(&container(), &settings());
        assert!(warnings.is_empty());
        assert_eq!(plans.len(), 1);
        let p = &plans[0];
        assert_eq!(p.name, "web");
        assert_eq!(p.id, "host1:web-1:8080");
        assert_eq!((p.address.as_str(), p.port), ("10.0.0.10", 32768));
        assert!(p.checks.is_empty());
        assert_eq!(p.initial_status, Status::Critical);
    }

    #[test]
    fn several_ports_get_port_suffixes_and_udp_ids() {
        let mut c = container();
        c.published.push(Binding {
            port: 53,
            proto: Proto::Udp,
            host_ip: "127.0.0.1".into(),
            host_port: 5353,
        });
        // A second (IPv6) binding of the same port is the same instance.
        c.published.push(Binding {
            port: 8080,
            proto: Proto::Tcp,
            host_ip: "::".into(),
            host_port: 32768,
        });
        let (plans, _) = plan(&c, &settings());
        let mut got: Vec<(String, String, String, u16)> = plans
            .iter()
            .map(|p| (p.id.clone(), p.name.clone(), p.address.clone(), p.port))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (
                    "host1:web-1:53:udp".into(),
                    "web-53".into(),
                    "127.0.0.1".into(),
                    5353
                ),
                (
                    "host1:web-1:8080".into(),
                    "web-8080".into(),
                    "10.0.0.10".into(),
                    32768
                ),
            ]
        );
    }

    #[test]
    fn service_variables_and_labels() {
        let mut c = container();
        c.env = vec![
            "SERVICE_NAME=shop".into(),
            "SERVICE_TAGS=v1, blue".into(),
            "SERVICE_CHECK_HTTP=/health".into(),
            "SERVICE_CHECK_INTERVAL=2s".into(),
            "SERVICE_CHECK_TTL=30s".into(),
            "SERVICE_REGION=eu".into(),
            "PATH=/bin".into(),
        ];
        c.labels
            .insert("SERVICE_8080_NAME".into(), "shop-api".into());
        c.labels.insert("SERVICE_TAGS".into(), "v2".into());
        c.labels
            .insert("bronze.http.rule".into(), "PathPrefix(`/shop`)".into());
        c.labels.insert("other".into(), "x".into());
        let s = Settings {
            tags: vec!["dc-a".into()],
            ..settings()
        };
        let (plans, warnings) = plan(&c, &s);
        assert!(warnings.is_empty(), "{warnings:?}");
        let p = &plans[0];
        assert_eq!(p.name, "shop-api", "port-specific label wins");
        assert_eq!(p.tags, vec!["v2", "dc-a"], "labels override env");
        assert_eq!(p.interval, Duration::from_secs(2));
        assert_eq!(p.ttl, Some(Duration::from_secs(30)));
        assert_eq!(
            p.checks,
            vec![CheckPlan {
                suffix: "http",
                probe: Probe::Http {
                    url: "http://10.0.0.10:32768/health".into()
                }
            }]
        );
        assert_eq!(p.meta.get("region").map(String::as_str), Some("eu"));
        assert_eq!(
            p.meta.get("bronze.http.rule").map(String::as_str),
            Some("PathPrefix(`/shop`)")
        );
        assert!(!p.meta.contains_key("other"));
        assert!(!p.meta.contains_key("name"));
    }

    #[test]
    fn ignore_explicit_and_internal() {
        let mut c = container();
        c.env = vec!["SERVICE_IGNORE=1".into()];
        assert!(plan(&c, &settings()).0.is_empty());
        let c = container();
        let explicit = Settings {
            explicit: true,
            ..settings()
        };
        assert!(plan(&c, &explicit).0.is_empty());
        let internal = Settings {
            internal: true,
            ..settings()
        };
        let (plans, _) = plan(&c, &internal);
        assert_eq!(
            (plans[0].address.as_str(), plans[0].port),
            ("172.17.0.2", 8080)
        );
        let mut c = container();
        c.labels.insert("ip".into(), "192.168.1.5".into());
        let from_label = Settings {
            ip_from_label: Some("ip".into()),
            ..settings()
        };
        assert_eq!(plan(&c, &from_label).0[0].address, "192.168.1.5");
    }

    #[test]
    fn only_labels_select_this_hosts_containers() {
        let mut c = container();
        c.labels.insert("bronze.node.id".into(), "host-a".into());
        let only = |filters: &[&str]| Settings {
            only_labels: filters.iter().map(|f| f.to_string()).collect(),
            ..settings()
        };
        assert_eq!(plan(&c, &only(&["bronze.node.id=host-a"])).0.len(), 1);
        assert_eq!(plan(&c, &only(&["bronze.node.id"])).0.len(), 1);
        assert!(plan(&c, &only(&["bronze.node.id=host-b"])).0.is_empty());
        assert!(
            plan(&c, &only(&["bronze.node.id=host-a", "zone"]))
                .0
                .is_empty()
        );
        assert!(plan(&c, &only(&["bronze.node.id=host-"])).0.is_empty());
    }

    #[test]
    fn bad_values_warn_once_naming_container_and_key() {
        let mut c = container();
        c.env = vec![
            "SERVICE_CHECK_INTERVAL=often".into(),
            "SERVICE_CHECK_TTL=-1s".into(),
            "SERVICE_CHECK_SCRIPT=curl localhost".into(),
            "SERVICE_CHECK_TCP=maybe".into(),
            "SERVICE_CHECK_HTTP=health".into(),
            "SERVICE_99999_NAME=x".into(),
            "SERVICE_CHECK_INITIAL_STATUS=great".into(),
        ];
        let (plans, warnings) = plan(&c, &settings());
        assert_eq!(plans.len(), 1, "still registered, without the bad parts");
        assert_eq!(plans[0].interval, DEFAULT_INTERVAL);
        assert!(plans[0].checks.is_empty());
        assert_eq!(plans[0].ttl, None);
        let keys: Vec<&str> = warnings.iter().map(|w| w.key.as_str()).collect();
        for k in [
            "SERVICE_CHECK_INTERVAL",
            "SERVICE_CHECK_TTL",
            "SERVICE_CHECK_SCRIPT",
            "SERVICE_CHECK_TCP",
            "SERVICE_CHECK_HTTP",
            "SERVICE_99999_NAME",
            "SERVICE_CHECK_INITIAL_STATUS",
        ] {
            assert!(keys.contains(&k), "warning for {k}: {warnings:?}");
        }
        assert!(warnings.iter().all(|w| w.container == "web-1"));
        assert!(warnings[0].to_string().starts_with("container web-1: "));
    }

    #[test]
    fn names_are_made_dns_safe() {
        assert_eq!(image_base("busybox"), "busybox");
        assert_eq!(image_base("localhost:5000/a/b:tag@sha256:00"), "b");
        assert_eq!(sanitize_name("My.App"), "my-app");
        assert_eq!(sanitize_name("__"), "service");
        assert_eq!(sanitize_name(&"a".repeat(80)).len(), 63);
        let mut c = container();
        c.image = "my.registry/Team/My.App:1".into();
        assert_eq!(plan(&c, &settings()).0[0].name, "my-app");
    }

    fn labelled(pairs: &[(&str, &str)]) -> ContainerInfo {
        let mut c = container();
        c.labels = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        c
    }

    #[test]
    fn traefik_labels_reach_the_metadata_with_the_container_port() {
        let mut c = labelled(&[
            ("traefik.port", "9090"),
            (
                "traefik.frontend.rule",
                "Host:api.example.com;PathPrefixStrip:/v2/user",
            ),
            ("traefik.frontend.auth.basic.users", "admin:$apr1$x$y"),
            ("traefik.http.services.s.weighted.services[0].name", "a"),
            ("not.traefik", "x"),
        ]);
        c.published.push(Binding {
            port: 9090,
            proto: Proto::Tcp,
            host_ip: "0.0.0.0".into(),
            host_port: 32769,
        });
        let (plans, warnings) = plan(&c, &settings());
        assert_eq!(plans.len(), 2);
        let mut ports = Vec::new();
        for p in &plans {
            assert_eq!(p.meta["bronze.container"], "web-1");
            assert_eq!(
                p.meta["traefik.frontend.rule"],
                "Host:api.example.com;PathPrefixStrip:/v2/user"
            );
            assert_eq!(
                p.meta["traefik.frontend.auth.basic.users"], "(a secret: not copied)",
                "secrets stay out of discovery"
            );
            assert!(!p.meta.contains_key("not.traefik"));
            assert!(!p.meta.keys().any(|k| k.contains('[')));
            ports.push((p.meta["bronze.container.port"].clone(), p.port));
        }
        ports.sort();
        assert_eq!(
            ports,
            vec![("8080".into(), 32768), ("9090".into(), 32769)],
            "the gateway picks traefik.port's instance by its container port"
        );
        let keys: Vec<&str> = warnings.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "traefik.http.services.s.weighted.services[0].name",
                "traefik.http.services.s.weighted.services[0].name"
            ],
            "a key discovery refuses is named (once a port; logged once by sync)"
        );
    }

    #[test]
    fn stack_tasks_name_their_container_port() {
        let mut c = labelled(&[
            (STACK_LABEL, "shop"),
            ("bronze.service.name", "shop_api"),
            ("SERVICE_NAME", "shop_api"),
        ]);
        c.exposed.push((9090, Proto::Tcp));
        c.published.push(Binding {
            port: 9090,
            proto: Proto::Tcp,
            host_ip: "0.0.0.0".into(),
            host_port: 32769,
        });
        let (plans, _) = plan(&c, &settings());
        let mut seen: Vec<(String, String, String, u16)> = plans
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.meta[STACK_LABEL].clone(),
                    p.meta["bronze.container.port"].clone(),
                    p.port,
                )
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ("shop_api".into(), "shop".into(), "8080".into(), 32768),
                ("shop_api".into(), "shop".into(), "9090".into(), 32769)
            ],
            "one service name (SERVICE_NAME, as the agent sets it) for both ports: \
             the container port tells the instances apart"
        );
        // Without the label (and without Traefik's), no container port.
        let (plans, _) = plan(&container(), &settings());
        assert!(!plans[0].meta.contains_key("bronze.container.port"));
    }

    #[test]
    fn routed_ports_are_registered_internally_and_warned_about_unpublished() {
        let c = labelled(&[
            ("traefik.http.routers.api.rule", "Host(`api.example.com`)"),
            ("traefik.http.services.api.loadbalancer.server.port", "9090"),
        ]);
        let internal = Settings {
            internal: true,
            ..settings()
        };
        let (plans, warnings) = plan(&c, &internal);
        assert!(warnings.is_empty(), "{warnings:?}");
        let mut ports: Vec<u16> = plans.iter().map(|p| p.port).collect();
        ports.sort();
        assert_eq!(
            ports,
            vec![8080, 9090],
            "9090 registered though not exposed"
        );
        // Published mode: 9090 is not published, so it is warned about.
        let (plans, warnings) = plan(&c, &settings());
        assert_eq!(plans.len(), 1);
        assert_eq!(
            warnings[0].key,
            "traefik.http.services.api.loadbalancer.server.port"
        );
        assert!(warnings[0].message.contains("port 9090 is not published"));
        // Nothing published at all (a Swarm stack's service).
        let mut c = labelled(&[("traefik.frontend.rule", "Host:a.example")]);
        c.published.clear();
        let (plans, warnings) = plan(&c, &settings());
        assert!(plans.is_empty());
        assert!(warnings[0].message.contains("publishes no port"));
        // traefik.enable=false: registered as any container, no port talk.
        let mut c = labelled(&[
            ("traefik.enable", "false"),
            ("traefik.port", "9090"),
            ("traefik.frontend.rule", "Host:a.example"),
        ]);
        let (plans, warnings) = plan(&c, &settings());
        assert_eq!(plans.len(), 1);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(plans[0].meta["traefik.enable"], "false");
        c.published.clear();
        assert!(plan(&c, &settings()).1.is_empty());
    }

    #[test]
    fn the_network_label_picks_the_internal_address() {
        let internal = Settings {
            internal: true,
            ..settings()
        };
        let mut c = labelled(&[("traefik.docker.network", "traefik_public")]);
        c.networks = [
            ("bridge".to_string(), "172.17.0.2".parse().expect("ip")),
            (
                "traefik_public".to_string(),
                "10.1.0.7".parse().expect("ip"),
            ),
        ]
        .into();
        assert_eq!(plan(&c, &internal).0[0].address, "10.1.0.7");
        c.labels
            .insert("traefik.docker.network".into(), "elsewhere".into());
        let (plans, warnings) = plan(&c, &internal);
        assert_eq!(plans[0].address, "172.17.0.2", "the first address");
        assert_eq!(warnings[0].key, "traefik.docker.network");
        assert!(warnings[0].message.contains("not on network \"elsewhere\""));
        // bronze.network wins over Traefik's label.
        c.labels.insert("bronze.network".into(), "bridge".into());
        assert_eq!(plan(&c, &internal).0[0].address, "172.17.0.2");
        assert!(plan(&c, &internal).1.is_empty());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("x"), None);
    }
}
