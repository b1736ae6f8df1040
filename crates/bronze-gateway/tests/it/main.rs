//! bronze-gateway end to end: curl (HTTP/1.1 and h2c) through the gateway
//! to echo backends; configuration swaps under load; bad configuration.

mod balancing;
mod h1;
mod tls;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Bytes;
use axum::extract::Request;
use bronze_gateway::{Config, Server};
use bronze_runtime::Shutdown;

mod admin;
mod integration;
mod labels;
mod plugins;

/// An HTTP backend that answers every request with what it received:
/// method, path and query, headers, body length.
async fn echo(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(move |req: Request| async move {
        let (parts, body) = req.into_parts();
        let body: Bytes = axum::body::to_bytes(body, 64 << 20)
            .await
            .unwrap_or_default();
        let headers: serde_json::Map<String, serde_json::Value> = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    serde_json::Value::from(v.to_str().unwrap_or("?")),
                )
            })
            .collect();
        axum::Json(serde_json::json!({
            "backend": name,
            "method": parts.method.as_str(),
            "uri": parts.uri.to_string(),
            "headers": headers,
            "body_len": body.len(),
        }))
    });
    tokio::spawn(async move { axum::serve(listener, app).await.expect("echo serves") });
    addr
}

struct Gw {
    addr: SocketAddr,
    admin: SocketAddr,
    /// The TLS listener, when the configuration has one.
    tls: Option<SocketAddr>,
    _shutdown: Shutdown,
}

/// A gateway serving `config` until the returned `Gw` is dropped.
async fn serve(config: Config) -> Gw {
    let server = Server::bind(config).await.expect("gateway binds");
    let (addr, admin, tls) = (server.addr(), server.admin_addr(), server.tls_addr());
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    tokio::spawn(async move { server.serve(s).await.expect("gateway serves") });
    Gw {
        addr,
        admin,
        tls,
        _shutdown: shutdown,
    }
}

/// A gateway that loads `declarative` at start, its configuration first
/// changed by `edit`.
async fn gateway_with(declarative: serde_json::Value, edit: impl FnOnce(&mut Config)) -> Gw {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kong.json");
    std::fs::write(&path, declarative.to_string()).expect("write");
    let mut config = Config::ephemeral();
    config.declarative_config = path.display().to_string();
    edit(&mut config);
    serve(config).await
}

async fn gateway(declarative: serde_json::Value) -> Gw {
    gateway_with(declarative, |_| {}).await
}

/// curl's status and body, off the async threads.
async fn curl(args: Vec<String>) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}"])
            .args(&args)
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.parse().unwrap_or(0), body.to_string())
    })
    .await
    .expect("join")
}

