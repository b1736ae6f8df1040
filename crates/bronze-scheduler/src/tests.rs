//! Orchestration with simulated agents (`sim`): placement, pending reasons,
//! restarts, node loss, drain, rollouts, restarts of the scheduler. The
//! same behaviours against the real engine are in `tests/it`.

use std::sync::Arc;
use std::time::Duration;

use bronze_store::{RedbStore, Store};

use crate::manager::{Event, Tunables};
use crate::model::{
    Availability, Constraint, Desired, Mode, NodeState, Order, Preference, Resources,
    RestartCondition, ServiceSpec, Task, TaskState, TaskStatus,
};
use crate::sim::Sim;
use crate::state::State;

const WAIT: Duration = Duration::from_secs(20);

fn tunables() -> Tunables {
    Tunables {
        heartbeat_period: Duration::from_millis(100),
        node_grace: Duration::from_millis(600),
        ..Tunables::default()
    }
}

fn mem() -> Arc<dyn Store> {
    Arc::new(RedbStore::in_memory().expect("store"))
}

const GIB: i64 = 1 << 30;

fn res(cpus: i64, memory: i64) -> Resources {
    Resources {
        nano_cpus: cpus * 1_000_000_000,
        memory_bytes: memory,
        pids: 0,
    }
}

fn spec(name: &str, replicas: u64) -> ServiceSpec {
    let mut s = ServiceSpec::new(name, "busybox");
    s.mode = Mode::Replicated { replicas };
    s.restart.delay = Duration::from_millis(50);
    s
}

fn wanted<'a>(s: &'a State, service: &str) -> Vec<&'a Arc<Task>> {
    let id = &s.find_service(service).expect("service").id;
    s.service_tasks(id)
        .filter(|t| t.desired == Desired::Running)
        .collect()
}

fn running(s: &State, service: &str) -> usize {
    wanted(s, service)
        .iter()
        .filter(|t| t.status.state == TaskState::Running)
        .count()
}

fn live(s: &State, service: &str) -> usize {
    let id = &s.find_service(service).expect("service").id;
    s.service_tasks(id)
        .filter(|t| !t.status.state.is_terminal())
        .count()
}

async fn three_nodes(sim: &Sim) -> Vec<String> {
    let mut ids = Vec::new();
    for (i, zone) in ["eu", "us", "us"].iter().enumerate() {
        ids.push(
            sim.join(
                &format!("node{i}"),
                &format!("host-{i}"),
                &[("zone", zone)],
                res(4, 8 * GIB),
            )
            .await,
        );
    }
    ids
}

#[tokio::test]
async fn replicas_spread_over_nodes_and_scale() {
    let sim = Sim::start(mem(), tunables()).await;
    let nodes = three_nodes(&sim).await;
    sim.create(spec("web", 3)).await.expect("create");
    let s = sim
        .until(WAIT, "3 running", |s| running(s, "web") == 3)
        .await;
    let mut on: Vec<&str> = wanted(&s, "web")
        .iter()
        .map(|t| t.node_id.as_str())
        .collect();
    on.sort_unstable();
    assert_eq!(
        on,
        nodes.iter().map(String::as_str).collect::<Vec<_>>(),
        "one per node"
    );
    sim.ask(|reply| Event::UpdateService {
        service: "web".into(),
        spec: None,
        replicas: Some(6),
        version: 0,
        force: false,
        reply,
    })
    .await
    .expect("scale");
    let s = sim
        .until(WAIT, "6 running", |s| running(s, "web") == 6)
        .await;
    for n in &nodes {
        assert_eq!(s.usage(n).tasks, 2, "two per node");
    }
    sim.ask(|reply| Event::UpdateService {
        service: "web".into(),
        spec: None,
        replicas: Some(2),
        version: 0,
        force: false,
        reply,
    })
    .await
    .expect("scale down");
    let s = sim
        .until(WAIT, "2 left", |s| {
            live(s, "web") == 2 && running(s, "web") == 2
        })
        .await;
    let slots: Vec<u64> = wanted(&s, "web").iter().map(|t| t.slot).collect();
    assert!(
        slots.iter().all(|s| *s <= 2),
        "surplus slots stopped: {slots:?}"
    );
}

