//! Traefik v2 and v3 labels (`traefik.http.routers.R.rule`, ...), read the
//! way Traefik's Docker provider reads one container's labels:
//!
//! - every router needs a rule (Traefik's `defaultRule`, built from the
//!   provider's template, has no equivalent here: such a router is left
//!   out and said so);
//! - a router names its service, or takes the container's only one; a
//!   container that defines no service has one implicit service on its
//!   lowest port;
//! - `loadbalancer.server.port` picks the container port, `.weight` (v3)
//!   the server's weight, `.passhostheader` whether the Host is kept;
//! - middlewares are found by name (`@docker` allowed) on this container,
//!   then on any other routed one, as Traefik's provider merges them: a
//!   stripprefix becomes per-path stripping, addprefix the service's path,
//!   replacepath the upstream path; compress, retry, buffering and
//!   circuitbreaker only tune and are ignored with a warning; any other
//!   middleware (auth, allow-lists, redirects, headers, rate limits...) would
//!   change who may reach the backend or what it receives, so a router using
//!   one is left out rather than routed without it.
//!
//! Label names are case-insensitive, as Traefik's are; router, service and
//! middleware names are not.

use std::collections::{BTreeMap, BTreeSet};

use super::expr::{self, Call};
use super::matcher::{self, Conj, PathSpec};
use super::{Effect, Frontend, Note, Parsed, Shape, go_bool};

const HTTP: &str = "traefik.http.";

/// Whether a container's labels are in the v2/v3 dialect.
pub(crate) fn applies(labels: &BTreeMap<String, String>) -> bool {
    labels.keys().any(|k| {
        let k = k.to_ascii_lowercase();
        k.starts_with(HTTP) || k.starts_with("traefik.tcp.") || k.starts_with("traefik.udp.")
    })
}

/// A middleware defined by labels: its kind and options (lower case), and
/// the prefix of its labels (`traefik.http.middlewares.M`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Middleware {
    pub kind: String,
    pub options: BTreeMap<String, String>,
    pub key: String,
}

/// Labels grouped by object: name -> (property in lower case -> (label, value)).
type Objects = BTreeMap<String, BTreeMap<String, (String, String)>>;

fn objects(labels: &BTreeMap<String, String>, kind: &str) -> Objects {
    let prefix = format!("{HTTP}{kind}.");
    let mut out: Objects = BTreeMap::new();
    for (k, v) in labels {
        let Some(rest) = k
            .get(..prefix.len())
            .filter(|p| p.eq_ignore_ascii_case(&prefix))
            .map(|_| &k[prefix.len()..])
        else {
            continue;
        };
        let (name, prop) = rest.split_once('.').unwrap_or((rest, ""));
        out.entry(name.to_string())
            .or_default()
            .insert(prop.to_ascii_lowercase(), (k.clone(), v.clone()));
    }
    out
}

/// The middlewares a container's labels define, by name.
pub(crate) fn middlewares(labels: &BTreeMap<String, String>) -> BTreeMap<String, Middleware> {
    let mut out = BTreeMap::new();
    for (name, props) in objects(labels, "middlewares") {
        let mut kinds: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (prop, (_, value)) in props {
            let (kind, option) = prop.split_once('.').unwrap_or((prop.as_str(), ""));
            kinds
                .entry(kind.to_string())
                .or_default()
                .insert(option.to_string(), value);
        }
        // One kind per middleware; more is Traefik's error too.
        let kind = if kinds.len() == 1 {
            kinds.keys().next().cloned().unwrap_or_default()
        } else {
            format!("{} kinds", kinds.len())
        };
        let options = kinds.remove(&kind).unwrap_or_default();
        out.insert(
            name.clone(),
            Middleware {
                kind,
                options,
                key: format!("{HTTP}middlewares.{name}"),
            },
        );
    }
    out
}

