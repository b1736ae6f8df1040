//! Secrets and configs: named, versioned blobs that services mount as
//! read-only files. Every version is kept (a service version pins the one
//! it uses, so a rollback returns to the old value too). A secret's data is
//! stored sealed ([`crate::secrets::Sealer`]); a config's in clear.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Invalid, Time};

/// Swarm's limit on a secret's or config's size: 500 KiB.
pub const MAX_DATA: usize = 500 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Secret,
    Config,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }

    /// The spec field that references this kind.
    pub fn field(self) -> &'static str {
        match self {
            Kind::Secret => "secrets",
            Kind::Config => "configs",
        }
    }
}

/// Bytes as stored: a secret's sealed (nonce, ciphertext, tag), a config's
/// in clear. Stored as base64; its `Debug` shows only the size, so a state
/// dump or a log line never carries it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Stored(pub Vec<u8>);

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl Serialize for Stored {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Stored {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(Stored)
            .map_err(serde::de::Error::custom)
    }
}

/// Data in clear, as a request gave it or an agent gets it: never
/// serialized, and its `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Plain(pub Vec<u8>);

impl std::fmt::Debug for Plain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<redacted, {} bytes>", self.0.len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectVersion {
    pub version: u64,
    pub created_at: Time,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Size of the data in clear.
    pub size: u64,
    pub data: Stored,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    pub id: String,
    pub kind: Kind,
    pub name: String,
    pub created_at: Time,
    pub updated_at: Time,
    /// Oldest first, never empty.
    pub versions: Vec<ObjectVersion>,
}

impl Object {
    pub fn latest(&self) -> Option<&ObjectVersion> {
        self.versions.last()
    }

    pub fn version(&self, v: u64) -> Option<&ObjectVersion> {
        self.versions.iter().find(|x| x.version == v)
    }
}

/// Docker's grammar for secret and config names: a letter or digit, then
/// letters, digits, '_', '.' or '-', at most 64 characters.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?}: expected 1-64 letters, digits, '_', '.' or '-', starting with a letter \
             or digit"
        ))
    }
}

/// A request's name, data and labels, checked (fields named as the request
/// spells them).
pub fn validate(
    kind: Kind,
    name: &str,
    data: &[u8],
    labels: &BTreeMap<String, String>,
) -> Result<(), Invalid> {
    validate_name(name).map_err(|m| Invalid::new("name", m))?;
    if data.is_empty() {
        return Err(Invalid::new(
            "data",
            format!(
                "{} {name:?} is empty: expected 1 to {MAX_DATA} bytes",
                kind.as_str()
            ),
        ));
    }
    if data.len() > MAX_DATA {
        return Err(Invalid::new(
            "data",
            format!(
                "{} {name:?} is {} bytes: expected at most {MAX_DATA} (500 KiB, Swarm's limit)",
                kind.as_str(),
                data.len()
            ),
        ));
    }
    if let Some(k) = labels.keys().find(|k| k.is_empty() || k.len() > 1024) {
        return Err(Invalid::new(
            "labels",
            format!("label key {k:?}: expected 1-1024 characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sizes_and_redaction() {
        for ok in ["a", "db_password", "shop_tls.crt", "A-1", &"x".repeat(64)] {
            validate_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "_a", ".a", "a b", "a/b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        let none = BTreeMap::new();
        let e = validate(Kind::Secret, "big", &vec![0; MAX_DATA + 1], &none).expect_err("big");
        assert_eq!(e.field, "data");
        assert!(e.message.contains("500 KiB"), "{e}");
        validate(Kind::Secret, "max", &vec![0; MAX_DATA], &none).expect("500 KiB is allowed");
        assert_eq!(
            validate(Kind::Config, "a b", b"x", &none)
                .expect_err("name")
                .field,
            "name"
        );
        assert_eq!(
            format!("{:?}", Plain(b"hunter2".to_vec())),
            "<redacted, 7 bytes>"
        );
        assert_eq!(format!("{:?}", Stored(b"sealed".to_vec())), "<6 bytes>");
        let json = serde_json::to_string(&Stored(vec![1, 2, 3])).expect("json");
        assert_eq!(json, "\"AQID\"");
        let back: Stored = serde_json::from_str(&json).expect("back");
        assert_eq!(back.0, vec![1, 2, 3]);
    }
}
