//! jwt: a signed token (HS256/384/512 or RS256) whose `key_claim_name`
//! claim (`iss`) names a consumer's jwt secret, as Kong's; claims `exp` and
//! `nbf` checked when listed in `claims_to_verify`.
//!
//! Bronze extension: keys from a JWKS document, `bronze_jwks_path` (a file)
//! or `bronze_jwks_url` (http or https), re-read every
//! `bronze_jwks_refresh` seconds (default 300) in the background. A token
//! whose header `kid` names a JWKS key is verified with that key; the
//! consumer is then the jwt secret named by its key claim if there is one,
//! else the request passes authenticated without a consumer.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bronze_jwt::{Algorithm, Key, Malformed, Token};
use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode};
use serde::Deserialize;

use super::{Answer, Credentials, Ctx, Plugin, exit_raw, parse_config, set_consumer};
use crate::declarative::{Invalid, JwtSecret};

/// A consumer's jwt secret, compiled.
pub struct Secret {
    pub key: String,
    consumer: u32,
    algorithm: Algorithm,
    /// The secret as given (HS*; decoded per plugin when
    /// `secret_is_base64`), or the RSA key.
    secret: Option<String>,
    rsa: Option<Key>,
    identifier: HeaderValue,
}

fn algorithm(name: &str) -> Option<Algorithm> {
    Algorithm::from_name(name)
}

impl Secret {
    pub fn new(s: &JwtSecret, consumer: u32, field: &str) -> Result<Self, Invalid> {
        let f = |n: &str| format!("{field}.{n}");
        let key = match &s.key {
            Some(k) if !k.is_empty() => k.clone(),
            // Kong generates a random key; Bronze needs a stable one.
            _ => {
                return Err(Invalid::new(
                    f("key"),
                    "expected a key (matched against the token's key claim)",
                ));
            }
        };
        let name = s.algorithm.as_deref().unwrap_or("HS256");
        let algorithm = algorithm(name).ok_or_else(|| {
            Invalid::new(
                f("algorithm"),
                format!("{name:?}: expected one of: HS256, HS384, HS512, RS256"),
            )
        })?;
        let rsa = if algorithm == Algorithm::RS256 {
            let pem = s.rsa_public_key.as_deref().ok_or_else(|| {
                Invalid::new(
                    f("rsa_public_key"),
                    "required for RS256: expected a PEM public key",
                )
            })?;
            Some(
                Key::rsa_pem(pem)
                    .map_err(|e| Invalid::new(f("rsa_public_key"), format!("invalid key: {e}")))?,
            )
        } else {
            None
        };
        if algorithm != Algorithm::RS256 && s.secret.as_deref().is_none_or(str::is_empty) {
            return Err(Invalid::new(f("secret"), format!("required for {name}")));
        }
        Ok(Self {
            identifier: HeaderValue::from_str(&key)
                .map_err(|_| Invalid::new(f("key"), "expected a header-safe key"))?,
            key,
            consumer,
            algorithm,
            secret: s.secret.clone(),
            rsa,
        })
    }
}

