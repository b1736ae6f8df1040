//! Hosts cut off the network: the scheduler and two agents, each in its own
//! container (the images `cargo xtask images` builds) on a private network
//! this test makes, sharing the engine's socket but each its own node. One
//! agent's container is disconnected from the network (`docker network
//! disconnect`): its node goes down after the grace and its task starts on
//! the other; reconnected, it removes the container of the task that moved,
//! and nothing runs twice.

use std::process::Command;
use std::time::{Duration, Instant};

use bronze_proto::scheduler::v1 as pb;

use crate::containers::{free_port, images_and_workload};

/// `docker ARGS`, which must succeed; what it printed, trimmed.
pub(crate) fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub(crate) async fn sh(args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&refs)
    })
    .await
    .expect("join")
}

/// Removes what the test made, also when it fails: its containers (in
/// order), the service's task containers, the network, and an image.
pub(crate) struct Teardown {
    pub containers: Vec<String>,
    pub network: String,
    pub service_label: String,
    pub image: Option<String>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What each host said, for the failure's reader.
            for c in &self.containers {
                if let Ok(out) = Command::new("docker")
                    .args(["logs", "--tail", "40", c])
                    .output()
                {
                    eprintln!(
                        "--- {c}:\n{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&self.containers)
            .output();
        if let Ok(out) = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label={}", self.service_label),
            ])
            .output()
        {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .output();
            }
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
        if let Some(image) = &self.image {
            let _ = Command::new("docker").args(["rmi", image]).output();
        }
    }
}

pub(crate) async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within 90s: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) type Client = pb::scheduler_client::SchedulerClient<tonic::transport::Channel>;

pub(crate) async fn running(c: &mut Client, service: &str) -> Vec<pb::Task> {
    let Ok(r) = c
        .list_tasks(pb::ListTasksRequest {
            service: service.into(),
            desired_running: true,
            ..Default::default()
        })
        .await
    else {
        return Vec::new();
    };
    r.into_inner()
        .tasks
        .into_iter()
        .filter(|t| {
            t.status
                .as_ref()
                .is_some_and(|s| s.state() == pb::TaskState::Running)
        })
        .collect()
}

pub(crate) async fn node_state(c: &mut Client, host: &str) -> Option<pb::NodeState> {
    let n = c
        .get_node(pb::GetNodeRequest { node: host.into() })
        .await
        .ok()?
        .into_inner();
    Some(n.state())
}

/// Waits until the node named `host` is in state `want`.
pub(crate) async fn node_becomes(c: &Client, host: &str, want: pb::NodeState) {
    until(&format!("node {host} {want:?}"), || {
        let mut c = c.clone();
        async move { (node_state(&mut c, host).await == Some(want)).then_some(()) }
    })
    .await
}

/// Creates the service (`replicas` of it, a 1 s stop grace) and waits
/// until they run, each on a node of its own; the running tasks.
pub(crate) async fn spread(c: &mut Client, spec: pb::ServiceSpec, replicas: u64) -> Vec<pb::Task> {
    let service = spec.name.clone();
    c.create_service(pb::CreateServiceRequest {
        spec: Some(pb::ServiceSpec {
            mode: Some(pb::service_spec::Mode::Replicated(pb::Replicated {
                replicas,
            })),
            stop_grace_period: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..spec
        }),
    })
    .await
    .expect("create");
    until("every replica running, each on a node of its own", || {
        let mut c = c.clone();
        let service = service.clone();
        async move {
            let ts = running(&mut c, &service).await;
            let nodes: std::collections::HashSet<&str> =
                ts.iter().map(|t| t.node_id.as_str()).collect();
            (ts.len() == replicas as usize && nodes.len() == ts.len()).then_some(ts)
        }
    })
    .await
}

