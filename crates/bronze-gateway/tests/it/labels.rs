//! Traefik's labels as discovery metadata (as the registrator copies them),
//! registered through discovery's Consul API, routed by the gateway to
//! echo backends; what the gateway cannot honour at its admin API's
//! `GET /labels` and in `bronze_gateway_label_warnings`. The registrator's
//! test binary does the same with containers on the engine.

use std::net::SocketAddr;

use serde_json::{Value, json};

use super::{curl, discovery, echo, gateway_with_discovery, s, until_status};

/// Registers `id` (service `svc`) at `backend` with `meta`.
async fn register(http: SocketAddr, id: &str, backend: SocketAddr, meta: Value) {
    bronze_runtime::install_crypto_provider();
    let body = json!({
        "ID": id, "Name": "svc", "Address": backend.ip().to_string(), "Port": backend.port(),
        "Meta": meta,
    });
    let r = reqwest::Client::new()
        .put(format!("http://{http}/v1/agent/service/register"))
        .body(body.to_string())
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 200, "{id}");
}

async fn report(admin: SocketAddr) -> Value {
    reqwest::get(format!("http://{admin}/labels"))
        .await
        .expect("GET /labels")
        .json()
        .await
        .expect("json")
}

async fn gauge(admin: SocketAddr) -> f64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix("bronze_gateway_label_warnings "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the gauge")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_labels_route_rewrite_and_report_what_they_cannot() {
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let (http, grpc, _d) = discovery().await;
    let gw = gateway_with_discovery(grpc).await;
    register(
        http,
        "v1",
        v1,
        json!({
            "traefik.frontend.rule": "Host:api.example.com;PathPrefixStrip:/v2/user",
            "traefik.weight": "10",
        }),
    )
    .await;
    register(
        http,
        "v2",
        v2,
        json!({
            "traefik.http.routers.r.rule":
                "Host(`api.example.com`) && (PathPrefix(`/a`) || PathPrefix(`/b`))",
            "traefik.http.routers.r.middlewares": "strip@docker",
            "traefik.http.middlewares.strip.stripprefix.prefixes": "/a,/b",
        }),
    )
    .await;
    // What Bronze's routes cannot match: a query string.
    register(
        http,
        "bad",
        v1,
        json!({"traefik.frontend.rule": "Host:bad.example.com;Query:debug=1"}),
    )
    .await;

    let base = format!("http://{}", gw.addr);
    let (code, body) =
        until_status(&format!("{base}/v2/user/42?x=1"), "api.example.com", 200).await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["backend"], "v1");
    assert_eq!(v["uri"], "/42?x=1", "PathPrefixStrip");
    assert_eq!(
        v["headers"]["x-forwarded-prefix"], "/v2/user",
        "as Traefik sends it"
    );
    assert_eq!(
        v["headers"]["host"], "api.example.com",
        "passHostHeader's default"
    );

    // One router, two prefixes, each stripped.
    for (path, rest) in [("/a/x", "/x"), ("/b/y/z", "/y/z")] {
        let (code, body) = until_status(&format!("{base}{path}"), "api.example.com", 200).await;
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            (v["backend"].as_str(), v["uri"].as_str()),
            (Some("v2"), Some(rest))
        );
    }

    // The bad rule is not routed and is reported, by instance and label.
    let (code, _) = curl(s(&["-H", "Host: bad.example.com", &format!("{base}/")])).await;
    assert_eq!(code, 404);
    let r = report(gw.admin).await;
    assert_eq!(r["warnings"].as_array().map(Vec::len), Some(1), "{r}");
    let w = &r["warnings"][0];
    assert_eq!(w["instance"], "bad");
    assert_eq!(w["key"], "traefik.frontend.rule");
    assert_eq!(w["effect"], "left_out");
    assert!(
        w["message"].as_str().is_some_and(|m| m.contains("Query")),
        "{w}"
    );
    assert_eq!(r["routes"].as_array().map(Vec::len), Some(2), "{r}");
    assert_eq!(gauge(gw.admin).await, 1.0);

    // Fixed (re-registered with a rule Bronze takes): routed, no warning.
    register(
        http,
        "bad",
        v1,
        json!({"traefik.frontend.rule": "Host:bad.example.com"}),
    )
    .await;
    let (code, body) = until_status(&format!("{base}/"), "bad.example.com", 200).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(report(gw.admin).await["warnings"], json!([]));
    assert_eq!(gauge(gw.admin).await, 0.0);
}
