//! Services on the real engine: replicas spread over nodes, scaling,
//! restarts by policy, bad input.

use std::collections::HashSet;
use std::time::Duration;

use bronze_proto::scheduler::v1 as pb;

use crate::harness::{
    Agent, Cleanup, Scheduler, agent_config, client, containers, converged, docker, eventually,
    fast, image, ready_nodes, running, spec, tasks, unique,
};

#[tokio::test]
async fn replicas_spread_scale_and_restart_after_a_kill() {
    image().await;
    let name = unique("web");
    let _cleanup = Cleanup(vec![name.clone()]);
    let s = Scheduler::start(fast()).await;
    let mut agents = Vec::new();
    for h in ["spread-a", "spread-b", "spread-c"] {
        agents.push(Agent::start(agent_config(&s.url(), &s.token, h, &[])).await);
    }
    let mut c = client(s.addr).await;
    ready_nodes(&mut c, 3).await;
    let mut sp = spec(&name, 3);
    sp.ports.push(pb::PortConfig {
        target: 8080,
        published: 0,
        protocol: "tcp".into(),
    });
    c.create_service(pb::CreateServiceRequest { spec: Some(sp) })
        .await
        .expect("create");
    let ts = converged(&mut c, &name, 3).await;
    let nodes: HashSet<&str> = running(&ts).iter().map(|t| t.node_id.as_str()).collect();
    assert_eq!(nodes.len(), 3, "one per node");
    let d = docker().await;
    assert_eq!(
        containers(&d, &name).await.values().filter(|r| **r).count(),
        3
    );
    // Each task says which host port the engine gave it.
    for t in running(&ts) {
        let st = t.status.as_ref().expect("status");
        assert_eq!(st.ports.len(), 1, "{st:?}");
        assert!(st.ports[0].published > 0);
        assert!(!st.container_id.is_empty());
    }

    c.scale_service(pb::ScaleServiceRequest {
        service: name.clone(),
        replicas: 5,
    })
    .await
    .expect("scale up");
    converged(&mut c, &name, 5).await;
    c.scale_service(pb::ScaleServiceRequest {
        service: name.clone(),
        replicas: 2,
    })
    .await
    .expect("scale down");
    let ts = converged(&mut c, &name, 2).await;
    eventually(Duration::from_secs(30), "3 containers stopped", || {
        let d = d.clone();
        let name = name.clone();
        async move { (containers(&d, &name).await.values().filter(|r| **r).count() == 2).then_some(()) }
    })
    .await;

    // A killed container is replaced in its slot, after the restart delay.
    let victim = running(&ts)[0].clone();
    let cid = victim.status.as_ref().expect("status").container_id.clone();
    d.kill_container(
        &cid,
        None::<bollard::query_parameters::KillContainerOptions>,
    )
    .await
    .expect("kill");
    let ts = eventually(Duration::from_secs(30), "a replacement runs", || {
        let mut c = c.clone();
        let name = name.clone();
        let victim = victim.clone();
        async move {
            let ts = tasks(&mut c, &name).await;
            let replaced = running(&ts)
                .iter()
                .any(|t| t.slot == victim.slot && t.id != victim.id);
            (replaced && running(&ts).len() == 2).then_some(ts)
        }
    })
    .await;
    let old = ts
        .iter()
        .find(|t| t.id == victim.id)
        .expect("old task kept as history");
    let st = old.status.as_ref().expect("status");
    assert_eq!(st.state(), pb::TaskState::Failed, "{st:?}");
    assert_eq!(st.exit_code, Some(137));
    let new = ts
        .iter()
        .find(|t| {
            t.slot == victim.slot
                && t.id != victim.id
                && t.desired_state() == pb::TaskState::Running
        })
        .expect("new task");
    assert_eq!(new.attempt, 1);
    let failed_at = st.timestamp.expect("when");
    let start_after = new.start_after.expect("delayed");
    let waited = (start_after.seconds - failed_at.seconds) * 1000
        + i64::from(start_after.nanos - failed_at.nanos) / 1_000_000;
    assert!(waited >= 150, "the restart waited {waited} ms, delay 200ms");

    // Removing the service removes its containers.
    c.remove_service(pb::RemoveServiceRequest {
        service: name.clone(),
    })
    .await
    .expect("remove");
    eventually(Duration::from_secs(30), "containers removed", || {
        let d = d.clone();
        let name = name.clone();
        async move { containers(&d, &name).await.is_empty().then_some(()) }
    })
    .await;
    for a in agents {
        a.stop().await;
    }
    s.stop().await;
}

