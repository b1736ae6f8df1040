//! Routes from discovery's labelled instances, with no configuration call.
//! The registrator copies a container's `bronze.*` and `traefik.*` labels
//! into its instances' metadata (with `bronze.container`, the container's
//! name, and `bronze.container.port`, the container-side port); every
//! change of discovery recompiles the table through [`merge`]: instances
//! in, extra services, upstreams and routes out, after the declarative
//! configuration's, plus a [`Report`] of what was routed and of every
//! label that could not be honoured.
//!
//! Three dialects, each read by its own module into [`Frontend`]s (what to
//! match, how to rewrite, which container port, what weight):
//!
//! - `bronze.http.rule` (here): Traefik v2's rule syntax
//!   (``Host(`a`) && PathPrefix(`/v2`)``, `||` too), with
//!   `bronze.http.strip_prefix` (strip the PathPrefix) and
//!   `bronze.http.weight` (0-1000, default 100). Every instance with the
//!   same rule text joins one upstream `discovery:<rule>`, weighted.
//! - Traefik v1 (`v1`): `traefik.frontend.rule=Host:a;PathPrefixStrip:/v2`,
//!   `traefik.port`, `traefik.weight`, segments.
//! - Traefik v2/v3 (`v2`): routers, services, middlewares; chosen when a
//!   container has any `traefik.http.*` label.
//!
//! Rules become Kong routes through `matcher` (rule syntax in `expr`).
//! Traefik frontends that match and rewrite alike share one upstream
//! named after them (`traefik:<rule>`), whichever containers declare them:
//! blue/green is two services with one rule and two weights.
//! `traefik.enable=false` keeps a container out (the registrator still
//! registers it: discovery serves DNS too).
//!
//! Nothing is silently dropped: a label Bronze cannot honour becomes a
//! [`Warning`] naming the instance, the label and what happened (ignored,
//! approximated, or the frontend left out); the others still route. The
//! gateway logs each warning once and lists them at the admin API's
//! `GET /labels`, counted by `bronze_gateway_label_warnings`.
//!
//! Only passing and warning instances are routed to. A target the gateway
//! fails to reach (refused, unreachable, timed out) is left out after that
//! first failed attempt (its circuit opens, `circuit_breaker.failures` 1)
//! and the request is retried on another: discovery drops a dead host's
//! instances only when their TTL runs out, and until then no request
//! should wait on it twice. The circuit's half-open probe lets it back in.

mod expr;
mod matcher;
mod v1;
mod v2;

use std::collections::{BTreeMap, BTreeSet};

use bronze_proto::discovery::v1 as pb;
use serde::Serialize;

use crate::balancer::config::CircuitBreaker;
use crate::declarative::{Declarative, Plugin, Route, Service, Target, Upstream};
use matcher::Conj;

pub const RULE: &str = "bronze.http.rule";
pub const STRIP_PREFIX: &str = "bronze.http.strip_prefix";
pub const WEIGHT: &str = "bronze.http.weight";
/// The container an instance belongs to (set by the registrator).
pub const CONTAINER: &str = "bronze.container";
/// The container-side port of an instance (`80`, or `53/udp`), which
/// Traefik's port labels name.
pub const CONTAINER_PORT: &str = "bronze.container.port";
const TRAEFIK: &str = "traefik.";
const ENABLE: &str = "traefik.enable";
/// Container-wide Traefik labels read outside the dialects (the network is
/// the registrator's: it picks the address it registers).
const CONTAINER_WIDE: &[&str] = &[ENABLE, "traefik.docker.network"];

/// Whether an instance's metadata asks for routes.
pub fn is_labelled(meta: &std::collections::HashMap<String, String>) -> bool {
    meta.contains_key(RULE) || meta.keys().any(|k| k.starts_with(TRAEFIK))
}

/// Go's `strconv.ParseBool`, which Traefik's labels go through.
pub(crate) fn go_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// What happened to a label Bronze could not honour as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Not applied; routing is otherwise as asked.
    Ignored,
    /// Routed, with a small difference the message names.
    Approximated,
    /// The frontend or router it belongs to is not routed.
    LeftOut,
}

