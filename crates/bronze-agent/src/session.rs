//! The session with the scheduler: dial, hello (token, node facts, every
//! task container this node has), then heartbeats and status batches up,
//! assignments and log requests down. When the stream breaks (the
//! scheduler restarts, the network is cut) the agent dials again with a
//! backoff; containers keep running meanwhile, and the next hello tells the
//! scheduler what is really here, so nothing runs twice and nothing is
//! forgotten.

use std::sync::Arc;
use std::time::Duration;

use bronze_proto::scheduler::v1 as pb;
use bronze_runtime::Shutdown;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::logs::Logs;
use crate::metrics::AgentMetrics;
use crate::worker::Worker;

/// The largest message the agent takes from the scheduler.
const MAX_MESSAGE: usize = 512 << 20;

pub struct Session {
    pub config: Arc<Config>,
    pub worker: Arc<Worker>,
    pub logs: Arc<Logs>,
    pub metrics: Arc<AgentMetrics>,
    pub shutdown: Shutdown,
}

/// Why a session ended.
enum End {
    /// Shutdown was asked for.
    Stop,
    /// The scheduler refused the token: retry slowly.
    Refused(String),
    Broken(String),
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Session {
    /// Keeps a session open until shutdown.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        let mut events_started = false;
        loop {
            let opened = std::time::Instant::now();
            let end = self.once(&mut events_started).await;
            self.metrics.connected.set(0);
            self.logs.cancel_all();
            let wait = match end {
                End::Stop => return,
                End::Refused(why) => {
                    tracing::error!(reason = %why, "the scheduler refused this agent; check --join-token");
                    MAX_BACKOFF * 2
                }
                End::Broken(why) => {
                    if opened.elapsed() > Duration::from_secs(10) {
                        backoff = Duration::from_millis(100);
                    }
                    tracing::warn!(reason = %why, retry_in = ?backoff, "session with the scheduler ended; reconnecting");
                    backoff
                }
            };
            let jitter = Duration::from_millis(fastrand::u64(0..=wait.as_millis() as u64 / 4 + 1));
            tokio::select! {
                () = tokio::time::sleep(wait + jitter) => {}
                () = self.shutdown.wait() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn hello(&self) -> pb::Hello {
        let info = self.worker.docker.info().await.ok();
        let engine_labels = info
            .as_ref()
            .and_then(|i| i.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        let nano_cpus = if self.config.nano_cpus > 0 {
            self.config.nano_cpus
        } else {
            info.as_ref().and_then(|i| i.ncpu).unwrap_or(0) * 1_000_000_000
        };
        let memory_bytes = if self.config.memory_bytes > 0 {
            self.config.memory_bytes
        } else {
            info.as_ref().and_then(|i| i.mem_total).unwrap_or(0)
        };
        pb::Hello {
            join_token: self.config.join_token.clone(),
            node_id: self.worker.node_id(),
            hostname: self.config.hostname.clone(),
            labels: self
                .config
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            resources: Some(pb::Resources {
                nano_cpus,
                memory_bytes,
                pids: 0,
            }),
            engine: Some(pb::EngineInfo {
                version: info
                    .as_ref()
                    .and_then(|i| i.server_version.clone())
                    .unwrap_or_default(),
                labels: engine_labels,
                os: info
                    .as_ref()
                    .and_then(|i| i.os_type.clone())
                    .unwrap_or_default(),
                arch: info
                    .as_ref()
                    .and_then(|i| i.architecture.clone())
                    .unwrap_or_default(),
            }),
            address: self.config.address.clone(),
            tasks: self.worker.outbox.all(),
        }
    }

    async fn once(&self, events_started: &mut bool) -> End {
        let endpoint = match tonic::transport::Endpoint::from_shared(self.config.scheduler.clone())
        {
            Ok(e) => e
                .connect_timeout(Duration::from_secs(5))
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10)),
            Err(e) => return End::Broken(e.to_string()),
        };
        let channel = tokio::select! {
            c = endpoint.connect() => match c {
                Ok(c) => c,
                Err(e) => return End::Broken(format!("cannot reach {}: {e}", self.config.scheduler)),
            },
            () = self.shutdown.wait() => return End::Stop,
        };
        // Assignments carry the data of the tasks' secrets and configs (up
        // to 500 KiB each): a full set can pass tonic's 4 MiB default.
        let mut client = pb::dispatcher_client::DispatcherClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE);
        if let Err(e) = self.worker.scan().await {
            return End::Broken(format!("cannot read this node's containers: {e}"));
        }
        let (tx, rx) = mpsc::channel::<pb::AgentMessage>(256);
        let hello = self.hello().await;
        let _ = tx
            .send(pb::AgentMessage {
                message: Some(pb::agent_message::Message::Hello(hello)),
            })
            .await;
        let response = tokio::select! {
            r = client.session(tokio_stream::wrappers::ReceiverStream::new(rx)) => r,
            () = self.shutdown.wait() => return End::Stop,
        };
        let mut inbound = match response {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unauthenticated => {
                return End::Refused(s.message().to_string());
            }
            Err(s) => return End::Broken(s.message().to_string()),
        };
        let welcome = tokio::select! {
            m = inbound.message() => m,
            () = self.shutdown.wait() => return End::Stop,
        };
        let welcome = match welcome {
            Ok(Some(pb::DispatcherMessage {
                message: Some(pb::dispatcher_message::Message::Welcome(w)),
            })) => w,
            Ok(_) => return End::Broken("the scheduler did not welcome this agent".into()),
            Err(s) if s.code() == tonic::Code::Unauthenticated => {
                return End::Refused(s.message().to_string());
            }
            Err(s) => return End::Broken(s.message().to_string()),
        };
        if welcome.node_id != self.worker.node_id() {
            self.worker.set_node_id(&welcome.node_id);
            if let Err(e) = self.keep_node_id(&welcome.node_id).await {
                tracing::warn!(error = %e, "cannot keep the node id; a restart will join as a new node");
            }
        }
        if !*events_started {
            *events_started = true;
            tokio::spawn(self.worker.clone().watch_events());
        }
        self.metrics.connected.set(1);
        self.metrics.sessions.inc();
        tracing::info!(node = %welcome.node_id, scheduler = %self.config.scheduler, "joined");
        let period = welcome
            .heartbeat_period
            .map(|d| {
                Duration::from_secs(d.seconds.max(0).unsigned_abs())
                    + Duration::from_nanos(u64::from(d.nanos.max(0).unsigned_abs()))
            })
            .filter(|d| *d >= Duration::from_millis(50))
            .unwrap_or(Duration::from_secs(5));
        let end = self.shutdown.child();
        let beats = {
            let tx = tx.clone();
            let end = end.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = end.wait() => return,
                    }
                    let msg = pb::AgentMessage {
                        message: Some(pb::agent_message::Message::Heartbeat(pb::Heartbeat {})),
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
            })
        };
        let reports = {
            let tx = tx.clone();
            let worker = self.worker.clone();
            let end = end.clone();
            tokio::spawn(async move {
                loop {
                    let batch = worker.outbox.take();
                    if !batch.is_empty() {
                        let msg = pb::AgentMessage {
                            message: Some(pb::agent_message::Message::Status(pb::StatusBatch {
                                reports: batch,
                            })),
                        };
                        if tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                    tokio::select! {
                        () = worker.outbox.notify.notified() => {}
                        () = end.wait() => return,
                    }
                }
            })
        };
        let result = loop {
            let msg = tokio::select! {
                m = inbound.message() => m,
                () = self.shutdown.wait() => break End::Stop,
            };
            match msg {
                Ok(Some(m)) => match m.message {
                    Some(pb::dispatcher_message::Message::Assignments(a)) => {
                        self.worker.assign(a).await;
                    }
                    Some(pb::dispatcher_message::Message::Logs(req)) => {
                        self.logs.start(self.worker.clone(), req, tx.clone());
                    }
                    Some(pb::dispatcher_message::Message::LogsCancel(c)) => {
                        self.logs.cancel(c.request_id);
                    }
                    Some(pb::dispatcher_message::Message::Welcome(_)) | None => {}
                },
                Ok(None) => break End::Broken("the scheduler closed the session".into()),
                Err(s) => break End::Broken(s.message().to_string()),
            }
        };
        end.trigger();
        let _ = beats.await;
        let _ = reports.await;
        result
    }

    async fn keep_node_id(&self, id: &str) -> std::io::Result<()> {
        if self.config.data_dir.is_empty() || !self.config.node_id.is_empty() {
            return Ok(());
        }
        tokio::fs::create_dir_all(&self.config.data_dir).await?;
        let path = std::path::Path::new(&self.config.data_dir).join("node-id");
        let tmp = path.with_extension("tmp");
        tokio::fs::write(&tmp, id).await?;
        tokio::fs::rename(tmp, path).await
    }
}

/// The node id kept from an earlier run, if any.
pub fn kept_node_id(config: &Config) -> String {
    if !config.node_id.is_empty() {
        return config.node_id.clone();
    }
    if config.data_dir.is_empty() {
        return String::new();
    }
    std::fs::read_to_string(std::path::Path::new(&config.data_dir).join("node-id"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