#[tokio::test]
async fn a_host_cut_off_loses_its_tasks_and_cleans_up_when_it_returns() {
    images_and_workload().await;
    let id = std::process::id();
    let network = format!("bronze-e2e-cut-{id}");
    let sched = format!("bronze-e2e-scheduler-{id}");
    let (host_a, host_b) = (format!("cut-a-{id}"), format!("cut-b-{id}"));
    let service = format!("cut-{id}");
    let _teardown = Teardown {
        containers: vec![sched.clone(), host_a.clone(), host_b.clone()],
        network: network.clone(),
        service_label: format!("bronze.service.name={service}"),
        image: None,
    };
    let token = "BRONZE-e2e-network-cut-token-0123456789";
    let port = free_port();
    sh(["network", "create", &network].map(str::to_string).to_vec()).await;
    sh([
        "run",
        "-d",
        "--name",
        &sched,
        "--network",
        &network,
        "-p",
        &format!("127.0.0.1:{port}:7700"),
        "-e",
        &format!("BRONZE_SCHEDULER_JOIN_TOKEN={token}"),
        "-e",
        "BRONZE_SCHEDULER_HEARTBEAT=200ms",
        "-e",
        "BRONZE_SCHEDULER_NODE_GRACE=3s",
        "bronze/scheduler:latest",
    ]
    .map(str::to_string)
    .to_vec())
    .await;
    for host in [&host_a, &host_b] {
        sh([
            "run",
            "-d",
            "--name",
            host,
            "--network",
            &network,
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-e",
            &format!("BRONZE_AGENT_SCHEDULER=http://{sched}:7700"),
            "-e",
            &format!("BRONZE_AGENT_JOIN_TOKEN={token}"),
            "-e",
            &format!("BRONZE_AGENT_HOSTNAME={host}"),
            "-e",
            "BRONZE_AGENT_ADDRESS=127.0.0.1",
            "bronze/agent:latest",
        ]
        .map(str::to_string)
        .to_vec())
        .await;
    }
    let url = format!("http://127.0.0.1:{port}");
    let mut c = until("the scheduler answers", || {
        let url = url.clone();
        async move { Client::connect(url).await.ok() }
    })
    .await;
    for host in [&host_a, &host_b] {
        node_becomes(&c, host, pb::NodeState::Ready).await;
    }
    let tasks = spread(
        &mut c,
        pb::ServiceSpec {
            name: service.clone(),
            image: "bronze-test/busybox-httpd:latest".into(),
            ..Default::default()
        },
        2,
    )
    .await;
    let node_a = c
        .get_node(pb::GetNodeRequest {
            node: host_a.clone(),
        })
        .await
        .expect("node")
        .into_inner()
        .id;
    let on_a = tasks
        .iter()
        .find(|t| t.node_id == node_a)
        .expect("a task on host a")
        .status
        .clone()
        .expect("status")
        .container_id;

    // Cut host a off.
    sh(["network", "disconnect", &network, &host_a]
        .map(str::to_string)
        .to_vec())
    .await;
    until("host a down and its task moved to b", || {
        let mut c = c.clone();
        let (service, host_a, node_a) = (service.clone(), host_a.clone(), node_a.clone());
        async move {
            let down = node_state(&mut c, &host_a).await == Some(pb::NodeState::Down);
            let ts = running(&mut c, &service).await;
            (down && ts.len() == 2 && ts.iter().all(|t| t.node_id != node_a)).then_some(())
        }
    })
    .await;
    // Nobody could stop the cut-off host's container meanwhile.
    let state = sh(["inspect", "-f", "{{.State.Running}}", &on_a]
        .map(str::to_string)
        .to_vec())
    .await;
    assert_eq!(state, "true");

    // Back on the network: its agent reconnects and removes the container
    // of the task that moved.
    sh(["network", "connect", &network, &host_a]
        .map(str::to_string)
        .to_vec())
    .await;
    until(
        "host a ready again, the moved task's container removed",
        || {
            let mut c = c.clone();
            let (host_a, on_a) = (host_a.clone(), on_a.clone());
            async move {
                let ready = node_state(&mut c, &host_a).await == Some(pb::NodeState::Ready);
                let gone = tokio::task::spawn_blocking(move || {
                    Command::new("docker")
                        .args(["inspect", &on_a])
                        .output()
                        .map(|o| !o.status.success())
                        .unwrap_or(false)
                })
                .await
                .unwrap_or(false);
                (ready && gone).then_some(())
            }
        },
    )
    .await;
    let label = format!("label=bronze.service.name={service}");
    let running_containers = sh(["ps", "-q", "--filter", &label]
        .map(str::to_string)
        .to_vec())
    .await;
    assert_eq!(running_containers.lines().count(), 2, "nothing runs twice");
    assert_eq!(running(&mut c, &service).await.len(), 2);
}
