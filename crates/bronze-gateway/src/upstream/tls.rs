//! TLS to upstreams (`https` and `grpcs` services): the client side of
//! rustls. Certificates are verified by default (Kong's default is not to:
//! a deliberate difference, `tls_verify: false` turns it off per service)
//! against the system's roots (`rustls-native-certs`: `/etc/ssl/certs`,
//! or `SSL_CERT_FILE`/`SSL_CERT_DIR`) plus the CA file given as
//! `upstream_ca_file` (Kong's `lua_ssl_trusted_certificate`), for a private
//! CA. The name checked and sent as SNI is the service's host.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// A service's TLS settings: the name the upstream's certificate must
/// carry (also sent as SNI), and whether it is checked at all.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub name: ServerName<'static>,
    pub verify: bool,
}

impl UpstreamTls {
    /// TLS to `host` (a DNS name or an IP address).
    pub fn new(host: &str, verify: bool) -> Result<Self, String> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| format!("{host:?}: expected a DNS name or an IP address for TLS"))?;
        Ok(Self { name, verify })
    }

    /// The pool key of a connection to `target` with these settings: TLS
    /// connections are never shared with plain ones, nor across names.
    pub fn pool_key(&self, target: &str) -> Arc<str> {
        let check = if self.verify {
            "verified"
        } else {
            "unverified"
        };
        format!("{target} tls {} {check}", self.name.to_str()).into()
    }
}

/// The four client configurations: verified or not, ALPN http/1.1 or h2.
#[derive(Clone, Debug)]
pub struct Clients {
    configs: [Arc<ClientConfig>; 4],
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
        let verified = builder()?
            .with_root_certificates(roots)
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
        let i = usize::from(!tls.verify) * 2 + usize::from(http2);
        tokio_rustls::TlsConnector::from(self.configs[i].clone())
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
