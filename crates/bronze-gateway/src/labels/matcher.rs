//! What a label rule matches, in the terms Kong's routes can hold, shared by
//! every dialect (`bronze.http.rule`, Traefik v1 and v2/v3).
//!
//! A rule becomes a list of alternatives (its disjunctive normal form); each
//! alternative is a [`Conj`]: a set of hosts, a set of paths, a set of
//! methods and header values, each "any" when absent, all of which must
//! match. That is exactly one Kong route: a route matches when the host is
//! one of its hosts AND the path one of its paths AND so on. Alternatives
//! that differ in one dimension only are merged into one route with the
//! union of that dimension (`Host(a) || Host(b)` is one route with two
//! hosts); the others stay separate routes to the same service.
//!
//! Path rewriting is per path ([`PathSpec::strip`]): Kong strips what a
//! route's path matched, so a stripped path and a kept one are two routes.
//! Traefik's stripprefix middleware strips the first of its prefixes the
//! request's path starts with, whatever the rule matched;
//! [`Conj::strip_prefixes`] turns that into per-path stripping, or says why
//! it cannot (a prefix shorter than the path the rule matches).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// How a path is matched.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum PathM {
    /// Starts with this text.
    Prefix(String),
    /// Is this text.
    Exact(String),
    /// Matches this regex from the path's start (`^/...`).
    Regex(String),
}

/// A path and whether what it matched is stripped before forwarding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct PathSpec {
    pub m: PathM,
    pub strip: bool,
}

impl PathSpec {
    pub fn keep(m: PathM) -> Self {
        Self { m, strip: false }
    }

    /// Kong's form: a prefix, or `~regex`.
    pub fn kong(&self) -> String {
        match &self.m {
            PathM::Prefix(p) => p.clone(),
            PathM::Exact(p) => format!("~{}$", regex::escape(p)),
            PathM::Regex(r) => format!("~{r}"),
        }
    }
}

/// One alternative of a rule: every present dimension must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Conj {
    /// Kong's host forms: `a.example.com`, `*.example.com`.
    pub hosts: Option<BTreeSet<String>>,
    pub paths: Option<BTreeSet<PathSpec>>,
    /// Upper case.
    pub methods: Option<BTreeSet<String>>,
    /// Lower-case header name to accepted values (any of them).
    pub headers: BTreeMap<String, BTreeSet<String>>,
}

/// One Kong route a rule becomes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct KongRoute {
    pub hosts: Vec<String>,
    pub paths: Vec<String>,
    pub methods: Vec<String>,
    pub headers: BTreeMap<String, Vec<String>>,
    pub strip: bool,
    /// Sent upstream as `X-Forwarded-Prefix` (what was stripped), as
    /// Traefik's strip middlewares do.
    pub forwarded_prefix: Option<String>,
}

/// Both sides hold a value: the values both accept, or why they cannot be
/// joined.
fn both<T: Ord + Clone>(
    a: Option<BTreeSet<T>>,
    b: &Option<BTreeSet<T>>,
) -> Result<Option<Option<BTreeSet<T>>>, ()> {
    Ok(match (a, b) {
        (None, None) => Some(None),
        (Some(a), None) => Some(Some(a)),
        (None, Some(b)) => Some(Some(b.clone())),
        (Some(a), Some(b)) => {
            let common: BTreeSet<T> = a.intersection(b).cloned().collect();
            // Nothing in common: the alternative never matches.
            (!common.is_empty()).then_some(Some(common))
        }
    })
}

impl Conj {
    /// This alternative AND `other`: `Ok(None)` when nothing can match
    /// both; an error when Kong's route cannot express it.
    pub fn and(self, other: &Conj) -> Result<Option<Conj>, String> {
        let mut out = Conj::default();
        if let (Some(a), Some(b)) = (&self.hosts, &other.hosts)
            && a != b
            && a.iter().chain(b).any(|h| h.contains('*'))
        {
            return Err("two host matchers with wildcards joined by &&".into());
        }
        let Ok(Some(hosts)) = both(self.hosts, &other.hosts) else {
            return Ok(None);
        };
        out.hosts = hosts;
        out.paths = match (self.paths, &other.paths) {
            (Some(a), Some(b)) if a != *b => {
                return Err(
                    "two path matchers joined by && (a Bronze route matches one path)".into(),
                );
            }
            (a, b) => a.or_else(|| b.clone()),
        };
        let Ok(Some(methods)) = both(self.methods, &other.methods) else {
            return Ok(None);
        };
        out.methods = methods;
        out.headers = self.headers;
        for (name, values) in &other.headers {
            match out.headers.get_mut(name) {
                None => {
                    out.headers.insert(name.clone(), values.clone());
                }
                Some(mine) => {
                    mine.retain(|v| values.contains(v));
                    if mine.is_empty() {
                        return Ok(None);
                    }
                }
            }
        }
        Ok(Some(out))
    }

