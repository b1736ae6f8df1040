//! The Consul-compatible HTTP API, spoken over real HTTP.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Running, consul_index, eventually, kept_alive_by_refreshes};

#[tokio::test]
async fn register_list_and_deregister() {
    let s = Running::start().await;
    s.register(
        json!({"ID": "web-1", "Name": "web", "Address": "10.0.0.1", "Port": 80, "Tags": ["v1"],
        "Meta": {"version": "1.2", "bronze.http.rule": "PathPrefix(`/web`)"}}),
    )
    .await;
    let (_, services) = s.get_json("/v1/agent/services").await;
    assert_eq!(services["web-1"]["Service"], "web");
    assert_eq!(services["web-1"]["Port"], 80);
    assert_eq!(
        services["web-1"]["Meta"]["bronze.http.rule"],
        "PathPrefix(`/web`)"
    );
    let (_, catalog) = s.get_json("/v1/catalog/services").await;
    assert_eq!(catalog, json!({"web": ["v1"]}));
    let (_, entries) = s.get_json("/v1/catalog/service/web").await;
    assert_eq!(entries[0]["ServiceID"], "web-1");
    assert_eq!(entries[0]["ServiceAddress"], "10.0.0.1");
    assert_eq!(entries[0]["Node"], "bronze-test");
    assert_eq!(entries[0]["Address"], "127.0.0.1");
    assert_eq!(
        entries[0]["ServiceWeights"],
        json!({"Passing": 1, "Warning": 1})
    );
    let (_, nodes) = s.get_json("/v1/catalog/nodes").await;
    assert_eq!(nodes[0]["Node"], "bronze-test");
    let (_, node) = s.get_json("/v1/catalog/node/bronze-test").await;
    assert_eq!(node["Services"]["web-1"]["Service"], "web");
    let (_, dcs) = s.get_json("/v1/catalog/datacenters").await;
    assert_eq!(dcs, json!(["dc1"]));
    let (_, leader) = s.get_json("/v1/status/leader").await;
    assert!(leader.as_str().expect("string").ends_with(":8300"));
    let (_, me) = s.get_json("/v1/agent/self").await;
    assert_eq!(me["Config"]["Datacenter"], "dc1");
    assert_eq!(me["Config"]["NodeName"], "bronze-test");

    assert_eq!(s.put("/v1/agent/service/deregister/web-1", "").await.0, 200);
    let (code, body) = s.put("/v1/agent/service/deregister/web-1", "").await;
    assert_eq!(code, 404, "{body}");
    let (_, catalog) = s.get_json("/v1/catalog/services").await;
    assert_eq!(catalog, json!({}));
    s.stop().await;
}

