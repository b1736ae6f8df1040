//! Containers coming and going, as DNS sees it.

use std::time::{Duration, Instant};

use crate::harness::{Container, Discovery, Reg, Spec, eventually, reg_config, unique};

fn named(service: &str) -> Spec {
    Spec {
        env: vec![format!("SERVICE_NAME={service}")],
        ..Default::default()
    }
}

#[tokio::test]
async fn started_container_is_in_srv_within_a_second_and_a_killed_one_leaves_within_a_second() {
    let d = Discovery::start().await;
    let node = unique("host");
    let r = Reg::start(reg_config(d.grpc, &node)).await;
    let service = unique("web");
    let mut c = Container::create(&unique("it-web"), named(&service)).await;
    crate::harness::image().await;
    c.start().await;
    let started = Instant::now();
    c.host_port = c.published_port().await;
    let port = c.host_port;
    loop {
        let srv = d.srv(&service).await;
        if srv.contains(&(port, "7f000001.addr.bronze.".to_string())) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "SRV within 1s of start; got {srv:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The instance carries the registrator's node and ID convention.
    let inst = d.instances(&service).await;
    assert_eq!(inst.len(), 1);
    assert_eq!(inst[0].id, format!("{node}:{}:8080", c.name));
    assert_eq!(inst[0].node, node);

    c.kill().await;
    let killed = Instant::now();
    loop {
        if d.srv(&service).await.is_empty() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "gone within 1s of kill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        d.instances(&service).await.is_empty(),
        "deregistered, not just unhealthy"
    );
    r.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn pause_takes_it_out_of_dns_and_unpause_brings_it_back() {
    let d = Discovery::start().await;
    let r = Reg::start(reg_config(d.grpc, &unique("host"))).await;
    let service = unique("paused");
    let c = Container::run(&unique("it-pause"), named(&service)).await;
    let docker = crate::harness::docker().await;
    eventually(Duration::from_secs(10), "registered", || async {
        d.srv(&service).await.len() == 1
    })
    .await;
    docker.pause_container(&c.id).await.expect("pause");
    eventually(Duration::from_secs(10), "paused: out of DNS", || async {
        d.srv(&service).await.is_empty()
    })
    .await;
    assert_eq!(
        d.instances(&service).await.len(),
        1,
        "still registered while paused"
    );
    docker.unpause_container(&c.id).await.expect("unpause");
    eventually(Duration::from_secs(10), "unpaused: back", || async {
        d.srv(&service).await.len() == 1
    })
    .await;
    r.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn on_success_keeps_failed_containers_registered_but_out_of_dns() {
    let d = Discovery::start().await;
    let mut config = reg_config(d.grpc, &unique("host"));
    config.deregister = bronze_registrator::config::DeregisterMode::OnSuccess;
    let r = Reg::start(config).await;
    let failing = unique("fails");
    let succeeding = unique("succeeds");
    let spec = |service: &str, code: &str| Spec {
        env: vec![format!("SERVICE_NAME={service}")],
        // Serve briefly, then exit with `code`.
        cmd: Some(vec![
            "sh".into(),
            "-c".into(),
            format!("httpd -p 8080 -h /www; sleep 2; exit {code}"),
        ]),
        ..Default::default()
    };
    let _f = Container::run(&unique("it-fail"), spec(&failing, "3")).await;
    let _s = Container::run(&unique("it-ok"), spec(&succeeding, "0")).await;
    eventually(Duration::from_secs(10), "both registered", || async {
        d.srv(&failing).await.len() == 1 && d.srv(&succeeding).await.len() == 1
    })
    .await;
    eventually(
        Duration::from_secs(20),
        "both out of DNS after exiting",
        || async { d.srv(&failing).await.is_empty() && d.srv(&succeeding).await.is_empty() },
    )
    .await;
    assert!(
        d.instances(&succeeding).await.is_empty(),
        "exit 0: deregistered"
    );
    let kept = d.instances(&failing).await;
    assert_eq!(kept.len(), 1, "non-zero exit: kept");
    let container = kept[0]
        .checks
        .iter()
        .find(|c| c.id.ends_with(":container"))
        .expect("container check");
    assert!(
        container.output.contains("exited with code 3"),
        "{container:?}"
    );
    r.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn conventions_reach_discovery_and_bad_values_only_lose_their_part() {
    let d = Discovery::start().await;
    let r = Reg::start(reg_config(d.grpc, &unique("host"))).await;
    let service = unique("conv");
    let spec = Spec {
        env: vec![
            format!("SERVICE_NAME={service}"),
            "SERVICE_TAGS=blue,v2".into(),
            "SERVICE_REGION=eu-west".into(),
            "SERVICE_CHECK_INTERVAL=not-a-duration".into(),
            "SERVICE_CHECK_SCRIPT=/bin/true".into(),
        ],
        labels: [
            (
                "bronze.http.rule".to_string(),
                "Host(`shop.example`) && PathPrefix(`/api`)".to_string(),
            ),
            ("SERVICE_ID".to_string(), format!("{service}-custom-id")),
        ]
        .into(),
        ..Default::default()
    };
    let c = Container::run(&unique("it-conv"), spec).await;
    eventually(Duration::from_secs(10), "registered", || async {
        d.instances(&service).await.len() == 1
    })
    .await;
    let i = &d.instances(&service).await[0];
    assert_eq!(i.id, format!("{service}-custom-id"));
    assert_eq!(i.tags, vec!["blue", "v2"]);
    assert_eq!(i.meta["region"], "eu-west");
    assert_eq!(
        i.meta["bronze.http.rule"],
        "Host(`shop.example`) && PathPrefix(`/api`)"
    );
    assert_eq!(
        (i.address.as_str(), i.port),
        ("127.0.0.1", u32::from(c.host_port))
    );
    // One warning per bad key (interval, script check), and the process lives on.
    assert_eq!(r.metric("bronze_registrator_warnings_total").await, 2.0);
    r.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn internal_mode_registers_the_container_address_and_exposed_port() {
    let d = Discovery::start().await;
    let mut config = reg_config(d.grpc, &unique("host"));
    config.internal = true;
    let r = Reg::start(config).await;
    let service = unique("inside");
    let c = Container::run(&unique("it-internal"), named(&service)).await;
    eventually(Duration::from_secs(10), "registered", || async {
        d.instances(&service).await.len() == 1
    })
    .await;
    let i = &d.instances(&service).await[0];
    let info = crate::harness::docker()
        .await
        .inspect_container(
            &c.id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .expect("inspect");
    let ip = info
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|n| {
            n.into_values()
                .find_map(|e| e.ip_address.filter(|ip| !ip.is_empty()))
        })
        .expect("a container address");
    assert_eq!((i.address.as_str(), i.port), (ip.as_str(), 8080));
    r.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn a_dead_registrators_instances_leave_dns_after_the_ttl_then_the_catalog() {
    let d = Discovery::start().await;
    let r = Reg::start(reg_config(d.grpc, &unique("host"))).await;
    let service = unique("orphaned");
    let _c = Container::run(&unique("it-dead"), named(&service)).await;
    eventually(Duration::from_secs(10), "registered", || async {
        d.srv(&service).await.len() == 1
    })
    .await;
    // The host "dies": no more heartbeats (ttl 3s, deregister after 10s).
    r.stop().await;
    let took = eventually(
        Duration::from_secs(10),
        "out of DNS after the TTL",
        || async { d.srv(&service).await.is_empty() },
    )
    .await;
    assert!(
        took >= Duration::from_secs(1),
        "trusted until its TTL ran out ({took:?})"
    );
    assert_eq!(
        d.instances(&service).await.len(),
        1,
        "still in the catalog, critical"
    );
    eventually(
        Duration::from_secs(20),
        "removed after deregister_after",
        || async { d.instances(&service).await.is_empty() },
    )
    .await;
    d.stop().await;
}
