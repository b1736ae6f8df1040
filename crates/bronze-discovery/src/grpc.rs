//! gRPC API (`bronze.discovery.v1`). Prost types stop here: requests become
//! [`RawInstance`]s validated by `model`, answers are built from catalog
//! instances.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bronze_proto::discovery::v1 as pb;
use bronze_runtime::Shutdown;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::agent::{Agent, CheckReport};
use crate::catalog::{Change, ChangesSince, Instance};
use crate::error::Error;
use crate::metrics::ApiLabels;
use crate::model::{FieldNames, Health, InstanceKey, RawCheck, RawInstance, Registration};

const NAMES: FieldNames = FieldNames {
    id: "instance.id",
    service: "instance.service",
    node: "instance.node",
    node_address: "instance.node_address",
    address: "instance.address",
    port: "instance.port",
    tags: "instance.tags",
    meta: "instance.meta",
    weights: "instance.weights",
    checks: "instance.checks",
    check_id: "instance.checks.id",
    check_http: "instance.checks.http.url",
    check_method: "instance.checks.http.method",
    check_header: "instance.checks.http.headers",
    check_tcp: "instance.checks.tcp.address",
    check_ttl: "instance.checks.ttl.ttl",
    check_interval: "instance.checks.interval",
    check_timeout: "instance.checks.timeout",
    check_deregister: "instance.checks.deregister_critical_after",
};

const DEFAULT_PAGE: usize = 1000;
const MAX_PAGE: usize = 10_000;
const SNAPSHOT_CHUNK: usize = 512;

pub struct DiscoveryService {
    agent: Arc<Agent>,
    shutdown: Shutdown,
}

impl DiscoveryService {
    pub fn new(agent: Arc<Agent>, shutdown: Shutdown) -> Self {
        Self { agent, shutdown }
    }

    fn count<T>(&self, api: &'static str, r: &Result<T, Status>) {
        let code = match r {
            Ok(_) => 0,
            Err(s) => s.code() as u16,
        };
        self.agent
            .metrics
            .api_requests
            .get_or_create(&ApiLabels { api, code })
            .inc();
    }
}

fn duration(field: &str, d: Option<prost_types::Duration>) -> Result<Option<Duration>, Error> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(Error::invalid(field, "negative duration")),
        Some(d) => Ok(Some(Duration::new(
            d.seconds as u64,
            d.nanos.min(999_999_999) as u32,
        ))),
    }
}

fn health_in(field: &str, v: i32) -> Result<Option<Health>, Error> {
    match pb::HealthStatus::try_from(v) {
        Ok(pb::HealthStatus::Unspecified) => Ok(None),
        Ok(pb::HealthStatus::Passing) => Ok(Some(Health::Passing)),
        Ok(pb::HealthStatus::Warning) => Ok(Some(Health::Warning)),
        Ok(pb::HealthStatus::Critical) => Ok(Some(Health::Critical)),
        Err(_) => Err(Error::invalid(field, format!("{v} is not a HealthStatus"))),
    }
}

fn health_out(h: Health) -> i32 {
    match h {
        Health::Passing => pb::HealthStatus::Passing as i32,
        Health::Warning => pb::HealthStatus::Warning as i32,
        Health::Critical => pb::HealthStatus::Critical as i32,
    }
}

fn raw_check(c: pb::CheckSpec) -> Result<RawCheck, Error> {
    let mut raw = RawCheck {
        id: Some(c.id),
        name: Some(c.name),
        interval: duration(NAMES.check_interval, c.interval)?,
        timeout: duration(NAMES.check_timeout, c.timeout)?,
        status: health_in("instance.checks.initial_status", c.initial_status)?,
        deregister_critical_after: duration(NAMES.check_deregister, c.deregister_critical_after)?,
        notes: Some(c.notes),
        ..Default::default()
    };
    match c.kind {
        Some(pb::check_spec::Kind::Http(h)) => {
            raw.http = Some(h.url);
            raw.method = Some(h.method);
            raw.headers = h.headers.into_iter().collect();
            raw.tls_skip_verify = h.tls_skip_verify;
        }
        Some(pb::check_spec::Kind::Tcp(t)) => raw.tcp = Some(t.address),
        Some(pb::check_spec::Kind::Ttl(t)) => {
            raw.ttl = Some(duration(NAMES.check_ttl, t.ttl)?.unwrap_or_default());
            raw.ttl_external = t.external;
        }
        None => {}
    }
    Ok(raw)
}

