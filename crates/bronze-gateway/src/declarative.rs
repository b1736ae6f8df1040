//! Kong's declarative (DB-less) configuration: `_format_version`,
//! `services` with nested `routes`, and `upstreams` with `targets`, in
//! Kong's field names. Bronze reads the JSON form (every JSON document is
//! also YAML, so such a file is a valid Kong declarative file). Fields
//! Kong has but Bronze does not implement yet are refused by name rather
//! than silently ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Declarative {
    #[serde(rename = "_format_version")]
    pub format_version: String,
    #[serde(
        rename = "_transform",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub transform: Option<bool>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    /// Global plugins, or attached by `service`, `route`, `consumer`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<Plugin>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<Consumer>,
    /// Kong's top-level credential lists, each naming its `consumer`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keyauth_credentials: Vec<KeyAuthCredential>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub basicauth_credentials: Vec<BasicAuthCredential>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_secrets: Vec<JwtSecret>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    /// `http://host:port/path`; or the parts below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// An upstream's name, or a host name or IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Milliseconds, as Kong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<Plugin>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Prefixes, or regexes when they start with `~` (Kong 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Header name to accepted values (any of them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<String>,
    /// Kong's default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_path: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_host: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<Plugin>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub name: String,
    /// `round-robin` only, for now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    #[serde(default)]
    pub targets: Vec<Target>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `host:port`.
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// A plugin instance (Kong's `plugins` entity). Where it applies: nested
/// under a service or route, or (top level) by `service`, `route` and
/// `consumer`, each naming an entity by name (or id); none of them: global.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Checked against the plugin's own schema when compiled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<EntityRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<EntityRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<EntityRef>,
}

/// A reference to another entity: its name (or id) as a string, or Kong's
/// object form `{"id": ...}` / `{"name": ...}` / `{"username": ...}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum EntityRef {
    Key(String),
    Object {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
    },
}

impl EntityRef {
    /// The id, name or username it names.
    pub fn key(&self) -> &str {
        match self {
            Self::Key(k) => k,
            Self::Object { id, name, username } => id
                .as_deref()
                .or(name.as_deref())
                .or(username.as_deref())
                .unwrap_or(""),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Kong needs a username or a custom_id (or both).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keyauth_credentials: Vec<KeyAuthCredential>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub basicauth_credentials: Vec<BasicAuthCredential>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_secrets: Vec<JwtSecret>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<Plugin>,
}

/// key-auth's credential. `consumer` only at top level.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyAuthCredential {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<EntityRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// basic-auth's credential; the password is given in plain text and hashed
/// (bcrypt) when the configuration is compiled.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthCredential {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub username: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<EntityRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// jwt's credential: `key` is matched against the token's `key_claim_name`
/// claim (`iss` by default).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtSecret {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// HS256 (default), HS384, HS512 or RS256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rsa_public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<EntityRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// A configuration refused: which field (Kong's path, e.g.
/// `services[0].routes[1].paths[0]`) and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parses a declarative document, naming the field of the first error.
pub fn parse(text: &[u8]) -> Result<Declarative, Invalid> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let d: Declarative = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        Invalid::new(
            if path == "." {
                "(document)".into()
            } else {
                path
            },
            e.into_inner().to_string(),
        )
    })?;
    if !matches!(d.format_version.as_str(), "1.1" | "2.1" | "3.0") {
        return Err(Invalid::new(
            "_format_version",
            format!("{:?}: expected \"3.0\" (or 1.1, 2.1)", d.format_version),
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kong_fields_parse_and_unknown_ones_are_named() {
        let d = parse(
            br#"{"_format_version": "3.0",
                 "services": [{"name": "users", "url": "http://users:8080/v1",
                   "routes": [{"name": "r", "paths": ["/users"], "strip_path": false}]}],
                 "upstreams": [{"name": "users", "targets": [{"target": "10.0.0.1:8080", "weight": 50}]}]}"#,
        )
        .unwrap();
        assert_eq!(d.services[0].routes[0].strip_path, Some(false));
        assert_eq!(d.upstreams[0].targets[0].weight, Some(50));

        let e = parse(br#"{"_format_version": "3.0", "services": [{"name": "a", "routes": [{"name": "r", "snis": ["x"]}]}]}"#)
            .unwrap_err();
        assert_eq!(e.field, "services[0].routes[0].snis");
        assert!(e.message.contains("snis"), "{e}");
        let e = parse(br#"{"_format_version": "9"}"#).unwrap_err();
        assert_eq!(e.field, "_format_version");
        let e = parse(br#"{"_format_version": "3.0", "services": [{"name": "a", "port": 70000}]}"#)
            .unwrap_err();
        assert_eq!(e.field, "services[0].port");
    }
}