    /// Kong's routes for this alternative: the kept paths in one route,
    /// each stripped path in its own (its `X-Forwarded-Prefix` differs).
    pub fn kong_routes(&self) -> Vec<KongRoute> {
        let base = KongRoute {
            hosts: self.hosts.iter().flatten().cloned().collect(),
            paths: Vec::new(),
            methods: self.methods.iter().flatten().cloned().collect(),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
                .collect(),
            strip: false,
            forwarded_prefix: None,
        };
        let Some(paths) = &self.paths else {
            let mut only = base;
            if only.hosts.is_empty() && only.methods.is_empty() && only.headers.is_empty() {
                // A rule that matches everything: Kong needs a condition.
                only.paths.push("/".into());
            }
            return vec![only];
        };
        let mut out = Vec::new();
        let kept: Vec<String> = paths
            .iter()
            .filter(|p| !p.strip)
            .map(PathSpec::kong)
            .collect();
        if !kept.is_empty() {
            out.push(KongRoute {
                paths: kept,
                ..base.clone()
            });
        }
        for p in paths.iter().filter(|p| p.strip) {
            let forwarded_prefix = match &p.m {
                PathM::Prefix(s) | PathM::Exact(s) => Some(s.clone()),
                PathM::Regex(_) => None,
            };
            out.push(KongRoute {
                paths: vec![p.kong()],
                strip: true,
                forwarded_prefix,
                ..base.clone()
            });
        }
        out
    }

    /// Applies Traefik's stripprefix middleware (`prefixes`, tried in
    /// order, the first the request's path starts with is stripped) to
    /// this alternative's paths, as Kong routes that strip what they
    /// matched.
    pub fn strip_prefixes(mut self, prefixes: &[String]) -> Result<Conj, String> {
        // A prefix after one it starts with is never reached.
        let mut live: Vec<&str> = Vec::new();
        for p in prefixes.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            if !live.iter().any(|l| p.starts_with(l)) {
                live.push(p);
            }
        }
        if live.is_empty() {
            return Ok(self);
        }
        let paths = self
            .paths
            .take()
            .unwrap_or_else(|| BTreeSet::from([PathSpec::keep(PathM::Prefix("/".into()))]));
        let mut out = BTreeSet::new();
        for spec in paths {
            if spec.strip {
                return Err("a stripped path stripped again".into());
            }
            match &spec.m {
                PathM::Prefix(p) => {
                    // The first prefix covering all of p's requests, and the
                    // longer ones before it that take some of them.
                    let first = live.iter().position(|s| p.starts_with(s));
                    let before = &live[..first.unwrap_or(live.len())];
                    for s in before
                        .iter()
                        .filter(|s| s.starts_with(p.as_str()) && *s != p)
                    {
                        out.insert(PathSpec {
                            m: PathM::Prefix(s.to_string()),
                            strip: true,
                        });
                    }
                    match first.map(|i| live[i]) {
                        None => {
                            out.insert(spec);
                        }
                        Some(s) if s == p => {
                            out.insert(PathSpec {
                                m: spec.m,
                                strip: true,
                            });
                        }
                        Some(s) => {
                            return Err(format!(
                                "stripprefix {s:?} is shorter than the rule's path prefix {p:?}: a Bronze route strips the whole path it matched"
                            ));
                        }
                    }
                }
                PathM::Exact(x) => match live.iter().find(|s| x.starts_with(**s)) {
                    None => {
                        out.insert(spec);
                    }
                    Some(s) if s == x => {
                        out.insert(PathSpec {
                            m: spec.m,
                            strip: true,
                        });
                    }
                    Some(s) => {
                        return Err(format!(
                            "stripprefix {s:?} is shorter than the rule's path {x:?}: a Bronze route strips the whole path it matched"
                        ));
                    }
                },
                PathM::Regex(r) => {
                    return Err(format!(
                        "stripprefix on a rule whose path is a pattern ({r}): a Bronze route strips the whole path it matched"
                    ));
                }
            }
        }
        self.paths = Some(out);
        Ok(self)
    }
}

