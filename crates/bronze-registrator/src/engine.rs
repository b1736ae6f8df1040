//! The Docker engine, through bollard: connecting (DOCKER_HOST, TLS through
//! DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, API version negotiated), and
//! turning an inspect answer into the conventions' [`ContainerInfo`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use bollard::Docker;
use bollard::models::{ContainerInspectResponse, HealthStatusEnum};

use crate::convention::{Binding, ContainerInfo, DockerHealth, Proto};

/// Connects to the engine at `host` (or DOCKER_HOST, or the local socket)
/// and agrees on an API version both sides speak.
pub async fn connect(host: Option<&str>) -> Result<Docker, bollard::errors::Error> {
    let docker = match host {
        Some(h) => Docker::connect_with_host(h)?,
        None => Docker::connect_with_defaults()?,
    };
    docker.negotiate_version().await
}

fn parse_port(key: &str) -> Option<(u16, Proto)> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    Some((port.parse().ok()?, Proto::parse(proto)?))
}

/// What the conventions need, from an inspect answer.
pub fn container_info(c: ContainerInspectResponse) -> ContainerInfo {
    let config = c.config.unwrap_or_default();
    let state = c.state.unwrap_or_default();
    let labels: BTreeMap<String, String> = config.labels.unwrap_or_default().into_iter().collect();
    let exposed: Vec<(u16, Proto)> = config
        .exposed_ports
        .unwrap_or_default()
        .iter()
        .filter_map(|k| parse_port(k))
        .collect();
    let net = c.network_settings.unwrap_or_default();
    let mut published = Vec::new();
    for (key, bindings) in net.ports.unwrap_or_default() {
        let Some((port, proto)) = parse_port(&key) else {
            continue;
        };
        for b in bindings.unwrap_or_default() {
            let Some(host_port) = b.host_port.and_then(|p| p.parse::<u16>().ok()) else {
                continue;
            };
            published.push(Binding {
                port,
                proto,
                host_ip: b.host_ip.unwrap_or_default(),
                host_port,
            });
        }
    }
    // The address on each network, and on the first (by name) that gave
    // the container one: user-defined networks included, unlike
    // gliderlabs/registrator. The conventions pick by label.
    let networks: BTreeMap<String, IpAddr> = net
        .networks
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, ep)| Some((name, ep.ip_address?.parse().ok()?)))
        .collect();
    let ip = networks.values().next().copied();
    let has_healthcheck = config
        .healthcheck
        .and_then(|h| h.test)
        .is_some_and(|t| t.first().is_some_and(|f| f != "NONE"));
    let health = state.health.and_then(|h| h.status).and_then(|s| match s {
        HealthStatusEnum::STARTING => Some(DockerHealth::Starting),
        HealthStatusEnum::HEALTHY => Some(DockerHealth::Healthy),
        HealthStatusEnum::UNHEALTHY => Some(DockerHealth::Unhealthy),
        _ => None,
    });
    ContainerInfo {
        id: c.id.unwrap_or_default(),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        image: config.image.unwrap_or_default(),
        env: config.env.unwrap_or_default(),
        labels,
        exposed,
        published,
        ip,
        networks,
        has_healthcheck,
        health,
        running: state.running.unwrap_or(false) && !state.restarting.unwrap_or(false),
        paused: state.paused.unwrap_or(false),
    }
}

/// The exit code an inspect answer reports (for `--deregister on-success`).
pub fn exit_code(c: &ContainerInspectResponse) -> Option<i64> {
    c.state.as_ref().and_then(|s| s.exit_code)
}

/// Whether a bollard error means "no such container".
pub fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}
