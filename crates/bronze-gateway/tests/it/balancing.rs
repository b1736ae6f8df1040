//! Upstreams and resilience end to end: every balancing algorithm, health
//! checks, the retry budget, connection limits, circuit breaking, connect
//! timeouts, DNS SRV targets and discovery-name targets, with real backends
//! (axum servers, raw TCP listeners) and real clients (curl, reqwest).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bronze_runtime::Shutdown;
use serde_json::{Value, json};

use super::{Gw, curl, gateway, gateway_with, s};

/// A backend answering its name after `delay`; `/health` answers the
/// status in the returned cell (200 at first).
async fn named(name: &'static str, delay: Duration) -> (SocketAddr, Arc<AtomicU16>) {
    named_with_status(name, delay, 200).await
}

async fn named_with_status(
    name: &'static str,
    delay: Duration,
    status: u16,
) -> (SocketAddr, Arc<AtomicU16>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let health = Arc::new(AtomicU16::new(200));
    let h = health.clone();
    let app = axum::Router::new()
        .route(
            "/health",
            axum::routing::get(move || {
                let code = h.load(Ordering::Relaxed);
                async move { axum::http::StatusCode::from_u16(code).expect("status") }
            }),
        )
        .fallback(move || async move {
            tokio::time::sleep(delay).await;
            (
                axum::http::StatusCode::from_u16(status).expect("status"),
                name,
            )
        });
    tokio::spawn(async move { axum::serve(listener, app).await.expect("backend serves") });
    (addr, health)
}

/// A TCP listener that accepts and immediately closes every connection,
/// counting them (a backend that breaks every request).
async fn breaking() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            n.fetch_add(1, Ordering::Relaxed);
            drop(stream);
        }
    });
    (addr, accepted)
}

/// A port nothing listens on.
pub(super) fn dead_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

pub(super) fn client() -> reqwest::Client {
    bronze_runtime::install_crypto_provider();
    reqwest::Client::new()
}

/// One upstream `pool` with `extra` fields, and a service `pool` routed at `/`.
fn pool(targets: &[SocketAddr], extra: Value) -> Value {
    let mut upstream = json!({
        "name": "pool",
        "targets": targets.iter().map(|t| json!({"target": t.to_string()})).collect::<Vec<_>>(),
    });
    if let (Some(u), Some(e)) = (upstream.as_object_mut(), extra.as_object()) {
        u.extend(e.clone());
    }
    json!({
        "_format_version": "3.0",
        "upstreams": [upstream],
        "services": [{"name": "pool", "host": "pool", "routes": [{"name": "pool", "paths": ["/"]}]}]
    })
}