/// A task that exits: not restarted under `none`; under `on-failure` with
/// `max_attempts`, restarted that many times with a growing delay, then
/// left failed, with the engine's exit code and the reason.
#[tokio::test]
async fn restart_conditions_and_attempts() {
    image().await;
    let (once, limited) = (unique("once"), unique("limited"));
    let _cleanup = Cleanup(vec![once.clone(), limited.clone()]);
    let s = Scheduler::start(fast()).await;
    let _agent = Agent::start(agent_config(&s.url(), &s.token, "restarts", &[])).await;
    let mut c = client(s.addr).await;
    let mut sp = spec(&once, 1);
    sp.args = vec!["sh".into(), "-c".into(), "exit 3".into()];
    sp.restart_policy.as_mut().expect("policy").condition = "none".into();
    c.create_service(pb::CreateServiceRequest { spec: Some(sp) })
        .await
        .expect("create");
    let mut sp = spec(&limited, 1);
    sp.args = vec!["sh".into(), "-c".into(), "exit 4".into()];
    let p = sp.restart_policy.as_mut().expect("policy");
    p.condition = "on-failure".into();
    p.max_attempts = 2;
    c.create_service(pb::CreateServiceRequest { spec: Some(sp) })
        .await
        .expect("create");
    let ts = eventually(Duration::from_secs(60), "limited gave up", || {
        let mut c = c.clone();
        let limited = limited.clone();
        async move {
            let r = c
                .get_service(pb::GetServiceRequest {
                    service: limited.clone(),
                })
                .await
                .ok()?
                .into_inner();
            r.status.as_ref().is_some_and(|s| s.stalled).then_some(())?;
            Some(tasks(&mut c, &limited).await)
        }
    })
    .await;
    assert_eq!(ts.len(), 3, "the first run and two restarts: {ts:#?}");
    for t in &ts {
        let st = t.status.as_ref().expect("status");
        assert_eq!(st.state(), pb::TaskState::Failed);
        assert_eq!(st.exit_code, Some(4));
        assert_eq!(st.err, "task: non-zero exit (4)");
    }
    let r = c
        .get_service(pb::GetServiceRequest {
            service: limited.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    let status = r.status.expect("status");
    assert!(
        status.message.contains("restart policy gave up"),
        "{}",
        status.message
    );
    assert!(status.message.contains("exit code 4"), "{}", status.message);

    let ts = tasks(&mut c, &once).await;
    assert_eq!(ts.len(), 1, "condition none: never restarted");
    assert_eq!(ts[0].status.as_ref().expect("status").exit_code, Some(3));
    s.stop().await;
}

/// Bad specs are refused whole, naming the field; nothing is created.
#[tokio::test]
async fn invalid_specs_name_the_field_and_create_nothing() {
    let s = Scheduler::start(fast()).await;
    let mut c = client(s.addr).await;
    type Edit = Box<dyn Fn(&mut pb::ServiceSpec)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|p| p.name = "no spaces".into()), "spec.name"),
        (
            Box::new(|p| {
                p.placement = Some(pb::Placement {
                    constraints: vec!["node.labels.zone=eu".into()],
                    ..Default::default()
                })
            }),
            "spec.placement.constraints[0]",
        ),
        (
            Box::new(|p| {
                p.restart_policy = Some(pb::RestartPolicy {
                    condition: "always".into(),
                    ..Default::default()
                })
            }),
            "spec.restart_policy.condition",
        ),
        (
            Box::new(|p| {
                p.stop_grace_period = Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                })
            }),
            "spec.stop_grace_period",
        ),
        (
            Box::new(|p| {
                p.ports = vec![pb::PortConfig {
                    target: 80,
                    published: 70000,
                    protocol: "tcp".into(),
                }]
            }),
            "spec.ports[0].published",
        ),
        (
            Box::new(|p| p.image = "Not A Reference".into()),
            "spec.image",
        ),
        (
            Box::new(|p| {
                p.mode = Some(pb::service_spec::Mode::Replicated(pb::Replicated {
                    replicas: 10_000_000,
                }))
            }),
            "spec.replicated.replicas",
        ),
    ];
    for (edit, field) in cases {
        let mut sp = spec("valid-name", 1);
        edit(&mut sp);
        let e = c
            .create_service(pb::CreateServiceRequest { spec: Some(sp) })
            .await
            .expect_err(field);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    let list = c
        .list_services(pb::ListServicesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(list.services.is_empty(), "nothing half-created");
    s.stop().await;
}

/// What the engine refuses reaches `service ps` with the engine's words,
/// and is retried per policy: an image no registry has, a host port taken
/// by a process outside Bronze.
#[tokio::test]
async fn engine_refusals_are_reported_and_retried() {
    image().await;
    let (nopull, taken) = (unique("nopull"), unique("taken"));
    let _cleanup = Cleanup(vec![nopull.clone(), taken.clone()]);
    let s = Scheduler::start(fast()).await;
    let _agent = Agent::start(agent_config(&s.url(), &s.token, "refusals", &[])).await;
    let mut c = client(s.addr).await;
    // Nothing listens on 127.0.0.1:9 : the pull fails at once.
    let mut sp = spec(&nopull, 1);
    sp.image = "127.0.0.1:9/nothing/here:1".into();
    c.create_service(pb::CreateServiceRequest { spec: Some(sp) })
        .await
        .expect("create");
    // A port held by this test, outside Bronze.
    let holder = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let mut sp = spec(&taken, 1);
    sp.ports.push(pb::PortConfig {
        target: 8080,
        published: u32::from(port),
        protocol: "tcp".into(),
    });
    c.create_service(pb::CreateServiceRequest { spec: Some(sp) })
        .await
        .expect("create");
    for (service, needle) in [
        (
            &nopull,
            "pulling the image failed: the engine could not reach the registry 127.0.0.1:9",
        ),
        (&taken, "starting the container failed"),
    ] {
        let ts = eventually(Duration::from_secs(60), "retried after a refusal", || {
            let mut c = c.clone();
            let service = service.clone();
            async move {
                let ts = tasks(&mut c, &service).await;
                let rejected = ts
                    .iter()
                    .filter(|t| {
                        t.status
                            .as_ref()
                            .is_some_and(|s| s.state() == pb::TaskState::Rejected)
                    })
                    .count();
                (rejected >= 2).then_some(ts)
            }
        })
        .await;
        let st = ts
            .iter()
            .find_map(|t| {
                t.status
                    .as_ref()
                    .filter(|s| s.state() == pb::TaskState::Rejected)
            })
            .expect("rejected");
        assert!(st.message.contains(needle), "{st:?}");
        assert!(!st.err.is_empty(), "the engine's reason: {st:?}");
    }
    drop(holder);
    s.stop().await;
}

/// A health check decides when a task runs: starting until the check
/// passes, then running; once it fails, the agent stops the container,
/// reports it failed as unhealthy, and the restart policy starts another.
#[tokio::test]
async fn health_checks_gate_running_and_unhealthy_containers_are_replaced() {
    image().await;
    let name = unique("health");
    let _cleanup = Cleanup(vec![name.clone()]);
    let s = Scheduler::start(fast()).await;
    let _agent = Agent::start(agent_config(&s.url(), &s.token, "health", &[])).await;
    let mut c = client(s.addr).await;
    ready_nodes(&mut c, 1).await;
    let mut sp = spec(&name, 1);
    let ms = |n: i32| prost_types::Duration {
        seconds: 0,
        nanos: n * 1_000_000,
    };
    sp.healthcheck = Some(pb::HealthCheck {
        test: vec![
            "CMD".into(),
            "/bin/busybox".into(),
            "test".into(),
            "-f".into(),
            "/www/health".into(),
        ],
        interval: Some(ms(300)),
        timeout: Some(ms(900)),
        retries: 1,
        start_period: None,
    });
    let mut watch = c
        .watch(pb::WatchRequest {
            from_index: 0,
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    c.create_service(pb::CreateServiceRequest { spec: Some(sp) })
        .await
        .expect("create");
    // Seen through the watch: starting (not yet healthy), then running.
    let mut seen = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let ev = watch.message().await.expect("watch").expect("open");
            if let Some(pb::watch_event::Event::Task(t)) = ev.event
                && t.service_name == name
            {
                let st = t.status.clone().expect("status");
                if seen.last() != Some(&st.state()) {
                    seen.push(st.state());
                }
                if st.state() == pb::TaskState::Running {
                    assert_eq!(st.health, "healthy");
                    return t;
                }
            }
        }
    })
    .await
    .expect("the task runs once healthy");
    assert!(
        seen.contains(&pb::TaskState::Starting),
        "starting first: {seen:?}"
    );
    // Break the check inside the container.
    let cid = first.status.as_ref().expect("status").container_id.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("docker")
            .args(["exec", &cid, "/bin/busybox", "rm", "/www/health"])
            .output()
    })
    .await
    .expect("join")
    .expect("docker exec");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ts = eventually(
        Duration::from_secs(60),
        "replaced after failing its check",
        || {
            let mut c = c.clone();
            let name = name.clone();
            let first = first.id.clone();
            async move {
                let ts = tasks(&mut c, &name).await;
                let old_failed = ts.iter().any(|t| {
                    t.id == first
                        && t.status
                            .as_ref()
                            .is_some_and(|s| s.state() == pb::TaskState::Failed)
                });
                (old_failed && running(&ts).iter().any(|t| t.id != first)).then_some(ts)
            }
        },
    )
    .await;
    let old = ts.iter().find(|t| t.id == first.id).expect("old");
    let st = old.status.as_ref().expect("status");
    assert_eq!(st.err, "container unhealthy", "{st:?}");
    s.stop().await;
}