/// What one matcher call matches; `Ok((conj, approximation))`.
pub(crate) fn call_conj(c: &Call) -> Result<(Conj, Option<String>), String> {
    let need = |n: usize| -> Result<(), String> {
        if c.args.len() < n {
            Err(format!("{}: expected at least {n} value(s)", c.name))
        } else {
            Ok(())
        }
    };
    let mut approx = None;
    let conj = match c.name.as_str() {
        "Host" | "HostHeader" => {
            need(1)?;
            Conj {
                hosts: Some(
                    c.args
                        .iter()
                        .map(|h| matcher::host(h))
                        .collect::<Result<_, _>>()?,
                ),
                ..Conj::default()
            }
        }
        "HostRegexp" => {
            need(1)?;
            let mut hosts = BTreeSet::new();
            for a in &c.args {
                let (h, approximate) = matcher::host_regexp(a)?;
                if approximate {
                    approx = Some(format!(
                        "HostRegexp(`{a}`) is routed as {h}, which also matches deeper names"
                    ));
                }
                hosts.insert(h);
            }
            Conj {
                hosts: Some(hosts),
                ..Conj::default()
            }
        }
        "Path" | "PathPrefix" => {
            need(1)?;
            let prefix = c.name == "PathPrefix";
            Conj {
                paths: Some(
                    c.args
                        .iter()
                        .map(|p| matcher::path(p, prefix).map(PathSpec::keep))
                        .collect::<Result<_, _>>()?,
                ),
                ..Conj::default()
            }
        }
        "PathRegexp" => {
            need(1)?;
            Conj {
                paths: Some(
                    c.args
                        .iter()
                        .map(|p| matcher::path_regexp(p).map(PathSpec::keep))
                        .collect::<Result<_, _>>()?,
                ),
                ..Conj::default()
            }
        }
        "Method" => {
            need(1)?;
            Conj {
                methods: Some(
                    c.args
                        .iter()
                        .map(|m| matcher::method(m))
                        .collect::<Result<_, _>>()?,
                ),
                ..Conj::default()
            }
        }
        "Header" | "Headers" => {
            let [k, v] = c.args.as_slice() else {
                return Err(format!("{}: expected (`name`, `value`)", c.name));
            };
            matcher::header(k, v)?
        }
        "HeaderRegexp" | "HeadersRegexp" | "Query" | "QueryRegexp" | "ClientIP" => {
            return Err(format!(
                "{}: Bronze's routes match hosts, paths, methods and exact header values only",
                c.name
            ));
        }
        "HostSNI" | "HostSNIRegexp" | "ALPN" => {
            return Err(format!("{}: a TCP matcher, not an HTTP one", c.name));
        }
        other => {
            return Err(format!(
                "{other}: unknown matcher (expected Host, HostRegexp, Path, PathPrefix, PathRegexp, Method or Header)"
            ));
        }
    };
    Ok((conj, approx))
}

/// A rule as merged alternatives; approximations are returned to be
/// reported.
pub(crate) fn rule(text: &str) -> Result<(Vec<Conj>, Vec<String>), String> {
    let alternatives = expr::dnf(&expr::parse(text)?)?;
    let mut approx = Vec::new();
    let mut conjs = Vec::new();
    for alt in alternatives {
        let mut acc = Some(Conj::default());
        for call in &alt {
            let (c, a) = call_conj(call)?;
            approx.extend(a);
            acc = match acc {
                Some(x) => x.and(&c)?,
                None => None,
            };
        }
        conjs.extend(acc);
    }
    if conjs.is_empty() {
        return Err("never matches (its conditions contradict each other)".into());
    }
    approx.sort();
    approx.dedup();
    Ok((matcher::merge(conjs), approx))
}

/// One service's server settings.
struct ServiceDef {
    port: Option<u16>,
    weight: u32,
    preserve_host: bool,
    /// Why a router using it is left out.
    refused: Option<Note>,
}