#[tokio::test]
async fn pending_tasks_say_why_and_start_when_the_cluster_changes() {
    let sim = Sim::start(mem(), tunables()).await;
    sim.join("n-eu", "host-eu", &[("zone", "eu")], res(4, 512 << 20))
        .await;
    sim.join("n-us1", "host-us1", &[("zone", "us")], res(4, 8 * GIB))
        .await;
    sim.join("n-us2", "host-us2", &[("zone", "us")], res(4, 8 * GIB))
        .await;
    let mut s = spec("db", 1);
    s.placement.constraints = vec![Constraint::parse("node.labels.zone==eu").expect("c")];
    s.reservations.memory_bytes = GIB;
    sim.create(s).await.expect("create");
    let state = sim
        .until(WAIT, "pending with a reason", |s| {
            wanted(s, "db")
                .first()
                .is_some_and(|t| t.status.state == TaskState::Pending)
        })
        .await;
    assert_eq!(
        wanted(&state, "db")[0].status.message,
        "0/3 nodes available: 2 fail constraint node.labels.zone==eu, 1 has 512 MiB of 1 GiB reserved memory free"
    );
    // A label added to a node with room lets it in, at once.
    sim.ask(|reply| Event::UpdateNode {
        node: "host-us1".into(),
        availability: None,
        label_add: vec![("zone".into(), "eu".into())],
        label_rm: vec![],
        reply,
    })
    .await
    .expect("label");
    let state = sim
        .until(WAIT, "db running", |s| running(s, "db") == 1)
        .await;
    assert_eq!(wanted(&state, "db")[0].node_id, "n-us1");

    // A node that joins lets a pending task in.
    let mut big = spec("big", 1);
    big.reservations.memory_bytes = 16 * GIB;
    sim.create(big).await.expect("create");
    sim.until(WAIT, "big pending", |s| {
        wanted(s, "big")
            .first()
            .is_some_and(|t| t.status.message.contains("have at most"))
    })
    .await;
    sim.join("n-big", "host-big", &[], res(8, 32 * GIB)).await;
    let state = sim
        .until(WAIT, "big running", |s| running(s, "big") == 1)
        .await;
    assert_eq!(wanted(&state, "big")[0].node_id, "n-big");

    // Resources freed by a removed service let a pending task in.
    let mut fill = spec("fill", 1);
    fill.reservations.memory_bytes = 30 * GIB;
    fill.placement.constraints = vec![Constraint::parse("node.hostname==host-big").expect("c")];
    sim.create(fill).await.expect("create");
    sim.until(WAIT, "fill pending", |s| {
        wanted(s, "fill")
            .first()
            .is_some_and(|t| t.status.state == TaskState::Pending)
    })
    .await;
    sim.ask(|reply| Event::RemoveService("big".into(), reply))
        .await
        .expect("remove");
    sim.until(WAIT, "fill running", |s| running(s, "fill") == 1)
        .await;
}

#[tokio::test]
async fn reservations_are_never_over_committed_and_max_per_node_holds() {
    let sim = Sim::start(mem(), tunables()).await;
    sim.join("a", "host-a", &[], res(2, 4 * GIB)).await;
    sim.join("b", "host-b", &[], res(2, 4 * GIB)).await;
    let mut s = spec("cpu", 6);
    s.reservations.nano_cpus = 1_000_000_000;
    sim.create(s).await.expect("create");
    let state = sim
        .until(WAIT, "4 running, 2 pending", |s| {
            running(s, "cpu") == 4
                && wanted(s, "cpu")
                    .iter()
                    .filter(|t| t.status.state == TaskState::Pending)
                    .count()
                    == 2
        })
        .await;
    for n in ["a", "b"] {
        assert_eq!(state.usage(n).reserved.nano_cpus, 2_000_000_000);
    }
    let pending = wanted(&state, "cpu")
        .into_iter()
        .find(|t| t.status.state == TaskState::Pending)
        .expect("pending");
    assert_eq!(
        pending.status.message,
        "0/2 nodes available: 2 have at most 0 of 1 reserved CPUs free"
    );

    let mut m = spec("spread", 5);
    m.placement.max_replicas_per_node = 2;
    sim.create(m).await.expect("create");
    let state = sim
        .until(WAIT, "4 placed", |s| running(s, "spread") == 4)
        .await;
    let pending = wanted(&state, "spread")
        .into_iter()
        .find(|t| t.status.state == TaskState::Pending)
        .expect("one pending");
    assert_eq!(
        pending.status.message,
        "0/2 nodes available: 2 already run 2 tasks of this service (max_replicas_per_node)"
    );
}

/// A fixed host port taken on a node by another task makes that node
/// unsuitable, with the reason; freed, it takes the task.
#[tokio::test]
async fn a_taken_fixed_port_makes_a_node_unsuitable() {
    let sim = Sim::start(mem(), tunables()).await;
    sim.join("only", "host-only", &[], res(4, 8 * GIB)).await;
    let port = |s: &mut ServiceSpec| {
        s.ports.push(crate::model::PortConfig {
            target: 80,
            published: 8080,
            protocol: crate::model::Protocol::Tcp,
        })
    };
    let mut a = spec("first", 1);
    port(&mut a);
    sim.create(a).await.expect("create");
    sim.until(WAIT, "first runs", |s| running(s, "first") == 1)
        .await;
    let mut b = spec("second", 1);
    port(&mut b);
    sim.create(b).await.expect("create");
    let state = sim
        .until(WAIT, "second pending", |s| {
            wanted(s, "second")
                .first()
                .is_some_and(|t| t.status.state == TaskState::Pending)
        })
        .await;
    assert_eq!(
        wanted(&state, "second")[0].status.message,
        "0/1 nodes available: 1 already use host port 8080/tcp"
    );
    sim.ask(|reply| Event::RemoveService("first".into(), reply))
        .await
        .expect("remove");
    sim.until(WAIT, "second runs", |s| running(s, "second") == 1)
        .await;
}

