//! Traefik v1 labels (`traefik.frontend.rule=Host:a.example;PathPrefixStrip:/v2`),
//! read as Traefik 1.7's Docker provider reads one container's labels:
//!
//! - a rule is matchers separated by `;`, all of which must match; a
//!   matcher's values are separated by `,`, any of which may match
//!   (`Host:a.example,b.example`). Matchers: Host, HostRegexp, Path,
//!   PathStrip, PathStripRegex, PathPrefix, PathPrefixStrip,
//!   PathPrefixStripRegex, Method, Headers; modifiers AddPrefix and
//!   ReplacePath. HeadersRegexp, Query and ReplacePathRegex have no Bronze
//!   route equivalent and leave the frontend out.
//! - segments (`traefik.<segment>.frontend.rule`, `.port`, `.weight`, ...)
//!   are frontends of their own; container-wide labels are their defaults
//!   and, once a container has segments, no frontend of their own.
//! - `traefik.port` picks the container port (default: the lowest),
//!   `traefik.weight` the server's weight (default 1),
//!   `traefik.frontend.passHostHeader` whether the Host is kept.
//!   `traefik.backend` needs nothing: containers declaring the same rule
//!   share an upstream, weighted, whatever their backend's name.
//! - frontend settings that change who may reach the backend or what it
//!   receives (auth, whitelists, redirects, headers, error pages, rate
//!   limits, client certificates) cannot be applied by a label route: the
//!   frontend is left out. Tuning ones (entry points, priority, backend
//!   load-balancing, health checks, circuit breakers, buffering) are
//!   ignored with a warning.

use std::collections::BTreeMap;

use super::matcher::{self, Conj, PathSpec};
use super::{CONTAINER_WIDE, Effect, Frontend, Note, Parsed, Shape, go_bool};

/// A segment's own properties after `traefik.<segment>.`.
fn segment_property(rest: &str) -> bool {
    let lower = rest.to_ascii_lowercase();
    matches!(
        lower.as_str(),
        "port" | "portindex" | "portname" | "weight" | "protocol" | "backend"
    ) || (lower.starts_with("frontend.") && lower.len() > "frontend.".len())
}

/// Splits `traefik.X` into (segment, property): the segment is the
/// shortest prefix of X after which a segment property follows.
fn split(key: &str) -> (String, String) {
    let rest = &key["traefik.".len()..];
    let lower = rest.to_ascii_lowercase();
    if !lower.starts_with("frontend.") && !lower.starts_with("backend.") {
        for (i, _) in rest.match_indices('.') {
            if segment_property(&rest[i + 1..]) {
                return (rest[..i].to_string(), rest[i + 1..].to_string());
            }
        }
    }
    (String::new(), rest.to_string())
}

/// The parts of a v1 rule.
#[derive(Debug, Default)]
pub(crate) struct Rule {
    pub conj: Conj,
    pub add_prefix: Option<String>,
    pub replace_path: Option<String>,
    /// Where Bronze's route differs slightly.
    pub approximations: Vec<String>,
}

