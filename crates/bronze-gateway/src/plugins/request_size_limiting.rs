//! request-size-limiting: a `Content-Length` over the limit is refused
//! with 413 before anything is sent upstream; a body without one (chunked)
//! streams through [`LimitedBody`], which stops it the moment it grows past
//! the limit (the proxy then answers 413). Nothing is buffered.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body as HttpBody, Frame, SizeHint};
use serde::Deserialize;

use super::{Answer, Ctx, Plugin, exit, parse_config};
use crate::declarative::Invalid;

pub const TOO_LARGE: &str = "Request size limit exceeded";

/// Kong's configuration of request-size-limiting with nothing set, as Kong shows it
/// (3.9's `kong/plugins/request-size-limiting/schema.lua`): every field, with its
/// default or null. Bronze reads an unset field as that default.
pub(crate) fn kong_defaults() -> serde_json::Value {
    serde_json::json!({
        "allowed_payload_size": 128,
        "size_unit": "megabytes",
        "require_content_length": false,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    allowed_payload_size: Option<u64>,
    #[serde(default)]
    size_unit: Option<String>,
    #[serde(default)]
    require_content_length: Option<bool>,
}

pub struct RequestSizeLimiting {
    limit: u64,
    require_content_length: bool,
}

impl RequestSizeLimiting {
    pub fn new(config: Option<&serde_json::Value>, field: &str) -> Result<Self, Invalid> {
        let c: Config = parse_config(config, field)?;
        let unit: u64 = match c.size_unit.as_deref().unwrap_or("megabytes") {
            "megabytes" => 1 << 20,
            "kilobytes" => 1 << 10,
            "bytes" => 1,
            other => {
                return Err(Invalid::new(
                    format!("{field}.size_unit"),
                    format!("{other:?}: expected one of: megabytes, kilobytes, bytes"),
                ));
            }
        };
        let limit = c
            .allowed_payload_size
            .unwrap_or(128)
            .checked_mul(unit)
            .ok_or_else(|| Invalid::new(format!("{field}.allowed_payload_size"), "too large"))?;
        Ok(Self {
            limit,
            require_content_length: c.require_content_length.unwrap_or(false),
        })
    }
}

impl Plugin for RequestSizeLimiting {
    fn name(&self) -> &'static str {
        "request-size-limiting"
    }

    fn priority(&self) -> i32 {
        951
    }

    fn access(&self, req: &mut http::request::Parts, ctx: &mut Ctx) -> Result<(), Answer> {
        match req.headers.get(http::header::CONTENT_LENGTH) {
            Some(v) => match v.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
                Some(n) if n > self.limit => Err(exit(StatusCode::PAYLOAD_TOO_LARGE, TOO_LARGE)),
                Some(_) => Ok(()),
                None => Err(exit(
                    StatusCode::LENGTH_REQUIRED,
                    "A valid Content-Length header is required",
                )),
            },
            None if self.require_content_length => Err(exit(
                StatusCode::LENGTH_REQUIRED,
                "A valid Content-Length header is required",
            )),
            None => {
                if req.headers.contains_key(http::header::TRANSFER_ENCODING)
                    || req.version >= http::Version::HTTP_2
                {
                    ctx.body_limit = Some(ctx.body_limit.map_or(self.limit, |l| l.min(self.limit)));
                }
                Ok(())
            }
        }
    }
}

/// A request body that fails once more than `limit` bytes went through,
/// and says so in `tripped`.
pub struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    tripped: Arc<AtomicBool>,
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: u64) -> (Self, Arc<AtomicBool>) {
        let tripped = Arc::new(AtomicBool::new(false));
        (
            Self {
                inner,
                remaining: limit,
                tripped: tripped.clone(),
            },
            tripped,
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{TOO_LARGE}")]
pub struct TooLarge;

impl<B> HttpBody for LimitedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        this.tripped.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(TooLarge))));
                    }
                    this.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test]
    async fn a_growing_body_is_stopped_at_the_limit() {
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..5)
            .map(|_| Ok(Frame::data(Bytes::from_static(&[b'x'; 100]))))
            .collect();
        let body = StreamBody::new(futures::stream::iter(chunks));
        let (limited, tripped) = LimitedBody::new(body, 250);
        let mut limited = limited;
        let mut got = 0;
        let mut failed = false;
        while let Some(frame) = limited.frame().await {
            match frame {
                Ok(f) => got += f.into_data().map_or(0, |d| d.len()),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed);
        assert_eq!(got, 200);
        assert!(tripped.load(Ordering::Acquire));
    }
}
