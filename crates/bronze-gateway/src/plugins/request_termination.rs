//! request-termination: answers every request itself with `status_code`
//! and `message` (Kong's JSON shape) or a raw `body` and `content_type`;
//! with `trigger`, only requests that carry that header or query
//! argument; with `echo`, the answer describes the request as the gateway
//! saw it (Kong's debugging aid: method, host, port, path, query,
//! headers, and the matched route, service and consumer).

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;

use super::{Answer, Ctx, Plugin, exit, exit_raw, parse_config};
use crate::declarative::Invalid;

/// Kong's configuration of request-termination with nothing set, as Kong shows it
/// (3.9's `kong/plugins/request-termination/schema.lua`): every field, with its
/// default or null. Bronze reads an unset field as that default.
pub(crate) fn kong_defaults() -> serde_json::Value {
    serde_json::json!({
        "status_code": 503,
        "message": null,
        "content_type": null,
        "body": null,
        "echo": false,
        "trigger": null,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    status_code: Option<u16>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    echo: Option<bool>,
    #[serde(default)]
    trigger: Option<String>,
}

pub struct RequestTermination {
    status: StatusCode,
    message: Option<String>,
    raw: Option<(String, Bytes)>,
    /// Only requests with this header or query argument (lowercased).
    trigger: Option<String>,
    echo: bool,
}

impl RequestTermination {
    pub fn new(config: Option<&serde_json::Value>, field: &str) -> Result<Self, Invalid> {
        let c: Config = parse_config(config, field)?;
        let f = |n: &str| format!("{field}.{n}");
        let status = c.status_code.unwrap_or(503);
        let status = StatusCode::from_u16(status)
            .ok()
            .filter(|s| (100..=599).contains(&s.as_u16()))
            .ok_or_else(|| Invalid::new(f("status_code"), "value should be between 100 and 599"))?;
        let trigger = match c.trigger {
            Some(t) if http::HeaderName::from_bytes(t.as_bytes()).is_err() => {
                return Err(Invalid::new(
                    f("trigger"),
                    format!("{t:?}: expected a header or query argument name"),
                ));
            }
            t => t.map(|t| t.to_ascii_lowercase()),
        };
        let echo = c.echo.unwrap_or(false);
        if echo && (c.body.is_some() || c.message.is_some()) {
            return Err(Invalid::new(
                f("echo"),
                "echo cannot be used with message or body",
            ));
        }
        if c.message.is_some() && (c.body.is_some() || c.content_type.is_some()) {
            return Err(Invalid::new(
                f("message"),
                "message cannot be used with content_type or body",
            ));
        }
        let raw = match (c.body, c.content_type) {
            (Some(body), ct) => Some((
                ct.unwrap_or_else(|| "application/json; charset=utf-8".into()),
                Bytes::from(body),
            )),
            (None, Some(_)) => {
                return Err(Invalid::new(f("body"), "content_type requires a body"));
            }
            (None, None) => None,
        };
        Ok(Self {
            status,
            message: c.message,
            raw,
            trigger,
            echo,
        })
    }
}

impl Plugin for RequestTermination {
    fn name(&self) -> &'static str {
        "request-termination"
    }

    fn priority(&self) -> i32 {
        2
    }

    fn access(&self, req: &mut http::request::Parts, ctx: &mut Ctx) -> Result<(), Answer> {
        if let Some(t) = &self.trigger
            && !req.headers.contains_key(t.as_str())
            && !req.uri.query().is_some_and(|q| {
                form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k.eq_ignore_ascii_case(t))
            })
        {
            return Ok(());
        }
        if self.echo {
            let body = serde_json::to_vec(&echo(req, ctx)).unwrap_or_default();
            return Err(exit_raw(
                self.status,
                "application/json; charset=utf-8",
                Bytes::from(body),
            ));
        }
        if let Some((ct, body)) = &self.raw {
            return Err(exit_raw(self.status, ct, body.clone()));
        }
        let default;
        let message = match &self.message {
            Some(m) => m.as_str(),
            None => {
                default = match self.status.as_u16() {
                    503 => "Service unavailable".to_string(),
                    _ => self.status.canonical_reason().unwrap_or("").to_string(),
                };
                default.as_str()
            }
        };
        Err(exit(self.status, message))
    }
}

/// Kong's echo: the request as the gateway received it, and what matched.
fn echo(req: &http::request::Parts, ctx: &Ctx) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for name in req.headers.keys() {
        let values: Vec<&str> = req
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        let v = match values.as_slice() {
            [one] => serde_json::Value::from(*one),
            _ => serde_json::Value::from(values),
        };
        headers.insert(name.as_str().to_string(), v);
    }
    let mut query = serde_json::Map::new();
    for (k, v) in form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes()) {
        query.insert(k.into_owned(), serde_json::Value::from(v.into_owned()));
    }
    let authority = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, p.parse::<u16>().ok()),
        _ => (authority, None),
    };
    serde_json::json!({
        "request": {
            "method": req.method.as_str(),
            "host": host,
            "port": port,
            "path": req.uri.path(),
            "query": query,
            "headers": headers,
        },
        "matched_route": ctx.route.as_ref().map(|r| serde_json::json!({"name": r.name})),
        "matched_service": ctx.route.as_ref().map(|r| serde_json::json!({"name": r.service.name})),
        "matched_consumer": ctx.consumer.as_ref().map(|c| serde_json::json!({"id": c.id, "username": c.username})),
    })
}
