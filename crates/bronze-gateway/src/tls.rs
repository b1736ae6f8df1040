//! TLS termination: Kong's `certificates` compiled into a lookup by SNI,
//! and the rustls certificate resolver that reads it from the routing
//! table in effect (one atomic load per handshake).
//!
//! PEM parsing, key loading and the key/certificate match all happen when
//! a configuration is compiled; a handshake only looks names up. The set
//! travels inside `router::Table`, so `POST /config` replaces routes and
//! certificates in one swap: handshakes after it see the new certificates,
//! connections already established keep theirs.
//!
//! SNI lookup order (Kong's): the exact name, then `*.<rest>` (the first
//! label replaced), then `<head>.*` (the last label replaced), then the
//! default certificate (`tls_cert`/`tls_key`); with none, the handshake
//! fails with an alert.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::SignatureAlgorithm;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::declarative::{Declarative, Invalid};
use crate::proxy::Proxy;

/// A certificate as served: the main pair and an optional alternate one of
/// another key type, chosen by what the client can verify.
#[derive(Debug, Clone)]
pub struct Served {
    main: Arc<CertifiedKey>,
    alt: Option<Arc<CertifiedKey>>,
}

impl Served {
    /// The main certificate unless the client offers no signature scheme
    /// for its key type and the alternate fits.
    fn choose(&self, offered: &[rustls::SignatureScheme]) -> Arc<CertifiedKey> {
        if let Some(alt) = &self.alt {
            let fits = |ck: &CertifiedKey| {
                let alg = ck.key.algorithm();
                offered.iter().any(|s| scheme_algorithm(*s) == Some(alg))
            };
            if !fits(&self.main) && fits(alt) {
                return alt.clone();
            }
        }
        self.main.clone()
    }
}

fn scheme_algorithm(s: rustls::SignatureScheme) -> Option<SignatureAlgorithm> {
    use rustls::SignatureScheme as S;
    Some(match s {
        S::RSA_PKCS1_SHA256
        | S::RSA_PKCS1_SHA384
        | S::RSA_PKCS1_SHA512
        | S::RSA_PSS_SHA256
        | S::RSA_PSS_SHA384
        | S::RSA_PSS_SHA512 => SignatureAlgorithm::RSA,
        S::ECDSA_NISTP256_SHA256 | S::ECDSA_NISTP384_SHA384 | S::ECDSA_NISTP521_SHA512 => {
            SignatureAlgorithm::ECDSA
        }
        S::ED25519 => SignatureAlgorithm::ED25519,
        _ => return None,
    })
}

