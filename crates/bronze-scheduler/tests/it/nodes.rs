//! Nodes on the real engine: placement by constraints and reservations with
//! the pending reasons, global services, drain and pause, an agent that
//! dies and comes back, a wrong join token.

use std::collections::HashMap;
use std::time::Duration;

use bronze_proto::scheduler::v1 as pb;

use crate::harness::{
    Agent, Cleanup, Scheduler, agent_config, client, containers, converged, docker, eventually,
    fast, image, ready_nodes, running, spec, tasks, unique,
};

fn hosts(ts: &[pb::Task], nodes: &[pb::Node]) -> HashMap<String, usize> {
    let mut by = HashMap::new();
    for t in running(ts) {
        let host = nodes
            .iter()
            .find(|n| n.id == t.node_id)
            .map_or_else(|| t.node_id.clone(), |n| n.hostname.clone());
        *by.entry(host).or_default() += 1;
    }
    by
}

#[tokio::test]
async fn constraints_reservations_and_why_pending() {
    image().await;
    let (db, spread) = (unique("db"), unique("spread"));
    let _cleanup = Cleanup(vec![db.clone(), spread.clone()]);
    let s = Scheduler::start(fast()).await;
    let gib = 1i64 << 30;
    let mut small = agent_config(&s.url(), &s.token, "place-eu", &[("zone", "eu")]);
    small.memory_bytes = 512 << 20;
    let _eu = Agent::start(small).await;
    let _us1 = Agent::start(agent_config(
        &s.url(),
        &s.token,
        "place-us1",
        &[("zone", "us")],
    ))
    .await;
    let _us2 = Agent::start(agent_config(
        &s.url(),
        &s.token,
        "place-us2",
        &[("zone", "us")],
    ))
    .await;
    let mut c = client(s.addr).await;
    let nodes = ready_nodes(&mut c, 3).await;
    let mut sp = spec(&db, 1);
    sp.placement = Some(pb::Placement {
        constraints: vec!["node.labels.zone==eu".into()],
        ..Default::default()
    });
    sp.resources = Some(pb::ResourceRequirements {
        reservations: Some(pb::Resources {
            memory_bytes: gib,
            ..Default::default()
        }),
        limits: None,
    });
    c.create_service(pb::CreateServiceRequest { spec: Some(sp) })
        .await
        .expect("create");
    let why = eventually(Duration::from_secs(30), "pending with a reason", || {
        let mut c = c.clone();
        let db = db.clone();
        async move {
            let ts = tasks(&mut c, &db).await;
            let st = ts.first()?.status.clone()?;
            (st.state() == pb::TaskState::Pending).then_some(st.message)
        }
    })
    .await;
    assert_eq!(
        why,
        "0/3 nodes available: 2 fail constraint node.labels.zone==eu, 1 has 512 MiB of 1 GiB reserved memory free"
    );
    // `service inspect` (GetService) says it too.
    let status = c
        .get_service(pb::GetServiceRequest {
            service: db.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(status.message, format!("pending: {why}"));
    // A label added to a node with room: the task starts there, at once.
    c.update_node(pb::UpdateNodeRequest {
        node: "place-us1".into(),
        label_add: [("zone".to_string(), "eu".to_string())].into(),
        ..Default::default()
    })
    .await
    .expect("label");
    let ts = converged(&mut c, &db, 1).await;
    assert_eq!(hosts(&ts, &nodes).get("place-us1"), Some(&1));

    // Spread over zones first, then max_replicas_per_node.
    let mut sp = spec(&spread, 4);
    sp.placement = Some(pb::Placement {
        preferences: vec!["spread=node.labels.zone".into()],
        max_replicas_per_node: 2,
        ..Default::default()
    });
    c.create_service(pb::CreateServiceRequest { spec: Some(sp) })
        .await
        .expect("create");
    let ts = converged(&mut c, &spread, 4).await;
    let by = hosts(&ts, &nodes);
    // Zones: eu = place-eu + place-us1 (relabelled), us = place-us2.
    assert_eq!(by.get("place-us2"), Some(&2), "half in zone us: {by:?}");
    assert!(by.values().all(|n| *n <= 2), "{by:?}");
    s.stop().await;
}

#[tokio::test]
async fn global_services_run_once_per_node_also_on_late_nodes() {
    image().await;
    let name = unique("global");
    let _cleanup = Cleanup(vec![name.clone()]);
    let s = Scheduler::start(fast()).await;
    let _a = Agent::start(agent_config(&s.url(), &s.token, "global-a", &[])).await;
    let _b = Agent::start(agent_config(&s.url(), &s.token, "global-b", &[])).await;
    let mut c = client(s.addr).await;
    ready_nodes(&mut c, 2).await;
    let mut sp = spec(&name, 0);
    sp.mode = Some(pb::service_spec::Mode::Global(pb::Global {}));
    c.create_service(pb::CreateServiceRequest { spec: Some(sp) })
        .await
        .expect("create");
    converged(&mut c, &name, 2).await;
    let _late = Agent::start(agent_config(&s.url(), &s.token, "global-late", &[])).await;
    let nodes = ready_nodes(&mut c, 3).await;
    let ts = converged(&mut c, &name, 3).await;
    let by = hosts(&ts, &nodes);
    assert_eq!(by.len(), 3, "{by:?}");
    assert!(by.values().all(|n| *n == 1));
    s.stop().await;
}

#[tokio::test]
async fn drain_moves_tasks_and_pause_takes_no_new_ones() {
    image().await;
    let (web, more) = (unique("drain"), unique("paused"));
    let _cleanup = Cleanup(vec![web.clone(), more.clone()]);
    let s = Scheduler::start(fast()).await;
    let _a = Agent::start(agent_config(&s.url(), &s.token, "drain-a", &[])).await;
    let _b = Agent::start(agent_config(&s.url(), &s.token, "drain-b", &[])).await;
    let _c = Agent::start(agent_config(&s.url(), &s.token, "drain-c", &[])).await;
    let mut c = client(s.addr).await;
    let nodes = ready_nodes(&mut c, 3).await;
    c.create_service(pb::CreateServiceRequest {
        spec: Some(spec(&web, 3)),
    })
    .await
    .expect("create");
    converged(&mut c, &web, 3).await;
    c.update_node(pb::UpdateNodeRequest {
        node: "drain-a".into(),
        availability: pb::NodeAvailability::Drain.into(),
        ..Default::default()
    })
    .await
    .expect("drain");
    let ts = eventually(Duration::from_secs(60), "nothing left on drain-a", || {
        let mut c = c.clone();
        let web = web.clone();
        let nodes = nodes.clone();
        async move {
            let ts = converged(&mut c, &web, 3).await;
            (!hosts(&ts, &nodes).contains_key("drain-a")).then_some(ts)
        }
    })
    .await;
    // The moved task ran elsewhere before the drained one stopped.
    let a = nodes
        .iter()
        .find(|n| n.hostname == "drain-a")
        .expect("node");
    let old = ts.iter().find(|t| t.node_id == a.id).expect("old task");
    let new = running(&ts)
        .into_iter()
        .find(|t| t.slot == old.slot)
        .expect("replacement");
    let old_end = old
        .status
        .as_ref()
        .and_then(|s| s.timestamp)
        .expect("ended");
    let new_created = new.created_at.expect("created");
    assert!(new_created.seconds <= old_end.seconds, "started first");
    assert_eq!(
        old.status.as_ref().expect("status").state(),
        pb::TaskState::Shutdown
    );

    c.update_node(pb::UpdateNodeRequest {
        node: "drain-b".into(),
        availability: pb::NodeAvailability::Pause.into(),
        ..Default::default()
    })
    .await
    .expect("pause");
    c.create_service(pb::CreateServiceRequest {
        spec: Some(spec(&more, 2)),
    })
    .await
    .expect("create");
    let ts = converged(&mut c, &more, 2).await;
    assert_eq!(
        hosts(&ts, &nodes).get("drain-c"),
        Some(&2),
        "only the active node takes new tasks"
    );
    // The paused node kept what it ran.
    let ts = converged(&mut c, &web, 3).await;
    assert!(hosts(&ts, &nodes).contains_key("drain-b"));
    s.stop().await;
}

/// An agent that dies: after the grace its node is down and its tasks run
/// elsewhere. It comes back (same node id, its old containers still there):
/// the containers of tasks that moved are stopped and removed, nothing runs
/// twice.
#[tokio::test]
async fn an_agent_that_dies_loses_its_tasks_and_cleans_up_when_back() {
    image().await;
    let name = unique("lost");
    let _cleanup = Cleanup(vec![name.clone()]);
    let s = Scheduler::start(fast()).await;
    let a = Agent::start(agent_config(&s.url(), &s.token, "lost-a", &[])).await;
    let _b = Agent::start(agent_config(&s.url(), &s.token, "lost-b", &[])).await;
    let mut c = client(s.addr).await;
    let nodes = ready_nodes(&mut c, 2).await;
    let node_a = nodes
        .iter()
        .find(|n| n.hostname == "lost-a")
        .expect("a")
        .id
        .clone();
    c.create_service(pb::CreateServiceRequest {
        spec: Some(spec(&name, 2)),
    })
    .await
    .expect("create");
    let ts = converged(&mut c, &name, 2).await;
    let on_a: Vec<String> = running(&ts)
        .iter()
        .filter(|t| t.node_id == node_a)
        .map(|t| t.status.as_ref().expect("status").container_id.clone())
        .collect();
    assert_eq!(on_a.len(), 1);
    let data = a.stop().await;
    let ts = eventually(Duration::from_secs(30), "moved off the dead node", || {
        let mut c = c.clone();
        let name = name.clone();
        let node_a = node_a.clone();
        async move {
            let ts = tasks(&mut c, &name).await;
            let moved = running(&ts).len() == 2 && running(&ts).iter().all(|t| t.node_id != node_a);
            moved.then_some(ts)
        }
    })
    .await;
    let orphan = ts.iter().find(|t| t.node_id == node_a).expect("old task");
    assert_eq!(
        orphan.status.as_ref().expect("status").state(),
        pb::TaskState::Orphaned
    );
    let node = c
        .get_node(pb::GetNodeRequest {
            node: "lost-a".into(),
        })
        .await
        .expect("node")
        .into_inner();
    assert_eq!(node.state(), pb::NodeState::Down);
    // Its container still runs: nobody could stop it.
    let d = docker().await;
    assert_eq!(containers(&d, &name).await.get(&on_a[0]), Some(&true));
    let _a = Agent::start_in(agent_config(&s.url(), &s.token, "lost-a", &[]), data).await;
    eventually(Duration::from_secs(30), "the old container removed", || {
        let d = d.clone();
        let name = name.clone();
        let old = on_a[0].clone();
        async move {
            let cs = containers(&d, &name).await;
            let running = cs.values().filter(|r| **r).count();
            (!cs.contains_key(&old) && running == 2).then_some(())
        }
    })
    .await;
    let node = c
        .get_node(pb::GetNodeRequest {
            node: "lost-a".into(),
        })
        .await
        .expect("node")
        .into_inner();
    assert_eq!(node.state(), pb::NodeState::Ready);
    assert_eq!(node.id, node_a, "the same node came back");
    converged(&mut c, &name, 2).await;
    s.stop().await;
}

#[tokio::test]
async fn a_wrong_join_token_is_refused() {
    let s = Scheduler::start(fast()).await;
    let _bad = Agent::start(agent_config(&s.url(), "BRONZE-wrong", "intruder", &[])).await;
    let mut c = client(s.addr).await;
    // The good agent joins; the bad one never shows up.
    let _good = Agent::start(agent_config(&s.url(), &s.token, "member", &[])).await;
    let nodes = ready_nodes(&mut c, 1).await;
    assert_eq!(nodes[0].hostname, "member");
    let metrics = eventually(Duration::from_secs(10), "refusal counted", || {
        let addr = s.addr;
        async move {
            bronze_runtime::install_crypto_provider();
            let text = reqwest::get(format!("http://{addr}/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.lines()
                .any(|l| {
                    l.starts_with("bronze_scheduler_agent_sessions_refused_total")
                        && !l.ends_with(" 0")
                })
                .then_some(text)
        }
    })
    .await;
    assert!(metrics.contains("bronze_scheduler_agent_sessions "));
    // Rotating the token: new sessions need the new one.
    let rotated = c
        .join_token(pb::JoinTokenRequest { rotate: true })
        .await
        .expect("rotate")
        .into_inner()
        .token;
    assert_ne!(rotated, s.token);
    let _old = Agent::start(agent_config(&s.url(), &s.token, "stale-token", &[])).await;
    let _new = Agent::start(agent_config(&s.url(), &rotated, "fresh-token", &[])).await;
    let nodes = ready_nodes(&mut c, 2).await;
    let names: Vec<&str> = nodes.iter().map(|n| n.hostname.as_str()).collect();
    assert!(
        names.contains(&"fresh-token") && !names.contains(&"stale-token"),
        "{names:?}"
    );
    s.stop().await;
}

/// An agent that says nonsense: a first message that is not a hello, a bad
/// hostname, then reports about a task of another node, an unknown task,
/// an impossible state. Each is refused or ignored (and counted); the
/// real task is untouched.
#[tokio::test]
async fn malformed_agent_messages_never_change_state() {
    image().await;
    let name = unique("victim");
    let _cleanup = Cleanup(vec![name.clone()]);
    let s = Scheduler::start(fast()).await;
    let _agent = Agent::start(agent_config(&s.url(), &s.token, "honest", &[])).await;
    let mut c = client(s.addr).await;
    ready_nodes(&mut c, 1).await;
    c.create_service(pb::CreateServiceRequest {
        spec: Some(spec(&name, 1)),
    })
    .await
    .expect("create");
    let before = converged(&mut c, &name, 1).await;
    let victim = running(&before)[0].clone();

    let dial = || async {
        pb::dispatcher_client::DispatcherClient::connect(s.url())
            .await
            .expect("dispatcher")
    };
    let session = |first: pb::agent_message::Message| {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let _ = tx.try_send(pb::AgentMessage {
            message: Some(first),
        });
        (tx, tokio_stream::wrappers::ReceiverStream::new(rx))
    };
    // Not a hello first.
    let (_tx, rx) = session(pb::agent_message::Message::Heartbeat(pb::Heartbeat {}));
    let e = dial().await.session(rx).await.expect_err("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // A hello with a bad hostname.
    let (_tx, rx) = session(pb::agent_message::Message::Hello(pb::Hello {
        join_token: s.token.clone(),
        hostname: "not a host/name".into(),
        ..Default::default()
    }));
    let e = dial().await.session(rx).await.expect_err("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("hostname"), "{}", e.message());
    // A rogue node that joins properly, then lies.
    let (tx, rx) = session(pb::agent_message::Message::Hello(pb::Hello {
        join_token: s.token.clone(),
        hostname: "rogue".into(),
        ..Default::default()
    }));
    let mut inbound = dial().await.session(rx).await.expect("joined").into_inner();
    let welcome = inbound.message().await.expect("welcome").expect("open");
    assert!(matches!(
        welcome.message,
        Some(pb::dispatcher_message::Message::Welcome(_))
    ));
    let report = |task: &str, state: i32| pb::TaskReport {
        task_id: task.into(),
        status: Some(pb::TaskStatus {
            state,
            ..Default::default()
        }),
    };
    tx.send(pb::AgentMessage {
        message: Some(pb::agent_message::Message::Status(pb::StatusBatch {
            reports: vec![
                report(&victim.id, pb::TaskState::Complete.into()),
                report("no-such-task", pb::TaskState::Running.into()),
                report(&victim.id, 99),
                pb::TaskReport {
                    task_id: victim.id.clone(),
                    status: None,
                },
            ],
        })),
    })
    .await
    .expect("send");
    // Every one of the four is counted as ignored.
    eventually(Duration::from_secs(20), "reports ignored", || {
        let addr = s.addr;
        async move {
            bronze_runtime::install_crypto_provider();
            let text = reqwest::get(format!("http://{addr}/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let n: f64 = text
                .lines()
                .find(|l| l.starts_with("bronze_scheduler_agent_reports_ignored_total "))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (n >= 4.0).then_some(())
        }
    })
    .await;
    let after = converged(&mut c, &name, 1).await;
    let same = after
        .iter()
        .find(|t| t.id == victim.id)
        .expect("still there");
    assert_eq!(
        same.status, victim.status,
        "the rogue's reports changed nothing"
    );
    drop(tx);
    s.stop().await;
}
