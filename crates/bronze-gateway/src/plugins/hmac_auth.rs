//! hmac-auth, as Kong's: the client signs some of its request's headers
//! with a secret it shares with the gateway and says so in
//! `Authorization` (or `Proxy-Authorization`):
//!
//! ```text
//! Authorization: hmac username="alice", algorithm="hmac-sha256",
//!                headers="date request-line", signature="<base64>"
//! ```
//!
//! The signing string is one line per named header, `name: value`, and for
//! `request-line` the request's `METHOD path?query HTTP/1.1`, joined by
//! newlines. The request must carry a `Date` or `X-Date` within
//! `clock_skew` seconds of now (replays of an old signature fail), and
//! every header of `enforce_headers` must be signed. Kong's answers: 401
//! `Unauthorized` without credentials, `HMAC signature cannot be
//! verified...` for a bad date, malformed parameters or an unknown user,
//! `HMAC signature does not match` for a wrong signature.
//! `validate_request_body` (a `Digest` of the body) is refused: Bronze
//! does not buffer request bodies.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::key_auth::resolve_anonymous;
use super::{Answer, Credentials, Ctx, Plugin, parse_config, set_consumer};
use crate::declarative::{self, Invalid};

const ALGORITHMS: [&str; 4] = ["hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512"];

/// Kong's configuration of hmac-auth with nothing set, as Kong shows it
/// (3.9's `kong/plugins/hmac-auth/schema.lua`): every field, with its
/// default or null. Bronze reads an unset field as that default.
pub(crate) fn kong_defaults() -> serde_json::Value {
    serde_json::json!({
        "hide_credentials": false,
        "clock_skew": 300,
        "anonymous": null,
        "validate_request_body": false,
        "enforce_headers": [],
        "algorithms": ["hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512"],
        "realm": null,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    hide_credentials: Option<bool>,
    #[serde(default)]
    clock_skew: Option<f64>,
    #[serde(default)]
    anonymous: Option<String>,
    #[serde(default)]
    validate_request_body: Option<bool>,
    #[serde(default)]
    enforce_headers: Option<Vec<String>>,
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    #[serde(default)]
    realm: Option<String>,
}

/// One credential, compiled.
pub struct Credential {
    consumer: u32,
    secret: Vec<u8>,
    id: HeaderValue,
}

impl Credential {
    pub fn new(
        cred: &declarative::HmacAuthCredential,
        consumer: u32,
        field: &str,
    ) -> Result<Self, Invalid> {
        if cred.username.is_empty() {
            return Err(Invalid::new(
                format!("{field}.username"),
                "expected a username",
            ));
        }
        let secret = cred
            .secret
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Invalid::new(format!("{field}.secret"), "expected a secret"))?;
        // Kong's X-Credential-Identifier for hmac-auth is the username.
        let id = HeaderValue::from_str(&cred.username).map_err(|_| {
            Invalid::new(
                format!("{field}.username"),
                "expected a value that fits an HTTP header",
            )
        })?;
        Ok(Self {
            consumer,
            secret: secret.as_bytes().to_vec(),
            id,
        })
    }
}

pub struct HmacAuth {
    hide_credentials: bool,
    clock_skew: Duration,
    anonymous: Option<Arc<super::Consumer>>,
    enforce: Vec<String>,
    algorithms: Vec<&'static str>,
    challenge: HeaderValue,
    credentials: Arc<Credentials>,
}

impl HmacAuth {
    pub fn new(
        config: Option<&serde_json::Value>,
        field: &str,
        credentials: &Arc<Credentials>,
    ) -> Result<Self, Invalid> {
        let c: Config = parse_config(config, field)?;
        let f = |n: &str| format!("{field}.{n}");
        if c.validate_request_body == Some(true) {
            return Err(Invalid::new(
                f("validate_request_body"),
                "not implemented: Bronze does not buffer request bodies; expected false",
            ));
        }
        let skew = c.clock_skew.unwrap_or(300.0);
        let clock_skew = Duration::try_from_secs_f64(skew)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| Invalid::new(f("clock_skew"), "expected seconds, more than 0"))?;
        let mut algorithms = Vec::new();
        for (i, a) in c
            .algorithms
            .unwrap_or_else(|| ALGORITHMS.iter().map(|a| a.to_string()).collect())
            .iter()
            .enumerate()
        {
            let known = ALGORITHMS
                .iter()
                .find(|k| **k == a.as_str())
                .ok_or_else(|| {
                    Invalid::new(
                        f(&format!("algorithms[{i}]")),
                        format!("{a:?}: expected one of: {}", ALGORITHMS.join(", ")),
                    )
                })?;
            algorithms.push(*known);
        }
        let challenge = match &c.realm {
            Some(r) => HeaderValue::from_str(&format!("hmac realm=\"{r}\""))
                .map_err(|_| Invalid::new(f("realm"), "expected a header-safe realm"))?,
            None => HeaderValue::from_static("hmac"),
        };
        Ok(Self {
            hide_credentials: c.hide_credentials.unwrap_or(false),
            clock_skew,
            anonymous: resolve_anonymous(c.anonymous.as_deref(), credentials, field)?,
            enforce: c
                .enforce_headers
                .unwrap_or_default()
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            algorithms,
            challenge,
            credentials: credentials.clone(),
        })
    }

    /// Whether `Date` or `X-Date` is within the clock skew of now.
    fn fresh(&self, req: &http::request::Parts) -> bool {
        let now = SystemTime::now();
        ["x-date", "date"].iter().any(|name| {
            req.headers
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok())
                .is_some_and(|t| {
                    let skew = now.duration_since(t).unwrap_or_else(|e| e.duration());
                    skew <= self.clock_skew
                })
        })
    }

    /// The credential the request proves it holds, or Kong's message.
    fn authenticate(&self, req: &mut http::request::Parts) -> Result<&Credential, &'static str> {
        const NOT_VERIFIED: &str = "HMAC signature cannot be verified";
        if !self.fresh(req) {
            return Err(
                "HMAC signature cannot be verified, a valid date or x-date header is required for HMAC Authentication",
            );
        }
        // Proxy-Authorization first, then Authorization (Kong's order).
        let (header, params) = [
            http::header::PROXY_AUTHORIZATION,
            http::header::AUTHORIZATION,
        ]
        .into_iter()
        .find_map(|h| {
            let p = req
                .headers
                .get(&h)
                .and_then(|v| v.to_str().ok())
                .and_then(Params::parse)?;
            Some((h, p))
        })
        .ok_or(NOT_VERIFIED)?;
        let algorithm = self
            .algorithms
            .iter()
            .find(|a| **a == params.algorithm)
            .ok_or(NOT_VERIFIED)?;
        if !self
            .enforce
            .iter()
            .all(|h| params.headers.iter().any(|s| s == h))
        {
            return Err(NOT_VERIFIED);
        }
        let signature = base64::engine::general_purpose::STANDARD
            .decode(params.signature)
            .map_err(|_| NOT_VERIFIED)?;
        let cred = self
            .credentials
            .hmac
            .get(params.username)
            .ok_or(NOT_VERIFIED)?;
        let signing = signing_string(req, &params.headers);
        let alg = match *algorithm {
            "hmac-sha1" => ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            "hmac-sha256" => ring::hmac::HMAC_SHA256,
            "hmac-sha384" => ring::hmac::HMAC_SHA384,
            _ => ring::hmac::HMAC_SHA512,
        };
        let key = ring::hmac::Key::new(alg, &cred.secret);
        ring::hmac::verify(&key, signing.as_bytes(), &signature)
            .map_err(|_| "HMAC signature does not match")?;
        if self.hide_credentials {
            req.headers.remove(header);
        }
        Ok(cred)
    }
}

