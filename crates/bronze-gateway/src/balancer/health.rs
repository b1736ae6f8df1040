//! Kong's active health checks: one background task per upstream checks
//! each target (`GET <http_path>` over HTTP/1.1, in TLS for `https`, or a
//! TCP connect for `tcp`), every `healthy.interval` seconds while it is
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
    let Ok(collected) = body.collect().await else {
        return Outcome::TcpFailure;
    };
    let status = |h: Option<&http::HeaderMap>| {
        h.and_then(|h| h.get("grpc-status"))
            .map(|v| v.as_bytes().to_vec())
    };
    let trailers = collected.trailers().cloned();
    let grpc_status = status(trailers.as_ref()).or_else(|| status(Some(&parts.headers)));
    // HealthCheckResponse{status: SERVING}: field 1, varint 1.
    let serving = collected.to_bytes()[..] == [0, 0, 0, 0, 2, 0x08, 0x01];
    if grpc_status.as_deref() == Some(b"0") && serving {
        Outcome::Passed
    } else {
        Outcome::Failed
    }
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
