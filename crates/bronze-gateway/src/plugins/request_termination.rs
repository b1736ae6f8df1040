//! request-termination: answers every request itself with `status_code`
//! and `message` (Kong's JSON shape) or a raw `body` and `content_type`.

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;

use super::{Answer, Ctx, Plugin, exit, exit_raw, parse_config};
use crate::declarative::Invalid;

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
        if c.echo == Some(true) || c.trigger.is_some() {
            let name = if c.echo == Some(true) {
                "echo"
            } else {
                "trigger"
            };
            return Err(Invalid::new(f(name), "not implemented in Bronze"));
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

    fn access(&self, _req: &mut http::request::Parts, _ctx: &mut Ctx) -> Result<(), Answer> {
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