/// Parses a v1 frontend rule.
pub(crate) fn rule(text: &str) -> Result<Rule, String> {
    let mut out = Rule::default();
    let mut conj = Some(Conj::default());
    let mut any = false;
    for part in text.split(';').filter(|p| !p.trim().is_empty()) {
        let (name, values) = part
            .split_once(':')
            .ok_or_else(|| format!("{part:?}: expected Matcher:value"))?;
        let name = name.trim();
        let values: Vec<&str> = values
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        if values.is_empty() {
            return Err(format!("{name}: no value"));
        }
        let path_spec = |prefix: bool, strip: bool, v: &str| {
            matcher::path(v, prefix).map(|m| PathSpec { m, strip })
        };
        let paths = |prefix: bool, strip: bool| -> Result<Conj, String> {
            Ok(Conj {
                paths: Some(
                    values
                        .iter()
                        .map(|v| path_spec(prefix, strip, v))
                        .collect::<Result<_, _>>()?,
                ),
                ..Conj::default()
            })
        };
        let c = match name {
            "Host" => Conj {
                hosts: Some(
                    values
                        .iter()
                        .map(|h| matcher::host(h))
                        .collect::<Result<_, _>>()?,
                ),
                ..Conj::default()
            },
            "HostRegexp" => {
                let mut hosts = std::collections::BTreeSet::new();
                for v in &values {
                    let (h, approximate) = matcher::host_regexp(v)?;
                    if approximate {
                        out.approximations.push(format!(
                            "HostRegexp:{v} is routed as {h}, which also matches deeper names"
                        ));
                    }
                    hosts.insert(h);
                }
                Conj {
                    hosts: Some(hosts),
                    ..Conj::default()
                }
            }
            "Path" => paths(false, false)?,
            "PathStrip" | "PathStripRegex" => paths(false, true)?,
            "PathPrefix" => paths(true, false)?,
            "PathPrefixStrip" | "PathPrefixStripRegex" => paths(true, true)?,
            "Method" => Conj {
                methods: Some(
                    values
                        .iter()
                        .map(|m| matcher::method(m))
                        .collect::<Result<_, _>>()?,
                ),
                ..Conj::default()
            },
            "Headers" => {
                if !values.len().is_multiple_of(2) {
                    return Err("Headers: expected name, value pairs".into());
                }
                let mut acc = Some(Conj::default());
                for pair in values.chunks(2) {
                    let h = matcher::header(pair[0], pair[1])?;
                    acc = match acc {
                        Some(a) => a.and(&h)?,
                        None => None,
                    };
                }
                match acc {
                    Some(c) => c,
                    None => return Err("Headers: never matches".into()),
                }
            }
            "AddPrefix" | "ReplacePath" => {
                let v = values[values.len() - 1];
                if !v.starts_with('/') {
                    return Err(format!("{name}:{v}: expected a path starting with /"));
                }
                if name == "AddPrefix" {
                    out.add_prefix = Some(v.to_string());
                } else {
                    out.replace_path = Some(v.to_string());
                    out.approximations.push(
                        "ReplacePath: the original path is not sent as X-Replaced-Path".into(),
                    );
                }
                continue;
            }
            "HeadersRegexp" | "Query" | "ReplacePathRegex" => {
                return Err(format!(
                    "{name}: Bronze's routes match hosts, paths, methods and exact header values, and rewrite paths by prefix only"
                ));
            }
            other => {
                return Err(format!(
                    "{other:?}: unknown matcher (expected Host, HostRegexp, Path, PathStrip, PathPrefix, PathPrefixStrip, Method, Headers, AddPrefix, ...)"
                ));
            }
        };
        any = true;
        conj = match conj {
            Some(a) => a.and(&c)?,
            None => None,
        };
    }
    if !any {
        return Err("no matcher (expected e.g. Host:a.example.com)".into());
    }
    out.conj = conj.ok_or("never matches (its conditions contradict each other)")?;
    Ok(out)
}

/// One segment's labels: property (lower case) -> (label, value).
type Segment = BTreeMap<String, (String, String)>;

/// A container's v1 labels as frontends.
pub(crate) fn parse(labels: &BTreeMap<String, String>) -> Parsed {
    let mut segments: BTreeMap<String, Segment> = BTreeMap::new();
    for (k, v) in labels {
        if !k.starts_with("traefik.") || CONTAINER_WIDE.contains(&k.to_ascii_lowercase().as_str()) {
            continue;
        }
        let (segment, prop) = split(k);
        segments
            .entry(segment)
            .or_default()
            .insert(prop.to_ascii_lowercase(), (k.clone(), v.clone()));
    }
    // Container-wide labels are the segments' defaults.
    let defaults = segments.remove("").unwrap_or_default();
    if segments.is_empty() {
        segments.insert(String::new(), defaults);
    } else {
        for s in segments.values_mut() {
            for (p, kv) in &defaults {
                s.entry(p.clone()).or_insert_with(|| kv.clone());
            }
        }
    }
    let mut out = Parsed::default();
    for (name, props) in &segments {
        if let Some(f) = frontend(name, props, &mut out.notes) {
            out.frontends.push(f);
        }
    }
    out
}

