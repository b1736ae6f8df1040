//! Entities as Kong's Admin API answers with them. Kong keeps every field
//! of an entity's schema, a left-out one with its default (null when it has
//! none), and answers, lists and pages entities with all of them; tools
//! that read entities (deck, Konga, scripts) expect that shape. Bronze
//! stores what a request gave and fills the rest in here, when an entity
//! is shown, so what is stored stays what was asked for.
//!
//! The defaults are Kong 3.9's (`kong/db/schema/entities/*.lua`, each
//! plugin's `schema.lua`, whose defaults sit beside the plugin's own
//! `Config` as `kong_defaults`), shown as Bronze behaves where it differs:
//! a service's port is 443 for `https` and `grpcs` when none is set, where
//! Kong's schema says 80; an upstream that hashes is `consistent-hashing`.
//! Fields Bronze adds (`retry_budget`, `circuit_breaker`, `bronze_jwks_*`)
//! are shown when set. Every value shown is one Bronze takes back, so an
//! entity read and written again (deck's sync, Konga's edit form) is the
//! same entity.
//!
//! A service's `url` is Kong's write-only shorthand for `protocol`, `host`,
//! `port` and `path`: [`expand_url`] replaces it by them when the Admin
//! API writes a service (and before a PATCH merges into one a document
//! declared with a `url`), so a later PATCH of `port` changes the port.

use std::sync::LazyLock;

use serde_json::{Map, Value, json};

use crate::declarative::Invalid;
use crate::entities::{Entities, Kind};

/// Entity `v` of kind `k`, as Kong shows it.
pub fn entity(e: &Entities, k: &Kind, v: Value) -> Value {
    let mut v = crate::certs::shown(e, k, v);
    let Some(o) = v.as_object_mut() else {
        return v;
    };
    if k.name == "services" {
        // A declarative document may say `url`; Kong never shows it.
        let _ = expand_url(o);
    }
    if let Some(defaults) = defaults(k.name) {
        fill(o, defaults);
    }
    let unset = |o: &Map<String, Value>, key: &str| o.get(key).is_none_or(Value::is_null);
    match k.name {
        "services" if unset(o, "port") => {
            let tls = matches!(
                o.get("protocol").and_then(Value::as_str),
                Some("https" | "grpcs")
            );
            o.insert("port".into(), crate::router::default_port(tls).into());
        }
        "upstreams" if unset(o, "algorithm") => {
            let hashing = o
                .get("hash_on")
                .and_then(Value::as_str)
                .is_some_and(|h| h != "none");
            let algorithm = if hashing {
                "consistent-hashing"
            } else {
                "round-robin"
            };
            o.insert("algorithm".into(), algorithm.into());
        }
        "plugins" => {
            let name = o.get("name").and_then(Value::as_str).unwrap_or_default();
            if let Some((config, protocols)) = crate::plugins::kong_defaults(name) {
                let Value::Object(config) = config else {
                    unreachable!("a plugin's defaults are an object")
                };
                match o.get_mut("config") {
                    Some(Value::Object(have)) => fill(have, &config),
                    _ => {
                        o.insert("config".into(), Value::Object(config));
                    }
                }
                if unset(o, "protocols") {
                    o.insert("protocols".into(), json!(protocols));
                }
            }
        }
        // Kong's targets keep their times in (fractional) seconds with
        // milliseconds: numbers, not integers.
        "targets" => {
            for t in crate::entities::TIMESTAMPS {
                if let Some(s) = o.get(t).and_then(Value::as_i64) {
                    o.insert(t.into(), json!(s as f64));
                }
            }
        }
        // Kong computes a CA certificate's digest when it is written.
        "ca_certificates" if unset(o, "cert_digest") => {
            let digest = o.get("cert").and_then(Value::as_str).and_then(cert_digest);
            o.insert(
                "cert_digest".into(),
                digest.map_or(Value::Null, Value::from),
            );
        }
        _ => {}
    }
    // Kong's credentials and acls have no `updated_at`.
    if CREATED_ONLY.contains(&k.name) {
        o.remove("updated_at");
    }
    v
}

/// Kinds whose entities Kong never updates in place.
const CREATED_ONLY: &[&str] = &[
    "keyauth_credentials",
    "basicauth_credentials",
    "jwt_secrets",
    "hmacauth_credentials",
    "acls",
];

