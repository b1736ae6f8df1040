//! Connections to upstream targets: an HTTP/1.1 keep-alive pool and one
//! multiplexed HTTP/2 connection per target (h2c, for gRPC).
//!
//! Written for the proxy's hot path rather than taken from hyper-util's
//! general client: a checkout is one uncontended lock and one hash of the
//! target (no URI scheme/authority key, no per-request task to return a
//! connection). An HTTP/1.1 connection goes back to the pool when its
//! response body ends (the body wrapper below does it), so a connection
//! whose body the client abandoned is never reused half-read.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use rustc_hash::FxBuildHasher;
use tokio::net::TcpStream;

use crate::balancer::connect::{TimedIo, Timeouts};

pub mod tls;

pub use tls::UpstreamTls;

/// An upstream connection of hyper's client: plain, or TLS (`https`,
/// `grpcs` services).
pub(crate) type UpIo =
    tokio_util::either::Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;
type Io = TimedIo<TokioIo<UpIo>>;

/// What goes upstream: the client's body (limited in size by a plugin),
/// or nothing (a bodyless request that may be sent again on another
/// target).
pub type UpstreamBody =
    Either<Either<Incoming, crate::plugins::LimitedBody<Incoming>>, Empty<Bytes>>;

/// Why a request did not get an upstream response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect to {target}: {source}")]
    Connect {
        target: Arc<str>,
        source: std::io::Error,
    },
    #[error("connect to {0}: timed out")]
    ConnectTimeout(Arc<str>),
    #[error("TLS with {target}: {source}")]
    Tls {
        target: Arc<str>,
        source: std::io::Error,
    },
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl SendError {
    /// A connect or a write that took longer than the service allows.
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::ConnectTimeout(_) => true,
            Self::Connect { .. } | Self::Tls { .. } => false,
            Self::Http(e) => crate::balancer::connect::is_timeout(e),
        }
    }

    /// Nothing reached the upstream: safe to try another target whatever
    /// the method.
    pub fn before_sending(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::ConnectTimeout(_) | Self::Tls { .. } => true,
            Self::Http(e) => e.is_canceled(),
        }
    }
}

struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

type Idles = HashMap<Arc<str>, Vec<Idle>, FxBuildHasher>;
type RawIdles = HashMap<Arc<str>, Vec<(TcpStream, Instant)>, FxBuildHasher>;

/// Upstream connections, shared by every downstream connection.
pub struct Pool {
    idle: Mutex<Idles>,
    /// Idle connections of the HTTP/1.1 proxy path (`proxy::h1`), which
    /// speaks HTTP/1.1 on them itself.
    raw: Mutex<RawIdles>,
    h2: Mutex<HashMap<Arc<str>, http2::SendRequest<UpstreamBody>, FxBuildHasher>>,
    /// An idle connection older than this is closed instead of reused.
    idle_timeout: Duration,
    /// Idle connections kept per target; more are closed.
    max_idle: usize,
    /// rustls client configurations for TLS upstreams.
    tls: tls::Clients,
}