fn frontend(segment: &str, props: &Segment, notes: &mut Vec<Note>) -> Option<Frontend> {
    let label = |prop: &str| {
        props.get(prop).map(|(k, _)| k.clone()).unwrap_or_else(|| {
            if segment.is_empty() {
                format!("traefik.{prop}")
            } else {
                format!("traefik.{segment}.{prop}")
            }
        })
    };
    let mut left_out: Option<Note> = None;
    let mut mine = Vec::new();
    let mut port = None;
    let mut weight = 1u32;
    let mut preserve_host = true;
    for (prop, (key, value)) in props {
        let note = |effect, message: &str| Note {
            key: key.clone(),
            message: message.to_string(),
            effect,
        };
        let mut refuse = |message: String| {
            left_out.get_or_insert(Note {
                key: key.clone(),
                message,
                effect: Effect::LeftOut,
            });
        };
        match prop.as_str() {
            "frontend.rule" | "backend" => {}
            "port" => match value.trim().parse::<u16>() {
                Ok(p) if p > 0 => port = Some(p),
                _ => refuse(format!("{value:?}: expected a port (1-65535)")),
            },
            "portindex" | "portname" => {
                refuse("not supported: name the port with traefik.port".into())
            }
            "weight" => match value.trim().parse::<i64>() {
                Ok(w) if w >= 0 => weight = w.min(65535) as u32,
                _ => mine.push(note(
                    Effect::Ignored,
                    "expected a whole number from 0; weight 1 used",
                )),
            },
            "protocol" => {
                if !value.trim().eq_ignore_ascii_case("http") {
                    refuse(format!(
                        "{value:?}: label routes reach their servers over plain HTTP only"
                    ));
                }
            }
            "frontend.passhostheader" => match go_bool(value) {
                Some(b) => preserve_host = b,
                None => mine.push(note(
                    Effect::Ignored,
                    "expected true or false; the Host is kept",
                )),
            },
            "frontend.priority" => mine.push(note(
                Effect::Ignored,
                "routes are ordered by Bronze's (Kong's) rules: exact hosts, then longer paths, then more conditions",
            )),
            "frontend.entrypoints" => mine.push(note(
                Effect::Ignored,
                "Bronze has one entry point: every route is served on the gateway's listeners",
            )),
            "frontend.passtlscert" if go_bool(value) == Some(false) => {}
            p if p.starts_with("frontend.auth")
                || p.starts_with("frontend.whitelist")
                || p.starts_with("frontend.redirect")
                || p.starts_with("frontend.headers")
                || p.starts_with("frontend.errors")
                || p.starts_with("frontend.ratelimit")
                || p.starts_with("frontend.passtls") =>
            {
                refuse(
                    "Bronze cannot apply this to a label route, and routing without it could expose or change what it protects".into(),
                )
            }
            p if p.starts_with("backend.") => mine.push(note(
                Effect::Ignored,
                "Bronze balances label routes round-robin by weight, with discovery's health checks; this setting is not applied",
            )),
            "domain" | "tags" => mine.push(note(
                Effect::Ignored,
                "used by Traefik's default rule and constraints, which Bronze does not apply",
            )),
            _ => mine.push(note(Effect::Ignored, "unknown label; not applied")),
        }
    }
    let Some((rule_key, text)) = props.get("frontend.rule") else {
        notes.extend(mine);
        notes.push(Note {
            key: label("frontend.rule"),
            message: "no frontend rule: Traefik's default rule (Host:<service>.<domain>) is not applied by Bronze; set traefik.frontend.rule".into(),
            effect: Effect::LeftOut,
        });
        return None;
    };
    let parsed = match rule(text) {
        Ok(r) => r,
        Err(e) => {
            notes.extend(mine);
            notes.push(Note {
                key: rule_key.clone(),
                message: e,
                effect: Effect::LeftOut,
            });
            return None;
        }
    };
    for a in &parsed.approximations {
        mine.push(Note {
            key: rule_key.clone(),
            message: a.clone(),
            effect: Effect::Approximated,
        });
    }
    notes.extend(mine);
    if let Some(n) = left_out {
        notes.push(n);
        return None;
    }
    Some(Frontend {
        shape: Shape {
            conjs: vec![parsed.conj],
            preserve_host,
            https_only: false,
            add_prefix: parsed.add_prefix,
            replace_path: parsed.replace_path,
        },
        name: None,
        port,
        weight,
        port_key: label("port"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::label_map as labels;

    #[test]
    fn the_seeds_rule_port_and_weight() {
        let p = parse(&labels(&[
            ("traefik.docker.network", "traefik_public"),
            ("traefik.weight", "100"),
            ("traefik.port", "2368"),
            (
                "traefik.frontend.rule",
                "Host:api.mydomain.com;PathPrefixStrip:/v2/user",
            ),
        ]));
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        let f = &p.frontends[0];
        assert_eq!((f.port, f.weight), (Some(2368), 100));
        let r = f.shape.conjs[0].kong_routes();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].hosts, vec!["api.mydomain.com"]);
        assert_eq!(r[0].paths, vec!["/v2/user"]);
        assert!(r[0].strip);
        assert_eq!(r[0].forwarded_prefix.as_deref(), Some("/v2/user"));
    }

    #[test]
    fn matchers_values_and_modifiers() {
        let r =
            rule("Host: a.example , b.example ;Method:get,POST;Headers:X-A,1,X-B,2;AddPrefix:/p")
                .unwrap();
        assert_eq!(r.conj.hosts.as_ref().map(|h| h.len()), Some(2));
        assert_eq!(
            r.conj.methods.iter().flatten().cloned().collect::<Vec<_>>(),
            vec!["GET", "POST"]
        );
        assert_eq!(r.conj.headers.len(), 2);
        assert_eq!(r.add_prefix.as_deref(), Some("/p"));
        let r = rule("PathPrefixStrip:/a,/b/{id:[0-9]+}").unwrap();
        let routes = r.conj.kong_routes();
        assert_eq!(routes.len(), 2, "a stripped path per route");
        assert!(routes.iter().all(|r| r.strip));
        assert_eq!(routes[1].paths, vec!["~^/b/(?:[0-9]+)"]);
        assert_eq!(
            routes[1].forwarded_prefix, None,
            "a pattern's prefix varies"
        );
        let r = rule("HostRegexp:{sub}.example.com;PathStrip:/exact").unwrap();
        assert_eq!(r.approximations.len(), 1);
        assert_eq!(
            r.conj.kong_routes()[0].paths,
            vec!["~/exact$"],
            "an exact path"
        );
    }

    #[test]
    fn bad_rules_are_named() {
        for (bad, want) in [
            ("", "no matcher"),
            ("Host", "expected Matcher:value"),
            ("Host:", "no value"),
            ("Hots:a", "unknown matcher"),
            ("Query:a=b", "Query"),
            ("HeadersRegexp:X,a.*", "HeadersRegexp"),
            ("Headers:X-A", "pairs"),
            ("Host:a;Host:b", "never matches"),
            ("PathPrefix:/a;Path:/b", "two path matchers"),
            ("Host:bad host", "expected a host name"),
            ("PathPrefix:relative", "starts with /"),
            ("AddPrefix:x;Host:a", "starting with /"),
        ] {
            let e = rule(bad).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn segments_defaults_and_refusals() {
        let p = parse(&labels(&[
            ("traefik.port", "80"),
            ("traefik.weight", "5"),
            ("traefik.web.frontend.rule", "Host:web.example"),
            ("traefik.admin.frontend.rule", "Host:admin.example"),
            ("traefik.admin.port", "8080"),
            ("traefik.frontend.entryPoints", "http,https"),
        ]));
        assert_eq!(p.frontends.len(), 2, "{:?}", p.notes);
        let ports: Vec<(Option<u16>, u32)> =
            p.frontends.iter().map(|f| (f.port, f.weight)).collect();
        assert_eq!(ports, vec![(Some(8080), 5), (Some(80), 5)]);
        // The entry points default reaches both segments: one note each.
        assert_eq!(p.notes.len(), 2);
        assert!(p.notes.iter().all(|n| n.effect == Effect::Ignored));

        for (extra, want_key) in [
            (
                ("traefik.frontend.auth.basic.users", "x"),
                "traefik.frontend.auth.basic.users",
            ),
            (
                ("traefik.frontend.headers.SSLRedirect", "true"),
                "traefik.frontend.headers.SSLRedirect",
            ),
            (("traefik.port", "http"), "traefik.port"),
            (("traefik.protocol", "https"), "traefik.protocol"),
        ] {
            let p = parse(&labels(&[("traefik.frontend.rule", "Host:a"), extra]));
            assert!(p.frontends.is_empty(), "{extra:?}");
            let n = p
                .notes
                .iter()
                .find(|n| n.effect == Effect::LeftOut)
                .expect("left out");
            assert_eq!(n.key, want_key);
        }
        let p = parse(&labels(&[("traefik.port", "80")]));
        assert!(p.frontends.is_empty());
        assert_eq!(p.notes[0].key, "traefik.frontend.rule");
        let p = parse(&labels(&[
            ("traefik.frontend.rule", "Host:a"),
            ("traefik.weight", "-1"),
        ]));
        assert_eq!(p.frontends[0].weight, 1);
        assert_eq!(p.notes[0].key, "traefik.weight");
    }
}