#[tokio::test]
async fn spread_preferences_balance_zones_first() {
    let sim = Sim::start(mem(), tunables()).await;
    sim.join("eu1", "eu1", &[("zone", "eu")], res(4, 8 * GIB))
        .await;
    sim.join("us1", "us1", &[("zone", "us")], res(4, 8 * GIB))
        .await;
    sim.join("us2", "us2", &[("zone", "us")], res(4, 8 * GIB))
        .await;
    let mut s = spec("web", 4);
    s.placement.preferences = vec![Preference::parse("spread=node.labels.zone").expect("p")];
    sim.create(s).await.expect("create");
    let state = sim
        .until(WAIT, "4 running", |s| running(s, "web") == 4)
        .await;
    let on_eu = wanted(&state, "web")
        .iter()
        .filter(|t| t.node_id == "eu1")
        .count();
    assert_eq!(on_eu, 2, "half the tasks in each zone");
}

#[tokio::test]
async fn restart_policy_with_backoff_and_limits() {
    let sim = Sim::start(mem(), tunables()).await;
    let nodes = three_nodes(&sim).await;
    let mut s = spec("job", 1);
    s.restart.max_attempts = 2;
    s.restart.delay = Duration::from_millis(100);
    s.restart.condition = RestartCondition::OnFailure;
    sim.create(s).await.expect("create");
    let mut failed_at = Vec::new();
    let mut previous = String::new();
    for round in 0..3 {
        let state = sim
            .until(WAIT, "a new running task", |s| {
                running(s, "job") == 1 && wanted(s, "job")[0].id != previous
            })
            .await;
        let t = wanted(&state, "job")[0].clone();
        previous = t.id.clone();
        assert!(nodes.contains(&t.node_id));
        if round > 0 {
            let since = t.start_after.since(failed_at[round - 1]);
            let expected = Duration::from_millis(100 << (round - 1));
            assert!(
                since >= expected,
                "round {round}: waited {since:?}, backoff {expected:?}"
            );
        }
        let mut st = TaskStatus::new(TaskState::Failed, "exited");
        st.exit_code = Some(1);
        failed_at.push(crate::model::Time::now());
        sim.report(&t.node_id, &t.id, st).await;
        if round == 2 {
            break;
        }
    }
    // Two restarts used: the third failure stays.
    let state = sim
        .until(WAIT, "stalled", |s| {
            wanted(s, "job")
                .first()
                .is_some_and(|t| t.status.state == TaskState::Failed)
        })
        .await;
    let svc = state.find_service("job").expect("svc");
    let status = crate::api::service_status(&state, svc);
    assert!(status.stalled, "{status:?}");
    assert!(
        status.message.contains("restart policy gave up"),
        "{}",
        status.message
    );

    // condition none: a completed task is not restarted.
    let mut s = spec("once", 1);
    s.restart.condition = RestartCondition::None;
    sim.create(s).await.expect("create");
    let state = sim
        .until(WAIT, "once runs", |s| running(s, "once") == 1)
        .await;
    let t = wanted(&state, "once")[0].clone();
    let mut st = TaskStatus::new(TaskState::Failed, "exited");
    st.exit_code = Some(3);
    sim.report(&t.node_id, &t.id, st).await;
    let state = sim
        .until(WAIT, "ended", |s| {
            wanted(s, "once")[0].status.state == TaskState::Failed
        })
        .await;
    let id = &state.find_service("once").expect("svc").id;
    assert_eq!(state.service_tasks(id).count(), 1, "no new task");
}

