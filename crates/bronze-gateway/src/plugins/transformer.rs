//! request-transformer and response-transformer: headers (and, for
//! requests, the query string) removed, renamed, replaced, added and
//! appended, in Kong's order and with Kong's `name:value` syntax; the
//! request's `http_method` and its upstream path (`replace.uri`, the whole
//! path sent upstream, as Kong's `set_path`). Body transformations
//! (`body`, `json`) and `$(...)` templates are refused by name: Bronze
//! does not buffer bodies.

use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use super::key_auth::percent_decode;
use super::{Answer, Ctx, Plugin, parse_config};
use crate::declarative::Invalid;

/// Kong's configuration of request-transformer with nothing set, as Kong
/// shows it (3.9's `kong/plugins/request-transformer/schema.lua`): every
/// section, each list empty.
pub(crate) fn request_defaults() -> serde_json::Value {
    let lists = serde_json::json!({"body": [], "headers": [], "querystring": []});
    let mut replace = lists.clone();
    replace["uri"] = serde_json::Value::Null;
    serde_json::json!({
        "http_method": null,
        "remove": lists,
        "rename": lists,
        "replace": replace,
        "add": lists,
        "append": lists,
    })
}

/// Kong's configuration of response-transformer with nothing set, as Kong
/// shows it (3.9's `kong/plugins/response-transformer/schema.lua`).
pub(crate) fn response_defaults() -> serde_json::Value {
    let lists = serde_json::json!({"json": [], "headers": []});
    let typed = serde_json::json!({"json": [], "json_types": [], "headers": []});
    serde_json::json!({
        "remove": lists,
        "rename": lists,
        "replace": typed,
        "add": typed,
        "append": typed,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Section {
    #[serde(default)]
    headers: Option<Vec<String>>,
    #[serde(default)]
    querystring: Option<Vec<String>>,
    #[serde(default)]
    body: Option<Vec<String>>,
    #[serde(default)]
    json: Option<Vec<String>>,
    #[serde(default)]
    json_types: Option<Vec<String>>,
    #[serde(default)]
    uri: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    http_method: Option<String>,
    #[serde(default)]
    remove: Option<Section>,
    #[serde(default)]
    rename: Option<Section>,
    #[serde(default)]
    replace: Option<Section>,
    #[serde(default)]
    add: Option<Section>,
    #[serde(default)]
    append: Option<Section>,
}

/// Operations on one kind of pairs (headers or query parameters), in
/// Kong's order.
struct Ops<N, V> {
    remove: Vec<N>,
    rename: Vec<(N, N)>,
    replace: Vec<(N, V)>,
    add: Vec<(N, V)>,
    append: Vec<(N, V)>,
}

impl<N, V> Default for Ops<N, V> {
    fn default() -> Self {
        Self {
            remove: Vec::new(),
            rename: Vec::new(),
            replace: Vec::new(),
            add: Vec::new(),
            append: Vec::new(),
        }
    }
}

impl<N, V> Ops<N, V> {
    fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.replace.is_empty()
            && self.add.is_empty()
            && self.append.is_empty()
    }
}

type HeaderOps = Ops<HeaderName, HeaderValue>;
type QueryOps = Ops<String, String>;

fn split_pair(s: &str) -> Option<(&str, &str)> {
    let (k, v) = s.split_once(':')?;
    (!k.is_empty()).then_some((k, v))
}

fn no_template(s: &str, field: &str) -> Result<(), Invalid> {
    if s.contains("$(") {
        return Err(Invalid::new(
            field,
            "not implemented: templates ($(...)) are not supported in Bronze",
        ));
    }
    Ok(())
}

fn header_name(s: &str, field: &str) -> Result<HeaderName, Invalid> {
    HeaderName::from_bytes(s.trim().to_ascii_lowercase().as_bytes())
        .map_err(|_| Invalid::new(field, format!("{s:?}: expected a header name")))
}

fn header_ops(c: &Config, field: &str) -> Result<HeaderOps, Invalid> {
    let mut ops = HeaderOps::default();
    let list = |s: &Option<Section>| {
        s.as_ref()
            .and_then(|s| s.headers.clone())
            .unwrap_or_default()
    };
    for (i, n) in list(&c.remove).iter().enumerate() {
        ops.remove
            .push(header_name(n, &format!("{field}.remove.headers[{i}]"))?);
    }
    for (i, p) in list(&c.rename).iter().enumerate() {
        let f = format!("{field}.rename.headers[{i}]");
        let (a, b) = split_pair(p).ok_or_else(|| Invalid::new(&f, "expected old:new"))?;
        ops.rename.push((header_name(a, &f)?, header_name(b, &f)?));
    }
    for (section, target, name) in [
        (&c.replace, &mut ops.replace, "replace"),
        (&c.add, &mut ops.add, "add"),
        (&c.append, &mut ops.append, "append"),
    ] {
        for (i, p) in list(section).iter().enumerate() {
            let f = format!("{field}.{name}.headers[{i}]");
            no_template(p, &f)?;
            let (k, v) = split_pair(p).ok_or_else(|| Invalid::new(&f, "expected name:value"))?;
            let v = HeaderValue::from_str(v.trim_start())
                .map_err(|_| Invalid::new(&f, "expected a header-safe value"))?;
            target.push((header_name(k, &f)?, v));
        }
    }
    Ok(ops)
}

fn query_ops(c: &Config, field: &str) -> Result<QueryOps, Invalid> {
    let mut ops = QueryOps::default();
    let list = |s: &Option<Section>| {
        s.as_ref()
            .and_then(|s| s.querystring.clone())
            .unwrap_or_default()
    };
    ops.remove = list(&c.remove);
    for (i, p) in list(&c.rename).iter().enumerate() {
        let f = format!("{field}.rename.querystring[{i}]");
        let (a, b) = split_pair(p).ok_or_else(|| Invalid::new(&f, "expected old:new"))?;
        ops.rename.push((a.into(), b.into()));
    }
    for (section, target, name) in [
        (&c.replace, &mut ops.replace, "replace"),
        (&c.add, &mut ops.add, "add"),
        (&c.append, &mut ops.append, "append"),
    ] {
        for (i, p) in list(section).iter().enumerate() {
            let f = format!("{field}.{name}.querystring[{i}]");
            no_template(p, &f)?;
            let (k, v) = split_pair(p).ok_or_else(|| Invalid::new(&f, "expected name:value"))?;
            target.push((k.into(), v.into()));
        }
    }
    Ok(ops)
}

/// Refuses what needs the body (or is not built) by name.
fn refuse(c: &Config, field: &str, request: bool) -> Result<(), Invalid> {
    let query_ok = request;
    if !request && c.http_method.is_some() {
        return Err(Invalid::new(
            format!("{field}.http_method"),
            "unknown field: a response has no method",
        ));
    }
    for (s, name) in [
        (&c.remove, "remove"),
        (&c.rename, "rename"),
        (&c.replace, "replace"),
        (&c.add, "add"),
        (&c.append, "append"),
    ] {
        let Some(s) = s else { continue };
        for (v, what) in [
            (&s.body, "body"),
            (&s.json, "json"),
            (&s.json_types, "json_types"),
        ] {
            if v.as_ref().is_some_and(|v| !v.is_empty()) {
                return Err(Invalid::new(
                    format!("{field}.{name}.{what}"),
                    "not implemented: Bronze does not transform bodies",
                ));
            }
        }
        if s.uri.is_some() && !(request && name == "replace") {
            return Err(Invalid::new(
                format!("{field}.{name}.uri"),
                "unknown field: only replace.uri exists, on requests",
            ));
        }
        if !query_ok && s.querystring.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(Invalid::new(
                format!("{field}.{name}.querystring"),
                "unknown field: a response has no query string",
            ));
        }
    }
    Ok(())
}

fn apply_headers(ops: &HeaderOps, h: &mut HeaderMap) {
    for n in &ops.remove {
        h.remove(n);
    }
    for (from, to) in &ops.rename {
        let values: Vec<HeaderValue> = h.get_all(from).iter().cloned().collect();
        if !values.is_empty() {
            h.remove(from);
            for v in values {
                h.append(to.clone(), v);
            }
        }
    }
    for (n, v) in &ops.replace {
        if h.contains_key(n) {
            h.insert(n.clone(), v.clone());
        }
    }
    for (n, v) in &ops.add {
        if !h.contains_key(n) {
            h.insert(n.clone(), v.clone());
        }
    }
    for (n, v) in &ops.append {
        h.append(n.clone(), v.clone());
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Applies `ops` to a query string (None: no query).
fn apply_query(ops: &QueryOps, query: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode(k).into_owned(),
                percent_decode(v).into_owned(),
            )
        })
        .collect();
    pairs.retain(|(k, _)| !ops.remove.contains(k));
    for (from, to) in &ops.rename {
        for (k, _) in pairs.iter_mut().filter(|(k, _)| k == from) {
            k.clone_from(to);
        }
    }
    for (n, v) in &ops.replace {
        for (_, value) in pairs.iter_mut().filter(|(k, _)| k == n) {
            value.clone_from(v);
        }
    }
    for (n, v) in &ops.add {
        if !pairs.iter().any(|(k, _)| k == n) {
            pairs.push((n.clone(), v.clone()));
        }
    }
    for (n, v) in &ops.append {
        pairs.push((n.clone(), v.clone()));
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub struct RequestTransformer {
    headers: HeaderOps,
    query: QueryOps,
    method: Option<http::Method>,
    /// `replace.uri`: the path sent upstream instead of the service's path
    /// and the rest of the request's.
    path: Option<std::sync::Arc<str>>,
}

impl RequestTransformer {
    pub fn new(config: Option<&serde_json::Value>, field: &str) -> Result<Self, Invalid> {
        let c: Config = parse_config(config, field)?;
        refuse(&c, field, true)?;
        let method = match &c.http_method {
            None => None,
            Some(m) => Some(
                http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .ok()
                    .filter(|_| !m.is_empty())
                    .ok_or_else(|| {
                        Invalid::new(
                            format!("{field}.http_method"),
                            format!("{m:?}: expected an HTTP method"),
                        )
                    })?,
            ),
        };
        let path = match c.replace.as_ref().and_then(|r| r.uri.as_deref()) {
            None => None,
            Some(p) => {
                let f = format!("{field}.replace.uri");
                no_template(p, &f)?;
                if !p.starts_with('/') || p.contains(['?', '#']) {
                    return Err(Invalid::new(
                        f,
                        format!("{p:?}: expected a path starting with / (no query)"),
                    ));
                }
                http::uri::PathAndQuery::try_from(p)
                    .map_err(|_| Invalid::new(&f, format!("{p:?}: not a valid path")))?;
                Some(std::sync::Arc::from(p))
            }
        };
        Ok(Self {
            headers: header_ops(&c, field)?,
            query: query_ops(&c, field)?,
            method,
            path,
        })
    }
}

impl Plugin for RequestTransformer {
    fn name(&self) -> &'static str {
        "request-transformer"
    }

    fn priority(&self) -> i32 {
        801
    }

    fn access(&self, req: &mut http::request::Parts, ctx: &mut Ctx) -> Result<(), Answer> {
        if let Some(m) = &self.method {
            req.method = m.clone();
        }
        if let Some(p) = &self.path {
            ctx.upstream_path = Some(p.clone());
        }
        apply_headers(&self.headers, &mut req.headers);
        if !self.query.is_empty() {
            let q = apply_query(&self.query, req.uri.query());
            let mut pq = req.uri.path().to_string();
            if !q.is_empty() {
                pq.push('?');
                pq.push_str(&q);
            }
            let mut parts = req.uri.clone().into_parts();
            parts.path_and_query = pq.parse().ok();
            if let Ok(u) = http::Uri::from_parts(parts) {
                req.uri = u;
            }
        }
        Ok(())
    }
}

pub struct ResponseTransformer {
    headers: HeaderOps,
}

impl ResponseTransformer {
    pub fn new(config: Option<&serde_json::Value>, field: &str) -> Result<Self, Invalid> {
        let c: Config = parse_config(config, field)?;
        refuse(&c, field, false)?;
        Ok(Self {
            headers: header_ops(&c, field)?,
        })
    }
}

impl Plugin for ResponseTransformer {
    fn name(&self) -> &'static str {
        "response-transformer"
    }

    fn priority(&self) -> i32 {
        800
    }

    fn sees_response_headers(&self) -> bool {
        true
    }

    fn header(&self, _status: StatusCode, headers: &mut HeaderMap, _ctx: &mut Ctx) {
        apply_headers(&self.headers, headers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_operations_in_kong_order() {
        let c: Config = parse_config(
            Some(&serde_json::json!({
                "remove": {"querystring": ["drop"]},
                "rename": {"querystring": ["old:new"]},
                "replace": {"querystring": ["v:2", "absent:x"]},
                "add": {"querystring": ["v:3", "extra:a b"]},
                "append": {"querystring": ["multi:1"]}
            })),
            "config",
        )
        .unwrap();
        let ops = query_ops(&c, "config").unwrap();
        assert_eq!(
            apply_query(&ops, Some("drop=1&old=x&v=1&multi=0")),
            "new=x&v=2&multi=0&extra=a%20b&multi=1"
        );
        assert_eq!(apply_query(&ops, None), "v=3&extra=a%20b&multi=1");
    }

    #[test]
    fn bodies_are_refused_by_name() {
        let e = RequestTransformer::new(
            Some(&serde_json::json!({"add": {"body": ["a:b"], "headers": []}})),
            "plugins[0].config",
        )
        .err()
        .unwrap();
        assert_eq!(e.field, "plugins[0].config.add.body");
        let e = ResponseTransformer::new(
            Some(&serde_json::json!({"remove": {"json": ["secret"]}})),
            "plugins[0].config",
        )
        .err()
        .unwrap();
        assert_eq!(e.field, "plugins[0].config.remove.json");
        // Kong's dumps carry empty lists: accepted.
        assert!(
            ResponseTransformer::new(
                Some(&serde_json::json!({"remove": {"json": [], "headers": ["server"]}})),
                "c"
            )
            .is_ok()
        );
    }
}