async fn get(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut r = c.get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    match r.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

async fn post_config(gw: &Gw, d: &Value) -> (u16, Value) {
    let r = client()
        .post(format!("http://{}/config", gw.admin))
        .body(d.to_string())
        .send()
        .await
        .expect("POST /config");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// Waits (up to 15 s) until `n` requests in a row are answered by `want`.
async fn until_only(c: &reqwest::Client, url: &str, want: &str, n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut run = 0;
    while Instant::now() < deadline {
        let (code, body) = get(c, url, &[]).await;
        if code == 200 && body == want {
            run += 1;
            if run >= n {
                return true;
            }
        } else {
            run = 0;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_algorithms_favour_the_idle_backend() {
    // The slow backend's delay dwarfs what a loaded machine adds to a fast
    // request (the share the slow one gets grows with that ratio: at 300 ms
    // a busy machine once pushed it past a fifth).
    let (slow, _) = named("slow", Duration::from_millis(1000)).await;
    let (fast, _) = named("fast", Duration::ZERO).await;
    let c = client();
    for algorithm in ["least-connections", "p2c", "latency", "round-robin"] {
        let gw = gateway(pool(&[slow, fast], json!({"algorithm": algorithm}))).await;
        let url = format!("http://{}/x", gw.addr);
        let mut loads = Vec::new();
        for _ in 0..4 {
            let (c, url) = (c.clone(), url.clone());
            loads.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..15 {
                    seen.push(get(&c, &url, &[]).await.1);
                }
                seen
            }));
        }
        let mut counts: HashMap<String, usize> = HashMap::new();
        for l in loads {
            for b in l.await.expect("load") {
                *counts.entry(b).or_default() += 1;
            }
        }
        let (s, f) = (
            counts.get("slow").copied().unwrap_or(0),
            counts.get("fast").copied().unwrap_or(0),
        );
        assert_eq!(s + f, 60, "{algorithm}: {counts:?}");
        if algorithm == "round-robin" {
            // The control: round robin ignores load.
            assert!(s >= 25, "{algorithm}: {counts:?}");
        } else {
            // At least three to one (round robin: one to one). Ties in
            // load are broken at random, and a loaded machine makes the
            // fast backend's requests overlap more, so more ties.
            assert!(
                f >= 3 * s,
                "{algorithm} should favour the idle backend: {counts:?}"
            );
        }
    }
}

#[tokio::test]
async fn consistent_hashing_keeps_a_header_on_one_target_and_moves_few_keys() {
    let (a, _) = named("a", Duration::ZERO).await;
    let (b, _) = named("b", Duration::ZERO).await;
    let (c3, _) = named("c", Duration::ZERO).await;
    let (d, _) = named("d", Duration::ZERO).await;
    let hashing =
        json!({"algorithm": "consistent-hashing", "hash_on": "header", "hash_on_header": "x-user"});
    let gw = gateway(pool(&[a, b, c3], hashing.clone())).await;
    let c = client();
    let url = format!("http://{}/x", gw.addr);
    let mut owner = HashMap::new();
    for k in 0..80 {
        let user = format!("user-{k}");
        let (_, first) = get(&c, &url, &[("x-user", &user)]).await;
        for _ in 0..2 {
            assert_eq!(get(&c, &url, &[("x-user", &user)]).await.1, first, "{user}");
        }
        owner.insert(user, first);
    }
    let used: std::collections::HashSet<&String> = owner.values().collect();
    assert_eq!(used.len(), 3, "keys spread over the three targets");
    // curl agrees (a real client, the same key).
    let (code, body) = curl(s(&["-H", "x-user: user-7", &url])).await;
    assert_eq!((code, body.as_str()), (200, owner["user-7"].as_str()));

    // A fourth target: only the keys it takes move.
    let (status, _) = post_config(&gw, &pool(&[a, b, c3, d], hashing)).await;
    assert_eq!(status, 201);
    let mut moved = 0;
    for (user, was) in &owner {
        let (_, now) = get(&c, &url, &[("x-user", user)]).await;
        if &now != was {
            moved += 1;
            assert_eq!(
                now, "d",
                "{user} moved from {was} to {now}, not to the new target"
            );
        }
    }
    assert!((5..=35).contains(&moved), "{moved} of 80 keys moved");

    // Without the header, no hash: requests spread round robin.
    let mut plain = std::collections::HashSet::new();
    for _ in 0..8 {
        plain.insert(get(&c, &url, &[]).await.1);
    }
    assert!(plain.len() > 1, "{plain:?}");
}

#[tokio::test]
async fn hashing_on_query_arg_falls_back_to_a_header() {
    let (a, _) = named("a", Duration::ZERO).await;
    let (b, _) = named("b", Duration::ZERO).await;
    let (c3, _) = named("c", Duration::ZERO).await;
    let gw = gateway(pool(
        &[a, b, c3],
        json!({"hash_on": "query_arg", "hash_on_query_arg": "cart",
               "hash_fallback": "header", "hash_fallback_header": "x-cart"}),
    ))
    .await;
    let c = client();
    let base = format!("http://{}/x", gw.addr);
    let mut owners = std::collections::HashSet::new();
    for k in 0..12 {
        let (_, first) = get(&c, &format!("{base}?cart=c{k}&x=1"), &[]).await;
        for n in 0..3 {
            let (_, again) = get(&c, &format!("{base}?x={n}&cart=c{k}"), &[]).await;
            assert_eq!(again, first);
        }
        // The fallback header with the same value lands on the same target.
        let (_, by_header) = get(&c, &base, &[("x-cart", &format!("c{k}"))]).await;
        assert_eq!(by_header, first);
        owners.insert(first);
    }
    assert!(owners.len() > 1, "{owners:?}");
}

#[tokio::test]
async fn hashing_on_client_ip_and_on_path() {
    let (a, _) = named("a", Duration::ZERO).await;
    let (b, _) = named("b", Duration::ZERO).await;
    let (c3, _) = named("c", Duration::ZERO).await;
    let gw = gateway(pool(&[a, b, c3], json!({"hash_on": "ip"}))).await;
    // curl from different loopback addresses (127.0.0.0/8 is all local).
    let url = format!("http://{}/x", gw.addr);
    let mut owners = std::collections::HashSet::new();
    for k in 1..=12 {
        let ip = format!("127.0.0.{k}");
        let (code, first) = curl(s(&["--interface", &ip, &url])).await;
        assert_eq!(code, 200, "{first}");
        for _ in 0..2 {
            assert_eq!(curl(s(&["--interface", &ip, &url])).await.1, first, "{ip}");
        }
        owners.insert(first);
    }
    assert!(owners.len() > 1, "client addresses spread: {owners:?}");

    assert_eq!(
        post_config(&gw, &pool(&[a, b, c3], json!({"hash_on": "path"})))
            .await
            .0,
        201
    );
    let c = client();
    let mut owners = std::collections::HashSet::new();
    for k in 0..12 {
        let url = format!("http://{}/item/{k}", gw.addr);
        let (_, first) = get(&c, &url, &[]).await;
        for _ in 0..2 {
            assert_eq!(get(&c, &url, &[]).await.1, first);
        }
        owners.insert(first);
    }
    assert!(owners.len() > 1, "paths spread: {owners:?}");
}

/// `hash_on: consumer`: each consumer key-auth identifies sticks to one
/// target; consumers spread over them.
#[tokio::test]
async fn hashing_on_the_consumer() {
    let (a, _) = named("a", Duration::ZERO).await;
    let (b, _) = named("b", Duration::ZERO).await;
    let (c3, _) = named("c", Duration::ZERO).await;
    let mut config = pool(&[a, b, c3], json!({"hash_on": "consumer"}));
    config["consumers"] = (0..12)
        .map(|k| json!({"username": format!("user{k}"), "keyauth_credentials": [{"key": format!("key{k}")}]}))
        .collect();
    config["plugins"] = json!([{"name": "key-auth"}]);
    let gw = gateway(config).await;
    let c = client();
    let url = format!("http://{}/x", gw.addr);
    let mut owners = std::collections::HashSet::new();
    for k in 0..12 {
        let key = format!("key{k}");
        let (code, first) = get(&c, &url, &[("apikey", &key)]).await;
        assert_eq!(code, 200, "{first}");
        for _ in 0..3 {
            assert_eq!(get(&c, &url, &[("apikey", &key)]).await.1, first, "{key}");
        }
        owners.insert(first);
    }
    assert!(owners.len() > 1, "consumers spread: {owners:?}");
}

/// `hash_on: uri_capture`: the named group of the route's regex path
/// picks the target (`/tenants/7/...` always on one), with
/// `hash_fallback: path` for requests whose path has no such group.
#[tokio::test]
async fn hashing_on_a_uri_capture() {
    let (a, _) = named("a", Duration::ZERO).await;
    let (b, _) = named("b", Duration::ZERO).await;
    let (c3, _) = named("c", Duration::ZERO).await;
    let mut config = pool(
        &[a, b, c3],
        json!({"hash_on": "uri_capture", "hash_on_uri_capture": "tenant",
               "hash_fallback": "path"}),
    );
    config["services"][0]["routes"] = json!([
        {"name": "tenants", "paths": [r"~/tenants/(?<tenant>\d+)/"]},
        {"name": "rest", "paths": ["/"]}]);
    let gw = gateway(config).await;
    let c = client();
    let mut owners = std::collections::HashSet::new();
    for t in 0..12 {
        let url = |rest: &str| format!("http://{}/tenants/{t}/{rest}", gw.addr);
        let (code, first) = get(&c, &url("a"), &[]).await;
        assert_eq!(code, 200, "{first}");
        // Any path of the same tenant: the same target.
        for rest in ["b", "c/d", "e?f=1"] {
            assert_eq!(get(&c, &url(rest), &[]).await.1, first, "tenant {t} {rest}");
        }
        owners.insert(first);
    }
    assert!(owners.len() > 1, "tenants spread: {owners:?}");
    // No capture: the fallback (the path) still hashes.
    let url = format!("http://{}/other/x", gw.addr);
    let (code, first) = get(&c, &url, &[]).await;
    assert_eq!(code, 200);
    for _ in 0..3 {
        assert_eq!(get(&c, &url, &[]).await.1, first);
    }
}

#[tokio::test]
async fn sticky_cookie_is_set_when_absent_and_honoured() {
    let (a, _) = named("a", Duration::ZERO).await;
    let (b, _) = named("b", Duration::ZERO).await;
    let (c3, _) = named("c", Duration::ZERO).await;
    let gw = gateway(pool(
        &[a, b, c3],
        json!({"hash_on": "cookie", "hash_on_cookie": "bronze-sticky", "hash_on_cookie_path": "/app"}),
    ))
    .await;
    let url = format!("http://{}/app/page", gw.addr);
    // curl with a cookie jar: the first answer sets the cookie, later
    // requests send it and stay on one backend.
    let dir = tempfile::tempdir().expect("tempdir");
    let jar = dir.path().join("jar").display().to_string();
    let (code, first) = curl(s(&["-c", &jar, "-b", &jar, &url])).await;
    assert_eq!(code, 200);
    let cookies = std::fs::read_to_string(&jar).expect("jar");
    let line = cookies
        .lines()
        .find(|l| l.contains("bronze-sticky"))
        .unwrap_or_else(|| panic!("no cookie set: {cookies}"));
    assert!(line.contains("\t/app\t"), "cookie path: {line}");
    for _ in 0..10 {
        assert_eq!(curl(s(&["-c", &jar, "-b", &jar, &url])).await.1, first);
    }
    // The cookie is set once, not on every answer; its attributes are
    // Kong's.
    let c = client();
    let value = line.rsplit('\t').next().expect("value").to_string();
    let r = c
        .get(&url)
        .header("cookie", format!("bronze-sticky={value}"))
        .send()
        .await
        .expect("GET");
    assert!(r.headers().get("set-cookie").is_none());
    assert_eq!(r.text().await.expect("body"), first);
    let r = c.get(&url).send().await.expect("GET");
    let set = r.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(set.starts_with("bronze-sticky="), "{set}");
    assert!(set.contains("; Path=/app"), "{set}");
    // New clients (no cookie) are spread over the targets.
    let mut spread = std::collections::HashSet::new();
    for _ in 0..20 {
        spread.insert(get(&c, &url, &[]).await.1);
    }
    assert!(spread.len() > 1, "{spread:?}");
}

#[tokio::test]
async fn active_checks_take_a_target_out_and_bring_it_back_across_config_swaps() {
    let (a, a_health) = named("a", Duration::ZERO).await;
    let (b, _) = named("b", Duration::ZERO).await;
    let config = pool(
        &[a, b],
        json!({"healthchecks": {"active": {
            "http_path": "/health", "timeout": 1, "concurrency": 2,
            "healthy": {"interval": 0.1, "successes": 2},
            "unhealthy": {"interval": 0.1, "http_failures": 2}}}}),
    );
    let gw = gateway(config.clone()).await;
    let c = client();
    let url = format!("http://{}/x", gw.addr);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(get(&c, &url, &[]).await.1);
    }
    assert_eq!(seen.len(), 2, "both healthy at first: {seen:?}");

    a_health.store(500, Ordering::Relaxed);
    assert!(until_only(&c, &url, "b", 10).await, "a is taken out");
    // The health of targets that stay survives a new configuration: a
    // stays out right after the swap.
    let (status, _) = post_config(&gw, &config).await;
    assert_eq!(status, 201);
    for _ in 0..10 {
        assert_eq!(get(&c, &url, &[]).await.1, "b");
    }

    a_health.store(200, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if get(&c, &url, &[]).await.1 == "a" {
            break;
        }
        assert!(Instant::now() < deadline, "a never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn passive_checks_eject_a_failing_target() {
    let (bad, _) = named_with_status("bad", Duration::ZERO, 500).await;
    let (good, _) = named("good", Duration::ZERO).await;
    let gw = gateway(pool(
        &[bad, good],
        json!({"healthchecks": {"passive": {"unhealthy": {"http_failures": 3}}}}),
    ))
    .await;
    let c = client();
    let url = format!("http://{}/x", gw.addr);
    let mut errors = 0;
    for _ in 0..30 {
        let (code, body) = get(&c, &url, &[]).await;
        if code == 500 {
            assert_eq!(body, "bad");
            errors += 1;
        } else {
            assert_eq!((code, body.as_str()), (200, "good"));
        }
    }
    // Three 500s mark it unhealthy; no active check brings it back within
    // the cool-down.
    assert_eq!(errors, 3);
}

#[tokio::test]
async fn the_retry_budget_caps_retries_to_a_broken_upstream() {
    let (x, x_hits) = breaking().await;
    let (y, y_hits) = breaking().await;
    let targets = json!([{"target": x.to_string()}, {"target": y.to_string()}]);
    let gw = gateway(json!({
        "_format_version": "3.0",
        "upstreams": [{"name": "broken", "targets": targets, "circuit_breaker": {"failures": 0}}],
        "services": [
            {"name": "budget", "host": "broken", "retries": 5,
             "retry_budget": {"percent": 10, "min_per_second": 0},
             "routes": [{"name": "budget", "paths": ["/budget"]}]},
            {"name": "unbounded", "host": "broken", "retries": 5,
             "retry_budget": {"percent": 1000, "min_per_second": 100},
             "routes": [{"name": "unbounded", "paths": ["/unbounded"]}]}
        ]
    }))
    .await;
    let c = client();
    let hits = || x_hits.load(Ordering::Relaxed) + y_hits.load(Ordering::Relaxed);
    // Without a tight budget each GET is tried 6 times.
    for _ in 0..10 {
        assert_eq!(
            get(&c, &format!("http://{}/unbounded", gw.addr), &[])
                .await
                .0,
            502
        );
    }
    assert_eq!(hits(), 60);
    // With 10 %, 100 GETs cost about 110 attempts, not 600.
    let before = hits();
    for _ in 0..100 {
        assert_eq!(
            get(&c, &format!("http://{}/budget", gw.addr), &[]).await.0,
            502
        );
    }
    let attempts = hits() - before;
    assert!(
        (100..=112).contains(&attempts),
        "{attempts} attempts for 100 GETs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_queues_briefly_then_answers_503() {
    let (slow, _) = named("slow", Duration::from_millis(400)).await;
    let limited = |timeout: u64| {
        pool(
            &[slow],
            json!({"max_connections": 1, "max_connections_timeout": timeout}),
        )
    };
    let gw = gateway(limited(100)).await;
    let c = client();
    let url = format!("http://{}/x", gw.addr);
    let burst = |c: reqwest::Client, url: String| async move {
        let all = (0..3).map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { get(&c, &url, &[]).await })
        });
        let mut out = Vec::new();
        for h in all.collect::<Vec<_>>() {
            out.push(h.await.expect("request"));
        }
        out
    };
    let answers = burst(c.clone(), url.clone()).await;
    let ok = answers.iter().filter(|(code, _)| *code == 200).count();
    let limited_out: Vec<_> = answers.iter().filter(|(code, _)| *code == 503).collect();
    assert_eq!((ok, limited_out.len()), (1, 2), "{answers:?}");
    assert!(
        limited_out[0]
            .1
            .contains("upstream connection limit reached")
    );

    // Waiting long enough, requests queue for the one connection.
    assert_eq!(post_config(&gw, &limited(3000)).await.0, 201);
    let started = Instant::now();
    let answers = burst(c, url).await;
    assert!(answers.iter().all(|(code, _)| *code == 200), "{answers:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1150),
        "{:?}",
        started.elapsed()
    );
}

/// A backend that breaks every connection while `broken` is set, and
/// answers "up" otherwise; counts connections.
async fn toggled() -> (
    SocketAddr,
    Arc<std::sync::atomic::AtomicBool>,
    Arc<AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let accepted = Arc::new(AtomicUsize::new(0));
    let (b, n) = (broken.clone(), accepted.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            n.fetch_add(1, Ordering::Relaxed);
            if b.load(Ordering::Relaxed) {
                continue;
            }
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nup",
                    )
                    .await;
            });
        }
    });
    (addr, broken, accepted)
}

