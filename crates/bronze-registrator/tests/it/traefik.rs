//! Traefik's routing labels end to end: containers on the real engine,
//! labelled as the seeds' stack files label them, registered by the
//! registrator into discovery and routed by a gateway that follows
//! discovery (all in this process, on port 0), asked over loopback.
//!
//! Every registrator here sees every container on the engine, other
//! tests' too, so each test uses host names of its own and reads only its
//! own containers' warnings.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bronze_runtime::Shutdown;
use serde_json::Value;

use crate::harness::{Container, Discovery, Reg, Spec, eventually, reg_config, unique};

/// A gateway following `d`, served until dropped.
struct Gateway {
    addr: SocketAddr,
    admin: SocketAddr,
    _shutdown: Shutdown,
}

async fn gateway(d: &Discovery) -> Gateway {
    let mut config = bronze_gateway::Config::ephemeral();
    config.discovery = format!("http://{}", d.grpc);
    let server = bronze_gateway::Server::bind(config)
        .await
        .expect("gateway binds");
    let (addr, admin) = (server.addr(), server.admin_addr());
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    tokio::spawn(async move { server.serve(s).await.expect("gateway serves") });
    Gateway {
        addr,
        admin,
        _shutdown: shutdown,
    }
}

fn client() -> reqwest::Client {
    bronze_runtime::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

/// `GET http://gateway<path>` with `Host: <host>`: status and body (0 when
/// the request failed).
async fn get(gw: &Gateway, host: &str, path: &str) -> (u16, String) {
    match client()
        .get(format!("http://{}{path}", gw.addr))
        .header(reqwest::header::HOST, host)
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// Asks until the answer has status `code` (and, when given, this trimmed
/// body), for at most 30 s: containers start, register, pass their checks,
/// then route.
async fn until(gw: &Gateway, host: &str, path: &str, code: u16, body: Option<&str>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (c, b) = get(gw, host, path).await;
        if c == code && body.is_none_or(|want| b.trim() == want) {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "{host}{path}: wanted {code} {body:?}, got {c} {b:?}; the gateway's labels: {}",
                admin(gw, "/labels").await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The admin API's `GET <path>`, as JSON or text.
async fn admin(gw: &Gateway, path: &str) -> String {
    client()
        .get(format!("http://{}{path}", gw.admin))
        .send()
        .await
        .expect("admin")
        .text()
        .await
        .expect("text")
}

/// Warnings of `GET /labels` about one container.
async fn warnings_about(gw: &Gateway, container: &str) -> Vec<Value> {
    let report: Value = serde_json::from_str(&admin(gw, "/labels").await).expect("json");
    report["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter(|w| {
            w["instance"]
                .as_str()
                .is_some_and(|i| i.ends_with(&format!("/{container}")))
        })
        .cloned()
        .collect()
}

/// busybox httpd answering `/who` with `name` on 8080, and with each
/// `(port, name)` of `more` on that port.
fn serving(name: &str, more: &[(u16, &str)]) -> Option<Vec<String>> {
    let mut script = String::new();
    for (port, other) in more {
        script.push_str(&format!(
            "/bin/busybox mkdir -p /www{port} && echo {other} > /www{port}/who && /bin/busybox httpd -p {port} -h /www{port} && "
        ));
    }
    script.push_str(&format!(
        "echo {name} > /www/who && exec /bin/busybox httpd -f -p 8080 -h /www"
    ));
    Some(vec!["sh".into(), "-c".into(), script])
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The seed's "versions side by side" stack: api-v2, api-v3 and api-v3-my
/// on one host, each behind `PathPrefixStrip`, labelled exactly as its
/// stack.yml's `deploy.labels` (network, weight, port, rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_stack_files_v1_labels_route_through_the_gateway() {
    let d = Discovery::start().await;
    let r = Reg::start(reg_config(d.grpc, &unique("host"))).await;
    let gw = gateway(&d).await;
    let host = format!("{}.example.com", unique("api"));
    let mut names = Vec::new();
    let mut containers = Vec::new();
    for (who, prefix) in [
        ("v2", "/v2/user"),
        ("v3", "/v3/user"),
        ("v3-my", "/v3/user/my"),
    ] {
        let name = unique(&format!("it-seed-{who}"));
        let rule = format!("Host:{host};PathPrefixStrip:{prefix}");
        let spec = Spec {
            labels: labels(&[
                ("SERVICE_NAME", &unique(&format!("api-{who}"))),
                ("traefik.docker.network", "traefik_public"),
                ("traefik.weight", "100"),
                ("traefik.port", "8080"),
                ("traefik.frontend.rule", &rule),
            ]),
            cmd: serving(who, &[]),
            ..Default::default()
        };
        containers.push(Container::run(&name, spec).await);
        names.push(name);
    }
    // Each prefix reaches its own version, stripped (the containers serve
    // /who, not /v2/user/who); the longest prefix wins.
    for (path, who) in [
        ("/v2/user/who", "v2"),
        ("/v3/user/who", "v3"),
        ("/v3/user/my/who", "v3-my"),
    ] {
        until(&gw, &host, path, 200, Some(who)).await;
    }
    assert_eq!(get(&gw, "other.example.com", "/v2/user/who").await.0, 404);
    for name in &names {
        assert_eq!(warnings_about(&gw, name).await, Vec::<Value>::new());
    }
    // The container goes: so does its route.
    containers.remove(0).remove().await;
    until(&gw, &host, "/v2/user/who", 404, None).await;
    r.stop().await;
    d.stop().await;
}

/// Blue/green as the seed's comment on `traefik.weight` has it: two
/// services with one rule, weighted 3 to 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_with_one_rule_share_it_by_weight() {
    let d = Discovery::start().await;
    let r = Reg::start(reg_config(d.grpc, &unique("host"))).await;
    let gw = gateway(&d).await;
    let host = format!("{}.example.com", unique("shop"));
    let rule = format!("Host:{host};PathPrefixStrip:/shop");
    let mut containers = Vec::new();
    for (who, weight) in [("blue", "3"), ("green", "1")] {
        let spec = Spec {
            labels: labels(&[
                ("SERVICE_NAME", &unique(&format!("shop-{who}"))),
                ("traefik.weight", weight),
                ("traefik.frontend.rule", &rule),
            ]),
            cmd: serving(who, &[]),
            ..Default::default()
        };
        containers.push(Container::run(&unique(&format!("it-{who}")), spec).await);
    }
    // Both in the table.
    until(&gw, &host, "/shop/who", 200, Some("green")).await;
    until(&gw, &host, "/shop/who", 200, Some("blue")).await;
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..80 {
        let (code, body) = get(&gw, &host, "/shop/who").await;
        assert_eq!(code, 200, "{body}");
        *counts.entry(body.trim().to_string()).or_default() += 1;
    }
    // 60 to 20 by weight; a table rebuilt meanwhile (other tests' containers
    // register in this discovery too) restarts the weighted ring, hence
    // the margin.
    let blue = counts.get("blue").copied().unwrap_or(0);
    assert!((52..=68).contains(&blue), "{counts:?}");
    assert_eq!(blue + counts.get("green").copied().unwrap_or(0), 80);
    r.stop().await;
    d.stop().await;
}

/// A v2 router with a stripprefix middleware (`@docker`) and a load
/// balancer port, beside a router whose basicauth middleware Bronze
/// cannot apply: that one is left out and reported, the first routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_router_with_stripprefix_and_a_loadbalancer_port() {
    let d = Discovery::start().await;
    let r = Reg::start(reg_config(d.grpc, &unique("host"))).await;
    let gw = gateway(&d).await;
    let host = format!("{}.example.com", unique("api"));
    let api = unique("it-v2-api");
    let _api = Container::run(
        &api,
        Spec {
            labels: labels(&[
                ("SERVICE_NAME", &unique("v2-api")),
                ("traefik.enable", "true"),
                (
                    "traefik.http.routers.api.rule",
                    &format!("Host(`{host}`) && PathPrefix(`/api`)"),
                ),
                ("traefik.http.routers.api.entrypoints", "web"),
                ("traefik.http.routers.api.middlewares", "api-strip@docker"),
                (
                    "traefik.http.middlewares.api-strip.stripprefix.prefixes",
                    "/api",
                ),
                ("traefik.http.services.api.loadbalancer.server.port", "9090"),
            ]),
            cmd: serving("eight", &[(9090, "nine")]),
            extra_ports: vec![9090],
            ..Default::default()
        },
    )
    .await;
    let locked = unique("it-v2-locked");
    let locked_service = unique("v2-locked");
    let _locked = Container::run(
        &locked,
        Spec {
            labels: labels(&[
                ("SERVICE_NAME", &locked_service),
                (
                    "traefik.http.routers.admin.rule",
                    &format!("Host(`{host}`) && PathPrefix(`/admin`)"),
                ),
                ("traefik.http.routers.admin.middlewares", "auth"),
                (
                    "traefik.http.middlewares.auth.basicauth.users",
                    "admin:$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/",
                ),
            ]),
            cmd: serving("admin", &[]),
            ..Default::default()
        },
    )
    .await;
    // Port 9090 (not the lowest, 8080), with /api stripped.
    until(&gw, &host, "/api/who", 200, Some("nine")).await;
    assert_eq!(get(&gw, &host, "/who").await.0, 404, "the rule needs /api");

    // The router Bronze cannot protect is not routed, and says why.
    let report = || async {
        let w = warnings_about(&gw, &locked).await;
        w.iter().any(|w| {
            w["key"] == "traefik.http.routers.admin.middlewares" && w["effect"] == "left_out"
        })
    };
    eventually(
        Duration::from_secs(30),
        "the basicauth router reported",
        report,
    )
    .await;
    assert_eq!(get(&gw, &host, "/admin/who").await.0, 404);
    let ignored = warnings_about(&gw, &api).await;
    assert_eq!(ignored.len(), 1, "{ignored:?}");
    assert_eq!(ignored[0]["key"], "traefik.http.routers.api.entrypoints");
    assert_eq!(ignored[0]["effect"], "ignored");
    let metrics = admin(&gw, "/metrics").await;
    let count: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("bronze_gateway_label_warnings "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the warnings gauge");
    assert!(count >= 2.0, "{count}");
    // The password hash never reached discovery.
    let instances = d.instances(&locked_service).await;
    assert_eq!(
        instances[0].meta["traefik.http.middlewares.auth.basicauth.users"],
        "(a secret: not copied)"
    );
    r.stop().await;
    d.stop().await;
}

/// A Swarm stack's service publishes nothing: with `--internal` the
/// registrator registers the container's address on the network
/// `traefik.docker.network` names, on the port Traefik's label names (not
/// EXPOSEd by the image), and the gateway routes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpublished_service_routes_by_its_address_with_internal() {
    let d = Discovery::start().await;
    let mut config = reg_config(d.grpc, &unique("host"));
    config.internal = true;
    let r = Reg::start(config).await;
    let gw = gateway(&d).await;
    let host = format!("{}.example.com", unique("inside"));
    let _c = Container::run(
        &unique("it-unpublished"),
        Spec {
            labels: labels(&[
                ("SERVICE_NAME", &unique("inside")),
                ("traefik.docker.network", "bridge"),
                ("traefik.http.routers.web.rule", &format!("Host(`{host}`)")),
                ("traefik.http.services.web.loadbalancer.server.port", "9090"),
            ]),
            cmd: serving("eight", &[(9090, "nine")]),
            unpublished: true,
            ..Default::default()
        },
    )
    .await;
    until(&gw, &host, "/who", 200, Some("nine")).await;
    r.stop().await;
    d.stop().await;
}

/// `traefik.enable=false` (the seed's label on Traefik itself): registered,
/// never routed, and no warning; a labelled neighbour routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_enable_false_is_registered_but_not_routed() {
    let d = Discovery::start().await;
    let r = Reg::start(reg_config(d.grpc, &unique("host"))).await;
    let gw = gateway(&d).await;
    let on = format!("{}.example.com", unique("on"));
    let off = format!("{}.example.com", unique("off"));
    let off_service = unique("off");
    let off_name = unique("it-off");
    let _off = Container::run(
        &off_name,
        Spec {
            labels: labels(&[
                ("SERVICE_NAME", &off_service),
                ("traefik.enable", "false"),
                ("traefik.frontend.rule", &format!("Host:{off}")),
            ]),
            cmd: serving("off", &[]),
            ..Default::default()
        },
    )
    .await;
    let _on = Container::run(
        &unique("it-on"),
        Spec {
            labels: labels(&[
                ("SERVICE_NAME", &unique("on")),
                ("traefik.frontend.rule", &format!("Host:{on}")),
            ]),
            cmd: serving("on", &[]),
            ..Default::default()
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the disabled one registered",
        || async { d.instances(&off_service).await.len() == 1 },
    )
    .await;
    // Once its neighbour routes, the gateway has seen both.
    until(&gw, &on, "/who", 200, Some("on")).await;
    assert_eq!(get(&gw, &off, "/who").await.0, 404);
    assert_eq!(
        d.instances(&off_service).await[0].meta["traefik.enable"],
        "false"
    );
    assert_eq!(warnings_about(&gw, &off_name).await, Vec::<Value>::new());
    r.stop().await;
    d.stop().await;
}
