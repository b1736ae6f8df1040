//! JSON Web Tokens (compact JWS, RFC 7515/7519) for every Bronze component
//! that reads or writes one: the registry's own tokens (HS256, signed and
//! verified here) and the gateway's jwt plugin (HS256/384/512 and RS256,
//! with secrets, PEM public keys and JWKS documents). One implementation,
//! on ring, the crypto provider rustls already uses here: no second
//! provider (and no C build) for tokens.
//!
//! Parsing ([`Token::parse`]) only splits and decodes; nothing is trusted
//! until [`Key::verify`] says the signature is the key's. Which key applies
//! (a secret named by a claim, a JWKS `kid`) is the caller's decision, made
//! from the parsed header and claims.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

/// The signature algorithms Bronze verifies (Kong's jwt plugin's set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
}

impl Algorithm {
    /// The algorithm of a JOSE `alg` name, if Bronze verifies it.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "HS256" => Self::HS256,
            "HS384" => Self::HS384,
            "HS512" => Self::HS512,
            "RS256" => Self::RS256,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
            Self::RS256 => "RS256",
        }
    }

    fn hmac(self) -> Option<ring::hmac::Algorithm> {
        match self {
            Self::HS256 => Some(ring::hmac::HMAC_SHA256),
            Self::HS384 => Some(ring::hmac::HMAC_SHA384),
            Self::HS512 => Some(ring::hmac::HMAC_SHA512),
            Self::RS256 => None,
        }
    }
}

/// A key a token's signature is checked against.
#[derive(Clone, Debug)]
pub enum Key {
    /// An HMAC secret (HS*).
    Secret(Vec<u8>),
    /// An RSA public key as PKCS#1 `RSAPublicKey` DER (RS256).
    RsaDer(Vec<u8>),
    /// An RSA public key as its modulus and exponent (a JWK's `n`, `e`).
    RsaComponents { n: Vec<u8>, e: Vec<u8> },
}

/// Why a key could not be read.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyError(pub String);

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

impl Key {
    /// An HMAC secret given base64 (standard alphabet), as Kong's
    /// `secret_is_base64`.
    pub fn base64_secret(text: &str) -> Result<Self, KeyError> {
        STANDARD
            .decode(text.trim())
            .map(Key::Secret)
            .map_err(|e| KeyError(format!("not base64: {e}")))
    }

    /// An RSA public key in PEM: `PUBLIC KEY` (SubjectPublicKeyInfo, what
    /// `openssl rsa -pubout` writes) or `RSA PUBLIC KEY` (PKCS#1).
    pub fn rsa_pem(pem: &str) -> Result<Self, KeyError> {
        let (label, der) = pem_decode(pem)?;
        match label.as_str() {
            "RSA PUBLIC KEY" => Ok(Key::RsaDer(der)),
            "PUBLIC KEY" => spki_rsa(&der).map(|k| Key::RsaDer(k.to_vec())),
            other => Err(KeyError(format!(
                "a PEM {other:?}: expected PUBLIC KEY or RSA PUBLIC KEY"
            ))),
        }
    }

    /// Whether `signature` is this key's, by `alg`, over `signed` (the
    /// token's `header.payload`). A key of the wrong kind for `alg` never
    /// verifies.
    pub fn verify(&self, alg: Algorithm, signed: &[u8], sig: &[u8]) -> bool {
        let rsa = &signature::RSA_PKCS1_2048_8192_SHA256;
        match (self, alg.hmac()) {
            (Key::Secret(secret), Some(h)) => {
                ring::hmac::verify(&ring::hmac::Key::new(h, secret), signed, sig).is_ok()
            }
            (Key::RsaDer(der), None) => {
                UnparsedPublicKey::new(rsa, der).verify(signed, sig).is_ok()
            }
            (Key::RsaComponents { n, e }, None) => RsaPublicKeyComponents { n, e }
                .verify(rsa, signed, sig)
                .is_ok(),
            _ => false,
        }
    }
}

/// A PEM document's label and its DER bytes.
fn pem_decode(pem: &str) -> Result<(String, Vec<u8>), KeyError> {
    let pem = pem.trim();
    let label = pem
        .strip_prefix("-----BEGIN ")
        .and_then(|r| r.split_once("-----"))
        .map(|(l, _)| l.to_string())
        .ok_or_else(|| KeyError("expected a PEM document (-----BEGIN ...)".into()))?;
    let end = format!("-----END {label}-----");
    let body: String = pem
        .lines()
        .skip(1)
        .take_while(|l| l.trim() != end)
        .collect::<Vec<_>>()
        .concat();
    if !pem.ends_with(&end) {
        return Err(KeyError(format!("expected {end} at the end")));
    }
    let der = STANDARD
        .decode(body.split_whitespace().collect::<String>())
        .map_err(|e| KeyError(format!("PEM body is not base64: {e}")))?;
    Ok((label, der))
}

