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
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
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
    /// Every connection starts with a PROXY protocol header (v1 or v2,
    /// before TLS), read within `handshake_timeout`; a connection without
    /// one is closed. Its address is `Accepted::proxied`.
    pub proxy_protocol: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tls: None,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: None,
            max_header_bytes: None,
            drain_timeout: None,
            proxy_protocol: false,
        }
    }
}

/// What a service factory learns about a connection it is asked to serve.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub peer: SocketAddr,
    /// Whether the connection came through TLS.
    pub tls: bool,
    /// The server name a TLS client asked for (SNI), lowercased.
    pub sni: Option<std::sync::Arc<str>>,
    /// The client's address from the PROXY protocol header, when the
    /// listener reads one and it named a client. Whether to believe it
    /// (is `peer` a trusted balancer?) is the service's decision.
    pub proxied: Option<SocketAddr>,
}

/// Serves every connection `listener` accepts with the service
/// `make_service` returns for it, until `shutdown`; then drains.
pub async fn serve<M, S, B>(
    listener: TcpListener,
    options: Options,
    make_service: M,
    shutdown: Shutdown,
) where
    M: Fn(Accepted) -> S + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    serve_with(
        listener,
        options,
        move |conn: Conn| {
            let service = make_service(conn.accepted.clone());
            conn.serve_hyper(Bytes::new(), service)
        },
        shutdown,
    )
    .await;
}

/// An accepted connection (TLS already terminated), handed to the
/// `serve_with` handler: it may speak HTTP/1.1 itself and hand the rest of
/// the connection to hyper at any message boundary (`serve_hyper`).
pub struct Conn {
    pub stream: Stream,
    pub accepted: Accepted,
    /// Triggered when the server starts draining: finish the message in
    /// hand, then close.
    pub shutdown: Shutdown,
    builder: auto::Builder<TokioExecutor>,
    /// Held while the connection lives: draining waits for it.
    watcher: Watcher,
}

impl Conn {
    /// Serves the rest of the connection with hyper (HTTP/1.1 or HTTP/2,
    /// upgrades, the listener's limits and timeouts); `read`: bytes already
    /// read from the stream and not yet answered.
    pub async fn serve_hyper<S, B>(self, read: Bytes, service: S)
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let io = Rewind {
            read,
            inner: self.stream,
        };
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        if let Err(error) = self.watcher.watch(conn.into_owned()).await {
            tracing::debug!(peer = %self.accepted.peer, %error, "connection ended with an error");
        }
    }
}

/// Accepts until `shutdown`, runs `handler` on its own task for every
/// connection (after the TLS handshake, within `handshake_timeout`), then
/// waits for open connections to finish (at most `drain_timeout`).
pub async fn serve_with<H, F>(
    listener: TcpListener,
    options: Options,
    handler: H,
    shutdown: Shutdown,
) where
    H: Fn(Conn) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let handler = Arc::new(handler);
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
        let (mut stream, peer) = tokio::select! {
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
        let conn = Conn {
            stream: Stream::Handshaking,
            accepted: Accepted {
                peer,
                tls,
                sni: None,
                proxied: None,
            },
            shutdown: shutdown.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
        };
        if options.tls.is_none() && !options.proxy_protocol {
            tokio::spawn(handler(Conn {
                stream: Stream::Plain(stream),
                ..conn
            }));
            continue;
        }
        // A PROXY header, a TLS handshake, or both: on the connection's
        // own task, each within the handshake timeout.
        let (acceptor, proxy_protocol) = (options.tls.clone(), options.proxy_protocol);
        let timeout = options.handshake_timeout;
        let handler = handler.clone();
        tokio::spawn(async move {
            let mut conn = conn;
            if proxy_protocol {
                match tokio::time::timeout(timeout, proxy_header(&mut stream)).await {
                    Ok(Ok(proxied)) => conn.accepted.proxied = proxied,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "no PROXY protocol header");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "PROXY protocol header timed out");
                        return;
                    }
                }
            }
            let Some(acceptor) = acceptor else {
                handler(Conn {
                    stream: Stream::Plain(stream),
                    ..conn
                })
                .await;
                return;
            };
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    conn.accepted.sni = tls
                        .get_ref()
                        .1
                        .server_name()
                        .map(|n| std::sync::Arc::from(n.to_ascii_lowercase()));
                    handler(Conn {
                        stream: Stream::Tls(Box::new(tls)),
                        ..conn
                    })
                    .await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    match options.drain_timeout {
        Some(t) => {
            let _ = tokio::time::timeout(t, graceful.shutdown()).await;
        }
        None => graceful.shutdown().await,
    }
}

/// Reads a PROXY protocol header off `stream`, and nothing after it (the
/// client's bytes stay for HTTP or TLS): the client's address, if it named
/// one.
async fn proxy_header(stream: &mut TcpStream) -> std::io::Result<Option<SocketAddr>> {
    use tokio::io::AsyncReadExt;
    let invalid =
        |e: crate::proxy_protocol::Invalid| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    // The shortest header ("PROXY UNKNOWN\r\n") is 15 bytes.
    let mut head = vec![0u8; 15];
    stream.read_exact(&mut head).await?;
    loop {
        if let Some(h) = crate::proxy_protocol::parse(&head).map_err(invalid)? {
            return Ok(h.source);
        }
        let more = if head.starts_with(b"PROXY ") {
            // v1: up to the line's end if it has arrived (one read), else
            // a byte at a time.
            let mut peeked = [0u8; 128];
            let n = stream.peek(&mut peeked).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let mut line = head.clone();
            line.extend_from_slice(&peeked[..n]);
            match line.windows(2).position(|w| w == b"\r\n") {
                Some(end) => (end + 2).saturating_sub(head.len()).max(1),
                None => 1,
            }
        } else if head.len() < 16 {
            16 - head.len()
        } else {
            // v2: the length field says how much follows.
            16 + usize::from(u16::from_be_bytes([head[14], head[15]])) - head.len()
        };
        let at = head.len();
        head.resize(at + more, 0);
        stream.read_exact(&mut head[at..]).await?;
    }
}

/// A server-side connection: plain TCP or TLS over TCP.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Only while the TLS handshake runs: never handed to a handler.
    Handshaking,
}

fn not_connected() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::NotConnected)
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Self::Handshaking => Poll::Ready(Err(not_connected())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Self::Handshaking => Poll::Ready(Err(not_connected())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Handshaking => Poll::Ready(Err(not_connected())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
            Self::Handshaking => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
            Self::Handshaking => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Self::Handshaking => Poll::Ready(Ok(())),
        }
    }
}

/// A stream whose first reads return bytes read from it earlier.
struct Rewind {
    read: Bytes,
    inner: Stream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.read.is_empty() {
            let n = this.read.len().min(buf.remaining());
            buf.put_slice(&this.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
