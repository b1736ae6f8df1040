//! A stack file in the seeds' style, deployed unchanged with `bronze stack
//! deploy`, answering through the gateway: the whole chain on this host
//! (the CLI, the scheduler, an agent on the engine, the registrator copying
//! the service's Traefik v1 `deploy.labels` from its containers into
//! discovery, the gateway routing by them).

use std::time::Duration;

use bronze_runtime::Shutdown;

use crate::harness::{Agent, Cleanup, Scheduler, eventually, fast, image, unique};

/// Discovery, a registrator for this host (`--internal`: the seeds' stacks
/// publish no ports, Traefik reaches tasks on their own addresses) and the
/// gateway, in this process.
struct Platform {
    gateway: std::net::SocketAddr,
    stop: Shutdown,
}

impl Platform {
    async fn start() -> Self {
        let stop = Shutdown::new();
        let discovery = bronze_discovery::Server::bind(bronze_discovery::Config::ephemeral())
            .await
            .expect("discovery");
        let grpc = discovery.grpc_addr();
        tokio::spawn(discovery.serve(stop.clone()));
        let registrator = bronze_registrator::Server::bind(bronze_registrator::Config {
            discovery: format!("http://{grpc}"),
            hostname: unique("seed-host"),
            internal: true,
            heartbeat: Duration::from_millis(200),
            ttl: Duration::from_secs(3),
            deregister_after: Duration::from_secs(10),
            resync: Duration::from_secs(2),
            metrics_addr: "127.0.0.1:0".parse().expect("addr"),
            ..Default::default()
        })
        .await
        .expect("registrator");
        tokio::spawn(registrator.serve(stop.clone()));
        let mut gw = bronze_gateway::Config::ephemeral();
        gw.discovery = format!("http://{grpc}");
        let gateway = bronze_gateway::Server::bind(gw).await.expect("gateway");
        let addr = gateway.addr();
        tokio::spawn(gateway.serve(stop.clone()));
        Self {
            gateway: addr,
            stop,
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.stop.trigger();
    }
}

/// The seed's "versions side by side" file (three versions of an API
/// behind one host, each under its own `PathPrefixStrip`), with the deploy
/// section of its blog stack (replicas 2, restart on failure, start-first
/// updates that roll back, CPU and memory limits, weight, port, network)
/// and its external network and named volume. Only the image is ours.
fn stack_file(host: &str, image: &str) -> String {
    let mut file = String::from("version: '3.6'\n\nservices:\n");
    for (service, who, prefix) in [
        ("api-v2", "v2", "/v2/user"),
        ("api-v3", "v3", "/v3/user"),
        ("api-v3-my", "v3-my", "/v3/user/my"),
    ] {
        file.push_str(&format!(
            r#"  {service}:
    image: {image}
    command: ["sh", "-c", "echo {who} > /www/who && exec /bin/busybox httpd -f -p 8080 -h /www"]
    networks:
      - traefik_public
    volumes:
      - content:/var/lib/content
    environment:
      url: "http://{host}"
    deploy:
      replicas: 2
      restart_policy:
        condition: on-failure
      update_config:
        order: start-first
        failure_action: rollback
      resources:
        limits:
          cpus: "0.6"
          memory: 668M
      labels:
        - "traefik.docker.network=traefik_public"
        - "traefik.weight=100"
        - "traefik.port=8080"
        - "traefik.frontend.rule=Host:{host};PathPrefixStrip:{prefix}"

"#
        ));
    }
    file.push_str("volumes:\n  content:\n\nnetworks:\n  traefik_public:\n    external: true\n");
    file
}

async fn get(gateway: std::net::SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let r = client
        .get(format!("http://{gateway}{path}"))
        .header("host", host)
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?.trim().to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_style_stack_file_deploys_unchanged_and_answers_through_the_gateway() {
    image().await;
    let platform = Platform::start().await;
    let s = Scheduler::start(fast()).await;
    let _agent = Agent::start(&s, &unique("seed-node"), &[]).await;
    let stack = unique("seed");
    let _cleanup = Cleanup(
        ["api-v2", "api-v3", "api-v3-my"]
            .iter()
            .map(|svc| format!("{stack}_{svc}"))
            .collect(),
    );
    let host = format!("{}.example.com", unique("api"));
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("stack.yml");
    std::fs::write(&file, stack_file(&host, crate::harness::IMAGE)).expect("write");

    let out = s
        .bronze(&[
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-c",
            &file.display().to_string(),
            &stack,
        ])
        .await;
    out.ok();
    // Every service of the stack runs its two replicas.
    let services = s.bronze(&["stack", "services", &stack]).await;
    let listed = services.ok();
    for svc in ["api-v2", "api-v3", "api-v3-my"] {
        let row = listed
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(&format!("{stack}_{svc}")))
            .unwrap_or_else(|| panic!("{svc} not listed: {listed}"));
        assert!(row.contains("2/2"), "{svc}: {row}");
    }

    // Each prefix reaches its own version, stripped (the containers serve
    // /who, not /v2/user/who); the longest prefix wins; another host is
    // not routed.
    for (path, who) in [
        ("/v2/user/who", "v2"),
        ("/v3/user/who", "v3"),
        ("/v3/user/my/who", "v3-my"),
    ] {
        eventually(
            Duration::from_secs(60),
            &format!("{path} answers {who} through the gateway"),
            || async {
                (get(platform.gateway, &host, path).await == Some((200, who.to_string())))
                    .then_some(())
            },
        )
        .await;
    }
    let other = get(platform.gateway, "other.example.com", "/v2/user/who").await;
    assert_eq!(other.map(|(status, _)| status), Some(404));

    let rm = s.bronze(&["stack", "rm", &stack]).await;
    rm.ok();
}
