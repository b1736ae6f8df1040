//! Checks run next to the container, and Docker's HEALTHCHECK.

use std::time::Duration;

use crate::harness::{Container, Discovery, Reg, Spec, eventually, reg_config, unique};

#[tokio::test]
async fn a_failing_http_check_drops_it_from_dns_and_recovery_brings_it_back() {
    let d = Discovery::start().await;
    let r = Reg::start(reg_config(d.grpc, &unique("host"))).await;
    let service = unique("checked");
    let spec = Spec {
        env: vec![
            format!("SERVICE_NAME={service}"),
            "SERVICE_CHECK_HTTP=/health".into(),
            "SERVICE_CHECK_INTERVAL=200ms".into(),
        ],
        ..Default::default()
    };
    let c = Container::run(&unique("it-http"), spec).await;
    eventually(Duration::from_secs(10), "passing check: in DNS", || async {
        d.srv(&service).await.len() == 1
    })
    .await;
    c.exec(&["/bin/busybox", "rm", "/www/health"]).await;
    eventually(
        Duration::from_secs(10),
        "404 on /health: out of DNS",
        || async { d.srv(&service).await.is_empty() },
    )
    .await;
    let i = &d.instances(&service).await[0];
    let http = i
        .checks
        .iter()
        .find(|c| c.id.ends_with(":http"))
        .expect("http check");
    assert!(http.output.contains("404"), "{http:?}");
    c.exec(&["/bin/busybox", "sh", "-c", "echo ok > /www/health"])
        .await;
    eventually(
        Duration::from_secs(10),
        "recovered: back in DNS",
        || async { d.srv(&service).await.len() == 1 },
    )
    .await;
    r.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn docker_healthcheck_decides_and_unhealthy_leaves_dns() {
    let d = Discovery::start().await;
    let r = Reg::start(reg_config(d.grpc, &unique("host"))).await;
    let service = unique("hc");
    let spec = Spec {
        env: vec![format!("SERVICE_NAME={service}")],
        healthcheck: true,
        ..Default::default()
    };
    let c = Container::run(&unique("it-hc"), spec).await;
    eventually(Duration::from_secs(15), "healthy: in DNS", || async {
        d.srv(&service).await.len() == 1
    })
    .await;
    c.exec(&["/bin/busybox", "rm", "/www/health"]).await;
    eventually(Duration::from_secs(15), "unhealthy: out of DNS", || async {
        d.srv(&service).await.is_empty()
    })
    .await;
    c.exec(&["/bin/busybox", "sh", "-c", "echo ok > /www/health"])
        .await;
    eventually(Duration::from_secs(15), "healthy again: back", || async {
        d.srv(&service).await.len() == 1
    })
    .await;
    r.stop().await;
    d.stop().await;
}