/// Kong's configuration of jwt with nothing set, as Kong shows it
/// (3.9's `kong/plugins/jwt/schema.lua`): every field, with its
/// default or null. Bronze reads an unset field as that default.
pub(crate) fn kong_defaults() -> serde_json::Value {
    serde_json::json!({
        "uri_param_names": ["jwt"],
        "cookie_names": [],
        "key_claim_name": "iss",
        "secret_is_base64": false,
        "claims_to_verify": null,
        "anonymous": null,
        "run_on_preflight": true,
        "maximum_expiration": 0,
        "header_names": ["authorization"],
        "realm": null,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    uri_param_names: Option<Vec<String>>,
    #[serde(default)]
    cookie_names: Option<Vec<String>>,
    #[serde(default)]
    header_names: Option<Vec<String>>,
    #[serde(default)]
    claims_to_verify: Option<Vec<String>>,
    #[serde(default)]
    key_claim_name: Option<String>,
    #[serde(default)]
    secret_is_base64: Option<bool>,
    #[serde(default)]
    anonymous: Option<String>,
    #[serde(default)]
    run_on_preflight: Option<bool>,
    #[serde(default)]
    maximum_expiration: Option<u64>,
    #[serde(default)]
    realm: Option<String>,
    /// Bronze extension: a JWKS file.
    #[serde(default)]
    bronze_jwks_path: Option<String>,
    /// Bronze extension: a JWKS URL (http or https).
    #[serde(default)]
    bronze_jwks_url: Option<String>,
    /// Bronze extension: seconds between reloads of the JWKS.
    #[serde(default)]
    bronze_jwks_refresh: Option<u64>,
}

/// JWKS keys by `kid`.
type Jwks = HashMap<String, (Key, Option<Algorithm>)>;

pub struct Jwt {
    uri_params: Vec<String>,
    cookies: Vec<String>,
    headers: Vec<HeaderName>,
    verify_exp: bool,
    verify_nbf: bool,
    key_claim: String,
    secret_is_base64: bool,
    anonymous: Option<Arc<super::Consumer>>,
    run_on_preflight: bool,
    maximum_expiration: u64,
    challenge: HeaderValue,
    credentials: Arc<Credentials>,
    jwks: Option<Arc<ArcSwap<Jwks>>>,
}

/// Parses a JWKS document.
pub fn parse_jwks(text: &[u8]) -> Result<Jwks, String> {
    bronze_jwt::parse_jwks(text)
}

async fn fetch_jwks(source: &Source) -> Result<Jwks, String> {
    let text = match source {
        Source::Path(p) => tokio::fs::read(p).await.map_err(|e| format!("{p}: {e}"))?,
        Source::Url(u) => {
            bronze_runtime::install_crypto_provider();
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| e.to_string())?;
            let resp = client
                .get(u)
                .send()
                .await
                .map_err(|e| format!("{u}: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("{u}: status {}", resp.status()));
            }
            resp.bytes()
                .await
                .map_err(|e| format!("{u}: {e}"))?
                .to_vec()
        }
    };
    parse_jwks(&text)
}

enum Source {
    Path(String),
    Url(String),
}

/// Reloads the JWKS until the plugin is dropped (a new configuration).
async fn refresh(source: Source, store: Weak<ArcSwap<Jwks>>, every: Duration) {
    let mut first = true;
    loop {
        if !first {
            tokio::time::sleep(every).await;
        }
        let Some(s) = store.upgrade() else {
            return;
        };
        match fetch_jwks(&source).await {
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), "jwks loaded");
                s.store(Arc::new(keys));
            }
            Err(error) => tracing::warn!(%error, "jwks not loaded; keeping the previous keys"),
        }
        drop(s);
        if first {
            first = false;
        }
    }
}

fn unix_now() -> f64 {
    bronze_runtime::unix_time().as_secs_f64()
}

/// Kong's claim checks: a map of claim to error, empty when fine.
pub fn check_claims(
    claims: &serde_json::Map<String, serde_json::Value>,
    verify_exp: bool,
    verify_nbf: bool,
    maximum_expiration: u64,
    now: f64,
) -> serde_json::Map<String, serde_json::Value> {
    let mut errors = serde_json::Map::new();
    let number = |name: &str| claims.get(name).map(|v| v.as_f64());
    if verify_exp {
        match number("exp") {
            None => {
                errors.insert("exp".into(), "must be a number".into());
            }
            Some(None) => {
                errors.insert("exp".into(), "must be a number".into());
            }
            Some(Some(exp)) if exp <= now => {
                errors.insert("exp".into(), "token expired".into());
            }
            _ => {}
        }
    }
    if verify_nbf {
        match number("nbf") {
            None | Some(None) => {
                errors.insert("nbf".into(), "must be a number".into());
            }
            Some(Some(nbf)) if nbf > now => {
                errors.insert("nbf".into(), "token not valid yet".into());
            }
            _ => {}
        }
    }
    if maximum_expiration > 0 && !errors.contains_key("exp") {
        match number("exp") {
            Some(Some(exp)) if exp > now + maximum_expiration as f64 => {
                errors.insert("exp".into(), "exceeds maximum allowed expiration".into());
            }
            Some(Some(_)) => {}
            _ => {
                errors.insert("exp".into(), "must be a number".into());
            }
        }
    }
    errors
}