/// Replaces a service's `url` by the fields it stands for (a path left out
/// of the url clears `path`), as Kong does when a service is written.
/// Errors name `url`.
pub fn expand_url(o: &mut Map<String, Value>) -> Result<(), Invalid> {
    let Some(url) = o.remove("url") else {
        return Ok(());
    };
    let Some(text) = url.as_str() else {
        if !url.is_null() {
            o.insert("url".into(), url);
            return Err(Invalid::new("url", "expected a string"));
        }
        return Ok(());
    };
    let u = match crate::router::service_url(text, "url") {
        Ok(u) => u,
        Err(e) => {
            o.insert("url".into(), url);
            return Err(e);
        }
    };
    o.insert(
        "protocol".into(),
        crate::router::protocol_name(u.protocol).into(),
    );
    o.insert("host".into(), u.host.into());
    o.insert("port".into(), u.port.into());
    o.insert("path".into(), u.path.map_or(Value::Null, Value::from));
    Ok(())
}

/// Puts what `defaults` has and `o` lacks (or holds null) into `o`;
/// records (objects) are filled field by field.
fn fill(o: &mut Map<String, Value>, defaults: &Map<String, Value>) {
    for (key, d) in defaults {
        match (o.get_mut(key), d) {
            (Some(Value::Object(have)), Value::Object(d)) => fill(have, d),
            (Some(have), _) if !have.is_null() => {}
            _ => {
                o.insert(key.clone(), d.clone());
            }
        }
    }
}

/// SHA-256 (hex) of a PEM certificate's first DER, Kong's `cert_digest`.
fn cert_digest(pem: &str) -> Option<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    let hash = crate::sha256(&[der.as_ref()]);
    Some(hash.iter().map(|b| format!("{b:02x}")).collect())
}