#[tokio::test]
async fn a_silent_node_goes_down_and_its_tasks_move() {
    let sim = Sim::start(mem(), tunables()).await;
    three_nodes(&sim).await;
    sim.create(spec("web", 3)).await.expect("create");
    let state = sim
        .until(WAIT, "3 running", |s| running(s, "web") == 3)
        .await;
    let victim = wanted(&state, "web")[0].node_id.clone();
    sim.silence(&victim);
    let state = sim
        .until(WAIT, "moved", |s| {
            s.node(&victim).is_some_and(|n| n.state == NodeState::Down)
                && running(s, "web") == 3
                && wanted(s, "web").iter().all(|t| t.node_id != victim)
        })
        .await;
    let orphaned = state
        .node_tasks(&victim)
        .filter(|t| t.status.state == TaskState::Orphaned)
        .count();
    assert_eq!(orphaned, 1);
    // It comes back: its old task is asked to stop, nothing doubles.
    sim.join(&victim, "back", &[], res(4, 8 * GIB)).await;
    let state = sim
        .until(WAIT, "old task stopped", |s| {
            s.node_tasks(&victim)
                .all(|t| t.desired == Desired::Shutdown)
        })
        .await;
    assert_eq!(running(&state, "web"), 3);
}

#[tokio::test]
async fn drain_starts_elsewhere_first_and_pause_takes_nothing_new() {
    let sim = Sim::start(mem(), tunables()).await;
    three_nodes(&sim).await;
    sim.create(spec("web", 3)).await.expect("create");
    sim.until(WAIT, "3 running", |s| running(s, "web") == 3)
        .await;
    sim.ask(|reply| Event::UpdateNode {
        node: "host-0".into(),
        availability: Some(Availability::Drain),
        label_add: vec![],
        label_rm: vec![],
        reply,
    })
    .await
    .expect("drain");
    let state = sim
        .until(WAIT, "moved off", |s| {
            s.node_tasks("node0")
                .all(|t| t.desired == Desired::Shutdown && t.status.state.is_terminal())
                && running(s, "web") == 3
        })
        .await;
    // The replacement ran before the drained task was told to stop.
    let old = state.node_tasks("node0").next().expect("old task").clone();
    let new = wanted(&state, "web")
        .into_iter()
        .find(|t| t.slot == old.slot)
        .expect("replacement");
    assert!(
        new.started_at <= old.status.timestamp,
        "start-first: new started {:?}, old {:?}",
        new.started_at,
        old.status
    );
    sim.ask(|reply| Event::UpdateNode {
        node: "host-1".into(),
        availability: Some(Availability::Pause),
        label_add: vec![],
        label_rm: vec![],
        reply,
    })
    .await
    .expect("pause");
    sim.create(spec("more", 2)).await.expect("create");
    let state = sim
        .until(WAIT, "more runs", |s| running(s, "more") == 2)
        .await;
    assert!(wanted(&state, "more").iter().all(|t| t.node_id == "node2"));
}

#[tokio::test]
async fn global_services_follow_nodes() {
    let sim = Sim::start(mem(), tunables()).await;
    three_nodes(&sim).await;
    let mut s = spec("agent", 0);
    s.mode = Mode::Global;
    s.placement.constraints = vec![Constraint::parse("node.labels.zone!=eu").expect("c")];
    sim.create(s).await.expect("create");
    sim.until(WAIT, "2 running", |s| running(s, "agent") == 2)
        .await;
    sim.join("late", "late", &[("zone", "ap")], res(1, GIB))
        .await;
    let state = sim
        .until(WAIT, "3 running", |s| running(s, "agent") == 3)
        .await;
    assert!(wanted(&state, "agent").iter().any(|t| t.node_id == "late"));
}

async fn update_to(sim: &Sim, image: &str, order: Order, parallelism: u64) {
    let state = sim.state();
    let svc = state.find_service("web").expect("svc");
    let mut s = ServiceSpec::clone(&state.current(svc).expect("spec").spec);
    s.image = image.into();
    s.update.order = order;
    s.update.parallelism = parallelism;
    sim.ask(|reply| Event::UpdateService {
        service: "web".into(),
        spec: Some(s),
        replicas: None,
        version: 0,
        force: false,
        reply,
    })
    .await
    .expect("update");
}

