//! Access control, as Docker clients expect it.
//!
//! - `basic`: every request carries htpasswd (bcrypt) credentials; a
//!   missing or wrong password gets `401` with a `Basic` challenge, a user
//!   without the needed access `403 DENIED` (Docker distribution's
//!   `htpasswd` auth).
//! - `token`: the Docker token flow. The registry answers `401` with a
//!   `Bearer realm=...,service=...,scope=...` challenge; the client fetches
//!   a token from `/token` (with its htpasswd credentials, or none for
//!   anonymous pulls) and retries with `Authorization: Bearer`. Tokens are
//!   HS256 JWTs carrying the granted `access` list, signed with a key kept
//!   in the storage root, so they stay valid across restarts; the registry
//!   is both issuer and verifier.
//!
//! Who may do what: with no `access` rules, every htpasswd user may pull,
//! push and delete everywhere and list the catalog. With rules, a user gets
//! the union of the actions of the rules naming them (or `*`) whose
//! repository pattern matches. Repositories matching an `anonymous_pull`
//! pattern may be pulled without credentials. Patterns are `*`, a prefix
//! ending in `/*` (`team/*` matches `team/web` and `team/a/b`), or a name.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bronze_jwt::sha256;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::RegistryError;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No authentication (the default; bind to a private address).
    #[default]
    None,
    /// htpasswd credentials on every request.
    Basic,
    /// The Docker token flow (Bearer tokens from `/token`).
    Token,
}

/// One access rule: `users` may do `actions` on repositories matching
/// `repositories`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// htpasswd user names, or `*` for every authenticated user.
    pub users: Vec<String>,
    /// Repository patterns: `*`, `prefix/*` or an exact name.
    pub repositories: Vec<String>,
    /// `pull`, `push`, `delete` or `*`.
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: Mode,
    /// htpasswd file of bcrypt entries (`htpasswd -B`); re-read when it changes.
    pub htpasswd: String,
    /// Basic: the realm's name. Token: the token endpoint's URL (default:
    /// `/token` on the address the client used).
    pub realm: String,
    /// The `service` named in challenges and tokens.
    pub service: String,
    #[serde(with = "bronze_runtime::duration::serde")]
    pub token_ttl: Duration,
    /// Repository patterns anyone may pull without credentials.
    pub anonymous_pull: Vec<String>,
    pub access: Vec<Rule>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: Mode::None,
            htpasswd: String::new(),
            realm: String::new(),
            service: "bronze-registry".into(),
            token_ttl: Duration::from_secs(300),
            anonymous_pull: Vec::new(),
            access: Vec::new(),
        }
    }
}

const ACTIONS: [&str; 3] = ["pull", "push", "delete"];

fn valid_pattern(p: &str) -> bool {
    let name = p.strip_suffix("/*").unwrap_or(p);
    p == "*" || crate::reference::Name::parse(name).is_ok()
}

impl AuthConfig {
    /// Checks every field; the error names the first wrong one.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((format!("auth.{k}"), m));
        if self.mode != Mode::None && self.htpasswd.is_empty() {
            return bad(
                "htpasswd",
                "expected an htpasswd file (bcrypt entries) when auth is on".into(),
            );
        }
        if self.service.is_empty() || self.service.contains('"') {
            return bad("service", "expected a name without quotes".into());
        }
        if self.realm.contains('"') {
            return bad("realm", "expected no quotes".into());
        }
        if self.token_ttl < Duration::from_secs(1) {
            return bad("token_ttl", "expected at least 1s".into());
        }
        for p in &self.anonymous_pull {
            if !valid_pattern(p) {
                return bad(
                    "anonymous_pull",
                    format!("{p:?}: expected *, <namespace>/* or a repository name"),
                );
            }
        }
        for (i, r) in self.access.iter().enumerate() {
            if r.users.is_empty() || r.users.iter().any(|u| u.is_empty() || u.contains(':')) {
                return bad(
                    &format!("access[{i}].users"),
                    "expected user names (or *)".into(),
                );
            }
            if r.repositories.is_empty() {
                return bad(
                    &format!("access[{i}].repositories"),
                    "expected at least one pattern".into(),
                );
            }
            if let Some(p) = r.repositories.iter().find(|p| !valid_pattern(p)) {
                return bad(
                    &format!("access[{i}].repositories"),
                    format!("{p:?}: expected *, <namespace>/* or a repository name"),
                );
            }
            if r.actions.is_empty() {
                return bad(
                    &format!("access[{i}].actions"),
                    "expected at least one of pull, push, delete or *".into(),
                );
            }
            if let Some(a) = r
                .actions
                .iter()
                .find(|a| *a != "*" && !ACTIONS.contains(&a.as_str()))
            {
                return bad(
                    &format!("access[{i}].actions"),
                    format!("{a:?}: expected pull, push, delete or *"),
                );
            }
        }
        Ok(())
    }
}