/// A new TCP connection to `target` within the connect timeout, with
/// TCP_NODELAY.
async fn connect_tcp(target: &Arc<str>, t: Timeouts) -> Result<TcpStream, SendError> {
    let stream = tokio::time::timeout(t.connect, TcpStream::connect(&**target))
        .await
        .map_err(|_| SendError::ConnectTimeout(target.clone()))?
        .map_err(|source| SendError::Connect {
            target: target.clone(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

impl Pool {
    pub fn new(idle_timeout: Duration, max_idle: usize, tls: tls::Clients) -> Self {
        Self {
            idle: Mutex::new(HashMap::default()),
            raw: Mutex::new(HashMap::default()),
            h2: Mutex::new(HashMap::default()),
            idle_timeout,
            max_idle,
            tls,
        }
    }

    /// A new connection for hyper's client (TLS with `tls`, offering h2 or
    /// http/1.1 by ALPN), writes bounded by the write timeout; the TCP
    /// connect and the handshake each within the connect timeout.
    async fn connect(
        &self,
        target: &Arc<str>,
        t: Timeouts,
        tls: Option<&UpstreamTls>,
        http2: bool,
    ) -> Result<Io, SendError> {
        let tcp = connect_tcp(target, t).await?;
        let io = match tls {
            None => UpIo::Left(tcp),
            Some(tls) => {
                let stream = tokio::time::timeout(t.connect, self.tls.connect(tls, http2, tcp))
                    .await
                    .map_err(|_| SendError::ConnectTimeout(target.clone()))?
                    .map_err(|source| SendError::Tls {
                        target: target.clone(),
                        source,
                    })?;
                UpIo::Right(Box::new(stream))
            }
        };
        Ok(TimedIo::new(TokioIo::new(io), t.write))
    }

    /// An idle HTTP/1.1 connection to `target` that is still open, most
    /// recently used first (its socket is warm).
    fn checkout(&self, target: &Arc<str>) -> Option<http1::SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(target)?;
        let now = Instant::now();
        while let Some(c) = list.pop() {
            if !c.sender.is_closed() && now.duration_since(c.since) < self.idle_timeout {
                return Some(c.sender);
            }
        }
        None
    }

    fn put_back(&self, target: Arc<str>, sender: http1::SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        let list = idle.entry(target).or_default();
        if list.len() < self.max_idle {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes idle connections older than the idle timeout.
    pub fn sweep(&self) {
        let now = Instant::now();
        let fresh = |since: Instant| now.duration_since(since) < self.idle_timeout;
        self.idle.lock().retain(|_, list| {
            list.retain(|c| fresh(c.since));
            !list.is_empty()
        });
        self.raw.lock().retain(|_, list| {
            list.retain(|(_, since)| fresh(*since));
            !list.is_empty()
        });
    }

    /// How long an idle connection is kept.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// An idle connection to `target` for the HTTP/1.1 path, most recently
    /// used first, or a new one (always, with `reuse: false`).
    pub async fn raw(
        &self,
        target: &Arc<str>,
        t: Timeouts,
        reuse: bool,
    ) -> Result<RawConn, SendError> {
        if reuse && let Some(stream) = self.checkout_raw(target) {
            return Ok(RawConn {
                stream,
                reused: true,
            });
        }
        Ok(RawConn {
            stream: connect_tcp(target, t).await?,
            reused: false,
        })
    }

    fn checkout_raw(&self, target: &Arc<str>) -> Option<TcpStream> {
        let mut idle = self.raw.lock();
        let list = idle.get_mut(target)?;
        let now = Instant::now();
        while let Some((stream, since)) = list.pop() {
            if now.duration_since(since) < self.idle_timeout && !closed(&stream) {
                return Some(stream);
            }
        }
        None
    }

    /// Keeps a connection whose last response was read to its end.
    pub fn put_back_raw(&self, target: &Arc<str>, stream: TcpStream) {
        let mut idle = self.raw.lock();
        let list = match idle.get_mut(target) {
            Some(l) => l,
            None => idle.entry(target.clone()).or_default(),
        };
        if list.len() < self.max_idle {
            list.push((stream, Instant::now()));
        }
    }

    /// Sends `req` over HTTP/1.1 to `target` (an `host:port`; over TLS
    /// with `tls`), reusing an idle connection when one is open.
    /// `upgrade`: the connection is handed over to the caller after a 101
    /// and never pooled.
    pub async fn send_http1(
        self: &Arc<Self>,
        target: &Arc<str>,
        req: Request<UpstreamBody>,
        timeouts: Timeouts,
        upgrade: bool,
        tls: Option<&UpstreamTls>,
    ) -> Result<Response<PooledBody>, SendError> {
        let mut req = req;
        let key = tls.map_or_else(|| target.clone(), |t| t.pool_key(target));
        // A pooled connection the upstream closed meanwhile fails before
        // anything is written: then the request goes on a new one.
        while let Some(mut sender) = self.checkout(&key) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(resp, &key, sender, upgrade)),
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let stream = self.connect(target, timeouts, tls, false).await?;
        let (mut sender, conn) = http1::Builder::new()
            .max_buf_size(64 << 10)
            .handshake(stream)
            .await?;
        let name = target.clone();
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(target = %name, %error, "upstream connection ended");
            }
        });
        let resp = sender.send_request(req).await?;
        Ok(self.wrap(resp, &key, sender, upgrade))
    }

    fn wrap(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        target: &Arc<str>,
        sender: http1::SendRequest<UpstreamBody>,
        upgrade: bool,
    ) -> Response<PooledBody> {
        let reusable = !upgrade && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS;
        let (parts, body) = resp.into_parts();
        let mut body = PooledBody {
            inner: body,
            give_back: reusable.then(|| (self.clone(), target.clone(), sender)),
        };
        // A response without a body (204, 304, HEAD, Content-Length: 0)
        // may never be polled: its connection is free already.
        if body.inner.is_end_stream() {
            body.release();
        }
        Response::from_parts(parts, body)
    }

    /// Sends `req` over HTTP/2 to `target` (prior knowledge, h2c; or by
    /// ALPN over TLS with `tls`): one connection per target carries every
    /// stream (gRPC).
    pub async fn send_http2(
        &self,
        target: &Arc<str>,
        mut req: Request<UpstreamBody>,
        timeouts: Timeouts,
        tls: Option<&UpstreamTls>,
    ) -> Result<Response<Incoming>, SendError> {
        *req.version_mut() = http::Version::HTTP_2;
        let key = tls.map_or_else(|| target.clone(), |t| t.pool_key(target));
        let existing = self.h2.lock().get(&key).filter(|s| !s.is_closed()).cloned();
        let mut sender = match existing {
            Some(s) => s,
            None => {
                let stream = self.connect(target, timeouts, tls, true).await?;
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Duration::from_secs(30))
                    .handshake(stream)
                    .await?;
                let name = target.clone();
                tokio::spawn(async move {
                    if let Err(error) = conn.await {
                        tracing::debug!(target = %name, %error, "upstream h2 connection ended");
                    }
                });
                self.h2.lock().insert(key, sender.clone());
                sender
            }
        };
        sender.ready().await?;
        Ok(sender.send_request(req).await?)
    }
}

/// A connection of the HTTP/1.1 path.
pub struct RawConn {
    pub stream: TcpStream,
    /// Taken from the pool: the upstream may have closed it just as the
    /// request went out, so a failure before any answer is worth one more
    /// try on a new connection.
    pub reused: bool,
}

/// Whether an idle connection has been closed by its peer (or sent
/// something unasked): the reactor has marked it readable. Costs no
/// system call unless it has.
fn closed(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => false,
        Poll::Ready(Err(_)) => true,
        Poll::Ready(Ok(())) => {
            let mut byte = [0u8; 1];
            // Readable but nothing there (a spurious wake-up): still open.
            !matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

/// An upstream response body that returns its connection to the pool once
/// the last frame has been read.
pub struct PooledBody {
    inner: Incoming,
    give_back: Option<(Arc<Pool>, Arc<str>, http1::SendRequest<UpstreamBody>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((pool, target, sender)) = self.give_back.take() {
            pool.put_back(target, sender);
        }
    }

    /// A body whose connection is not pooled here (HTTP/2 streams).
    pub fn unpooled(inner: Incoming) -> Self {
        Self {
            inner,
            give_back: None,
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // A broken body: the connection is not reused.
            Poll::Ready(Some(Err(_))) => self.give_back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
