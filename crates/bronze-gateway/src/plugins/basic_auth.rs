//! basic-auth: `Authorization: Basic` (or `Proxy-Authorization`) names a
//! consumer's credential. Passwords given in plain text are hashed with
//! bcrypt when the configuration is compiled (or given as a bcrypt hash);
//! a password once verified is remembered by its SHA-256 so later requests
//! do not pay bcrypt again.
//!
//! bcrypt costs tens of milliseconds of CPU by design, so it never runs on
//! the worker thread that serves other connections: `prepare` hands the
//! check to the proxy as a [`Verification`], which runs on the blocking
//! pool, a few at a time (the gateway's `CpuSlots`), while the worker
//! goes on serving;
//! `access` then reads its [`Verdict`]. Without that, a client sending
//! wrong passwords would stall every request behind it (with `--workers
//! 1`, all of them).

use std::sync::Arc;

use base64::Engine;
use bronze_runtime::cpu::CpuSlots;
use http::header::HeaderValue;
use parking_lot::RwLock;
use serde::Deserialize;

use super::{Answer, Credentials, Ctx, Plugin, parse_config, set_consumer};
use crate::declarative::{BasicAuthCredential, Invalid};

/// bcrypt's cost for passwords given in plain text.
const COST: u32 = 10;

pub struct Credential {
    consumer: u32,
    hash: String,
    /// Kong's `X-Credential-Identifier` for basic-auth: the username.
    identifier: HeaderValue,
    /// Keys (`key`) of passwords that verified (a few, newest last).
    verified: RwLock<Vec<[u8; 32]>>,
}

/// A bcrypt check to run off the worker thread: see the module's doc.
pub struct Verification {
    key: [u8; 32],
    hash: String,
    password: String,
    slots: Arc<CpuSlots>,
}

/// Whether the password of a `Verification` matched its hash.
pub struct Verdict {
    key: [u8; 32],
    ok: bool,
}

impl Verification {
    /// Runs the check on the blocking pool once one of the gateway's
    /// slots for CPU-heavy work is free.
    pub async fn run(self) -> Verdict {
        let Self {
            key,
            hash,
            password,
            slots,
        } = self;
        let ok = slots
            .run(move || bcrypt::verify(password, &hash))
            .await
            .is_some_and(|r| r.unwrap_or(false));
        Verdict { key, ok }
    }
}

/// Hashes of plain-text passwords, kept across recompiles (a configuration
/// rebuilt when discovery changes must not pay bcrypt again). Keyed by
/// username and the password's SHA-256; the most recently used
/// [`HashCache::ENTRIES`] are kept. One per gateway (`plugins::Shared`).
pub struct HashCache(
    parking_lot::Mutex<crate::lru::Lru<(String, [u8; 32]), String, std::hash::RandomState>>,
);

impl Default for HashCache {
    fn default() -> Self {
        Self(parking_lot::Mutex::new(crate::lru::Lru::with_hasher(
            Self::ENTRIES,
            Default::default(),
        )))
    }
}

impl HashCache {
    pub const ENTRIES: usize = 4096;

    /// The bcrypt hash of a plain-text password (from the cache when this
    /// username and password were hashed before); a password that already
    /// is a bcrypt hash is returned as it is. The Admin API stores
    /// credentials this way, so they are never kept or shown in clear.
    pub fn hashed(&self, username: &str, password: &str) -> Result<String, String> {
        if is_hashed(password) {
            return Ok(password.to_string());
        }
        let digest = crate::sha256(&[password.as_bytes()]);
        let key = (username.to_string(), digest);
        if let Some(h) = self.0.lock().get(&key) {
            return Ok(h.clone());
        }
        let h = bcrypt::hash(password, COST).map_err(|e| format!("cannot hash: {e}"))?;
        self.0.lock().get_or_insert_with(key, || h.clone());
        Ok(h)
    }

    pub fn len(&self) -> usize {
        self.0.lock().len()
    }
}

/// Whether `password` is already a bcrypt hash (`$2a$`, `$2b$`, `$2y$`).
pub fn is_hashed(password: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"]
        .iter()
        .any(|p| password.starts_with(p))
}

impl Credential {
    pub fn new(
        c: &BasicAuthCredential,
        consumer: u32,
        field: &str,
        hashes: &HashCache,
    ) -> Result<Self, Invalid> {
        if c.username.is_empty() || c.username.contains(':') {
            return Err(Invalid::new(
                format!("{field}.username"),
                "expected a username without ':'",
            ));
        }
        let identifier = HeaderValue::from_str(&c.username).map_err(|_| {
            Invalid::new(
                format!("{field}.username"),
                "expected a header-safe username",
            )
        })?;
        if is_hashed(&c.password) {
            c.password.parse::<bcrypt::HashParts>().map_err(|e| {
                Invalid::new(
                    format!("{field}.password"),
                    format!("not a bcrypt hash: {e}"),
                )
            })?;
        }
        let hash = hashes
            .hashed(&c.username, &c.password)
            .map_err(|e| Invalid::new(format!("{field}.password"), e))?;
        Ok(Self {
            consumer,
            hash,
            identifier,
            verified: RwLock::new(Vec::new()),
        })
    }

