//! Kong's active health checks: one background task per upstream checks
//! each target (`GET <http_path>` over HTTP/1.1, in TLS for `https`, a
//! TCP connect for `tcp`, `grpc.health.v1.Health/Check` over HTTP/2 for
//! `grpc`/`grpcs`, its short answer decoded), every `healthy.interval` seconds while it is
//! healthy and every `unhealthy.interval` while it is not, at most
//! `concurrency` at once, and counts the outcome against the
//! `healthchecks.active` thresholds. The task ends when its upstream is
//! dropped (a configuration without it took over); the targets' state
//! lives on in the registry for the next configuration's task.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::config::{ActiveSettings, CheckKind, TlsCheck};
use super::{Outcome, TargetState, Upstream};
use crate::upstream::tls::Clients;
use crate::upstream::{UpIo, UpstreamTls};

/// One check of `target`, all of it within the check's timeout.
async fn check(active: &ActiveSettings, tls: Option<&Clients>, target: &TargetState) -> Outcome {
    tokio::time::timeout(active.timeout, probe(active, tls, target))
        .await
        .unwrap_or(Outcome::Timeout)
}

async fn probe(active: &ActiveSettings, tls: Option<&Clients>, target: &TargetState) -> Outcome {
    let Ok(tcp) = TcpStream::connect(&*target.addr).await else {
        return Outcome::TcpFailure;
    };
    let _ = tcp.set_nodelay(true);
    let (check_tls, grpc) = match &active.kind {
        CheckKind::Tcp => return Outcome::Passed,
        CheckKind::Http { tls } => (tls, false),
        CheckKind::Grpc { tls } => (tls, true),
    };
    let io = match check_tls {
        None => UpIo::Left(tcp),
        Some(check) => match handshake(tcp, check, tls, target, grpc).await {
            Some(s) => UpIo::Right(Box::new(s)),
            None => return Outcome::TcpFailure,
        },
    };
    if grpc {
        grpc_health(io, check_tls.is_some(), target).await
    } else {
        http_get(io, active, target).await
    }
}

/// The TLS handshake of an `https`/`grpcs` check (ALPN h2 for gRPC).
async fn handshake(
    tcp: TcpStream,
    check: &TlsCheck,
    clients: Option<&Clients>,
    target: &TargetState,
    h2: bool,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let host = target
        .addr
        .rsplit_once(':')
        .map_or(&*target.addr, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = match &check.sni {
        Some(n) => n.clone(),
        None => UpstreamTls::new(host, check.verify).ok()?.name,
    };
    let settings = UpstreamTls {
        name,
        verify: check.verify,
        own: check.own.clone(),
    };
    clients?
        .connect(&settings, h2, tcp)
        .await
        .map_err(|error| {
            tracing::debug!(target = %target.addr, %error, "health check TLS handshake failed");
        })
        .ok()
}

/// `GET http_path` over HTTP/1.1: the answer's status.
async fn http_get(io: UpIo, active: &ActiveSettings, target: &TargetState) -> Outcome {
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await
    else {
        return Outcome::TcpFailure;
    };
    tokio::spawn(conn);
    let Ok(mut req) = http::Request::get(&active.http_path)
        .header(http::header::HOST, &*target.addr)
        .header(http::header::USER_AGENT, "bronze-gateway health check")
        .body(Empty::<Bytes>::new())
    else {
        return Outcome::TcpFailure;
    };
    for (name, value) in &active.headers {
        req.headers_mut().append(name, value.clone());
    }
    match sender.send_request(req).await {
        Ok(resp) => Outcome::Status(resp.status().as_u16()),
        Err(_) => Outcome::TcpFailure,
    }
}

/// The most of a gRPC health answer's body a check reads. The answer is a
/// few bytes (one message holding one enum); a longer body is a failed
/// check, not a reason to keep reading.
const GRPC_HEALTH_BODY_LIMIT: usize = 1024;

/// `grpc.health.v1.Health/Check` for the whole server (an empty
/// request): passed when it answers SERVING.
async fn grpc_health(io: UpIo, tls: bool, target: &TargetState) -> Outcome {
    use http_body_util::BodyExt;
    let Ok((mut sender, conn)) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await
    else {
        return Outcome::TcpFailure;
    };
    tokio::spawn(conn);
    let scheme = if tls { "https" } else { "http" };
    // One gRPC message: not compressed, 0 bytes (HealthCheckRequest{}).
    let request = http::Request::post(format!(
        "{scheme}://{}/grpc.health.v1.Health/Check",
        target.addr
    ))
    .header(http::header::CONTENT_TYPE, "application/grpc")
    .header(http::header::TE, "trailers")
    .header(http::header::USER_AGENT, "bronze-gateway health check")
    .body(http_body_util::Full::new(Bytes::from_static(&[
        0, 0, 0, 0, 0,
    ])));
    let Ok(request) = request else {
        return Outcome::TcpFailure;
    };
    let resp = match sender.send_request(request).await {
        Ok(r) => r,
        Err(_) => return Outcome::TcpFailure,
    };
    if resp.status() != http::StatusCode::OK {
        return Outcome::Status(resp.status().as_u16());
    }
    let (parts, body) = resp.into_parts();
    let collected = match http_body_util::Limited::new(body, GRPC_HEALTH_BODY_LIMIT)
        .collect()
        .await
    {
        Ok(c) => c,
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            tracing::debug!(target = %target.addr, limit = GRPC_HEALTH_BODY_LIMIT,
                "gRPC health answer longer than a health answer can be");
            return Outcome::Failed;
        }
        Err(_) => return Outcome::TcpFailure,
    };
    let status = |h: Option<&http::HeaderMap>| h.and_then(|h| h.get("grpc-status")).cloned();
    let trailers = collected.trailers().cloned();
    // A trailers-only answer (an error) carries grpc-status in its headers.
    let grpc_status = status(trailers.as_ref()).or_else(|| status(Some(&parts.headers)));
    if grpc_status.as_ref().map(http::HeaderValue::as_bytes) == Some(b"0")
        && grpc_serving(&collected.to_bytes())
    {
        Outcome::Passed
    } else {
        Outcome::Failed
    }
}

