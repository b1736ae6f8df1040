//! Restarts of every party leave exactly one registration per port.

use std::time::Duration;

use bronze_proto::discovery::v1 as pb;

use crate::harness::{Container, Discovery, Reg, Spec, eventually, reg_config, unique};

fn named(service: &str) -> Spec {
    Spec {
        env: vec![format!("SERVICE_NAME={service}")],
        ..Default::default()
    }
}

/// Waits until `r` has had two more heartbeats accepted (one of them
/// begun after now): what it registered before has reached discovery, and
/// discovery took its whole state.
async fn settled(r: &Reg) {
    const OK: &str = "bronze_registrator_heartbeats_total{result=\"ok\"}";
    let before = r.metric(OK).await;
    eventually(Duration::from_secs(10), "heartbeats accepted", || async {
        r.metric(OK).await >= before + 2.0
    })
    .await;
}

#[tokio::test]
async fn restarting_the_registrator_keeps_one_registration() {
    let d = Discovery::start().await;
    let node = unique("host");
    let r = Reg::start(reg_config(d.grpc, &node)).await;
    let service = unique("stay");
    let _c = Container::run(&unique("it-stay"), named(&service)).await;
    eventually(Duration::from_secs(10), "registered", || async {
        d.srv(&service).await.len() == 1
    })
    .await;
    r.stop().await;
    // Still answered while the registrator is away (within its TTL).
    assert_eq!(d.srv(&service).await.len(), 1);
    let r = Reg::start(reg_config(d.grpc, &node)).await;
    // Past the point where a second registration would be made: the new
    // registrator's first full reconciliation registered the container,
    // and a heartbeat after it was accepted.
    eventually(Duration::from_secs(10), "registered again", || async {
        r.metric("bronze_registrator_resyncs_total").await >= 1.0
            && r.metric("bronze_registrator_registrations_total").await >= 1.0
    })
    .await;
    settled(&r).await;
    assert_eq!(
        d.instances(&service).await.len(),
        1,
        "exactly one after the restart"
    );
    assert_eq!(d.srv(&service).await.len(), 1);
    r.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn a_container_gone_while_the_registrator_was_away_stays_critical() {
    let d = Discovery::start().await;
    let config = reg_config(d.grpc, &unique("host"));
    let r = Reg::start(config.clone()).await;
    let service = unique("went");
    let c = Container::run(&unique("it-went"), named(&service)).await;
    let name = service.clone();
    let health = move |d: pb::discovery_client::DiscoveryClient<tonic::transport::Channel>| {
        let service = name.clone();
        async move {
            let mut d = d;
            d.get_service(pb::GetServiceRequest {
                name: service,
                ..Default::default()
            })
            .await
            .map(|r| {
                r.into_inner()
                    .instances
                    .iter()
                    .map(|i| i.health)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
        }
    };
    let client = d.client().await;
    let passing = pb::HealthStatus::Passing as i32;
    eventually(Duration::from_secs(10), "registered", || async {
        health(client.clone()).await == vec![passing]
    })
    .await;
    r.stop().await;
    // Gone while nobody watched: its instance turns critical at its TTL.
    c.remove().await;
    eventually(Duration::from_secs(10), "critical past its TTL", || async {
        health(client.clone()).await == vec![pb::HealthStatus::Critical as i32]
    })
    .await;
    // Back, the registrator vouches only for what it knows: the instance
    // never passes again (sampled until two heartbeats after the restart).
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (seen, done, client) = (seen.clone(), done.clone(), client.clone());
        let health = health.clone();
        tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if health(client.clone()).await.contains(&passing) {
                    seen.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    let r = Reg::start(config).await;
    settled(&r).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.await.expect("watcher");
    assert!(
        !seen.load(std::sync::atomic::Ordering::Relaxed),
        "the instance of a container gone meanwhile passed again"
    );
    r.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn restarting_discovery_gets_everything_registered_again() {
    let d = Discovery::start().await;
    let at = (d.grpc, d.dns, "127.0.0.1:0".parse().expect("addr"));
    let r = Reg::start(reg_config(d.grpc, &unique("host"))).await;
    let service = unique("again");
    let _c = Container::run(&unique("it-again"), named(&service)).await;
    eventually(Duration::from_secs(10), "registered", || async {
        d.srv(&service).await.len() == 1
    })
    .await;
    d.stop().await;
    // Discovery keeps no soft state: it comes back empty, on the same ports.
    let d = Discovery::start_on(Some(at)).await;
    eventually(
        Duration::from_secs(5),
        "registered again after the restart",
        || async { d.srv(&service).await.len() == 1 },
    )
    .await;
    // Past the point where a second registration would be made: a
    // heartbeat after the registration again was accepted.
    settled(&r).await;
    assert_eq!(d.instances(&service).await.len(), 1, "exactly one");
    r.stop().await;
    d.stop().await;
}

/// Registered again after discovery restarted, an instance comes back
/// with the statuses its checks had (its container's Docker HEALTHCHECK
/// passing), not critical until the next heartbeat reports: balancers
/// following discovery never see it fail meanwhile.
#[tokio::test]
async fn registered_again_after_a_discovery_restart_with_the_statuses_it_had() {
    let d = Discovery::start().await;
    let at = (d.grpc, d.dns, "127.0.0.1:0".parse().expect("addr"));
    let r = Reg::start(reg_config(d.grpc, &unique("host"))).await;
    let service = unique("statuses");
    let _c = Container::run(
        &unique("it-statuses"),
        Spec {
            healthcheck: true,
            ..named(&service)
        },
    )
    .await;
    let passing = pb::HealthStatus::Passing as i32;
    eventually(
        Duration::from_secs(30),
        "registered and passing",
        || async {
            let all = d.instances(&service).await;
            all.len() == 1 && all[0].health == passing
        },
    )
    .await;
    d.stop().await;
    let d = Discovery::start_on(Some(at)).await;
    // Every change the new discovery makes, from its first: the instance's
    // first appearance is what a balancer following it sees.
    let mut changes = d
        .client()
        .await
        .watch(pb::WatchRequest {
            from_index: 0,
            services: vec![service.clone()],
        })
        .await
        .expect("watch")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let event = changes.message().await.expect("watch").expect("open");
            match event.event {
                Some(pb::watch_event::Event::Upsert(i)) => break i,
                Some(pb::watch_event::Event::Snapshot(c)) if !c.instances.is_empty() => {
                    break c.instances[0].clone();
                }
                _ => {}
            }
        }
    })
    .await
    .expect("registered again within 15 s");
    let states: Vec<(String, i32)> = first
        .checks
        .iter()
        .map(|c| (c.id.clone(), c.status))
        .collect();
    assert!(
        states.iter().all(|(_, s)| *s == passing),
        "every check passing when registered again: {states:?}"
    );
    r.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn containers_started_or_removed_while_down_are_reconciled() {
    let d = Discovery::start().await;
    let node = unique("host");
    let mut config = reg_config(d.grpc, &node);
    config.cleanup = true;
    let r = Reg::start(config.clone()).await;
    let gone = unique("gone");
    let old = Container::run(&unique("it-gone"), named(&gone)).await;
    eventually(Duration::from_secs(10), "registered", || async {
        d.srv(&gone).await.len() == 1
    })
    .await;
    r.stop().await;
    // While the registrator is down: one container goes, one comes.
    old.remove().await;
    let new = unique("new");
    let _n = Container::run(&unique("it-new"), named(&new)).await;
    let r = Reg::start(config).await;
    eventually(Duration::from_secs(10), "the new one appears", || async {
        d.srv(&new).await.len() == 1
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the removed one disappears (cleanup)",
        || async { d.instances(&gone).await.is_empty() },
    )
    .await;
    r.stop().await;
    d.stop().await;
}

/// A unix-socket proxy to the engine whose connections the test can cut.
struct EngineProxy {
    path: std::path::PathBuf,
    cut: tokio::sync::watch::Sender<u64>,
    _dir: tempfile::TempDir,
}

impl EngineProxy {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind proxy socket");
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let cuts = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut rx = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut engine) =
                        tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut engine) => {}
                        _ = rx.changed() => {}
                    }
                });
            }
        });
        Self {
            path,
            cut,
            _dir: dir,
        }
    }

    /// Drops every open connection, the event stream among them.
    fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