fn service(
    name: &str,
    props: &BTreeMap<String, (String, String)>,
    notes: &mut Vec<Note>,
) -> ServiceDef {
    let mut def = ServiceDef {
        port: None,
        weight: 1,
        preserve_host: true,
        refused: None,
    };
    for (prop, (key, value)) in props {
        let note = |effect, message: String| Note {
            key: key.clone(),
            message,
            effect,
        };
        match prop.as_str() {
            "loadbalancer.server.port" => match value.trim().parse::<u16>() {
                Ok(p) if p > 0 => def.port = Some(p),
                _ => {
                    def.refused = Some(note(
                        Effect::LeftOut,
                        format!("{value:?}: expected a port (1-65535)"),
                    ))
                }
            },
            "loadbalancer.server.weight" => match value.trim().parse::<u32>() {
                Ok(w) => def.weight = w.min(65535),
                Err(_) => notes.push(note(
                    Effect::Ignored,
                    format!("{value:?}: expected a whole number; weight 1 used"),
                )),
            },
            "loadbalancer.server.scheme" => {
                if !value.trim().eq_ignore_ascii_case("http") {
                    def.refused = Some(note(
                        Effect::LeftOut,
                        format!(
                            "{value:?}: label routes reach their servers over plain HTTP only"
                        ),
                    ));
                }
            }
            "loadbalancer.passhostheader" => match go_bool(value) {
                Some(b) => def.preserve_host = b,
                None => notes.push(note(
                    Effect::Ignored,
                    format!("{value:?}: expected true or false; the Host is kept"),
                )),
            },
            "loadbalancer.server.url" => {
                def.refused = Some(note(
                    Effect::LeftOut,
                    "a server URL instead of the container's address is not supported".into(),
                ))
            }
            p if p.starts_with("loadbalancer.") => notes.push(note(
                Effect::Ignored,
                "Bronze balances label routes round-robin by weight, with discovery's health checks; this setting is not applied".into(),
            )),
            _ => {
                def.refused = Some(note(
                    Effect::LeftOut,
                    format!("service {name}: only loadbalancer services are supported"),
                ))
            }
        }
    }
    def
}

/// Strips Traefik's provider suffix: `name@docker` is `name`; another
/// provider's object cannot be found in labels.
fn local_name(name: &str) -> Result<&str, String> {
    match name.split_once('@') {
        None => Ok(name),
        Some((n, "docker" | "swarm")) => Ok(n),
        Some((_, provider)) => Err(format!(
            "{name}: defined by Traefik's {provider} provider; Bronze reads labels only"
        )),
    }
}

/// What a router's middlewares do to its requests.
#[derive(Default)]
struct Rewrites {
    strip: Option<Vec<String>>,
    add_prefix: Option<String>,
    replace_path: Option<String>,
}

fn rewrites(
    list: &str,
    key: &str,
    own: &BTreeMap<String, Middleware>,
    others: &BTreeMap<String, Middleware>,
    notes: &mut Vec<Note>,
) -> Result<Rewrites, Note> {
    let refuse = |message: String| Note {
        key: key.to_string(),
        message,
        effect: Effect::LeftOut,
    };
    let mut r = Rewrites::default();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let local = local_name(name).map_err(&refuse)?;
        let m = own
            .get(local)
            .or_else(|| others.get(local))
            .ok_or_else(|| {
                refuse(format!(
                    "middleware {name} is not defined by any routed container"
                ))
            })?;
        match m.kind.as_str() {
            "stripprefix" => {
                if r.strip.is_some() || r.add_prefix.is_some() || r.replace_path.is_some() {
                    return Err(refuse(format!(
                        "{name}: a stripprefix after another path middleware is not supported"
                    )));
                }
                let prefixes = m.options.get("prefixes").cloned().unwrap_or_default();
                r.strip = Some(
                    prefixes
                        .split(',')
                        .map(|p| p.trim().to_string())
                        .filter(|p| !p.is_empty())
                        .collect(),
                );
                if m.options
                    .get("forceslash")
                    .is_some_and(|v| go_bool(v) == Some(false))
                {
                    notes.push(Note {
                        key: format!("{}.stripprefix.forceslash", m.key),
                        message: "a stripped path always starts with / here".into(),
                        effect: Effect::Approximated,
                    });
                }
            }
            "addprefix" => {
                let prefix = m.options.get("prefix").map(|p| p.trim()).unwrap_or("");
                if !prefix.starts_with('/') || r.add_prefix.is_some() || r.replace_path.is_some() {
                    return Err(refuse(format!(
                        "{name}: addprefix needs one prefix starting with /, once, before any replacepath"
                    )));
                }
                r.add_prefix = Some(prefix.to_string());
            }
            "replacepath" => {
                let path = m.options.get("path").map(|p| p.trim()).unwrap_or("");
                if !path.starts_with('/') || r.replace_path.is_some() || r.add_prefix.is_some() {
                    return Err(refuse(format!(
                        "{name}: replacepath needs a path starting with /, and no addprefix"
                    )));
                }
                r.replace_path = Some(path.to_string());
                notes.push(Note {
                    key: format!("{}.replacepath.path", m.key),
                    message: "the path is replaced; the original is not sent as X-Replaced-Path"
                        .into(),
                    effect: Effect::Approximated,
                });
            }
            "compress" | "retry" | "buffering" | "circuitbreaker" => notes.push(Note {
                key: m.key.clone(),
                message: format!(
                    "{name} ({}) only tunes how requests are served; not applied",
                    m.kind
                ),
                effect: Effect::Ignored,
            }),
            other => {
                return Err(refuse(format!(
                    "{name} ({other}): Bronze cannot apply this middleware to a label route, and routing without it could expose or change what it protects"
                )));
            }
        }
    }
    Ok(r)
}

