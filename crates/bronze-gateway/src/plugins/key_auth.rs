//! key-auth: a key from a header or the query string names a consumer.

use std::sync::Arc;

use http::Method;
use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::{Answer, Credentials, Ctx, Plugin, parse_config, set_consumer};
use crate::declarative::Invalid;

/// Kong's configuration of key-auth with nothing set, as Kong shows it
/// (3.9's `kong/plugins/key-auth/schema.lua`): every field, with its
/// default or null. Bronze reads an unset field as that default.
pub(crate) fn kong_defaults() -> serde_json::Value {
    serde_json::json!({
        "key_names": ["apikey"],
        "hide_credentials": false,
        "anonymous": null,
        "key_in_header": true,
        "key_in_query": true,
        "key_in_body": false,
        "run_on_preflight": true,
        "realm": null,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    key_names: Option<Vec<String>>,
    #[serde(default)]
    hide_credentials: Option<bool>,
    #[serde(default)]
    anonymous: Option<String>,
    #[serde(default)]
    key_in_header: Option<bool>,
    #[serde(default)]
    key_in_query: Option<bool>,
    #[serde(default)]
    key_in_body: Option<bool>,
    #[serde(default)]
    run_on_preflight: Option<bool>,
    #[serde(default)]
    realm: Option<String>,
}

pub struct KeyAuth {
    /// (header name, query parameter name) for each of `key_names`.
    names: Vec<(Option<HeaderName>, String)>,
    hide_credentials: bool,
    anonymous: Option<Arc<super::Consumer>>,
    in_header: bool,
    in_query: bool,
    run_on_preflight: bool,
    challenge: HeaderValue,
    credentials: Arc<Credentials>,
}

/// Decodes `%XX` and `+` of a query string component.
pub(crate) fn percent_decode(s: &str) -> std::borrow::Cow<'_, str> {
    crate::percent::decode(s, true)
}

/// The values of query parameter `name` in `query` (decoded).
pub(crate) fn query_values<'q>(
    query: &'q str,
    name: &'q str,
) -> impl Iterator<Item = std::borrow::Cow<'q, str>> + 'q {
    query.split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// `uri` without query parameter `name`.
pub(crate) fn remove_query_param(uri: &http::Uri, name: &str) -> Option<http::Uri> {
    let query = uri.query()?;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| percent_decode(pair.split_once('=').map_or(*pair, |(k, _)| k)) != name)
        .collect();
    let mut pq = uri.path().to_string();
    if !kept.is_empty() {
        pq.push('?');
        pq.push_str(&kept.join("&"));
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = pq.parse().ok();
    http::Uri::from_parts(parts).ok()
}

/// The consumer `anonymous` names, resolved when compiled.
pub(crate) fn resolve_anonymous(
    anonymous: Option<&str>,
    credentials: &Credentials,
    field: &str,
) -> Result<Option<Arc<super::Consumer>>, Invalid> {
    match anonymous {
        None | Some("") => Ok(None),
        Some(a) => credentials.find(a).cloned().map(Some).ok_or_else(|| {
            Invalid::new(
                format!("{field}.anonymous"),
                format!("{a:?}: expected the id or username of a consumer"),
            )
        }),
    }
}

impl KeyAuth {
    pub fn new(
        config: Option<&serde_json::Value>,
        field: &str,
        credentials: &Arc<Credentials>,
    ) -> Result<Self, Invalid> {
        let c: Config = parse_config(config, field)?;
        if c.key_in_body == Some(true) {
            return Err(Invalid::new(
                format!("{field}.key_in_body"),
                "not implemented: Bronze does not buffer request bodies for key-auth",
            ));
        }
        let key_names = c.key_names.unwrap_or_else(|| vec!["apikey".into()]);
        if key_names.is_empty() {
            return Err(Invalid::new(
                format!("{field}.key_names"),
                "expected at least one key name",
            ));
        }
        let mut names = Vec::new();
        for (i, n) in key_names.iter().enumerate() {
            let header =
                HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).map_err(|_| {
                    Invalid::new(
                        format!("{field}.key_names[{i}]"),
                        format!("{n:?}: expected a header name"),
                    )
                })?;
            names.push((Some(header), n.clone()));
        }
        let challenge = match &c.realm {
            Some(r) => HeaderValue::from_str(&format!("Key realm=\"{r}\"")).map_err(|_| {
                Invalid::new(format!("{field}.realm"), "expected a header-safe realm")
            })?,
            None => HeaderValue::from_static("Key"),
        };
        Ok(Self {
            names,
            hide_credentials: c.hide_credentials.unwrap_or(false),
            anonymous: resolve_anonymous(c.anonymous.as_deref(), credentials, field)?,
            in_header: c.key_in_header.unwrap_or(true),
            in_query: c.key_in_query.unwrap_or(true),
            run_on_preflight: c.run_on_preflight.unwrap_or(true),
            challenge,
            credentials: credentials.clone(),
        })
    }

    /// The credential of the key the request carries: `Ok(None)` when it
    /// carries none, `Err` with Kong's message when the key is unknown or
    /// given twice. A header key is looked up without a copy.
    fn find_key(
        &self,
        req: &mut http::request::Parts,
    ) -> Result<Option<&(u32, HeaderValue)>, &'static str> {
        const INVALID: &str = "Invalid authentication credentials";
        for (header, name) in &self.names {
            if self.in_header
                && let Some(h) = header
            {
                let mut values = req.headers.get_all(h).iter();
                if let Some(v) = values.next() {
                    if values.next().is_some() {
                        return Err("Duplicate API key found");
                    }
                    let v = v.to_str().map_err(|_| INVALID)?;
                    let found = self.credentials.keys.get(v);
                    if self.hide_credentials {
                        req.headers.remove(h);
                    }
                    return found.map(Some).ok_or(INVALID);
                }
            }
            if self.in_query
                && let Some(q) = req.uri.query()
            {
                let (first, more) = {
                    let mut values = query_values(q, name);
                    (
                        values.next().map(|v| v.into_owned()),
                        values.next().is_some(),
                    )
                };
                if let Some(v) = first {
                    if more {
                        return Err("Duplicate API key found");
                    }
                    if self.hide_credentials
                        && let Some(u) = remove_query_param(&req.uri, name)
                    {
                        req.uri = u;
                    }
                    return self.credentials.keys.get(&v).map(Some).ok_or(INVALID);
                }
            }
        }
        Ok(None)
    }
}

