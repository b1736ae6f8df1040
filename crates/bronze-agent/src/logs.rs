//! A task's container output, streamed to the scheduler on request
//! (`bronze service logs -f`): one stream per container, chunks sent over
//! the session as they come; a cancel (or the session's end) stops them.

use std::collections::HashMap;
use std::sync::Arc;

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use bronze_proto::scheduler::v1 as pb;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::worker::Worker;

type Tx = mpsc::Sender<pb::AgentMessage>;

#[derive(Default)]
pub struct Logs {
    running: Mutex<HashMap<u64, tokio::task::AbortHandle>>,
}

impl Logs {
    pub fn start(self: &Arc<Self>, worker: Arc<Worker>, req: pb::LogsRequest, tx: Tx) {
        let this = self.clone();
        let id = req.request_id;
        let handle = tokio::spawn(async move {
            let error = stream_all(&worker, &req, &tx)
                .await
                .err()
                .unwrap_or_default();
            let _ = tx
                .send(pb::AgentMessage {
                    message: Some(pb::agent_message::Message::LogEnd(pb::AgentLogEnd {
                        request_id: id,
                        error,
                    })),
                })
                .await;
            this.running.lock().remove(&id);
        });
        self.running.lock().insert(id, handle.abort_handle());
    }

    pub fn cancel(&self, id: u64) {
        if let Some(h) = self.running.lock().remove(&id) {
            h.abort();
        }
    }

    /// Stops every stream (the session ended).
    pub fn cancel_all(&self) {
        for (_, h) in self.running.lock().drain() {
            h.abort();
        }
    }
}

async fn stream_all(worker: &Worker, req: &pb::LogsRequest, tx: &Tx) -> Result<(), String> {
    let mut set = JoinSet::new();
    for task in &req.task_ids {
        let Some(container) = worker.container_of(task).await else {
            continue;
        };
        let docker = worker.docker.clone();
        let tx = tx.clone();
        let task = task.clone();
        let (follow, tail, request_id) = (req.follow, req.tail, req.request_id);
        set.spawn(async move {
            let options = LogsOptionsBuilder::default()
                .follow(follow)
                .stdout(true)
                .stderr(true)
                .tail(&if tail == 0 {
                    "all".to_string()
                } else {
                    tail.to_string()
                })
                .build();
            let mut logs = docker.logs(&container, Some(options));
            while let Some(item) = logs.next().await {
                let (stream, data) = match item {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                        ("stdout", message)
                    }
                    Ok(LogOutput::StdErr { message }) => ("stderr", message),
                    Ok(LogOutput::StdIn { .. }) => continue,
                    Err(e) => return Err(e.to_string()),
                };
                let msg = pb::AgentMessage {
                    message: Some(pb::agent_message::Message::Log(pb::AgentLogChunk {
                        request_id,
                        chunk: Some(pb::LogChunk {
                            task_id: task.clone(),
                            stream: stream.into(),
                            data: data.to_vec(),
                            source: String::new(),
                        }),
                    })),
                };
                if tx.send(msg).await.is_err() {
                    return Ok(());
                }
            }
            Ok(())
        });
    }
    let mut error = Ok(());
    while let Some(r) = set.join_next().await {
        if let Ok(Err(e)) = r {
            error = Err(e);
        }
    }
    error
}
