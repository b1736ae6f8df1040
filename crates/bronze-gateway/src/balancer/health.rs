//! Kong's active health checks: one background task per upstream sends
//! `GET <http_path>` to each target, every `healthy.interval` seconds while
//! it is healthy and every `unhealthy.interval` while it is not, at most
//! `concurrency` at once, and counts the outcome against the
//! `healthchecks.active` thresholds. The task ends when its upstream is
//! dropped (a configuration without it took over); the targets' state
//! lives on in the registry for the next configuration's task.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::{Outcome, TargetState, Upstream};

async fn check(
    client: &Client<HttpConnector, Empty<Bytes>>,
    target: &TargetState,
    path: &str,
    headers: &http::HeaderMap,
    timeout: Duration,
) -> Outcome {
    let uri = format!("http://{}{}", target.addr, path);
    let Ok(mut req) = http::Request::get(uri)
        .header(http::header::USER_AGENT, "bronze-gateway health check")
        .body(Empty::new())
    else {
        return Outcome::TcpFailure;
    };
    for (name, value) in headers {
        req.headers_mut().append(name, value.clone());
    }
    match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) => Outcome::Status(resp.status().as_u16()),
        Ok(Err(e)) if super::connect::is_timeout(&e) => Outcome::Timeout,
        Ok(Err(_)) => Outcome::TcpFailure,
        Err(_) => Outcome::Timeout,
    }
}

/// Runs the active checks of `upstream` until it is dropped.
pub async fn run_active(upstream: Weak<Upstream>) {
    let Some(active) = upstream.upgrade().and_then(|u| u.settings.active.clone()) else {
        return;
    };
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(active.timeout));
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
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
            let (client, limit, path) = (client.clone(), limit.clone(), active.http_path.clone());
            let headers = active.headers.clone();
            let timeout = active.timeout;
            running.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let outcome = check(&client, &t, &path, &headers, timeout).await;
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