impl Plugin for KeyAuth {
    fn name(&self) -> &'static str {
        "key-auth"
    }

    fn priority(&self) -> i32 {
        1250
    }

    fn access(&self, req: &mut http::request::Parts, ctx: &mut Ctx) -> Result<(), Answer> {
        if !self.run_on_preflight && req.method == Method::OPTIONS {
            return Ok(());
        }
        // Another auth plugin already authenticated: logical OR (Kong).
        if self.anonymous.is_some() && ctx.credential.is_some() {
            return Ok(());
        }
        let failure = match self.find_key(req) {
            Ok(Some((consumer, credential))) => {
                let consumer = self.credentials.consumers[*consumer as usize].clone();
                set_consumer(req, ctx, Some(&consumer), Some(credential.clone()));
                return Ok(());
            }
            Ok(None) => "No API key found in request",
            Err(message) => message,
        };
        super::anonymous_or(req, ctx, self.anonymous.as_ref(), || {
            super::unauthorized(&self.challenge, failure)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_decode_and_are_removed() {
        let q = "a=1&api%6Bey=x%2By+z&b=2";
        let v: Vec<_> = query_values(q, "apikey").collect();
        assert_eq!(v, vec!["x+y z"]);
        let u: http::Uri = "/p?a=1&apikey=secret&b=2".parse().unwrap();
        assert_eq!(remove_query_param(&u, "apikey").unwrap(), "/p?a=1&b=2");
        let u: http::Uri = "/p?apikey=secret".parse().unwrap();
        assert_eq!(remove_query_param(&u, "apikey").unwrap(), "/p");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