impl Jwt {
    pub fn new(
        config: Option<&serde_json::Value>,
        field: &str,
        credentials: &Arc<Credentials>,
    ) -> Result<Self, Invalid> {
        let c: Config = parse_config(config, field)?;
        let f = |n: &str| format!("{field}.{n}");
        let mut verify_exp = false;
        let mut verify_nbf = false;
        for (i, claim) in c.claims_to_verify.unwrap_or_default().iter().enumerate() {
            match claim.as_str() {
                "exp" => verify_exp = true,
                "nbf" => verify_nbf = true,
                other => {
                    return Err(Invalid::new(
                        f(&format!("claims_to_verify[{i}]")),
                        format!("{other:?}: expected one of: exp, nbf"),
                    ));
                }
            }
        }
        let maximum_expiration = c.maximum_expiration.unwrap_or(0);
        if maximum_expiration > 31_536_000 {
            return Err(Invalid::new(
                f("maximum_expiration"),
                "value should be between 0 and 31536000",
            ));
        }
        if maximum_expiration > 0 && !verify_exp {
            return Err(Invalid::new(
                f("maximum_expiration"),
                "expected \"exp\" in claims_to_verify when maximum_expiration is set",
            ));
        }
        let headers = c
            .header_names
            .unwrap_or_else(|| vec!["authorization".into()])
            .iter()
            .enumerate()
            .map(|(i, h)| {
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| {
                    Invalid::new(
                        f(&format!("header_names[{i}]")),
                        format!("{h:?}: expected a header name"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let source = match (c.bronze_jwks_path, c.bronze_jwks_url) {
            (Some(_), Some(_)) => {
                return Err(Invalid::new(
                    f("bronze_jwks_url"),
                    "expected one of bronze_jwks_path and bronze_jwks_url",
                ));
            }
            (Some(p), None) => Some(Source::Path(p)),
            (None, Some(u)) => {
                if !u.parse::<http::Uri>().is_ok_and(|x| {
                    matches!(x.scheme_str(), Some("http" | "https")) && x.host().is_some()
                }) {
                    return Err(Invalid::new(
                        f("bronze_jwks_url"),
                        format!("{u:?}: expected an http:// or https:// URL"),
                    ));
                }
                Some(Source::Url(u))
            }
            (None, None) => None,
        };
        let every = Duration::from_secs(c.bronze_jwks_refresh.unwrap_or(300).max(1));
        let jwks = match source {
            None => None,
            Some(source) => {
                // A file is read now, so a bad one is refused by name.
                let initial = match &source {
                    Source::Path(p) => {
                        let text = std::fs::read(p).map_err(|e| {
                            Invalid::new(f("bronze_jwks_path"), format!("{p}: {e}"))
                        })?;
                        parse_jwks(&text).map_err(|e| Invalid::new(f("bronze_jwks_path"), e))?
                    }
                    Source::Url(_) => HashMap::new(),
                };
                let store = Arc::new(ArcSwap::from_pointee(initial));
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let first_now = matches!(source, Source::Url(_));
                    let weak = Arc::downgrade(&store);
                    rt.spawn(async move {
                        if !first_now {
                            tokio::time::sleep(every).await;
                        }
                        refresh(source, weak, every).await;
                    });
                }
                Some(store)
            }
        };
        let realm = c.realm.unwrap_or_else(|| "kong".into());
        Ok(Self {
            uri_params: c.uri_param_names.unwrap_or_else(|| vec!["jwt".into()]),
            cookies: c.cookie_names.unwrap_or_default(),
            headers,
            verify_exp,
            verify_nbf,
            key_claim: c.key_claim_name.unwrap_or_else(|| "iss".into()),
            secret_is_base64: c.secret_is_base64.unwrap_or(false),
            anonymous: super::key_auth::resolve_anonymous(
                c.anonymous.as_deref(),
                credentials,
                field,
            )?,
            run_on_preflight: c.run_on_preflight.unwrap_or(true),
            maximum_expiration,
            challenge: HeaderValue::from_str(&format!("Bearer realm=\"{realm}\""))
                .map_err(|_| Invalid::new(f("realm"), "expected a header-safe realm"))?,
            credentials: credentials.clone(),
            jwks,
        })
    }

    /// The tokens the request carries (distinct), in Kong's order: query
    /// parameters, cookies, headers (`Bearer`).
    fn tokens(&self, req: &http::request::Parts) -> Vec<String> {
        let mut found: Vec<String> = Vec::new();
        let mut add = |t: &str| {
            if !t.is_empty() && !found.iter().any(|x| x == t) {
                found.push(t.to_string());
            }
        };
        if let Some(q) = req.uri.query() {
            for name in &self.uri_params {
                for v in super::key_auth::query_values(q, name) {
                    add(&v);
                }
            }
        }
        if !self.cookies.is_empty() {
            for h in req.headers.get_all(http::header::COOKIE) {
                let Ok(h) = h.to_str() else { continue };
                for pair in h.split(';') {
                    if let Some((k, v)) = pair.trim().split_once('=')
                        && self.cookies.iter().any(|c| c == k)
                    {
                        add(v);
                    }
                }
            }
        }
        for name in &self.headers {
            if let Some(v) = req.headers.get(name).and_then(|v| v.to_str().ok()) {
                let v = v.trim_start();
                if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
                    add(v[7..].trim());
                }
            }
        }
        found
    }

    fn unauthorized(&self, body: serde_json::Value) -> Answer {
        super::with_challenge(
            exit_raw(
                StatusCode::UNAUTHORIZED,
                "application/json; charset=utf-8",
                body.to_string().into(),
            ),
            &self.challenge,
        )
    }

    /// Verifies `token`: the consumer (if any) and credential identifier,
    /// or Kong's error body.
    fn verify(
        &self,
        token: &str,
    ) -> Result<(Option<Arc<super::Consumer>>, HeaderValue), serde_json::Value> {
        let message = |m: &str| serde_json::json!({ "message": m });
        let t = Token::parse(token).map_err(|e| match e {
            Malformed::Shape => message("Bad token; invalid JWT"),
            Malformed::Json => message("Bad token; invalid JSON"),
        })?;
        let (header, claims) = (&t.header, &t.claims);
        let alg = t.algorithm().ok_or_else(|| message("Invalid algorithm"))?;
        let key_claim = claims.get(&self.key_claim);
        let secret = key_claim
            .and_then(|v| v.as_str())
            .and_then(|k| self.credentials.jwt.get(k));

        // Bronze extension: a JWKS key named by `kid`.
        let jwks_key = self.jwks.as_ref().and_then(|store| {
            let kid = header.get("kid")?.as_str()?;
            let keys = store.load();
            keys.get(kid).map(|(k, a)| (k.clone(), *a, kid.to_string()))
        });
        let (consumer, identifier) = if let Some((key, key_alg, kid)) = jwks_key {
            if key_alg.is_some_and(|a| a != alg) {
                return Err(message("Invalid algorithm"));
            }
            if !t.verified_by(&key, alg) {
                return Err(message("Invalid signature"));
            }
            match secret {
                Some(s) => (
                    Some(self.credentials.consumers[s.consumer as usize].clone()),
                    s.identifier.clone(),
                ),
                None => (
                    None,
                    HeaderValue::from_str(&kid).map_err(|_| message("Bad token; invalid kid"))?,
                ),
            }
        } else {
            let Some(value) = key_claim else {
                return Err(message(&format!(
                    "No mandatory '{}' in claims",
                    self.key_claim
                )));
            };
            if value.as_str().is_none_or(str::is_empty) {
                return Err(message(&format!("Invalid '{}' in claims", self.key_claim)));
            }
            let Some(secret) = secret else {
                return Err(message(&format!(
                    "No credentials found for given '{}'",
                    self.key_claim
                )));
            };
            if secret.algorithm != alg {
                return Err(message("Invalid algorithm"));
            }
            let hmac;
            let key = match &secret.rsa {
                Some(k) => k,
                None => {
                    let raw = secret.secret.as_deref().unwrap_or("");
                    hmac = if self.secret_is_base64 {
                        Key::base64_secret(raw).map_err(|_| message("Invalid key/secret"))?
                    } else {
                        Key::Secret(raw.as_bytes().to_vec())
                    };
                    &hmac
                }
            };
            if !t.verified_by(key, alg) {
                return Err(message("Invalid signature"));
            }
            (
                Some(self.credentials.consumers[secret.consumer as usize].clone()),
                secret.identifier.clone(),
            )
        };
        let errors = check_claims(
            claims,
            self.verify_exp,
            self.verify_nbf,
            self.maximum_expiration,
            unix_now(),
        );
        if !errors.is_empty() {
            return Err(serde_json::Value::Object(errors));
        }
        Ok((consumer, identifier))
    }
}

impl Plugin for Jwt {
    fn name(&self) -> &'static str {
        "jwt"
    }

    fn priority(&self) -> i32 {
        1450
    }

    fn access(&self, req: &mut http::request::Parts, ctx: &mut Ctx) -> Result<(), Answer> {
        if !self.run_on_preflight && req.method == Method::OPTIONS {
            return Ok(());
        }
        if self.anonymous.is_some() && ctx.credential.is_some() {
            return Ok(());
        }
        let tokens = self.tokens(req);
        let failure = match tokens.as_slice() {
            [] => serde_json::json!({"message": "Unauthorized"}),
            [token] => match self.verify(token) {
                Ok((consumer, identifier)) => {
                    set_consumer(req, ctx, consumer.as_ref(), Some(identifier));
                    return Ok(());
                }
                Err(body) => body,
            },
            _ => serde_json::json!({"message": "Multiple tokens provided"}),
        };
        super::anonymous_or(req, ctx, self.anonymous.as_ref(), || {
            self.unauthorized(failure)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn claims_as_kong_checks_them() {
        let now = 1_000_000.0;
        let ok = claims(serde_json::json!({"exp": 1_000_100, "nbf": 999_000}));
        assert!(check_claims(&ok, true, true, 0, now).is_empty());
        let expired = claims(serde_json::json!({"exp": 999_999}));
        assert_eq!(
            check_claims(&expired, true, false, 0, now)["exp"],
            "token expired"
        );
        // exp not checked unless listed.
        assert!(check_claims(&expired, false, false, 0, now).is_empty());
        let early = claims(serde_json::json!({"nbf": 1_000_050}));
        assert_eq!(
            check_claims(&early, false, true, 0, now)["nbf"],
            "token not valid yet"
        );
        let text = claims(serde_json::json!({"exp": "soon"}));
        assert_eq!(
            check_claims(&text, true, false, 0, now)["exp"],
            "must be a number"
        );
        let far = claims(serde_json::json!({"exp": 1_000_000 + 7200}));
        assert_eq!(
            check_claims(&far, true, false, 3600, now)["exp"],
            "exceeds maximum allowed expiration"
        );
        assert!(check_claims(&far, true, false, 8000, now).is_empty());
    }
}
