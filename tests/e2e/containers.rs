//! Images built offline from the workspace's own binaries, run by the real
//! engine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use tokio::sync::OnceCell;

static IMAGES: OnceCell<std::path::PathBuf> = OnceCell::const_new();

/// Builds every image once per test run, from the debug build; the
/// directory of the binaries they hold.
pub(crate) async fn images() -> &'static std::path::Path {
    IMAGES
        .get_or_init(|| async {
            let dir = tokio::task::spawn_blocking(|| xtask::build_binaries(xtask::Profile::Debug))
                .await
                .expect("join")
                .expect("cargo build");
            for image in xtask::images::IMAGES {
                xtask::images::build(image, &dir)
                    .await
                    .expect("image builds offline");
            }
            dir
        })
        .await
}

/// The platform's images and binaries (`images`), and the workload image
/// the tests run (busybox httpd); the binaries' directory.
pub(crate) async fn images_and_workload() -> &'static std::path::Path {
    let bin = images().await;
    xtask::images::build_busybox_httpd("bronze-test/busybox-httpd:latest")
        .await
        .expect("workload image");
    bin
}

async fn discovery_image() -> &'static str {
    images().await;
    "bronze/discovery:latest"
}

async fn http_ok(url: &str) -> bool {
    bronze_runtime::install_crypto_provider();
    reqwest::get(url)
        .await
        .is_ok_and(|r| r.status().is_success())
}

async fn wait_for(url: &str) {
    for _ in 0..300 {
        if http_ok(url).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never answered");
}

fn dig_short(server: SocketAddr, name: &str, qtype: &str) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args([
            "-p",
            &server.port().to_string(),
            "+short",
            "+time=5",
            "+tries=2",
            name,
            qtype,
        ])
        .output()
        .expect("dig runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn discovery_image_serves_http_and_dns_and_stops_cleanly_on_sigterm() {
    let tag = discovery_image().await;
    let docker = xtask::images::docker().await.expect("engine");
    let bind = |port: &str| {
        (
            port.to_string(),
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(String::new()),
            }]),
        )
    };
    let ports: HashMap<String, Option<Vec<PortBinding>>> = ["8500/tcp", "8600/udp", "8600/tcp"]
        .into_iter()
        .map(bind)
        .collect();
    let name = format!("bronze-e2e-discovery-{}", std::process::id());
    let body = ContainerCreateBody {
        image: Some(tag.to_string()),
        host_config: Some(HostConfig {
            port_bindings: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    };
    docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            body,
        )
        .await
        .expect("create");
    let cleanup = Cleanup(docker.clone(), name.clone());
    docker.start_container(&name, None).await.expect("start");
    let info = docker
        .inspect_container(&name, None::<InspectContainerOptions>)
        .await
        .expect("inspect");
    let published = info.network_settings.and_then(|n| n.ports).expect("ports");
    let host_port = |p: &str| -> u16 {
        published[p].as_ref().expect("bound")[0]
            .host_port
            .as_ref()
            .expect("port")
            .parse()
            .expect("number")
    };
    let http = format!("http://127.0.0.1:{}", host_port("8500/tcp"));
    let dns = SocketAddr::from(([127, 0, 0, 1], host_port("8600/udp")));
    wait_for(&format!("{http}/healthz")).await;

    let r = reqwest::Client::new()
        .put(format!("{http}/v1/agent/service/register"))
        .body(r#"{"ID": "c1", "Name": "boxed", "Address": "10.7.7.7", "Port": 7}"#)
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 200);
    let answer =
        tokio::task::spawn_blocking(move || dig_short(dns, "_boxed._tcp.service.bronze", "SRV"))
            .await
            .expect("join");
    assert_eq!(answer, "1 1 7 0a070707.addr.bronze.");

    docker
        .stop_container(
            &name,
            Some(StopContainerOptionsBuilder::default().t(20).build()),
        )
        .await
        .expect("stop");
    let info = docker
        .inspect_container(&name, None::<InspectContainerOptions>)
        .await
        .expect("inspect");
    let state = info.state.expect("state");
    assert_eq!(
        state.exit_code,
        Some(0),
        "drains and exits 0 on SIGTERM: {state:?}"
    );
    drop(cleanup);
}

/// Removes the container even when the test fails.
struct Cleanup(Docker, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (docker, name) = (self.0.clone(), self.1.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let _ = docker
                        .remove_container(
                            &name,
                            Some(
                                RemoveContainerOptionsBuilder::default()
                                    .force(true)
                                    .v(true)
                                    .build(),
                            ),
                        )
                        .await;
                });
            }
        })
        .join();
    }
}

