//! Repository names, tags and digests, as the OCI distribution spec defines
//! them. Everything the registry reads from a URL goes through here first;
//! nothing past this module sees an unchecked name, so path traversal
//! (`..`, encoded slashes) cannot reach the filesystem.

use std::fmt;

use crate::error::RegistryError;

/// Longest repository name accepted (distribution's limit).
pub const MAX_NAME: usize = 255;

/// A valid repository name: `<component>(/<component>)*`, each component
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        let invalid = |why: &str| RegistryError::NameInvalid(format!("{s:?}: {why}"));
        if s.is_empty() || s.len() > MAX_NAME {
            return Err(invalid("expected 1-255 characters"));
        }
        for component in s.split('/') {
            if !valid_component(component) {
                return Err(invalid(
                    "each path component must be lower-case letters and digits, separated by '.', '_', '__' or dashes",
                ));
            }
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__' or one or more '-'; then alnum.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !is_alnum(b[i]) {
            return false;
        }
    }
    true
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A content digest, `sha256:<64 hex>` or `sha512:<128 hex>` (lower case).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    pub algorithm: Algorithm,
    hex: String,
}

impl Digest {
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        let invalid = || {
            RegistryError::DigestInvalid(format!(
                "{s:?}: expected sha256:<64 hex> or sha512:<128 hex>"
            ))
        };
        let (alg, hex) = s.split_once(':').ok_or_else(invalid)?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => {
                return Err(RegistryError::Unsupported(format!(
                    "digest algorithm {alg:?}: expected sha256 or sha512"
                )));
            }
        };
        if hex.len() != algorithm.hex_len()
            || !hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            return Err(invalid());
        }
        Ok(Self {
            algorithm,
            hex: hex.to_string(),
        })
    }

    pub fn from_parts(algorithm: Algorithm, hex: String) -> Self {
        Self { algorithm, hex }
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

/// What a manifest URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        if s.contains(':') {
            return Digest::parse(s).map(Reference::Digest);
        }
        if valid_tag(s) {
            Ok(Reference::Tag(s.to_string()))
        } else {
            Err(RegistryError::TagInvalid(format!(
                "{s:?}: a tag is 1-128 of letters, digits, '_', '.', '-', not starting with '.' or '-'"
            )))
        }
    }
}

/// Splits a `/v2/...` path into its route, validating the repository name.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Base,
    Catalog,
    Tags(Name),
    Manifest(Name, String),
    Blob(Name, String),
    Uploads(Name),
    Upload(Name, String),
    Referrers(Name, String),
}

pub fn route(path: &str) -> Result<Route, RegistryError> {
    let rest = path.strip_prefix("/v2").ok_or(RegistryError::NotFound)?;
    if rest.is_empty() || rest == "/" {
        return Ok(Route::Base);
    }
    let rest = rest.strip_prefix('/').ok_or(RegistryError::NotFound)?;
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    // The name is everything before the last `/<kind>/...` segment.
    let try_split = |marker: &str| -> Option<(&str, &str)> {
        let i = rest.rfind(marker)?;
        Some((&rest[..i], &rest[i + marker.len()..]))
    };
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Route::Tags(Name::parse(name)?));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads")
        .or_else(|| rest.strip_suffix("/blobs/uploads/"))
    {
        return Ok(Route::Uploads(Name::parse(name)?));
    }
    if let Some((name, id)) = try_split("/blobs/uploads/") {
        return Ok(Route::Upload(Name::parse(name)?, id.to_string()));
    }
    if let Some((name, r)) = try_split("/manifests/") {
        return Ok(Route::Manifest(Name::parse(name)?, r.to_string()));
    }
    if let Some((name, d)) = try_split("/blobs/") {
        return Ok(Route::Blob(Name::parse(name)?, d.to_string()));
    }
    if let Some((name, d)) = try_split("/referrers/") {
        return Ok(Route::Referrers(Name::parse(name)?, d.to_string()));
    }
    Err(RegistryError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        for ok in [
            "a",
            "library/ubuntu",
            "my-org/my_app",
            "a.b/c__d/e--f",
            "0/1",
        ] {
            assert!(Name::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a/",
            "/a",
            "a//b",
            "a/../b",
            "..",
            "a/./b",
            "a%2Fb",
            "a_-b",
            "a___b",
            "-a",
            "a b",
            &"a".repeat(256),
        ] {
            assert!(Name::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_and_digests() {
        assert!(valid_tag("latest") && valid_tag("_1.2-rc") && valid_tag(&"a".repeat(128)));
        assert!(
            !valid_tag(".x")
                && !valid_tag("-x")
                && !valid_tag(&"a".repeat(129))
                && !valid_tag("a/b")
        );
        let d = Digest::parse(&format!("sha256:{}", "a".repeat(64))).expect("valid");
        assert_eq!(d.to_string(), format!("sha256:{}", "a".repeat(64)));
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(matches!(
            Digest::parse(&format!("md5:{}", "a".repeat(32))),
            Err(RegistryError::Unsupported(_))
        ));
        assert!(Digest::parse(&format!("sha512:{}", "0".repeat(128))).is_ok());
    }

    #[test]
    fn routes() {
        let n = |s: &str| Name::parse(s).expect("name");
        assert_eq!(route("/v2/"), Ok(Route::Base));
        assert_eq!(route("/v2/_catalog"), Ok(Route::Catalog));
        assert_eq!(route("/v2/a/b/tags/list"), Ok(Route::Tags(n("a/b"))));
        assert_eq!(
            route("/v2/a/b/manifests/latest"),
            Ok(Route::Manifest(n("a/b"), "latest".into()))
        );
        assert_eq!(route("/v2/a/blobs/uploads/"), Ok(Route::Uploads(n("a"))));
        assert_eq!(
            route("/v2/a/blobs/uploads/xyz"),
            Ok(Route::Upload(n("a"), "xyz".into()))
        );
        assert_eq!(
            route("/v2/a/blobs/sha256:00"),
            Ok(Route::Blob(n("a"), "sha256:00".into()))
        );
        // A repository may itself be called "blobs" or "manifests".
        assert_eq!(
            route("/v2/blobs/manifests/x"),
            Ok(Route::Manifest(n("blobs"), "x".into()))
        );
        assert!(matches!(
            route("/v2/../etc/manifests/x"),
            Err(RegistryError::NameInvalid(_))
        ));
        assert!(matches!(
            route("/v2/a%2F..%2Fb/manifests/x"),
            Err(RegistryError::NameInvalid(_))
        ));
        assert_eq!(route("/v3/"), Err(RegistryError::NotFound));
    }

    proptest! {
        #[test]
        fn route_never_panics(s in "\\PC{0,80}") {
            let _ = route(&format!("/v2/{s}"));
            let _ = Reference::parse(&s);
        }
    }
}