#[tokio::test]
async fn bad_registrations_name_the_field_and_change_nothing() {
    let s = Running::start().await;
    s.register(json!({"ID": "keep", "Name": "keep", "Port": 1}))
        .await;
    let (_, before) = s.get_json("/v1/agent/services").await;
    let index_before = consul_index(&s.get("/v1/catalog/services").await);
    for (body, field) in [
        (json!({"Port": 80}), "Name"),
        (json!({"Name": "web app", "Port": 80}), "Name"),
        (json!({"Name": "web", "Port": 70000}), "Port"),
        (json!({"Name": "web", "Port": "80"}), "Port"),
        (json!({"Name": "web", "Address": "not valid!"}), "Address"),
        (json!({"Name": "web", "Tags": "v1"}), "Tags"),
        (json!({"Name": "web", "Meta": {"k": 1}}), "Meta.k"),
        (
            json!({"Name": "web", "Check": {"HTTP": "http://x/", "Interval": "often"}}),
            "Interval",
        ),
        (json!({"Name": "web", "Check": {"TTL": "-5s"}}), "TTL"),
        (
            json!({"Name": "web", "Check": {"Args": ["/bin/true"], "Interval": "10s"}}),
            "Check",
        ),
        (
            json!({"Name": "web", "Check": {"HTTP": "gopher://x"}}),
            "HTTP",
        ),
        (
            json!({"Name": "web", "Check": {"TCP": "nohostport"}}),
            "TCP",
        ),
        (
            json!({"Name": "web", "Check": {"TTL": "5s", "Status": "great"}}),
            "Status",
        ),
        (
            json!({"Name": "web", "Check": {"TTL": "5s", "DeregisterCriticalServiceAfter": "soon"}}),
            "DeregisterCriticalServiceAfter",
        ),
        (
            json!({"Name": "web", "Checks": [{"TTL": "5s", "CheckID": "c"}, {"TTL": "5s", "CheckID": "c"}]}),
            "CheckID",
        ),
        (json!({"Name": "web", "Weights": {"Passing": 0}}), "Weights"),
        (json!({"Name": "web", "Prot": 80}), "Prot"),
        (
            json!({"Name": "web", "Check": {"TTL": "5s", "Intervall": "1s"}}),
            "Check.Intervall",
        ),
        (
            json!({"Name": "web", "Check": {"HTTP": "http://x/", "Body": "{}"}}),
            "Body",
        ),
        (
            json!({"Name": "web", "Check": {"TTL": "5s", "FailuresBeforeCritical": 3}}),
            "FailuresBeforeCritical",
        ),
    ] {
        let (code, text) = s.put("/v1/agent/service/register", &body.to_string()).await;
        assert_eq!(code, 400, "{body} -> {text}");
        assert!(
            text.contains(&format!("invalid {field}:")),
            "{body}: expected the field {field} named, got {text}"
        );
    }
    let (code, text) = s.put("/v1/agent/service/register", "{not json").await;
    assert_eq!(code, 400);
    assert!(text.contains("body"), "{text}");
    let (_, after) = s.get_json("/v1/agent/services").await;
    assert_eq!(before, after);
    assert_eq!(
        consul_index(&s.get("/v1/catalog/services").await),
        index_before
    );
    s.stop().await;
}

#[tokio::test]
async fn registrator_and_python_client_bodies_are_accepted() {
    let s = Running::start().await;
    // gliderlabs/registrator sends null checks when a container has none.
    s.register(
        json!({"ID": "h:c:80", "Name": "reg", "Tags": null, "Port": 80, "Address": "10.0.0.1",
        "Meta": null, "Check": null, "Checks": null}),
    )
    .await;
    // Empty check objects are no check; known Consul fields Bronze ignores are fine.
    s.register(
        json!({"ID": "e", "Name": "reg", "Port": 81, "Check": {}, "EnableTagOverride": true,
        "TaggedAddresses": {}, "Token": ""}),
    )
    .await;
    let (_, services) = s.get_json("/v1/agent/services").await;
    assert_eq!(services["h:c:80"]["Service"], "reg");
    let (_, checks) = s.get_json("/v1/agent/checks").await;
    assert_eq!(checks, json!({}));
    // IDs with colons route whole.
    assert_eq!(
        s.put("/v1/agent/service/deregister/h:c:80", "").await.0,
        200
    );
    s.stop().await;
}

#[tokio::test]
async fn lowercase_keys_and_nanosecond_durations_are_accepted() {
    let s = Running::start().await;
    s.register(json!({"id": "w", "name": "web", "port": 80,
        "check": {"ttl": 30_000_000_000u64, "deregister_critical_service_after": "90s", "status": "passing"}}))
        .await;
    let (_, checks) = s.get_json("/v1/agent/checks").await;
    assert_eq!(checks["service:w"]["Status"], "passing");
    assert_eq!(checks["service:w"]["Definition"]["TTL"], "30s");
    s.stop().await;
}

