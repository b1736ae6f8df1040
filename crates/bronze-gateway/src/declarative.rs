//! Kong's declarative (DB-less) configuration: `_format_version`,
//! `services` with nested `routes`, `upstreams` with `targets`, and
//! `certificates` with their `snis`, in Kong's field names; also Kong's
//! flat form (top-level `routes` naming their `service`, top-level
//! `targets` naming their `upstream`, merged by `flat::nest`). Bronze reads
//! JSON and YAML. Fields
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
    /// Kong's free-text `_comment` and `_ignore` (where YAML anchors are
    /// kept), and the `_workspace` DB-less Kong ignores: kept, unused.
    #[serde(rename = "_comment", default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(rename = "_ignore", default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<serde_json::Value>,
    #[serde(
        rename = "_workspace",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub workspace: Option<String>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    /// Flat form: routes naming their `service`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Flat form: targets naming their `upstream`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Target>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<Certificate>,
    /// Kong's CA certificates: trust roots that services name by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca_certificates: Vec<CaCertificate>,
    /// Kong's top-level `snis`: names given to a certificate by its `id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snis: Vec<SniEntity>,
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hmacauth_credentials: Vec<HmacAuthCredential>,
    /// The acl plugin's groups, each naming its `consumer`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acls: Vec<Acl>,
}

/// A foreign key as Kong's flat form writes it: a name or id, or
/// `{"id": ...}` / `{"name": ...}` (what the Admin API returns).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Ref {
    Key(String),
    Object {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
}

