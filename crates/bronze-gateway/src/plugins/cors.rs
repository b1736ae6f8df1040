//! cors: answers preflight requests (`OPTIONS` with
//! `Access-Control-Request-Method`) itself unless `preflight_continue`,
//! and adds the CORS headers to other responses, as Kong's plugin does.
//! Origins are exact strings, `*`, or regexes (anything that is not a
//! plain origin is compiled as a regex anchored at both ends).

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use regex::Regex;
use serde::Deserialize;

use super::{Answer, Ctx, Plugin, exit_raw, parse_config};
use crate::declarative::Invalid;

/// Kong's configuration of cors with nothing set, as Kong shows it
/// (3.9's `kong/plugins/cors/schema.lua`): every field, with its
/// default or null. Bronze reads an unset field as that default.
pub(crate) fn kong_defaults() -> serde_json::Value {
    serde_json::json!({
        "origins": null,
        "headers": null,
        "exposed_headers": null,
        "methods": ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT"],
        "max_age": null,
        "credentials": false,
        "private_network": false,
        "preflight_continue": false,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    origins: Option<Vec<String>>,
    #[serde(default)]
    methods: Option<Vec<String>>,
    #[serde(default)]
    headers: Option<Vec<String>>,
    #[serde(default)]
    exposed_headers: Option<Vec<String>>,
    #[serde(default)]
    credentials: Option<bool>,
    #[serde(default)]
    max_age: Option<u64>,
    #[serde(default)]
    preflight_continue: Option<bool>,
    #[serde(default)]
    private_network: Option<bool>,
}

enum Origin {
    Any,
    Exact(String),
    Pattern(Regex),
}

pub struct Cors {
    origins: Vec<Origin>,
    methods: HeaderValue,
    headers: Option<HeaderValue>,
    exposed: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
    preflight_continue: bool,
}

const KONG_METHODS: &str = "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT";

fn plain_origin(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'/' | b'-' | b'_' | b'.'))
        && !s.contains("..")
}

impl Cors {
    pub fn new(config: Option<&serde_json::Value>, field: &str) -> Result<Self, Invalid> {
        let c: Config = parse_config(config, field)?;
        let f = |n: &str| format!("{field}.{n}");
        if c.private_network == Some(true) {
            return Err(Invalid::new(
                f("private_network"),
                "not implemented in Bronze; expected false",
            ));
        }
        let mut origins = Vec::new();
        for (i, o) in c.origins.unwrap_or_default().iter().enumerate() {
            origins.push(if o == "*" {
                Origin::Any
            } else if plain_origin(o) {
                Origin::Exact(o.trim_end_matches('/').to_ascii_lowercase())
            } else {
                Origin::Pattern(Regex::new(&format!("^(?:{o})$")).map_err(|e| {
                    Invalid::new(
                        f(&format!("origins[{i}]")),
                        format!("{o:?}: invalid regex: {e}"),
                    )
                })?)
            });
        }
        let join = |v: &[String], name: &str| -> Result<Option<HeaderValue>, Invalid> {
            if v.is_empty() {
                return Ok(None);
            }
            HeaderValue::from_str(&v.join(","))
                .map(Some)
                .map_err(|_| Invalid::new(f(name), "expected header-safe values"))
        };
        let methods = match c.methods {
            Some(m) => {
                for (i, x) in m.iter().enumerate() {
                    Method::from_bytes(x.as_bytes()).map_err(|_| {
                        Invalid::new(
                            f(&format!("methods[{i}]")),
                            format!("{x:?}: expected an HTTP method"),
                        )
                    })?;
                }
                join(&m, "methods")?.unwrap_or(HeaderValue::from_static(KONG_METHODS))
            }
            None => HeaderValue::from_static(KONG_METHODS),
        };
        Ok(Self {
            origins,
            methods,
            headers: join(&c.headers.unwrap_or_default(), "headers")?,
            exposed: join(&c.exposed_headers.unwrap_or_default(), "exposed_headers")?,
            credentials: c.credentials.unwrap_or(false),
            max_age: c.max_age.map(HeaderValue::from),
            preflight_continue: c.preflight_continue.unwrap_or(false),
        })
    }

    /// The `Access-Control-Allow-Origin` for a request from `origin`, and
    /// whether it varies by origin.
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<(HeaderValue, bool)> {
        if self.origins.is_empty()
            || (self.origins.iter().any(|o| matches!(o, Origin::Any)) && !self.credentials)
        {
            return Some((HeaderValue::from_static("*"), false));
        }
        let origin = origin?;
        let text = origin.to_str().ok()?;
        let lowered = text.trim_end_matches('/').to_ascii_lowercase();
        let ok = self.origins.iter().any(|o| match o {
            Origin::Any => true,
            Origin::Exact(e) => *e == lowered,
            Origin::Pattern(r) => r.is_match(text),
        });
        ok.then(|| (origin.clone(), true))
    }

    fn common(&self, h: &mut HeaderMap, origin: Option<&HeaderValue>) {
        if let Some((allow, varies)) = self.allow_origin(origin) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            if varies {
                h.append(header::VARY, HeaderValue::from_static("Origin"));
            }
            if self.credentials {
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
        }
    }
}

impl Plugin for Cors {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn priority(&self) -> i32 {
        2000
    }

    fn access(&self, req: &mut http::request::Parts, ctx: &mut Ctx) -> Result<(), Answer> {
        let origin = req.headers.get(header::ORIGIN).cloned();
        let preflight = req.method == Method::OPTIONS
            && req
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight && !self.preflight_continue {
            let mut r = exit_raw(StatusCode::OK, "text/plain", bytes::Bytes::new());
            r.headers_mut().remove(header::CONTENT_TYPE);
            let h = r.headers_mut();
            self.common(h, origin.as_ref());
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
            let allow_headers = self.headers.clone().or_else(|| {
                req.headers
                    .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                    .cloned()
            });
            if let Some(v) = allow_headers {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
            }
            if let Some(v) = &self.max_age {
                h.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
            }
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            return Err(r);
        }
        ctx.origin = origin;
        Ok(())
    }

    fn sees_response_headers(&self) -> bool {
        true
    }

    fn header(&self, _status: StatusCode, headers: &mut HeaderMap, ctx: &mut Ctx) {
        self.common(headers, ctx.origin.as_ref());
        if let Some(v) = &self.exposed {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
}
