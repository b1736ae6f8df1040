//! The orchestrator with the rest of the platform: an image pushed to
//! bronze-registry runs as a service of three replicas over three nodes,
//! and the registrator registers each in discovery, where `dig SRV` finds
//! all three.

use std::process::Command;
use std::time::Duration;

use bronze_proto::scheduler::v1 as pb;
use bronze_runtime::Shutdown;

use crate::harness::{
    Agent, Cleanup, IMAGE, Scheduler, agent_config, client, converged, eventually, fast, image,
    ready_nodes, running, spec, unique,
};

#[tokio::test]
async fn an_image_pushed_to_the_registry_runs_spread_and_registers_in_dns() {
    image().await;
    let name = unique("pushed");
    let _cleanup = Cleanup(vec![name.clone()]);
    let stop = Shutdown::new();
    // Registry, discovery and one registrator for this host.
    let root = tempfile::tempdir().expect("dir");
    let registry = bronze_registry::Server::bind(bronze_registry::Config::ephemeral(
        &root.path().display().to_string(),
    ))
    .await
    .expect("registry");
    let registry_addr = registry.addr();
    tokio::spawn(registry.serve(stop.clone()));
    let discovery = bronze_discovery::Server::bind(bronze_discovery::Config::ephemeral())
        .await
        .expect("discovery");
    let (grpc, dns) = (discovery.grpc_addr(), discovery.dns_addr());
    tokio::spawn(discovery.serve(stop.clone()));
    let registrator = bronze_registrator::Server::bind(bronze_registrator::Config {
        discovery: format!("http://{grpc}"),
        hostname: "pushed-host".into(),
        ip: Some("127.0.0.1".parse().expect("ip")),
        heartbeat: Duration::from_millis(200),
        ttl: Duration::from_secs(3),
        deregister_after: Duration::from_secs(10),
        metrics_addr: "127.0.0.1:0".parse().expect("addr"),
        ..Default::default()
    })
    .await
    .expect("registrator");
    tokio::spawn(registrator.serve(stop.clone()));

    // docker push, then the local tag is removed: agents must pull.
    let pushed = format!("{registry_addr}/team/{name}:1");
    for args in [
        vec!["tag", IMAGE, pushed.as_str()],
        vec!["push", pushed.as_str()],
        vec!["rmi", pushed.as_str()],
    ] {
        let args: Vec<String> = args.into_iter().map(str::to_string).collect();
        // Off this runtime's thread: the registry serves the push on it.
        let out = tokio::task::spawn_blocking(move || Command::new("docker").args(&args).output())
            .await
            .expect("join")
            .expect("docker");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let s = Scheduler::start(fast()).await;
    let _agents = [
        Agent::start(agent_config(&s.url(), &s.token, "pushed-a", &[])).await,
        Agent::start(agent_config(&s.url(), &s.token, "pushed-b", &[])).await,
        Agent::start(agent_config(&s.url(), &s.token, "pushed-c", &[])).await,
    ];
    let mut c = client(s.addr).await;
    ready_nodes(&mut c, 3).await;
    let mut sp = spec(&name, 3);
    sp.image = pushed.clone();
    sp.ports.push(pb::PortConfig {
        target: 8080,
        published: 0,
        protocol: "tcp".into(),
    });
    c.create_service(pb::CreateServiceRequest { spec: Some(sp) })
        .await
        .expect("create");
    let ts = converged(&mut c, &name, 3).await;
    let nodes: std::collections::HashSet<&str> =
        running(&ts).iter().map(|t| t.node_id.as_str()).collect();
    assert_eq!(nodes.len(), 3, "spread over the three nodes");
    let ports: std::collections::BTreeSet<u32> = running(&ts)
        .iter()
        .map(|t| t.status.as_ref().expect("status").ports[0].published)
        .collect();
    let answers = eventually(Duration::from_secs(30), "three SRV answers", || {
        let name = name.clone();
        async move {
            let out = tokio::task::spawn_blocking(move || {
                Command::new("dig")
                    .args([
                        &format!("@{}", dns.ip()),
                        "-p",
                        &dns.port().to_string(),
                        "+short",
                        &format!("{name}.service.bronze"),
                        "SRV",
                    ])
                    .output()
            })
            .await
            .ok()?
            .ok()?;
            let ports: std::collections::BTreeSet<u32> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
                .collect();
            (ports.len() == 3).then_some(ports)
        }
    })
    .await;
    assert_eq!(
        answers, ports,
        "each task's host port, as discovery answers it"
    );
    // The service shows the image it was created from.
    assert!(running(&ts).iter().all(|t| t.image == pushed));
    s.stop().await;
    stop.trigger();
    // The image the agents pulled is this test's: leave none behind.
    let _ = tokio::task::spawn_blocking(move || {
        Command::new("docker").args(["rmi", "-f", &pushed]).output()
    })
    .await;
}
