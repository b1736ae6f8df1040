//! Rolling updates on the real engine, watched through the Watch stream so
//! every intermediate state is seen: stop-first and start-first with
//! parallelism, rollback, and a scheduler killed (SIGKILL) in the middle of
//! an update.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use bronze_proto::scheduler::v1 as pb;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::harness::{
    Agent, Cleanup, Client, Scheduler, agent_config, client, containers, converged, docker,
    eventually, fast, image, ready_nodes, spec, tasks, unique,
};

fn state_of(t: &pb::Task) -> pb::TaskState {
    t.status
        .as_ref()
        .map_or(pb::TaskState::Unspecified, pb::TaskStatus::state)
}

/// Counts what a rollout went through: the fewest containers running at
/// any index, the most tasks alive at any index, the most of those meant
/// to keep running (not draining or stopping) at any index.
struct Observed {
    min_running: usize,
    max_live: usize,
    max_wanted: usize,
}

/// Follows the service's tasks through Watch until `done` holds for the
/// service (read at the end of each index); measures each index's state.
async fn observe(
    c: &mut Client,
    service: &str,
    done: impl Fn(&pb::ServiceResponse) -> bool,
) -> Observed {
    let mut stream = c
        .watch(pb::WatchRequest {
            from_index: 0,
            service: service.into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut tasks: HashMap<String, pb::Task> = HashMap::new();
    let mut svc: Option<pb::ServiceResponse> = None;
    let mut obs = Observed {
        min_running: usize::MAX,
        max_live: 0,
        max_wanted: 0,
    };
    let mut index = 0;
    let measure = |tasks: &HashMap<String, pb::Task>, obs: &mut Observed| {
        let running = tasks
            .values()
            .filter(|t| state_of(t) == pb::TaskState::Running)
            .count();
        let live: Vec<&pb::Task> = tasks
            .values()
            .filter(|t| {
                matches!(
                    state_of(t),
                    pb::TaskState::Assigned
                        | pb::TaskState::Preparing
                        | pb::TaskState::Starting
                        | pb::TaskState::Running
                )
            })
            .collect();
        let wanted = live
            .iter()
            .filter(|t| t.desired_state() == pb::TaskState::Running)
            .count();
        obs.min_running = obs.min_running.min(running);
        obs.max_live = obs.max_live.max(live.len());
        obs.max_wanted = obs.max_wanted.max(wanted);
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let Ok(ev) = tokio::time::timeout_at(deadline, stream.message()).await else {
            panic!("the rollout did not end in time: {svc:#?} {tasks:#?}");
        };
        let ev = ev.expect("watch stream").expect("open");
        if ev.index != index {
            if index != 0 {
                measure(&tasks, &mut obs);
                if svc.as_ref().is_some_and(&done) {
                    return obs;
                }
            }
            index = ev.index;
        }
        match ev.event.expect("event") {
            pb::watch_event::Event::Snapshot(s) => {
                for t in s.tasks {
                    tasks.insert(t.id.clone(), t);
                }
                if let Some(x) = s.services.into_iter().next() {
                    svc = Some(x);
                }
            }
            pb::watch_event::Event::Task(t) => {
                tasks.insert(t.id.clone(), t);
            }
            pb::watch_event::Event::Service(x) => svc = Some(x),
            pb::watch_event::Event::Removed(r) if r.kind == "task" => {
                tasks.remove(&r.id);
            }
            _ => {}
        }
        // A service's status changes with its tasks: read it fresh. The
        // last change may be the last event: check it now.
        if let Ok(r) = c
            .get_service(pb::GetServiceRequest {
                service: service.into(),
            })
            .await
        {
            let r = r.into_inner();
            if done(&r) && r.index == index {
                measure(&tasks, &mut obs);
                return obs;
            }
            svc = Some(r);
        }
    }
}

fn update_state(r: &pb::ServiceResponse) -> String {
    r.service
        .as_ref()
        .and_then(|s| s.update_status.as_ref())
        .map(|u| u.state.clone())
        .unwrap_or_default()
}

fn converged_in(r: &pb::ServiceResponse, state: &str) -> bool {
    update_state(r) == state && r.status.as_ref().is_some_and(|s| s.converged)
}

async fn current_spec(c: &mut Client, name: &str) -> (pb::ServiceSpec, u64) {
    let r = c
        .get_service(pb::GetServiceRequest {
            service: name.into(),
        })
        .await
        .expect("get")
        .into_inner();
    let s = r.service.expect("service");
    (s.spec.expect("spec"), s.version)
}

async fn envs(c: &mut Client, name: &str) -> Vec<String> {
    let d = docker().await;
    let mut out = Vec::new();
    for t in tasks(c, name).await {
        if t.desired_state() != pb::TaskState::Running || state_of(&t) != pb::TaskState::Running {
            continue;
        }
        let cid = t.status.as_ref().expect("status").container_id.clone();
        let c = d
            .inspect_container(
                &cid,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .expect("inspect");
        let env = c.config.and_then(|c| c.env).unwrap_or_default();
        out.push(
            env.into_iter()
                .find(|e| e.starts_with("VERSION="))
                .unwrap_or_default(),
        );
    }
    out.sort();
    out
}

#[tokio::test]
async fn stop_first_and_start_first_with_parallelism_then_rollback() {
    image().await;
    let name = unique("roll");
    let _cleanup = Cleanup(vec![name.clone()]);
    let s = Scheduler::start(fast()).await;
    let _a = Agent::start(agent_config(&s.url(), &s.token, "roll-a", &[])).await;
    let _b = Agent::start(agent_config(&s.url(), &s.token, "roll-b", &[])).await;
    let mut c = client(s.addr).await;
    ready_nodes(&mut c, 2).await;
    let mut sp = spec(&name, 4);
    sp.env = vec!["VERSION=1".into()];
    c.create_service(pb::CreateServiceRequest { spec: Some(sp) })
        .await
        .expect("create");
    converged(&mut c, &name, 4).await;

    // stop-first, two at a time: never fewer than two serving, never more
    // than four alive.
    let (mut sp, version) = current_spec(&mut c, &name).await;
    sp.env = vec!["VERSION=2".into()];
    sp.update_config = Some(pb::UpdateConfig {
        parallelism: 2,
        delay: None,
        order: "stop-first".into(),
        ..Default::default()
    });
    c.update_service(pb::UpdateServiceRequest {
        service: name.clone(),
        spec: Some(sp),
        version,
        force: false,
    })
    .await
    .expect("update");
    let obs = observe(&mut c, &name, |r| converged_in(r, "completed")).await;
    assert_eq!(obs.min_running, 2, "stop-first, parallelism 2");
    assert!(
        obs.max_live <= 4,
        "never more than the replicas: {}",
        obs.max_live
    );
    assert_eq!(envs(&mut c, &name).await, vec!["VERSION=2"; 4]);

    // start-first, one at a time: always four serving, five at most.
    let (mut sp, version) = current_spec(&mut c, &name).await;
    sp.env = vec!["VERSION=3".into()];
    sp.update_config = Some(pb::UpdateConfig {
        parallelism: 1,
        delay: Some(prost_types::Duration {
            seconds: 0,
            nanos: 100_000_000,
        }),
        order: "start-first".into(),
        ..Default::default()
    });
    c.update_service(pb::UpdateServiceRequest {
        service: name.clone(),
        spec: Some(sp),
        version,
        force: false,
    })
    .await
    .expect("update");
    let obs = observe(&mut c, &name, |r| converged_in(r, "completed")).await;
    assert_eq!(
        obs.min_running, 4,
        "start-first keeps every replica serving"
    );
    // The old task drains and stops while the next batch starts (as
    // Swarm): one extra meant to run at a time.
    assert_eq!(obs.max_wanted, 5, "one extra at a time");
    assert_eq!(envs(&mut c, &name).await, vec!["VERSION=3"; 4]);

    // An update with a stale version is refused.
    let (sp, version) = current_spec(&mut c, &name).await;
    let e = c
        .update_service(pb::UpdateServiceRequest {
            service: name.clone(),
            spec: Some(sp),
            version: version - 1,
            force: false,
        })
        .await
        .expect_err("stale");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);

    // Rollback: back to the version before the last update.
    let r = c
        .rollback_service(pb::RollbackServiceRequest {
            service: name.clone(),
        })
        .await
        .expect("rollback")
        .into_inner();
    let svc = r.service.expect("service");
    assert_eq!(svc.previous_version, version);
    observe(&mut c, &name, |r| converged_in(r, "rollback_completed")).await;
    assert_eq!(envs(&mut c, &name).await, vec!["VERSION=2"; 4]);
    s.stop().await;
}

/// The real scheduler binary, killed with SIGKILL in the middle of a
/// stop-first update and started again on the same state: the update
/// finishes, and no slot ever has two containers running.
#[tokio::test]
async fn a_scheduler_killed_mid_update_resumes_without_duplicates() {
    image().await;
    let name = unique("sigkill");
    let _cleanup = Cleanup(vec![name.clone()]);
    let data = tempfile::tempdir().expect("dir");
    let token = "BRONZE-sigkill-test-token-0123456789";
    let start = |addr: &str| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_bronze-scheduler"));
        cmd.args([
            "--addr",
            addr,
            "--data-dir",
            &data.path().display().to_string(),
            "--join-token",
            token,
            "--heartbeat",
            "200ms",
            "--node-grace",
            "3s",
            "--log-format",
            "json",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true);
        cmd.spawn().expect("scheduler binary starts")
    };
    let mut proc = start("127.0.0.1:0");
    // The bound address is in the "scheduler serving" log line.
    let mut lines = BufReader::new(proc.stderr.take().expect("stderr")).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let line = lines
                .next_line()
                .await
                .expect("read")
                .expect("a serving line");
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["message"] == "scheduler serving" {
                break v["addr"].as_str().expect("addr").to_string();
            }
        }
    })
    .await
    .expect("the scheduler says where it serves");
    // Keep reading, so its log never fills the pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let url = format!("http://{addr}");
    let _a = Agent::start(agent_config(&url, token, "kill-a", &[])).await;
    let _b = Agent::start(agent_config(&url, token, "kill-b", &[])).await;
    let mut c = client(addr.parse().expect("addr")).await;
    ready_nodes(&mut c, 2).await;
    let mut sp = spec(&name, 4);
    sp.env = vec!["VERSION=1".into()];
    sp.update_config = Some(pb::UpdateConfig {
        parallelism: 1,
        delay: Some(prost_types::Duration {
            seconds: 0,
            nanos: 300_000_000,
        }),
        order: "stop-first".into(),
        ..Default::default()
    });
    c.create_service(pb::CreateServiceRequest {
        spec: Some(sp.clone()),
    })
    .await
    .expect("create");
    converged(&mut c, &name, 4).await;
    sp.env = vec!["VERSION=2".into()];
    c.update_service(pb::UpdateServiceRequest {
        service: name.clone(),
        spec: Some(sp),
        version: 0,
        force: false,
    })
    .await
    .expect("update");
    // Kill it once the first new task runs.
    eventually(Duration::from_secs(60), "the first slot updated", || {
        let mut c = c.clone();
        let name = name.clone();
        async move {
            let ts = tasks(&mut c, &name).await;
            ts.iter()
                .any(|t| t.spec_version == 2 && state_of(t) == pb::TaskState::Running)
                .then_some(())
        }
    })
    .await;
    proc.kill().await.expect("SIGKILL");
    let _ = proc.wait().await;
    let mut proc = start(&addr);
    let mut lines = BufReader::new(proc.stderr.take().expect("stderr")).lines();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let mut c = eventually(Duration::from_secs(30), "the scheduler is back", || {
        let addr = addr.clone();
        async move {
            pb::scheduler_client::SchedulerClient::connect(format!("http://{addr}"))
                .await
                .ok()
        }
    })
    .await;
    eventually(Duration::from_secs(90), "the update finished", || {
        let mut c = c.clone();
        let name = name.clone();
        async move {
            let r = c
                .get_service(pb::GetServiceRequest {
                    service: name.clone(),
                })
                .await
                .ok()?
                .into_inner();
            converged_in(&r, "completed").then_some(())
        }
    })
    .await;
    assert_eq!(envs(&mut c, &name).await, vec!["VERSION=2"; 4]);
    // Exactly four containers run: one per slot.
    let d = docker().await;
    assert_eq!(
        containers(&d, &name).await.values().filter(|r| **r).count(),
        4
    );
}
