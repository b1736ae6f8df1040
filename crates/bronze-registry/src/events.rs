//! Push and delete events: a broadcast every gRPC `Events` stream and every
//! configured webhook reads from. A slow subscriber is told it fell behind
//! (its stream ends with DATA_LOSS) rather than slowing pushes down.

use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bronze_proto::registry::v1 as pb;
use futures::Stream;
use tokio::sync::broadcast;
use tonic::Status;

use crate::reference::{Digest, Name};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Push,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub action: Action,
    pub repository: String,
    pub digest: String,
    pub tag: Option<String>,
    pub media_type: String,
    pub size: u64,
    pub timestamp: SystemTime,
}

impl Event {
    pub fn new(
        action: Action,
        repo: &Name,
        digest: &Digest,
        tag: Option<&str>,
        media_type: &str,
        size: u64,
    ) -> Self {
        Self {
            action,
            repository: repo.to_string(),
            digest: digest.to_string(),
            tag: tag.map(str::to_string),
            media_type: media_type.to_string(),
            size,
            timestamp: SystemTime::now(),
        }
    }

    fn to_proto(&self) -> pb::Event {
        let since = self
            .timestamp
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        pb::Event {
            action: match self.action {
                Action::Push => pb::Action::Push as i32,
                Action::Delete => pb::Action::Delete as i32,
            },
            repository: self.repository.clone(),
            digest: self.digest.clone(),
            tag: self.tag.clone().unwrap_or_default(),
            media_type: self.media_type.clone(),
            size: self.size,
            timestamp: Some(prost_types::Timestamp {
                seconds: since.as_secs() as i64,
                nanos: since.subsec_nanos() as i32,
            }),
        }
    }

    /// The event as Docker distribution's notification envelope carries it.
    pub fn to_webhook_json(&self) -> serde_json::Value {
        let since = self
            .timestamp
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        serde_json::json!({
            "events": [{
                "action": match self.action { Action::Push => "push", Action::Delete => "delete" },
                "timestamp": humantime::format_rfc3339_millis(UNIX_EPOCH + since).to_string(),
                "target": {
                    "mediaType": self.media_type,
                    "digest": self.digest,
                    "size": self.size,
                    "repository": self.repository,
                    "tag": self.tag,
                },
                "source": {"addr": "bronze-registry"},
            }]
        })
    }
}

#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self { tx }
    }

    pub fn send(&self, e: Event) {
        tracing::info!(action = ?e.action, repository = %e.repository, digest = %e.digest, tag = ?e.tag, "registry event");
        let _ = self.tx.send(e);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Posts every event to each URL (Docker distribution's envelope),
    /// retrying a few times with backoff.
    pub fn spawn_webhooks(&self, urls: Vec<String>, shutdown: bronze_runtime::Shutdown) {
        if urls.is_empty() {
            return;
        }
        let mut rx = self.subscribe();
        bronze_runtime::install_crypto_provider();
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
        {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(%error, "webhooks disabled: no HTTP client");
                return;
            }
        };
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    r = rx.recv() => match r {
                        Ok(e) => e,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "webhooks fell behind; events skipped");
                            continue;
                        }
                        Err(_) => return,
                    },
                    _ = shutdown.wait() => return,
                };
                let body = event.to_webhook_json();
                for url in &urls {
                    let (client, url, body) = (client.clone(), url.clone(), body.clone());
                    tokio::spawn(async move {
                        for attempt in 0..4u32 {
                            let r = client
                                .post(&url)
                                .header(
                                    "content-type",
                                    "application/vnd.docker.distribution.events.v1+json",
                                )
                                .json(&body)
                                .send()
                                .await;
                            match r {
                                Ok(resp) if resp.status().is_success() => return,
                                Ok(resp) => {
                                    tracing::warn!(%url, status = %resp.status(), attempt, "webhook refused")
                                }
                                Err(error) => {
                                    tracing::warn!(%url, %error, attempt, "webhook failed")
                                }
                            }
                            tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt)))
                                .await;
                        }
                    });
                }
            }
        });
    }
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

/// The gRPC `Events` stream: every event of `repos` (all when empty) from
/// now on; ends with DATA_LOSS if the subscriber falls too far behind.
pub fn stream(
    events: &Events,
    repos: Vec<String>,
    shutdown: bronze_runtime::Shutdown,
) -> EventStream {
    let mut rx = events.subscribe();
    let (tx, out) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                r = rx.recv() => r,
                _ = tx.closed() => return,
                _ = shutdown.wait() => return,
            };
            let item = match next {
                Ok(e) if repos.is_empty() || repos.contains(&e.repository) => Ok(e.to_proto()),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => Err(Status::data_loss(format!(
                    "fell behind by {n} events; subscribe again"
                ))),
                Err(_) => return,
            };
            let end = item.is_err();
            if tx.send(item).await.is_err() || end {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))
}