/// Polls `done` every 10 ms until it holds, for at most `within` (then
/// the test fails, naming `what`).
async fn eventually(within: std::time::Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn kong(backend: SocketAddr) -> serde_json::Value {
    serde_json::json!({
        "_format_version": "3.0",
        "services": [
            {"name": "users", "url": format!("http://{backend}/v1"), "routes": [
                {"name": "users", "paths": ["/users"]},
                {"name": "users-keep", "paths": ["/keep"], "strip_path": false},
                {"name": "by-host", "hosts": ["*.example.com"], "preserve_host": true},
                {"name": "user-id", "paths": ["~/u/\\d+"]}
            ]}
        ]
    })
}

#[tokio::test]
async fn curl_through_the_gateway_rewrites_as_kong_does() {
    let backend = echo("a").await;
    let gw = gateway(kong(backend)).await;
    let base = format!("http://{}", gw.addr);

    // strip_path (default): /users/42?x=1 -> /v1/42?x=1, Host rewritten.
    let (code, body) = curl(s(&[&format!("{base}/users/42?x=1")])).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["uri"], "/v1/42?x=1");
    assert_eq!(v["headers"]["host"], backend.to_string());
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(v["headers"]["x-forwarded-proto"], "http");
    assert_eq!(v["headers"]["x-forwarded-host"], gw.addr.to_string());
    assert!(
        v["headers"]["x-request-id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );

    // strip_path false keeps the prefix; a regex route strips its match.
    let (_, body) = curl(s(&[&format!("{base}/keep/a")])).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).expect("json")["uri"],
        "/v1/keep/a"
    );
    let (_, body) = curl(s(&[&format!("{base}/u/77/profile")])).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).expect("json")["uri"],
        "/v1/profile"
    );

    // Wildcard host with preserve_host; an earlier X-Forwarded-For is kept.
    let (_, body) = curl(s(&[
        "-H",
        "Host: shop.example.com",
        "-H",
        "X-Forwarded-For: 10.9.9.9",
        &format!("{base}/anything"),
    ]))
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["headers"]["host"], "shop.example.com");
    assert_eq!(v["headers"]["x-forwarded-for"], "10.9.9.9, 127.0.0.1");

    // Hop-by-hop headers, and those Connection names, do not travel.
    let (_, body) = curl(s(&[
        "-H",
        "Connection: keep-alive, X-Secret",
        "-H",
        "X-Secret: hop",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "X-Kept: end-to-end",
        &format!("{base}/users"),
    ]))
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(v["headers"].get("x-secret").is_none(), "{v}");
    assert!(v["headers"].get("keep-alive").is_none(), "{v}");
    assert_eq!(v["headers"]["x-kept"], "end-to-end");

    // h2c (prior knowledge) from curl, forwarded as HTTP/1.1.
    let (code, body) = curl(s(&["--http2-prior-knowledge", &format!("{base}/users/h2")])).await;
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).expect("json")["uri"],
        "/v1/h2"
    );

    // A 5 MB upload streams through.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("big");
    std::fs::write(&file, vec![b'x'; 5 << 20]).expect("write");
    let (code, body) = curl(s(&[
        "-T",
        &file.display().to_string(),
        &format!("{base}/users/upload"),
    ]))
    .await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["body_len"], 5 << 20);

    // No route: Kong's 404.
    let (code, body) = curl(s(&[&format!("{base}/nothing-here")])).await;
    assert_eq!(code, 404);
    assert_eq!(body, r#"{"message":"no Route matched with those values"}"#);

    // Per-route metrics by status class.
    let (_, metrics) = curl(s(&[&format!("http://{}/metrics", gw.admin)])).await;
    assert!(
        metrics.contains(
            r#"bronze_gateway_http_requests_total{route="users",service="users",status="2xx"}"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn unreachable_upstreams_are_502_and_weights_spread_load() {
    let (a, b) = (echo("a").await, echo("b").await);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "upstreams": [{"name": "pool", "targets": [
            {"target": a.to_string(), "weight": 100}, {"target": b.to_string(), "weight": 100}]}],
        "services": [
            {"name": "pool", "host": "pool", "routes": [{"name": "pool", "paths": ["/pool"]}]},
            {"name": "dead", "url": format!("http://{dead}"), "routes": [{"name": "dead", "paths": ["/dead"]}]}
        ]
    }))
    .await;
    let (code, body) = curl(s(&[&format!("http://{}/dead", gw.addr)])).await;
    assert_eq!(code, 502);
    assert!(
        body.contains("invalid response was received from the upstream"),
        "{body}"
    );
    let mut seen = std::collections::HashMap::new();
    for _ in 0..20 {
        let (_, body) = curl(s(&[&format!("http://{}/pool", gw.addr)])).await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        *seen
            .entry(v["backend"].as_str().expect("backend").to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.get("a"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&10), "{seen:?}");
}

