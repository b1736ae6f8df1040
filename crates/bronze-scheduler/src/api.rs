//! `bronze.scheduler.v1.Scheduler`: the control API. Reads come from the
//! published snapshot (never waiting for the manager); changes are sent to
//! the manager and answered once committed. Requests are validated here,
//! through `convert`, before anything reaches the manager.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use bronze_proto::scheduler::v1 as pb;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::changes::Since;
use crate::convert;
use crate::dispatcher::{Cluster, LogMsg};
use crate::manager::{Event, Put};
use crate::model::{Desired, Invalid, Kind, Mode, NodeState, Plain, Service, SlotKey, TaskState};
use crate::orchestrator::slots;
use crate::state::{Key, State};

/// Page size when a request gives none, and the most a page holds.
const PAGE: usize = 1000;

pub struct Api {
    pub cluster: Arc<Cluster>,
}

fn page_size(n: u32) -> usize {
    match n {
        0 => PAGE,
        n => usize::try_from(n).unwrap_or(PAGE).min(PAGE),
    }
}

fn invalid(e: Invalid, parent: &str) -> Status {
    Status::invalid_argument(e.within(parent).to_string())
}

/// How far a service is from what it asks for.
pub fn service_status(state: &State, service: &Service) -> pb::ServiceStatus {
    let Some(current) = state.current(service) else {
        return pb::ServiceStatus::default();
    };
    let template = current.template;
    let is_current = |t: &crate::model::Task| {
        t.created_at >= service.update.force_before
            && state
                .version(&service.id, t.spec_version)
                .is_some_and(|v| v.template == template)
    };
    let mut running = 0u64;
    let mut running_current = 0u64;
    let mut outdated = 0u64;
    let mut pending_msg: Option<String> = None;
    let mut failure: Option<String> = None;
    let mut stalled = false;
    let mut wanted = 0u64;
    for tasks in slots(state, &service.id).into_values() {
        let mut slot_wanted = false;
        for t in &tasks {
            if t.desired == Desired::Running {
                slot_wanted = true;
            }
            if !t.status.state.is_terminal() && !is_current(t) {
                outdated += 1;
            }
        }
        if slot_wanted {
            wanted += 1;
        }
        // The newest task that should run says how the slot is doing.
        let Some(newest) = tasks.iter().rev().find(|t| t.desired == Desired::Running) else {
            continue;
        };
        match newest.status.state {
            TaskState::Running => {
                running += 1;
                if is_current(newest) {
                    running_current += 1;
                }
            }
            TaskState::New | TaskState::Pending
                if pending_msg.is_none() && !newest.status.message.is_empty() =>
            {
                pending_msg = Some(newest.status.message.clone());
            }
            s if s.is_terminal() => {
                stalled = true;
                failure.get_or_insert_with(|| describe_end(newest));
            }
            _ => {}
        }
        // The most recent failure of the slot, for the message.
        if failure.is_none()
            && let Some(dead) = tasks
                .iter()
                .rev()
                .find(|t| t.status.state.is_failure() && t.desired == Desired::Shutdown)
            && newest.status.state != TaskState::Running
        {
            failure = Some(describe_end(dead));
        }
    }
    let desired = match current.spec.mode {
        Mode::Replicated { replicas } => replicas,
        Mode::Global => wanted,
    };
    let updating = service.update.state.in_progress();
    let converged = running_current == desired && outdated == 0 && !updating && !service.removing;
    let message = if converged {
        String::new()
    } else if let Some(p) = pending_msg {
        format!("pending: {p}")
    } else if let Some(f) = failure {
        if stalled {
            format!("the restart policy gave up: {f}")
        } else {
            f
        }
    } else if updating {
        service.update.message.clone()
    } else {
        String::new()
    };
    pb::ServiceStatus {
        desired,
        running,
        outdated,
        converged,
        message,
        stalled,
    }
}