impl Ref {
    /// The id or name it names.
    pub fn key(&self) -> Option<&str> {
        match self {
            Ref::Key(k) => Some(k),
            Ref::Object { id, name } => id.as_deref().or(name.as_deref()),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Optional when `id` is given (the id then names it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
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
    /// `https`/`grpcs` services: whether the upstream's certificate is
    /// verified (Bronze's default: yes; Kong's: no).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
    /// Kong's: the verification depth (only null: rustls has no limit to
    /// set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_verify_depth: Option<u32>,
    /// `https`/`grpcs` services: the certificate (a `certificates` entity,
    /// by id) shown to upstreams that ask for one (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<Ref>,
    /// `https`/`grpcs` services: ids of `ca_certificates` that are then the
    /// only roots the upstream's certificate is checked against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca_certificates: Vec<String>,
    /// Bronze extension: retries may add at most this share of the request
    /// rate (see `balancer::config::RetryBudget`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<crate::balancer::config::RetryBudget>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Optional when `id` is given (the id then names it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Flat form only: the service's name or id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Ref>,
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
    /// TLS server names the route answers (Kong's `snis`; `https` or
    /// `grpcs` routes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snis: Vec<String>,
    /// Kong's default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_path: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_host: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_priority: Option<i64>,
    /// What a plain-HTTP request to an https-only route gets: 426 (Kong's
    /// default), or a redirect (301, 302, 307, 308) to https.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect_status_code: Option<u16>,
    /// How the service's path and the rest of the request's join: Kong's
    /// default `v0` (a `/` between them when neither has one) is how
    /// Bronze joins; `v1` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_handling: Option<String>,
    /// Kong's buffering switches (default true). Bronze always streams
    /// bodies both ways, so either value behaves as streaming (`deck
    /// dump` writes them on every route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_buffering: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_buffering: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<Plugin>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    /// `round-robin` (default), `least-connections`, `consistent-hashing`,
    /// `latency`, or Bronze's `p2c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    #[serde(default)]
    pub targets: Vec<Target>,
    /// `none` (default), `ip`, `header`, `cookie`, `path`, `query_arg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<String>,
    /// Used when `hash_on` finds no value (not with `cookie`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_fallback: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on_header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_fallback_header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on_cookie: Option<String>,
    /// Kong's default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on_cookie_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on_query_arg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_fallback_query_arg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on_uri_capture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_fallback_uri_capture: Option<String>,
    /// Points on the consistent-hashing ring (10-65536, default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// Kong's `healthchecks.active` and `.passive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthchecks: Option<crate::balancer::config::Healthchecks>,
    /// Bronze extension: requests in flight per target (0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Bronze extension: milliseconds a request waits for a target under `max_connections` before 503 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_timeout: Option<u64>,
    /// Bronze extension: per-target circuit breaking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<crate::balancer::config::CircuitBreaker>,
    /// Kong's; only unset (or false) is supported so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_header: Option<String>,
    /// A certificate (by id) shown to targets that ask for one: by the
    /// active https/grpcs checks, and by services with none of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_srv_name: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Flat form only: the upstream's name or id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Ref>,
    /// `host:port`.
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// Kong's `certificates` entity: a PEM certificate chain (leaf first) and
/// its private key, optionally an alternate pair of another key type (an
/// ECDSA and an RSA certificate for the same names), served to TLS clients
/// whose SNI is one of `snis`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub cert: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_alt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_alt: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snis: Vec<Sni>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// Kong's `ca_certificates` entity: one PEM CA certificate.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CaCertificate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub cert: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
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
    pub hmacauth_credentials: Vec<HmacAuthCredential>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acls: Vec<Acl>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<Plugin>,
}

/// A consumer's membership of a group, for the acl plugin. `consumer` only
/// at top level.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub group: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<EntityRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
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

/// One of a certificate's server names: `a.example.com`, `*.example.com`
/// or `example.*`. Read from Kong's declarative form (`{"name": "..."}`)
/// or the Admin API's (`"..."`); written in the declarative form.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Sni {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl<'de> Deserialize<'de> for Sni {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Object {
            #[serde(default)]
            id: Option<String>,
            name: String,
            #[serde(default)]
            tags: Vec<String>,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Sni;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a server name, or {\"name\": \"<server name>\"}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Sni, E> {
                Ok(Sni {
                    name: v.to_string(),
                    ..Sni::default()
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Sni, A::Error> {
                let o = Object::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Sni {
                    id: o.id,
                    name: o.name,
                    tags: o.tags,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Kong's top-level `snis` entity: a server name for the certificate whose
/// `id` is `certificate` (`"<id>"` or `{"id": "<id>"}`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SniEntity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    pub certificate: Reference,
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

/// A foreign key as Kong's declarative format writes it: the id, or
/// `{"id": "<id>"}`; written as the latter.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Reference {
    pub id: String,
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Object {
            id: String,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Reference;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an id, or {\"id\": \"<id>\"}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Reference, E> {
                Ok(Reference { id: v.to_string() })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Reference, A::Error> {
                let o = Object::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Reference { id: o.id })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// hmac-auth's credential: the `username` a request's signature names and
/// the shared `secret` it is made with (generated by the Admin API when
/// missing).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HmacAuthCredential {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
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

/// A duration given in (fractional) seconds, `default` when unset: finite,
/// 0 or more and at most `max`, or an error naming `field`. The one reader
/// of Kong's seconds fields (health check intervals, log queue delays).
pub fn seconds(
    v: Option<f64>,
    default: f64,
    max: f64,
    field: &str,
) -> Result<std::time::Duration, Invalid> {
    let s = v.unwrap_or(default);
    let expected = || {
        let what = if max.is_finite() {
            format!("seconds between 0 and {max}")
        } else {
            "seconds, 0 or more".to_string()
        };
        Invalid::new(field, format!("{s}: expected {what}"))
    };
    if !(0.0..=max).contains(&s) {
        return Err(expected());
    }
    // Finite and in range of a Duration, or refused (never a panic).
    std::time::Duration::try_from_secs_f64(s).map_err(|_| expected())
}

#[cfg(test)]
#[test]
fn seconds_are_read_or_refused_by_field() {
    use std::time::Duration;
    assert_eq!(
        seconds(None, 1.5, 10.0, "f"),
        Ok(Duration::from_millis(1500))
    );
    assert_eq!(seconds(Some(0.0), 1.0, 10.0, "f"), Ok(Duration::ZERO));
    for bad in [-1.0, 11.0, f64::NAN, f64::INFINITY] {
        let e = seconds(Some(bad), 1.0, 10.0, "x.timeout").unwrap_err();
        assert_eq!(e.field, "x.timeout");
        assert!(e.message.contains("between 0 and 10"), "{e}");
    }
    // Unbounded, yet never past what a duration holds.
    let e = seconds(Some(1e30), 1.0, f64::INFINITY, "q").unwrap_err();
    assert!(e.message.contains("0 or more"), "{e}");
}

/// Removes every object member whose value is null, at any depth: to Kong
/// a null field is an unset one (`deck dump` writes `tags: null`,
/// `anonymous: null`, ...), which is what an absent field is here.
/// Nulls inside arrays stay (and are refused where they are wrong).
pub fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(o) => {
            o.retain(|_, v| !v.is_null());
            o.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Reads a document as JSON, or as YAML when it is not JSON (Kong's
/// DB-less files are YAML most of the time), into a JSON value; null
/// fields are left out ([`strip_nulls`]).
pub fn to_value(text: &[u8]) -> Result<serde_json::Value, Invalid> {
    let mut v = read_value(text)?;
    strip_nulls(&mut v);
    Ok(v)
}

fn read_value(text: &[u8]) -> Result<serde_json::Value, Invalid> {
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    if matches!(first, Some(b'{' | b'[')) {
        serde_json::from_slice(text).map_err(|e| Invalid::new("(document)", e.to_string()))
    } else {
        let yaml_error = |e: yaml_serde::Error| Invalid::new("(document)", e.to_string());
        // Anchors and aliases resolve while reading; merge keys (`<<:
        // *defaults`, as Kong's docs use with `_ignore`) are applied here.
        let mut y: yaml_serde::Value = yaml_serde::from_slice(text).map_err(yaml_error)?;
        y.apply_merge().map_err(yaml_error)?;
        let mut v: serde_json::Value = yaml_serde::from_value(y).map_err(yaml_error)?;
        // `_format_version: 3.0` unquoted is a YAML number.
        if let Some(n) = v.get("_format_version").and_then(serde_json::Value::as_f64) {
            v["_format_version"] = format!("{n:?}").into();
        }
        Ok(v)
    }
}

/// Parses a declarative document (JSON or YAML), naming the field of the
/// first error.
pub fn parse(text: &[u8]) -> Result<Declarative, Invalid> {
    parse_value(to_value(text)?)
}

/// Parses a document already read into a value, naming the field of the
/// first error (`services[0].routes[1].paths`).
pub fn parse_value(mut v: serde_json::Value) -> Result<Declarative, Invalid> {
    // Entities the Admin API stored may hold nulls (a form's empty field,
    // a PATCH clearing one).
    strip_nulls(&mut v);
    let d: Declarative = serde_path_to_error::deserialize(&v).map_err(|e| {
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

        let e = parse(br#"{"_format_version": "3.0", "services": [{"name": "a", "routes": [{"name": "r", "sources": [{"ip": "10.0.0.1"}]}]}]}"#)
            .unwrap_err();
        assert_eq!(e.field, "services[0].routes[0].sources");
        assert!(e.message.contains("sources"), "{e}");
        // snis: Kong's declarative form and the Admin API's, one shape out.
        let d = parse(
            br#"{"_format_version": "3.0", "certificates": [{"cert": "c", "key": "k",
                 "snis": [{"name": "a.example.com", "tags": ["x"]}, "*.example.com"]}]}"#,
        )
        .unwrap();
        let names: Vec<&str> = d.certificates[0]
            .snis
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["a.example.com", "*.example.com"]);
        assert_eq!(
            serde_json::to_value(&d.certificates[0].snis).unwrap(),
            serde_json::json!([{"name": "a.example.com", "tags": ["x"]}, {"name": "*.example.com"}])
        );
        let e = parse(br#"{"_format_version": "3.0", "certificates": [{"cert": "c", "key": "k", "snis": [{"nam": "a"}]}]}"#)
            .unwrap_err();
        assert!(e.field.starts_with("certificates[0].snis[0]"), "{e}");
        let e =
            parse(br#"{"_format_version": "3.0", "certificates": [{"cert": "c"}]}"#).unwrap_err();
        assert_eq!(e.field, "certificates[0]");
        assert!(e.message.contains("key"), "{e}");
        let e = parse(br#"{"_format_version": "9"}"#).unwrap_err();
        assert_eq!(e.field, "_format_version");
        let e = parse(br#"{"_format_version": "3.0", "services": [{"name": "a", "port": 70000}]}"#)
            .unwrap_err();
        assert_eq!(e.field, "services[0].port");
    }

    #[test]
    fn yaml_documents_parse_with_field_paths() {
        let d = parse(
            b"_format_version: '3.0'\nservices:\n- name: users\n  url: http://users:8080\n  routes:\n  - name: r\n    paths: [/users]\n    strip_path: false\n",
        )
        .unwrap();
        assert_eq!(d.services[0].routes[0].paths, vec!["/users"]);
        assert_eq!(d.services[0].routes[0].strip_path, Some(false));
        let e = parse(b"_format_version: '3.0'\nservices:\n- name: a\n  port: many\n").unwrap_err();
        assert_eq!(e.field, "services[0].port");
        let e =
            parse(b"_format_version: '3.0'\nroutes:\n- name: a\n  paths: [/a]\n  sources: [x]\n")
                .unwrap_err();
        assert_eq!(e.field, "routes[0].sources");
        let d = parse(b"_format_version: 3.0\n").unwrap();
        assert_eq!(d.format_version, "3.0");
        let e = parse(b"services: [unclosed\n").unwrap_err();
        assert_eq!(e.field, "(document)");
        assert!(e.message.contains("line"), "{e}");
    }
}