#[tokio::test]
async fn blocking_queries_wait_for_a_change_or_the_timeout() {
    let s = Running::start().await;
    s.register(json!({"ID": "a", "Name": "web", "Port": 80}))
        .await;
    let r = s.get("/v1/health/service/web").await;
    let index = consul_index(&r);
    // Nothing changes: returns after `wait` with the same index.
    let started = Instant::now();
    let r = s
        .get(&format!("/v1/health/service/web?index={index}&wait=300ms"))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(consul_index(&r), index);
    // A change to another service does not wake it... (it may, Consul
    // allows that, but the index it reports must not move)
    let url = s.url(&format!("/v1/health/service/web?index={index}&wait=30s"));
    let waiter = tokio::spawn(async move {
        let r = reqwest::get(url).await.expect("GET");
        let i = consul_index(&r);
        (i, r.json::<serde_json::Value>().await.expect("json"))
    });
    // Parked before the change or asking after it, it answers with an
    // index past the change's and the instance it added (that a query at
    // the current index waits is shown above, by the 300 ms wait).
    s.register(json!({"ID": "b", "Name": "web", "Port": 81}))
        .await;
    let (new_index, body) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken by the change")
        .expect("join");
    assert!(new_index > index);
    assert_eq!(body.as_array().expect("array").len(), 2);
    // An index from the past returns at once.
    let started = Instant::now();
    s.get("/v1/catalog/services?index=1&wait=30s").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    s.stop().await;
}

#[tokio::test]
async fn passing_and_tag_filters() {
    let s = Running::start().await;
    s.register(
        json!({"ID": "a", "Name": "web", "Port": 80, "Tags": ["v1", "blue"],
        "Check": {"CheckID": "a", "TTL": "1h", "Status": "passing"}}),
    )
    .await;
    s.register(json!({"ID": "b", "Name": "web", "Port": 81, "Tags": ["v1"],
        "Check": {"CheckID": "b", "TTL": "1h", "Status": "warning"}}))
        .await;
    let (_, all) = s.get_json("/v1/health/service/web").await;
    assert_eq!(all.as_array().expect("array").len(), 2);
    let (_, passing) = s.get_json("/v1/health/service/web?passing").await;
    assert_eq!(passing.as_array().expect("array").len(), 1);
    assert_eq!(passing[0]["Service"]["ID"], "a");
    assert_eq!(passing[0]["Checks"][0]["Status"], "passing");
    let (_, tagged) = s.get_json("/v1/health/service/web?tag=v1&tag=blue").await;
    assert_eq!(tagged.as_array().expect("array").len(), 1);
    let (_, tagged) = s.get_json("/v1/catalog/service/web?tag=v1").await;
    assert_eq!(tagged.as_array().expect("array").len(), 2);
    let r = s
        .get("/v1/health/service/web?filter=Service.Port==80")
        .await;
    assert_eq!(r.status(), 400);
    let r = s.get("/v1/health/service/web?dc=elsewhere").await;
    assert_eq!(r.status(), 500);
    s.stop().await;
}