    /// What identifies `password` checked against this credential's hash
    /// (a verdict for another credential, or for this one before its
    /// password changed, does not match).
    fn key(&self, password: &str) -> [u8; 32] {
        crate::sha256(&[self.hash.as_bytes(), &[0], password.as_bytes()])
    }

    /// The check `password` still needs, `None` when it verified before.
    fn verification(
        &self,
        password: &str,
        verdict: Option<&Verdict>,
        slots: &Arc<CpuSlots>,
    ) -> Option<Verification> {
        let key = self.key(password);
        if self.verified.read().contains(&key) || verdict.is_some_and(|v| v.key == key) {
            return None;
        }
        Some(Verification {
            key,
            hash: self.hash.clone(),
            password: password.to_string(),
            slots: slots.clone(),
        })
    }

    fn verify(&self, password: &str, verdict: Option<&Verdict>) -> bool {
        let key = self.key(password);
        if self.verified.read().contains(&key) {
            return true;
        }
        let ok = match verdict {
            Some(v) if v.key == key => v.ok,
            // Not prepared (a plugin before this one changed the header):
            // checked here, on the worker, as the rare exception.
            _ => bcrypt::verify(password, &self.hash).unwrap_or(false),
        };
        if ok {
            let mut v = self.verified.write();
            if v.len() >= 4 {
                v.remove(0);
            }
            v.push(key);
        }
        ok
    }
}

/// Kong's configuration of basic-auth with nothing set, as Kong shows it
/// (3.9's `kong/plugins/basic-auth/schema.lua`): every field, with its
/// default or null. Bronze reads an unset field as that default.
pub(crate) fn kong_defaults() -> serde_json::Value {
    serde_json::json!({
        "anonymous": null,
        "hide_credentials": false,
        "realm": "service",
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    anonymous: Option<String>,
    #[serde(default)]
    hide_credentials: Option<bool>,
    #[serde(default)]
    realm: Option<String>,
}

pub struct BasicAuth {
    anonymous: Option<Arc<super::Consumer>>,
    hide_credentials: bool,
    challenge: HeaderValue,
    credentials: Arc<Credentials>,
    slots: Arc<CpuSlots>,
}

impl BasicAuth {
    pub fn new(
        config: Option<&serde_json::Value>,
        field: &str,
        credentials: &Arc<Credentials>,
        slots: &Arc<CpuSlots>,
    ) -> Result<Self, Invalid> {
        let c: Config = parse_config(config, field)?;
        let realm = c.realm.unwrap_or_else(|| "service".into());
        Ok(Self {
            anonymous: super::key_auth::resolve_anonymous(
                c.anonymous.as_deref(),
                credentials,
                field,
            )?,
            hide_credentials: c.hide_credentials.unwrap_or(false),
            challenge: HeaderValue::from_str(&format!("Basic realm=\"{realm}\"")).map_err(
                |_| Invalid::new(format!("{field}.realm"), "expected a header-safe realm"),
            )?,
            credentials: credentials.clone(),
            slots: slots.clone(),
        })
    }

    /// The header carrying credentials (`Proxy-Authorization` first) and
    /// its (username, password), when it is a well-formed Basic value.
    fn presented(
        headers: &http::HeaderMap,
    ) -> Option<(http::HeaderName, Option<(String, String)>)> {
        [
            http::header::PROXY_AUTHORIZATION,
            http::header::AUTHORIZATION,
        ]
        .into_iter()
        .find_map(|name| {
            let v = headers.get(&name)?;
            let decoded = Self::decode(v);
            Some((name, decoded))
        })
    }

    /// The (username, password) of an `Authorization: Basic` value.
    fn decode(v: &HeaderValue) -> Option<(String, String)> {
        let v = v.to_str().ok()?;
        let (scheme, rest) = v.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (u, p) = text.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    }
}

impl Plugin for BasicAuth {
    fn name(&self) -> &'static str {
        "basic-auth"
    }

    fn priority(&self) -> i32 {
        1100
    }

    fn prepare(&self, req: &http::request::Parts, ctx: &Ctx) -> Option<Verification> {
        let (_, Some((user, password))) = Self::presented(&req.headers)? else {
            return None;
        };
        self.credentials.basic.get(&user)?.verification(
            &password,
            ctx.verdict.as_ref(),
            &self.slots,
        )
    }

    fn access(&self, req: &mut http::request::Parts, ctx: &mut Ctx) -> Result<(), Answer> {
        if self.anonymous.is_some() && ctx.credential.is_some() {
            return Ok(());
        }
        let failure = match Self::presented(&req.headers) {
            None => "Unauthorized",
            Some((name, Some((user, password)))) => match self.credentials.basic.get(&user) {
                Some(cred) if cred.verify(&password, ctx.verdict.as_ref()) => {
                    if self.hide_credentials {
                        req.headers.remove(name);
                    }
                    let consumer = &self.credentials.consumers[cred.consumer as usize];
                    set_consumer(req, ctx, Some(consumer), Some(cred.identifier.clone()));
                    return Ok(());
                }
                _ => "Invalid authentication credentials",
            },
            Some((_, None)) => "Invalid authentication credentials",
        };
        super::anonymous_or(req, ctx, self.anonymous.as_ref(), || {
            super::unauthorized(&self.challenge, failure)
        })
    }
}
