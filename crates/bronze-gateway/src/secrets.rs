//! Credentials as the Admin API keeps and shows them: a basic-auth
//! `password` is stored as its bcrypt hash (Kong stores and returns a
//! salted SHA-1; Bronze uses bcrypt), whether it came through an entity
//! endpoint, `POST /config` or a declarative file, so neither the store,
//! entity GETs nor `GET /config` hold it in clear. A password that already
//! is a bcrypt hash (`$2a$`, `$2b$`, `$2y$`: a re-posted `GET /config`) is
//! kept as it is. key-auth keys and jwt secrets are returned as Kong
//! returns them (in clear: they are needed to sign or send).

use serde_json::Value;

use crate::declarative::Invalid;
use crate::entities::{Entities, Kind};
use crate::plugins::basic_auth::{self, HashCache};

/// The kind whose secret is hashed.
const BASIC_AUTH: &str = "basicauth_credentials";

/// Hashes the secret of one entity of kind `k` in place. Errors name the
/// field relative to the entity.
pub fn hash_entity(k: &Kind, v: &mut Value, hashes: &HashCache) -> Result<(), Invalid> {
    if k.name != BASIC_AUTH {
        return Ok(());
    }
    let username = v
        .get("username")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(slot) = v.get_mut("password") else {
        return Ok(());
    };
    let Some(password) = slot.as_str() else {
        return Ok(());
    };
    if basic_auth::is_hashed(password) {
        return Ok(());
    }
    let hash = hashes
        .hashed(&username, password)
        .map_err(|e| Invalid::new("password", e))?;
    *slot = Value::String(hash);
    Ok(())
}

/// Hashes every basic-auth password of `e` that is not hashed yet.
pub fn hash_all(e: &mut Entities, hashes: &HashCache) -> Result<(), Invalid> {
    let Some(k) = crate::entities::kind(BASIC_AUTH) else {
        return Ok(());
    };
    if let Some(items) = e.by_kind.get_mut(BASIC_AUTH) {
        for (id, v) in items.iter_mut() {
            hash_entity(k, v, hashes)
                .map_err(|err| Invalid::new(format!("{BASIC_AUTH}[{id}].password"), err.message))?;
        }
    }
    Ok(())
}