fn matches(pattern: &str, repo: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix("/*") {
        Some(ns) => repo.strip_prefix(ns).is_some_and(|r| r.starts_with('/')),
        None => pattern == repo,
    }
}

/// What a request needs: an action on a repository, the catalog, or only
/// to be authenticated (`/v2/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    Login,
    Catalog,
    Repo(String, &'static str),
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    User(String),
}

impl Identity {
    pub fn name(&self) -> &str {
        match self {
            Self::Anonymous => "-",
            Self::User(u) => u,
        }
    }
}

/// One `type:name:actions` entry of a token's access list (the Docker
/// token spec's claim).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Grant {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<Grant>,
}

/// A refresh token's claims (Docker's `offline_token`, what `docker
/// login` keeps instead of the password): whose, until when, and a
/// fingerprint of the password hash it was issued against, so that a
/// changed password or a removed user ends it.
#[derive(Debug, Serialize, Deserialize)]
struct Refresh {
    typ: String,
    aud: String,
    sub: String,
    exp: u64,
    pwd: String,
}

/// How long a refresh token lasts (distribution's token servers: 90 days
/// is common; a password change ends it sooner).
const REFRESH_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// A parsed `htpasswd` file.
#[derive(Default)]
struct Htpasswd {
    users: HashMap<String, String>,
    modified: Option<SystemTime>,
    checked: Option<std::time::Instant>,
}

fn parse_htpasswd(text: &str, path: &Path) -> Result<HashMap<String, String>, String> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(format!(
                "{}:{}: expected <user>:<bcrypt hash>",
                path.display(),
                i + 1
            ));
        };
        if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
            return Err(format!(
                "{}:{}: user {user:?} has no bcrypt hash (create entries with htpasswd -B)",
                path.display(),
                i + 1
            ));
        }
        users.insert(user.to_string(), hash.to_string());
    }
    Ok(users)
}

pub struct Auth {
    config: AuthConfig,
    htpasswd_path: PathBuf,
    htpasswd: Mutex<Htpasswd>,
    key: Vec<u8>,
    /// Passwords already checked against a bcrypt hash: bcrypt costs tens of
    /// milliseconds by design, and basic-auth clients send the password on
    /// every request. Keyed by user; holds a keyed hash of the password and
    /// the bcrypt hash it matched.
    verified: Mutex<HashMap<String, ([u8; 32], String)>>,
    /// bcrypt checks at once: a flood of wrong passwords queues here
    /// instead of taking a blocking thread (and a core) each.
    cpu: bronze_runtime::cpu::CpuSlots,
}

pub type SharedAuth = Arc<Auth>;

fn now() -> u64 {
    bronze_runtime::unix_time().as_secs()
}