#[tokio::test]
async fn config_swaps_under_load_lose_no_request_and_bad_config_changes_nothing() {
    let (a, b) = (echo("a").await, echo("b").await);
    let gw = gateway(kong(a)).await;
    let admin = format!("http://{}/config", gw.admin);
    bronze_runtime::install_crypto_provider();
    let client = reqwest::Client::new();

    // Invalid: 400 naming the field, and the old routes keep working.
    let mut bad = kong(b);
    bad["services"][0]["routes"][3]["paths"][0] = "~/(".into();
    let r = client
        .post(&admin)
        .body(bad.to_string())
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.expect("json");
    assert!(
        v["fields"]["services[0].routes[3].paths[0]"]
            .as_str()
            .is_some_and(|m| m.contains("regex")),
        "{v}"
    );
    let r = client
        .post(&admin)
        .body(r#"{"_format_version": "3.0", "services": [{"name": "x", "oops": 1}]}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.expect("json");
    assert!(v["fields"].get("services[0].oops").is_some(), "{v}");
    let (code, body) = curl(s(&[&format!("http://{}/users/1", gw.addr)])).await;
    assert_eq!(code, 200);
    assert!(body.contains(r#""backend":"a""#));

    // Swap between two backends 40 times while clients keep requesting:
    // every request is answered 200, by one backend or the other.
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loads = Vec::new();
    for _ in 0..4 {
        let (failures, done, url) = (
            failures.clone(),
            done.clone(),
            format!("http://{}/users/x", gw.addr),
        );
        let c = client.clone();
        loads.push(tokio::spawn(async move {
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
            n
        }));
    }
    for i in 0..40 {
        let backend = if i % 2 == 0 { b } else { a };
        let r = client
            .post(&admin)
            .body(kong(backend).to_string())
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status(), 201);
    }
    done.store(true, Ordering::Relaxed);
    let mut total = 0;
    for l in loads {
        total += l.await.expect("load");
    }
    assert!(total > 40, "{total} requests");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "of {total}");
    // The last configuration (backend a) is in effect and readable.
    let (_, body) = curl(s(&[&format!("http://{}/users/1", gw.addr)])).await;
    assert!(body.contains(r#""backend":"a""#), "{body}");
    let current: serde_json::Value = client
        .get(&admin)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(current["services"][0]["url"], format!("http://{a}/v1"));
    let routes: serde_json::Value = client
        .get(format!("http://{}/routes", gw.admin))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(routes["data"].as_array().map(Vec::len), Some(4));
}

async fn discovery() -> (SocketAddr, SocketAddr, Shutdown) {
    let server = bronze_discovery::Server::bind(bronze_discovery::Config::ephemeral())
        .await
        .expect("discovery binds");
    let (http, grpc) = (server.http_addr(), server.grpc_addr());
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    tokio::spawn(async move { server.serve(s).await.expect("discovery serves") });
    (http, grpc, shutdown)
}

async fn gateway_with_discovery(grpc: SocketAddr) -> Gw {
    let mut config = Config::ephemeral();
    config.discovery = format!("http://{grpc}");
    serve(config).await
}

/// Polls `url` (with `host`) until its status is `want`.
async fn until_status(url: &str, host: &str, want: u16) -> (u16, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let got = curl(s(&["-H", &format!("Host: {host}"), url])).await;
        if got.0 == want || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn labelled_instances_in_discovery_become_routes_and_leave_with_them() {
    let (blue, green) = (echo("blue").await, echo("green").await);
    let (http, grpc, _d) = discovery().await;
    let gw = gateway_with_discovery(grpc).await;
    bronze_runtime::install_crypto_provider();
    let client = reqwest::Client::new();
    let register = |id: &str, backend: SocketAddr, weight: &str| {
        let body = serde_json::json!({
            "ID": id, "Name": "shop", "Address": backend.ip().to_string(), "Port": backend.port(),
            "Meta": {
                "bronze.http.rule": "Host(`shop.example.com`) && PathPrefix(`/v2/user`)",
                "bronze.http.strip_prefix": "true",
                "bronze.http.weight": weight,
            }
        });
        client
            .put(format!("http://{http}/v1/agent/service/register"))
            .body(body.to_string())
            .send()
    };
    let url = format!("http://{}/v2/user/42", gw.addr);
    // Before any registration: no route.
    assert_eq!(
        curl(s(&["-H", "Host: shop.example.com", &url])).await.0,
        404
    );

    assert_eq!(
        register("blue", blue, "100")
            .await
            .expect("register")
            .status(),
        200
    );
    let (code, body) = until_status(&url, "shop.example.com", 200).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["backend"], "blue");
    assert_eq!(v["uri"], "/42", "strip_prefix");
    assert_eq!(v["headers"]["host"], "shop.example.com");
    // Another host does not match the rule.
    assert_eq!(
        curl(s(&["-H", "Host: other.example.com", &url])).await.0,
        404
    );

    // A canary: green joins the same rule with a tenth of blue's weight.
    assert_eq!(
        register("green", green, "10")
            .await
            .expect("register")
            .status(),
        200
    );
    let backend_of = |body: &str| {
        serde_json::from_str::<serde_json::Value>(body).unwrap_or_default()["backend"]
            .as_str()
            .unwrap_or("none")
            .to_string()
    };
    // Wait until green is in the table, then count 110 requests: 10 turns
    // of the weight ring (10 slots blue, 1 green).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, body) = curl(s(&["-H", "Host: shop.example.com", &url])).await;
        if backend_of(&body) == "green" || std::time::Instant::now() > deadline {
            break;
        }
    }
    let mut counts = std::collections::HashMap::new();
    for _ in 0..110 {
        let (_, body) = curl(s(&["-H", "Host: shop.example.com", &url])).await;
        *counts.entry(backend_of(&body)).or_insert(0) += 1;
    }
    assert_eq!(counts.get("green"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("blue"), Some(&100), "{counts:?}");

    // Both leave: the route goes with them.
    for id in ["blue", "green"] {
        let r = client
            .put(format!("http://{http}/v1/agent/service/deregister/{id}"))
            .send()
            .await
            .expect("deregister");
        assert_eq!(r.status(), 200);
    }
    let (code, body) = until_status(&url, "shop.example.com", 404).await;
    assert_eq!(code, 404, "{body}");
}

/// A WebSocket echo backend (tokio-tungstenite): every message comes back
/// prefixed with "echo: ".
async fn ws_echo() -> SocketAddr {
    use futures::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                        let reply = format!("echo: {}", t.as_str());
                        if ws.send(reply.into()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websockets_upgrade_through_the_gateway_and_survive_a_config_swap() {
    use futures::{SinkExt, StreamExt};
    let backend = ws_echo().await;
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "services": [{"name": "ws", "url": format!("http://{backend}"),
                      "routes": [{"name": "ws", "paths": ["/ws"], "strip_path": false}]}]
    }))
    .await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws/chat", gw.addr))
        .await
        .expect("WebSocket through the gateway");
    assert_eq!(resp.status(), 101);
    ws.send("hello".into()).await.expect("send");
    let reply = ws.next().await.expect("reply").expect("frame");
    assert_eq!(reply.to_text().expect("text"), "echo: hello");

    // Replacing the configuration does not drop the open WebSocket.
    bronze_runtime::install_crypto_provider();
    let r = reqwest::Client::new()
        .post(format!("http://{}/config", gw.admin))
        .body(r#"{"_format_version": "3.0"}"#)
        .send()
        .await
        .expect("POST /config");
    assert_eq!(r.status(), 201);
    ws.send("still there".into()).await.expect("send");
    let reply = ws.next().await.expect("reply").expect("frame");
    assert_eq!(reply.to_text().expect("text"), "echo: still there");
    // New connections see the new (empty) configuration.
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{}/ws/chat", gw.addr))
            .await
            .is_err()
    );
}

/// Sends raw bytes, returns everything the gateway answers until it closes
/// (or 10 s pass).
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test]
async fn hostile_requests_are_refused_before_reaching_a_backend() {
    let seen = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let backend = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        log.lock().push(uri.path().to_string());
        async { "ok" }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serves") });

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kong.json");
    std::fs::write(&path, kong(backend).to_string()).expect("write");
    let mut config = Config::ephemeral();
    config.declarative_config = path.display().to_string();
    config.header_read_timeout = std::time::Duration::from_millis(500);
    let server = Server::bind(config).await.expect("binds");
    let addr = server.addr();
    let shutdown = Shutdown::new();
    let sd = shutdown.clone();
    tokio::spawn(async move { server.serve(sd).await.expect("serves") });

    // Request smuggling: Content-Length and Transfer-Encoding together.
    let smuggle = b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /users/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let answer = raw(addr, smuggle).await;
    // hyper frames by Transfer-Encoding, drops Content-Length and closes the
    // connection after answering (RFC 9112 6.3); the gateway re-frames the
    // body for the upstream, so the request hidden after the body never
    // reaches anyone.
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(
        !seen.lock().iter().any(|p| p.contains("smuggled")),
        "{:?}",
        seen.lock()
    );
    seen.lock().clear();
    // Two Content-Lengths that disagree.
    let answer = raw(
        addr,
        b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabc",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Oversized headers.
    let mut big = b"GET /users HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 100 << 10));
    big.extend(b"\r\n\r\n");
    let answer = raw(addr, &big).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    // A malformed request line.
    let answer = raw(addr, b"GET /users HTTP/9.9 extra\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 400") || answer.is_empty(),
        "{answer}"
    );
    // Slow-loris: headers never finish; the gateway hangs up after the
    // header read timeout instead of holding the connection.
    let started = std::time::Instant::now();
    let answer = raw(addr, b"GET /users HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(9),
        "held for {:?}",
        started.elapsed()
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    assert!(
        seen.lock().is_empty(),
        "no hostile request reached the backend: {:?}",
        seen.lock()
    );
    // And an ordinary request still does.
    let (code, _) = curl(s(&[&format!("http://{addr}/users")])).await;
    assert_eq!(code, 200);
    assert_eq!(seen.lock().len(), 1);
}

/// A backend process (Debian's static busybox httpd) serving `name`.
fn busybox_backend(dir: &std::path::Path, name: &str) -> (std::process::Child, SocketAddr) {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).expect("dir");
    std::fs::write(root.join("index.html"), name).expect("index");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let child = Command::new("busybox")
        .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
        .arg(&root)
        .spawn()
        .expect("busybox httpd");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (child, addr)
}

#[tokio::test]
async fn a_backend_killed_under_load_costs_no_failed_get() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut backends: Vec<_> = ["one", "two", "three"]
        .iter()
        .map(|n| busybox_backend(dir.path(), n))
        .collect();
    let targets: Vec<serde_json::Value> = backends
        .iter()
        .map(|(_, a)| serde_json::json!({"target": a.to_string()}))
        .collect();
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "upstreams": [{"name": "trio", "targets": targets}],
        "services": [{"name": "trio", "host": "trio", "routes": [{"name": "trio", "paths": ["/"]}]}]
    }))
    .await;
    bronze_runtime::install_crypto_provider();
    let client = reqwest::Client::new();
    let url = format!("http://{}/index.html", gw.addr);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut loads = Vec::new();
    for _ in 0..4 {
        let (c, url, done, answered) =
            (client.clone(), url.clone(), done.clone(), answered.clone());
        loads.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !done.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
                answered.fetch_add(1, Ordering::Relaxed);
            }
            (ok, failed)
        }));
    }
    // Under load across the three, then one is killed; then the load
    // goes on for as many requests again, a third of which the balancer
    // would give the dead one.
    let under_load = 150;
    eventually(
        std::time::Duration::from_secs(60),
        "load before the kill",
        || answered.load(Ordering::Relaxed) >= under_load,
    )
    .await;
    let (mut killed, _) = backends.remove(1);
    killed.kill().expect("kill");
    killed.wait().expect("reap");
    let at_kill = answered.load(Ordering::Relaxed);
    eventually(
        std::time::Duration::from_secs(60),
        "load after the kill",
        || answered.load(Ordering::Relaxed) >= at_kill + under_load,
    )
    .await;
    done.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for l in loads {
        let (o, f) = l.await.expect("load");
        ok += o;
        failed.extend(f);
    }
    for (mut c, _) in backends {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert!(ok > 100, "{ok} requests succeeded");
    assert!(
        failed.is_empty(),
        "{} of {} GETs failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
}

/// gRPC end to end: a tonic client speaks h2c to the gateway, which
/// forwards over HTTP/2 to a tonic server (discovery's API): unary calls,
/// a server stream, and an error status, which travels in the trailers.
#[tokio::test]
async fn grpc_calls_streams_and_trailers_pass_through_the_gateway() {
    use bronze_proto::discovery::v1 as pb;
    let (_http, grpc, _d) = discovery().await;
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "services": [{"name": "discovery", "url": format!("grpc://{grpc}"), "routes": [
            {"name": "discovery-api", "paths": ["/bronze.discovery.v1.Discovery/"],
             "protocols": ["grpc"], "strip_path": false}
        ]}]
    }))
    .await;
    let mut client = pb::discovery_client::DiscoveryClient::connect(format!("http://{}", gw.addr))
        .await
        .expect("h2c to the gateway");

    // A stream opened before the change sees it arrive.
    let mut watch = client
        .watch(pb::WatchRequest {
            from_index: 0,
            services: vec!["shop".into()],
        })
        .await
        .expect("watch through the gateway")
        .into_inner();
    let registered = client
        .register(pb::RegisterRequest {
            instance: Some(pb::InstanceSpec {
                id: "shop-1".into(),
                service: "shop".into(),
                address: "10.0.0.7".into(),
                port: 8080,
                ..Default::default()
            }),
            owner: String::new(),
        })
        .await
        .expect("unary call through the gateway")
        .into_inner();
    assert!(registered.index > 0);
    let got = client
        .get_service(pb::GetServiceRequest {
            name: "shop".into(),
            ..Default::default()
        })
        .await
        .expect("get_service")
        .into_inner();
    assert_eq!(got.instances.len(), 1);
    assert_eq!(got.instances[0].address, "10.0.0.7");
    let upsert = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let ev = watch.message().await.expect("stream frame").expect("open");
            if let Some(pb::watch_event::Event::Upsert(i)) = ev.event {
                return i;
            }
        }
    })
    .await
    .expect("the upsert arrives through the gateway");
    assert_eq!(upsert.id, "shop-1");

    // A refused call: the status code and message come in the trailers.
    let err = client
        .register(pb::RegisterRequest {
            instance: None,
            owner: String::new(),
        })
        .await
        .expect_err("an empty registration is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
}