/// The parameters of an `hmac ...` (or `Signature ...`) credential.
struct Params<'a> {
    username: &'a str,
    algorithm: &'a str,
    /// Lowercased header names (and `request-line`), in order.
    headers: Vec<String>,
    signature: &'a str,
}

impl<'a> Params<'a> {
    /// `hmac username="..", algorithm="..", headers="..", signature=".."`;
    /// `None` when it is not one (or lacks username or signature).
    fn parse(value: &'a str) -> Option<Self> {
        let (scheme, rest) = value.trim_start().split_once(char::is_whitespace)?;
        if !scheme.eq_ignore_ascii_case("hmac") && !scheme.eq_ignore_ascii_case("signature") {
            return None;
        }
        let (mut username, mut algorithm, mut headers, mut signature) = (None, None, None, None);
        let mut rest = rest;
        while let Some((key, after)) = rest.split_once('=') {
            let key = key.trim_matches(|c: char| c == ',' || c.is_whitespace());
            let after = after.trim_start().strip_prefix('"')?;
            let (value, next) = after.split_once('"')?;
            match key.to_ascii_lowercase().as_str() {
                "username" | "keyid" => username = Some(value),
                "algorithm" => algorithm = Some(value),
                "headers" => headers = Some(value),
                "signature" => signature = Some(value),
                _ => {}
            }
            rest = next;
        }
        Some(Self {
            username: username.filter(|u| !u.is_empty())?,
            // Kong's default when a client names none.
            algorithm: algorithm.unwrap_or("hmac-sha1"),
            headers: headers
                .unwrap_or("date")
                .split_whitespace()
                .map(str::to_ascii_lowercase)
                .collect(),
            signature: signature.filter(|s| !s.is_empty())?,
        })
    }
}