fn images(s: &State) -> Vec<String> {
    let svc = s.find_service("web").expect("svc");
    wanted(s, "web")
        .iter()
        .map(|t| {
            s.version(&svc.id, t.spec_version)
                .map(|v| v.spec.image.clone())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn rolling_updates_and_rollback() {
    let sim = Sim::start(mem(), tunables()).await;
    three_nodes(&sim).await;
    sim.create(spec("web", 4)).await.expect("create");
    sim.until(WAIT, "4 running", |s| running(s, "web") == 4)
        .await;
    // Watch the rollout: with stop-first and parallelism 2, never fewer
    // than 2 running; with start-first, never fewer than 4.
    let mut rx = sim.snapshot.clone();
    update_to(&sim, "busybox:v2", Order::StopFirst, 2).await;
    let mut min = usize::MAX;
    loop {
        let s = rx.borrow_and_update().clone();
        min = min.min(running(&s, "web"));
        let done = s
            .find_service("web")
            .is_some_and(|x| x.update.state == crate::model::UpdateState::Completed);
        if done && running(&s, "web") == 4 {
            assert!(images(&s).iter().all(|i| i == "busybox:v2"));
            break;
        }
        tokio::time::timeout(WAIT, rx.changed())
            .await
            .expect("progress")
            .expect("open");
    }
    assert_eq!(min, 2, "stop-first, two at a time");
    update_to(&sim, "busybox:v3", Order::StartFirst, 1).await;
    let mut min = usize::MAX;
    let mut max_live = 0;
    loop {
        let s = rx.borrow_and_update().clone();
        min = min.min(running(&s, "web"));
        max_live = max_live.max(wanted(&s, "web").len());
        let done = s
            .find_service("web")
            .is_some_and(|x| x.update.state == crate::model::UpdateState::Completed);
        if done && running(&s, "web") == 4 && live(&s, "web") == 4 {
            assert!(images(&s).iter().all(|i| i == "busybox:v3"));
            break;
        }
        tokio::time::timeout(WAIT, rx.changed())
            .await
            .expect("progress")
            .expect("open");
    }
    assert_eq!(min, 4, "start-first keeps every replica up");
    // Old tasks drain and stop while the next batch starts (as Swarm):
    // what is bounded is the tasks meant to run, one extra at a time.
    assert_eq!(max_live, 5, "one extra at a time");
    sim.ask(|reply| Event::Rollback("web".into(), reply))
        .await
        .expect("rollback");
    let s = sim
        .until(WAIT, "rolled back", |s| {
            s.find_service("web")
                .is_some_and(|x| x.update.state == crate::model::UpdateState::RollbackCompleted)
                && running(s, "web") == 4
        })
        .await;
    assert!(
        images(&s).iter().all(|i| i == "busybox:v2"),
        "{:?}",
        images(&s)
    );
}

/// A rollout whose batches wait a delay goes on when the delay is over,
/// with nothing else happening meanwhile.
#[tokio::test]
async fn a_batch_delay_does_not_stall_the_rollout() {
    let sim = Sim::start(mem(), tunables()).await;
    three_nodes(&sim).await;
    sim.create(spec("web", 3)).await.expect("create");
    sim.until(WAIT, "3 running", |s| running(s, "web") == 3)
        .await;
    let state = sim.state();
    let svc = state.find_service("web").expect("svc");
    let mut s = ServiceSpec::clone(&state.current(svc).expect("spec").spec);
    s.image = "busybox:v2".into();
    s.update.delay = Duration::from_millis(100);
    sim.ask(|reply| Event::UpdateService {
        service: "web".into(),
        spec: Some(s),
        replicas: None,
        version: 0,
        force: false,
        reply,
    })
    .await
    .expect("update");
    let s = sim
        .until(WAIT, "rolled", |s| {
            s.find_service("web")
                .is_some_and(|x| x.update.state == crate::model::UpdateState::Completed)
        })
        .await;
    assert!(images(&s).iter().all(|i| i == "busybox:v2"));
}

#[tokio::test]
async fn a_restarted_manager_resumes_without_duplicates() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("s.redb");
    let open = || -> Arc<dyn Store> { Arc::new(RedbStore::open(&path).expect("store")) };
    {
        let sim = Sim::start(open(), tunables()).await;
        three_nodes(&sim).await;
        sim.create(spec("web", 3)).await.expect("create");
        sim.until(WAIT, "3 running", |s| running(s, "web") == 3)
            .await;
        update_to(&sim, "busybox:v2", Order::StopFirst, 1).await;
        // Stop in the middle of the rollout.
        sim.until(WAIT, "rollout under way", |s| {
            images(s).iter().any(|i| i == "busybox:v2")
        })
        .await;
    }
    // Let the first manager's task notice its shutdown and drop the file.
    let store = loop {
        match RedbStore::open(&path) {
            Ok(s) => break Arc::new(s) as Arc<dyn Store>,
            Err(_) => tokio::task::yield_now().await,
        }
    };
    let sim = Sim::start(store, tunables()).await;
    for i in 0..3 {
        sim.join(
            &format!("node{i}"),
            &format!("host-{i}"),
            &[],
            res(4, 8 * GIB),
        )
        .await;
    }
    let s = sim
        .until(WAIT, "rollout finished", |s| {
            s.find_service("web")
                .is_some_and(|x| x.update.state == crate::model::UpdateState::Completed)
                && running(s, "web") == 3
                && live(s, "web") == 3
        })
        .await;
    assert!(images(&s).iter().all(|i| i == "busybox:v2"));
    let slots: std::collections::BTreeSet<u64> = wanted(&s, "web").iter().map(|t| t.slot).collect();
    assert_eq!(slots.len(), 3, "one task per slot");
}

/// A new task that fails within `monitor` of being up: with
/// failure_action rollback the service goes back to the previous version
/// by itself; with pause the rollout stops where it is.
#[tokio::test]
async fn failing_rollouts_roll_back_or_pause() {
    use crate::model::UpdateState;
    use crate::model::spec::FailureAction;
    let sim = Sim::start(mem(), tunables()).await;
    three_nodes(&sim).await;
    let mut s = spec("web", 3);
    s.update.failure_action = FailureAction::Rollback;
    s.update.monitor = Duration::from_millis(500);
    s.rollback.monitor = Duration::from_millis(200);
    s.restart.delay = Duration::from_millis(100);
    sim.create(s).await.expect("create");
    sim.until(WAIT, "3 running", |s| running(s, "web") == 3)
        .await;
    let bad = |image: &'static str| {
        let state = sim.state();
        let svc = state.find_service("web").expect("svc");
        let mut s = ServiceSpec::clone(&state.current(svc).expect("spec").spec);
        s.image = image.into();
        s
    };
    let sim = &sim;
    let fail_first = |image: &'static str| async move {
        let state = sim
            .until(WAIT, "a new task up", |s| {
                let svc = s.find_service("web").expect("svc");
                s.service_tasks(&svc.id).any(|t| {
                    !t.up_at.is_zero()
                        && s.version(&svc.id, t.spec_version)
                            .is_some_and(|v| v.spec.image == image)
                })
            })
            .await;
        let svc = state.find_service("web").expect("svc").clone();
        let t = state
            .service_tasks(&svc.id)
            .find(|t| {
                !t.up_at.is_zero()
                    && state
                        .version(&svc.id, t.spec_version)
                        .is_some_and(|v| v.spec.image == image)
            })
            .expect("up")
            .clone();
        let mut st = TaskStatus::new(TaskState::Failed, "exited");
        st.exit_code = Some(2);
        st.err = "task: non-zero exit (2)".into();
        sim.report(&t.node_id, &t.id, st).await;
    };
    let s2 = bad("busybox:broken");
    sim.ask(|reply| Event::UpdateService {
        service: "web".into(),
        spec: Some(s2),
        replicas: None,
        version: 0,
        force: false,
        reply,
    })
    .await
    .expect("update");
    fail_first("busybox:broken").await;
    let state = sim
        .until(WAIT, "rolled back by itself", |s| {
            s.find_service("web")
                .is_some_and(|x| x.update.state == UpdateState::RollbackCompleted)
                && running(s, "web") == 3
        })
        .await;
    let svc = state.find_service("web").expect("svc");
    assert!(svc.update.automatic);
    assert!(
        svc.update.message.contains("update rolled back"),
        "{}",
        svc.update.message
    );
    assert!(
        images(&state).iter().all(|i| i == "busybox"),
        "{:?}",
        images(&state)
    );

    // pause: the rollout stops, nothing more is replaced.
    let mut s3 = bad("busybox:also-broken");
    s3.update.failure_action = FailureAction::Pause;
    // The next batch waits: the failure is seen before it.
    s3.update.delay = Duration::from_secs(3);
    sim.ask(|reply| Event::UpdateService {
        service: "web".into(),
        spec: Some(s3),
        replicas: None,
        version: 0,
        force: false,
        reply,
    })
    .await
    .expect("update");
    fail_first("busybox:also-broken").await;
    let state = sim
        .until(WAIT, "paused", |s| {
            s.find_service("web")
                .is_some_and(|x| x.update.state == UpdateState::Paused)
        })
        .await;
    let old = images(&state).iter().filter(|i| *i == "busybox").count();
    assert_eq!(
        old,
        2,
        "the other slots were not touched: {:?}",
        images(&state)
    );
    let svc = state.find_service("web").expect("svc");
    assert!(
        svc.update.message.starts_with("update paused"),
        "{}",
        svc.update.message
    );
}