/// Whether a `Health/Check` answer's body says SERVING: exactly one
/// uncompressed gRPC message (the check asks for no compression), decoded
/// as a `grpc.health.v1.HealthCheckResponse`, so any valid encoding of
/// SERVING passes (unknown fields, a repeated field whose last value
/// wins, a non-minimal varint) and nothing else does.
pub(crate) fn grpc_serving(body: &[u8]) -> bool {
    use prost::Message as _;
    use tonic_health::pb::HealthCheckResponse;
    use tonic_health::pb::health_check_response::ServingStatus;
    let [0, l0, l1, l2, l3, message @ ..] = body else {
        return false;
    };
    if u32::from_be_bytes([*l0, *l1, *l2, *l3]) as usize != message.len() {
        return false;
    }
    HealthCheckResponse::decode(message).is_ok_and(|r| r.status() == ServingStatus::Serving)
}

/// Runs the active checks of `upstream` until it is dropped.
pub async fn run_active(upstream: Weak<Upstream>) {
    let Some(active) = upstream.upgrade().and_then(|u| u.settings.active.clone()) else {
        return;
    };
    let active = Arc::new(active);
    let limit = Arc::new(tokio::sync::Semaphore::new(active.concurrency));
    let mut due: HashMap<Arc<str>, (Instant, bool)> = HashMap::new();
    loop {
        let Some(u) = upstream.upgrade() else {
            return;
        };
        let now = Instant::now();
        let targets: Vec<Arc<TargetState>> = {
            let t = u.targets();
            t.groups
                .iter()
                .flat_map(|g| g.members.iter().map(|m| m.state.clone()))
                .collect()
        };
        due.retain(|addr, _| targets.iter().any(|t| t.addr == *addr));
        let mut running = tokio::task::JoinSet::new();
        for t in targets {
            let interval = if t.is_healthy() {
                active.healthy_interval
            } else {
                active.unhealthy_interval
            };
            let healthy = t.is_healthy();
            // Due, or its health changed since (the other interval applies).
            if interval.is_zero()
                || due
                    .get(&t.addr)
                    .is_some_and(|(at, was)| *at > now && *was == healthy)
            {
                continue;
            }
            due.insert(t.addr.clone(), (now + interval, healthy));
            let (active, limit) = (active.clone(), limit.clone());
            let tls = u.registry.tls().cloned();
            running.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let outcome = check(&active, tls.as_ref(), &t).await;
                (t, outcome)
            });
        }
        drop(u);
        while let Some(done) = running.join_next().await {
            let Ok((t, outcome)) = done else { continue };
            tracing::debug!(target = %t.addr, ?outcome, "active health check");
            t.record(outcome, &active.thresholds, "active check");
        }
        // Wake for the next due check (or a target that changed health:
        // at most every second).
        let next = due
            .values()
            .map(|(at, _)| *at)
            .min()
            .unwrap_or(now + Duration::from_secs(1))
            .min(Instant::now() + Duration::from_secs(1))
            .max(Instant::now() + Duration::from_millis(10));
        tokio::time::sleep_until(next).await;
    }
}

#[cfg(test)]
mod tests {
    use super::grpc_serving;

    /// A gRPC frame around `message`: flag, big-endian length, bytes.
    fn frame(compressed: u8, message: &[u8]) -> Vec<u8> {
        let mut f = vec![compressed];
        f.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
        f.extend_from_slice(message);
        f
    }

    #[test]
    fn any_valid_encoding_of_serving_passes() {
        // What tonic writes: field 1, varint 1.
        assert!(grpc_serving(&frame(0, &[0x08, 0x01])));
        // An unknown field (a newer schema) before and after it.
        assert!(grpc_serving(&frame(
            0,
            &[0x18, 0x07, 0x08, 0x01, 0x22, 0x01, b'x']
        )));
        // The field twice: the last value wins.
        assert!(grpc_serving(&frame(0, &[0x08, 0x02, 0x08, 0x01])));
        // A non-minimal varint.
        assert!(grpc_serving(&frame(0, &[0x08, 0x81, 0x00])));
    }

    #[test]
    fn anything_else_fails() {
        // NOT_SERVING, UNKNOWN (the empty message), SERVICE_UNKNOWN.
        for message in [&[0x08, 0x02][..], &[], &[0x08, 0x03]] {
            assert!(!grpc_serving(&frame(0, message)), "{message:?}");
        }
        // SERVING, but compressed (never asked for), or a second message.
        assert!(!grpc_serving(&frame(1, &[0x08, 0x01])));
        let mut two = frame(0, &[0x08, 0x01]);
        two.extend(frame(0, &[0x08, 0x01]));
        assert!(!grpc_serving(&two));
        // A frame shorter or longer than its length, no frame, garbage.
        assert!(!grpc_serving(&[0, 0, 0, 0, 3, 0x08, 0x01]));
        assert!(!grpc_serving(&[0, 0, 0, 0, 1, 0x08, 0x01]));
        assert!(!grpc_serving(&[]));
        assert!(!grpc_serving(&frame(0, &[0x08])));
        assert!(!grpc_serving(&frame(0, &[0xff, 0xff, 0xff])));
    }
}