/// A label Bronze could not honour as written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Warning {
    /// The container (`node/name`) or, without one, the instance ID.
    pub instance: String,
    pub service: String,
    pub key: String,
    pub message: String,
    pub effect: Effect,
}

/// A warning before it is attached to an instance.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Note {
    pub key: String,
    pub message: String,
    pub effect: Effect,
}

/// A label route in the table.
#[derive(Debug, Clone, Serialize)]
pub struct LabelRoute {
    /// The service, upstream and (first) route name.
    pub name: String,
    pub targets: Vec<LabelTarget>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LabelTarget {
    pub target: String,
    pub weight: u32,
    pub instance: String,
}

/// What discovery's labels added to the table, and what they could not.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub routes: Vec<LabelRoute>,
    pub warnings: Vec<Warning>,
}

impl Report {
    /// The table refused the label route `name`: it leaves the routes and
    /// becomes a warning for every instance it had.
    pub fn refused(&mut self, name: &str, error: &str) {
        let Some(i) = self.routes.iter().position(|r| r.name == name) else {
            return;
        };
        let route = self.routes.remove(i);
        let mut seen = BTreeSet::new();
        for t in route.targets {
            if seen.insert(t.instance.clone()) {
                self.warnings.push(Warning {
                    instance: t.instance,
                    service: String::new(),
                    key: name.to_string(),
                    message: format!("refused by the router: {error}"),
                    effect: Effect::LeftOut,
                });
            }
        }
    }
}

/// The last report, the warnings already logged, and the gauge operators
/// watch (`bronze_gateway_label_warnings`).
#[derive(Debug, Default)]
pub(crate) struct Published {
    state: parking_lot::Mutex<(Report, BTreeSet<Warning>)>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Published {
    pub fn register(metrics: &mut bronze_telemetry::Metrics) -> Self {
        let this = Self::default();
        metrics.registry().register(
            "label_warnings",
            "Discovery labels the gateway cannot honour as written (GET /labels on the admin API lists them)",
            this.gauge.clone(),
        );
        this
    }

    /// Makes `report` the current one; logs each warning the first time it
    /// appears (again only after it went away).
    pub fn publish(&self, report: Report) {
        let mut state = self.state.lock();
        let (current, logged) = &mut *state;
        let now: BTreeSet<Warning> = report.warnings.iter().cloned().collect();
        for w in now.difference(logged) {
            tracing::warn!(
                instance = %w.instance,
                service = %w.service,
                label = %w.key,
                effect = ?w.effect,
                reason = %w.message,
                "label not honoured"
            );
        }
        self.gauge.set(now.len() as i64);
        *logged = now;
        *current = report;
    }

    pub fn report(&self) -> Report {
        self.state.lock().0.clone()
    }
}

/// How a frontend matches and rewrites: frontends of the same shape share
/// an upstream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Shape {
    /// The alternatives (each a Kong route, or several when paths differ
    /// in stripping).
    pub conjs: Vec<Conj>,
    pub preserve_host: bool,
    /// Traefik's `tls=true`: only on the TLS listener.
    pub https_only: bool,
    /// Prepended to the forwarded path.
    pub add_prefix: Option<String>,
    /// The whole path sent upstream.
    pub replace_path: Option<String>,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let alternatives: Vec<String> = self.conjs.iter().map(|c| c.to_string()).collect();
        f.write_str(&alternatives.join(" || "))?;
        if let Some(p) = &self.add_prefix {
            write!(f, " add prefix {p}")?;
        }
        if let Some(p) = &self.replace_path {
            write!(f, " replace path {p}")?;
        }
        if self.https_only {
            f.write_str(" tls")?;
        }
        if !self.preserve_host {
            f.write_str(" upstream host")?;
        }
        Ok(())
    }
}

/// A frontend (a v1 frontend or segment, a v2 router, a bronze rule):
/// what it routes, to which of its container's ports, with what weight.
#[derive(Debug, Clone)]
pub(crate) struct Frontend {
    pub shape: Shape,
    /// The upstream's name, when the dialect fixes it.
    pub name: Option<String>,
    /// The container port; `None`: the container's lowest.
    pub port: Option<u16>,
    pub weight: u32,
    /// The label a missing port is reported against.
    pub port_key: String,
}