/// Validates a gRPC registration into the domain type.
pub fn registration(agent: &Agent, req: pb::RegisterRequest) -> Result<Registration, Error> {
    let spec = req
        .instance
        .ok_or_else(|| Error::invalid("instance", "missing instance"))?;
    let raw = RawInstance {
        id: Some(spec.id),
        service: spec.service,
        node: Some(spec.node),
        node_address: Some(spec.node_address),
        address: Some(spec.address),
        port: i64::from(spec.port),
        tags: spec.tags,
        meta: spec.meta.into_iter().collect(),
        weights: spec
            .weights
            .map(|w| (i64::from(w.passing), i64::from(w.warning))),
        checks: spec
            .checks
            .into_iter()
            .map(raw_check)
            .collect::<Result<_, _>>()?,
    };
    let instance = raw.validate(&NAMES, &agent.node, &agent.node_address)?;
    let owner = (!req.owner.is_empty()).then_some(req.owner);
    if let Some(o) = &owner
        && (o.len() > 256 || o.chars().any(char::is_control))
    {
        return Err(Error::invalid(
            "owner",
            "expected at most 256 characters without control characters",
        ));
    }
    Ok(Registration { instance, owner })
}

pub fn instance_to_proto(i: &Instance) -> pb::Instance {
    pb::Instance {
        id: i.spec.id.clone(),
        service: i.spec.service.clone(),
        node: i.spec.node.clone(),
        address: i.address.clone(),
        port: u32::from(i.spec.port),
        tags: i.spec.tags.clone(),
        meta: i
            .spec
            .meta
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        weights: Some(pb::Weights {
            passing: i.spec.weights.passing,
            warning: i.spec.weights.warning,
        }),
        health: health_out(i.health),
        checks: i
            .checks
            .iter()
            .map(|c| pb::CheckState {
                id: c.spec.id.clone(),
                name: c.spec.name.clone(),
                kind: c.spec.kind.name().into(),
                status: health_out(c.status),
                output: c.output.clone(),
            })
            .collect(),
        create_index: i.create_index,
        modify_index: i.modify_index,
        owner: i.owner.clone().unwrap_or_default(),
    }
}

