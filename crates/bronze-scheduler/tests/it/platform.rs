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
    let (registry_addr, _) = crate::harness::registry(root.path(), &stop).await;
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

/// A registry that wants credentials: the agent that has them (as
/// `--registry-auth host=user:password`) pulls; one without is refused,
/// and the task says why.
#[tokio::test]
async fn pulls_use_the_agents_registry_credentials() {
    image().await;
    let (with, without) = (unique("authed"), unique("anon"));
    let _cleanup = Cleanup(vec![with.clone(), without.clone()]);
    let stop = Shutdown::new();
    let secrets = tempfile::tempdir().expect("dir");
    let hash = bcrypt::hash("s3cret-pull", 5).expect("bcrypt");
    let htpasswd = secrets.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("deployer:{hash}\n")).expect("htpasswd");
    let root = tempfile::tempdir().expect("dir");
    let mut config = bronze_registry::Config::ephemeral(&root.path().display().to_string());
    config.auth = bronze_registry::auth::AuthConfig {
        mode: bronze_registry::auth::Mode::Basic,
        htpasswd: htpasswd.display().to_string(),
        access: vec![bronze_registry::auth::Rule {
            users: vec!["deployer".into()],
            repositories: vec!["*".into()],
            actions: vec!["*".into()],
        }],
        ..Default::default()
    };
    let registry = bronze_registry::Server::bind(config)
        .await
        .expect("registry");
    let addr = registry.addr();
    tokio::spawn(registry.serve(stop.clone()));
    let pushed = format!("{addr}/private/{with}:1");
    // A docker config of this test's own, so the host's is left alone.
    let docker_config = tempfile::tempdir().expect("dir");
    let dc = docker_config.path().display().to_string();
    for args in [
        vec![
            "--config",
            dc.as_str(),
            "login",
            "-u",
            "deployer",
            "-p",
            "s3cret-pull",
            &addr.to_string(),
        ],
        vec!["--config", dc.as_str(), "tag", IMAGE, pushed.as_str()],
        vec!["--config", dc.as_str(), "push", pushed.as_str()],
        vec!["--config", dc.as_str(), "rmi", pushed.as_str()],
    ] {
        let args: Vec<String> = args.into_iter().map(|a| a.to_string()).collect();
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
    let mut authed = agent_config(&s.url(), &s.token, "authed", &[("creds", "yes")]);
    authed
        .registry_auth
        .insert(addr.to_string(), "deployer:s3cret-pull".into());
    let _a = Agent::start(authed).await;
    let _b = Agent::start(agent_config(
        &s.url(),
        &s.token,
        "anonymous",
        &[("creds", "no")],
    ))
    .await;
    let mut c = client(s.addr).await;
    ready_nodes(&mut c, 2).await;
    let create = |name: String, creds: &'static str| {
        let mut c = c.clone();
        let pushed = pushed.clone();
        async move {
            let mut sp = spec(&name, 1);
            sp.image = pushed;
            sp.placement = Some(pb::Placement {
                constraints: vec![format!("node.labels.creds=={creds}")],
                ..Default::default()
            });
            c.create_service(pb::CreateServiceRequest { spec: Some(sp) })
                .await
                .expect("create");
        }
    };
    // Both agents drive this host's one engine, and a pull that fails is
    // forgiven when the image is already there: so the anonymous agent
    // goes first, before the authed one has put the image on the engine.
    create(without.clone(), "no").await;
    let refused = eventually(
        Duration::from_secs(60),
        "the anonymous pull refused",
        || {
            let mut c = c.clone();
            let without = without.clone();
            async move {
                crate::harness::tasks(&mut c, &without)
                    .await
                    .into_iter()
                    .find_map(|t| t.status.filter(|s| s.state() == pb::TaskState::Rejected))
            }
        },
    )
    .await;
    create(with.clone(), "yes").await;
    converged(&mut c, &with, 1).await;
    assert!(refused.message.contains("pulling"), "{refused:?}");
    assert!(
        refused.err.to_lowercase().contains("auth") || refused.err.contains("401"),
        "the engine's reason: {refused:?}"
    );
    s.stop().await;
    stop.trigger();
    let _ = tokio::task::spawn_blocking(move || {
        Command::new("docker").args(["rmi", "-f", &pushed]).output()
    })
    .await;
}