/// The dimensions of two alternatives that differ.
fn differences(a: &Conj, b: &Conj) -> (bool, bool, bool, bool) {
    (
        a.hosts != b.hosts,
        a.paths != b.paths,
        a.methods != b.methods,
        a.headers != b.headers,
    )
}

fn union<T: Ord + Clone>(a: &Option<BTreeSet<T>>, b: &Option<BTreeSet<T>>) -> Option<BTreeSet<T>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.union(b).cloned().collect()),
        // "Any" absorbs.
        _ => None,
    }
}

/// Merges alternatives that differ in one dimension (hosts, paths, methods,
/// or the values of one header) into one: `(a && x) || (b && x)` is
/// `(a || b) && x`, exactly.
pub(crate) fn merge(mut terms: Vec<Conj>) -> Vec<Conj> {
    terms.sort();
    terms.dedup();
    'again: loop {
        for i in 0..terms.len() {
            for j in i + 1..terms.len() {
                let (a, b) = (&terms[i], &terms[j]);
                let merged = match differences(a, b) {
                    (true, false, false, false) => Conj {
                        hosts: union(&a.hosts, &b.hosts),
                        ..a.clone()
                    },
                    (false, true, false, false) => Conj {
                        paths: union(&a.paths, &b.paths),
                        ..a.clone()
                    },
                    (false, false, true, false) => Conj {
                        methods: union(&a.methods, &b.methods),
                        ..a.clone()
                    },
                    (false, false, false, true) => {
                        // Mergeable when the same headers are asked for and
                        // only one of them differs in its values.
                        let keys_a: Vec<&String> = a.headers.keys().collect();
                        let keys_b: Vec<&String> = b.headers.keys().collect();
                        let differing: Vec<&String> = a
                            .headers
                            .iter()
                            .filter(|(k, v)| b.headers.get(*k) != Some(v))
                            .map(|(k, _)| k)
                            .collect();
                        if keys_a != keys_b || differing.len() != 1 {
                            continue;
                        }
                        let k = differing[0].clone();
                        let mut headers = a.headers.clone();
                        let values: BTreeSet<String> =
                            a.headers[&k].union(&b.headers[&k]).cloned().collect();
                        headers.insert(k, values);
                        Conj {
                            headers,
                            ..a.clone()
                        }
                    }
                    _ => continue,
                };
                terms.remove(j);
                terms[i] = merged;
                continue 'again;
            }
        }
        return terms;
    }
}

/// Regex text for a gorilla/mux template (Traefik v1 and v2 paths and
/// hosts): `{name}` is `default` (one path segment or one host label),
/// `{name:re}` is `re`; the rest is literal.
pub(crate) fn template(text: &str, default: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&regex::escape(&rest[..open]));
        let mut depth = 0usize;
        let mut close = None;
        for (i, c) in rest[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(open + i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let close = close.ok_or_else(|| format!("{text:?}: unbalanced braces"))?;
        let var = &rest[open + 1..close];
        let pattern = match var.split_once(':') {
            Some((_, re)) if !re.is_empty() => re,
            Some(_) => return Err(format!("{text:?}: empty pattern in {{{var}}}")),
            None => default,
        };
        if var.is_empty() {
            return Err(format!("{text:?}: empty {{}}"));
        }
        out.push_str(&format!("(?:{pattern})"));
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("{text:?}: unbalanced braces"));
    }
    out.push_str(&regex::escape(rest));
    Ok(out)
}

/// Checks a regex the way the router will compile it.
fn compiles(re: &str) -> Result<(), String> {
    regex::RegexBuilder::new(re)
        .size_limit(1 << 20)
        .build()
        .map(drop)
        .map_err(|e| format!("invalid pattern {re:?}: {e}"))
}

/// A path value of Path/PathPrefix (with gorilla templates allowed).
pub(crate) fn path(text: &str, prefix: bool) -> Result<PathM, String> {
    if !text.starts_with('/') {
        return Err(format!("{text:?}: a path starts with /"));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{text:?}: a path has no spaces"));
    }
    if !text.contains('{') && !text.contains('}') {
        return Ok(if prefix {
            PathM::Prefix(text.to_string())
        } else {
            PathM::Exact(text.to_string())
        });
    }
    let body = template(text, "[^/]+")?;
    let re = if prefix {
        format!("^{body}")
    } else {
        format!("^{body}$")
    };
    compiles(&re)?;
    Ok(PathM::Regex(re))
}

