//! The Docker engine, through bollard: what a task's container looks like
//! (`create_body`), pulling its image, and what an inspect answer says
//! about the task (`status_of`).

use std::collections::HashMap;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HealthConfig, HealthStatusEnum, HostConfig,
    Mount, MountType, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::CreateImageOptionsBuilder;
use bronze_proto::scheduler::v1 as pb;
use futures::StreamExt;

/// Labels every task container carries.
pub const TASK_LABEL: &str = "bronze.task.id";
pub const NODE_LABEL: &str = "bronze.node.id";
pub const SERVICE_ID_LABEL: &str = "bronze.service.id";
pub const SERVICE_NAME_LABEL: &str = "bronze.service.name";
pub const SLOT_LABEL: &str = "bronze.task.slot";
/// The stack a task belongs to (the registrator copies it into the
/// instance's metadata, so agents find the stack's services in discovery).
pub const STACK_LABEL: &str = crate::mesh::catalog::STACK;

/// The label `docker stack deploy` (and `bronze stack deploy`) puts on a
/// stack's services and containers.
pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";

/// The stack of a service, if it belongs to one.
pub fn stack_of(spec: &pb::ServiceSpec) -> Option<&str> {
    spec.container_labels
        .get(NAMESPACE_LABEL)
        .or_else(|| spec.labels.get(NAMESPACE_LABEL))
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}

/// Connects to the engine at `host` (or DOCKER_HOST, or the local socket)
/// and agrees on an API version both sides speak. An engine that does not
/// answer yet is not an error: the agent retries as it works.
pub async fn connect(host: Option<&str>) -> Result<Docker, bollard::errors::Error> {
    let docker = match host {
        Some(h) => Docker::connect_with_host(h)?,
        None => Docker::connect_with_defaults()?,
    };
    match docker.clone().negotiate_version().await {
        Ok(d) => Ok(d),
        Err(e) => {
            tracing::warn!(error = %e, "the docker engine does not answer yet");
            Ok(docker)
        }
    }
}

/// The container's name: `<service>.<slot>.<task id>`, as Swarm's (global
/// tasks: `<service>.<node id>.<task id>`).
pub fn container_name(task: &pb::Task) -> String {
    let slot = if task.slot == 0 {
        task.node_id.chars().take(12).collect::<String>()
    } else {
        task.slot.to_string()
    };
    format!("{}.{}.{}", task.service_name, slot, task.id)
}

fn nanos(d: Option<&prost_types::Duration>) -> Option<i64> {
    d.map(|d| {
        d.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(d.nanos))
    })
    .filter(|n| *n > 0)
}

/// Whether the spec already names the container's discovery service.
fn names_service(spec: &pb::ServiceSpec) -> bool {
    let set = |k: &str| k == "SERVICE_NAME" || (k.starts_with("SERVICE_") && k.ends_with("_NAME"));
    spec.container_labels.keys().any(|k| set(k))
        || spec.labels.keys().any(|k| set(k))
        || spec
            .env
            .iter()
            .any(|e| set(e.split_once('=').map_or(e.as_str(), |(k, _)| k)))
}

/// Service labels the registrator reads from containers: Traefik's,
/// Bronze's and Registrator's `SERVICE_*`.
fn is_routing_label(key: &str) -> bool {
    key.starts_with("traefik.") || key.starts_with("bronze.") || key.starts_with("SERVICE_")
}

/// Puts the container on `network` (the agent's `task_network`) instead of
/// the engine's default bridge.
pub fn join_network(body: &mut ContainerCreateBody, network: &str) {
    body.host_config
        .get_or_insert_with(Default::default)
        .network_mode = Some(network.to_string());
}