#[tokio::test]
async fn ttl_checks_expire_and_critical_instances_are_deregistered() {
    let s = Running::start().await;
    s.register(json!({"ID": "t", "Name": "ttl", "Port": 80,
        "Check": {"CheckID": "t", "TTL": "300ms", "Status": "passing"}}))
        .await;
    s.register(json!({"ID": "gone", "Name": "ttl", "Port": 81,
        "Check": {"CheckID": "gone", "TTL": "200ms", "Status": "passing", "DeregisterCriticalServiceAfter": "300ms"}}))
        .await;
    // Refreshing keeps it passing.
    kept_alive_by_refreshes(Duration::from_millis(300), || async {
        assert_eq!(s.put("/v1/agent/check/pass/t?note=alive", "").await.0, 200);
        let (_, checks) = s.get_json("/v1/agent/checks").await;
        checks["t"]["Status"] == "passing" && checks["t"]["Output"] == "alive"
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "TTL expiry turns the check critical",
        || async { s.get_json("/v1/agent/checks").await.1["t"]["Status"] == "critical" },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "critical instance deregistered",
        || async {
            s.get_json("/v1/agent/services")
                .await
                .1
                .get("gone")
                .is_none()
        },
    )
    .await;
    // The other one stays registered, critical.
    assert!(s.get_json("/v1/agent/services").await.1.get("t").is_some());
    // Unknown checks and non-TTL checks.
    assert_eq!(s.put("/v1/agent/check/pass/nope", "").await.0, 404);
    let (code, _) = s
        .put(
            "/v1/agent/check/update/t",
            r#"{"Status": "warning", "Output": "slow"}"#,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        s.get_json("/v1/agent/checks").await.1["t"]["Status"],
        "warning"
    );
    let (code, text) = s
        .put("/v1/agent/check/update/t", r#"{"Status": "sideways"}"#)
        .await;
    assert_eq!(code, 400, "{text}");
    s.stop().await;
}

/// A tiny HTTP target whose status code the test sets.
async fn target() -> (String, std::sync::Arc<std::sync::atomic::AtomicU16>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU16, Ordering};
    let code = Arc::new(AtomicU16::new(200));
    let c = code.clone();
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let c = c.clone();
            async move {
                axum::http::StatusCode::from_u16(c.load(Ordering::Relaxed)).unwrap_or_default()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/health"), code)
}

#[tokio::test]
async fn http_and_tcp_checks_run_and_drive_health() {
    use std::sync::atomic::Ordering;
    let s = Running::start().await;
    let (url, code) = target().await;
    s.register(
        json!({"ID": "h", "Name": "checked", "Address": "10.0.0.1", "Port": 80,
        "Check": {"HTTP": url, "Interval": "100ms", "Timeout": "1s"}}),
    )
    .await;
    let status = || async {
        s.get_json("/v1/health/service/checked").await.1[0]["Checks"][0]["Status"].clone()
    };
    eventually(Duration::from_secs(10), "2xx is passing", || async {
        status().await == "passing"
    })
    .await;
    code.store(429, Ordering::Relaxed);
    eventually(Duration::from_secs(10), "429 is warning", || async {
        status().await == "warning"
    })
    .await;
    code.store(503, Ordering::Relaxed);
    eventually(Duration::from_secs(10), "5xx is critical", || async {
        status().await == "critical"
    })
    .await;
    let out = s.dig(&["checked.service.bronze", "A"]).await;
    assert_eq!(crate::harness::status(&out), "NXDOMAIN");
    code.store(200, Ordering::Relaxed);
    eventually(Duration::from_secs(10), "recovers", || async {
        status().await == "passing"
    })
    .await;
    assert_eq!(
        s.dig(&["checked.service.bronze", "A", "+short"])
            .await
            .trim(),
        "10.0.0.1"
    );

    // TCP: a listener that exists, then one that does not.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    s.register(json!({"ID": "t", "Name": "tcp", "Port": 80,
        "Check": {"TCP": addr.to_string(), "Interval": "100ms", "Timeout": "1s"}}))
        .await;
    let tcp_status =
        || async { s.get_json("/v1/health/service/tcp").await.1[0]["Checks"][0]["Status"].clone() };
    eventually(Duration::from_secs(10), "open port is passing", || async {
        tcp_status().await == "passing"
    })
    .await;
    drop(listener);
    eventually(
        Duration::from_secs(10),
        "closed port is critical",
        || async { tcp_status().await == "critical" },
    )
    .await;
    s.stop().await;
}

#[tokio::test]
async fn durable_registrations_survive_a_restart_and_soft_ones_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().display().to_string();
    let s = Running::with(|c| c.data_dir = data.clone()).await;
    s.register(json!({"ID": "durable", "Name": "web", "Address": "10.0.0.1", "Port": 80, "Tags": ["keep"]})).await;
    s.register(
        json!({"ID": "soft", "Name": "web", "Address": "10.0.0.2", "Port": 80,
        "Check": {"TTL": "30s", "Status": "passing"}}),
    )
    .await;
    s.register(json!({"ID": "removed", "Name": "web", "Address": "10.0.0.3", "Port": 80}))
        .await;
    assert_eq!(
        s.put("/v1/agent/service/deregister/removed", "").await.0,
        200
    );
    let index_before = consul_index(&s.get("/v1/catalog/services").await);
    s.stop().await;

    let s = Running::with(|c| c.data_dir = data.clone()).await;
    let (index, services) = s.get_json("/v1/agent/services").await;
    let ids: Vec<&String> = services.as_object().expect("object").keys().collect();
    assert_eq!(ids, vec!["durable"]);
    assert_eq!(services["durable"]["Tags"], json!(["keep"]));
    assert!(index > index_before, "indexes keep growing across restarts");
    assert_eq!(
        s.dig(&["web.service.bronze", "A", "+short"]).await.trim(),
        "10.0.0.1"
    );
    s.stop().await;
}

