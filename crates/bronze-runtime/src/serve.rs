//! The one HTTP accept loop every Bronze listener uses (feature `serve`):
//! plain TCP or TLS (rustls, ALPN h2 and http/1.1), HTTP/1.1 and HTTP/2 on
//! the same port with upgrades (WebSocket), TCP_NODELAY, a bound on the TLS
//! handshake and on reading request headers, and a graceful drain on
//! shutdown: new connections stop, open ones finish.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::Shutdown;

/// How a listener serves its connections.
#[derive(Clone)]
pub struct Options {
    /// Terminate TLS with this acceptor; `None`: plain TCP.
    pub tls: Option<TlsAcceptor>,
    /// A client that has not finished its TLS handshake within this long is
    /// dropped.
    pub handshake_timeout: Duration,
    /// A client must send a request's headers within this long (HTTP/1.1;
    /// slow-loris). `None`: no bound.
    pub header_read_timeout: Option<Duration>,
    /// The largest request head accepted (HTTP/1.1 buffer, HTTP/2 header
    /// list). `None`: hyper's defaults.
    pub max_header_bytes: Option<usize>,
    /// After shutdown, how long open connections may take to finish.
    /// `None`: as long as they need.
    pub drain_timeout: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tls: None,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: None,
            max_header_bytes: None,
            drain_timeout: None,
        }
    }
}

/// What a service factory learns about a connection it is asked to serve.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    pub peer: SocketAddr,
    /// Whether the connection came through TLS.
    pub tls: bool,
}

/// Serves every connection `listener` accepts with the service
/// `make_service` returns for it, until `shutdown`; then drains.
pub async fn serve<M, S, B>(
    listener: TcpListener,
    options: Options,
    make_service: M,
    shutdown: Shutdown,
) where
    M: Fn(Accepted) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    {
        let mut h1 = builder.http1();
        h1.timer(TokioTimer::new());
        if let Some(t) = options.header_read_timeout {
            h1.header_read_timeout(t);
        }
        if let Some(n) = options.max_header_bytes {
            h1.max_buf_size(n.max(8192));
        }
    }
    {
        let mut h2 = builder.http2();
        h2.timer(TokioTimer::new());
        if let Some(n) = options.max_header_bytes {
            h2.max_header_list_size(u32::try_from(n).unwrap_or(u32::MAX));
        }
    }
    let tls = options.tls.is_some();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of file descriptors and the like: pause, go on.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.wait() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = make_service(Accepted { peer, tls });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        match &options.tls {
            None => {
                tokio::spawn(connection(builder, watcher, stream, service, peer));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let timeout = options.handshake_timeout;
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => connection(builder, watcher, tls, service, peer).await,
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    match options.drain_timeout {
        Some(t) => {
            let _ = tokio::time::timeout(t, graceful.shutdown()).await;
        }
        None => graceful.shutdown().await,
    }
}

async fn connection<I, S, B>(
    builder: auto::Builder<TokioExecutor>,
    watcher: Watcher,
    io: I,
    service: S,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(error) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}