pub(crate) fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[tokio::test]
async fn compose_file_brings_the_platform_up_and_registers_containers() {
    images_and_workload().await;
    let compose = xtask::root().join("deploy/docker-compose.yml");
    let project = format!("bronze-e2e-{}", std::process::id());
    let (http, dns, grpc, registry, gateway, admin, scheduler) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    // The declarative file the compose file mounts, with one route of its
    // own, so the test sees the gateway load it.
    let declarative = std::env::temp_dir().join(format!("{project}-kong.yml"));
    std::fs::write(
        &declarative,
        "_format_version: \"3.0\"\nservices:\n  - name: from-file\n    url: http://127.0.0.1:9\n    \
         routes:\n      - name: from-file\n        paths: [\"/from-file\"]\n    plugins:\n      \
         - name: request-termination\n        config: {status_code: 200, message: declarative}\n",
    )
    .expect("declarative file");
    let run = |args: &[&str]| {
        Command::new("docker-compose")
            .arg("-f")
            .arg(&compose)
            .args(["-p", &project])
            .args(args)
            .env("BRONZE_HTTP_PORT", http.to_string())
            .env("BRONZE_DNS_PORT", dns.to_string())
            .env("BRONZE_GRPC_PORT", grpc.to_string())
            .env("BRONZE_REGISTRY_PORT", registry.to_string())
            .env("BRONZE_GATEWAY_PORT", gateway.to_string())
            .env("BRONZE_GATEWAY_ADMIN_PORT", admin.to_string())
            .env("BRONZE_GATEWAY_FILE", &declarative)
            .env("BRONZE_GATEWAY_DECLARATIVE_CONFIG", "/etc/bronze/kong.yml")
            .env("BRONZE_SCHEDULER_PORT", scheduler.to_string())
            .env("BRONZE_NODE", &project)
            .output()
            .expect("docker-compose runs")
    };
    let service = format!("e2e-{}", std::process::id());
    let _cleanup = ComposeDown {
        compose: compose.clone(),
        project: project.clone(),
        service_label: format!("bronze.service.name={service}"),
    };
    let up = run(&["up", "-d"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let healthy = async {
        for _ in 0..300 {
            if http_ok(&format!("http://127.0.0.1:{http}/healthz")).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
    .await;
    let ns = tokio::task::spawn_blocking(move || {
        dig_short(SocketAddr::from(([127, 0, 0, 1], dns)), "bronze", "NS")
    })
    .await
    .expect("join");
    // The registry container takes a docker push through its published port.
    let pushed = async {
        for _ in 0..300 {
            if http_ok(&format!("http://127.0.0.1:{registry}/healthz")).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let image = format!("127.0.0.1:{registry}/e2e/busybox:compose");
        let i = image.clone();
        let out = tokio::task::spawn_blocking(move || {
            let tag = Command::new("docker")
                .args(["tag", "bronze-test/busybox-httpd:latest", &i])
                .output()
                .expect("docker tag");
            assert!(tag.status.success());
            let push = Command::new("docker")
                .args(["push", &i])
                .output()
                .expect("docker push");
            let _ = Command::new("docker").args(["rmi", &i]).output();
            push
        })
        .await
        .expect("join");
        let tags: serde_json::Value = reqwest::get(format!(
            "http://127.0.0.1:{registry}/v2/e2e/busybox/tags/list"
        ))
        .await
        .expect("tags")
        .json()
        .await
        .unwrap_or_default();
        (out, tags)
    }
    .await;
    // The gateway container answers through its published port (no route
    // yet: Kong's 404).
    let gateway_answer = async {
        for _ in 0..300 {
            if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{gateway}/nothing")).await {
                return (r.status().as_u16(), r.text().await.unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (0, String::new())
    }
    .await;
    // The agent container joins the scheduler container as this host's
    // node; the CLI on the host reaches the scheduler at its port.
    let nodes = async {
        use bronze_proto::scheduler::v1 as pb;
        for _ in 0..300 {
            if let Ok(mut c) = pb::scheduler_client::SchedulerClient::connect(format!(
                "http://127.0.0.1:{scheduler}"
            ))
            .await
                && let Ok(r) = c.list_nodes(pb::ListNodesRequest::default()).await
            {
                let ready: Vec<String> = r
                    .into_inner()
                    .nodes
                    .into_iter()
                    .filter(|n| n.state() == pb::NodeState::Ready)
                    .map(|n| n.hostname)
                    .collect();
                if !ready.is_empty() {
                    return ready;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Vec::new()
    }
    .await;
    // A service the composed scheduler runs through the composed agent:
    // the registrator registers its container at this host's published
    // port, and the gateway (on the host's network) routes its label to it.
    let routed = route_a_scheduled_service(scheduler, http, gateway, &service).await;
    let from_file = reqwest::get(format!("http://127.0.0.1:{gateway}/from-file"))
        .await
        .map(|r| r.status().as_u16());
    let admin_status = reqwest::get(format!("http://127.0.0.1:{admin}/status"))
        .await
        .map(|r| r.status().as_u16());
    let removed = remove_service(scheduler, &service).await;
    let down = run(&["down", "-v", "--timeout", "20"]);
    let _ = std::fs::remove_file(&declarative);
    assert_eq!(nodes, vec![project.clone()], "the agent container joined");
    assert_eq!(
        routed.registered, 1,
        "the registrator registered the scheduled container in discovery"
    );
    assert_eq!(
        routed.answer, "hello from busybox",
        "the gateway routes the container's label to it"
    );
    assert!(removed, "the service's container is removed");
    assert_eq!(
        from_file.ok(),
        Some(200),
        "the mounted declarative file is loaded"
    );
    assert_eq!(
        admin_status.ok(),
        Some(200),
        "Kong's Admin API answers on the host's loopback"
    );
    assert_eq!(
        gateway_answer,
        (
            404,
            r#"{"message":"no Route matched with those values"}"#.to_string()
        )
    );
    assert!(
        pushed.0.status.success(),
        "docker push to the composed registry: {}",
        String::from_utf8_lossy(&pushed.0.stderr)
    );
    assert_eq!(pushed.1["tags"], serde_json::json!(["compose"]));
    assert!(healthy, "discovery from the compose file answers /healthz");
    assert_eq!(ns, "ns.bronze.");
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
}

/// Takes the composed platform down, and the scheduled service's
/// containers with it, also when the test fails half-way.
struct ComposeDown {
    compose: std::path::PathBuf,
    project: String,
    service_label: String,
}

impl Drop for ComposeDown {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label={}", self.service_label))
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
        let _ = Command::new("docker-compose")
            .arg("-f")
            .arg(&self.compose)
            .args(["-p", &self.project, "down", "-v", "--timeout", "5"])
            .output();
    }
}

struct Routed {
    /// Instances of the service discovery lists (Consul's catalog).
    registered: usize,
    /// What the gateway answered on the service's label route.
    answer: String,
}

/// Creates `name` (one replica of the busybox image, port 8080 published
/// on a dynamic host port, a `bronze.http.rule` label) through the
/// scheduler's API, then waits (bounded) until discovery lists it and the
/// gateway answers its route.
async fn route_a_scheduled_service(scheduler: u16, http: u16, gateway: u16, name: &str) -> Routed {
    use bronze_proto::scheduler::v1 as pb;
    let mut c =
        pb::scheduler_client::SchedulerClient::connect(format!("http://127.0.0.1:{scheduler}"))
            .await
            .expect("scheduler client");
    let spec = pb::ServiceSpec {
        name: name.into(),
        image: "bronze-test/busybox-httpd:latest".into(),
        mode: Some(pb::service_spec::Mode::Replicated(pb::Replicated {
            replicas: 1,
        })),
        ports: vec![pb::PortConfig {
            target: 8080,
            ..Default::default()
        }],
        container_labels: [(
            "bronze.http.rule".to_string(),
            "PathPrefix(`/index.html`)".to_string(),
        )]
        .into(),
        stop_grace_period: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    };
    c.create_service(pb::CreateServiceRequest { spec: Some(spec) })
        .await
        .expect("create service");
    let mut routed = Routed {
        registered: 0,
        answer: String::new(),
    };
    for _ in 0..600 {
        if let Ok(r) =
            reqwest::get(format!("http://127.0.0.1:{http}/v1/catalog/service/{name}")).await
            && let Ok(list) = r.json::<Vec<serde_json::Value>>().await
        {
            routed.registered = list.len();
        }
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{gateway}/index.html")).await
            && r.status().is_success()
        {
            routed.answer = r.text().await.unwrap_or_default().trim().to_string();
        }
        if routed.registered > 0 && !routed.answer.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    routed
}

/// Removes the service and waits (bounded) until its container is gone,
/// so `docker-compose down` leaves nothing of the test behind.
async fn remove_service(scheduler: u16, name: &str) -> bool {
    use bronze_proto::scheduler::v1 as pb;
    let Ok(mut c) =
        pb::scheduler_client::SchedulerClient::connect(format!("http://127.0.0.1:{scheduler}"))
            .await
    else {
        return false;
    };
    let _ = c
        .remove_service(pb::RemoveServiceRequest {
            service: name.into(),
        })
        .await;
    let docker = xtask::images::docker().await.expect("engine");
    let filter = format!("bronze.service.name={name}");
    for _ in 0..600 {
        let list = docker
            .list_containers(Some(
                bollard::query_parameters::ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&HashMap::from([("label", vec![filter.as_str()])]))
                    .build(),
            ))
            .await
            .unwrap_or_default();
        if list.is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