/// The fields of each kind with Kong's defaults (null: none), besides
/// `id`, `created_at` and `updated_at`, which every stored entity has.
fn defaults(kind: &str) -> Option<&'static Map<String, Value>> {
    static ALL: LazyLock<Map<String, Value>> = LazyLock::new(|| {
        let Value::Object(all) = json!({
            "services": {
                "name": null,
                "retries": 5,
                "protocol": "http",
                "host": null,
                // `port` follows the protocol (see `entity`).
                "path": null,
                "connect_timeout": 60000,
                "write_timeout": 60000,
                "read_timeout": 60000,
                "tags": null,
                "client_certificate": null,
                "tls_verify": null,
                "tls_verify_depth": null,
                "ca_certificates": null,
                "enabled": true,
            },
            "routes": {
                "name": null,
                "protocols": ["http", "https"],
                "methods": null,
                "hosts": null,
                "paths": null,
                "headers": null,
                "https_redirect_status_code": 426,
                "regex_priority": 0,
                "strip_path": true,
                "path_handling": "v0",
                "preserve_host": false,
                "request_buffering": true,
                "response_buffering": true,
                "snis": null,
                "sources": null,
                "destinations": null,
                "tags": null,
                "service": null,
            },
            "upstreams": {
                // `algorithm` follows `hash_on` (see `entity`).
                "hash_on": "none",
                "hash_fallback": "none",
                "hash_on_header": null,
                "hash_fallback_header": null,
                "hash_on_cookie": null,
                "hash_on_cookie_path": "/",
                "hash_on_query_arg": null,
                "hash_fallback_query_arg": null,
                "hash_on_uri_capture": null,
                "hash_fallback_uri_capture": null,
                "slots": 10000,
                "healthchecks": {
                    "active": {
                        "type": "http",
                        "timeout": 1,
                        "concurrency": 10,
                        "http_path": "/",
                        "https_sni": null,
                        "https_verify_certificate": true,
                        "headers": null,
                        "healthy": {
                            "interval": 0,
                            "http_statuses": [200, 302],
                            "successes": 0,
                        },
                        "unhealthy": {
                            "interval": 0,
                            "http_statuses": [429, 404, 500, 501, 502, 503, 504, 505],
                            "tcp_failures": 0,
                            "timeouts": 0,
                            "http_failures": 0,
                        },
                    },
                    "passive": {
                        "type": "http",
                        "healthy": {
                            "http_statuses": [200, 201, 202, 203, 204, 205, 206, 207, 208, 226,
                                              300, 301, 302, 303, 304, 305, 306, 307, 308],
                            "successes": 0,
                        },
                        "unhealthy": {
                            "http_statuses": [429, 500, 503],
                            "tcp_failures": 0,
                            "timeouts": 0,
                            "http_failures": 0,
                        },
                    },
                    "threshold": 0,
                },
                "tags": null,
                "host_header": null,
                "client_certificate": null,
                "use_srv_name": false,
            },
            "targets": {"weight": 100, "tags": null},
            "consumers": {"username": null, "custom_id": null, "tags": null},
            "plugins": {
                "instance_name": null,
                "route": null,
                "service": null,
                "consumer": null,
                // `config` and `protocols` are the plugin's (see `entity`).
                "enabled": true,
                "tags": null,
            },
            "certificates": {"cert_alt": null, "key_alt": null, "tags": null},
            "ca_certificates": {"tags": null},
            "snis": {"tags": null},
            "keyauth_credentials": {"tags": null},
            "basicauth_credentials": {"tags": null},
            "jwt_secrets": {"rsa_public_key": null, "algorithm": "HS256", "tags": null},
            "hmacauth_credentials": {"tags": null},
            "acls": {"tags": null},
        }) else {
            unreachable!("an object")
        };
        all
    });
    ALL.get(kind).and_then(Value::as_object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(o) => o,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn a_url_becomes_the_fields_it_stands_for() {
        let mut o =
            object(json!({"name": "s", "url": "https://api.example:8443/v1", "path": "/old"}));
        expand_url(&mut o).unwrap();
        assert_eq!(
            Value::Object(o),
            json!({"name": "s", "protocol": "https", "host": "api.example", "port": 8443, "path": "/v1"})
        );
        // No path written: Kong's null (a path set before is cleared).
        let mut o = object(json!({"url": "grpcs://g.example", "path": "/old"}));
        expand_url(&mut o).unwrap();
        assert_eq!(
            Value::Object(o),
            json!({"protocol": "grpcs", "host": "g.example", "port": 443, "path": null})
        );
        let mut o = object(json!({"url": "http://x/"}));
        expand_url(&mut o).unwrap();
        assert_eq!(o["path"], "/");
        let mut o = object(json!({"url": "ftp://x"}));
        assert_eq!(expand_url(&mut o).unwrap_err().field, "url");
        assert_eq!(o["url"], "ftp://x", "a refused url is left as written");
    }

    #[test]
    fn records_are_filled_field_by_field_and_set_values_stay() {
        let mut o = object(json!({"a": 1, "r": {"x": 5}, "n": null}));
        fill(
            &mut o,
            &object(json!({"a": 2, "b": 3, "r": {"x": 0, "y": 0}, "n": [1]})),
        );
        assert_eq!(
            Value::Object(o),
            json!({"a": 1, "b": 3, "r": {"x": 5, "y": 0}, "n": [1]})
        );
    }

    /// Every plugin's shown configuration, given only what Kong requires,
    /// compiles: what the Admin API answers, Bronze takes back.
    #[test]
    fn every_plugin_shown_with_its_defaults_is_accepted_back() {
        for (name, _) in crate::plugins::PLUGINS {
            let required = match *name {
                "acl" => json!({"allow": ["staff"]}),
                "ip-restriction" => json!({"allow": ["127.0.0.1"]}),
                "rate-limiting" => json!({"minute": 5}),
                "file-log" => json!({"path": "/tmp/bronze-shown.log"}),
                "http-log" => json!({"http_endpoint": "http://127.0.0.1:9/"}),
                "tcp-log" | "udp-log" => json!({"host": "127.0.0.1", "port": 9}),
                _ => json!({}),
            };
            let k = crate::entities::kind("plugins").unwrap();
            let shown = entity(
                &Entities::default(),
                k,
                json!({"id": "00000000-0000-4000-8000-000000000001", "name": name, "config": required}),
            );
            let (config, _) = crate::plugins::kong_defaults(name).unwrap();
            let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(&shown["config"]), keys(&config), "{name}");
            let mut plugin = shown.clone();
            for t in ["created_at", "updated_at"] {
                plugin.as_object_mut().unwrap().remove(t);
            }
            let doc = json!({"_format_version": "3.0", "plugins": [plugin]});
            let d = crate::declarative::parse_value(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            crate::flat::compile(&d, &Default::default())
                .unwrap_or_else(|e| panic!("{name} as shown is refused: {e}\n{shown}"));
        }
    }
}