/// Discovery in process on `config`'s addresses; stopped (its ports
/// free again) by `stop`.
struct Discovery {
    grpc: SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

impl Discovery {
    async fn start(config: bronze_discovery::Config) -> Self {
        let server = bronze_discovery::Server::bind(config)
            .await
            .expect("discovery binds");
        let grpc = server.grpc_addr();
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move { server.serve(s).await.expect("discovery serves") });
        Self {
            grpc,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.expect("discovery stops");
    }

    /// Registers `id` at `backend` as a registrator does: soft state of
    /// its owner, gone when discovery restarts.
    async fn register_owned(&self, id: &str, backend: SocketAddr, host: &str) {
        use bronze_proto::discovery::v1 as dpb;
        let mut c =
            dpb::discovery_client::DiscoveryClient::connect(format!("http://{}", self.grpc))
                .await
                .expect("connect");
        c.register(dpb::RegisterRequest {
            instance: Some(dpb::InstanceSpec {
                id: id.into(),
                service: "carried".into(),
                node: "host-a".into(),
                node_address: "127.0.0.1".into(),
                address: backend.ip().to_string(),
                port: u32::from(backend.port()),
                meta: [("bronze.http.rule".to_string(), format!("Host(`{host}`)"))].into(),
                ..Default::default()
            }),
            owner: "registrator@host-a".into(),
        })
        .await
        .expect("register");
    }
}

/// Discovery restarts and forgets its registrators' instances (soft
/// state): the gateway keeps serving the last known ones until they are
/// registered again, and drops those that are not after its grace.
#[tokio::test]
async fn a_discovery_restart_keeps_the_last_known_instances_until_registered_again() {
    let (blue, green, red) = (echo("blue").await, echo("green").await, echo("red").await);
    let d = Discovery::start(bronze_discovery::Config::ephemeral()).await;
    let grpc = d.grpc;
    let mut config = Config::ephemeral();
    config.discovery = format!("http://{grpc}");
    config.discovery_grace = std::time::Duration::from_secs(5);
    let gw = serve(config).await;
    let url = format!("http://{}/", gw.addr);
    d.register_owned("blue", blue, "carried.example").await;
    d.register_owned("green", green, "carried.example").await;
    let backend = |body: &str| {
        serde_json::from_str::<serde_json::Value>(body).unwrap_or_default()["backend"]
            .as_str()
            .unwrap_or("none")
            .to_string()
    };
    let (code, body) = until_status(&url, "carried.example", 200).await;
    assert_eq!(code, 200, "{body}");

    // Restarted on the same address, with none of them.
    d.stop().await;
    let mut again = bronze_discovery::Config::ephemeral();
    again.grpc.addr = grpc;
    let d = Discovery::start(again).await;
    // Once the gateway routes an instance only the new discovery knows, it
    // follows the new one.
    d.register_owned("red", red, "red.example").await;
    let (code, body) = until_status(&url, "red.example", 200).await;
    assert_eq!((code, backend(&body)), (200, "red".to_string()), "{body}");
    for _ in 0..10 {
        let (code, body) = curl(s(&["-H", "Host: carried.example", &url])).await;
        assert_eq!(code, 200, "the last known instances still serve: {body}");
    }

    // Blue is registered again; green never is: it leaves after the grace.
    d.register_owned("blue", blue, "carried.example").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut in_a_row = 0;
    while in_a_row < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "green was never dropped"
        );
        let (code, body) = curl(s(&["-H", "Host: carried.example", &url])).await;
        assert_eq!(code, 200, "{body}");
        in_a_row = if backend(&body) == "blue" {
            in_a_row + 1
        } else {
            0
        };
    }
    d.stop().await;
}