/// One DER element: (tag, content, what follows).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, &b| a << 8 | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The PKCS#1 `RSAPublicKey` inside an RSA SubjectPublicKeyInfo.
fn spki_rsa(spki: &[u8]) -> Result<&[u8], KeyError> {
    // rsaEncryption, 1.2.840.113549.1.1.1
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let bad = || KeyError("not an RSA public key (SubjectPublicKeyInfo)".into());
    let (0x30, info, _) = der(spki).ok_or_else(bad)? else {
        return Err(bad());
    };
    let (0x30, algorithm, rest) = der(info).ok_or_else(bad)? else {
        return Err(bad());
    };
    let (0x06, oid, _) = der(algorithm).ok_or_else(bad)? else {
        return Err(bad());
    };
    if oid != RSA {
        return Err(bad());
    }
    match der(rest).ok_or_else(bad)? {
        (0x03, [0, key @ ..], _) => Ok(key),
        _ => Err(bad()),
    }
}

/// A token split and decoded, not yet verified.
#[derive(Debug)]
pub struct Token<'a> {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    /// `header.payload` as it came: what the signature covers.
    pub signed: &'a str,
    pub signature: Vec<u8>,
}

/// Why a token could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Not three parts separated by dots.
    Shape,
    /// A header or payload that is not a base64url JSON object.
    Json,
}

impl<'a> Token<'a> {
    pub fn parse(token: &'a str) -> Result<Self, Malformed> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Malformed::Shape);
        };
        let object = |part: &str| {
            let bytes = URL_SAFE_NO_PAD
                .decode(part.trim_end_matches('='))
                .map_err(|_| Malformed::Json)?;
            match serde_json::from_slice(&bytes) {
                Ok(Value::Object(o)) => Ok(o),
                _ => Err(Malformed::Json),
            }
        };
        Ok(Token {
            header: object(h)?,
            claims: object(p)?,
            signed: &token[..h.len() + 1 + p.len()],
            // A signature that is not base64url is empty: it never verifies.
            signature: URL_SAFE_NO_PAD
                .decode(s.trim_end_matches('='))
                .unwrap_or_default(),
        })
    }

    /// The header's `alg`, if Bronze verifies it.
    pub fn algorithm(&self) -> Option<Algorithm> {
        self.header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(Algorithm::from_name)
    }

    /// Whether `key` signed this token with `alg`.
    pub fn verified_by(&self, key: &Key, alg: Algorithm) -> bool {
        key.verify(alg, self.signed.as_bytes(), &self.signature)
    }
}

/// SHA-256 of the concatenation of `parts`, with the same provider: what
/// the components use beside tokens (keyed fingerprints, cache keys,
/// digests of admin tokens).
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut c = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        c.update(p);
    }
    let mut out = [0; 32];
    out.copy_from_slice(c.finish().as_ref());
    out
}

/// `header.payload.signature` for `payload` (the claims' JSON bytes),
/// HS256 with `secret`.
pub fn sign_hs256(secret: &[u8], payload: &[u8]) -> String {
    let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let signed = format!("{head}.{}", URL_SAFE_NO_PAD.encode(payload));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let sig = URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, signed.as_bytes()));
    format!("{signed}.{sig}")
}

/// The payload bytes of a token HS256-signed with `secret` (its header
/// says HS256 and the signature is the secret's), or `None`.
pub fn verify_hs256(secret: &[u8], token: &str) -> Option<Vec<u8>> {
    let (signed, sig) = token.rsplit_once('.')?;
    let (head, body) = signed.split_once('.')?;
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(head).ok()?).ok()?;
    if header.get("alg")?.as_str()? != "HS256" {
        return None;
    }
    let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
    Key::Secret(secret.to_vec())
        .verify(Algorithm::HS256, signed.as_bytes(), &sig)
        .then(|| URL_SAFE_NO_PAD.decode(body).ok())?
}

