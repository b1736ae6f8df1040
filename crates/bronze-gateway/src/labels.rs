//! Routes from discovery, Traefik style: an instance whose metadata holds
//! `bronze.http.rule` (the registrator copies a container's `bronze.*`
//! labels into metadata) gets routed to, with no configuration call.
//!
//! - `bronze.http.rule`: `Host(`a.example.com`)`, `Host(`a`, `b`)`,
//!   `PathPrefix(`/v2/user`)`, `Path(`/exact`)`, `Method(`GET`)`,
//!   `Header(`X-Name`, `value`)`, joined by `&&` (`||` is not supported:
//!   use two instances or two rules).
//! - `bronze.http.strip_prefix`: `true` strips the PathPrefix (default
//!   false, as Traefik without a middleware).
//! - `bronze.http.weight`: 0-1000 (default 100). Every instance with the
//!   same rule joins one upstream, weighted: blue/green and canaries are
//!   two services (or versions) registered with one rule and two weights.
//!
//! Only passing and warning instances are routed to. The routes are added
//! after the declarative configuration's, as services named
//! `discovery:<rule>`.

use std::collections::{BTreeMap, HashMap};

use bronze_proto::discovery::v1 as pb;

use crate::declarative::{Declarative, Route, Service, Target, Upstream};

pub const RULE: &str = "bronze.http.rule";
pub const STRIP_PREFIX: &str = "bronze.http.strip_prefix";
pub const WEIGHT: &str = "bronze.http.weight";

/// What a rule matches.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rule {
    pub hosts: Vec<String>,
    pub paths: Vec<String>,
    pub methods: Vec<String>,
    pub headers: BTreeMap<String, Vec<String>>,
    /// Whether the path came from PathPrefix (strip_prefix applies).
    pub prefix: bool,
}

/// Arguments of `Name(`a`, `b`)`.
fn args(inner: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in inner.split(',') {
        let p = part.trim();
        let v = p
            .strip_prefix('`')
            .and_then(|p| p.strip_suffix('`'))
            .or_else(|| p.strip_prefix('"').and_then(|p| p.strip_suffix('"')))
            .ok_or_else(|| format!("{p:?}: expected a value in backquotes"))?;
        if v.is_empty() {
            return Err("empty value".into());
        }
        out.push(v.to_string());
    }
    Ok(out)
}

/// Parses a rule such as ``Host(`api.example.com`) && PathPrefix(`/v2`)``.
pub fn parse_rule(text: &str) -> Result<Rule, String> {
    if text.contains("||") || text.contains('!') {
        return Err("only && is supported (no ||, no !)".into());
    }
    let mut rule = Rule::default();
    for term in text.split("&&") {
        let term = term.trim();
        let (name, rest) = term
            .split_once('(')
            .ok_or_else(|| format!("{term:?}: expected Name(`value`)"))?;
        let inner = rest
            .strip_suffix(')')
            .ok_or_else(|| format!("{term:?}: missing )"))?;
        let values = args(inner).map_err(|e| format!("{term:?}: {e}"))?;
        match name.trim() {
            "Host" => rule.hosts.extend(values),
            "PathPrefix" => {
                rule.prefix = true;
                rule.paths.extend(values);
            }
            "Path" => rule.paths.extend(values.iter().map(|p| {
                let escaped = regex::escape(p);
                format!("~{escaped}$")
            })),
            "Method" => rule.methods.extend(values),
            "Header" => {
                let [k, v] = <[String; 2]>::try_from(values)
                    .map_err(|_| format!("{term:?}: expected Header(`name`, `value`)"))?;
                rule.headers
                    .entry(k.to_ascii_lowercase())
                    .or_default()
                    .push(v);
            }
            other => {
                return Err(format!(
                    "{other:?}: expected Host, PathPrefix, Path, Method or Header"
                ));
            }
        }
    }
    if rule.hosts.is_empty() && rule.paths.is_empty() && rule.methods.is_empty() {
        return Err("a rule needs Host, PathPrefix, Path or Method".into());
    }
    Ok(rule)
}

pub(crate) fn routable(i: &pb::Instance) -> bool {
    matches!(
        pb::HealthStatus::try_from(i.health),
        Ok(pb::HealthStatus::Passing | pb::HealthStatus::Warning | pb::HealthStatus::Unspecified)
    )
}