/// Kong's signing string: `name: value` per signed header (`name:` when
/// the request lacks it), `request-line` as `METHOD target HTTP/x.y`,
/// joined by newlines.
fn signing_string(req: &http::request::Parts, names: &[String]) -> String {
    let mut out = String::new();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let value = HeaderName::from_bytes(name.as_bytes())
            .ok()
            .and_then(|n| req.headers.get(n))
            .and_then(|v| v.to_str().ok());
        match value {
            Some(v) => {
                out.push_str(name);
                out.push_str(": ");
                out.push_str(v);
            }
            None if name == "request-line" => {
                let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
                let version = match req.version {
                    http::Version::HTTP_2 => "2.0",
                    http::Version::HTTP_10 => "1.0",
                    _ => "1.1",
                };
                out.push_str(&format!("{} {target} HTTP/{version}", req.method));
            }
            None => {
                out.push_str(name);
                out.push(':');
            }
        }
    }
    out
}

impl Plugin for HmacAuth {
    fn name(&self) -> &'static str {
        "hmac-auth"
    }

    fn priority(&self) -> i32 {
        1030
    }

    fn access(&self, req: &mut http::request::Parts, ctx: &mut Ctx) -> Result<(), Answer> {
        // Another auth plugin already authenticated: logical OR (Kong).
        if self.anonymous.is_some() && ctx.credential.is_some() {
            return Ok(());
        }
        let has_credentials = req.headers.contains_key(http::header::AUTHORIZATION)
            || req.headers.contains_key(http::header::PROXY_AUTHORIZATION);
        let failure = if has_credentials {
            match self.authenticate(req) {
                Ok(cred) => {
                    let consumer = self.credentials.consumers[cred.consumer as usize].clone();
                    let id = cred.id.clone();
                    set_consumer(req, ctx, Some(&consumer), Some(id));
                    return Ok(());
                }
                Err(message) => message,
            }
        } else {
            "Unauthorized"
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
    fn credentials_parse_as_kong_writes_them() {
        let p = Params::parse(
            r#"hmac username="alice", algorithm="hmac-sha256", headers="Date request-line", signature="c2ln""#,
        )
        .expect("parsed");
        assert_eq!(
            (p.username, p.algorithm, p.signature),
            ("alice", "hmac-sha256", "c2ln")
        );
        assert_eq!(p.headers, ["date", "request-line"]);
        let p = Params::parse(r#"hmac username="bob",signature="eA==""#).expect("defaults");
        assert_eq!(
            (p.algorithm, p.headers.as_slice()),
            ("hmac-sha1", &["date".to_string()][..])
        );
        for bad in [
            "Basic YTpi",
            r#"hmac algorithm="hmac-sha256", signature="x""#,
            r#"hmac username="a", signature="#,
            r#"hmac username="a", signature="unterminated"#,
            "hmac",
        ] {
            assert!(Params::parse(bad).is_none(), "{bad}");
        }
    }
}
