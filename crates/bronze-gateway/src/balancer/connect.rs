//! Per-service connect and write timeouts (Kong's `connect_timeout` and
//! `write_timeout`) on one shared connection pool.
//!
//! The proxy runs each upstream request inside [`scope`] with its
//! service's timeouts; [`TimedConnect`], wrapped around the pool's
//! connector, reads them when the pool opens a new connection: the connect
//! is bounded by `connect_timeout`, and every write on that connection that
//! waits longer than `write_timeout` fails. (A pooled connection keeps the
//! write timeout of the service that opened it: services sharing a target
//! share its connections.)

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub write: Duration,
}

tokio::task_local! {
    static TIMEOUTS: Timeouts;
}

/// Runs `f` (an upstream request) with `t` applying to connections it
/// opens.
pub async fn scope<F: Future>(t: Timeouts, f: F) -> F::Output {
    TIMEOUTS.scope(t, f).await
}

/// The connect took longer than the service's `connect_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("connect timed out after {0:?}")]
pub struct ConnectTimeout(Duration);

/// Whether a client error was a timeout (connect or write).
pub fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<ConnectTimeout>()
            || err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A connector applying the current [`scope`]'s timeouts (or the
/// defaults outside any).
#[derive(Debug, Clone)]
pub struct TimedConnect<C> {
    inner: C,
    defaults: Timeouts,
}

impl<C> TimedConnect<C> {
    pub fn new(inner: C, defaults: Timeouts) -> Self {
        Self { inner, defaults }
    }
}

impl<C> tower_service::Service<Uri> for TimedConnect<C>
where
    C: tower_service::Service<Uri> + Send,
    C::Response: Read + Write + Connection + Unpin + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = TimedIo<C::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let t = TIMEOUTS.try_with(|t| *t).unwrap_or(self.defaults);
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(t.connect, connecting).await {
                Ok(Ok(io)) => Ok(TimedIo {
                    io,
                    write_timeout: t.write,
                    waiting: None,
                }),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(Box::new(ConnectTimeout(t.connect)) as BoxError),
            }
        })
    }
}

/// A connection whose writes fail after waiting `write_timeout`.
#[derive(Debug)]
pub struct TimedIo<T> {
    io: T,
    write_timeout: Duration,
    /// Started when a write could not proceed; cleared when one does.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> TimedIo<T> {
    fn waited<R>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        if r.is_ready() {
            self.waiting = None;
            return r;
        }
        let timeout = self.write_timeout;
        let sleep = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.waiting = None;
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("upstream write timed out after {timeout:?}"),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: Read + Unpin> Read for TimedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for TimedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.waited(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.waited(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.waited(cx, r)
    }
}

impl<T: Connection> Connection for TimedIo<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}