/// One container's frontends and the labels it could not honour.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub frontends: Vec<Frontend>,
    pub notes: Vec<Note>,
}

/// The `bronze.http.*` labels of one instance.
fn bronze_frontend(
    meta: &std::collections::HashMap<String, String>,
) -> Result<(Frontend, Vec<Note>), Note> {
    let text = meta.get(RULE).map(String::as_str).unwrap_or_default();
    let (mut conjs, approx) = v2::rule(text).map_err(|message| Note {
        key: RULE.into(),
        message,
        effect: Effect::LeftOut,
    })?;
    let mut notes: Vec<Note> = approx
        .into_iter()
        .map(|message| Note {
            key: RULE.into(),
            message,
            effect: Effect::Approximated,
        })
        .collect();
    let weight = match meta.get(WEIGHT).map(|w| w.trim().parse::<u32>()) {
        None => 100,
        Some(Ok(w)) if w <= 1000 => w,
        Some(_) => {
            notes.push(Note {
                key: WEIGHT.into(),
                message: "expected 0-1000; using 100".into(),
                effect: Effect::Ignored,
            });
            100
        }
    };
    if meta
        .get(STRIP_PREFIX)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        for c in &mut conjs {
            if let Some(paths) = c.paths.take() {
                c.paths = Some(
                    paths
                        .into_iter()
                        .map(|mut p| {
                            p.strip |= matches!(p.m, matcher::PathM::Prefix(_));
                            p
                        })
                        .collect(),
                );
            }
        }
    }
    Ok((
        Frontend {
            shape: Shape {
                conjs,
                preserve_host: true,
                https_only: false,
                add_prefix: None,
                replace_path: None,
            },
            name: Some(format!("discovery:{}", text.trim())),
            port: None,
            weight,
            port_key: RULE.into(),
        },
        notes,
    ))
}

/// Labels from pairs (the dialects' tests).
#[cfg(test)]
pub(crate) fn label_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(crate) fn routable(i: &pb::Instance) -> bool {
    matches!(
        pb::HealthStatus::try_from(i.health),
        Ok(pb::HealthStatus::Passing | pb::HealthStatus::Warning | pb::HealthStatus::Unspecified)
    )
}

fn address(i: &pb::Instance) -> String {
    if i.address.contains(':') {
        format!("[{}]:{}", i.address, i.port)
    } else {
        format!("{}:{}", i.address, i.port)
    }
}

/// One container's instances, by container port.
struct Container<'a> {
    /// For warnings: `node/name`, or the instance ID.
    name: String,
    service: String,
    labels: BTreeMap<String, String>,
    /// (container port, instance); UDP ones are left out.
    ports: Vec<(u16, &'a pb::Instance)>,
}

/// Groups the instances that carry Traefik labels by container.
fn containers<'a>(all: &[&'a pb::Instance]) -> Vec<Container<'a>> {
    let mut by: BTreeMap<(String, String), Container<'a>> = BTreeMap::new();
    for &i in all {
        if !i.meta.keys().any(|k| k.starts_with(TRAEFIK)) {
            continue;
        }
        let (key, name) = match i.meta.get(CONTAINER) {
            Some(c) => ((i.node.clone(), c.clone()), format!("{}/{c}", i.node)),
            None => ((i.node.clone(), format!("\0{}", i.id)), i.id.clone()),
        };
        let c = by.entry(key).or_insert_with(|| Container {
            name,
            service: i.service.clone(),
            labels: i
                .meta
                .iter()
                .filter(|(k, _)| k.starts_with(TRAEFIK))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ports: Vec::new(),
        });
        let port = match i.meta.get(CONTAINER_PORT) {
            Some(p) => p.trim().parse::<u16>().ok(),
            None => u16::try_from(i.port).ok(),
        };
        if let Some(p) = port {
            c.ports.push((p, i));
        }
    }
    let mut out: Vec<Container<'a>> = by.into_values().collect();
    for c in &mut out {
        c.ports.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
    }
    out
}

/// Upstreams being assembled, by name.
#[derive(Default)]
struct Groups {
    by_name: BTreeMap<String, (Shape, Vec<LabelTarget>)>,
}