fn page_size(n: u32) -> usize {
    match n as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::discovery_server::Discovery for DiscoveryService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let result = async {
            let reg = registration(&self.agent, request.into_inner())?;
            let r = self.agent.register(reg).await?;
            Ok::<_, Error>(Response::new(pb::RegisterResponse {
                index: r.index,
                server_epoch: self.agent.epoch.clone(),
            }))
        }
        .await
        .map_err(Status::from);
        self.count("grpc_register", &result);
        result
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let req = request.into_inner();
        let result = async {
            if req.id.is_empty() {
                return Err(Error::invalid("id", "missing instance id"));
            }
            let node = if req.node.is_empty() {
                self.agent.node.clone()
            } else {
                req.node.to_ascii_lowercase()
            };
            let removed = self
                .agent
                .deregister(&InstanceKey::new(&node, &req.id))
                .await?;
            Ok::<_, Error>(Response::new(pb::DeregisterResponse {
                index: removed.unwrap_or_else(|| self.agent.catalog.index()),
                existed: removed.is_some(),
            }))
        }
        .await
        .map_err(Status::from);
        self.count("grpc_deregister", &result);
        result
    }

    async fn set_maintenance(
        &self,
        request: Request<pb::SetMaintenanceRequest>,
    ) -> Result<Response<pb::SetMaintenanceResponse>, Status> {
        let req = request.into_inner();
        let result = (|| {
            if req.id.is_empty() {
                return Err(Error::invalid("id", "missing instance id"));
            }
            let node = if req.node.is_empty() {
                self.agent.node.clone()
            } else {
                req.node.to_ascii_lowercase()
            };
            let reason = req
                .enable
                .then(|| crate::model::maintenance_reason(&req.reason));
            let index = self
                .agent
                .catalog
                .set_maintenance(&InstanceKey::new(&node, &req.id), reason)?;
            Ok(Response::new(pb::SetMaintenanceResponse { index }))
        })()
        .map_err(Status::from);
        self.count("grpc_set_maintenance", &result);
        result
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = request.into_inner();
        let result = (|| {
            if req.owner.is_empty() {
                return Err(Error::invalid("owner", "missing owner"));
            }
            let reports = req
                .reports
                .into_iter()
                .map(|r| {
                    let status = health_in("reports.status", r.status)?
                        .ok_or_else(|| Error::invalid("reports.status", "missing status"))?;
                    Ok(CheckReport {
                        instance_id: r.instance_id,
                        check_id: r.check_id,
                        status,
                        output: r.output,
                    })
                })
                .collect::<Result<Vec<_>, Error>>()?;
            let (refreshed, instances) =
                self.agent
                    .heartbeat(&req.owner, &reports, req.only_reported);
            Ok(Response::new(pb::HeartbeatResponse {
                refreshed,
                index: self.agent.catalog.index(),
                server_epoch: self.agent.epoch.clone(),
                instance_ids: instances.iter().map(|i| i.spec.id.clone()).collect(),
            }))
        })()
        .map_err(Status::from);
        self.count("grpc_heartbeat", &result);
        result
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let req = request.into_inner();
        let (index, services) = self.agent.catalog.services();
        let size = page_size(req.page_size);
        let start =
            services.partition_point(|s| !req.page_token.is_empty() && s.name <= req.page_token);
        let page: Vec<_> = services[start..].iter().take(size).collect();
        let next = if start + page.len() < services.len() {
            page.last().map(|s| s.name.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        let result = Ok(Response::new(pb::ListServicesResponse {
            services: page
                .into_iter()
                .map(|s| pb::ServiceSummary {
                    name: s.name.clone(),
                    tags: s.tags.clone(),
                    instances: s.instances,
                    passing: s.passing,
                })
                .collect(),
            next_page_token: next,
            index,
        }));
        self.count("grpc_list_services", &result);
        result
    }

    async fn get_service(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::GetServiceResponse>, Status> {
        let req = request.into_inner();
        let (index, instances) = self.agent.catalog.service(&req.name.to_ascii_lowercase());
        let filtered: Vec<&Arc<Instance>> = instances
            .iter()
            .filter(|i| !req.passing_only || i.health == Health::Passing)
            .filter(|i| req.tag.is_empty() || i.has_tag(&req.tag))
            .collect();
        let size = page_size(req.page_size);
        let start = filtered
            .partition_point(|i| !req.page_token.is_empty() && i.key.to_string() <= req.page_token);
        let page: Vec<_> = filtered[start..].iter().take(size).collect();
        let next = if start + page.len() < filtered.len() {
            page.last().map(|i| i.key.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        let result = Ok(Response::new(pb::GetServiceResponse {
            instances: page.into_iter().map(|i| instance_to_proto(i)).collect(),
            next_page_token: next,
            index,
        }));
        self.count("grpc_get_service", &result);
        result
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        let services: Vec<String> = req
            .services
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect();
        let (tx, rx) = mpsc::channel(64);
        let agent = self.agent.clone();
        let shutdown = self.shutdown.clone();
        agent.metrics.watch_streams.inc();
        tokio::spawn(async move {
            watch_loop(&agent, req.from_index, &services, &tx, &shutdown).await;
            agent.metrics.watch_streams.dec();
        });
        self.count::<()>("grpc_watch", &Ok(()));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

type Tx = mpsc::Sender<Result<pb::WatchEvent, Status>>;

async fn send_snapshot(agent: &Agent, services: &[String], tx: &Tx) -> Option<u64> {
    let (index, instances) = agent.catalog.snapshot(services);
    let mut chunks = instances.chunks(SNAPSHOT_CHUNK).peekable();
    if chunks.peek().is_none() {
        let event = pb::WatchEvent {
            index,
            event: Some(pb::watch_event::Event::Snapshot(pb::SnapshotChunk {
                instances: Vec::new(),
                last: true,
                server_epoch: agent.epoch.clone(),
            })),
        };
        tx.send(Ok(event)).await.ok()?;
        return Some(index);
    }
    while let Some(chunk) = chunks.next() {
        let event = pb::WatchEvent {
            index,
            event: Some(pb::watch_event::Event::Snapshot(pb::SnapshotChunk {
                instances: chunk.iter().map(|i| instance_to_proto(i)).collect(),
                last: chunks.peek().is_none(),
                server_epoch: agent.epoch.clone(),
            })),
        };
        tx.send(Ok(event)).await.ok()?;
    }
    Some(index)
}

/// Streams a snapshot (or a resume marker), then every change, until the
/// client goes away or the server shuts down.
async fn watch_loop(agent: &Agent, from: u64, services: &[String], tx: &Tx, shutdown: &Shutdown) {
    // Subscribe before reading, so no change falls between the two.
    let mut changed = agent.catalog.subscribe();
    let resumable =
        from != 0 && matches!(agent.catalog.changes_since(from), ChangesSince::Changes(_));
    let mut last = if resumable {
        let event = pb::WatchEvent {
            index: from,
            event: Some(pb::watch_event::Event::Resumed(pb::Resumed {})),
        };
        if tx.send(Ok(event)).await.is_err() {
            return;
        }
        from
    } else {
        match send_snapshot(agent, services, tx).await {
            Some(i) => i,
            None => return,
        }
    };
    loop {
        match agent.catalog.changes_since(last) {
            ChangesSince::Changes(changes) => {
                for (index, change) in changes {
                    last = index;
                    let instance = change.instance();
                    if !services.is_empty() && !services.contains(&instance.spec.service) {
                        continue;
                    }
                    let event = match &change {
                        Change::Upsert(i) => pb::watch_event::Event::Upsert(instance_to_proto(i)),
                        Change::Remove(i) => pb::watch_event::Event::Removed(pb::InstanceRef {
                            node: i.spec.node.clone(),
                            id: i.spec.id.clone(),
                            service: i.spec.service.clone(),
                        }),
                    };
                    if tx
                        .send(Ok(pb::WatchEvent {
                            index,
                            event: Some(event),
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            // Fell behind the log: start over with a fresh snapshot.
            ChangesSince::TooOld => match send_snapshot(agent, services, tx).await {
                Some(i) => last = i,
                None => return,
            },
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tx.closed() => return,
            _ = shutdown.wait() => return,
        }
    }
}
