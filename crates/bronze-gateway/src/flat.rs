//! Kong's flat declarative form (what the Admin API stores and `GET
//! /config` returns): top-level `routes` naming their `service` and
//! top-level `targets` naming their `upstream`, by name or id. Before a
//! document is compiled they are moved into their parents ([`nest`]); an
//! error the router reports on a moved entity is renamed back to the place
//! the user wrote it (`routes[3].paths[0]`, not `services[0].routes[7]...`).
//! Services and routes without a `name` (optional in Kong) are named by
//! their `id`, or else by their place (`services[0].routes[1]`).

use std::collections::HashMap;
use std::sync::Arc;

use crate::balancer::Registry;
use crate::declarative::{Declarative, Invalid, Ref};
use crate::router::Table;

/// Where moved entities came from: (nested prefix, original prefix).
#[derive(Debug, Default)]
pub struct Remap(Vec<(String, String)>);

impl Remap {
    /// Renames a field of the nested document to the original's.
    pub fn field(&self, field: &str) -> String {
        for (nested, original) in &self.0 {
            if let Some(rest) = field.strip_prefix(nested.as_str())
                && (rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
            {
                return format!("{original}{rest}");
            }
        }
        field.to_string()
    }
}

fn resolve(
    r: Option<&Ref>,
    by_key: &HashMap<&str, usize>,
    field: String,
    what: &str,
) -> Result<usize, Invalid> {
    let key = r
        .and_then(Ref::key)
        .ok_or_else(|| Invalid::new(&field, format!("expected the {what}'s name or id")))?;
    by_key
        .get(key)
        .copied()
        .ok_or_else(|| Invalid::new(&field, format!("{key:?}: no {what} with this name or id")))
}

/// The document with top-level routes and targets moved into their
/// service and upstream, and id-only entities named by their id.
pub fn nest(d: &Declarative) -> Result<(Declarative, Remap), Invalid> {
    let mut out = d.clone();
    let mut remap = Remap::default();
    let routes = std::mem::take(&mut out.routes);
    let targets = std::mem::take(&mut out.targets);
    for (i, s) in out.services.iter_mut().enumerate() {
        if s.name.is_empty() {
            s.name = s.id.clone().unwrap_or_else(|| format!("services[{i}]"));
        }
        for (j, r) in s.routes.iter_mut().enumerate() {
            if r.service.is_some() {
                return Err(Invalid::new(
                    format!("services[{i}].routes[{j}].service"),
                    "only a top-level route names its service",
                ));
            }
            if r.name.is_empty() {
                r.name =
                    r.id.clone()
                        .unwrap_or_else(|| format!("services[{i}].routes[{j}]"));
            }
        }
    }
    for (i, u) in out.upstreams.iter().enumerate() {
        if let Some(j) = u.targets.iter().position(|t| t.upstream.is_some()) {
            return Err(Invalid::new(
                format!("upstreams[{i}].targets[{j}].upstream"),
                "only a top-level target names its upstream",
            ));
        }
    }
    if !routes.is_empty() {
        let mut by_key = HashMap::new();
        for (i, s) in out.services.iter().enumerate() {
            by_key.insert(s.name.as_str(), i);
            if let Some(id) = &s.id {
                by_key.insert(id.as_str(), i);
            }
        }
        let mut placed = Vec::with_capacity(routes.len());
        for (k, mut r) in routes.into_iter().enumerate() {
            let i = resolve(
                r.service.as_ref(),
                &by_key,
                format!("routes[{k}].service"),
                "service",
            )?;
            r.service = None;
            if r.name.is_empty() {
                r.name = r.id.clone().unwrap_or_else(|| format!("routes[{k}]"));
            }
            placed.push((i, k, r));
        }
        for (i, k, r) in placed {
            let routes = &mut out.services[i].routes;
            remap.0.push((
                format!("services[{i}].routes[{}]", routes.len()),
                format!("routes[{k}]"),
            ));
            routes.push(r);
        }
    }
    if !targets.is_empty() {
        let mut by_key = HashMap::new();
        for (i, u) in out.upstreams.iter().enumerate() {
            by_key.insert(u.name.as_str(), i);
            if let Some(id) = &u.id {
                by_key.insert(id.as_str(), i);
            }
        }
        let mut placed = Vec::with_capacity(targets.len());
        for (k, mut t) in targets.into_iter().enumerate() {
            let i = resolve(
                t.upstream.as_ref(),
                &by_key,
                format!("targets[{k}].upstream"),
                "upstream",
            )?;
            t.upstream = None;
            placed.push((i, k, t));
        }
        for (i, k, t) in placed {
            let targets = &mut out.upstreams[i].targets;
            remap.0.push((
                format!("upstreams[{i}].targets[{}]", targets.len()),
                format!("targets[{k}]"),
            ));
            targets.push(t);
        }
    }
    // Longest prefixes first, so `routes[1]` never shadows `routes[10]`.
    remap.0.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    Ok((out, remap))
}

/// Compiles a document in either form; errors name the field as written.
pub fn compile(d: &Declarative, registry: &Arc<Registry>) -> Result<Table, Invalid> {
    let mut table = compile_routes(d, registry)?;
    table.certificates = Arc::new(crate::tls::Certificates::build(d)?);
    Ok(table)
}

/// The routing part of `compile`: the table without its certificates (a
/// rebuild for discovery's labels keeps those already parsed).
pub fn compile_routes(d: &Declarative, registry: &Arc<Registry>) -> Result<Table, Invalid> {
    let (nested, remap) = nest(d)?;
    Table::build_with(&nested, registry).map_err(|e| Invalid::new(remap.field(&e.field), e.message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::declarative::parse;

    #[test]
    fn top_level_routes_and_targets_join_their_parents() {
        let d = parse(
            br#"{"_format_version": "3.0",
                 "services": [{"name": "a", "host": "pool"}, {"id": "5f0c", "host": "b.internal", "port": 81}],
                 "upstreams": [{"name": "pool", "id": "u1"}],
                 "routes": [{"name": "r1", "paths": ["/a"], "service": "a"},
                            {"id": "r2", "paths": ["/b"], "service": {"id": "5f0c"}}],
                 "targets": [{"target": "127.0.0.1:9", "upstream": {"id": "u1"}}]}"#,
        )
        .unwrap();
        let (n, _) = nest(&d).unwrap();
        assert!(n.routes.is_empty() && n.targets.is_empty());
        assert_eq!(n.services[0].routes[0].name, "r1");
        assert_eq!(n.services[1].name, "5f0c");
        assert_eq!(n.services[1].routes[0].name, "r2");
        assert_eq!(n.upstreams[0].targets[0].target, "127.0.0.1:9");
        assert!(compile(&d, &Arc::default()).is_ok());
        // Kong's names are optional.
        let unnamed = parse(
            br#"{"_format_version": "3.0", "services": [{"url": "http://a:1", "routes": [{"paths": ["/"]}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            nest(&unnamed).unwrap().0.services[0].routes[0].name,
            "services[0].routes[0]"
        );
        assert!(compile(&unnamed, &Arc::default()).is_ok());

        // Errors on moved entities name them where they were written.
        let mut bad = d.clone();
        bad.routes[1].paths = vec!["nope".into()];
        assert_eq!(
            compile(&bad, &Arc::default()).unwrap_err().field,
            "routes[1].paths[0]"
        );
        let mut bad = d.clone();
        bad.targets[0].target = "no-port".into();
        assert_eq!(
            compile(&bad, &Arc::default()).unwrap_err().field,
            "targets[0].target"
        );
        let mut bad = d;
        bad.routes[0].service = Some(Ref::Key("missing".into()));
        let e = compile(&bad, &Arc::default()).unwrap_err();
        assert_eq!(e.field, "routes[0].service");
        assert!(e.message.contains("missing"), "{e}");
    }
}