/// Adds a service, an upstream and a route for every distinct rule among
/// `instances` to a copy of `base`. Bad labels are skipped with a warning
/// naming the instance and the key.
pub fn merge<'a>(
    base: &Declarative,
    instances: impl Iterator<Item = &'a pb::Instance>,
) -> Declarative {
    let mut by_rule: BTreeMap<String, (Rule, bool, Vec<Target>)> = BTreeMap::new();
    let mut warned: HashMap<String, ()> = HashMap::new();
    for i in instances.filter(|i| routable(i)) {
        let Some(text) = i.meta.get(RULE) else {
            continue;
        };
        let rule = match parse_rule(text) {
            Ok(r) => r,
            Err(e) => {
                if warned.insert(i.id.clone(), ()).is_none() {
                    tracing::warn!(instance = %i.id, service = %i.service, key = RULE, error = %e, "route label ignored");
                }
                continue;
            }
        };
        let weight = match i.meta.get(WEIGHT).map(|w| w.trim().parse::<u32>()) {
            None => 100,
            Some(Ok(w)) if w <= 1000 => w,
            Some(_) => {
                tracing::warn!(instance = %i.id, key = WEIGHT, "expected 0-1000; using 100");
                100
            }
        };
        let strip = i
            .meta
            .get(STRIP_PREFIX)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if i.port == 0 || i.address.is_empty() {
            continue;
        }
        let address = if i.address.contains(':') {
            format!("[{}]:{}", i.address, i.port)
        } else {
            format!("{}:{}", i.address, i.port)
        };
        let entry = by_rule
            .entry(text.trim().to_string())
            .or_insert_with(|| (rule, strip, Vec::new()));
        entry.1 |= strip;
        entry.2.push(Target {
            target: address,
            weight: Some(weight),
            ..Target::default()
        });
    }
    let mut out = base.clone();
    for (text, (rule, strip, mut targets)) in by_rule {
        targets.sort_by(|a, b| a.target.cmp(&b.target));
        let name = format!("discovery:{text}");
        out.upstreams.push(Upstream {
            name: name.clone(),
            targets,
            ..Upstream::default()
        });
        out.services.push(Service {
            name: name.clone(),
            host: Some(name.clone()),
            routes: vec![Route {
                name,
                hosts: rule.hosts,
                paths: rule.paths,
                methods: rule.methods,
                headers: rule.headers,
                strip_path: Some(strip && rule.prefix),
                preserve_host: Some(true),
                ..Route::default()
            }],
            ..Service::default()
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse() {
        let r = parse_rule("Host(`api.example.com`) && PathPrefix(`/v2/user`)").unwrap();
        assert_eq!(r.hosts, vec!["api.example.com"]);
        assert_eq!(r.paths, vec!["/v2/user"]);
        assert!(r.prefix);
        let r = parse_rule(
            "Host(`a`, `b`) && Method(`GET`) && Header(`X-Canary`, `1`) && Path(`/a.b`)",
        )
        .unwrap();
        assert_eq!(r.hosts, vec!["a", "b"]);
        assert_eq!(r.paths, vec!["~/a\\.b$"]);
        assert_eq!(r.headers["x-canary"], vec!["1"]);
        for bad in [
            "Host(`a`) || Host(`b`)",
            "Hots(`a`)",
            "Host(a)",
            "Host(`a`",
            "",
            "Header(`x`)",
        ] {
            assert!(parse_rule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instances_with_one_rule_share_a_weighted_upstream() {
        let inst = |id: &str, port: u32, meta: &[(&str, &str)]| pb::Instance {
            id: id.into(),
            service: "web".into(),
            address: "10.0.0.1".into(),
            port,
            meta: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            health: pb::HealthStatus::Passing as i32,
            ..Default::default()
        };
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
        let d = merge(&Declarative::default(), all.iter());
        assert_eq!(d.services.len(), 1);
        assert_eq!(d.upstreams[0].targets.len(), 2);
        assert_eq!(d.upstreams[0].targets[0].weight, Some(90));
        assert_eq!(d.services[0].routes[0].hosts, vec!["shop.example.com"]);
    }
}