impl Auth {
    /// Loads the htpasswd file and the token key (created on first use in
    /// `root`, mode 0600).
    pub fn new(config: AuthConfig, root: &Path) -> Result<Self, String> {
        let htpasswd_path = PathBuf::from(&config.htpasswd);
        let key_path = root.join("token.key");
        let key = match std::fs::read(&key_path) {
            Ok(k) if k.len() >= 32 => k,
            Ok(_) => {
                return Err(format!(
                    "{}: expected at least 32 bytes",
                    key_path.display()
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = Vec::with_capacity(64);
                for _ in 0..4 {
                    k.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
                }
                write_private(&key_path, &k).map_err(|e| format!("{}: {e}", key_path.display()))?;
                k
            }
            Err(e) => return Err(format!("{}: {e}", key_path.display())),
        };
        let auth = Self {
            config,
            htpasswd_path,
            htpasswd: Mutex::new(Htpasswd::default()),
            key,
            verified: Mutex::new(HashMap::new()),
            cpu: bronze_runtime::cpu::CpuSlots::default(),
        };
        if auth.config.mode != Mode::None {
            auth.reload(true)?;
        }
        Ok(auth)
    }

    pub fn mode(&self) -> Mode {
        self.config.mode
    }

    /// Re-reads the htpasswd file if it changed (checked at most once a
    /// second). A file that became invalid keeps the last good users.
    fn reload(&self, first: bool) -> Result<(), String> {
        let mut h = self.htpasswd.lock();
        if !first
            && h.checked
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        h.checked = Some(std::time::Instant::now());
        let path = &self.htpasswd_path;
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if h.modified == Some(modified) {
            return Ok(());
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        match parse_htpasswd(&text, path) {
            Ok(users) => {
                h.users = users;
                h.modified = Some(modified);
                Ok(())
            }
            Err(e) if first => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "htpasswd file invalid; keeping the previous users");
                h.modified = Some(modified);
                Ok(())
            }
        }
    }

    fn password_key(&self, password: &str) -> [u8; 32] {
        sha256(&[&self.key, password.as_bytes()])
    }

    /// Checks `user`/`password` against the htpasswd file (bcrypt, off the
    /// async threads, a few at a time; remembered once it matched).
    pub async fn verify_password(&self, user: &str, password: &str) -> bool {
        if let Err(e) = self.reload(false) {
            tracing::warn!(error = %e, "cannot read the htpasswd file");
        }
        let Some(hash) = self.htpasswd.lock().users.get(user).cloned() else {
            return false;
        };
        let pk = self.password_key(password);
        if let Some((k, h)) = self.verified.lock().get(user)
            && *k == pk
            && *h == hash
        {
            return true;
        }
        let (pw, h) = (password.to_string(), hash.clone());
        let ok = self
            .cpu
            .run(move || bcrypt::verify(pw, &h).unwrap_or(false))
            .await
            .unwrap_or(false);
        if ok {
            self.verified.lock().insert(user.to_string(), (pk, hash));
        }
        ok
    }

    /// The actions `who` may take on `repo`.
    pub fn allowed(&self, who: &Identity, repo: &str) -> BTreeSet<&'static str> {
        let mut out = BTreeSet::new();
        if self.config.anonymous_pull.iter().any(|p| matches(p, repo)) {
            out.insert("pull");
        }
        let Identity::User(user) = who else {
            return out;
        };
        if self.config.access.is_empty() {
            out.extend(ACTIONS);
            return out;
        }
        for r in &self.config.access {
            let names_user = r.users.iter().any(|u| u == "*" || u == user);
            if names_user && r.repositories.iter().any(|p| matches(p, repo)) {
                for a in &r.actions {
                    if a == "*" {
                        out.extend(ACTIONS);
                    } else if let Some(a) = ACTIONS.iter().find(|x| **x == a) {
                        out.insert(a);
                    }
                }
            }
        }
        out
    }

    fn may_list_catalog(&self, who: &Identity) -> bool {
        let Identity::User(user) = who else {
            return false;
        };
        self.config.access.is_empty()
            || self.config.access.iter().any(|r| {
                r.users.iter().any(|u| u == "*" || u == user)
                    && r.repositories.iter().any(|p| p == "*")
            })
    }

    fn may(&self, who: &Identity, need: &Need) -> bool {
        match need {
            Need::Login => matches!(who, Identity::User(_)),
            Need::Catalog => self.may_list_catalog(who),
            Need::Repo(repo, action) => self.allowed(who, repo).contains(action),
        }
    }

