//! HTTPS with rustls from a PEM certificate chain and private key: the
//! accept loop axum's plain `serve` does not offer. HTTP/1.1 and HTTP/2
//! (ALPN); on shutdown, new connections stop and open ones drain.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bronze_runtime::{Shutdown, serve};
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Loads `cert` (a PEM chain, leaf first) and `key` (PEM, PKCS#8, PKCS#1
/// or SEC1) into a server configuration.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "tls_cert {}: expected PEM CERTIFICATE blocks, found none",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("tls_key {}: expected a PEM private key: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls_cert/tls_key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` (over TLS with `config`) until `shutdown`, then drains
/// open connections (bronze-runtime's accept loop). A client has
/// `header_read_timeout` for each request's headers and its handshake.
pub async fn serve(
    listener: TcpListener,
    config: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    header_read_timeout: Duration,
    shutdown: Shutdown,
) {
    let options = serve::Options {
        tls: config.map(TlsAcceptor::from),
        handshake_timeout: header_read_timeout,
        header_read_timeout: Some(header_read_timeout),
        ..serve::Options::default()
    };
    serve::serve(
        listener,
        options,
        move |_| TowerToHyperService::new(router.clone()),
        shutdown,
    )
    .await;
}
