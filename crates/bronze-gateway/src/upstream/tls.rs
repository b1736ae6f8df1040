//! TLS to upstreams (`https` and `grpcs` services): the client side of
//! rustls. Certificates are verified by default (Kong's default is not to:
//! a deliberate difference, `tls_verify: false` turns it off per service)
//! against the system's roots (`rustls-native-certs`: `/etc/ssl/certs`,
//! or `SSL_CERT_FILE`/`SSL_CERT_DIR`) plus the CA file given as
//! `upstream_ca_file` (Kong's `lua_ssl_trusted_certificate`), for a private
//! CA. The name checked and sent as SNI is the service's host. A service
//! may instead name its own roots (Kong's `ca_certificates`) and a client
//! certificate for upstreams that ask for one (`client_certificate`):
//! it then gets client configurations of its own ([`Own`]).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// A service's TLS settings: the name the upstream's certificate must
/// carry (also sent as SNI), and whether it is checked at all.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub name: ServerName<'static>,
    pub verify: bool,
    /// The service's own roots or client certificate, when it has them.
    pub own: Option<Arc<Own>>,
}

/// A service's own client configurations (HTTP/1.1 and h2 by ALPN): its
/// `ca_certificates` as the only roots, its `client_certificate`.
#[derive(Debug)]
pub struct Own {
    configs: [Arc<ClientConfig>; 2],
    /// What sets them apart, for the connection pool's key.
    key: String,
}

impl Own {
    /// `roots`: PEM CA certificates (each with the field that gave it,
    /// for errors), or none for the gateway's (`defaults`: the system's
    /// and `upstream_ca_file`'s; the system's alone without them);
    /// `client`: the certificate and key shown to upstreams; `identity`:
    /// what names both (their ids), so that pooled connections are shared
    /// only by services that present the same.
    pub fn new(
        verify: bool,
        roots: &[(String, &str)],
        client: Option<CertifiedKey>,
        identity: String,
        defaults: Option<&Clients>,
    ) -> Result<Self, (String, String)> {
        let provider = crate::tls::provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| (String::new(), format!("TLS versions: {e}")))?;
        let builder = if !verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
        } else if roots.is_empty() {
            match defaults {
                Some(c) => builder.with_root_certificates(c.roots.clone()),
                None => {
                    let mut store = rustls::RootCertStore::empty();
                    store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                    builder.with_root_certificates(store)
                }
            }
        } else {
            let mut store = rustls::RootCertStore::empty();
            for (field, pem) in roots {
                let certs: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(pem.as_bytes())
                        .collect::<Result<_, _>>()
                        .map_err(|e| (field.clone(), format!("expected a PEM certificate: {e}")))?;
                if certs.is_empty() {
                    return Err((
                        field.clone(),
                        "expected a PEM certificate, found none".into(),
                    ));
                }
                for c in certs {
                    store.add(c).map_err(|e| {
                        (
                            field.clone(),
                            format!("not usable as a CA certificate: {e}"),
                        )
                    })?;
                }
            }
            builder.with_root_certificates(store)
        };
        let config = match client {
            Some(certified) => {
                builder.with_client_cert_resolver(Arc::new(ClientCert(Arc::new(certified))))
            }
            None => builder.with_no_client_auth(),
        };
        let alpn = |proto: &[u8]| {
            let mut c = config.clone();
            c.alpn_protocols = vec![proto.to_vec()];
            Arc::new(c)
        };
        Ok(Self {
            configs: [alpn(b"http/1.1"), alpn(b"h2")],
            key: identity,
        })
    }
}

/// The one certificate a service shows to its upstreams.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl UpstreamTls {
    /// TLS to `host` (a DNS name or an IP address).
    pub fn new(host: &str, verify: bool) -> Result<Self, String> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| format!("{host:?}: expected a DNS name or an IP address for TLS"))?;
        Ok(Self {
            name,
            verify,
            own: None,
        })
    }

    /// The pool key of a connection to `target` with these settings: TLS
    /// connections are never shared with plain ones, nor across names.
    pub fn pool_key(&self, target: &str) -> Arc<str> {
        let check = if self.verify {
            "verified"
        } else {
            "unverified"
        };
        let own = self.own.as_ref().map_or("", |o| o.key.as_str());
        format!("{target} tls {} {check} {own}", self.name.to_str()).into()
    }
}

/// The four client configurations: verified or not, ALPN http/1.1 or h2.
#[derive(Clone, Debug)]
pub struct Clients {
    configs: [Arc<ClientConfig>; 4],
    /// The system's roots and `upstream_ca_file`'s, for services that
    /// bring a client certificate but no roots of their own.
    roots: Arc<rustls::RootCertStore>,
}

impl Clients {
    /// Roots from the system, plus every certificate of the PEM file
    /// `ca_file` (empty: none). Errors say what is wrong with the file.
    pub fn new(ca_file: &str) -> Result<Self, String> {
        let provider = crate::tls::provider();
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if !ca_file.is_empty() {
            let pem = std::fs::read(ca_file).map_err(|e| format!("{ca_file}: {e}"))?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{ca_file}: expected PEM certificates: {e}"))?;
            if certs.is_empty() {
                return Err(format!("{ca_file}: expected PEM certificates, found none"));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("{ca_file}: not a usable CA certificate: {e}"))?;
            }
        }
        let builder = || {
            ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS versions: {e}"))
        };
        let roots = Arc::new(roots);
        let verified = builder()?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let unverified = builder()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider.clone())))
            .with_no_client_auth();
        let alpn = |c: &ClientConfig, proto: &[u8]| {
            let mut c = c.clone();
            c.alpn_protocols = vec![proto.to_vec()];
            Arc::new(c)
        };
        Ok(Self {
            configs: [
                alpn(&verified, b"http/1.1"),
                alpn(&verified, b"h2"),
                alpn(&unverified, b"http/1.1"),
                alpn(&unverified, b"h2"),
            ],
            roots,
        })
    }

    /// The TLS handshake over `tcp` as `tls` says, offering HTTP/2 or
    /// HTTP/1.1 by ALPN (the proxy's upstream connections and the active
    /// health checks alike).
    pub async fn connect(
        &self,
        tls: &UpstreamTls,
        http2: bool,
        tcp: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let config = match &tls.own {
            Some(own) => own.configs[usize::from(http2)].clone(),
            None => self.configs[usize::from(!tls.verify) * 2 + usize::from(http2)].clone(),
        };
        tokio_rustls::TlsConnector::from(config)
            .connect(tls.name.clone(), tcp)
            .await
    }
}

/// A client that accepts any certificate and offers no ALPN (tcp-log's
/// TLS, which Kong does not verify either).
pub fn unverified_client() -> Result<Arc<ClientConfig>, String> {
    let provider = crate::tls::provider();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `tls_verify: false`: any certificate is accepted, but the handshake's
/// signatures are still checked (the session is with whoever holds the key
/// of the certificate shown).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