    /// Decides a registry request: the caller's identity, or the error
    /// response (with its challenge) to send instead.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        needs: &[Need],
        tls: bool,
    ) -> Result<Identity, Denial> {
        match self.config.mode {
            Mode::None => Ok(Identity::Anonymous),
            Mode::Basic => {
                let who = match basic_credentials(headers) {
                    Some((u, p)) => {
                        if !self.verify_password(&u, &p).await {
                            return Err(self.challenge(headers, needs, tls, None));
                        }
                        Identity::User(u)
                    }
                    None => Identity::Anonymous,
                };
                if needs.iter().all(|n| self.may(&who, n)) {
                    Ok(who)
                } else if who == Identity::Anonymous {
                    Err(self.challenge(headers, needs, tls, None))
                } else {
                    Err(Denial(RegistryError::Denied.into_parts(), Vec::new()))
                }
            }
            Mode::Token => {
                let token = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer ").map(str::trim));
                let Some(token) = token else {
                    return Err(self.challenge(headers, needs, tls, None));
                };
                let Some(claims) = self.verify_token(token) else {
                    return Err(self.challenge(headers, needs, tls, Some("invalid_token")));
                };
                let who = if claims.sub.is_empty() {
                    Identity::Anonymous
                } else {
                    Identity::User(claims.sub.clone())
                };
                let granted = |need: &Need| match need {
                    Need::Login => true,
                    Need::Catalog => claims
                        .access
                        .iter()
                        .any(|g| g.kind == "registry" && g.name == "catalog"),
                    Need::Repo(repo, action) => claims.access.iter().any(|g| {
                        g.kind == "repository"
                            && g.name == *repo
                            && g.actions.iter().any(|a| a == action || a == "*")
                    }),
                };
                if needs.iter().all(granted) {
                    Ok(who)
                } else {
                    Err(self.challenge(headers, needs, tls, Some("insufficient_scope")))
                }
            }
        }
    }

    /// Whether a request may use `need` (for optional parts of a request,
    /// such as the source of a cross-repository mount).
    pub fn permits(&self, headers: &HeaderMap, who: &Identity, need: &Need) -> bool {
        match self.config.mode {
            Mode::None => true,
            Mode::Basic => self.may(who, need),
            Mode::Token => headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .and_then(|t| self.verify_token(t.trim()))
                .is_some_and(|c| match need {
                    Need::Repo(repo, action) => c.access.iter().any(|g| {
                        g.kind == "repository"
                            && g.name == *repo
                            && g.actions.iter().any(|a| a == action)
                    }),
                    _ => false,
                }),
        }
    }

    fn realm(&self, headers: &HeaderMap, tls: bool) -> String {
        if !self.config.realm.is_empty() {
            return self.config.realm.clone();
        }
        match self.config.mode {
            Mode::Token => {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .filter(|h| !h.contains('"') && !h.is_empty())
                    .unwrap_or("localhost");
                format!("{}://{host}/token", if tls { "https" } else { "http" })
            }
            _ => "bronze-registry".into(),
        }
    }

    fn challenge(
        &self,
        headers: &HeaderMap,
        needs: &[Need],
        tls: bool,
        error: Option<&str>,
    ) -> Denial {
        let realm = self.realm(headers, tls);
        let value = match self.config.mode {
            Mode::Token => {
                let mut v = format!(
                    "Bearer realm=\"{realm}\",service=\"{}\"",
                    self.config.service
                );
                let scopes: Vec<String> = needs.iter().filter_map(scope_of).collect();
                if !scopes.is_empty() {
                    v.push_str(&format!(",scope=\"{}\"", scopes.join(" ")));
                }
                if let Some(e) = error {
                    v.push_str(&format!(",error=\"{e}\""));
                }
                v
            }
            _ => format!("Basic realm=\"{realm}\", charset=\"UTF-8\""),
        };
        Denial(
            RegistryError::Unauthorized.into_parts(),
            vec![(header::WWW_AUTHENTICATE, value)],
        )
    }

    /// The payload of a token this registry signed (HS256 over
    /// `header.payload`), or `None`.
    fn signed_payload(&self, token: &str) -> Option<Vec<u8>> {
        bronze_jwt::verify_hs256(&self.key, token)
    }

    /// `header.payload.signature` for `payload`.
    fn signed(&self, payload: &[u8]) -> String {
        bronze_jwt::sign_hs256(&self.key, payload)
    }

    /// What a refresh token for a user with this password hash carries.
    fn fingerprint(&self, hash: &str) -> String {
        let digest = sha256(&[&self.key, hash.as_bytes()]);
        URL_SAFE_NO_PAD.encode(&digest[..12])
    }

    /// A refresh token for `user` (who just gave the right password), or
    /// `None` if the user is gone from the htpasswd file.
    pub fn issue_refresh(&self, user: &str) -> Option<String> {
        let hash = self.htpasswd.lock().users.get(user).cloned()?;
        let claims = Refresh {
            typ: "refresh".into(),
            aud: self.config.service.clone(),
            sub: user.to_string(),
            exp: now() + REFRESH_TTL.as_secs(),
            pwd: self.fingerprint(&hash),
        };
        Some(self.signed(&serde_json::to_vec(&claims).unwrap_or_default()))
    }

    /// The user a refresh token names, if it was issued here, has not
    /// expired, and that user's password is still the one it was issued
    /// against.
    pub fn redeem_refresh(&self, token: &str) -> Option<Identity> {
        if let Err(e) = self.reload(false) {
            tracing::warn!(error = %e, "cannot read the htpasswd file");
        }
        let claims: Refresh = serde_json::from_slice(&self.signed_payload(token)?).ok()?;
        let hash = self.htpasswd.lock().users.get(&claims.sub).cloned()?;
        (claims.typ == "refresh"
            && claims.aud == self.config.service
            && claims.exp > now()
            && claims.pwd == self.fingerprint(&hash))
        .then_some(Identity::User(claims.sub))
    }

    fn verify_token(&self, token: &str) -> Option<Claims> {
        let claims: Claims = serde_json::from_slice(&self.signed_payload(token)?).ok()?;
        let t = now();
        (claims.aud == self.config.service && claims.exp > t && claims.nbf <= t + 60)
            .then_some(claims)
    }

    /// Issues a token granting what `who` may do of what `scopes` ask for.
    pub fn issue(&self, who: &Identity, scopes: &[String]) -> (String, Vec<Grant>) {
        let mut access: Vec<Grant> = Vec::new();
        for s in scopes
            .iter()
            .flat_map(|s| s.split(' '))
            .filter(|s| !s.is_empty())
        {
            let Some((kind, rest)) = s.split_once(':') else {
                continue;
            };
            let Some((name, actions)) = rest.rsplit_once(':') else {
                continue;
            };
            let wanted: Vec<&str> = actions.split(',').collect();
            let granted: Vec<String> = match kind {
                "repository" => {
                    let allowed = self.allowed(who, name);
                    wanted
                        .iter()
                        .flat_map(|a| {
                            if *a == "*" {
                                allowed.iter().copied().collect::<Vec<_>>()
                            } else {
                                allowed.get(a).copied().into_iter().collect()
                            }
                        })
                        .map(str::to_string)
                        .collect()
                }
                "registry" if name == "catalog" && self.may_list_catalog(who) => {
                    vec!["*".to_string()]
                }
                _ => Vec::new(),
            };
            if granted.is_empty() {
                continue;
            }
            match access.iter_mut().find(|g| g.kind == kind && g.name == name) {
                Some(g) => {
                    for a in granted {
                        if !g.actions.contains(&a) {
                            g.actions.push(a);
                        }
                    }
                }
                None => access.push(Grant {
                    kind: kind.to_string(),
                    name: name.to_string(),
                    actions: granted,
                }),
            }
        }
        let t = now();
        let claims = Claims {
            iss: self.config.service.clone(),
            sub: match who {
                Identity::Anonymous => String::new(),
                Identity::User(u) => u.clone(),
            },
            aud: self.config.service.clone(),
            exp: t + self.config.token_ttl.as_secs(),
            nbf: t,
            iat: t,
            jti: uuid::Uuid::new_v4().to_string(),
            access: access.clone(),
        };
        let token = self.signed(&serde_json::to_vec(&claims).unwrap_or_default());
        (token, access)
    }

    pub fn token_ttl(&self) -> Duration {
        self.config.token_ttl
    }

    pub fn service(&self) -> &str {
        &self.config.service
    }
}