fn describe_end(t: &crate::model::Task) -> String {
    let mut s = format!(
        "task {} {}",
        crate::model::short(&t.id),
        t.status.state.as_str()
    );
    if let Some(code) = t.status.exit_code {
        s.push_str(&format!(" (exit code {code})"));
    }
    let why = if t.status.err.is_empty() {
        &t.status.message
    } else {
        &t.status.err
    };
    if !why.is_empty() {
        s.push_str(": ");
        s.push_str(why);
    }
    s
}

pub fn service_response(state: &State, service: &Service) -> pb::ServiceResponse {
    let spec = state
        .current(service)
        .map(|v| v.spec.clone())
        .unwrap_or_else(|| Arc::new(crate::model::ServiceSpec::new(&service.name, "")));
    pb::ServiceResponse {
        service: Some(convert::service_to(service, &spec)),
        status: Some(service_status(state, service)),
        index: state.index,
        warnings: Vec::new(),
    }
}

fn task_proto(state: &State, t: &crate::model::Task) -> pb::Task {
    let version = state.version(&t.service_id, t.spec_version);
    let image = version.map(|v| v.spec.image.clone()).unwrap_or_default();
    let mut p = convert::task_to(t, &image);
    if let Some(s) = state.service(&t.service_id) {
        let current = state.current(s).map(|v| v.template);
        p.outdated = t.created_at < s.update.force_before
            || current.is_some_and(|c| version.is_none_or(|v| v.template != c));
    }
    p
}

fn node_proto(state: &State, n: &crate::model::Node) -> pb::Node {
    let usage = state.usage(&n.id);
    convert::node_to(n, &usage.reserved, usage.tasks)
}

impl Api {
    fn state(&self) -> Arc<State> {
        self.cluster.state()
    }

    fn respond(&self, id: &str) -> Result<Response<pb::ServiceResponse>, Status> {
        let state = self.state();
        let service = state
            .service(id)
            .ok_or_else(|| Status::not_found("the service was removed meanwhile"))?;
        Ok(Response::new(service_response(&state, service)))
    }
}

/// Secrets and configs: one implementation, two kinds.
impl Api {
    async fn put_object(
        &self,
        kind: Kind,
        name: String,
        data: Vec<u8>,
        labels: std::collections::HashMap<String, String>,
        how: Put,
    ) -> Result<Response<pb::DataObject>, Status> {
        let labels: std::collections::BTreeMap<String, String> = labels.into_iter().collect();
        crate::model::object::validate(kind, &name, &data, &labels)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let name = self
            .cluster
            .ask(|reply| Event::PutObject {
                kind,
                name,
                data: Plain(data),
                labels,
                how,
                reply,
            })
            .await?;
        self.object_response(kind, &name, false)
    }

    fn object_response(
        &self,
        kind: Kind,
        name: &str,
        with_data: bool,
    ) -> Result<Response<pb::DataObject>, Status> {
        let state = self.state();
        let o = state
            .find_object(kind, name)
            .ok_or_else(|| Status::not_found(format!("no {} {name:?}", kind.as_str())))?;
        let users = state.object_users(kind, &o.name, false);
        Ok(Response::new(convert::object_to(
            o,
            users,
            with_data,
            state.index,
        )))
    }

    fn list_objects(
        &self,
        kind: Kind,
        req: &pb::ListDataObjectsRequest,
    ) -> Response<pb::ListDataObjectsResponse> {
        let state = self.state();
        let size = page_size(req.page_size);
        let mut objects = Vec::new();
        let mut next = String::new();
        for ((_, name), o) in state.objects.range((kind, req.page_token.clone())..) {
            if o.kind != kind {
                break;
            }
            if name.as_str() <= req.page_token.as_str() {
                continue;
            }
            if objects.len() == size {
                next = objects
                    .last()
                    .map(|o: &pb::DataObject| o.name.clone())
                    .unwrap_or_default();
                break;
            }
            let users = state.object_users(kind, name, false);
            objects.push(convert::object_to(o, users, false, state.index));
        }
        Response::new(pb::ListDataObjectsResponse {
            objects,
            next_page_token: next,
            index: state.index,
        })
    }