/// The compiled certificate set of one configuration.
#[derive(Default)]
pub struct Certificates {
    exact: HashMap<String, Served>,
    /// `*.example.com`, keyed by `example.com`.
    leading: HashMap<String, Served>,
    /// `example.*`, keyed by `example`.
    trailing: HashMap<String, Served>,
    /// How many certificates the configuration holds.
    pub count: usize,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("count", &self.count)
            .field(
                "names",
                &(self.exact.len() + self.leading.len() + self.trailing.len()),
            )
            .finish()
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    bronze_runtime::install_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Parses a PEM chain and key and checks that they belong together.
/// Errors are `(which, message)`: which is "cert" or "key".
pub(crate) fn certified(
    provider: &CryptoProvider,
    cert: &str,
    key: &str,
) -> Result<CertifiedKey, (&'static str, String)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| ("cert", format!("expected a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err((
            "cert",
            "expected a PEM certificate chain (-----BEGIN CERTIFICATE-----), found none".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| {
        (
            "key",
            format!("expected a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| ("key", format!("unsupported private key: {e}")))?;
    let ck = CertifiedKey::new(chain, key);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(rustls::Error::InconsistentKeys(_)) => {
            Err(("key", "certificate does not match key".into()))
        }
        Err(e) => Err(("cert", format!("invalid certificate: {e}"))),
    }
}

/// A server name as Kong accepts it for an SNI: a host name, `*.<domain>`
/// or `<name>.*`; lowercased. Which table it goes to, and its key.
#[derive(Debug)]
pub(crate) enum Name {
    Exact(String),
    Leading(String),
    Trailing(String),
}

impl Name {
    /// Whether a client's (lowercased) server name is this one: equal,
    /// or one more leading label (`*.rest`), or one more trailing label
    /// (`head.*`), as a certificate's names are chosen.
    pub(crate) fn matches(&self, sni: &str) -> bool {
        match self {
            Self::Exact(n) => sni == n,
            Self::Leading(rest) => sni.split_once('.').is_some_and(|(_, r)| r == rest),
            Self::Trailing(head) => sni.rsplit_once('.').is_some_and(|(h, _)| h == head),
        }
    }
}

/// A server name as Kong takes one (a certificate's SNI, a route's
/// `snis`): a host name, `*.<domain>` or `<name>.*`; lowercased.
pub(crate) fn sni_name(raw: &str) -> Result<Name, String> {
    let n = raw.to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let name_ok = |s: &str| !s.is_empty() && s.len() <= 253 && s.split('.').all(label_ok);
    let bad = || format!("{raw:?}: expected a host name, *.<domain> or <name>.*");
    if n.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{raw:?}: an IP address is not a server name (TLS clients send no SNI for one)"
        ));
    }
    if n.contains(':') {
        return Err(format!("{raw:?}: must not have a port"));
    }
    if let Some(rest) = n.strip_prefix("*.") {
        return name_ok(rest)
            .then(|| Name::Leading(rest.to_string()))
            .ok_or_else(bad);
    }
    if let Some(head) = n.strip_suffix(".*") {
        return name_ok(head)
            .then(|| Name::Trailing(head.to_string()))
            .ok_or_else(bad);
    }
    name_ok(&n)
        .then_some(Name::Exact(n.clone()))
        .ok_or_else(bad)
}

impl Certificates {
    /// Compiles `certificates[]` and the top-level `snis[]`; errors name
    /// the field.
    pub fn build(d: &Declarative) -> Result<Self, Invalid> {
        let list = &d.certificates;
        let mut set = Certificates {
            count: list.len(),
            ..Certificates::default()
        };
        if list.is_empty() && d.snis.is_empty() {
            return Ok(set);
        }
        let provider = provider();
        // Every name, to where it was first given.
        let mut owners: HashMap<String, String> = HashMap::new();
        let mut by_id: HashMap<&str, (usize, Served)> = HashMap::new();
        for (i, c) in list.iter().enumerate() {
            let field = |f: &str| format!("certificates[{i}].{f}");
            let main = certified(&provider, &c.cert, &c.key)
                .map_err(|(which, message)| Invalid::new(field(which), message))?;
            let alt = match (&c.cert_alt, &c.key_alt) {
                (None, None) => None,
                (Some(_), None) => {
                    return Err(Invalid::new(
                        field("key_alt"),
                        "required when cert_alt is set",
                    ));
                }
                (None, Some(_)) => {
                    return Err(Invalid::new(
                        field("cert_alt"),
                        "required when key_alt is set",
                    ));
                }
                (Some(cert), Some(key)) => {
                    let alt = certified(&provider, cert, key).map_err(|(which, message)| {
                        Invalid::new(field(&format!("{which}_alt")), message)
                    })?;
                    if alt.key.algorithm() == main.key.algorithm() {
                        return Err(Invalid::new(
                            field("cert_alt"),
                            "certificate and alternative certificate need to have different \
                             type (e.g. RSA and ECDSA), the provided certificates were both of \
                             the same type",
                        ));
                    }
                    Some(Arc::new(alt))
                }
            };
            let served = Served {
                main: Arc::new(main),
                alt,
            };
            for (k, sni) in c.snis.iter().enumerate() {
                set.add(
                    &mut owners,
                    &sni.name,
                    field(&format!("snis[{k}]")),
                    &served,
                )?;
            }
            if let Some(id) = &c.id
                && by_id.insert(id.as_str(), (i, served)).is_some()
            {
                return Err(Invalid::new(field("id"), format!("{id:?} appears twice")));
            }
        }
        for (k, sni) in d.snis.iter().enumerate() {
            let Some((_, served)) = by_id.get(sni.certificate.id.as_str()) else {
                return Err(Invalid::new(
                    format!("snis[{k}].certificate"),
                    format!(
                        "{:?}: expected the id of one of certificates[]",
                        sni.certificate.id
                    ),
                ));
            };
            set.add(&mut owners, &sni.name, format!("snis[{k}].name"), served)?;
        }
        Ok(set)
    }