/// A regex matched against the path anywhere (Traefik v3's PathRegexp),
/// as a regex Kong anchors at the start.
pub(crate) fn path_regexp(re: &str) -> Result<PathM, String> {
    compiles(re)?;
    let anchored = if let Some(rest) = re.strip_prefix('^') {
        if !rest.starts_with('/') {
            return Err(format!(
                "{re:?}: an anchored path pattern starts with ^/ (paths start with /)"
            ));
        }
        re.to_string()
    } else {
        // Found anywhere: at the start, or after the leading slash.
        format!("^/.*?(?:{re})|^(?:{re})")
    };
    compiles(&anchored)?;
    Ok(PathM::Regex(anchored))
}

/// Whether `h` is a host name Kong's routes take (`*.` in front allowed).
pub(crate) fn host(h: &str) -> Result<String, String> {
    let lower = h.trim().to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    let name = name.split_once(':').map_or(name, |(n, _)| n);
    let ok = !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(lower)
    } else {
        Err(format!("{h:?}: expected a host name"))
    }
}

/// A HostRegexp value as a Kong host: a literal name, or a wildcard for a
/// pattern in the first label. `Ok((host, approximate))`: approximate
/// unless the pattern was "any first label" (`.+`): Kong's `*.domain`
/// matches every name under the domain, a superset of what the pattern
/// allowed.
pub(crate) fn host_regexp(text: &str) -> Result<(String, bool), String> {
    let unsupported = || {
        format!(
            "{text:?}: only a literal host, or a pattern in the first label followed by a literal domain ({{sub}}.example.com, ^[a-z]+\\.example\\.com$), maps to a Bronze host"
        )
    };
    // A name with no pattern at all (a gorilla template without variables).
    if !text.contains([
        '{', '}', '\\', '^', '$', '*', '+', '?', '(', ')', '[', ']', '|',
    ]) {
        return Ok((host(text)?, false));
    }
    // A gorilla template ({sub:[a-z]+}.example.com: Traefik v1 and v2).
    if text.starts_with('{') && !text.contains('\\') {
        let close = text.find("}.").ok_or_else(unsupported)?;
        let (var, domain) = (&text[1..close], &text[close + 2..]);
        if domain.contains(['{', '}']) || var.is_empty() {
            return Err(unsupported());
        }
        let exact = var.split_once(':').is_some_and(|(_, re)| re == ".+");
        return Ok((host(&format!("*.{domain}"))?, !exact));
    }
    // A Go regex (Traefik v3), anchored both ends: ^pattern\.example\.com$.
    let body = text
        .strip_prefix('^')
        .and_then(|b| b.strip_suffix('$'))
        .ok_or_else(unsupported)?;
    let literal = |s: &str| -> Option<String> {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('.') => out.push('.'),
                    _ => return None,
                },
                c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => out.push(c),
                _ => return None,
            }
        }
        Some(out)
    };
    if let Some(name) = literal(body) {
        return Ok((host(&name)?, false));
    }
    // The longest literal domain after a pattern for the first label(s).
    for (i, _) in body.match_indices("\\.") {
        if i == 0 {
            continue;
        }
        if let Some(domain) = literal(&body[i + 2..]) {
            compiles(text)?;
            return Ok((host(&format!("*.{domain}"))?, &body[..i] != ".+"));
        }
    }
    Err(unsupported())
}

/// A method name, upper case.
pub(crate) fn method(m: &str) -> Result<String, String> {
    let m = m.trim();
    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
        return Err(format!("{m:?}: expected an HTTP method"));
    }
    Ok(m.to_ascii_uppercase())
}

/// `Header(name, value)`: one header condition (a Host header is a host).
pub(crate) fn header(name: &str, value: &str) -> Result<Conj, String> {
    let name = name.trim();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(format!("{name:?}: expected a header name"));
    }
    if value.is_empty() {
        return Err(format!(
            "{name}: a header that only has to be present (empty value) cannot be matched by a Bronze route"
        ));
    }
    if name.eq_ignore_ascii_case("host") {
        return Ok(Conj {
            hosts: Some(BTreeSet::from([host(value)?])),
            ..Conj::default()
        });
    }
    Ok(Conj {
        headers: BTreeMap::from([(
            name.to_ascii_lowercase(),
            BTreeSet::from([value.to_string()]),
        )]),
        ..Conj::default()
    })
}