/// Deploy on push, the manager's part: a push during a rollout waits and
/// is applied when it ends (the newest wins), the same digest again does
/// nothing, and a digest that was rolled back is not deployed again by a
/// push of it.
#[tokio::test]
async fn autodeploy_queues_during_a_rollout_and_skips_a_rolled_back_digest() {
    use crate::model::UpdateState;
    use crate::model::autodeploy::Push;
    use crate::model::spec::FailureAction;
    let sim = Sim::start(
        mem(),
        Tunables {
            registry_names: vec!["reg.test:5000".into()],
            ..tunables()
        },
    )
    .await;
    three_nodes(&sim).await;
    let mut s = spec("app", 1);
    s.image = "reg.test:5000/team/app:latest".into();
    s.labels.insert("bronze.autodeploy".into(), "true".into());
    s.update.failure_action = FailureAction::Rollback;
    // Each rollout stays under way a while after its task is up.
    s.update.monitor = Duration::from_millis(800);
    s.rollback.monitor = Duration::from_millis(100);
    sim.create(s).await.expect("create");
    sim.until(WAIT, "1 running", |s| running(s, "app") == 1)
        .await;
    let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let push = |d: &str| Push {
        repository: "team/app".into(),
        tag: "latest".into(),
        digest: d.to_string(),
    };
    let pinned = |d: &str| format!("reg.test:5000/team/app:latest@{d}");
    let image = |s: &State| {
        let svc = s.find_service("app").expect("svc");
        s.current(svc).expect("spec").spec.image.clone()
    };
    // A no-op update through the same channel: once it is answered, every
    // event sent before it was applied.
    let sync = || async {
        sim.ask(|reply| Event::UpdateService {
            service: "app".into(),
            spec: None,
            replicas: None,
            version: 0,
            force: false,
            reply,
        })
        .await
        .expect("sync")
    };
    let (d1, d2, d3) = (digest('1'), digest('2'), digest('3'));
    for d in [&d1, &d2, &d3] {
        sim.events.send(Event::Pushed(push(d))).await.expect("send");
    }
    sync().await;
    // d1 rolls; d2 then d3 came during it: only the newest waits.
    let state = sim.state();
    let svc = state.find_service("app").expect("svc");
    assert_eq!(image(&state), pinned(&d1));
    assert_eq!(svc.update.state, UpdateState::Updating);
    assert_eq!(svc.autodeploy_queued, Some(push(&d3)));
    let state = sim
        .until(WAIT, "the queued push applied and rolled", |s| {
            image(s) == pinned(&d3)
                && s.find_service("app")
                    .is_some_and(|x| x.update.state == UpdateState::Completed)
        })
        .await;
    let svc = state.find_service("app").expect("svc");
    assert_eq!((svc.version, svc.autodeploy_queued.clone()), (3, None));
    assert!(svc.update.message.contains(&d3), "{}", svc.update.message);
    // The same digest again: nothing.
    sim.events
        .send(Event::Pushed(push(&d3)))
        .await
        .expect("send");
    sync().await;
    assert_eq!(sim.state().find_service("app").expect("svc").version, 3);

    // d4's task fails: rolled back by itself, d4 remembered and skipped.
    let d4 = digest('4');
    sim.events
        .send(Event::Pushed(push(&d4)))
        .await
        .expect("send");
    let state = sim
        .until(WAIT, "d4's task up", |s| {
            let svc = s.find_service("app").expect("svc");
            s.service_tasks(&svc.id).any(|t| {
                !t.up_at.is_zero()
                    && !t.status.state.is_terminal()
                    && s.version(&svc.id, t.spec_version)
                        .is_some_and(|v| v.spec.image == pinned(&d4))
            })
        })
        .await;
    let svc = state.find_service("app").expect("svc");
    let t = state
        .service_tasks(&svc.id)
        .find(|t| !t.up_at.is_zero() && !t.status.state.is_terminal() && t.spec_version == 4)
        .expect("d4's task")
        .clone();
    sim.report(
        &t.node_id,
        &t.id,
        TaskStatus::new(TaskState::Failed, "unhealthy"),
    )
    .await;
    let state = sim
        .until(WAIT, "rolled back", |s| {
            s.find_service("app")
                .is_some_and(|x| x.update.state == UpdateState::RollbackCompleted)
        })
        .await;
    let svc = state.find_service("app").expect("svc");
    assert_eq!(svc.autodeploy_failed, d4);
    assert_eq!(image(&state), pinned(&d3));
    assert!(
        svc.update.automatic
            && svc.update.message.contains("rolled back")
            && svc.update.message.contains(&d4),
        "{}",
        svc.update.message
    );
    let versions = (svc.version, svc.previous_version);
    sim.events
        .send(Event::Pushed(push(&d4)))
        .await
        .expect("send");
    sync().await;
    let svc = sim.state().find_service("app").expect("svc").clone();
    assert_eq!((svc.version, svc.previous_version), versions);
}