fn scope_of(need: &Need) -> Option<String> {
    match need {
        Need::Login => None,
        Need::Catalog => Some("registry:catalog:*".into()),
        Need::Repo(repo, action) => Some(format!(
            "repository:{repo}:{}",
            // Docker asks for pull,push together when pushing.
            if *action == "push" {
                "pull,push"
            } else {
                action
            }
        )),
    }
}

/// `Authorization: Basic` credentials, if well-formed.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, value) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(value.trim()).ok()?).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// A refused request: the error and the headers (the challenge) to send.
#[derive(Debug)]
pub struct Denial(
    pub (StatusCode, String),
    pub Vec<(header::HeaderName, String)>,
);

impl RegistryError {
    fn into_parts(self) -> (StatusCode, String) {
        (self.status(), self.body())
    }
}

impl Denial {
    pub fn headers(&self) -> impl Iterator<Item = (header::HeaderName, HeaderValue)> + '_ {
        self.1
            .iter()
            .filter_map(|(k, v)| HeaderValue::from_str(v).ok().map(|v| (k.clone(), v)))
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(config: AuthConfig) -> (Auth, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let hash = bcrypt::hash("secret", 4).unwrap();
        std::fs::write(&path, format!("alice:{hash}\nbob:{hash}\n")).unwrap();
        let config = AuthConfig {
            htpasswd: path.display().to_string(),
            ..config
        };
        config.validate().unwrap();
        (Auth::new(config, dir.path()).unwrap(), dir)
    }