impl fmt::Display for Conj {
    /// Traefik v2's syntax, canonical (sorted), for names and reports.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut terms: Vec<String> = Vec::new();
        let list = |values: &mut dyn Iterator<Item = String>| {
            values
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(h) = &self.hosts {
            terms.push(format!("Host({})", list(&mut h.iter().cloned())));
        }
        if let Some(paths) = &self.paths {
            let mut parts = Vec::new();
            for p in paths {
                let strip = if p.strip { " strip" } else { "" };
                parts.push(match &p.m {
                    PathM::Prefix(s) => format!("PathPrefix(`{s}`){strip}"),
                    PathM::Exact(s) => format!("Path(`{s}`){strip}"),
                    PathM::Regex(r) => format!("PathRegexp(`{r}`){strip}"),
                });
            }
            let joined = parts.join(" || ");
            terms.push(if parts.len() > 1 {
                format!("({joined})")
            } else {
                joined
            });
        }
        if let Some(m) = &self.methods {
            terms.push(format!("Method({})", list(&mut m.iter().cloned())));
        }
        for (k, v) in &self.headers {
            terms.push(format!("Header(`{k}`, {})", list(&mut v.iter().cloned())));
        }
        if terms.is_empty() {
            terms.push("PathPrefix(`/`)".into());
        }
        f.write_str(&terms.join(" && "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> PathSpec {
        PathSpec::keep(PathM::Prefix(p.into()))
    }

    fn hosts(h: &[&str]) -> Option<BTreeSet<String>> {
        Some(h.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn and_intersects_and_refuses_what_a_route_cannot_hold() {
        let a = Conj {
            hosts: hosts(&["a", "b"]),
            ..Conj::default()
        };
        let b = Conj {
            hosts: hosts(&["b", "c"]),
            paths: Some(BTreeSet::from([prefix("/x")])),
            ..Conj::default()
        };
        let both = a.clone().and(&b).unwrap().unwrap();
        assert_eq!(both.hosts, hosts(&["b"]));
        assert_eq!(both.paths, b.paths);
        let never = Conj {
            hosts: hosts(&["z"]),
            ..Conj::default()
        };
        assert_eq!(a.clone().and(&never).unwrap(), None, "disjoint hosts");
        let other_path = Conj {
            paths: Some(BTreeSet::from([prefix("/y")])),
            ..Conj::default()
        };
        assert!(b.clone().and(&other_path).is_err(), "two path matchers");
        let wild = Conj {
            hosts: hosts(&["*.example.com"]),
            ..Conj::default()
        };
        assert!(a.and(&wild).is_err(), "wildcard intersection");
    }

    #[test]
    fn alternatives_differing_in_one_dimension_merge() {
        let t = |h: &str, p: &str| Conj {
            hosts: hosts(&[h]),
            paths: Some(BTreeSet::from([prefix(p)])),
            ..Conj::default()
        };
        // (a && /x) || (b && /x) is one route with two hosts.
        let m = merge(vec![t("a", "/x"), t("b", "/x")]);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].hosts, hosts(&["a", "b"]));
        // (a && /x) || (b && /y) stays two routes.
        assert_eq!(merge(vec![t("a", "/x"), t("b", "/y")]).len(), 2);
        // A term without paths absorbs one with: a || (a && /x) is a.
        let any = Conj {
            hosts: hosts(&["a"]),
            ..Conj::default()
        };
        let m = merge(vec![any.clone(), t("a", "/x")]);
        assert_eq!(m, vec![any]);
    }

    #[test]
    fn stripprefix_becomes_per_path_stripping() {
        let conj = |paths: &[&str]| Conj {
            hosts: hosts(&["a"]),
            paths: Some(paths.iter().map(|p| prefix(p)).collect()),
            ..Conj::default()
        };
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // The rule's prefix is the stripped one.
        let c = conj(&["/api"]).strip_prefixes(&s(&["/api"])).unwrap();
        let routes = c.kong_routes();
        assert_eq!(routes.len(), 1);
        assert!(routes[0].strip);
        assert_eq!(routes[0].forwarded_prefix.as_deref(), Some("/api"));
        // No path in the rule: stripped where a prefix matches, kept elsewhere.
        let c = Conj {
            hosts: hosts(&["a"]),
            ..Conj::default()
        }
        .strip_prefixes(&s(&["/a", "/b"]))
        .unwrap();
        let routes = c.kong_routes();
        assert_eq!(routes.len(), 3, "{routes:?}");
        assert_eq!(routes[0].paths, vec!["/"]);
        assert!(!routes[0].strip);
        // A longer prefix listed first takes its part; after a shorter one it
        // is never reached.
        let c = conj(&["/api"])
            .strip_prefixes(&s(&["/api/v2", "/api"]))
            .unwrap();
        assert_eq!(c.kong_routes().len(), 2);
        let c = conj(&["/api"])
            .strip_prefixes(&s(&["/api", "/api/v2"]))
            .unwrap();
        assert_eq!(c.kong_routes().len(), 1);
        // Strip a shorter prefix than the route matches: not expressible.
        let e = conj(&["/api/v1"])
            .strip_prefixes(&s(&["/api"]))
            .unwrap_err();
        assert!(e.contains("shorter"), "{e}");
        // An unrelated prefix leaves the path alone.
        let c = conj(&["/web"]).strip_prefixes(&s(&["/api"])).unwrap();
        assert!(!c.kong_routes()[0].strip);
        // A pattern path cannot be stripped by prefixes.
        let re = Conj {
            paths: Some(BTreeSet::from([PathSpec::keep(
                path("/a/{id}", true).unwrap(),
            )])),
            ..Conj::default()
        };
        assert!(re.strip_prefixes(&s(&["/a"])).is_err());
    }

    #[test]
    fn templates_and_host_patterns() {
        assert_eq!(
            path("/articles/{category}/{id:[0-9]+}", false).unwrap(),
            PathM::Regex("^/articles/(?:[^/]+)/(?:[0-9]+)$".into())
        );
        assert_eq!(
            path("/a/{n:[0-9]{2}}", true).unwrap(),
            PathM::Regex("^/a/(?:[0-9]{2})".into())
        );
        assert_eq!(
            path("/plain", true).unwrap(),
            PathM::Prefix("/plain".into())
        );
        for bad in ["relative", "/a b", "/a/{", "/a/}", "/a/{x:(}"] {
            assert!(path(bad, true).is_err(), "{bad}");
        }
        assert_eq!(
            host_regexp("{sub:[^.]+}.example.com").unwrap(),
            ("*.example.com".into(), true)
        );
        assert_eq!(
            host_regexp("{sub:.+}.example.com").unwrap(),
            ("*.example.com".into(), false)
        );
        assert_eq!(
            host_regexp("{sub:[a-z]+}.example.com").unwrap(),
            ("*.example.com".into(), true),
            "Traefik v1's documented example, broadened"
        );
        assert_eq!(
            host_regexp("^(api|www)\\.example\\.com$").unwrap(),
            ("*.example.com".into(), true)
        );
        assert_eq!(
            host_regexp("traefik.io").unwrap(),
            ("traefik.io".into(), false)
        );
        assert_eq!(
            host_regexp("^.+\\.example\\.com$").unwrap(),
            ("*.example.com".into(), false)
        );
        assert_eq!(
            host_regexp("^api\\.example\\.com$").unwrap(),
            ("api.example.com".into(), false)
        );
        for bad in [
            "api.{tld}",
            "^.+\\.example\\.com",
            "(a|b)\\.example\\.com",
            "^.+$",
            "^(\\.example\\.com$",
        ] {
            assert!(host_regexp(bad).is_err(), "{bad}");
        }
        assert_eq!(
            path_regexp("\\.(jpg|png)$").unwrap(),
            PathM::Regex("^/.*?(?:\\.(jpg|png)$)|^(?:\\.(jpg|png)$)".into())
        );
        assert!(path_regexp("^api").is_err());
        assert!(host("bad host").is_err());
        assert!(method("GE T").is_err());
        assert!(header("X-A", "").is_err(), "presence-only header");
        assert_eq!(
            header("Host", "a.example").unwrap().hosts,
            hosts(&["a.example"])
        );
    }

    #[test]
    fn display_is_canonical() {
        let c = Conj {
            hosts: hosts(&["b", "a"]),
            paths: Some(BTreeSet::from([PathSpec {
                m: PathM::Prefix("/x".into()),
                strip: true,
            }])),
            methods: Some(BTreeSet::from(["GET".to_string()])),
            ..Conj::default()
        };
        assert_eq!(
            c.to_string(),
            "Host(`a`, `b`) && PathPrefix(`/x`) strip && Method(`GET`)"
        );
    }
}
