//! correlation-id: gives every request an id in `header_name` (Kong's
//! default `Kong-Request-ID`) unless the client sent one, so the services
//! behind and their logs can follow one request; with `echo_downstream`
//! the client gets the id back on the response.
//!
//! Generators, as Kong's: `uuid` (a random UUID per request),
//! `uuid#counter` (the default: a UUID per plugin instance, `#`, and a
//! counter), `tracker` (Kong joins the server's address and port, the
//! worker's pid, the connection's number and request count and the time
//! in milliseconds; Bronze joins the client's address and port, the pid,
//! a per-instance counter and the time in milliseconds: unique the same
//! way, from what a request knows here).

use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::{Answer, Ctx, Plugin, Value, parse_config};
use crate::declarative::Invalid;

/// Kong's configuration of correlation-id with nothing set, as Kong shows it
/// (3.9's `kong/plugins/correlation-id/schema.lua`): every field, with its
/// default or null. Bronze reads an unset field as that default.
pub(crate) fn kong_defaults() -> serde_json::Value {
    serde_json::json!({
        "header_name": "Kong-Request-ID",
        "generator": "uuid#counter",
        "echo_downstream": false,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    header_name: Option<String>,
    #[serde(default)]
    generator: Option<String>,
    #[serde(default)]
    echo_downstream: Option<bool>,
}

enum Generator {
    Uuid,
    /// The instance's UUID and `#`, then the counter.
    Counter(String),
    Tracker,
}

pub struct CorrelationId {
    header: HeaderName,
    generator: Generator,
    echo: bool,
    counter: AtomicU64,
}

impl CorrelationId {
    pub fn new(config: Option<&serde_json::Value>, field: &str) -> Result<Self, Invalid> {
        let c: Config = parse_config(config, field)?;
        let f = |n: &str| format!("{field}.{n}");
        let name = c.header_name.as_deref().unwrap_or("Kong-Request-ID");
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            Invalid::new(
                f("header_name"),
                format!("{name:?}: expected a header name"),
            )
        })?;
        let generator = match c.generator.as_deref().unwrap_or("uuid#counter") {
            "uuid" => Generator::Uuid,
            "uuid#counter" => Generator::Counter(format!("{}#", uuid::Uuid::new_v4())),
            "tracker" => Generator::Tracker,
            other => {
                return Err(Invalid::new(
                    f("generator"),
                    format!("{other:?}: expected one of: uuid, uuid#counter, tracker"),
                ));
            }
        };
        Ok(Self {
            header,
            generator,
            echo: c.echo_downstream.unwrap_or(false),
            counter: AtomicU64::new(0),
        })
    }

    fn generate(&self, ctx: &Ctx) -> HeaderValue {
        let text = match &self.generator {
            Generator::Uuid => uuid::Uuid::new_v4().to_string(),
            Generator::Counter(prefix) => {
                let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
                format!("{prefix}{n}")
            }
            Generator::Tracker => {
                let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                format!(
                    "{}-{}-{}-{n}-{}.{:03}",
                    ctx.peer.ip(),
                    ctx.peer.port(),
                    std::process::id(),
                    ms.as_secs(),
                    ms.subsec_millis()
                )
            }
        };
        // UUIDs, digits, addresses: always a valid value.
        HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("-"))
    }
}

impl Plugin for CorrelationId {
    fn name(&self) -> &'static str {
        "correlation-id"
    }

    fn priority(&self) -> i32 {
        100_001
    }

    fn access(&self, req: &mut http::request::Parts, ctx: &mut Ctx) -> Result<(), Answer> {
        // The client's id is kept (Kong's behaviour), and echoed as is.
        let id = match req.headers.get(&self.header) {
            Some(given) => given.clone(),
            None => {
                let id = self.generate(ctx);
                req.headers.insert(self.header.clone(), id.clone());
                id
            }
        };
        if self.echo {
            ctx.response_headers
                .push((self.header.clone(), Value::Header(id)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_named() {
        let bad = |c: serde_json::Value| {
            CorrelationId::new(Some(&c), "config")
                .err()
                .map(|e| e.field)
        };
        assert_eq!(
            bad(serde_json::json!({"generator": "snowflake"})).as_deref(),
            Some("config.generator")
        );
        assert_eq!(
            bad(serde_json::json!({"header_name": "bad header"})).as_deref(),
            Some("config.header_name")
        );
        assert!(
            bad(serde_json::json!({"generator": "tracker", "echo_downstream": true})).is_none()
        );
    }
}