/// Mounts secret `source` (its latest version) at /run/secrets/<source>.
fn secret_ref(source: &str) -> crate::model::FileRef {
    crate::model::FileRef {
        source: source.into(),
        target: format!("/run/secrets/{source}"),
        uid: 0,
        gid: 0,
        mode: 0o400,
        version: 0,
    }
}

fn put_secret(
    name: &str,
    data: &[u8],
    how: crate::manager::Put,
) -> impl FnOnce(tokio::sync::oneshot::Sender<Result<String, crate::Error>>) -> Event {
    let (name, data) = (name.to_string(), data.to_vec());
    move |reply| Event::PutObject {
        kind: crate::model::Kind::Secret,
        name,
        data: crate::model::Plain(data),
        labels: Default::default(),
        how,
        reply,
    }
}

#[tokio::test]
async fn a_new_secret_version_rolls_its_services_and_removal_waits_for_them() {
    use crate::manager::Put;
    use crate::model::Kind;
    let store = mem();
    let sim = Sim::start(store.clone(), tunables()).await;
    three_nodes(&sim).await;
    sim.ask(put_secret("db_pw", b"first-value-8a1", Put::Create))
        .await
        .expect("created");
    // A service naming a secret that does not exist is refused, by field.
    let mut s = spec("api", 2);
    s.secrets.push(secret_ref("nope"));
    let e = sim.create(s.clone()).await.expect_err("undefined secret");
    assert!(e.to_string().contains("spec.secrets[0].source"), "{e}");
    assert!(sim.state().find_service("api").is_none(), "nothing stored");
    s.secrets[0].source = "db_pw".into();
    sim.create(s).await.expect("created");
    let st = sim
        .until(WAIT, "api runs", |s| running(s, "api") == 2)
        .await;
    let svc = st.find_service("api").expect("api");
    assert_eq!(
        st.current(svc).expect("v").spec.secrets[0].version,
        1,
        "pinned"
    );

    // The same data again changes nothing; new data is version 2 and a
    // rollout of the service.
    sim.ask(put_secret("db_pw", b"first-value-8a1", Put::Update))
        .await
        .expect("same");
    assert_eq!(
        sim.state()
            .find_object(Kind::Secret, "db_pw")
            .expect("o")
            .versions
            .len(),
        1
    );
    sim.ask(put_secret("db_pw", b"second-value-77c", Put::Update))
        .await
        .expect("updated");
    let st = sim
        .until(WAIT, "api rolled to version 2 of the secret", |s| {
            let svc = s.find_service("api").expect("api");
            let v = s.current(svc).expect("v");
            v.spec.secrets[0].version == 2
                && wanted(s, "api")
                    .iter()
                    .all(|t| t.spec_version == svc.version && t.status.state == TaskState::Running)
                && wanted(s, "api").len() == 2
        })
        .await;
    assert_eq!(st.find_service("api").expect("api").version, 2);

    // Removing it is refused while the service uses it, naming it.
    let e = sim
        .ask(|reply| Event::RemoveObject {
            kind: Kind::Secret,
            name: "db_pw".into(),
            reply,
        })
        .await
        .expect_err("in use");
    assert!(e.to_string().contains("api"), "{e}");

    // A rollback returns to the old value too: the old version pins it.
    sim.ask(|reply| Event::Rollback("api".into(), reply))
        .await
        .expect("rollback");
    sim.until(WAIT, "api back on version 1 of the secret", |s| {
        let svc = s.find_service("api").expect("api");
        s.current(svc).expect("v").spec.secrets[0].version == 1
            && wanted(s, "api")
                .iter()
                .all(|t| t.spec_version == svc.version && t.status.state == TaskState::Running)
    })
    .await;

    // The store holds no value in clear.
    let dump: Vec<u8> = [
        "scheduler.secrets",
        "scheduler.versions",
        "scheduler.services",
    ]
    .iter()
    .flat_map(|ns| store.list(ns).expect("list"))
    .flat_map(|(k, v)| [k.into_bytes(), v].concat())
    .collect();
    assert!(!dump.is_empty());
    for value in [&b"first-value-8a1"[..], b"second-value-77c"] {
        assert!(!dump.windows(value.len()).any(|w| w == value));
    }
}