    async fn remove_object(
        &self,
        kind: Kind,
        name: String,
    ) -> Result<Response<pb::RemoveDataObjectResponse>, Status> {
        self.cluster
            .ask(|reply| Event::RemoveObject { kind, name, reply })
            .await?;
        Ok(Response::new(pb::RemoveDataObjectResponse {
            index: self.state().index,
        }))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::scheduler_server::Scheduler for Api {
    async fn create_service(
        &self,
        request: Request<pb::CreateServiceRequest>,
    ) -> Result<Response<pb::ServiceResponse>, Status> {
        let req = request.into_inner();
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("spec: required"))?;
        let spec = convert::spec_from_proto(spec).map_err(|e| invalid(e, "spec"))?;
        let id = self
            .cluster
            .ask(|reply| Event::CreateService(spec, reply))
            .await?;
        self.respond(&id)
    }

    async fn update_service(
        &self,
        request: Request<pb::UpdateServiceRequest>,
    ) -> Result<Response<pb::ServiceResponse>, Status> {
        let req = request.into_inner();
        let spec = match &req.spec {
            Some(s) => Some(convert::spec_from_proto(s).map_err(|e| invalid(e, "spec"))?),
            None => None,
        };
        let id = self
            .cluster
            .ask(|reply| Event::UpdateService {
                service: req.service,
                spec,
                replicas: None,
                version: req.version,
                force: req.force,
                reply,
            })
            .await?;
        self.respond(&id)
    }

    async fn scale_service(
        &self,
        request: Request<pb::ScaleServiceRequest>,
    ) -> Result<Response<pb::ServiceResponse>, Status> {
        let req = request.into_inner();
        if req.replicas > crate::model::spec::MAX_REPLICAS {
            return Err(Status::invalid_argument(format!(
                "replicas: {}: expected at most {}",
                req.replicas,
                crate::model::spec::MAX_REPLICAS
            )));
        }
        let id = self
            .cluster
            .ask(|reply| Event::UpdateService {
                service: req.service,
                spec: None,
                replicas: Some(req.replicas),
                version: 0,
                force: false,
                reply,
            })
            .await?;
        self.respond(&id)
    }

    async fn rollback_service(
        &self,
        request: Request<pb::RollbackServiceRequest>,
    ) -> Result<Response<pb::ServiceResponse>, Status> {
        let service = request.into_inner().service;
        let id = self
            .cluster
            .ask(|reply| Event::Rollback(service, reply))
            .await?;
        self.respond(&id)
    }

    async fn remove_service(
        &self,
        request: Request<pb::RemoveServiceRequest>,
    ) -> Result<Response<pb::RemoveServiceResponse>, Status> {
        let service = request.into_inner().service;
        self.cluster
            .ask(|reply| Event::RemoveService(service, reply))
            .await?;
        Ok(Response::new(pb::RemoveServiceResponse {
            index: self.state().index,
        }))
    }

    async fn get_service(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::ServiceResponse>, Status> {
        let name = request.into_inner().service;
        let state = self.state();
        let service = state
            .find_service(&name)
            .ok_or_else(|| Status::not_found(format!("no service {name:?}")))?;
        Ok(Response::new(service_response(&state, service)))
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let req = request.into_inner();
        let state = self.state();
        let size = page_size(req.page_size);
        let mut names: Vec<(&String, &String)> = state.names.iter().collect();
        names.sort();
        let mut services = Vec::new();
        let mut next = String::new();
        for (name, id) in names {
            if !req.page_token.is_empty() && name.as_str() <= req.page_token.as_str() {
                continue;
            }
            if services.len() == size {
                next = services
                    .last()
                    .and_then(|s: &pb::ServiceResponse| s.service.as_ref())
                    .and_then(|s| s.spec.as_ref())
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                break;
            }
            if let Some(s) = state.service(id) {
                services.push(service_response(&state, s));
            }
        }
        Ok(Response::new(pb::ListServicesResponse {
            services,
            next_page_token: next,
            index: state.index,
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let req = request.into_inner();
        let state = self.state();
        let size = page_size(req.page_size);
        let service = if req.service.is_empty() {
            None
        } else {
            Some(
                state
                    .find_service(&req.service)
                    .ok_or_else(|| Status::not_found(format!("no service {:?}", req.service)))?
                    .id
                    .clone(),
            )
        };
        let node = if req.node.is_empty() {
            None
        } else {
            Some(
                state
                    .find_node(&req.node)
                    .ok_or_else(|| Status::not_found(format!("no node {:?}", req.node)))?
                    .id
                    .clone(),
            )
        };
        // Ordered as `service ps` shows them: service, slot, newest first.
        let mut tasks: Vec<&Arc<crate::model::Task>> = match (&service, &node) {
            (Some(s), _) => state.service_tasks(s).collect(),
            (None, Some(n)) => state.node_tasks(n).collect(),
            (None, None) => state.tasks.values().collect(),
        };
        tasks.retain(|t| {
            node.as_ref().is_none_or(|n| &t.node_id == n)
                && (!req.desired_running || t.desired == Desired::Running)
        });
        let key = |t: &crate::model::Task| {
            format!(
                "{}/{:020}/{}/{:020}/{}",
                t.service_name,
                t.slot,
                if t.slot == 0 { t.node_id.as_str() } else { "" },
                u64::MAX - t.created_at.0,
                t.id
            )
        };
        let mut keyed: Vec<(String, &Arc<crate::model::Task>)> =
            tasks.into_iter().map(|t| (key(t), t)).collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::new();
        let mut next = String::new();
        for (k, t) in keyed {
            if !req.page_token.is_empty() && k.as_str() <= req.page_token.as_str() {
                continue;
            }
            if out.len() == size {
                break;
            }
            next = k;
            out.push(task_proto(&state, t));
        }
        if out.len() < size {
            next.clear();
        }
        Ok(Response::new(pb::ListTasksResponse {
            tasks: out,
            next_page_token: next,
            index: state.index,
        }))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let req = request.into_inner();
        let state = self.state();
        let size = page_size(req.page_size);
        let mut nodes: Vec<(String, &Arc<crate::model::Node>)> = state
            .nodes
            .values()
            .map(|n| (format!("{}/{}", n.hostname, n.id), n))
            .collect();
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::new();
        let mut next = String::new();
        for (k, n) in nodes {
            if !req.page_token.is_empty() && k.as_str() <= req.page_token.as_str() {
                continue;
            }
            if out.len() == size {
                break;
            }
            next = k;
            out.push(node_proto(&state, n));
        }
        if out.len() < size {
            next.clear();
        }
        Ok(Response::new(pb::ListNodesResponse {
            nodes: out,
            next_page_token: next,
            index: state.index,
        }))
    }

    async fn get_node(
        &self,
        request: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let name = request.into_inner().node;
        let state = self.state();
        let node = state
            .find_node(&name)
            .ok_or_else(|| Status::not_found(format!("no node {name:?}")))?;
        Ok(Response::new(node_proto(&state, node)))
    }

    async fn update_node(
        &self,
        request: Request<pb::UpdateNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let req = request.into_inner();
        let availability = convert::availability_from(req.availability)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        for k in req.label_add.keys().chain(req.label_rm.iter()) {
            if k.is_empty() || k.len() > 1024 {
                return Err(Status::invalid_argument(format!(
                    "label {k:?}: expected a key of 1-1024 characters"
                )));
            }
        }
        let id = self
            .cluster
            .ask(|reply| Event::UpdateNode {
                node: req.node,
                availability,
                label_add: req.label_add.into_iter().collect(),
                label_rm: req.label_rm,
                reply,
            })
            .await?;
        let state = self.state();
        let node = state
            .node(&id)
            .ok_or_else(|| Status::not_found("the node was removed meanwhile"))?;
        Ok(Response::new(node_proto(&state, node)))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let req = request.into_inner();
        self.cluster
            .ask(|reply| Event::RemoveNode {
                node: req.node,
                force: req.force,
                reply,
            })
            .await?;
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    async fn join_token(
        &self,
        request: Request<pb::JoinTokenRequest>,
    ) -> Result<Response<pb::JoinTokenResponse>, Status> {
        let token = if request.into_inner().rotate {
            self.cluster.ask(Event::RotateToken).await?
        } else {
            self.state().join_token.clone()
        };
        Ok(Response::new(pb::JoinTokenResponse { token }))
    }

    async fn create_secret(
        &self,
        request: Request<pb::CreateDataObjectRequest>,
    ) -> Result<Response<pb::DataObject>, Status> {
        let r = request.into_inner();
        self.put_object(Kind::Secret, r.name, r.data, r.labels, Put::Create)
            .await
    }

    async fn update_secret(
        &self,
        request: Request<pb::UpdateDataObjectRequest>,
    ) -> Result<Response<pb::DataObject>, Status> {
        let r = request.into_inner();
        let how = if r.create { Put::Upsert } else { Put::Update };
        self.put_object(Kind::Secret, r.name, r.data, r.labels, how)
            .await
    }

    async fn get_secret(
        &self,
        request: Request<pb::GetDataObjectRequest>,
    ) -> Result<Response<pb::DataObject>, Status> {
        self.object_response(Kind::Secret, &request.into_inner().name, false)
    }

    async fn list_secrets(
        &self,
        request: Request<pb::ListDataObjectsRequest>,
    ) -> Result<Response<pb::ListDataObjectsResponse>, Status> {
        Ok(self.list_objects(Kind::Secret, request.get_ref()))
    }

    async fn remove_secret(
        &self,
        request: Request<pb::RemoveDataObjectRequest>,
    ) -> Result<Response<pb::RemoveDataObjectResponse>, Status> {
        self.remove_object(Kind::Secret, request.into_inner().name)
            .await
    }

    async fn create_config(
        &self,
        request: Request<pb::CreateDataObjectRequest>,
    ) -> Result<Response<pb::DataObject>, Status> {
        let r = request.into_inner();
        self.put_object(Kind::Config, r.name, r.data, r.labels, Put::Create)
            .await
    }

    async fn update_config(
        &self,
        request: Request<pb::UpdateDataObjectRequest>,
    ) -> Result<Response<pb::DataObject>, Status> {
        let r = request.into_inner();
        let how = if r.create { Put::Upsert } else { Put::Update };
        self.put_object(Kind::Config, r.name, r.data, r.labels, how)
            .await
    }

    async fn get_config(
        &self,
        request: Request<pb::GetDataObjectRequest>,
    ) -> Result<Response<pb::DataObject>, Status> {
        self.object_response(Kind::Config, &request.into_inner().name, true)
    }

    async fn list_configs(
        &self,
        request: Request<pb::ListDataObjectsRequest>,
    ) -> Result<Response<pb::ListDataObjectsResponse>, Status> {
        Ok(self.list_objects(Kind::Config, request.get_ref()))
    }

    async fn remove_config(
        &self,
        request: Request<pb::RemoveDataObjectRequest>,
    ) -> Result<Response<pb::RemoveDataObjectResponse>, Status> {
        self.remove_object(Kind::Config, request.into_inner().name)
            .await
    }

    type WatchStream = BoxStream<pb::WatchEvent>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        let service = if req.service.is_empty() {
            None
        } else {
            let state = self.state();
            Some(
                state
                    .find_service(&req.service)
                    .ok_or_else(|| Status::not_found(format!("no service {:?}", req.service)))?
                    .id
                    .clone(),
            )
        };
        let (tx, rx) = mpsc::channel(256);
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            watch_loop(&cluster, req.from_index, service.as_deref(), &tx).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type ServiceLogsStream = BoxStream<pb::LogChunk>;

    async fn service_logs(
        &self,
        request: Request<pb::ServiceLogsRequest>,
    ) -> Result<Response<Self::ServiceLogsStream>, Status> {
        let req = request.into_inner();
        let state = self.state();
        let service = state
            .find_service(&req.service)
            .ok_or_else(|| Status::not_found(format!("no service {:?}", req.service)))?;
        // Tasks whose container exists (or may), per node.
        let mut per_node: HashMap<String, Vec<String>> = HashMap::new();
        let mut sources: HashMap<String, String> = HashMap::new();
        for t in state.service_tasks(&service.id) {
            if t.node_id.is_empty() || t.status.container_id.is_empty() {
                continue;
            }
            let host = state
                .node(&t.node_id)
                .map_or_else(|| t.node_id.clone(), |n| n.hostname.clone());
            let slot = match t.slot_key() {
                SlotKey::Number(n) => n.to_string(),
                SlotKey::Node(_) => crate::model::short(&t.node_id).to_string(),
            };
            sources.insert(
                t.id.clone(),
                format!(
                    "{}.{}.{}@{}",
                    t.service_name,
                    slot,
                    crate::model::short(&t.id),
                    host
                ),
            );
            per_node
                .entry(t.node_id.clone())
                .or_default()
                .push(t.id.clone());
        }
        let (chunks_tx, mut chunks_rx) = mpsc::channel::<LogMsg>(1024);
        let mut requests: Vec<(String, u64)> = Vec::new();
        for (node, task_ids) in per_node {
            let session = self
                .cluster
                .sessions
                .lock()
                .get(&node)
                .map(|h| h.tx.clone());
            let Some(session) = session else { continue };
            let id = self.cluster.logs.register(chunks_tx.clone());
            let msg = pb::DispatcherMessage {
                message: Some(pb::dispatcher_message::Message::Logs(pb::LogsRequest {
                    request_id: id,
                    task_ids,
                    follow: req.follow,
                    tail: req.tail,
                })),
            };
            if session.send(Ok(msg)).await.is_ok() {
                requests.push((node, id));
            } else {
                self.cluster.logs.unregister(id);
            }
        }
        drop(chunks_tx);
        let (tx, rx) = mpsc::channel(256);
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            let mut open = requests.len();
            while open > 0 {
                let msg = tokio::select! {
                    m = chunks_rx.recv() => m,
                    () = tx.closed() => break,
                };
                match msg {
                    Some(LogMsg::Chunk(mut c)) => {
                        if let Some(src) = sources.get(&c.task_id) {
                            c.source = src.clone();
                        }
                        if tx.send(Ok(c)).await.is_err() {
                            break;
                        }
                    }
                    Some(LogMsg::End { error }) => {
                        if !error.is_empty() {
                            tracing::debug!(%error, "log stream of a node ended with an error");
                        }
                        open -= 1;
                    }
                    None => break,
                }
            }
            // Stop the agents that are still sending.
            for (node, id) in requests {
                cluster.logs.unregister(id);
                let session = cluster.sessions.lock().get(&node).map(|h| h.tx.clone());
                if let Some(session) = session {
                    let _ = session
                        .send(Ok(pb::DispatcherMessage {
                            message: Some(pb::dispatcher_message::Message::LogsCancel(
                                pb::LogsCancel { request_id: id },
                            )),
                        }))
                        .await;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

type Tx = mpsc::Sender<Result<pb::WatchEvent, Status>>;

/// Objects per snapshot chunk.
const CHUNK: usize = 500;

fn in_scope(state: &State, service: Option<&str>, key: &Key) -> bool {
    let Some(svc) = service else { return true };
    match key {
        Key::Service(id) => id == svc,
        Key::Task(id) => state.task(id).is_none_or(|t| t.service_id == svc),
        Key::Node(_) => true,
        Key::Version(..) | Key::JoinToken | Key::Object(..) | Key::KeyCheck => false,
    }
}

fn event_for(state: &State, key: &Key) -> Option<pb::watch_event::Event> {
    use pb::watch_event::Event as E;
    let removed = |kind: &str, id: &str| {
        Some(E::Removed(pb::ObjectRef {
            kind: kind.into(),
            id: id.into(),
        }))
    };
    match key {
        Key::Node(id) => match state.node(id) {
            Some(n) => Some(E::Node(node_proto(state, n))),
            None => removed("node", id),
        },
        Key::Service(id) => match state.service(id) {
            Some(s) => Some(E::Service(service_response(state, s))),
            None => removed("service", id),
        },
        Key::Task(id) => match state.task(id) {
            Some(t) => Some(E::Task(task_proto(state, t))),
            None => removed("task", id),
        },
        Key::Version(..) | Key::JoinToken | Key::Object(..) | Key::KeyCheck => None,
    }
}

async fn send_snapshot(state: &State, service: Option<&str>, tx: &Tx) -> bool {
    let nodes: Vec<pb::Node> = state.nodes.values().map(|n| node_proto(state, n)).collect();
    let services: Vec<pb::ServiceResponse> = state
        .services
        .values()
        .filter(|s| service.is_none_or(|id| s.id == id))
        .map(|s| service_response(state, s))
        .collect();
    let tasks: Vec<pb::Task> = match service {
        Some(id) => state
            .service_tasks(id)
            .map(|t| task_proto(state, t))
            .collect(),
        None => state.tasks.values().map(|t| task_proto(state, t)).collect(),
    };
    let mut chunks: Vec<pb::SnapshotChunk> = Vec::new();
    let mut chunk = pb::SnapshotChunk::default();
    let mut n = 0;
    let mut flush = |chunk: &mut pb::SnapshotChunk, n: &mut usize, force: bool| {
        if *n >= CHUNK || force {
            chunks.push(std::mem::take(chunk));
            *n = 0;
        }
    };
    for x in nodes {
        chunk.nodes.push(x);
        n += 1;
        flush(&mut chunk, &mut n, false);
    }
    for x in services {
        chunk.services.push(x);
        n += 1;
        flush(&mut chunk, &mut n, false);
    }
    for x in tasks {
        chunk.tasks.push(x);
        n += 1;
        flush(&mut chunk, &mut n, false);
    }
    flush(&mut chunk, &mut n, true);
    if let Some(last) = chunks.last_mut() {
        last.last = true;
    }
    for c in chunks {
        let ev = pb::WatchEvent {
            index: state.index,
            event: Some(pb::watch_event::Event::Snapshot(c)),
        };
        if tx.send(Ok(ev)).await.is_err() {
            return false;
        }
    }
    true
}

async fn watch_loop(cluster: &Cluster, from: u64, service: Option<&str>, tx: &Tx) {
    let mut snapshots = cluster.snapshot.clone();
    let state = snapshots.borrow_and_update().clone();
    let mut last =
        if from != 0 && matches!(cluster.changes.since(from, state.index), Since::Changes(_)) {
            let ev = pb::WatchEvent {
                index: from,
                event: Some(pb::watch_event::Event::Resumed(pb::Resumed {})),
            };
            if tx.send(Ok(ev)).await.is_err() {
                return;
            }
            from
        } else {
            if !send_snapshot(&state, service, tx).await {
                return;
            }
            state.index
        };
    loop {
        let state = snapshots.borrow_and_update().clone();
        if state.index > last {
            match cluster.changes.since(last, state.index) {
                Since::Changes(changes) => {
                    // Each key once, at its newest index.
                    let mut newest: HashMap<Key, u64> = HashMap::new();
                    for (i, k) in changes {
                        newest.insert(k, i);
                    }
                    let mut ordered: Vec<(u64, Key)> =
                        newest.into_iter().map(|(k, i)| (i, k)).collect();
                    ordered.sort();
                    for (_, key) in ordered {
                        if !in_scope(&state, service, &key) {
                            continue;
                        }
                        if let Some(event) = event_for(&state, &key) {
                            let ev = pb::WatchEvent {
                                index: state.index,
                                event: Some(event),
                            };
                            if tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                Since::TooOld => {
                    if !send_snapshot(&state, service, tx).await {
                        return;
                    }
                }
            }
            last = state.index;
        }
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { return },
            () = tx.closed() => return,
            () = cluster.shutdown.wait() => return,
        }
    }
}

/// Whether every node is down or unknown: nothing can run (for /healthz
/// detail; the scheduler itself stays healthy).
pub fn no_ready_node(state: &State) -> bool {
    !state.nodes.values().any(|n| n.state == NodeState::Ready)
}