    /// Indexes `raw` for `served`, refusing a name given twice.
    fn add(
        &mut self,
        owners: &mut HashMap<String, String>,
        raw: &str,
        field: String,
        served: &Served,
    ) -> Result<(), Invalid> {
        let name = sni_name(raw).map_err(|m| Invalid::new(field.clone(), m))?;
        let lowered = raw.to_ascii_lowercase();
        if let Some(first) = owners.get(&lowered) {
            return Err(Invalid::new(
                field,
                format!("uniqueness violation: {lowered:?} is already given by {first}"),
            ));
        }
        owners.insert(lowered, field);
        let (map, key) = match name {
            Name::Exact(n) => (&mut self.exact, n),
            Name::Leading(n) => (&mut self.leading, n),
            Name::Trailing(n) => (&mut self.trailing, n),
        };
        map.insert(key, served.clone());
        Ok(())
    }

    /// The certificate for a client's server name: exact, then `*.rest`,
    /// then `head.*`.
    pub fn find(&self, sni: &str) -> Option<&Served> {
        if let Some(s) = self.exact.get(sni) {
            return Some(s);
        }
        if !self.leading.is_empty()
            && let Some((_, rest)) = sni.split_once('.')
            && let Some(s) = self.leading.get(rest)
        {
            return Some(s);
        }
        if !self.trailing.is_empty()
            && let Some((head, _)) = sni.rsplit_once('.')
            && let Some(s) = self.trailing.get(head)
        {
            return Some(s);
        }
        None
    }
}

/// Loads the default certificate (`tls_cert`, `tls_key` files).
pub fn load_default(cert: &str, key: &str) -> Result<Served, String> {
    let read = |what: &str, path: &str| {
        std::fs::read_to_string(path).map_err(|e| format!("{what} {path}: {e}"))
    };
    let (cert_pem, key_pem) = (read("tls_cert", cert)?, read("tls_key", key)?);
    let ck = certified(&provider(), &cert_pem, &key_pem).map_err(|(which, message)| {
        let (what, path) = if which == "cert" {
            ("tls_cert", cert)
        } else {
            ("tls_key", key)
        };
        format!("{what} {path}: {message}")
    })?;
    Ok(Served {
        main: Arc::new(ck),
        alt: None,
    })
}

/// rustls' certificate choice: by SNI in the table in effect, else the
/// default certificate.
pub struct Resolver {
    proxy: Arc<Proxy>,
    default: Option<Served>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("default", &self.default.is_some())
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.proxy.table.load();
        let lowered;
        let found = match hello.server_name() {
            // rustls lowercases the SNI already; allocate only if not.
            Some(name) if name.bytes().any(|b| b.is_ascii_uppercase()) => {
                lowered = name.to_ascii_lowercase();
                table.certificates.find(&lowered)
            }
            Some(name) => table.certificates.find(name),
            None => None,
        };
        found
            .or(self.default.as_ref())
            .map(|s| s.choose(hello.signature_schemes()))
    }
}

/// The TLS listener's rustls configuration: certificates by SNI, ALPN h2
/// then http/1.1.
pub fn server_config(proxy: Arc<Proxy>, default: Option<Served>) -> Arc<rustls::ServerConfig> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| rustls::ServerConfig::builder());
    let mut config = builder
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver { proxy, default }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_names_follow_kong() {
        assert!(matches!(sni_name("A.Example.com"), Ok(Name::Exact(n)) if n == "a.example.com"));
        assert!(matches!(sni_name("*.example.com"), Ok(Name::Leading(n)) if n == "example.com"));
        assert!(matches!(sni_name("example.*"), Ok(Name::Trailing(n)) if n == "example"));
        for bad in ["", "*.", "a.*.com", "a b", "127.0.0.1", "a.com:443", "*"] {
            assert!(sni_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