#[tokio::test]
async fn a_broken_event_stream_is_reopened_and_nothing_is_missed_or_doubled() {
    let proxy = EngineProxy::start().await;
    let d = Discovery::start().await;
    let mut config = reg_config(d.grpc, &unique("host"));
    config.docker_host = format!("unix://{}", proxy.path.display());
    config.resync = Duration::ZERO;
    let r = Reg::start(config).await;
    let first = unique("first");
    let _a = Container::run(&unique("it-first"), named(&first)).await;
    eventually(
        Duration::from_secs(10),
        "registered through the proxy",
        || async { d.srv(&first).await.len() == 1 },
    )
    .await;
    proxy.cut_all();
    // Started right after the stream broke: found on reconnection.
    let second = unique("second");
    let _b = Container::run(&unique("it-second"), named(&second)).await;
    eventually(
        Duration::from_secs(15),
        "seen after the stream came back",
        || async { d.srv(&second).await.len() == 1 },
    )
    .await;
    assert_eq!(d.instances(&first).await.len(), 1, "no duplicate");
    assert_eq!(d.instances(&second).await.len(), 1, "no duplicate");
    assert!(
        r.metric("bronze_registrator_event_stream_reconnects_total")
            .await
            >= 1.0
    );
    r.stop().await;
    d.stop().await;
}