/// The keys of a JWKS document by `kid`, each with the algorithm its
/// `alg` pins (if one Bronze verifies). RSA (`n`, `e`) and symmetric
/// (`k`) keys are read; keys without a `kid` or of another type (EC, OKP:
/// no algorithm here would accept them) are passed over.
pub fn parse_jwks(text: &[u8]) -> Result<HashMap<String, (Key, Option<Algorithm>)>, String> {
    let doc: Value =
        serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("not a JWKS document: expected an object with a \"keys\" array")?;
    let mut out = HashMap::new();
    for k in keys {
        let Some(kid) = k.get("kid").and_then(Value::as_str) else {
            continue;
        };
        let field = |name: &str| -> Result<Vec<u8>, String> {
            let v = k
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("key {kid:?}: expected \"{name}\""))?;
            URL_SAFE_NO_PAD
                .decode(v.trim_end_matches('='))
                .map_err(|e| format!("key {kid:?}: \"{name}\" is not base64url: {e}"))
        };
        let key = match k.get("kty").and_then(Value::as_str) {
            Some("RSA") => Key::RsaComponents {
                n: field("n")?,
                e: field("e")?,
            },
            Some("oct") => Key::Secret(field("k")?),
            _ => continue,
        };
        let alg = k
            .get("alg")
            .and_then(Value::as_str)
            .and_then(Algorithm::from_name);
        out.insert(kid.to_string(), (key, alg));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7515 appendix A.1: an HS256 JWS and its key.
    const A1_TOKEN: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const A1_KEY: &str =
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";

    #[test]
    fn rfc_7515_hs256_example_verifies_and_tampering_does_not() {
        let key = Key::Secret(URL_SAFE_NO_PAD.decode(A1_KEY).unwrap());
        let t = Token::parse(A1_TOKEN).unwrap();
        assert_eq!(t.algorithm(), Some(Algorithm::HS256));
        assert_eq!(t.claims["iss"], "joe");
        assert!(t.verified_by(&key, Algorithm::HS256));
        // Another algorithm, another key, another payload: no.
        assert!(!t.verified_by(&key, Algorithm::HS384));
        assert!(!t.verified_by(&Key::Secret(b"other".to_vec()), Algorithm::HS256));
        assert!(!t.verified_by(
            &Key::RsaComponents {
                n: vec![1],
                e: vec![3]
            },
            Algorithm::HS256
        ));
        let (h, rest) = A1_TOKEN.split_once('.').unwrap();
        let (_, s) = rest.split_once('.').unwrap();
        let forged = format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode(br#"{"iss":"eve"}"#));
        assert!(
            !Token::parse(&forged)
                .unwrap()
                .verified_by(&key, Algorithm::HS256)
        );
    }

    #[test]
    fn signed_here_verifies_here() {
        let t = sign_hs256(b"k", br#"{"sub":"a"}"#);
        assert_eq!(
            verify_hs256(b"k", &t).as_deref(),
            Some(&br#"{"sub":"a"}"#[..])
        );
        assert_eq!(verify_hs256(b"j", &t), None);
        // alg none is never accepted.
        let (_, rest) = t.split_once('.').unwrap();
        let none = format!("{}.{rest}", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#));
        assert_eq!(verify_hs256(b"k", &none), None);
    }

    #[test]
    fn malformed_tokens_are_told_apart() {
        assert_eq!(Token::parse("a.b").unwrap_err(), Malformed::Shape);
        assert_eq!(Token::parse("a.b.c.d").unwrap_err(), Malformed::Shape);
        assert_eq!(Token::parse("!.e30.").unwrap_err(), Malformed::Json);
        assert!(Token::parse("e30.e30.!").unwrap().signature.is_empty());
        // "[]" is JSON, but not an object.
        assert_eq!(Token::parse("W10.e30.").unwrap_err(), Malformed::Json);
    }

    #[test]
    fn pem_and_der_errors_say_what_was_expected() {
        assert!(Key::rsa_pem("nope").unwrap_err().0.contains("PEM"));
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----";
        assert!(Key::rsa_pem(cert).unwrap_err().0.contains("PUBLIC KEY"));
        let junk = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----";
        assert!(Key::rsa_pem(junk).unwrap_err().0.contains("RSA"));
        assert!(Key::base64_secret("!!").is_err());
    }

    #[test]
    fn jwks_reads_rsa_and_symmetric_keys_and_passes_over_others() {
        let doc = br#"{"keys": [
            {"kty": "RSA", "kid": "r", "alg": "RS256", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "kid": "s", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "e", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"}
        ]}"#;
        let keys = parse_jwks(doc).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys["r"].1, Some(Algorithm::RS256));
        assert!(matches!(&keys["s"], (Key::Secret(k), None) if k == b"secret"));
        let bad = br#"{"keys": [{"kty": "RSA", "kid": "r", "n": "AQAB"}]}"#;
        assert!(parse_jwks(bad).unwrap_err().contains("\"e\""));
        assert!(parse_jwks(b"{}").is_err());
    }
}