#[tokio::test]
async fn the_circuit_opens_after_failures_and_a_half_open_probe_closes_it() {
    let (flaky, broken, hits) = toggled().await;
    let (good, _) = named("good", Duration::ZERO).await;
    // Long enough that ten requests fit in it on a loaded machine.
    let open_ms = 2000;
    let open_timeout = Duration::from_millis(open_ms);
    let gw = gateway(pool(
        &[flaky, good],
        json!({"circuit_breaker": {"failures": 3, "open_timeout": open_ms}}),
    ))
    .await;
    let c = client();
    let url = format!("http://{}/x", gw.addr);
    let hits = || hits.load(Ordering::Relaxed);
    // GETs are retried on the good target; after 3 failures in a row the
    // flaky one gets nothing more.
    let opened = Instant::now();
    for _ in 0..10 {
        assert_eq!(get(&c, &url, &[]).await, (200, "good".to_string()));
    }
    assert!(
        opened.elapsed() < open_timeout,
        "ten requests took too long"
    );
    assert_eq!(hits(), 3, "the circuit opened after 3 failures");
    // Half-open after open_timeout: one probe; it fails, so it opens again
    // (requests meanwhile all answered by the good target).
    let deadline = Instant::now() + Duration::from_secs(30);
    while hits() < 4 {
        assert_eq!(get(&c, &url, &[]).await, (200, "good".to_string()));
        assert!(Instant::now() < deadline, "no probe after open_timeout");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reopened = Instant::now();
    for _ in 0..10 {
        assert_eq!(get(&c, &url, &[]).await, (200, "good".to_string()));
    }
    assert!(
        reopened.elapsed() < open_timeout,
        "ten requests took too long"
    );
    assert_eq!(hits(), 4, "one probe");
    // It recovers: the next probe succeeds and closes the circuit.
    broken.store(false, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = get(&c, &url, &[]).await;
        assert_eq!(code, 200);
        if body == "up" {
            break;
        }
        assert!(Instant::now() < deadline, "the probe never succeeded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut up = 0;
    for _ in 0..10 {
        let (code, body) = get(&c, &url, &[]).await;
        assert_eq!(code, 200);
        up += usize::from(body == "up");
    }
    assert!(
        up >= 4,
        "closed again: {up} of 10 from the recovered target"
    );
}

#[tokio::test]
async fn a_lone_target_with_an_open_circuit_still_gets_requests() {
    // Panic mode: when every circuit is open the circuits are ignored, so a
    // single backend that comes back is used at once, not after
    // open_timeout.
    let addr = dead_port();
    let gw = gateway(pool(
        &[addr],
        json!({"circuit_breaker": {"failures": 1, "open_timeout": 60000}}),
    ))
    .await;
    let c = client();
    let url = format!("http://{}/x", gw.addr);
    for _ in 0..3 {
        assert_eq!(get(&c, &url, &[]).await.0, 502);
    }
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let app = axum::Router::new().fallback(|| async { "back" });
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serves") });
    assert_eq!(get(&c, &url, &[]).await, (200, "back".to_string()));
}

#[tokio::test]
async fn connect_timeout_is_the_services_own() {
    // A listener whose accept queue is full: the kernel drops further SYNs,
    // so a connect hangs (on loopback, without leaving the machine).
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let gw = gateway(json!({
        "_format_version": "3.0",
        "services": [{"name": "hang", "url": format!("http://{addr}"),
                      "connect_timeout": 300, "read_timeout": 20000,
                      "routes": [{"name": "hang", "paths": ["/"]}]}]
    }))
    .await;
    let started = Instant::now();
    let (code, body) = curl(s(&[&format!("http://{}/", gw.addr)])).await;
    let took = started.elapsed();
    assert_eq!(code, 504, "{body}");
    assert!(body.contains("timing out"), "{body}");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}: connect_timeout not applied"
    );
    drop((listener, fillers));
}

/// A DNS server answering SRV queries for `_web._tcp.example.test.` from
/// `records` (priority, weight, port), with A glue 127.0.0.1, TTL 1 s.
async fn srv_server(records: Arc<parking_lot::Mutex<Vec<(u16, u16, u16)>>>) -> SocketAddr {
    use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
    use hickory_proto::rr::rdata::{A, SRV};
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut m = Message::response(q.metadata.id, OpCode::Query);
            m.metadata.message_type = MessageType::Response;
            m.metadata.authoritative = true;
            m.metadata.recursion_desired = q.metadata.recursion_desired;
            let Some(query) = q.queries.first().cloned() else {
                continue;
            };
            m.add_query(query.clone());
            let name = query.name().to_ascii().to_ascii_lowercase();
            if name == "_web._tcp.example.test." && query.query_type() == RecordType::SRV {
                for (prio, weight, port) in records.lock().iter().copied() {
                    let target = Name::from_ascii(format!("t{port}.example.test.")).expect("name");
                    m.add_answer(Record::from_rdata(
                        query.name().clone(),
                        1,
                        RData::SRV(SRV::new(prio, weight, port, target.clone())),
                    ));
                    m.add_additional(Record::from_rdata(
                        target,
                        1,
                        RData::A(A::new(127, 0, 0, 1)),
                    ));
                }
            } else {
                m.metadata.response_code = ResponseCode::NXDomain;
            }
            if let Ok(bytes) = m.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    addr
}

#[tokio::test]
async fn srv_targets_follow_priority_weight_and_port_and_refresh_on_ttl() {
    let (a, _) = named("a", Duration::ZERO).await;
    let (b, _) = named("b", Duration::ZERO).await;
    let (c3, _) = named("c", Duration::ZERO).await;
    let records = Arc::new(parking_lot::Mutex::new(vec![
        (10, 3, a.port()),
        (10, 1, b.port()),
        (20, 1, c3.port()),
    ]));
    let dns = srv_server(records.clone()).await;
    let gw = gateway_with(
        json!({
            "_format_version": "3.0",
            "services": [{"name": "web", "host": "_web._tcp.example.test", "port": 1,
                          "routes": [{"name": "web", "paths": ["/"]}]}]
        }),
        |c| c.dns_resolver = dns.to_string(),
    )
    .await;
    let c = client();
    let url = format!("http://{}/x", gw.addr);
    // The first answer arrives in the background: wait for a backend.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&c, &url, &[]).await.0 != 200 {
        assert!(Instant::now() < deadline, "SRV targets never resolved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        let (code, body) = get(&c, &url, &[]).await;
        assert_eq!(code, 200);
        *counts.entry(body).or_default() += 1;
    }
    // Weights 3:1 within priority 10; priority 20 unused.
    assert_eq!(counts.get("a"), Some(&30), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("c"), None, "{counts:?}");

    // New records (TTL 1 s): priority 10 now points at a dead port, so the
    // next priority group answers, without any configuration change.
    let dead = dead_port();
    *records.lock() = vec![(10, 1, dead.port()), (20, 1, c3.port())];
    assert!(
        until_only(&c, &url, "c", 20).await,
        "priority 20 takes over"
    );
    // A new configuration starts from the last answer: no gap.
    let (status, _) = post_config(
        &gw,
        &json!({
            "_format_version": "3.0",
            "services": [{"name": "web", "host": "_web._tcp.example.test", "port": 1,
                          "routes": [{"name": "web", "paths": ["/"]}]}]
        }),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(get(&c, &url, &[]).await, (200, "c".to_string()));
}

async fn discovery_server() -> (SocketAddr, SocketAddr, SocketAddr, Shutdown) {
    let server = bronze_discovery::Server::bind(bronze_discovery::Config::ephemeral())
        .await
        .expect("discovery binds");
    let (http, grpc, dns) = (server.http_addr(), server.grpc_addr(), server.dns_addr());
    let shutdown = Shutdown::new();
    let sd = shutdown.clone();
    tokio::spawn(async move { server.serve(sd).await.expect("discovery serves") });
    (http, grpc, dns, shutdown)
}

async fn register(
    c: &reqwest::Client,
    http: SocketAddr,
    id: &str,
    backend: SocketAddr,
    weight: u32,
) {
    let body = json!({"ID": id, "Name": "web", "Address": "127.0.0.1", "Port": backend.port(),
                      "Weights": {"Passing": weight, "Warning": 1}});
    let r = c
        .put(format!("http://{http}/v1/agent/service/register"))
        .body(body.to_string())
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn srv_targets_from_the_discovery_dns_server() {
    let (a, _) = named("a", Duration::ZERO).await;
    let (b, _) = named("b", Duration::ZERO).await;
    let (http, _grpc, dns, _d) = discovery_server().await;
    let c = client();
    register(&c, http, "web-a", a, 3).await;
    register(&c, http, "web-b", b, 1).await;
    let gw = gateway_with(
        json!({
            "_format_version": "3.0",
            "upstreams": [{"name": "web", "targets": [{"target": "web.service.bronze:80"}]}],
            "services": [{"name": "web", "host": "web", "routes": [{"name": "web", "paths": ["/"]}]}]
        }),
        |cfg| cfg.dns_resolver = dns.to_string(),
    )
    .await;
    let url = format!("http://{}/x", gw.addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&c, &url, &[]).await.0 != 200 {
        assert!(Instant::now() < deadline, "SRV targets never resolved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        *counts.entry(get(&c, &url, &[]).await.1).or_default() += 1;
    }
    assert_eq!(
        counts.get("a"),
        Some(&30),
        "ports and weights from SRV: {counts:?}"
    );
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");
}

#[tokio::test]
async fn discovery_name_targets_follow_registrations() {
    let (a, _) = named("a", Duration::ZERO).await;
    let (b, _) = named("b", Duration::ZERO).await;
    let (http, grpc, _dns, _d) = discovery_server().await;
    let gw = gateway_with(
        json!({
            "_format_version": "3.0",
            "services": [{"name": "web", "host": "web.service.bronze",
                          "routes": [{"name": "web", "paths": ["/"]}]}]
        }),
        |cfg| cfg.discovery = format!("http://{grpc}"),
    )
    .await;
    let c = client();
    let url = format!("http://{}/x", gw.addr);
    let (code, body) = get(&c, &url, &[]).await;
    assert_eq!(code, 503, "no instance yet: {body}");

    register(&c, http, "web-a", a, 1).await;
    assert!(until_only(&c, &url, "a", 3).await, "a registered");
    register(&c, http, "web-b", b, 1).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(&c, &url, &[]).await.1 != "b" {
        assert!(Instant::now() < deadline, "b never joined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = c
        .put(format!("http://{http}/v1/agent/service/deregister/web-a"))
        .send()
        .await
        .expect("deregister");
    assert_eq!(r.status(), 200);
    assert!(until_only(&c, &url, "b", 10).await, "a left");
    // A new configuration keeps following, with no gap.
    let (status, _) = post_config(
        &gw,
        &json!({
            "_format_version": "3.0",
            "services": [{"name": "web2", "host": "web.service.bronze",
                          "routes": [{"name": "web2", "paths": ["/"]}]}]
        }),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(get(&c, &url, &[]).await, (200, "b".to_string()));
}

#[tokio::test]
async fn bad_upstream_configurations_are_refused_naming_the_field() {
    let (a, _) = named("a", Duration::ZERO).await;
    let gw = gateway(pool(&[a], json!({}))).await;
    let c = client();
    let url = format!("http://{}/x", gw.addr);
    let cases = [
        (
            json!({"algorithm": "fastest"}),
            "upstreams[0].algorithm",
            "expected one of",
        ),
        (
            json!({"hash_on": "header"}),
            "upstreams[0].hash_on_header",
            "required",
        ),
        (
            json!({"hash_on": "cookie"}),
            "upstreams[0].hash_on_cookie",
            "required",
        ),
        (
            json!({"healthchecks": {"active": {"healthy": {"interval": -1}}}}),
            "upstreams[0].healthchecks.active.healthy.interval",
            "seconds",
        ),
        (
            json!({"healthchecks": {"active": {"unhealthy": {"interval": "soon"}}}}),
            "upstreams[0].healthchecks.active.unhealthy.interval",
            "",
        ),
        (
            json!({"healthchecks": {"active": {"type": "udp"}}}),
            "upstreams[0].healthchecks.active.type",
            "expected http, https, tcp, grpc or grpcs",
        ),
        (
            json!({"healthchecks": {"active": {"type": "http", "https_sni": "a.test"}}}),
            "upstreams[0].healthchecks.active.https_sni",
            "only for https and grpcs checks",
        ),
        (
            json!({"healthchecks": {"active": {"type": "https", "https_sni": "not a name"}}}),
            "upstreams[0].healthchecks.active.https_sni",
            "expected a DNS name",
        ),
        (
            json!({"healthchecks": {"passive": {"unhealthy": {"http_statuses": [42]}}}}),
            "upstreams[0].healthchecks.passive.unhealthy.http_statuses",
            "status",
        ),
        (json!({"slots": 5}), "upstreams[0].slots", "10-65536"),
        (
            json!({"hash_on": "uri_capture"}),
            "upstreams[0].hash_on_uri_capture",
            "required",
        ),
        (
            json!({"circuit_breaker": {"open_timeout": 0}}),
            "upstreams[0].circuit_breaker.open_timeout",
            "milliseconds",
        ),
    ];
    for (extra, field, words) in cases {
        let (status, v) = post_config(&gw, &pool(&[a], extra.clone())).await;
        assert_eq!(status, 400, "{extra}: {v}");
        let message = v["fields"][field]
            .as_str()
            .unwrap_or_else(|| panic!("{extra}: no {field} in {v}"));
        assert!(message.contains(words), "{extra}: {message}");
    }
    // The running configuration is untouched.
    assert_eq!(get(&c, &url, &[]).await, (200, "a".to_string()));
}

#[tokio::test]
async fn write_timeout_fails_an_upload_the_upstream_stops_reading() {
    // A backend that accepts and never reads: once the socket buffers are
    // full, the gateway's writes wait, and the service's write_timeout ends
    // the request.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let gw = gateway(json!({
        "_format_version": "3.0",
        "services": [{"name": "sink", "url": format!("http://{addr}"),
                      "write_timeout": 300, "read_timeout": 20000,
                      "routes": [{"name": "sink", "paths": ["/"]}]}]
    }))
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("big");
    std::fs::write(&file, vec![b'x'; 64 << 20]).expect("write");
    let started = Instant::now();
    let (code, body) = curl(s(&[
        "-T",
        &file.display().to_string(),
        &format!("http://{}/upload", gw.addr),
    ]))
    .await;
    let took = started.elapsed();
    assert_eq!(code, 504, "{body}");
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}: write_timeout not applied"
    );
}

pub(super) async fn admin_get(c: &reqwest::Client, gw: &Gw, path: &str) -> (u16, Value) {
    let r = c
        .get(format!("http://{}{path}", gw.admin))
        .send()
        .await
        .expect("admin GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// The `health` of the entry for `addr` in a `/upstreams/{u}/health` answer.
pub(super) fn health_of(v: &Value, addr: SocketAddr) -> Option<String> {
    v["data"]
        .as_array()?
        .iter()
        .find(|e| e["target"] == addr.to_string())
        .and_then(|e| e["health"].as_str())
        .map(str::to_string)
}

/// Waits (at most 15 s) until the admin API shows `addr` in upstream
/// `name` with `health`; the last answer.
pub(super) async fn health_becomes(gw: &Gw, name: &str, addr: SocketAddr, health: &str) -> Value {
    let c = client();
    let path = format!("/upstreams/{name}/health");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, v) = admin_get(&c, gw, &path).await;
        if health_of(&v, addr).as_deref() == Some(health) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `type: grpc` checks speak the gRPC health protocol (tonic-health's
/// server): SERVING is healthy, NOT_SERVING and a dead port are not.
#[tokio::test]
async fn grpc_active_checks_follow_the_health_protocol() {
    let (reporter, service) = bronze_runtime::grpc::health();
    reporter
        .set_service_status("", bronze_runtime::grpc::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let down = dead_port();
    let gw = gateway(
        json!({"_format_version": "3.0", "upstreams": [{"name": "grpc-pool",
        "healthchecks": {"active": {"type": "grpc", "timeout": 1,
            "healthy": {"interval": 0.1, "successes": 1},
            "unhealthy": {"interval": 0.1, "http_failures": 1, "tcp_failures": 1}}},
        "targets": [{"target": addr.to_string()}, {"target": down.to_string()}]}]}),
    )
    .await;
    let v = health_becomes(&gw, "grpc-pool", addr, "HEALTHY").await;
    assert_eq!(health_of(&v, addr).as_deref(), Some("HEALTHY"), "{v}");
    let v = health_becomes(&gw, "grpc-pool", down, "UNHEALTHY").await;
    assert_eq!(health_of(&v, down).as_deref(), Some("UNHEALTHY"), "{v}");
    reporter
        .set_service_status("", bronze_runtime::grpc::ServingStatus::NotServing)
        .await;
    let v = health_becomes(&gw, "grpc-pool", addr, "UNHEALTHY").await;
    assert_eq!(health_of(&v, addr).as_deref(), Some("UNHEALTHY"), "{v}");
    reporter
        .set_service_status("", bronze_runtime::grpc::ServingStatus::Serving)
        .await;
    let v = health_becomes(&gw, "grpc-pool", addr, "HEALTHY").await;
    assert_eq!(health_of(&v, addr).as_deref(), Some("HEALTHY"), "{v}");
}

/// A gRPC health server written by hand on hyper's HTTP/2 server, so the
/// answer's bytes are the test's: every call is answered 200 with
/// `grpc-status: 0` in the trailers and, as its body, one gRPC message
/// holding `message` (`None`: a message that claims 2 GiB and never ends).
async fn grpc_health_answering(message: Option<&'static [u8]>) -> SocketAddr {
    use futures::StreamExt as _;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    type Frames = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<Frame<bytes::Bytes>, std::io::Error>> + Send>,
    >;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let service = hyper::service::service_fn(move |_req| async move {
                let frames: Frames = match message {
                    Some(m) => {
                        let mut body = vec![0];
                        body.extend_from_slice(&(m.len() as u32).to_be_bytes());
                        body.extend_from_slice(m);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        Box::pin(futures::stream::iter([
                            Ok(Frame::data(bytes::Bytes::from(body))),
                            Ok(Frame::trailers(trailers)),
                        ]))
                    }
                    None => Box::pin(
                        futures::stream::once(async {
                            Ok(Frame::data(bytes::Bytes::from_static(&[
                                0, 0x7f, 0xff, 0xff, 0xff,
                            ])))
                        })
                        .chain(futures::stream::repeat_with(|| {
                            Ok(Frame::data(bytes::Bytes::from(vec![0x08; 16 << 10])))
                        })),
                    ),
                };
                http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(StreamBody::new(frames))
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
            );
        }
    });
    addr
}

/// A gateway whose upstream `grpc-pool` checks `targets` by gRPC every
/// 100 ms; one HTTP failure takes a target out, timeouts are not counted.
async fn grpc_checked(targets: &[SocketAddr]) -> Gw {
    let targets: Vec<Value> = targets
        .iter()
        .map(|t| json!({"target": t.to_string()}))
        .collect();
    gateway(
        json!({"_format_version": "3.0", "upstreams": [{"name": "grpc-pool",
        "healthchecks": {"active": {"type": "grpc", "timeout": 5,
            "healthy": {"interval": 0.1, "successes": 1},
            "unhealthy": {"interval": 0.1, "http_failures": 1, "timeouts": 0}}},
        "targets": targets}]}),
    )
    .await
}

/// The check decodes the `grpc.health.v1` answer instead of comparing its
/// bytes with tonic's: SERVING written with an unknown field and the
/// status field twice (valid protobuf, the last value wins) is healthy.
#[tokio::test]
async fn grpc_active_checks_decode_the_answer() {
    let wordy = grpc_health_answering(Some(&[0x18, 0x07, 0x08, 0x02, 0x08, 0x01])).await;
    let gw = grpc_checked(&[wordy]).await;
    // It starts out of the balancer: only a passed check brings it back.
    let code = client()
        .put(format!(
            "http://{}/upstreams/grpc-pool/targets/{wordy}/unhealthy",
            gw.admin
        ))
        .send()
        .await
        .expect("admin")
        .status();
    assert_eq!(code, 204);
    let v = health_becomes(&gw, "grpc-pool", wordy, "HEALTHY").await;
    assert_eq!(health_of(&v, wordy).as_deref(), Some("HEALTHY"), "{v}");
}

/// The check reads a bounded answer: a server streaming a body without
/// end fails the check at once (an HTTP failure), where reading it all
/// would only end at the check's timeout, which this upstream does not
/// count.
#[tokio::test]
async fn grpc_active_checks_bound_what_they_read() {
    let endless = grpc_health_answering(None).await;
    let gw = grpc_checked(&[endless]).await;
    let v = health_becomes(&gw, "grpc-pool", endless, "UNHEALTHY").await;
    assert_eq!(health_of(&v, endless).as_deref(), Some("UNHEALTHY"), "{v}");
}

#[tokio::test]
async fn upstream_health_in_the_admin_api_follows_active_checks() {
    let (a, a_health) = named("a", Duration::ZERO).await;
    let (b, _) = named("b", Duration::ZERO).await;
    let mut config = pool(
        &[a, b],
        json!({"healthchecks": {"active": {
            "http_path": "/health", "timeout": 1, "concurrency": 2,
            "healthy": {"interval": 0.1, "successes": 1},
            "unhealthy": {"interval": 0.1, "http_failures": 1}}}}),
    );
    config["upstreams"]
        .as_array_mut()
        .expect("upstreams")
        .push(json!({"name": "plain", "targets": [{"target": a.to_string()}]}));
    let gw = gateway(config).await;
    let c = client();

    let (code, v) = admin_get(&c, &gw, "/upstreams/pool/health").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["total"], 2, "{v}");
    assert_eq!(health_of(&v, a).as_deref(), Some("HEALTHY"), "{v}");
    assert_eq!(health_of(&v, b).as_deref(), Some("HEALTHY"), "{v}");
    let (_, targets) = admin_get(&c, &gw, "/upstreams/pool/targets").await;
    let ids: Vec<&Value> = targets["data"]
        .as_array()
        .map(|t| t.iter().map(|t| &t["id"]).collect())
        .unwrap_or_default();
    for e in v["data"].as_array().into_iter().flatten() {
        assert!(ids.contains(&&e["id"]), "each entry names its target: {v}");
        assert!(e["upstream"]["id"].is_string(), "{v}");
    }
    let (_, v) = admin_get(&c, &gw, "/upstreams/pool/health?balancer_health=1").await;
    assert_eq!(v["data"]["health"], "HEALTHY", "{v}");

    // a fails its checks: the admin API shows it, b stays healthy.
    a_health.store(500, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(15);
    let v = loop {
        let (_, v) = admin_get(&c, &gw, "/upstreams/pool/health").await;
        if health_of(&v, a).as_deref() == Some("UNHEALTHY") || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health_of(&v, a).as_deref(), Some("UNHEALTHY"), "{v}");
    assert_eq!(health_of(&v, b).as_deref(), Some("HEALTHY"), "{v}");
    // Kong's balancer health: at `threshold` 0 the upstream stays healthy.
    let (_, v) = admin_get(&c, &gw, "/upstreams/pool/health?balancer_health=1").await;
    assert_eq!(v["data"]["health"], "HEALTHY", "{v}");
    // a comes back.
    a_health.store(200, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(15);
    let v = loop {
        let (_, v) = admin_get(&c, &gw, "/upstreams/pool/health").await;
        if health_of(&v, a).as_deref() == Some("HEALTHY") || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health_of(&v, a).as_deref(), Some("HEALTHY"), "{v}");

    // An upstream without health checks says so; an unknown one is 404.
    let (code, v) = admin_get(&c, &gw, "/upstreams/plain/health").await;
    assert_eq!(code, 200);
    assert_eq!(health_of(&v, a).as_deref(), Some("HEALTHCHECKS_OFF"), "{v}");
    let (code, _) = admin_get(&c, &gw, "/upstreams/nope/health").await;
    assert_eq!(code, 404);
}

/// Kong's `PUT /upstreams/{u}/targets/{t}/unhealthy` and `/healthy`: a
/// target taken out of the balancer by hand (a drain before a deploy)
/// gets no requests until it is put back.
#[tokio::test]
async fn targets_are_set_unhealthy_and_healthy_by_hand() {
    let (a, _) = named("a", Duration::ZERO).await;
    let (b, _) = named("b", Duration::ZERO).await;
    let gw = gateway(pool(&[a, b], json!({}))).await;
    let c = client();
    let url = format!("http://{}/x", gw.addr);
    let seen = |n: usize| {
        let (c, url) = (&c, &url);
        async move {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..n {
                let (code, body) = get(c, url, &[]).await;
                assert_eq!(code, 200, "{body}");
                seen.insert(body);
            }
            seen
        }
    };
    assert_eq!(seen(10).await.len(), 2);
    let admin = |method: reqwest::Method, path: String| {
        let c = &c;
        let gw = &gw;
        async move {
            c.request(method, format!("http://{}{path}", gw.admin))
                .send()
                .await
                .expect("admin")
                .status()
                .as_u16()
        }
    };
    let target = a.to_string();
    let code = admin(
        reqwest::Method::PUT,
        format!("/upstreams/pool/targets/{target}/unhealthy"),
    )
    .await;
    assert_eq!(code, 204);
    assert_eq!(
        seen(10).await,
        std::collections::BTreeSet::from(["b".to_string()])
    );
    let v = health_becomes(&gw, "pool", a, "UNHEALTHY").await;
    assert_eq!(health_of(&v, a).as_deref(), Some("UNHEALTHY"), "{v}");
    // Back (POST, as older Kong): both again.
    let code = admin(
        reqwest::Method::POST,
        format!("/upstreams/pool/targets/{target}/healthy"),
    )
    .await;
    assert_eq!(code, 204);
    assert_eq!(seen(10).await.len(), 2);
    // Unknown upstream, target or state.
    for path in [
        format!("/upstreams/nope/targets/{target}/healthy"),
        "/upstreams/pool/targets/10.9.9.9:1/healthy".to_string(),
        format!("/upstreams/pool/targets/{target}/sideways"),
    ] {
        assert_eq!(
            admin(reqwest::Method::PUT, path.clone()).await,
            404,
            "{path}"
        );
    }
}
