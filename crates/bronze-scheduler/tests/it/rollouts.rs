//! Rollouts under load through the whole platform: discovery, a
//! registrator for this host, the gateway routing by label, the scheduler
//! following discovery, two agents; clients asking the gateway all along
//! (bounded, loopback). A start-first update serves every request; an
//! update whose health check fails rolls back by itself, still serving
//! every request.

use std::sync::Arc;
use std::time::Duration;

use bronze_proto::scheduler::v1 as pb;
use bronze_runtime::Shutdown;
use xtask::clients::{Clients, Tally};

use crate::harness::{
    Agent, Cleanup, Client, Scheduler, agent_config, client, converged, eventually, fast, image,
    ready_nodes, spec, unique,
};

/// Discovery, a registrator and a gateway in this process.
pub(crate) struct Platform {
    pub(crate) discovery: std::net::SocketAddr,
    gateway: std::net::SocketAddr,
    stop: Shutdown,
}

impl Platform {
    pub(crate) async fn start() -> Self {
        let stop = Shutdown::new();
        let discovery = bronze_discovery::Server::bind(bronze_discovery::Config::ephemeral())
            .await
            .expect("discovery");
        let grpc = discovery.grpc_addr();
        tokio::spawn(discovery.serve(stop.clone()));
        let registrator = bronze_registrator::Server::bind(bronze_registrator::Config {
            discovery: format!("http://{grpc}"),
            hostname: unique("rollout-host"),
            ip: Some("127.0.0.1".parse().expect("ip")),
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
            discovery: grpc,
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

/// The test image serving its $VERSION at /version, with a health check on
/// /www/health (which `healthy: false` removes before serving).
pub(crate) fn versioned(name: &str, version: &str, healthy: bool) -> pb::ServiceSpec {
    let mut sp = spec(name, 3);
    let prepare = if healthy {
        ""
    } else {
        "/bin/busybox rm /www/health; "
    };
    sp.args = vec![
        "sh".into(),
        "-c".into(),
        format!(
            "{prepare}/bin/busybox echo {version} > /www/version && exec /bin/busybox httpd -f -p 8080 -h /www"
        ),
    ];
    sp.ports.push(pb::PortConfig {
        target: 8080,
        published: 0,
        protocol: "tcp".into(),
    });
    sp.container_labels = [
        (
            "bronze.http.rule".to_string(),
            format!("PathPrefix(`/{name}`)"),
        ),
        ("bronze.http.strip_prefix".to_string(), "true".to_string()),
    ]
    .into();
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
        retries: 2,
        start_period: None,
    });
    sp.drain_delay = Some(prost_types::Duration {
        seconds: 2,
        nanos: 0,
    });
    sp.update_config = Some(pb::UpdateConfig {
        parallelism: 1,
        order: "start-first".into(),
        monitor: Some(prost_types::Duration {
            seconds: 2,
            nanos: 0,
        }),
        failure_action: "rollback".into(),
        ..Default::default()
    });
    sp.rollback_config = Some(pb::UpdateConfig {
        parallelism: 1,
        order: "start-first".into(),
        monitor: Some(ms(500)),
        ..Default::default()
    });
    sp
}

async fn answer(gateway: std::net::SocketAddr, name: &str) -> Option<String> {
    bronze_runtime::install_crypto_provider();
    let r = reqwest::get(format!("http://{gateway}/{name}/version"))
        .await
        .ok()?;
    (r.status() == 200).then_some(())?;
    Some(r.text().await.ok()?.trim().to_string())
}

/// Waits (at most 120 s) until `name`'s update completed and it converged.
pub(crate) async fn update_completed(c: &Client, name: &str) {
    eventually(Duration::from_secs(120), "the update completed", || {
        let mut c = c.clone();
        let name = name.to_string();
        async move {
            let (state, _, converged) = update_state(&mut c, &name).await;
            (state == "completed" && converged).then_some(())
        }
    })
    .await;
}

pub(crate) async fn update_state(c: &mut Client, name: &str) -> (String, String, bool) {
    let r = c
        .get_service(pb::GetServiceRequest {
            service: name.into(),
        })
        .await
        .expect("get")
        .into_inner();
    let u = r.service.and_then(|s| s.update_status).unwrap_or_default();
    (u.state, u.message, r.status.is_some_and(|s| s.converged))
}

#[tokio::test]
async fn start_first_updates_serve_every_request_and_failed_ones_roll_back() {
    image().await;
    let name = unique("live");
    let _cleanup = Cleanup(vec![name.clone()]);
    let p = Platform::start().await;
    let mut config = fast();
    config.discovery = format!("http://{}", p.discovery);
    let s = Scheduler::start(config).await;
    let _a = Agent::start(agent_config(&s.url(), &s.token, "live-a", &[])).await;
    let _b = Agent::start(agent_config(&s.url(), &s.token, "live-b", &[])).await;
    let mut c = client(s.addr).await;
    ready_nodes(&mut c, 2).await;
    c.create_service(pb::CreateServiceRequest {
        spec: Some(versioned(&name, "v1", true)),
    })
    .await
    .expect("create");
    converged(&mut c, &name, 3).await;
    eventually(Duration::from_secs(60), "the gateway serves v1", || {
        let name = name.clone();
        let gw = p.gateway;
        async move { (answer(gw, &name).await.as_deref() == Some("v1")).then_some(()) }
    })
    .await;

    // Discovery's view of each task: when its instance first turned
    // critical (drained: in maintenance before its stop signal).
    let drained: Arc<parking_lot::Mutex<std::collections::HashMap<String, std::time::SystemTime>>> =
        Arc::default();
    let watcher = {
        let drained = drained.clone();
        let url = format!("http://{}", p.discovery);
        tokio::spawn(async move {
            use bronze_proto::discovery::v1 as dpb;
            let mut d = dpb::discovery_client::DiscoveryClient::connect(url)
                .await
                .expect("discovery");
            let mut stream = d
                .watch(dpb::WatchRequest::default())
                .await
                .expect("watch")
                .into_inner();
            while let Ok(Some(ev)) = stream.message().await {
                if let Some(dpb::watch_event::Event::Upsert(i)) = ev.event
                    && i.health() == dpb::HealthStatus::Critical
                    && let Some(task) = i.meta.get("bronze.task.id")
                {
                    drained
                        .lock()
                        .entry(task.clone())
                        .or_insert_with(std::time::SystemTime::now);
                }
            }
        })
    };
    let before: Vec<pb::Task> =
        crate::harness::running(&crate::harness::tasks(&mut c, &name).await)
            .into_iter()
            .cloned()
            .collect();

    // v2, start-first, under load: every request answered.
    let load = Clients::start(&format!("http://{}/{name}/version", p.gateway), 4, 200_000);
    c.update_service(pb::UpdateServiceRequest {
        service: name.clone(),
        spec: Some(versioned(&name, "v2", true)),
        version: 0,
        force: false,
    })
    .await
    .expect("update");
    update_completed(&c, &name).await;
    let Tally { ok, failed, last } = load.finish().await;
    assert_eq!(failed, 0, "{failed} failed requests of {}", ok + failed);
    assert!(ok > 100, "the load ran: {ok}");
    assert_eq!(last, "v2", "the new version served at the end");
    // Each old task left discovery at least the drain delay before its
    // container stopped (its stop signal waited while the gateway took it
    // out).
    let after = crate::harness::tasks(&mut c, &name).await;
    for old in &before {
        let ended = after
            .iter()
            .find(|t| t.id == old.id)
            .and_then(|t| t.status.as_ref())
            .filter(|s| s.state() == pb::TaskState::Shutdown)
            .and_then(|s| s.timestamp)
            .expect("the old task shut down");
        let ended = std::time::UNIX_EPOCH
            + Duration::new(ended.seconds.unsigned_abs(), ended.nanos.unsigned_abs());
        let out = *drained
            .lock()
            .get(&old.id)
            .expect("drained from discovery first");
        let lead = ended.duration_since(out).unwrap_or_default();
        // The drain (2 s) plus the stop (1 s grace): without the drain
        // only the grace (about 1.4 s measured).
        assert!(
            lead >= Duration::from_millis(2500),
            "out of discovery only {lead:?} before it stopped"
        );
    }
    watcher.abort();

    // v3's health check fails: rolled back by itself, still every request
    // answered, v2 served.
    let load = Clients::start(&format!("http://{}/{name}/version", p.gateway), 4, 200_000);
    c.update_service(pb::UpdateServiceRequest {
        service: name.clone(),
        spec: Some(versioned(&name, "v3", false)),
        version: 0,
        force: false,
    })
    .await
    .expect("update");
    let message = eventually(Duration::from_secs(120), "rolled back", || {
        let mut c = c.clone();
        let name = name.clone();
        async move {
            let (state, message, converged) = update_state(&mut c, &name).await;
            (state == "rollback_completed" && converged).then_some(message)
        }
    })
    .await;
    let Tally { ok, failed, last } = load.finish().await;
    assert!(message.contains("update rolled back"), "{message}");
    assert_eq!(failed, 0, "{failed} failed requests of {}", ok + failed);
    assert_eq!(last, "v2");
    assert_eq!(answer(p.gateway, &name).await.as_deref(), Some("v2"));
    s.stop().await;
}
