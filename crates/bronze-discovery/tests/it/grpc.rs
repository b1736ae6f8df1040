//! The gRPC API with a real tonic client.

use std::time::Duration;

use bronze_proto::discovery::v1 as pb;
use pb::watch_event::Event;
use tonic::Code;

use crate::harness::{Running, eventually, kept_alive_by_refreshes};

fn instance(id: &str, service: &str, port: u32) -> pb::InstanceSpec {
    pb::InstanceSpec {
        id: id.into(),
        service: service.into(),
        node: "host-a".into(),
        node_address: "10.0.0.10".into(),
        address: String::new(),
        port,
        tags: vec!["v1".into()],
        meta: [(
            "bronze.http.rule".to_string(),
            "Host(`a.example`)".to_string(),
        )]
        .into(),
        weights: None,
        checks: vec![pb::CheckSpec {
            id: format!("{id}-ttl"),
            kind: Some(pb::check_spec::Kind::Ttl(pb::TtlCheck {
                ttl: Some(prost_types::Duration {
                    seconds: 30,
                    nanos: 0,
                }),
                external: false,
            })),
            initial_status: pb::HealthStatus::Passing as i32,
            ..Default::default()
        }],
    }
}

#[tokio::test]
async fn register_get_list_and_deregister() {
    let s = Running::start().await;
    let mut c = s.grpc().await;
    let r = c
        .register(pb::RegisterRequest {
            instance: Some(instance("a1", "api", 9000)),
            owner: "registrator@host-a".into(),
        })
        .await
        .expect("register")
        .into_inner();
    assert!(r.index > 0);
    assert!(!r.server_epoch.is_empty());
    let got = c
        .get_service(pb::GetServiceRequest {
            name: "api".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.instances.len(), 1);
    let i = &got.instances[0];
    assert_eq!(
        (i.node.as_str(), i.address.as_str(), i.port),
        ("host-a", "10.0.0.10", 9000)
    );
    assert_eq!(i.health, pb::HealthStatus::Passing as i32);
    assert_eq!(i.meta["bronze.http.rule"], "Host(`a.example`)");
    // It is in DNS at once, with the node's address.
    assert_eq!(
        s.dig(&["api.service.bronze", "A", "+short"]).await.trim(),
        "10.0.0.10"
    );
    // Pagination of services.
    for n in 0..5 {
        c.register(pb::RegisterRequest {
            instance: Some(instance(&format!("s{n}"), &format!("svc{n}"), 1000 + n)),
            owner: String::new(),
        })
        .await
        .expect("register");
    }
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_services(pb::ListServicesRequest {
                page_size: 2,
                page_token: token,
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.services.len() <= 2);
        names.extend(page.services.into_iter().map(|s| s.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names, vec!["api", "svc0", "svc1", "svc2", "svc3", "svc4"]);
    let d = c
        .deregister(pb::DeregisterRequest {
            node: "host-a".into(),
            id: "a1".into(),
        })
        .await
        .expect("deregister")
        .into_inner();
    assert!(d.existed);
    s.stop().await;
}

#[tokio::test]
async fn invalid_registrations_are_invalid_argument_naming_the_field() {
    let s = Running::start().await;
    let mut c = s.grpc().await;
    let mut bad_port = instance("x", "api", 70000);
    bad_port.checks.clear();
    let mut bad_name = instance("x", "no spaces please", 80);
    bad_name.checks.clear();
    let mut bad_check = instance("x", "api", 80);
    bad_check.checks[0].kind = Some(pb::check_spec::Kind::Http(pb::HttpCheck {
        url: "nonsense".into(),
        ..Default::default()
    }));
    let mut no_kind = instance("x", "api", 80);
    no_kind.checks[0].kind = None;
    for (spec, field) in [
        (bad_port, "instance.port"),
        (bad_name, "instance.service"),
        (bad_check, "instance.checks.http.url"),
        (no_kind, "instance.checks"),
    ] {
        let err = c
            .register(pb::RegisterRequest {
                instance: Some(spec),
                owner: String::new(),
            })
            .await
            .expect_err("rejected");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let listed = c
        .list_services(pb::ListServicesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.services.is_empty(), "nothing half-registered");
    s.stop().await;
}

#[tokio::test]
async fn heartbeat_refreshes_ttls_and_reports_status() {
    let s = Running::start().await;
    let mut c = s.grpc().await;
    let mut spec = instance("h1", "beat", 80);
    spec.checks[0].kind = Some(pb::check_spec::Kind::Ttl(pb::TtlCheck {
        ttl: Some(prost_types::Duration {
            seconds: 0,
            nanos: 400_000_000,
        }),
        external: false,
    }));
    c.register(pb::RegisterRequest {
        instance: Some(spec),
        owner: "reg-1".into(),
    })
    .await
    .expect("register");
    let health = |c: &mut pb::discovery_client::DiscoveryClient<_>| {
        let mut c = c.clone();
        async move {
            c.get_service(pb::GetServiceRequest {
                name: "beat".into(),
                ..Default::default()
            })
            .await
            .expect("get")
            .into_inner()
            .instances[0]
                .health
        }
    };
    kept_alive_by_refreshes(Duration::from_millis(400), || {
        let mut c = c.clone();
        async move {
            let hb = c
                .heartbeat(pb::HeartbeatRequest {
                    owner: "reg-1".into(),
                    reports: vec![],
                    ..Default::default()
                })
                .await
                .expect("heartbeat")
                .into_inner();
            assert_eq!(hb.refreshed, 1);
            assert_eq!(hb.instance_ids, vec!["h1"]);
            health(&mut c).await == pb::HealthStatus::Passing as i32
        }
    })
    .await;
    // A report sets the status it carries.
    c.heartbeat(pb::HeartbeatRequest {
        owner: "reg-1".into(),
        reports: vec![pb::CheckReport {
            instance_id: "h1".into(),
            check_id: "h1-ttl".into(),
            status: pb::HealthStatus::Warning as i32,
            output: "slow".into(),
        }],
        ..Default::default()
    })
    .await
    .expect("heartbeat");
    assert_eq!(health(&mut c).await, pb::HealthStatus::Warning as i32);
    // Silence: the TTL expires.
    eventually(Duration::from_secs(10), "TTL expiry", || {
        let mut c = c.clone();
        async move { health(&mut c).await == pb::HealthStatus::Critical as i32 }
    })
    .await;
    assert_eq!(
        crate::harness::status(&s.dig(&["beat.service.bronze", "A"]).await),
        "NXDOMAIN"
    );
    // An unknown owner refreshes nothing.
    let hb = c
        .heartbeat(pb::HeartbeatRequest {
            owner: "nobody".into(),
            reports: vec![],
            ..Default::default()
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert_eq!((hb.refreshed, hb.instance_ids.len()), (0, 0));
    s.stop().await;
}

async fn next(stream: &mut tonic::Streaming<pb::WatchEvent>) -> pb::WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("event within 10s")
        .expect("stream ok")
        .expect("stream open")
}

#[tokio::test]
async fn watch_sends_snapshot_then_deltas_and_resumes() {
    let s = Running::start().await;
    let mut c = s.grpc().await;
    c.register(pb::RegisterRequest {
        instance: Some(instance("w1", "web", 80)),
        owner: String::new(),
    })
    .await
    .expect("register");
    let mut stream = c
        .watch(pb::WatchRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let first = next(&mut stream).await;
    let Some(Event::Snapshot(snap)) = first.event else {
        panic!("expected a snapshot first, got {first:?}")
    };
    assert!(snap.last);
    assert_eq!(snap.instances.len(), 1);
    let snapshot_index = first.index;

    c.register(pb::RegisterRequest {
        instance: Some(instance("w2", "web", 81)),
        owner: String::new(),
    })
    .await
    .expect("register");
    let e = next(&mut stream).await;
    assert!(e.index > snapshot_index);
    let Some(Event::Upsert(i)) = e.event else {
        panic!("upsert expected")
    };
    assert_eq!(i.id, "w2");
    c.deregister(pb::DeregisterRequest {
        node: "host-a".into(),
        id: "w1".into(),
    })
    .await
    .expect("deregister");
    let e = next(&mut stream).await;
    let Some(Event::Removed(r)) = e.event else {
        panic!("removal expected")
    };
    assert_eq!((r.id.as_str(), r.service.as_str()), ("w1", "web"));
    let seen = e.index;
    drop(stream);

    // Changes made while no one watched...
    c.register(pb::RegisterRequest {
        instance: Some(instance("w3", "web", 82)),
        owner: String::new(),
    })
    .await
    .expect("register");
    // ...are delivered on resume, after a Resumed marker, without a snapshot.
    let mut stream = c
        .watch(pb::WatchRequest {
            from_index: seen,
            services: vec![],
        })
        .await
        .expect("watch")
        .into_inner();
    let e = next(&mut stream).await;
    assert!(matches!(e.event, Some(Event::Resumed(_))), "{e:?}");
    let e = next(&mut stream).await;
    let Some(Event::Upsert(i)) = e.event else {
        panic!("upsert expected")
    };
    assert_eq!(i.id, "w3");

    // An index the server cannot resume from gets a fresh snapshot.
    let mut stream = c
        .watch(pb::WatchRequest {
            from_index: 1,
            services: vec!["web".into()],
        })
        .await
        .expect("watch")
        .into_inner();
    let e = next(&mut stream).await;
    let Some(Event::Snapshot(snap)) = e.event else {
        panic!("snapshot expected")
    };
    let mut ids: Vec<String> = snap.instances.into_iter().map(|i| i.id).collect();
    ids.sort();
    assert_eq!(ids, vec!["w2", "w3"]);
    s.stop().await;
}

#[tokio::test]
async fn watch_streams_end_on_shutdown() {
    let s = Running::start().await;
    let mut c = s.grpc().await;
    let mut stream = c
        .watch(pb::WatchRequest::default())
        .await
        .expect("watch")
        .into_inner();
    next(&mut stream).await;
    s.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("ends");
    assert!(!matches!(end, Ok(Some(_))), "no more events after shutdown");
}

#[tokio::test]
async fn get_service_filters_by_passing_and_tag() {
    let s = Running::start().await;
    let mut c = s.grpc().await;
    let mut warn = instance("w", "filt", 81);
    warn.tags = vec!["canary".into()];
    warn.checks[0].initial_status = pb::HealthStatus::Warning as i32;
    for spec in [instance("p", "filt", 80), warn] {
        c.register(pb::RegisterRequest {
            instance: Some(spec),
            owner: String::new(),
        })
        .await
        .expect("register");
    }
    let ids = |r: pb::GetServiceResponse| r.instances.into_iter().map(|i| i.id).collect::<Vec<_>>();
    let all = c
        .get_service(pb::GetServiceRequest {
            name: "filt".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(ids(all), vec!["p", "w"]);
    let passing = c
        .get_service(pb::GetServiceRequest {
            name: "filt".into(),
            passing_only: true,
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(ids(passing), vec!["p"]);
    let tagged = c
        .get_service(pb::GetServiceRequest {
            name: "filt".into(),
            tag: "canary".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(ids(tagged), vec!["w"]);
    s.stop().await;
}

#[tokio::test]
async fn owned_registrations_are_soft_state_and_the_epoch_changes_on_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().display().to_string();
    let s = Running::with(|c| c.data_dir = data.clone()).await;
    let mut c = s.grpc().await;
    let mut durable = instance("durable", "mixed", 80);
    durable.checks.clear();
    let mut owned = instance("owned", "mixed", 81);
    owned.checks.clear();
    let first = c
        .register(pb::RegisterRequest {
            instance: Some(durable),
            owner: String::new(),
        })
        .await
        .expect("register")
        .into_inner();
    c.register(pb::RegisterRequest {
        instance: Some(owned),
        owner: "registrator@host-a".into(),
    })
    .await
    .expect("register");
    s.stop().await;

    let s = Running::with(|c| c.data_dir = data.clone()).await;
    let mut c = s.grpc().await;
    let got = c
        .get_service(pb::GetServiceRequest {
            name: "mixed".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    let ids: Vec<String> = got.instances.into_iter().map(|i| i.id).collect();
    assert_eq!(ids, vec!["durable"]);
    let hb = c
        .heartbeat(pb::HeartbeatRequest {
            owner: "registrator@host-a".into(),
            reports: vec![],
            ..Default::default()
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert_ne!(
        hb.server_epoch, first.server_epoch,
        "a restarted server has a new epoch"
    );
    assert!(
        hb.instance_ids.is_empty(),
        "the owner learns it must register again"
    );
    s.stop().await;
}

#[tokio::test]
async fn external_ttl_checks_are_left_to_the_service() {
    let s = Running::start().await;
    let mut c = s.grpc().await;
    let mut spec = instance("x1", "selfcheck", 80);
    spec.checks = vec![pb::CheckSpec {
        id: "service:x1:ttl".into(),
        kind: Some(pb::check_spec::Kind::Ttl(pb::TtlCheck {
            ttl: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            external: true,
        })),
        ..Default::default()
    }];
    c.register(pb::RegisterRequest {
        instance: Some(spec),
        owner: "reg-1".into(),
    })
    .await
    .expect("register");
    // The owner's heartbeat does not make it pass...
    let hb = c
        .heartbeat(pb::HeartbeatRequest {
            owner: "reg-1".into(),
            reports: vec![],
            ..Default::default()
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert_eq!(hb.refreshed, 0);
    let health = |r: pb::GetServiceResponse| r.instances[0].health;
    let get = pb::GetServiceRequest {
        name: "selfcheck".into(),
        ..Default::default()
    };
    assert_eq!(
        health(c.get_service(get.clone()).await.expect("get").into_inner()),
        pb::HealthStatus::Critical as i32
    );
    // ...the service does, through the Consul agent API, though it lives on
    // another node than the server's.
    let (code, body) = s.put("/v1/agent/check/pass/service:x1:ttl", "").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        health(c.get_service(get).await.expect("get").into_inner()),
        pb::HealthStatus::Passing as i32
    );
    s.stop().await;
}

/// grpc.health.v1 beside the API (grpc_health_probe, bronze-gateway's
/// `grpc` active checks): the server as a whole is SERVING.
#[tokio::test]
async fn the_grpc_health_service_answers_serving() {
    let r = Running::start().await;
    let status = bronze_runtime::grpc::serving(r.grpc, "").await;
    assert!(status.expect("check"), "SERVING");
    r.stop().await;
}

#[tokio::test]
async fn heartbeat_only_reported_leaves_unnamed_instances_alone() {
    let s = Running::start().await;
    let mut c = s.grpc().await;
    // h1: an instance whose container went while its registrator was away
    // (its TTL expired: critical); h2: one the registrator still knows.
    for (id, status) in [
        ("h1", pb::HealthStatus::Critical),
        ("h2", pb::HealthStatus::Passing),
    ] {
        let mut spec = instance(id, "vouch", 80);
        spec.checks[0].initial_status = status as i32;
        c.register(pb::RegisterRequest {
            instance: Some(spec),
            owner: "reg-2".into(),
        })
        .await
        .expect("register");
    }
    let health = |c: &pb::discovery_client::DiscoveryClient<_>| {
        let mut c = c.clone();
        async move {
            let mut is = c
                .get_service(pb::GetServiceRequest {
                    name: "vouch".into(),
                    ..Default::default()
                })
                .await
                .expect("get")
                .into_inner()
                .instances;
            is.sort_by(|a, b| a.id.cmp(&b.id));
            is.iter().map(|i| i.health).collect::<Vec<_>>()
        }
    };
    let report = pb::CheckReport {
        instance_id: "h2".into(),
        check_id: "h2-ttl".into(),
        status: pb::HealthStatus::Passing as i32,
        output: String::new(),
    };
    let hb = c
        .heartbeat(pb::HeartbeatRequest {
            owner: "reg-2".into(),
            reports: vec![report.clone()],
            only_reported: true,
        })
        .await
        .expect("heartbeat")
        .into_inner();
    // Only h2 refreshed; h1 not revived, yet listed for its owner to see.
    assert_eq!(hb.refreshed, 1);
    assert_eq!(hb.instance_ids.len(), 2);
    let (critical, passing) = (
        pb::HealthStatus::Critical as i32,
        pb::HealthStatus::Passing as i32,
    );
    assert_eq!(health(&c).await, vec![critical, passing]);
    // Without it, every TTL check of the owner is refreshed.
    let hb = c
        .heartbeat(pb::HeartbeatRequest {
            owner: "reg-2".into(),
            reports: vec![report],
            only_reported: false,
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert_eq!(hb.refreshed, 2);
    assert_eq!(health(&c).await, vec![passing, passing]);
    s.stop().await;
}