impl Groups {
    fn add(&mut self, f: &Frontend, i: &pb::Instance, instance: &str) -> Option<Note> {
        let name = f
            .name
            .clone()
            .unwrap_or_else(|| format!("traefik:{}", f.shape));
        let (shape, targets) = self
            .by_name
            .entry(name)
            .or_insert_with(|| (f.shape.clone(), Vec::new()));
        let note = (*shape != f.shape).then(|| Note {
            key: STRIP_PREFIX.into(),
            message: "another instance has the same rule with another strip_prefix; the first one's applies".into(),
            effect: Effect::Approximated,
        });
        let target = address(i);
        if !targets.iter().any(|t| t.target == target) {
            targets.push(LabelTarget {
                target,
                weight: f.weight,
                instance: instance.to_string(),
            });
        }
        note
    }
}

/// Adds a service, an upstream and routes for every labelled frontend
/// among `instances` to a copy of `base`; returns it with the report.
pub fn merge<'a>(
    base: &Declarative,
    instances: impl Iterator<Item = &'a pb::Instance>,
) -> (Declarative, Report) {
    let all: Vec<&pb::Instance> = instances.collect();
    let mut report = Report::default();
    let mut groups = Groups::default();
    let warn = |report: &mut Report, instance: &str, service: &str, n: Note| {
        report.warnings.push(Warning {
            instance: instance.to_string(),
            service: service.to_string(),
            key: n.key,
            message: n.message,
            effect: n.effect,
        });
    };

    // bronze.http.*: per instance, on its own address.
    for &i in all.iter().filter(|i| i.meta.contains_key(RULE)) {
        match bronze_frontend(&i.meta) {
            Err(n) => warn(&mut report, &i.id, &i.service, n),
            Ok((f, notes)) => {
                for n in notes {
                    warn(&mut report, &i.id, &i.service, n);
                }
                if routable(i)
                    && i.port != 0
                    && !i.address.is_empty()
                    && let Some(n) = groups.add(&f, i, &i.id)
                {
                    warn(&mut report, &i.id, &i.service, n);
                }
            }
        }
    }

    // traefik.*: per container, whose labels every instance carries.
    let containers = containers(&all);
    let enabled = |c: &Container<'_>| c.labels.get(ENABLE).map(|v| go_bool(v));
    // v2 middlewares are shared between containers, as Traefik's provider
    // merges every container's configuration.
    let mut middlewares = BTreeMap::new();
    for c in containers
        .iter()
        .filter(|c| enabled(c) != Some(Some(false)))
    {
        for (name, m) in v2::middlewares(&c.labels) {
            middlewares.entry(name).or_insert(m);
        }
    }
    for c in &containers {
        match enabled(c) {
            Some(Some(false)) => continue,
            Some(None) => {
                let value = c.labels.get(ENABLE).cloned().unwrap_or_default();
                warn(
                    &mut report,
                    &c.name,
                    &c.service,
                    Note {
                        key: ENABLE.into(),
                        message: format!("{value:?}: expected true or false"),
                        effect: Effect::LeftOut,
                    },
                );
                continue;
            }
            _ => {}
        }
        let parsed = if v2::applies(&c.labels) {
            v2::parse(&c.labels, &middlewares)
        } else {
            v1::parse(&c.labels)
        };
        for n in parsed.notes {
            warn(&mut report, &c.name, &c.service, n);
        }
        let lowest = c.ports.first().map(|(p, _)| *p);
        for f in &parsed.frontends {
            let Some(want) = f.port.or(lowest) else {
                continue;
            };
            let on_port: Vec<&pb::Instance> = c
                .ports
                .iter()
                .filter(|(p, _)| *p == want)
                .map(|(_, i)| *i)
                .collect();
            if on_port.is_empty() {
                let registered: Vec<String> = c.ports.iter().map(|(p, _)| p.to_string()).collect();
                warn(
                    &mut report,
                    &c.name,
                    &c.service,
                    Note {
                        key: f.port_key.clone(),
                        message: format!(
                            "port {want} of the container is not registered (registered: {}); publish it, or run the registrator with --internal",
                            registered.join(", ")
                        ),
                        effect: Effect::LeftOut,
                    },
                );
                continue;
            }
            for i in on_port {
                if routable(i) && i.port != 0 && !i.address.is_empty() {
                    groups.add(f, i, &c.name);
                }
            }
        }
    }

    let mut out = base.clone();
    for (name, (shape, mut targets)) in groups.by_name {
        targets.sort_by(|a, b| a.target.cmp(&b.target));
        out.upstreams.push(Upstream {
            name: name.clone(),
            targets: targets
                .iter()
                .map(|t| Target {
                    target: t.target.clone(),
                    weight: Some(t.weight),
                    ..Target::default()
                })
                .collect(),
            circuit_breaker: Some(CircuitBreaker {
                failures: Some(1),
                open_timeout: None,
            }),
            ..Upstream::default()
        });
        let kong: Vec<matcher::KongRoute> =
            shape.conjs.iter().flat_map(Conj::kong_routes).collect();
        let several = kong.len() > 1;
        let routes = kong
            .into_iter()
            .enumerate()
            .map(|(k, r)| {
                let mut plugins = Vec::new();
                let mut config = serde_json::Map::new();
                if let Some(p) = &r.forwarded_prefix {
                    config.insert(
                        "append".into(),
                        serde_json::json!({"headers": [format!("X-Forwarded-Prefix:{p}")]}),
                    );
                }
                if let Some(p) = &shape.replace_path {
                    config.insert("replace".into(), serde_json::json!({ "uri": p }));
                }
                if !config.is_empty() {
                    plugins.push(Plugin {
                        name: "request-transformer".into(),
                        config: Some(serde_json::Value::Object(config)),
                        ..Plugin::default()
                    });
                }
                Route {
                    name: if several {
                        format!("{name} #{}", k + 1)
                    } else {
                        name.clone()
                    },
                    hosts: r.hosts,
                    paths: r.paths,
                    methods: r.methods,
                    headers: r.headers,
                    strip_path: Some(r.strip),
                    preserve_host: Some(shape.preserve_host),
                    protocols: if shape.https_only {
                        vec!["https".into()]
                    } else {
                        Vec::new()
                    },
                    plugins,
                    ..Route::default()
                }
            })
            .collect();
        out.services.push(Service {
            name: name.clone(),
            host: Some(name.clone()),
            path: shape.add_prefix.clone(),
            routes,
            ..Service::default()
        });
        report.routes.push(LabelRoute { name, targets });
    }
    report.warnings.sort();
    report.warnings.dedup();
    (out, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, port: u32, meta: &[(&str, &str)]) -> pb::Instance {
        pb::Instance {
            id: id.into(),
            node: "n1".into(),
            service: "web".into(),
            address: "10.0.0.1".into(),
            port,
            meta: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            health: pb::HealthStatus::Passing as i32,
            ..Default::default()
        }
    }

    #[test]
    fn bronze_rules_parse() {
        let meta = |rule: &str| {
            [(RULE.to_string(), rule.to_string())]
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>()
        };
        let (f, _) = bronze_frontend(&meta(
            "Host(`a`, `b`) && Method(`GET`) && Header(`X-Canary`, `1`) && Path(`/a.b`)",
        ))
        .unwrap();
        let r = f.shape.conjs[0].kong_routes();
        assert_eq!(r[0].hosts, vec!["a", "b"]);
        assert_eq!(r[0].paths, vec!["~/a\\.b$"]);
        assert_eq!(r[0].headers["x-canary"], vec!["1"]);
        // || is one route with both hosts.
        let (f, _) = bronze_frontend(&meta("Host(`a`) || Host(`b`)")).unwrap();
        assert_eq!(f.shape.conjs.len(), 1);
        for bad in ["Hots(`a`)", "Host(a)", "Host(`a`", "", "Header(`x`)"] {
            assert!(bronze_frontend(&meta(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn instances_with_one_rule_share_a_weighted_upstream() {
        let rule = "Host(`shop.example.com`)";
        let all = [
            inst("blue", 1, &[(RULE, rule), (WEIGHT, "90")]),
            inst("green", 2, &[(RULE, rule), (WEIGHT, "10")]),
            inst("plain", 3, &[]),
            inst("broken", 4, &[(RULE, "Nope(`x`)")]),
            pb::Instance {
                health: pb::HealthStatus::Critical as i32,
                ..inst("sick", 5, &[(RULE, rule)])
            },
        ];
        let (d, report) = merge(&Declarative::default(), all.iter());
        assert_eq!(d.services.len(), 1);
        assert_eq!(d.upstreams[0].targets.len(), 2);
        assert_eq!(d.upstreams[0].targets[0].weight, Some(90));
        // A target that fails once is left out until its circuit's probe.
        assert_eq!(
            d.upstreams[0]
                .circuit_breaker
                .as_ref()
                .and_then(|c| c.failures),
            Some(1)
        );
        assert_eq!(d.services[0].routes[0].hosts, vec!["shop.example.com"]);
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        assert_eq!(report.warnings[0].instance, "broken");
        assert_eq!(report.warnings[0].key, RULE);
    }

    #[test]
    fn traefik_containers_route_by_container_port_and_share_rules() {
        let v1 = |id: &str, container: &str, port: &str, host_port: u32, weight: &str| {
            inst(
                id,
                host_port,
                &[
                    (CONTAINER, container),
                    (CONTAINER_PORT, port),
                    ("traefik.port", "8080"),
                    ("traefik.weight", weight),
                    (
                        "traefik.frontend.rule",
                        "Host:api.example.com;PathPrefixStrip:/v2/user",
                    ),
                ],
            )
        };
        let all = [
            // Blue publishes 8080 and 9090: only 8080 is routed.
            v1("b1", "blue", "8080", 32001, "3"),
            v1("b2", "blue", "9090", 32002, "3"),
            v1("g1", "green", "8080", 32003, "1"),
            // Disabled: registered, never routed.
            inst(
                "off",
                32004,
                &[
                    (CONTAINER, "off"),
                    ("traefik.enable", "false"),
                    ("traefik.frontend.rule", "Host:api.example.com"),
                ],
            ),
            // Names a port it does not have.
            inst(
                "lost",
                32005,
                &[
                    (CONTAINER, "lost"),
                    (CONTAINER_PORT, "80"),
                    ("traefik.port", "2368"),
                    ("traefik.frontend.rule", "Host:lost.example.com"),
                ],
            ),
        ];
        let (d, report) = merge(&Declarative::default(), all.iter());
        assert_eq!(d.upstreams.len(), 1, "{:?}", d.upstreams);
        let targets: Vec<(&str, Option<u32>)> = d.upstreams[0]
            .targets
            .iter()
            .map(|t| (t.target.as_str(), t.weight))
            .collect();
        assert_eq!(
            targets,
            vec![("10.0.0.1:32001", Some(3)), ("10.0.0.1:32003", Some(1))]
        );
        let route = &d.services[0].routes[0];
        assert_eq!(route.strip_path, Some(true));
        assert_eq!(route.plugins[0].name, "request-transformer");
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        let w = &report.warnings[0];
        assert_eq!(
            (w.instance.as_str(), w.key.as_str(), w.effect),
            ("n1/lost", "traefik.port", Effect::LeftOut)
        );
        assert!(w.message.contains("port 2368"), "{}", w.message);
    }

    #[test]
    fn a_bad_container_does_not_hide_the_others() {
        let all = [
            inst(
                "good",
                1,
                &[("traefik.http.routers.r.rule", "Host(`good.example`)")],
            ),
            inst(
                "bad",
                2,
                &[(
                    "traefik.http.routers.r.rule",
                    "Host(`bad.example`) && !Path(`/x`)",
                )],
            ),
            inst(
                "maybe",
                3,
                &[
                    ("traefik.enable", "maybe"),
                    ("traefik.frontend.rule", "Host:m"),
                ],
            ),
        ];
        let (d, mut report) = merge(&Declarative::default(), all.iter());
        assert_eq!(d.services.len(), 1);
        assert_eq!(d.services[0].routes[0].hosts, vec!["good.example"]);
        let keys: Vec<(&str, &str)> = report
            .warnings
            .iter()
            .map(|w| (w.instance.as_str(), w.key.as_str()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("bad", "traefik.http.routers.r.rule"),
                ("maybe", "traefik.enable")
            ]
        );
        // A route the table refuses moves to the warnings.
        let name = report.routes[0].name.clone();
        report.refused(&name, "no");
        assert!(report.routes.is_empty());
        assert_eq!(report.warnings.len(), 3);
    }
}
