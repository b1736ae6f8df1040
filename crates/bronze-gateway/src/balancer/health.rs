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
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::config::{ActiveSettings, CheckKind};
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
    let io = match &active.kind {
        CheckKind::Tcp => return Outcome::Connected,
        CheckKind::Http => UpIo::Left(tcp),
        CheckKind::Https { sni, verify } => {
            let host = target
                .addr
                .rsplit_once(':')
                .map_or(&*target.addr, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = match sni {
                Some(n) => n.clone(),
                None => match UpstreamTls::new(host, *verify) {
                    Ok(t) => t.name,
                    Err(_) => return Outcome::TcpFailure,
                },
            };
            let settings = UpstreamTls {
                name: name.clone(),
                verify: *verify,
            };
            let Some(clients) = tls else {
                return Outcome::TcpFailure;
            };
            let connector = tokio_rustls::TlsConnector::from(clients.config(&settings, false));
            match connector.connect(name, tcp).await {
                Ok(s) => UpIo::Right(Box::new(s)),
                Err(error) => {
                    tracing::debug!(target = %target.addr, %error, "health check TLS handshake failed");
                    return Outcome::TcpFailure;
                }
            }
        }
    };
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
