//! The scheduler's link to bronze-registry (optional: `--registry`), for
//! deploy on push (`bronze.autodeploy`, see `model::autodeploy`).
//!
//! It follows the registry's gRPC `Events` stream and hands every push by
//! tag to the manager (`Event::Pushed`); the manager decides which services
//! it concerns. The stream carries events from the moment it is opened, so
//! a push while the link was down would be missed: each time the stream
//! (re)opens, the link first asks the registry's HTTP API (`HEAD
//! /v2/<repo>/manifests/<tag>` on the host the image names) what the tag of
//! every service following its tag (`bronze.autodeploy=true`) with a
//! pinned image points to now (at `registry_http` when set: where the
//! scheduler reaches the registry's HTTP API under another name than
//! clients, as in a compose file), and hands a differing answer to the manager
//! as a push. Patterns (`glob:`) are not caught up that way: a matching tag
//! pushed while the link was down waits for the next push.
//!
//! The registry down is not an error: the link retries with a backoff.

use std::sync::Arc;
use std::time::Duration;

use bronze_proto::registry::v1 as rpb;
use bronze_runtime::Shutdown;
use http_body_util::Empty;
use hyper::body::Bytes;
use tokio::sync::{mpsc, watch};

use crate::manager::Event;
use crate::model::autodeploy::{self, ImageRef, Policy, Push};
use crate::state::State;

/// How long one catch-up lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Manifest types a catch-up lookup accepts (what `docker push` writes).
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Where the registry is and what it is called.
#[derive(Debug, Clone)]
pub struct Link {
    /// Its gRPC address (the `Events` stream).
    pub url: String,
    /// The hosts image references name it by.
    pub names: Vec<String>,
    /// Its HTTP API for catch-up lookups; empty: the host the image names.
    pub http: String,
}

/// Runs until `shutdown`: follows the registry, feeds the manager.
pub async fn run(
    link: Link,
    events: mpsc::Sender<Event>,
    snapshots: watch::Receiver<Arc<State>>,
    shutdown: Shutdown,
) {
    let url = &link.url;
    let mut backoff = Duration::from_millis(100);
    loop {
        let (ended, opened) = follow(&link, &events, &snapshots, &shutdown).await;
        if shutdown.is_triggered() {
            break;
        }
        if opened {
            backoff = Duration::from_millis(100);
        }
        tracing::warn!(%url, reason = %ended, retry_in = ?backoff, "registry events ended; reconnecting");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.wait() => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One stream: why it ended, and whether it was opened at all.
async fn follow(
    link: &Link,
    events: &mpsc::Sender<Event>,
    snapshots: &watch::Receiver<Arc<State>>,
    shutdown: &Shutdown,
) -> (String, bool) {
    let url = &link.url;
    let mut client = match rpb::registry_client::RegistryClient::connect(url.clone()).await {
        Ok(c) => c,
        Err(e) => return (e.to_string(), false),
    };
    let mut stream = match client.events(rpb::EventsRequest::default()).await {
        Ok(s) => s.into_inner(),
        Err(e) => return (e.message().to_string(), false),
    };
    tracing::info!(%url, "following the registry's pushes");
    // The stream is open: what was pushed while it was not is asked now.
    let state = snapshots.borrow().clone();
    for push in catch_up(&state, link).await {
        if events.send(Event::Pushed(push)).await.is_err() {
            return ("the manager stopped".into(), true);
        }
    }
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            () = shutdown.wait() => return ("shutdown".into(), true),
        };
        let ev = match msg {
            Ok(Some(ev)) => ev,
            Ok(None) => return ("closed by the registry".into(), true),
            Err(e) => return (e.message().to_string(), true),
        };
        if ev.action() != rpb::Action::Push || ev.tag.is_empty() {
            continue;
        }
        tracing::debug!(repository = %ev.repository, tag = %ev.tag, digest = %ev.digest, "registry push");
        let push = Push {
            repository: ev.repository,
            tag: ev.tag,
            digest: ev.digest,
        };
        if events.send(Event::Pushed(push)).await.is_err() {
            return ("the manager stopped".into(), true);
        }
    }
}

/// What the tags of pinned services following their tag point to now,
/// where it differs from what they run.
async fn catch_up(state: &State, link: &Link) -> Vec<Push> {
    let mut wanted: Vec<(String, String, String)> = Vec::new();
    for service in state.services.values() {
        let Some(current) = state.current(service) else {
            continue;
        };
        if autodeploy::policy(&current.spec.labels) != Some(Policy::SameTag) {
            continue;
        }
        let r = ImageRef::parse(&current.spec.image);
        if r.digest.is_none() || !link.names.iter().any(|n| n == r.host) {
            continue;
        }
        let key = (
            if link.http.is_empty() {
                format!("http://{}", r.host)
            } else {
                link.http.trim_end_matches('/').to_string()
            },
            r.path.to_string(),
            r.tag.unwrap_or("latest").to_string(),
        );
        if !wanted.contains(&key) {
            wanted.push(key);
        }
    }
    let mut found = Vec::new();
    for (base, path, tag) in wanted {
        match tokio::time::timeout(LOOKUP_TIMEOUT, head(&base, &path, &tag)).await {
            Ok(Ok(digest)) => found.push(Push {
                repository: path,
                tag,
                digest,
            }),
            Ok(Err(why)) => {
                tracing::warn!(registry = %base, repository = %path, %tag, %why, "cannot catch up with a tag; the next push will")
            }
            Err(_) => {
                tracing::warn!(registry = %base, repository = %path, %tag, "the registry did not answer a catch-up lookup in time")
            }
        }
    }
    found
}

/// The digest `path:tag` points to, from the registry's HTTP API at `base`
/// (`http://host:port`).
async fn head(base: &str, path: &str, tag: &str) -> Result<String, String> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let req = hyper::Request::head(format!("{base}/v2/{path}/manifests/{tag}"))
        .header(hyper::header::ACCEPT, ACCEPT)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("the registry answered {}", resp.status()));
    }
    resp.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .filter(|d| d.starts_with("sha256:"))
        .map(str::to_string)
        .ok_or_else(|| "the registry sent no Docker-Content-Digest".into())
}