/// Everything the engine needs to create a task's container. `files`: the
/// bind mounts of its secrets and configs (`files::write`); `net`: the
/// stack network it joins (its DNS server is the stack's responder).
pub fn create_body(
    task: &pb::Task,
    spec: &pb::ServiceSpec,
    files: Vec<Mount>,
    net: Option<&crate::mesh::Attachment>,
) -> ContainerCreateBody {
    let mut labels: HashMap<String, String> = spec
        .container_labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // The service's routing labels (a stack's `deploy.labels`, where Swarm
    // users put Traefik's) reach the registrator on every container; a
    // container label of the same key wins.
    for (k, v) in &spec.labels {
        if is_routing_label(k) && !labels.contains_key(k) {
            labels.insert(k.clone(), v.clone());
        }
    }
    // The registrator registers it under the service's name unless the
    // spec names it otherwise.
    if !names_service(spec) {
        labels.insert("SERVICE_NAME".into(), task.service_name.clone());
    }
    labels.insert(TASK_LABEL.into(), task.id.clone());
    labels.insert(NODE_LABEL.into(), task.node_id.clone());
    labels.insert(SERVICE_ID_LABEL.into(), task.service_id.clone());
    labels.insert(SERVICE_NAME_LABEL.into(), task.service_name.clone());
    labels.insert(SLOT_LABEL.into(), task.slot.to_string());
    if let Some(stack) = stack_of(spec) {
        labels.insert(STACK_LABEL.into(), stack.to_string());
        if spec.endpoint_mode == "dnsrr" {
            labels.insert(crate::mesh::catalog::ENDPOINT_MODE.into(), "dnsrr".into());
        }
    }
    let mut exposed = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    // Ingress (with the stack network, i.e. an agent that forwards): the
    // published TCP ports are answered by every node's agent; the task
    // publishes its target ports on dynamic host ports for them.
    let ingress: Vec<String> = if net.is_some() && spec.ingress {
        spec.ports
            .iter()
            .filter(|p| p.published != 0 && (p.protocol.is_empty() || p.protocol == "tcp"))
            .map(|p| format!("{}:{}", p.published, p.target))
            .collect()
    } else {
        Vec::new()
    };
    if !ingress.is_empty() {
        labels.insert(crate::mesh::catalog::INGRESS.into(), ingress.join(","));
    }
    for p in &spec.ports {
        let proto = if p.protocol.is_empty() {
            "tcp"
        } else {
            p.protocol.as_str()
        };
        let forwarded = ingress.contains(&format!("{}:{}", p.published, p.target));
        let key = format!("{}/{proto}", p.target);
        exposed.push(key.clone());
        bindings.insert(
            key,
            Some(vec![PortBinding {
                host_ip: None,
                host_port: Some(if p.published == 0 || forwarded {
                    String::new()
                } else {
                    p.published.to_string()
                }),
            }]),
        );
    }
    let mut mounts: Vec<Mount> = spec
        .mounts
        .iter()
        .map(|m| Mount {
            target: Some(m.target.clone()),
            source: (!m.source.is_empty()).then(|| m.source.clone()),
            typ: Some(match m.r#type.as_str() {
                "bind" => MountType::BIND,
                "tmpfs" => MountType::TMPFS,
                _ => MountType::VOLUME,
            }),
            read_only: Some(m.read_only),
            tmpfs_options: (m.r#type == "tmpfs" && m.tmpfs_size_bytes > 0).then(|| {
                bollard::models::MountTmpfsOptions {
                    size_bytes: Some(m.tmpfs_size_bytes),
                    ..Default::default()
                }
            }),
            ..Default::default()
        })
        .collect();
    mounts.extend(files);
    let limits = spec
        .resources
        .as_ref()
        .and_then(|r| r.limits)
        .unwrap_or_default();
    let grace = spec
        .stop_grace_period
        .as_ref()
        .map_or(10, |d| d.seconds + i64::from(d.nanos > 0));
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint: (!spec.command.is_empty()).then(|| spec.command.clone()),
        cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: (!spec.env.is_empty()).then(|| spec.env.clone()),
        labels: Some(labels),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        user: (!spec.user.is_empty()).then(|| spec.user.clone()),
        hostname: (!spec.hostname.is_empty()).then(|| spec.hostname.clone()),
        working_dir: (!spec.workdir.is_empty()).then(|| spec.workdir.clone()),
        stop_signal: (!spec.stop_signal.is_empty()).then(|| spec.stop_signal.clone()),
        stop_timeout: Some(grace),
        healthcheck: spec
            .healthcheck
            .as_ref()
            .filter(|h| !h.test.is_empty())
            .map(|h| HealthConfig {
                test: Some(h.test.clone()),
                interval: nanos(h.interval.as_ref()),
                timeout: nanos(h.timeout.as_ref()),
                retries: (h.retries > 0).then_some(i64::from(h.retries)),
                start_period: nanos(h.start_period.as_ref()),
                start_interval: None,
            }),
        host_config: Some(HostConfig {
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            mounts: (!mounts.is_empty()).then_some(mounts),
            nano_cpus: (limits.nano_cpus > 0).then_some(limits.nano_cpus),
            memory: (limits.memory_bytes > 0).then_some(limits.memory_bytes),
            pids_limit: (limits.pids > 0).then_some(limits.pids),
            extra_hosts: (!spec.extra_hosts.is_empty()).then(|| spec.extra_hosts.clone()),
            network_mode: net.map(|n| n.network.clone()),
            dns: net.map(|n| vec![n.dns.to_string()]),
            // The scheduler restarts tasks, never the engine.
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The registry host an image reference names, if it names one.
pub fn registry_host(image: &str) -> Option<&str> {
    let (first, rest) = image.split_once('/')?;
    let is_host = first.contains('.') || first.contains(':') || first == "localhost";
    (is_host && !rest.is_empty()).then_some(first)
}

/// Makes `image` present: pulled when it names a registry (so a moved tag
/// is picked up) or when it is missing; a pull that fails is fine when the
/// image is already here. Images without a registry host that are present
/// are never pulled (no traffic to a public registry).
pub async fn ensure_image(
    docker: &Docker,
    image: &str,
    auth: Option<(&str, &str)>,
) -> Result<(), String> {
    let present = docker.inspect_image(image).await.is_ok();
    if present && registry_host(image).is_none() {
        return Ok(());
    }
    let (from, tag) = split_tag(image);
    let options = CreateImageOptionsBuilder::default()
        .from_image(from)
        .tag(tag)
        .build();
    let credentials = auth.map(|(user, password)| DockerCredentials {
        username: Some(user.to_string()),
        password: Some(password.to_string()),
        serveraddress: registry_host(image).map(str::to_string),
        ..Default::default()
    });
    let mut stream = docker.create_image(Some(options), None, credentials);
    let mut error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(e) = info.error_detail.and_then(|d| d.message) {
                    error = Some(e);
                }
            }
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    match error {
        None => Ok(()),
        Some(_) if present => Ok(()),
        Some(e) => Err(format!("pulling {image}: {e}")),
    }
}

/// "repo:tag" -> ("repo", "tag"); "repo@sha256:.." -> ("repo@sha256:..", "");
/// no tag -> "latest".
fn split_tag(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], &image[last_slash + i + 1..]),
        None => (image, "latest"),
    }
}