    #[test]
    fn patterns() {
        assert!(matches("*", "a/b"));
        assert!(matches("team/*", "team/web"));
        assert!(matches("team/*", "team/a/b"));
        assert!(!matches("team/*", "teams/web"));
        assert!(!matches("team/*", "team"));
        assert!(matches("team/web", "team/web"));
        assert!(!matches("team/web", "team/web2"));
    }

    #[test]
    fn rules_grant_the_union_of_matching_actions() {
        let (a, _d) = auth(AuthConfig {
            mode: Mode::Basic,
            anonymous_pull: vec!["public/*".into()],
            access: vec![
                Rule {
                    users: vec!["*".into()],
                    repositories: vec!["*".into()],
                    actions: vec!["pull".into()],
                },
                Rule {
                    users: vec!["alice".into()],
                    repositories: vec!["team/*".into()],
                    actions: vec!["push".into()],
                },
            ],
            ..AuthConfig::default()
        });
        let alice = Identity::User("alice".into());
        let bob = Identity::User("bob".into());
        assert_eq!(
            a.allowed(&alice, "team/web"),
            BTreeSet::from(["pull", "push"])
        );
        assert_eq!(a.allowed(&bob, "team/web"), BTreeSet::from(["pull"]));
        assert_eq!(a.allowed(&Identity::Anonymous, "team/web"), BTreeSet::new());
        assert_eq!(
            a.allowed(&Identity::Anonymous, "public/x"),
            BTreeSet::from(["pull"])
        );
        assert!(a.may_list_catalog(&bob));
        assert!(!a.may_list_catalog(&Identity::Anonymous));
    }

    #[test]
    fn tokens_carry_only_granted_scopes_and_are_checked() {
        let (a, _d) = auth(AuthConfig {
            mode: Mode::Token,
            access: vec![Rule {
                users: vec!["bob".into()],
                repositories: vec!["team/*".into()],
                actions: vec!["pull".into()],
            }],
            ..AuthConfig::default()
        });
        let bob = Identity::User("bob".into());
        let (token, granted) = a.issue(
            &bob,
            &[
                "repository:team/web:pull,push".into(),
                "repository:other:pull".into(),
            ],
        );
        assert_eq!(
            granted,
            vec![Grant {
                kind: "repository".into(),
                name: "team/web".into(),
                actions: vec!["pull".into()]
            }]
        );
        let claims = a.verify_token(&token).unwrap();
        assert_eq!(claims.sub, "bob");
        // A flipped signature byte, another key, or another algorithm fail.
        let mut forged = token.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert!(a.verify_token(&forged).is_none());
        let (other, _d2) = auth(AuthConfig {
            mode: Mode::Token,
            ..AuthConfig::default()
        });
        assert!(other.verify_token(&token).is_none());
        let (signed, _) = token.rsplit_once('.').unwrap();
        let (_, body) = signed.split_once('.').unwrap();
        let none = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#));
        assert!(a.verify_token(&none).is_none());
    }

    #[test]
    fn bad_configuration_names_the_field() {
        let c = AuthConfig {
            mode: Mode::Basic,
            htpasswd: "x".into(),
            access: vec![Rule {
                users: vec!["a".into()],
                repositories: vec!["*".into()],
                actions: vec!["write".into()],
            }],
            ..AuthConfig::default()
        };
        let (k, m) = c.validate().unwrap_err();
        assert_eq!(k, "auth.access[0].actions");
        assert!(m.contains("\"write\""), "{m}");
        let c = AuthConfig {
            mode: Mode::Token,
            ..AuthConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "auth.htpasswd");
    }

    #[test]
    fn htpasswd_without_bcrypt_is_rejected_with_the_line() {
        let e = parse_htpasswd("alice:{SHA}abc\n", Path::new("/h")).unwrap_err();
        assert!(e.contains("/h:1") && e.contains("htpasswd -B"), "{e}");
    }
}