/// Keeps the first reason a router is left out.
fn refuse(left_out: &mut Option<Note>, key: &str, message: String) {
    left_out.get_or_insert(Note {
        key: key.to_string(),
        message,
        effect: Effect::LeftOut,
    });
}

/// One container's v2/v3 labels; `others` are the middlewares every other
/// routed container defines.
pub(crate) fn parse(
    labels: &BTreeMap<String, String>,
    others: &BTreeMap<String, Middleware>,
) -> Parsed {
    let mut notes = Vec::new();
    let own = middlewares(labels);
    let routers = objects(labels, "routers");
    let services = objects(labels, "services");
    for k in labels.keys() {
        let lower = k.to_ascii_lowercase();
        if lower.starts_with("traefik.tcp.") || lower.starts_with("traefik.udp.") {
            notes.push(Note {
                key: k.clone(),
                message: "TCP and UDP routers are not supported by Bronze's HTTP gateway".into(),
                effect: Effect::LeftOut,
            });
        } else if lower.starts_with(HTTP)
            && !["routers.", "services.", "middlewares."]
                .iter()
                .any(|p| lower[HTTP.len()..].starts_with(p))
        {
            notes.push(Note {
                key: k.clone(),
                message: "unknown label; not applied".into(),
                effect: Effect::Ignored,
            });
        } else if !lower.starts_with(HTTP) && !super::CONTAINER_WIDE.contains(&lower.as_str()) {
            let message = if lower.starts_with("traefik.docker.") {
                "a Docker provider setting; not applied"
            } else {
                "a Traefik v1 label beside v2 labels: the v2 labels are used"
            };
            notes.push(Note {
                key: k.clone(),
                message: message.into(),
                effect: Effect::Ignored,
            });
        }
    }
    let mut defs: BTreeMap<String, ServiceDef> = services
        .iter()
        .map(|(name, props)| (name.clone(), service(name, props, &mut notes)))
        .collect();
    let implicit = defs.is_empty();
    if implicit {
        // The container's own service, on its lowest port.
        defs.insert(
            String::new(),
            ServiceDef {
                port: None,
                weight: 1,
                preserve_host: true,
                refused: None,
            },
        );
    }
    if routers.is_empty()
        && (labels
            .keys()
            .any(|k| k.to_ascii_lowercase().starts_with(HTTP)))
    {
        notes.push(Note {
            key: format!("{HTTP}routers"),
            message: "no router: Traefik's default rule (a Host built from the service name) is not applied by Bronze; give a router a rule".into(),
            effect: Effect::LeftOut,
        });
    }
    let mut frontends = Vec::new();
    for (name, props) in &routers {
        let key = |prop: &str| {
            props
                .get(prop)
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| format!("{HTTP}routers.{name}.{prop}"))
        };
        let mut router_notes = Vec::new();
        let mut left_out: Option<Note> = None;
        let mut https_only = false;
        for (prop, (k, v)) in props {
            let ignored = |message: &str| Note {
                key: k.clone(),
                message: message.to_string(),
                effect: Effect::Ignored,
            };
            match prop.as_str() {
                "rule" | "service" | "middlewares" => {}
                "priority" => router_notes.push(ignored(
                    "routes are ordered by Bronze's (Kong's) rules: exact hosts, then longer paths, then more conditions",
                )),
                "entrypoints" => router_notes.push(ignored(
                    "Bronze has one entry point: every route is served on the gateway's listeners",
                )),
                "tls" => match go_bool(v) {
                    Some(b) => https_only = b,
                    None => refuse(&mut left_out, k, format!("{v:?}: expected true or false")),
                },
                p if p.starts_with("tls.") => router_notes.push(ignored(
                    "certificates come from the gateway's TLS configuration",
                )),
                _ => router_notes.push(ignored("unknown router setting; not applied")),
            }
        }
        let Some((rule_key, text)) = props.get("rule") else {
            notes.push(Note {
                key: key("rule"),
                message: "no rule: Traefik's default rule (a Host built from the service name) is not applied by Bronze".into(),
                effect: Effect::LeftOut,
            });
            continue;
        };
        let (conjs, approx) = match rule(text) {
            Ok(r) => r,
            Err(e) => {
                notes.push(Note {
                    key: rule_key.clone(),
                    message: e,
                    effect: Effect::LeftOut,
                });
                continue;
            }
        };
        for a in approx {
            router_notes.push(Note {
                key: rule_key.clone(),
                message: a,
                effect: Effect::Approximated,
            });
        }
        // Its service.
        let mut wanted = match props.get("service") {
            Some((k, v)) => match local_name(v.trim()) {
                Ok(n) => Some((k.clone(), n.to_string())),
                Err(e) => {
                    refuse(&mut left_out, k, e);
                    None
                }
            },
            None => None,
        };
        let def = match (&wanted, defs.len()) {
            (Some((k, n)), _) => {
                let found = defs.get(n.as_str()).or_else(|| {
                    // A container without services of its own: the implicit
                    // one is Traefik's default service, named after the
                    // container's service.
                    implicit.then(|| defs.get("")).flatten()
                });
                if found.is_none() {
                    refuse(
                        &mut left_out,
                        k,
                        format!("service {n} is not defined by this container's labels"),
                    );
                }
                found
            }
            (None, 1) => {
                // The container's only service.
                wanted = defs.keys().next().map(|n| (key("service"), n.clone()));
                defs.values().next()
            }
            (None, _) => {
                refuse(
                    &mut left_out,
                    &key("service"),
                    "the container defines several services: name one".into(),
                );
                None
            }
        };
        let mut rewrite = Rewrites::default();
        if let Some((k, list)) = props.get("middlewares") {
            match rewrites(list, k, &own, others, &mut router_notes) {
                Ok(r) => rewrite = r,
                Err(n) => {
                    left_out.get_or_insert(n);
                }
            }
        }
        let conjs = match &rewrite.strip {
            None => Ok(conjs),
            Some(prefixes) => conjs
                .into_iter()
                .map(|c| c.strip_prefixes(prefixes))
                .collect::<Result<Vec<_>, _>>(),
        };
        let conjs = match conjs {
            Ok(c) => c,
            Err(e) => {
                let k = props
                    .get("middlewares")
                    .map(|(k, _)| k.clone())
                    .unwrap_or_else(|| key("middlewares"));
                left_out.get_or_insert(Note {
                    key: k,
                    message: e,
                    effect: Effect::LeftOut,
                });
                Vec::new()
            }
        };
        notes.append(&mut router_notes);
        if let Some(def) = def
            && let Some(n) = &def.refused
        {
            left_out.get_or_insert(n.clone());
        }
        if let Some(n) = left_out {
            notes.push(n);
            continue;
        }
        let Some(def) = def else { continue };
        // The label that named the port, or the rule when the port is the
        // container's lowest.
        let port_key = match (&wanted, def.port) {
            (Some((_, n)), Some(_)) => services
                .get(n)
                .and_then(|p| p.get("loadbalancer.server.port"))
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| format!("{HTTP}services.{n}.loadbalancer.server.port")),
            _ => key("rule"),
        };
        frontends.push(Frontend {
            shape: Shape {
                conjs,
                preserve_host: def.preserve_host,
                https_only,
                add_prefix: rewrite.add_prefix,
                replace_path: rewrite.replace_path,
            },
            name: None,
            port: def.port,
            weight: def.weight,
            port_key,
        });
    }
    Parsed { frontends, notes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::label_map as labels;

    fn routes(f: &Frontend) -> Vec<super::super::matcher::KongRoute> {
        f.shape.conjs.iter().flat_map(Conj::kong_routes).collect()
    }

    #[test]
    fn router_with_stripprefix_and_loadbalancer_port() {
        let l = labels(&[
            ("traefik.enable", "true"),
            (
                "traefik.http.routers.api.rule",
                "Host(`api.example.com`) && PathPrefix(`/api`)",
            ),
            ("traefik.http.routers.api.middlewares", "api-strip@docker"),
            ("traefik.http.routers.api.entrypoints", "web"),
            (
                "traefik.http.middlewares.api-strip.stripprefix.prefixes",
                "/api",
            ),
            ("traefik.http.services.api.loadBalancer.server.port", "9090"),
        ]);
        assert!(applies(&l));
        let p = parse(&l, &BTreeMap::new());
        assert_eq!(p.frontends.len(), 1, "{:?}", p.notes);
        let f = &p.frontends[0];
        assert_eq!(f.port, Some(9090));
        assert_eq!(
            f.port_key, "traefik.http.services.api.loadBalancer.server.port",
            "a missing port is reported against the label as written"
        );
        let r = routes(f);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].hosts, vec!["api.example.com"]);
        assert_eq!(r[0].paths, vec!["/api"]);
        assert!(r[0].strip);
        // The entry point is reported, not applied.
        assert_eq!(p.notes.len(), 1);
        assert_eq!(p.notes[0].key, "traefik.http.routers.api.entrypoints");
        assert_eq!(p.notes[0].effect, Effect::Ignored);
    }

    #[test]
    fn or_rules_and_several_routers() {
        let l = labels(&[
            (
                "traefik.http.routers.a.rule",
                "Host(`a.example`) || Host(`b.example`)",
            ),
            (
                "traefik.http.routers.b.rule",
                "(Host(`c.example`) && Path(`/x`)) || PathPrefix(`/y`)",
            ),
            ("traefik.http.routers.b.service", "web"),
            ("traefik.http.services.web.loadbalancer.server.port", "80"),
        ]);
        let p = parse(&l, &BTreeMap::new());
        assert_eq!(p.frontends.len(), 2, "{:?}", p.notes);
        let a = routes(&p.frontends[0]);
        assert_eq!(a.len(), 1, "one route, two hosts");
        assert_eq!(a[0].hosts, vec!["a.example", "b.example"]);
        let b = routes(&p.frontends[1]);
        assert_eq!(b.len(), 2, "two routes");
        assert_eq!(p.frontends[0].port, Some(80), "the only service");
    }

    #[test]
    fn what_cannot_be_honoured_is_left_out_by_name() {
        let others = middlewares(&labels(&[(
            "traefik.http.middlewares.auth.basicauth.users",
            "redacted",
        )]));
        for (extra, key, want) in [
            (
                vec![("traefik.http.routers.r.middlewares", "auth@docker")],
                "traefik.http.routers.r.middlewares",
                "(basicauth)",
            ),
            (
                vec![("traefik.http.routers.r.middlewares", "nope")],
                "traefik.http.routers.r.middlewares",
                "not defined",
            ),
            (
                vec![("traefik.http.routers.r.middlewares", "x@file")],
                "traefik.http.routers.r.middlewares",
                "file provider",
            ),
            (
                vec![
                    ("traefik.http.routers.r.service", "other"),
                    ("traefik.http.services.s.loadbalancer.server.port", "80"),
                ],
                "traefik.http.routers.r.service",
                "not defined",
            ),
            (
                vec![(
                    "traefik.http.services.s.loadbalancer.server.scheme",
                    "https",
                )],
                "traefik.http.services.s.loadbalancer.server.scheme",
                "plain HTTP",
            ),
            (
                vec![("traefik.http.services.s.loadbalancer.server.port", "http")],
                "traefik.http.services.s.loadbalancer.server.port",
                "expected a port",
            ),
        ] {
            let mut l = labels(&[("traefik.http.routers.r.rule", "Host(`a`)")]);
            l.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            let p = parse(&l, &others);
            assert!(p.frontends.is_empty(), "{extra:?}");
            let n = p
                .notes
                .iter()
                .find(|n| n.effect == Effect::LeftOut)
                .expect("a left-out note");
            assert_eq!(n.key, key, "{extra:?}");
            assert!(n.message.contains(want), "{extra:?}: {}", n.message);
        }
        // Bad rules, each named.
        for (rule, want) in [
            ("Host(`a`) && !Path(`/x`)", "negation"),
            ("Query(`a=b`)", "Query"),
            ("Hots(`a`)", "unknown matcher"),
            ("Host(`a`) && Host(`b`)", "never matches"),
            ("PathPrefix(`/a`) && Path(`/b`)", "two path matchers"),
            ("Host(`a`", "expected , or )"),
        ] {
            let p = parse(
                &labels(&[("traefik.http.routers.r.rule", rule)]),
                &BTreeMap::new(),
            );
            assert!(p.frontends.is_empty(), "{rule}");
            assert!(
                p.notes[0].message.contains(want),
                "{rule}: {}",
                p.notes[0].message
            );
        }
        // No router at all, and TCP routers.
        let p = parse(
            &labels(&[
                ("traefik.http.services.s.loadbalancer.server.port", "80"),
                ("traefik.tcp.routers.db.rule", "HostSNI(`*`)"),
            ]),
            &BTreeMap::new(),
        );
        assert!(p.frontends.is_empty());
        let keys: Vec<&str> = p.notes.iter().map(|n| n.key.as_str()).collect();
        assert!(keys.contains(&"traefik.http.routers"), "{keys:?}");
        assert!(keys.contains(&"traefik.tcp.routers.db.rule"), "{keys:?}");
    }

    #[test]
    fn shared_middlewares_tuning_ones_and_rewrites() {
        let others = middlewares(&labels(&[
            ("traefik.http.middlewares.gz.compress", "true"),
            ("traefik.http.middlewares.v2.addprefix.prefix", "/v2"),
        ]));
        let p = parse(
            &labels(&[
                ("traefik.http.routers.r.rule", "PathPrefix(`/a`)"),
                ("traefik.http.routers.r.middlewares", "gz,v2"),
                ("traefik.http.routers.r.priority", "10"),
                ("traefik.http.services.s.loadbalancer.server.weight", "3"),
                (
                    "traefik.http.services.s.loadbalancer.passhostheader",
                    "false",
                ),
            ]),
            &others,
        );
        assert_eq!(p.frontends.len(), 1, "{:?}", p.notes);
        let f = &p.frontends[0];
        assert_eq!(f.shape.add_prefix.as_deref(), Some("/v2"));
        assert_eq!(f.weight, 3);
        assert!(!f.shape.preserve_host);
        let ignored: Vec<&str> = p
            .notes
            .iter()
            .filter(|n| n.effect == Effect::Ignored)
            .map(|n| n.key.as_str())
            .collect();
        assert_eq!(
            ignored,
            vec![
                "traefik.http.routers.r.priority",
                "traefik.http.middlewares.gz"
            ]
        );
    }
}