#[tokio::test]
async fn old_object_versions_are_pruned_unless_a_service_version_mounts_them() {
    use crate::manager::Put;
    use crate::model::Kind;
    let sim = Sim::start(mem(), tunables()).await;
    sim.ask(put_secret("tls", b"v1", Put::Create))
        .await
        .expect("created");
    let mut s = spec("edge", 0);
    s.secrets.push(secret_ref("tls"));
    sim.create(s).await.expect("created");
    for i in 2..=25u32 {
        sim.ask(put_secret("tls", format!("v{i}").as_bytes(), Put::Update))
            .await
            .expect("updated");
    }
    let st = sim.state();
    let versions: Vec<u64> = st
        .find_object(Kind::Secret, "tls")
        .expect("tls")
        .versions
        .iter()
        .map(|v| v.version)
        .collect();
    // The last ten, and those the service's kept versions pin.
    let svc = st.find_service("edge").expect("edge");
    let pinned: Vec<u64> = st
        .service_versions(&svc.id)
        .iter()
        .filter_map(|v| st.version(&svc.id, *v))
        .map(|v| v.spec.secrets[0].version)
        .collect();
    assert!(versions.len() < 25, "{versions:?}");
    assert!((16..=25).all(|v| versions.contains(&v)), "{versions:?}");
    for p in pinned {
        assert!(
            versions.contains(&p),
            "version {p} pinned but pruned: {versions:?}"
        );
    }
}