/// What an inspect answer says about the task, as a status to report.
pub fn status_of(c: &ContainerInspectResponse) -> pb::TaskStatus {
    let state = c.state.clone().unwrap_or_default();
    let running = state.running.unwrap_or(false);
    let health = state
        .health
        .as_ref()
        .and_then(|h| h.status)
        .and_then(|s| match s {
            HealthStatusEnum::STARTING => Some("starting"),
            HealthStatusEnum::HEALTHY => Some("healthy"),
            HealthStatusEnum::UNHEALTHY => Some("unhealthy"),
            _ => None,
        })
        .unwrap_or_default()
        .to_string();
    let exit = state.exit_code.and_then(|c| i32::try_from(c).ok());
    let (task_state, message, err) = if running {
        match health.as_str() {
            "starting" => (
                pb::TaskState::Starting,
                "started; health check not passed yet".to_string(),
                String::new(),
            ),
            "unhealthy" => (
                pb::TaskState::Running,
                "running, unhealthy".to_string(),
                String::new(),
            ),
            _ => (pb::TaskState::Running, "running".to_string(), String::new()),
        }
    } else if state
        .started_at
        .as_deref()
        .is_none_or(|s| s.starts_with("0001-"))
    {
        (
            pb::TaskState::Preparing,
            "created".to_string(),
            String::new(),
        )
    } else if exit == Some(0) {
        (
            pb::TaskState::Complete,
            "finished".to_string(),
            String::new(),
        )
    } else {
        let mut err = state.error.clone().unwrap_or_default();
        if state.oom_killed.unwrap_or(false) {
            err = "out of memory (OOM killed)".into();
        }
        if err.is_empty() {
            err = format!("task: non-zero exit ({})", exit.unwrap_or(-1));
        }
        (pb::TaskState::Failed, "exited".to_string(), err)
    };
    let mut ports = Vec::new();
    if let Some(map) = c.network_settings.as_ref().and_then(|n| n.ports.as_ref()) {
        for (key, bindings) in map {
            let (target, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
            let Ok(target) = target.parse::<u32>() else {
                continue;
            };
            let published = bindings
                .iter()
                .flatten()
                .filter_map(|b| b.host_port.as_deref()?.parse::<u32>().ok())
                .next();
            if let Some(published) = published
                && !ports
                    .iter()
                    .any(|p: &pb::PortConfig| p.target == target && p.protocol == proto)
            {
                ports.push(pb::PortConfig {
                    target,
                    published,
                    protocol: proto.to_string(),
                });
            }
        }
    }
    ports.sort_by_key(|p| (p.target, p.protocol.clone()));
    pb::TaskStatus {
        state: task_state.into(),
        timestamp: None,
        message,
        err,
        exit_code: if running { None } else { exit },
        container_id: c.id.clone().unwrap_or_default(),
        health,
        ports,
    }
}

/// Whether a bollard error means "no such container" (or image).
pub fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The engine's own message of an error, without bollard's wrapping.
pub fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> pb::Task {
        pb::Task {
            id: "t1".into(),
            service_id: "s1".into(),
            service_name: "web".into(),
            slot: 2,
            node_id: "n1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn containers_carry_identity_and_the_registrator_conventions() {
        let spec = pb::ServiceSpec {
            name: "web".into(),
            image: "127.0.0.1:5000/shop/web:1.2".into(),
            args: vec!["httpd".into()],
            ports: vec![pb::PortConfig {
                target: 8080,
                published: 0,
                protocol: String::new(),
            }],
            container_labels: [(
                "bronze.http.rule".to_string(),
                "PathPrefix(`/`)".to_string(),
            )]
            .into(),
            ..Default::default()
        };
        let body = create_body(&task(), &spec, Vec::new(), None);
        let labels = body.labels.expect("labels");
        assert_eq!(labels.get("SERVICE_NAME").map(String::as_str), Some("web"));
        assert_eq!(labels.get(TASK_LABEL).map(String::as_str), Some("t1"));
        assert_eq!(labels.get(NODE_LABEL).map(String::as_str), Some("n1"));
        assert!(labels.contains_key("bronze.http.rule"));
        let hc = body.host_config.expect("host config");
        let b = hc.port_bindings.expect("bindings");
        assert_eq!(
            b["8080/tcp"].as_ref().expect("binding")[0]
                .host_port
                .as_deref(),
            Some("")
        );
        assert_eq!(container_name(&task()), "web.2.t1");
        // A spec that names its discovery service keeps its name.
        let spec = pb::ServiceSpec {
            env: vec!["SERVICE_NAME=shop".into()],
            ..spec
        };
        assert!(
            !create_body(&task(), &spec, Vec::new(), None)
                .labels
                .expect("labels")
                .contains_key("SERVICE_NAME")
        );
    }

    #[test]
    fn service_routing_labels_reach_the_container() {
        let spec = pb::ServiceSpec {
            name: "shop_web".into(),
            image: "web:1".into(),
            labels: [
                ("traefik.frontend.rule", "Host:a.example"),
                ("traefik.port", "8080"),
                ("SERVICE_NAME", "web"),
                ("bronze.http.rule", "PathPrefix(`/svc`)"),
                ("com.docker.stack.namespace", "shop"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
            container_labels: [("bronze.http.rule", "PathPrefix(`/own`)")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            ..Default::default()
        };
        let labels = create_body(&task(), &spec, Vec::new(), None)
            .labels
            .expect("labels");
        let get = |k: &str| labels.get(k).map(String::as_str);
        assert_eq!(get("traefik.frontend.rule"), Some("Host:a.example"));
        assert_eq!(get("traefik.port"), Some("8080"));
        // The service's SERVICE_NAME names its discovery service.
        assert_eq!(get("SERVICE_NAME"), Some("web"));
        // The container's own label wins; other service labels stay on the
        // service.
        assert_eq!(get("bronze.http.rule"), Some("PathPrefix(`/own`)"));
        assert_eq!(get("com.docker.stack.namespace"), None);
        // The stack is named for the registrator (and the agents' mesh).
        assert_eq!(get(STACK_LABEL), Some("shop"));
    }

    #[test]
    fn stack_tasks_join_their_network_and_its_dns() {
        let spec = pb::ServiceSpec {
            name: "shop_api".into(),
            image: "web:1".into(),
            container_labels: [(NAMESPACE_LABEL.to_string(), "shop".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(stack_of(&spec), Some("shop"));
        let net = crate::mesh::Attachment {
            network: "bronze_shop_n1".into(),
            dns: std::net::Ipv4Addr::new(10, 210, 4, 1),
        };
        let body = create_body(
            &task(),
            &pb::ServiceSpec {
                endpoint_mode: "dnsrr".into(),
                ..spec.clone()
            },
            Vec::new(),
            Some(&net),
        );
        assert_eq!(
            body.labels.as_ref().expect("labels")[crate::mesh::catalog::ENDPOINT_MODE],
            "dnsrr"
        );
        let hc = body.host_config.expect("host config");
        assert_eq!(hc.network_mode.as_deref(), Some("bronze_shop_n1"));
        assert_eq!(hc.dns, Some(vec!["10.210.4.1".to_string()]));
        let body = create_body(&task(), &spec, Vec::new(), None);
        assert_eq!(body.host_config.expect("host config").network_mode, None);
        // Ingress: published on a dynamic port, the agents answer 80.
        let ingress = pb::ServiceSpec {
            ingress: true,
            ports: vec![pb::PortConfig {
                target: 8080,
                published: 80,
                protocol: "tcp".into(),
            }],
            ..spec.clone()
        };
        let body = create_body(&task(), &ingress, Vec::new(), Some(&net));
        assert_eq!(
            body.labels.as_ref().expect("labels")[crate::mesh::catalog::INGRESS],
            "80:8080"
        );
        let host_port = |body: ContainerCreateBody| {
            body.host_config.expect("hc").port_bindings.expect("b")["8080/tcp"]
                .as_ref()
                .expect("binding")[0]
                .host_port
                .clone()
        };
        assert_eq!(host_port(body).as_deref(), Some(""));
        // Without an agent that forwards, published on the task's node.
        let body = create_body(&task(), &ingress, Vec::new(), None);
        assert_eq!(host_port(body).as_deref(), Some("80"));
        assert_eq!(stack_of(&pb::ServiceSpec::default()), None);
    }

    #[test]
    fn references() {
        assert_eq!(
            registry_host("127.0.0.1:5000/web:1"),
            Some("127.0.0.1:5000")
        );
        assert_eq!(registry_host("localhost/web"), Some("localhost"));
        assert_eq!(registry_host("bronze-test/busybox"), None);
        assert_eq!(registry_host("busybox"), None);
        assert_eq!(
            split_tag("127.0.0.1:5000/web:1.2"),
            ("127.0.0.1:5000/web", "1.2")
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/web"),
            ("127.0.0.1:5000/web", "latest")
        );
        assert_eq!(split_tag("web@sha256:ab"), ("web@sha256:ab", ""));
    }
}
