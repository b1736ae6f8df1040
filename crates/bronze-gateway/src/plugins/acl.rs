//! acl: after an auth plugin identified the consumer, its groups (the
//! `acls` entities) are checked against `allow` or `deny` (Kong's rules:
//! one of the two lists; with `allow`, a consumer in none of them is
//! refused; with `deny`, one in any of them is). No identified consumer,
//! or a refused one: 403 "You cannot consume this service". Allowed: the
//! consumer's groups go upstream in `X-Consumer-Groups` unless
//! `hide_groups_header`.

use std::sync::Arc;

use http::StatusCode;
use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::{Answer, Credentials, Ctx, Plugin, exit, parse_config};
use crate::declarative::Invalid;

const GROUPS: HeaderName = HeaderName::from_static("x-consumer-groups");

/// Kong's configuration of acl with nothing set, as Kong shows it
/// (3.9's `kong/plugins/acl/schema.lua`): every field, with its
/// default or null. Bronze reads an unset field as that default.
pub(crate) fn kong_defaults() -> serde_json::Value {
    serde_json::json!({
        "allow": null,
        "deny": null,
        "hide_groups_header": false,
        "always_use_authenticated_groups": false,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    allow: Option<Vec<String>>,
    #[serde(default)]
    deny: Option<Vec<String>>,
    #[serde(default)]
    hide_groups_header: Option<bool>,
    /// Kong's consumer groups (Enterprise): not built; only `false`.
    #[serde(default)]
    include_consumer_groups: Option<bool>,
    /// Kong's groups from an external authenticator: not built; only
    /// `false`.
    #[serde(default)]
    always_use_authenticated_groups: Option<bool>,
}

pub struct Acl {
    /// The listed groups, and whether they are the allowed ones.
    groups: Vec<String>,
    allow: bool,
    hide_groups_header: bool,
    credentials: Arc<Credentials>,
}

impl Acl {
    pub fn new(
        config: Option<&serde_json::Value>,
        field: &str,
        credentials: &Arc<Credentials>,
    ) -> Result<Self, Invalid> {
        let c: Config = parse_config(config, field)?;
        let f = |n: &str| format!("{field}.{n}");
        for (name, v) in [
            ("include_consumer_groups", c.include_consumer_groups),
            (
                "always_use_authenticated_groups",
                c.always_use_authenticated_groups,
            ),
        ] {
            if v == Some(true) {
                return Err(Invalid::new(f(name), "not implemented: only false"));
            }
        }
        let (groups, allow) = match (
            c.allow.filter(|a| !a.is_empty()),
            c.deny.filter(|d| !d.is_empty()),
        ) {
            (Some(a), None) => (a, true),
            (None, Some(d)) => (d, false),
            (Some(_), Some(_)) => {
                return Err(Invalid::new(f("deny"), "expected allow or deny, not both"));
            }
            (None, None) => {
                return Err(Invalid::new(
                    f("allow"),
                    "expected at least one group in allow or in deny",
                ));
            }
        };
        Ok(Self {
            groups: groups.into_iter().map(|g| g.trim().to_string()).collect(),
            allow,
            hide_groups_header: c.hide_groups_header.unwrap_or(false),
            credentials: credentials.clone(),
        })
    }
}

impl Plugin for Acl {
    fn name(&self) -> &'static str {
        "acl"
    }

    fn priority(&self) -> i32 {
        950
    }

    fn access(&self, req: &mut http::request::Parts, ctx: &mut Ctx) -> Result<(), Answer> {
        // What the client sent under this name never goes upstream.
        req.headers.remove(GROUPS);
        let refused = || exit(StatusCode::FORBIDDEN, "You cannot consume this service");
        let Some(consumer) = &ctx.consumer else {
            return Err(refused());
        };
        let groups = self
            .credentials
            .groups
            .get(&consumer.index)
            .map_or(&[][..], Vec::as_slice);
        let listed = groups.iter().any(|g| self.groups.contains(g));
        if listed != self.allow {
            return Err(refused());
        }
        if !self.hide_groups_header
            && !groups.is_empty()
            && let Ok(v) = HeaderValue::from_str(&groups.join(", "))
        {
            req.headers.insert(GROUPS, v);
        }
        Ok(())
    }
}