#[tokio::test]
async fn metrics_and_healthz() {
    let s = Running::start().await;
    s.register(json!({"ID": "a", "Name": "web", "Port": 80}))
        .await;
    s.dig(&["web.service.bronze", "A"]).await;
    let r = s.get("/healthz").await;
    assert_eq!(r.status(), 200);
    let text = s.get("/metrics").await.text().await.expect("text");
    assert!(text.contains("bronze_discovery_instances 1"), "{text}");
    assert!(
        text.contains("bronze_discovery_registrations_total 1"),
        "{text}"
    );
    assert!(
        text.contains("bronze_discovery_dns_queries_total{transport=\"udp\",rcode=\"NOERROR\"} 1"),
        "{text}"
    );
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
    let r = s.get("/v1/kv/anything").await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.expect("text").contains("not part of"));
    s.stop().await;
}

/// Consul's maintenance mode, over HTTP and gRPC: the instance turns
/// critical (a `_service_maintenance:<id>` check says why), leaves DNS and
/// passing-only reads, stays so when re-registered, and comes back when it
/// is lifted.
#[tokio::test]
async fn maintenance_mode_takes_an_instance_out_and_back() {
    use bronze_proto::discovery::v1 as pb;
    let s = Running::start().await;
    let web1 = json!({"ID": "web-1", "Name": "web", "Address": "10.0.0.1", "Port": 80});
    s.register(web1.clone()).await;
    s.register(json!({"ID": "web-2", "Name": "web", "Address": "10.0.0.2", "Port": 80}))
        .await;
    let dig_a = || async { s.dig(&["web.service.bronze", "A", "+short"]).await };
    assert_eq!(dig_a().await.lines().count(), 2);
    let (code, _) = s
        .put(
            "/v1/agent/service/maintenance/web-1?enable=true&reason=deploying",
            "",
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(dig_a().await.trim(), "10.0.0.2");
    let (_, passing) = s.get_json("/v1/health/service/web?passing").await;
    assert_eq!(passing.as_array().map(Vec::len), Some(1));
    let (_, checks) = s.get_json("/v1/health/checks/web").await;
    let maint = checks
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|c| c["CheckID"] == "_service_maintenance:web-1")
        })
        .expect("the maintenance check");
    assert_eq!(maint["Status"], "critical");
    assert_eq!(maint["Notes"], "deploying");
    // Re-registering (a registrator's resync) keeps it.
    s.register(web1).await;
    assert_eq!(dig_a().await.trim(), "10.0.0.2");
    let (code, _) = s
        .put("/v1/agent/service/maintenance/web-1?enable=false", "")
        .await;
    assert_eq!(code, 200);
    assert_eq!(dig_a().await.lines().count(), 2);
    // Over gRPC, with a node; an unknown instance is NotFound; bad input named.
    let mut g = s.grpc().await;
    g.set_maintenance(pb::SetMaintenanceRequest {
        node: String::new(),
        id: "web-2".into(),
        enable: true,
        reason: String::new(),
    })
    .await
    .expect("grpc maintenance");
    assert_eq!(dig_a().await.trim(), "10.0.0.1");
    let e = g
        .set_maintenance(pb::SetMaintenanceRequest {
            id: "nope".into(),
            enable: true,
            ..Default::default()
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), tonic::Code::NotFound);
    let (code, body) = s
        .put("/v1/agent/service/maintenance/web-1?enable=maybe", "")
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("enable"), "{body}");
    s.stop().await;
}
