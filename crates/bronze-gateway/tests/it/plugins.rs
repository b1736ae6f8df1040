//! Plugins end to end: curl through the gateway to an echo backend that
//! reports what it received; Kong's status codes, messages and headers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;

use super::{Gw, echo, gateway, s};

/// curl's status, response headers (lowercased names; repeated ones joined
/// with ", ") and body.
async fn curl_h(args: Vec<String>) -> (u16, HashMap<String, String>, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-s", "-D", "-"])
            .args(&args)
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // The last header block (after any 100 Continue).
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let (mut head, mut body) = (head.to_string(), body.to_string());
        while body.starts_with("HTTP/") {
            let (h, b) = body.split_once("\r\n\r\n").unwrap_or((&body, ""));
            (head, body) = (h.to_string(), b.to_string());
        }
        let mut lines = head.lines();
        let code = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let mut headers: HashMap<String, String> = HashMap::new();
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                headers
                    .entry(k.trim().to_ascii_lowercase())
                    .and_modify(|e| {
                        e.push_str(", ");
                        e.push_str(v.trim());
                    })
                    .or_insert_with(|| v.trim().to_string());
            }
        }
        (code, headers, body)
    })
    .await
    .expect("join")
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

/// POST /config; the status and the JSON answer.
async fn post_config(gw: &Gw, doc: &serde_json::Value) -> (u16, serde_json::Value) {
    let (code, _, body) = curl_h(post_config_args(gw, doc)).await;
    (code, json(&body))
}

/// curl's arguments for POST /config of `doc`.
fn post_config_args(gw: &Gw, doc: &serde_json::Value) -> Vec<String> {
    s(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &doc.to_string(),
        &format!("http://{}/config", gw.admin),
    ])
}

fn consumers() -> serde_json::Value {
    serde_json::json!([
        {"username": "alice", "id": "4e8a6a0e-7f57-4e8b-9d55-3a3f1c0d2a11", "custom_id": "A-1",
         "keyauth_credentials": [{"key": "alice-key", "id": "c0ffee00-0000-4000-8000-000000000001"}]},
        {"username": "bob"},
        {"custom_id": "svc-42", "keyauth_credentials": [{"key": "svc-key"}]}
    ])
}

fn key_auth_doc(backend: SocketAddr) -> serde_json::Value {
    serde_json::json!({
        "_format_version": "3.0",
        "consumers": consumers(),
        "keyauth_credentials": [{"key": "bob-key", "consumer": "bob"}],
        "services": [{"name": "svc", "url": format!("http://{backend}"), "routes": [
            {"name": "locked", "paths": ["/locked"], "plugins": [{"name": "key-auth"}]},
            {"name": "hidden", "paths": ["/hidden"], "plugins": [
                {"name": "key-auth", "config": {"key_names": ["apikey", "x-api-key"], "hide_credentials": true}}]},
            {"name": "guest", "paths": ["/guest"], "plugins": [
                {"name": "key-auth", "config": {"anonymous": "bob"}}]},
            {"name": "open", "paths": ["/open"]}
        ]}]
    })
}

#[tokio::test]
async fn key_auth_as_kong() {
    let backend = echo("a").await;
    let gw = gateway(key_auth_doc(backend)).await;
    let base = format!("http://{}", gw.addr);

    let (code, h, body) = curl_h(s(&[&format!("{base}/locked")])).await;
    assert_eq!(code, 401);
    assert_eq!(body, r#"{"message":"No API key found in request"}"#);
    assert_eq!(h["www-authenticate"], "Key");
    let (code, _, body) = curl_h(s(&["-H", "apikey: nope", &format!("{base}/locked")])).await;
    assert_eq!(code, 401);
    assert_eq!(body, r#"{"message":"Invalid authentication credentials"}"#);

    // A header key: the backend learns the consumer and the credential;
    // headers the client made up are replaced.
    let (code, _, body) = curl_h(s(&[
        "-H",
        "apikey: alice-key",
        "-H",
        "X-Consumer-Username: mallory",
        "-H",
        "X-Anonymous-Consumer: true",
        &format!("{base}/locked/x"),
    ]))
    .await;
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["headers"]["x-consumer-username"], "alice");
    assert!(v["headers"].get("x-anonymous-consumer").is_none(), "{v}");
    assert_eq!(
        v["headers"]["x-consumer-id"],
        "4e8a6a0e-7f57-4e8b-9d55-3a3f1c0d2a11"
    );
    assert_eq!(v["headers"]["x-consumer-custom-id"], "A-1");
    assert_eq!(
        v["headers"]["x-credential-identifier"],
        "c0ffee00-0000-4000-8000-000000000001"
    );
    assert_eq!(v["headers"]["apikey"], "alice-key");

    // The query string; a credential listed at top level with `consumer`.
    let (code, _, body) = curl_h(s(&[&format!("{base}/locked?apikey=bob-key&x=1")])).await;
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["headers"]["x-consumer-username"], "bob");
    assert_eq!(v["uri"], "/?apikey=bob-key&x=1");
    // bob has no id in the file: a stable one is derived.
    let id = v["headers"]["x-consumer-id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(id.len(), 36, "{id}");

    // A consumer known by custom_id only: a username the client made up
    // does not travel either.
    let (code, _, body) = curl_h(s(&[
        "-H",
        "apikey: svc-key",
        "-H",
        "x-consumer-username: mallory",
        &format!("{base}/locked"),
    ]))
    .await;
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["headers"]["x-consumer-custom-id"], "svc-42");
    assert!(v["headers"].get("x-consumer-username").is_none(), "{v}");

    // hide_credentials: neither header nor query parameter travels.
    let (code, _, body) = curl_h(s(&[
        "-H",
        "x-api-key: alice-key",
        &format!("{base}/hidden"),
    ]))
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(json(&body)["headers"].get("x-api-key").is_none(), "{body}");
    let (code, _, body) = curl_h(s(&[&format!("{base}/hidden/p?a=1&apikey=alice-key&b=2")])).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["uri"], "/p?a=1&b=2");
    // Two keys: refused.
    let (code, _, body) = curl_h(s(&[&format!("{base}/locked?apikey=a&apikey=b")])).await;
    assert_eq!(code, 401);
    assert_eq!(body, r#"{"message":"Duplicate API key found"}"#);

    // anonymous: a request without a key passes as that consumer.
    let (code, _, body) = curl_h(s(&[&format!("{base}/guest")])).await;
    assert_eq!(code, 200);
    let v = json(&body);
    assert_eq!(v["headers"]["x-consumer-username"], "bob");
    assert_eq!(v["headers"]["x-anonymous-consumer"], "true");
    let (_, _, body) = curl_h(s(&["-H", "apikey: alice-key", &format!("{base}/guest")])).await;
    let v = json(&body);
    assert_eq!(v["headers"]["x-consumer-username"], "alice");
    assert!(v["headers"].get("x-anonymous-consumer").is_none());

    // A route without plugins is untouched.
    let (code, _, body) = curl_h(s(&[&format!("{base}/open")])).await;
    assert_eq!(code, 200);
    assert!(json(&body)["headers"].get("x-consumer-id").is_none());
}

#[tokio::test]
async fn bad_plugin_configs_are_named_and_change_nothing() {
    let backend = echo("a").await;
    let gw = gateway(key_auth_doc(backend)).await;
    let base = format!("http://{}", gw.addr);

    let mut doc = key_auth_doc(backend);
    doc["services"][0]["routes"][3]["plugins"] = serde_json::json!([{"name": "key-authx"}]);
    let (code, v) = post_config(&gw, &doc).await;
    assert_eq!(code, 400, "{v}");
    let m = v["fields"]["services[0].routes[3].plugins[0].name"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    assert!(
        m.contains("key-authx") && m.contains("rate-limiting"),
        "{m}"
    );

    let mut doc = key_auth_doc(backend);
    doc["services"][0]["plugins"] = serde_json::json!([
        {"name": "cors"}, {"name": "rate-limiting", "config": {"minut": 5}}]);
    let (code, v) = post_config(&gw, &doc).await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["fields"]["services[0].plugins[1].config.minut"]
            .as_str()
            .is_some_and(|m| m.contains("unknown field")),
        "{v}"
    );

    let mut doc = key_auth_doc(backend);
    doc["plugins"] = serde_json::json!([{"name": "rate-limiting", "consumer": "carol", "config": {"minute": 1}}]);
    let (code, v) = post_config(&gw, &doc).await;
    assert_eq!(code, 400, "{v}");
    assert!(v["fields"].get("plugins[0].consumer").is_some(), "{v}");

    let mut doc = key_auth_doc(backend);
    doc["consumers"][2]["custom_id"] = serde_json::Value::Null;
    let (code, v) = post_config(&gw, &doc).await;
    assert_eq!(code, 400, "{v}");
    assert!(v["fields"].get("consumers[2].username").is_some(), "{v}");

    let mut doc = key_auth_doc(backend);
    doc["plugins"] = serde_json::json!([{"name": "key-auth", "consumer": "bob"}]);
    let (code, v) = post_config(&gw, &doc).await;
    assert_eq!(code, 400, "{v}");
    assert!(v["fields"].get("plugins[0].consumer").is_some(), "{v}");

    let mut doc = key_auth_doc(backend);
    doc["services"][0]["routes"][0]["plugins"][0]["config"] =
        serde_json::json!({"anonymous": "nobody"});
    let (code, v) = post_config(&gw, &doc).await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["fields"]
            .get("services[0].routes[0].plugins[0].config.anonymous")
            .is_some(),
        "{v}"
    );

    // A plugin limited to some protocols would run for all: refused.
    let mut doc = key_auth_doc(backend);
    doc["plugins"] = serde_json::json!([{"name": "cors", "protocols": ["https"]}]);
    let (code, v) = post_config(&gw, &doc).await;
    assert_eq!(code, 400, "{v}");
    assert!(v["fields"].get("plugins[0].protocols").is_some(), "{v}");

    // Nothing changed: the locked route still wants its key, the open one
    // still passes.
    let (code, _, _) = curl_h(s(&[&format!("{base}/locked")])).await;
    assert_eq!(code, 401);
    let (code, _, _) = curl_h(s(&[&format!("{base}/open")])).await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn the_most_specific_instance_wins() {
    let backend = echo("a").await;
    let tag = |scope: &str| serde_json::json!({"name": "request-transformer", "config": {"add": {"headers": [format!("x-scope:{scope}")]}}});
    let mut on_route_by_ref = tag("route-by-reference");
    on_route_by_ref["route"] = "referenced".into();
    let mut disabled = tag("disabled");
    disabled["enabled"] = false.into();
    let mut bob_on_who = tag("bob-on-who");
    bob_on_who["route"] = "who".into();
    let mut people = consumers();
    people[1]["keyauth_credentials"] = serde_json::json!([{"key": "bob-key"}]);
    people[1]["plugins"] = serde_json::json!([bob_on_who]);
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "consumers": people,
        "plugins": [tag("global"), on_route_by_ref],
        "services": [
            {"name": "one", "url": format!("http://{backend}"), "plugins": [tag("service")], "routes": [
                {"name": "own", "paths": ["/own"], "plugins": [tag("route")]},
                {"name": "inherits", "paths": ["/inherits"]},
                {"name": "referenced", "paths": ["/referenced"]},
                {"name": "off", "paths": ["/off"], "plugins": [disabled]},
                {"name": "who", "paths": ["/who"], "plugins": [tag("route"), {"name": "key-auth"}]}
            ]},
            {"name": "two", "url": format!("http://{backend}"), "routes": [
                {"name": "global-only", "paths": ["/global"]}]}
        ]
    }))
    .await;
    // A consumer's own instance (nested under the consumer, naming the
    // route) beats the route's once key-auth has named the consumer.
    for (key, want) in [("bob-key", "bob-on-who"), ("alice-key", "route")] {
        let (code, _, body) = curl_h(s(&[
            "-H",
            &format!("apikey: {key}"),
            &format!("http://{}/who", gw.addr),
        ]))
        .await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(json(&body)["headers"]["x-scope"], want, "{key}");
    }
    for (path, want) in [
        ("/own", Some("route")),
        ("/inherits", Some("service")),
        ("/referenced", Some("route-by-reference")),
        ("/global", Some("global")),
        // Disabled: as if absent (Kong loads enabled instances only).
        ("/off", Some("service")),
    ] {
        let (code, _, body) = curl_h(s(&[&format!("http://{}{path}", gw.addr)])).await;
        assert_eq!(code, 200, "{path}: {body}");
        assert_eq!(
            json(&body)["headers"]
                .get("x-scope")
                .and_then(|v| v.as_str()),
            want,
            "{path}"
        );
    }
    // A request no route matched still sees Kong's 404.
    let (code, _, body) = curl_h(s(&[&format!("http://{}/nothing", gw.addr)])).await;
    assert_eq!(code, 404, "{body}");
}

#[tokio::test]
async fn rate_limiting_counts_per_identifier_with_kong_headers() {
    let backend = echo("a").await;
    // Day windows: a test never straddles their boundary in practice.
    let doc = serde_json::json!({
        "_format_version": "3.0",
        "consumers": consumers(),
        "keyauth_credentials": [{"key": "bob-key", "consumer": "bob"}],
        "plugins": [{"name": "rate-limiting", "consumer": "bob", "route": "per-consumer",
                     "config": {"day": 1}}],
        "services": [{"name": "svc", "url": format!("http://{backend}"),
          "plugins": [{"name": "rate-limiting", "config": {"day": 100, "limit_by": "ip"}}],
          "routes": [
            {"name": "by-ip", "paths": ["/ip"], "plugins": [
                {"name": "rate-limiting", "config": {"hour": 3, "day": 3, "limit_by": "ip"}}]},
            {"name": "per-consumer", "paths": ["/consumer"], "plugins": [
                {"name": "key-auth"},
                {"name": "rate-limiting", "config": {"day": 2}}]},
            {"name": "by-header", "paths": ["/header"], "plugins": [
                {"name": "rate-limiting", "config": {"day": 1, "limit_by": "header", "header_name": "x-tenant",
                 "error_code": 503, "error_message": "slow down"}}]}
          ]}]
    });
    let gw = gateway(doc.clone()).await;
    let base = format!("http://{}", gw.addr);

    for remaining in [2, 1, 0] {
        let (code, h, _) = curl_h(s(&[&format!("{base}/ip")])).await;
        assert_eq!(code, 200);
        assert_eq!(h["x-ratelimit-limit-day"], "3");
        assert_eq!(h["x-ratelimit-remaining-day"], remaining.to_string());
        assert_eq!(h["x-ratelimit-limit-hour"], "3");
        assert_eq!(h["ratelimit-limit"], "3");
        assert_eq!(h["ratelimit-remaining"], remaining.to_string());
        // Among windows with as much left, Kong reports the longer one.
        let reset: u64 = h["ratelimit-reset"].parse().expect("reset");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let to_midnight = 86_400 - now % 86_400;
        assert!(reset.abs_diff(to_midnight) <= 2, "{reset} vs {to_midnight}");
    }
    let (code, h, body) = curl_h(s(&[&format!("{base}/ip")])).await;
    assert_eq!(code, 429);
    assert_eq!(body, r#"{"message":"API rate limit exceeded"}"#);
    assert_eq!(h["ratelimit-remaining"], "0");
    assert!(h.contains_key("retry-after"), "{h:?}");
    // Re-applying the configuration keeps the counts (a rebuild is not a
    // way around a limit).
    let (code, v) = post_config(&gw, &doc).await;
    assert_eq!(code, 201, "{v}");
    let (code, _, _) = curl_h(s(&[&format!("{base}/ip")])).await;
    assert_eq!(code, 429);

    // By consumer: alice has the route's 2 a day; bob's own instance (1 a
    // day) overrides the route's for him.
    for _ in 0..2 {
        let (code, _, _) =
            curl_h(s(&["-H", "apikey: alice-key", &format!("{base}/consumer")])).await;
        assert_eq!(code, 200);
    }
    let (code, _, _) = curl_h(s(&["-H", "apikey: alice-key", &format!("{base}/consumer")])).await;
    assert_eq!(code, 429);
    let (code, h, _) = curl_h(s(&["-H", "apikey: bob-key", &format!("{base}/consumer")])).await;
    assert_eq!(code, 200);
    assert_eq!(h["x-ratelimit-limit-day"], "1");
    let (code, _, _) = curl_h(s(&["-H", "apikey: bob-key", &format!("{base}/consumer")])).await;
    assert_eq!(code, 429);

    // By header, with a custom status and message.
    let (code, _, _) = curl_h(s(&["-H", "x-tenant: t1", &format!("{base}/header")])).await;
    assert_eq!(code, 200);
    let (code, _, body) = curl_h(s(&["-H", "x-tenant: t1", &format!("{base}/header")])).await;
    assert_eq!(code, 503);
    assert_eq!(body, r#"{"message":"slow down"}"#);
    let (code, _, _) = curl_h(s(&["-H", "x-tenant: t2", &format!("{base}/header")])).await;
    assert_eq!(code, 200);
}

/// Rate-limiting counters belong to a gateway, not to the process: two
/// gateways with the same configuration in one process (as `bronze dev`
/// or these tests run them) count apart.
#[tokio::test]
async fn two_gateways_in_one_process_count_apart() {
    let doc = serde_json::json!({"_format_version": "3.0",
        "services": [{"name": "svc", "url": "http://127.0.0.1:9", "routes": [
            {"name": "limited", "paths": ["/limited"], "plugins": [
                {"name": "rate-limiting", "config": {"day": 1, "limit_by": "ip"}},
                {"name": "request-termination", "config": {"status_code": 200}}]}]}]});
    let (one, two) = (gateway(doc.clone()).await, gateway(doc).await);
    for gw in [&one, &two] {
        let (code, _, _) = curl_h(s(&[&format!("http://{}/limited", gw.addr)])).await;
        assert_eq!(code, 200, "the first request to each gateway");
    }
    let (code, _, _) = curl_h(s(&[&format!("http://{}/limited", one.addr)])).await;
    assert_eq!(code, 429);
}

/// The `bronze-gateway` binary, killed when dropped.
struct Binary(std::process::Child);

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Binary {
    /// Starts the binary on port 0 with `declarative`; its proxy address
    /// (read from its "gateway serving" log line).
    fn start(declarative: &std::path::Path) -> (Self, SocketAddr) {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_bronze-gateway"))
            .args(["--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .arg("--declarative-config")
            .arg(declarative)
            // Its data directory (relative) beside the file, not here.
            .current_dir(declarative.parent().expect("a file in a directory"))
            .env("BRONZE_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("bronze-gateway starts");
        let stderr = child.stderr.take().expect("stderr");
        let child = Binary(child);
        let mut lines = std::io::BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("a log line before the gateway serves")
                .expect("stderr");
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "gateway serving"
            {
                break v["proxy"].as_str().expect("proxy").parse().expect("addr");
            }
        };
        // The rest of the log goes nowhere, without blocking the binary.
        std::thread::spawn(move || lines.for_each(drop));
        (child, addr)
    }

    /// Resident memory in bytes (`VmRSS` of /proc).
    fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).expect("status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kb * 1024
    }
}

/// A client choosing a new 8 KiB rate-limiting key for every request (a
/// header `limit_by` reads) cannot grow the gateway's memory: 20,000 of
/// them (160 MB of keys) leave it within 48 MB of where it started, since
/// the table keeps fixed-size entries (long values as digests) and at most
/// `rate_limiting::ENTRIES` of them per instance.
#[tokio::test]
async fn a_flood_of_distinct_rate_limiting_keys_keeps_memory_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kong.json");
    let doc = serde_json::json!({"_format_version": "3.0",
        "services": [{"name": "svc", "url": "http://127.0.0.1:9", "routes": [
            {"name": "limited", "paths": ["/limited"], "plugins": [
                {"name": "rate-limiting",
                 "config": {"year": 5, "limit_by": "header", "header_name": "x-tenant"}},
                {"name": "request-termination", "config": {"status_code": 200}}]}]}]});
    std::fs::write(&path, doc.to_string()).expect("write");
    let (gw, addr) = Binary::start(&path);
    let url = format!("http://{addr}/limited");
    let (client, to) = (reqwest::Client::new(), url.clone());
    let send = move |i: usize| {
        let (client, url) = (client.clone(), to.clone());
        async move {
            let key = format!("{i:08}{}", "k".repeat(8 << 10));
            client
                .get(url)
                .header("x-tenant", key)
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        }
    };
    // Warm up (connections, the first allocations), then measure.
    for i in 0..200 {
        assert_eq!(send(i).await, 200);
    }
    let before = gw.rss();
    let (workers, each) = (8, 2_500);
    let mut all = tokio::task::JoinSet::new();
    for w in 0..workers {
        let send = send.clone();
        all.spawn(async move {
            for i in 0..each {
                assert_eq!(send(1_000 + w * each + i).await, 200);
            }
        });
    }
    while let Some(r) = all.join_next().await {
        r.expect("worker");
    }
    let grown = gw.rss().saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "resident memory grew by {} MB for 20,000 keys",
        grown >> 20
    );
    // Every key is still limited: the last one sent counts 2 of 5.
    let (code, h, _) = curl_h(s(&[
        "-H",
        &format!(
            "x-tenant: {:08}{}",
            1_000 + workers * each - 1,
            "k".repeat(8 << 10)
        ),
        &url,
    ]))
    .await;
    assert_eq!(code, 200);
    assert_eq!(h["x-ratelimit-remaining-year"], "3");
}

#[tokio::test]
async fn prometheus_adds_status_codes_and_latencies_per_route() {
    let backend = echo("a").await;
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "consumers": consumers(),
        "services": [{"name": "svc", "url": format!("http://{backend}"), "routes": [
            {"name": "watched", "paths": ["/watched"], "plugins": [
                {"name": "key-auth", "config": {"anonymous": "bob"}},
                {"name": "prometheus", "config": {"status_code_metrics": true, "latency_metrics": true,
                                                   "per_consumer": true}}]},
            {"name": "plain", "paths": ["/plain"]},
            {"name": "locked", "paths": ["/locked"], "plugins": [
                {"name": "key-auth"}, {"name": "prometheus", "config": {"status_code_metrics": true}}]}
        ]}]
    }))
    .await;
    let base = format!("http://{}", gw.addr);
    curl_h(s(&[&format!("{base}/locked")])).await;
    for _ in 0..3 {
        curl_h(s(&["-H", "apikey: alice-key", &format!("{base}/watched")])).await;
    }
    curl_h(s(&[&format!("{base}/watched")])).await;
    curl_h(s(&[&format!("{base}/plain")])).await;
    let (_, _, metrics) = curl_h(s(&[&format!("http://{}/metrics", gw.admin)])).await;
    for line in [
        r#"bronze_gateway_http_status_total{route="watched",service="svc",code="200",source="service",consumer="alice"} 3"#,
        r#"bronze_gateway_http_status_total{route="watched",service="svc",code="200",source="service",consumer="bob"} 1"#,
        // Answered by key-auth: Kong's source "exit".
        r#"bronze_gateway_http_status_total{route="locked",service="svc",code="401",source="exit",consumer=""} 1"#,
        r#"bronze_gateway_request_latency_seconds_count{route="watched",service="svc"} 4"#,
        r#"bronze_gateway_upstream_latency_seconds_count{route="watched",service="svc"} 4"#,
        r#"bronze_gateway_proxy_latency_seconds_count{route="watched",service="svc"} 4"#,
        // The status-class counter every route has, unchanged.
        r#"bronze_gateway_http_requests_total{route="watched",service="svc",status="2xx"} 4"#,
        r#"bronze_gateway_http_requests_total{route="plain",service="svc",status="2xx"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    // Routes without the plugin get no per-code series.
    assert!(!metrics.contains(r#"bronze_gateway_http_status_total{route="plain""#));

    let mut doc = serde_json::json!({"_format_version": "3.0", "plugins": [
        {"name": "prometheus", "config": {"bandwidth_metrics": true}}]});
    let (code, v) = post_config(&gw, &doc).await;
    assert_eq!(code, 400);
    assert!(
        v["fields"]
            .get("plugins[0].config.bandwidth_metrics")
            .is_some(),
        "{v}"
    );
    doc["plugins"][0]["config"] = serde_json::json!({"status_codes": true});
    let (code, v) = post_config(&gw, &doc).await;
    assert_eq!(code, 400);
    assert!(
        v["fields"].get("plugins[0].config.status_codes").is_some(),
        "{v}"
    );
}

// On a multi-thread runtime (as `--workers 2` and more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_as_kong() {
    let backend = echo("a").await;
    let hashed = bcrypt_hash("hunter2");
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "consumers": [
            {"username": "carol", "basicauth_credentials": [{"username": "carol", "password": "s3cret"}]},
            {"username": "dave"}],
        "basicauth_credentials": [{"username": "dave-login", "password": hashed, "consumer": "dave"}],
        "services": [{"name": "svc", "url": format!("http://{backend}"), "routes": [
            {"name": "basic", "paths": ["/basic"], "plugins": [{"name": "basic-auth"}]},
            {"name": "hidden", "paths": ["/hidden"], "plugins": [
                {"name": "basic-auth", "config": {"hide_credentials": true}}]}
        ]}]
    }))
    .await;
    let base = format!("http://{}", gw.addr);
    let (code, h, body) = curl_h(s(&[&format!("{base}/basic")])).await;
    assert_eq!(code, 401);
    assert_eq!(body, r#"{"message":"Unauthorized"}"#);
    assert_eq!(h["www-authenticate"], r#"Basic realm="service""#);
    let (code, _, body) = curl_h(s(&["-u", "carol:wrong", &format!("{base}/basic")])).await;
    assert_eq!(code, 401);
    assert_eq!(body, r#"{"message":"Invalid authentication credentials"}"#);
    // Twice: the second is answered from the verified-password cache.
    for _ in 0..2 {
        let (code, _, body) = curl_h(s(&["-u", "carol:s3cret", &format!("{base}/basic")])).await;
        assert_eq!(code, 200, "{body}");
        let v = json(&body);
        assert_eq!(v["headers"]["x-consumer-username"], "carol");
        assert_eq!(v["headers"]["x-credential-identifier"], "carol");
        assert!(
            v["headers"]["authorization"]
                .as_str()
                .is_some_and(|a| a.starts_with("Basic "))
        );
    }
    // A password given already hashed (bcrypt), as a Kong export would.
    let (code, _, body) = curl_h(s(&["-u", "dave-login:hunter2", &format!("{base}/hidden")])).await;
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["headers"]["x-consumer-username"], "dave");
    assert!(v["headers"].get("authorization").is_none(), "{v}");
    let (code, _, _) = curl_h(s(&["-u", "dave-login:hunter3", &format!("{base}/hidden")])).await;
    assert_eq!(code, 401);
}

// One thread serves everything here (the default current-thread runtime),
// as `bronze-gateway --workers 1`: a password check must not hold it.
#[tokio::test]
async fn basic_auth_wrong_passwords_do_not_stall_other_requests() {
    let backend = echo("a").await;
    // bcrypt cost 12: a few hundred milliseconds a check, so that the
    // checks below queue for seconds.
    let hashed = tokio::task::spawn_blocking(|| bcrypt::hash("s3cret", 12).expect("bcrypt"))
        .await
        .expect("join");
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "consumers": [{"username": "carol"}],
        "basicauth_credentials": [{"username": "carol", "password": hashed, "consumer": "carol"}],
        "services": [{"name": "svc", "url": format!("http://{backend}"), "routes": [
            {"name": "basic", "paths": ["/basic"], "plugins": [{"name": "basic-auth"}]},
            {"name": "open", "paths": ["/open"]}
        ]}]
    }))
    .await;
    let base = format!("http://{}", gw.addr);
    // More wrong passwords than checks may run at once (one core's worth
    // fewer than the machine has), half over HTTP/2 (hyper's path).
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let wrong = 2 * cores + 2;
    let flood = (0..wrong)
        .map(|i| {
            let mut args = s(&["-u", &format!("carol:wrong{i}"), &format!("{base}/basic")]);
            if i % 2 == 1 {
                args.insert(0, "--http2-prior-knowledge".into());
            }
            args
        })
        .collect();
    let (order, codes) = flood_then_open(flood, format!("{base}/open"), gw.admin).await;
    assert_eq!(
        codes.iter().filter(|c| *c == "401").count(),
        wrong,
        "{codes:?}"
    );
    assert_eq!(codes.iter().filter(|c| *c == "200").count(), 2, "{codes:?}");
    // The open route answered while wrong passwords were still being
    // checked: none of them held the one thread.
    let open_at = order.iter().rposition(|n| n == "open").expect("open ran");
    assert!(
        open_at < wrong + 1,
        "the open route waited for every check: {order:?}"
    );
    // The right password, over both paths: checked once, then remembered.
    for http2 in [false, true, false] {
        let mut args = s(&["-u", "carol:s3cret", &format!("{base}/basic")]);
        if http2 {
            args.insert(0, "--http2-prior-knowledge".into());
        }
        let (code, _, body) = curl_h(args).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(json(&body)["headers"]["x-consumer-username"], "carol");
    }
}

// One thread, as `--workers 1`: a configuration with new plain-text
// passwords (bcrypt each) is compiled off it, the proxy keeps answering.
#[tokio::test]
async fn a_posted_config_with_new_passwords_does_not_stall_proxying() {
    let backend = echo("a").await;
    let open = serde_json::json!({"name": "svc", "url": format!("http://{backend}"), "routes": [
        {"name": "open", "paths": ["/open"]}]});
    let gw = gateway(serde_json::json!({"_format_version": "3.0", "services": [open]})).await;
    // Sixteen passwords no other test uses (hashes are cached by password).
    let tag = std::process::id();
    let consumers: Vec<serde_json::Value> = (0..16)
        .map(|i| {
            serde_json::json!({"username": format!("u{i}"), "basicauth_credentials": [
            {"username": format!("u{i}"), "password": format!("plain-{tag}-{i}")}]})
        })
        .collect();
    let doc =
        serde_json::json!({"_format_version": "3.0", "consumers": consumers, "services": [open]});
    let post = post_config_args(&gw, &doc);
    let (order, codes) =
        flood_then_open(vec![post], format!("http://{}/open", gw.addr), gw.admin).await;
    assert_eq!(
        order,
        ["open", "open", "0"],
        "the proxy waited for the configuration: {codes:?}"
    );
    assert_eq!(codes, ["200", "200", "201"]);
    // The new configuration is the one running, its passwords hashed.
    let (code, _, body) = curl_h(s(&[&format!("http://{}/config", gw.admin)])).await;
    assert_eq!(code, 200, "{body}");
    let running = json(&body);
    let hashes: Vec<&str> = running["basicauth_credentials"]
        .as_array()
        .expect("credentials")
        .iter()
        .filter_map(|c| c["password"].as_str())
        .collect();
    assert_eq!(hashes.len(), 16, "{running}");
    assert!(hashes.iter().all(|h| h.starts_with("$2")), "{hashes:?}");
}

/// Runs every curl of `flood` (its arguments) at once and, once the
/// gateway (admin API at `admin`) has started the CPU-heavy work of each
/// (its `bronze_gateway_cpu_work_started_total`: a password check, a
/// compile), two GETs of `open`, one after the other: which finished in
/// what order (the flood's index, or "open") and their status codes in
/// that order. A second GET sent only once the first is answered tells
/// "answered while the flood was still being worked on" from "answered
/// when the thread came free, just before the flood's answers".
pub(super) async fn flood_then_open(
    flood: Vec<Vec<String>>,
    open: String,
    admin: SocketAddr,
) -> (Vec<String>, Vec<String>) {
    let work = u64::try_from(flood.len()).expect("a few");
    tokio::task::spawn_blocking(move || {
        let done = std::sync::Mutex::new(Vec::new());
        let curl = |name: String, args: Vec<String>| {
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(&args)
                .output()
                .expect("curl runs");
            let code = String::from_utf8_lossy(&out.stdout).to_string();
            done.lock().expect("lock").push((name, code));
        };
        std::thread::scope(|scope| {
            for (i, args) in flood.into_iter().enumerate() {
                let curl = &curl;
                scope.spawn(move || curl(i.to_string(), args));
            }
            // The flood is in the gateway's hands.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while cpu_work_started(admin) < work {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the gateway never started the flood's work"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            curl("open".into(), vec![open.clone()]);
            curl("open".into(), vec![open]);
        });
        done.into_inner().expect("lock").into_iter().unzip()
    })
    .await
    .expect("join")
}

/// The gateway's `bronze_gateway_cpu_work_started_total`, from its admin
/// API's `/metrics` (0 when unreadable).
fn cpu_work_started(admin: SocketAddr) -> u64 {
    let out = Command::new("curl")
        .args(["-s", &format!("http://{admin}/metrics")])
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("bronze_gateway_cpu_work_started_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash(password, 4).expect("bcrypt")
}

/// An RSA key pair from openssl: (private PEM, public PEM, JWK n).
fn rsa_key(dir: &std::path::Path) -> (String, String, String) {
    let key = dir.join("key.pem");
    let ok = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .expect("openssl");
    assert!(ok.status.success());
    let public = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .output()
        .expect("openssl");
    let modulus = Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&key)
        .output()
        .expect("openssl");
    let hex = String::from_utf8_lossy(&modulus.stdout)
        .trim()
        .trim_start_matches("Modulus=")
        .to_string();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    use base64::Engine;
    (
        std::fs::read_to_string(&key).expect("key"),
        String::from_utf8_lossy(&public.stdout).to_string(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
    )
}

/// How a test signs a token: by the openssl CLI (an implementation other
/// than the gateway's), with an HMAC secret or an RSA private key (PEM).
enum Signer {
    Hmac(Vec<u8>),
    Rsa(String),
}

/// A compact JWS of `claims` (`alg`: HS256, HS384, HS512 or RS256), with
/// `kid` in its header if given.
fn token(alg: &str, kid: Option<&str>, claims: serde_json::Value, key: &Signer) -> String {
    use base64::Engine;
    use std::io::Write;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let mut header = serde_json::json!({"alg": alg, "typ": "JWT"});
    if let Some(k) = kid {
        header["kid"] = k.into();
    }
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let digest = format!("-sha{}", &alg[2..]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut openssl = Command::new("openssl");
    openssl.args(["dgst", &digest, "-binary"]);
    match key {
        Signer::Hmac(secret) => {
            let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            openssl.args(["-mac", "HMAC", "-macopt", &format!("hexkey:{hex}")]);
        }
        Signer::Rsa(pem) => {
            let path = dir.path().join("key.pem");
            std::fs::write(&path, pem).expect("key");
            openssl.arg("-sign").arg(path);
        }
    }
    let mut child = openssl
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(signed.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("openssl signs");
    assert!(out.status.success(), "openssl dgst {digest}");
    format!("{signed}.{}", b64(&out.stdout))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A server answering GET with `body` (a JWKS URL).
async fn serve(body: String) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move { ([("content-type", "application/json")], body) }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serves") });
    addr
}

#[tokio::test]
async fn jwt_as_kong_and_jwks_keys() {
    let backend = echo("a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (private, public, n) = rsa_key(dir.path());
    let jwks = serde_json::json!({"keys": [
        {"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig", "n": n, "e": "AQAB"}]})
    .to_string();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, &jwks).expect("write");
    let jwks_url = serve(jwks.clone()).await;
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "consumers": [
            {"username": "erin", "jwt_secrets": [
                {"key": "erin-iss", "algorithm": "HS256", "secret": "erin-secret"},
                {"key": "erin-rsa", "algorithm": "RS256", "rsa_public_key": public}]},
            {"username": "frank"}],
        "jwt_secrets": [{"key": "frank-iss", "algorithm": "HS512", "secret": "frank-secret", "consumer": "frank"}],
        "services": [{"name": "svc", "url": format!("http://{backend}"), "routes": [
            {"name": "jwt", "paths": ["/jwt"], "plugins": [
                {"name": "jwt", "config": {"claims_to_verify": ["exp", "nbf"], "maximum_expiration": 7200,
                                           "cookie_names": ["session"]}}]},
            {"name": "jwks-file", "paths": ["/jwks-file"], "plugins": [
                {"name": "jwt", "config": {"bronze_jwks_path": jwks_file.display().to_string()}}]},
            {"name": "jwks-url", "paths": ["/jwks-url"], "plugins": [
                {"name": "jwt", "config": {"bronze_jwks_url": format!("http://{jwks_url}/jwks.json")}}]}
        ]}]
    }))
    .await;
    let base = format!("http://{}", gw.addr);
    let hs = |secret: &str| Signer::Hmac(secret.as_bytes().to_vec());
    let rs = Signer::Rsa(private.clone());
    let t = now();
    let bearer = |t: &str| format!("Authorization: Bearer {t}");

    let good = token(
        "HS256",
        None,
        serde_json::json!({"iss": "erin-iss", "exp": t + 600, "nbf": t - 10}),
        &hs("erin-secret"),
    );
    let (code, _, body) = curl_h(s(&["-H", &bearer(&good), &format!("{base}/jwt")])).await;
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["headers"]["x-consumer-username"], "erin");
    assert_eq!(v["headers"]["x-credential-identifier"], "erin-iss");
    // From the query string and from a cookie.
    let (code, _, _) = curl_h(s(&[&format!("{base}/jwt?jwt={good}")])).await;
    assert_eq!(code, 200);
    let (code, _, _) = curl_h(s(&[
        "-b",
        &format!("session={good}"),
        &format!("{base}/jwt"),
    ]))
    .await;
    assert_eq!(code, 200);
    // HS512 for a secret listed at top level; RS256 with a PEM key.
    let frank = token(
        "HS512",
        None,
        serde_json::json!({"iss": "frank-iss", "exp": t + 600, "nbf": t}),
        &hs("frank-secret"),
    );
    let (code, _, body) = curl_h(s(&["-H", &bearer(&frank), &format!("{base}/jwt")])).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["headers"]["x-consumer-username"], "frank");
    let rsa = token(
        "RS256",
        None,
        serde_json::json!({"iss": "erin-rsa", "exp": t + 600, "nbf": t}),
        &rs,
    );
    let (code, _, body) = curl_h(s(&["-H", &bearer(&rsa), &format!("{base}/jwt")])).await;
    assert_eq!(code, 200, "{body}");

    // Kong's refusals.
    let refused = [
        (None, r#"{"message":"Unauthorized"}"#),
        (
            Some(token(
                "HS256",
                None,
                serde_json::json!({"iss": "erin-iss", "exp": t + 600, "nbf": t}),
                &hs("not-the-secret"),
            )),
            r#"{"message":"Invalid signature"}"#,
        ),
        (
            Some(token(
                "HS256",
                None,
                serde_json::json!({"iss": "erin-iss", "exp": t - 5, "nbf": t - 100}),
                &hs("erin-secret"),
            )),
            r#"{"exp":"token expired"}"#,
        ),
        (
            Some(token(
                "HS256",
                None,
                serde_json::json!({"iss": "erin-iss", "exp": t + 600, "nbf": t + 300}),
                &hs("erin-secret"),
            )),
            r#"{"nbf":"token not valid yet"}"#,
        ),
        (
            Some(token(
                "HS256",
                None,
                serde_json::json!({"iss": "erin-iss", "exp": t + 86_400, "nbf": t}),
                &hs("erin-secret"),
            )),
            r#"{"exp":"exceeds maximum allowed expiration"}"#,
        ),
        (
            Some(token(
                "HS256",
                None,
                serde_json::json!({"iss": "stranger", "exp": t + 600}),
                &hs("x"),
            )),
            r#"{"message":"No credentials found for given 'iss'"}"#,
        ),
        (
            Some(token(
                "HS256",
                None,
                serde_json::json!({"sub": "x", "exp": t + 600}),
                &hs("x"),
            )),
            r#"{"message":"No mandatory 'iss' in claims"}"#,
        ),
        // Erin's RSA key, signed as HS256: the algorithm must match.
        (
            Some(token(
                "HS256",
                None,
                serde_json::json!({"iss": "erin-rsa", "exp": t + 600, "nbf": t}),
                &hs("x"),
            )),
            r#"{"message":"Invalid algorithm"}"#,
        ),
        (
            Some("not.a.token".to_string()),
            r#"{"message":"Bad token; invalid JSON"}"#,
        ),
    ];
    for (tok, want) in refused {
        let mut args = vec![];
        if let Some(tok) = &tok {
            args.extend(["-H".to_string(), bearer(tok)]);
        }
        args.push(format!("{base}/jwt"));
        let (code, h, body) = curl_h(args).await;
        assert_eq!((code, body.as_str()), (401, want), "{tok:?}");
        assert_eq!(h["www-authenticate"], r#"Bearer realm="kong""#);
    }
    let (code, _, body) = curl_h(s(&[
        "-H",
        &bearer(&good),
        &format!("{base}/jwt?jwt={frank}"),
    ]))
    .await;
    assert_eq!(
        (code, body.as_str()),
        (401, r#"{"message":"Multiple tokens provided"}"#)
    );

    // Bronze extension: JWKS from a file and from a URL; the token's kid
    // picks the key; a known iss still names the consumer.
    let by_kid = token(
        "RS256",
        Some("k1"),
        serde_json::json!({"iss": "erin-rsa", "sub": "someone"}),
        &rs,
    );
    let (code, _, body) = curl_h(s(&["-H", &bearer(&by_kid), &format!("{base}/jwks-file")])).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["headers"]["x-consumer-username"], "erin");
    let anonymous_iss = token(
        "RS256",
        Some("k1"),
        serde_json::json!({"iss": "https://idp.example.com"}),
        &rs,
    );
    let mut ok = false;
    for _ in 0..100 {
        let (code, _, body) = curl_h(s(&[
            "-H",
            &bearer(&anonymous_iss),
            &format!("{base}/jwks-url"),
        ]))
        .await;
        if code == 200 {
            let v = json(&body);
            assert_eq!(v["headers"]["x-credential-identifier"], "k1");
            assert!(v["headers"].get("x-consumer-username").is_none());
            ok = true;
            break;
        }
        // Until the background fetch lands.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok, "the JWKS URL was never used");
    let other_kid = token(
        "RS256",
        Some("k2"),
        serde_json::json!({"iss": "https://idp.example.com"}),
        &rs,
    );
    let (code, _, body) = curl_h(s(&[
        "-H",
        &bearer(&other_kid),
        &format!("{base}/jwks-file"),
    ]))
    .await;
    assert_eq!(
        (code, body.as_str()),
        (401, r#"{"message":"No credentials found for given 'iss'"}"#)
    );
    let forged = token(
        "HS256",
        Some("k1"),
        serde_json::json!({"iss": "x"}),
        &hs("guess"),
    );
    let (code, _, body) = curl_h(s(&["-H", &bearer(&forged), &format!("{base}/jwks-file")])).await;
    assert_eq!(
        (code, body.as_str()),
        (401, r#"{"message":"Invalid algorithm"}"#)
    );

    // A JWKS file that is not one is refused by name.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{}").expect("write");
    let (code, v) = post_config(
        &gw,
        &serde_json::json!({"_format_version": "3.0", "plugins": [
        {"name": "jwt", "config": {"bronze_jwks_path": bad.display().to_string()}}]}),
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        v["fields"]
            .get("plugins[0].config.bronze_jwks_path")
            .is_some(),
        "{v}"
    );
}

#[tokio::test]
async fn ip_restriction_and_request_termination() {
    let backend = echo("a").await;
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "services": [{"name": "svc", "url": format!("http://{backend}"), "routes": [
            {"name": "allow-other", "paths": ["/allow-other"], "plugins": [
                {"name": "ip-restriction", "config": {"allow": ["10.0.0.0/8", "2001:db8::/32"]}}]},
            {"name": "allow-local", "paths": ["/allow-local"], "plugins": [
                {"name": "ip-restriction", "config": {"allow": ["127.0.0.0/8"]}}]},
            {"name": "deny-local", "paths": ["/deny-local"], "plugins": [
                {"name": "ip-restriction", "config": {"allow": ["0.0.0.0/0"], "deny": ["127.0.0.1"],
                                                       "status": 401, "message": "go away"}}]},
            {"name": "maintenance", "paths": ["/maintenance"], "plugins": [
                {"name": "request-termination", "config": {"status_code": 503, "message": "back soon"}}]},
            {"name": "teapot", "paths": ["/teapot"], "plugins": [
                {"name": "request-termination", "config": {"status_code": 418, "content_type": "text/plain",
                                                            "body": "short and stout"}}]},
            {"name": "default-termination", "paths": ["/gone"], "plugins": [{"name": "request-termination"}]}
        ]}]
    }))
    .await;
    let base = format!("http://{}", gw.addr);
    let (code, _, body) = curl_h(s(&[&format!("{base}/allow-other")])).await;
    assert_eq!(
        (code, body.as_str()),
        (403, r#"{"message":"IP address not allowed"}"#)
    );
    let (code, _, body) = curl_h(s(&[&format!("{base}/allow-local")])).await;
    assert_eq!(code, 200, "{body}");
    let (code, _, body) = curl_h(s(&[&format!("{base}/deny-local")])).await;
    assert_eq!((code, body.as_str()), (401, r#"{"message":"go away"}"#));

    let (code, _, body) = curl_h(s(&[&format!("{base}/maintenance")])).await;
    assert_eq!((code, body.as_str()), (503, r#"{"message":"back soon"}"#));
    let (code, h, body) = curl_h(s(&[&format!("{base}/teapot")])).await;
    assert_eq!((code, body.as_str()), (418, "short and stout"));
    assert_eq!(h["content-type"], "text/plain");
    let (code, _, body) = curl_h(s(&[&format!("{base}/gone")])).await;
    assert_eq!(
        (code, body.as_str()),
        (503, r#"{"message":"Service unavailable"}"#)
    );

    let (code, v) = post_config(
        &gw,
        &serde_json::json!({"_format_version": "3.0", "plugins": [
        {"name": "ip-restriction", "config": {"deny": ["10.0.0.0/40"]}}]}),
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        v["fields"].get("plugins[0].config.deny[0]").is_some(),
        "{v}"
    );
}

#[tokio::test]
async fn request_size_limiting_stops_large_and_growing_bodies() {
    let backend = echo("a").await;
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "services": [{"name": "svc", "url": format!("http://{backend}"), "routes": [
            {"name": "small", "paths": ["/small"], "plugins": [
                {"name": "request-size-limiting", "config": {"allowed_payload_size": 1, "size_unit": "megabytes"}}]},
            {"name": "strict", "paths": ["/strict"], "plugins": [
                {"name": "request-size-limiting", "config": {"allowed_payload_size": 10, "size_unit": "kilobytes",
                                                              "require_content_length": true}}]}
        ]}]
    }))
    .await;
    let base = format!("http://{}", gw.addr);
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 3 << 20]).expect("write");
    let fits = dir.path().join("fits");
    std::fs::write(&fits, vec![b'y'; 512 << 10]).expect("write");
    let at = |f: &std::path::Path| format!("@{}", f.display());

    // With Content-Length: refused before anything goes upstream.
    let (code, _, body) = curl_h(s(&["--data-binary", &at(&big), &format!("{base}/small")])).await;
    assert_eq!(
        (code, body.as_str()),
        (413, r#"{"message":"Request size limit exceeded"}"#)
    );
    let (code, _, body) = curl_h(s(&["--data-binary", &at(&fits), &format!("{base}/small")])).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["body_len"], 512 << 10);
    // Chunked: streamed, and cut off once past the limit.
    let chunked = "Transfer-Encoding: chunked";
    let (code, _, body) = curl_h(s(&[
        "-H",
        chunked,
        "--data-binary",
        &at(&big),
        &format!("{base}/small"),
    ]))
    .await;
    assert_eq!(
        (code, body.as_str()),
        (413, r#"{"message":"Request size limit exceeded"}"#)
    );
    let (code, _, body) = curl_h(s(&[
        "-H",
        chunked,
        "--data-binary",
        &at(&fits),
        &format!("{base}/small"),
    ]))
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["body_len"], 512 << 10);
    // require_content_length.
    let (code, _, body) = curl_h(s(&[
        "-H",
        chunked,
        "--data-binary",
        "abc",
        &format!("{base}/strict"),
    ]))
    .await;
    assert_eq!(
        (code, body.as_str()),
        (
            411,
            r#"{"message":"A valid Content-Length header is required"}"#
        )
    );
    let (code, _, _) = curl_h(s(&["--data-binary", "abc", &format!("{base}/strict")])).await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn cors_preflight_and_response_headers() {
    let backend = echo("a").await;
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "services": [{"name": "svc", "url": format!("http://{backend}"), "routes": [
            {"name": "cors", "paths": ["/cors"], "plugins": [
                {"name": "cors", "config": {
                    "origins": ["https://app.example.com", "https://.*\\.example\\.org"],
                    "methods": ["GET", "POST"], "headers": ["x-token"], "exposed_headers": ["x-total"],
                    "credentials": true, "max_age": 600}}]},
            {"name": "continue", "paths": ["/continue"], "plugins": [
                {"name": "cors", "config": {"preflight_continue": true}}]}
        ]}]
    }))
    .await;
    let base = format!("http://{}", gw.addr);
    let preflight = |origin: &str, path: &str| {
        s(&[
            "-X",
            "OPTIONS",
            "-H",
            &format!("Origin: {origin}"),
            "-H",
            "Access-Control-Request-Method: POST",
            &format!("{base}{path}"),
        ])
    };
    let (code, h, body) = curl_h(preflight("https://app.example.com", "/cors")).await;
    assert_eq!(code, 200);
    assert_eq!(body, "", "answered by the gateway");
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-methods"], "GET,POST");
    assert_eq!(h["access-control-allow-headers"], "x-token");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "600");
    // A regex origin.
    let (_, h, _) = curl_h(preflight("https://shop.example.org", "/cors")).await;
    assert_eq!(h["access-control-allow-origin"], "https://shop.example.org");
    // An origin not listed gets no grant.
    let (_, h, _) = curl_h(preflight("https://evil.example.net", "/cors")).await;
    assert!(!h.contains_key("access-control-allow-origin"), "{h:?}");
    // A simple request: proxied, with the grant and exposed headers.
    let (code, h, body) = curl_h(s(&[
        "-H",
        "Origin: https://app.example.com",
        &format!("{base}/cors"),
    ]))
    .await;
    assert_eq!(code, 200);
    assert_eq!(json(&body)["method"], "GET");
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-expose-headers"], "x-total");
    assert_eq!(h["vary"], "Origin");
    // preflight_continue: the upstream answers the OPTIONS itself.
    let (code, h, body) = curl_h(preflight("https://any.example", "/continue")).await;
    assert_eq!(code, 200);
    assert_eq!(json(&body)["method"], "OPTIONS");
    assert_eq!(h["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn transformers_edit_headers_and_query_strings() {
    let backend = echo("a").await;
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "services": [{"name": "svc", "url": format!("http://{backend}"), "routes": [
            {"name": "t", "paths": ["/t"], "plugins": [
                {"name": "request-transformer", "config": {
                    "remove": {"headers": ["x-drop"], "querystring": ["secret"]},
                    "rename": {"headers": ["x-old:x-new"], "querystring": ["q:query"]},
                    "replace": {"headers": ["x-replace:replaced", "x-absent:never"]},
                    "add": {"headers": ["x-added:yes", "x-keep:not-used"], "querystring": ["added:1"]},
                    "append": {"headers": ["x-multi:two"], "querystring": ["tag:b"]}}},
                {"name": "response-transformer", "config": {
                    "remove": {"headers": ["content-type"]},
                    "add": {"headers": ["x-served-by:bronze"]},
                    "append": {"headers": ["x-list:a", "x-list:b"]}}}]}
        ]}]
    }))
    .await;
    let (code, h, body) = curl_h(s(&[
        "-H",
        "x-drop: 1",
        "-H",
        "x-old: moved",
        "-H",
        "x-replace: before",
        "-H",
        "x-keep: mine",
        "-H",
        "x-multi: one",
        &format!("http://{}/t?secret=s&q=find&tag=a", gw.addr),
    ]))
    .await;
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    let hv = |n: &str| {
        v["headers"]
            .get(n)
            .and_then(|x| x.as_str())
            .map(str::to_string)
    };
    assert_eq!(hv("x-drop"), None);
    assert_eq!(hv("x-old"), None);
    assert_eq!(hv("x-new").as_deref(), Some("moved"));
    assert_eq!(hv("x-replace").as_deref(), Some("replaced"));
    assert_eq!(hv("x-absent"), None);
    assert_eq!(hv("x-added").as_deref(), Some("yes"));
    assert_eq!(hv("x-keep").as_deref(), Some("mine"));
    assert_eq!(v["uri"], "/?query=find&tag=a&added=1&tag=b");
    // The echo backend sees two x-multi values (its map keeps one); the
    // response side is checked on the client.
    assert!(!h.contains_key("content-type"), "{h:?}");
    assert_eq!(h["x-served-by"], "bronze");
    assert_eq!(h["x-list"], "a, b");

    let (code, v) = post_config(
        &gw,
        &serde_json::json!({"_format_version": "3.0", "plugins": [
        {"name": "request-transformer", "config": {"add": {"body": ["a:b"]}}}]}),
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        v["fields"]["plugins[0].config.add.body"]
            .as_str()
            .is_some_and(|m| m.contains("not implemented")),
        "{v}"
    );
}

#[tokio::test]
async fn acl_lets_groups_through_as_kong_does() {
    let backend = echo("a").await;
    let key_and_acl = |acl: serde_json::Value| serde_json::json!([{"name": "key-auth"}, {"name": "acl", "config": acl}]);
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "consumers": [
            {"username": "alice", "keyauth_credentials": [{"key": "alice-key"}],
             "acls": [{"group": "staff"}, {"group": "admins"}]},
            {"username": "bob", "keyauth_credentials": [{"key": "bob-key"}]},
            {"username": "carol", "keyauth_credentials": [{"key": "carol-key"}]}],
        "acls": [{"consumer": "bob", "group": "guests"}],
        "services": [{"name": "svc", "url": format!("http://{backend}"), "routes": [
            {"name": "admin", "paths": ["/admin"], "plugins": key_and_acl(serde_json::json!({"allow": ["admins"]}))},
            {"name": "public", "paths": ["/public"], "plugins": key_and_acl(serde_json::json!({"deny": ["guests"]}))},
            {"name": "quiet", "paths": ["/quiet"],
             "plugins": key_and_acl(serde_json::json!({"allow": ["admins"], "hide_groups_header": true}))},
            {"name": "noauth", "paths": ["/noauth"], "plugins": [{"name": "acl", "config": {"allow": ["admins"]}}]}
        ]}]
    }))
    .await;
    let base = format!("http://{}", gw.addr);
    let get = |key: &str, path: &str| {
        let args = s(&[
            "-H",
            &format!("apikey: {key}"),
            "-H",
            "X-Consumer-Groups: forged",
            &format!("{base}{path}"),
        ]);
        async move { curl_h(args).await }
    };
    let forbidden = r#"{"message":"You cannot consume this service"}"#;
    // allow: only a member of a listed group.
    let (code, _, body) = get("alice-key", "/admin").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["headers"]["x-consumer-groups"], "admins, staff");
    for key in ["bob-key", "carol-key"] {
        let (code, _, body) = get(key, "/admin").await;
        assert_eq!((code, body.as_str()), (403, forbidden), "{key}");
    }
    // deny: anyone not in a listed group, even in none; the client's own
    // X-Consumer-Groups never goes upstream.
    let (code, _, body) = get("bob-key", "/public").await;
    assert_eq!((code, body.as_str()), (403, forbidden));
    let (code, _, body) = get("carol-key", "/public").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        json(&body)["headers"].get("x-consumer-groups").is_none(),
        "{body}"
    );
    let (code, _, body) = get("alice-key", "/quiet").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        json(&body)["headers"].get("x-consumer-groups").is_none(),
        "{body}"
    );
    // No authenticated consumer: refused.
    let (code, _, body) = get("alice-key", "/noauth").await;
    assert_eq!((code, body.as_str()), (403, forbidden));
    // A group given through the Admin API (Kong's path and form body).
    let add_carol_to_admins = || {
        curl_h(s(&[
            "-X",
            "POST",
            "-d",
            "group=admins",
            &format!("http://{}/consumers/carol/acls", gw.admin),
        ]))
    };
    let (code, _, body) = add_carol_to_admins().await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(json(&body)["group"], "admins");
    let (code, _, body) = get("carol-key", "/admin").await;
    assert_eq!(code, 200, "{body}");
    // The same group twice for one consumer, and bad plugin settings.
    let (code, _, body) = add_carol_to_admins().await;
    assert_eq!(code, 409, "{body}");
    refused(
        &gw,
        "acl",
        &[
            (serde_json::json!({"allow": ["a"], "deny": ["b"]}), "deny"),
            (serde_json::json!({}), "allow"),
            (
                serde_json::json!({"allow": ["a"], "include_consumer_groups": true}),
                "include_consumer_groups",
            ),
        ],
    )
    .await;
}

/// Each `(config, field)`: a global `plugin` with that config is refused
/// by `POST /config` with a 400 naming `plugins[0].config.<field>`.
async fn refused(gw: &Gw, plugin: &str, cases: &[(serde_json::Value, &str)]) {
    for (config, field) in cases {
        let (code, v) = post_config(
            gw,
            &serde_json::json!({"_format_version": "3.0",
            "plugins": [{"name": plugin, "config": config}]}),
        )
        .await;
        assert_eq!(code, 400, "{v}");
        assert!(
            v["fields"]
                .get(format!("plugins[0].config.{field}"))
                .is_some(),
            "{plugin} {field}: {v}"
        );
    }
}

#[tokio::test]
async fn http_log_sends_what_it_holds_when_the_gateway_stops() {
    let (sink, got) = collector(0).await;
    let backend = echo("a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kong.json");
    // Batches of 100, a minute apart: nothing would go before the stop.
    let doc = serde_json::json!({"_format_version": "3.0",
        "plugins": [{"name": "http-log", "config": {"http_endpoint": format!("http://{sink}/"),
            "queue": {"max_batch_size": 100, "max_coalescing_delay": 60}}}],
        "services": [{"name": "svc", "url": format!("http://{backend}"), "routes": [
            {"name": "r", "paths": ["/r"]}]}]});
    std::fs::write(&path, doc.to_string()).expect("write");
    let mut config = bronze_gateway::Config::ephemeral();
    config.declarative_config = path.display().to_string();
    let gw = super::admin::start(config).await;
    for _ in 0..2 {
        let (code, _, _) = curl_h(s(&[&format!("http://{}/r", gw.addr)])).await;
        assert_eq!(code, 200);
    }
    assert!(got.lock().is_empty(), "sent before the stop");
    gw.stop().await;
    let batches = got.lock().clone();
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!(
        batches[0].1.as_array().map(Vec::len),
        Some(2),
        "{batches:?}"
    );
}

/// A gateway with the global plugin `logger` and the route `/logged`
/// behind key-auth, after three requests: alice's to `/logged/x?y=1` (with
/// an `Authorization` header, which logs must not show), one without a
/// key, one no route matches.
async fn logged_requests(logger: serde_json::Value) -> Gw {
    let backend = echo("a").await;
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "consumers": consumers(),
        "plugins": [logger],
        "services": [{"name": "svc", "url": format!("http://{backend}/base"), "routes": [
            {"name": "logged", "paths": ["/logged"], "plugins": [{"name": "key-auth"}]}]}]
    }))
    .await;
    let base = format!("http://{}", gw.addr);
    curl_h(s(&[
        "-H",
        "apikey: alice-key",
        "-H",
        "Authorization: Bearer secret",
        &format!("{base}/logged/x?y=1"),
    ]))
    .await;
    curl_h(s(&[&format!("{base}/logged")])).await;
    curl_h(s(&[&format!("{base}/nowhere")])).await;
    gw
}

/// A log collector: every request's body, parsed as JSON, and its
/// content type. It answers 503 to the first `fail_first` requests.
async fn collector(
    fail_first: usize,
) -> (
    SocketAddr,
    std::sync::Arc<parking_lot::Mutex<Vec<(String, serde_json::Value)>>>,
) {
    let got = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let store = got.clone();
    let app = axum::Router::new().fallback(
        move |headers: http::HeaderMap, body: axum::body::Bytes| async move {
            if seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < fail_first {
                return http::StatusCode::SERVICE_UNAVAILABLE;
            }
            let ct = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            store
                .lock()
                .push((ct, json(&String::from_utf8_lossy(&body))));
            http::StatusCode::OK
        },
    );
    tokio::spawn(async move { axum::serve(listener, app).await.expect("collector serves") });
    (addr, got)
}

#[tokio::test]
async fn http_log_sends_kong_entries_in_batches_and_retries() {
    // The collector refuses its first batch: http-log sends it again.
    let (sink, got) = collector(1).await;
    let gw = logged_requests(serde_json::json!({"name": "http-log", "config": {
        "http_endpoint": format!("http://{sink}/logs"),
        "headers": {"x-token": "t0ken"},
        "queue": {"max_batch_size": 2, "max_coalescing_delay": 5, "initial_retry_delay": 0.05}}}))
    .await;
    let base = format!("http://{}", gw.addr);
    curl_h(s(&["-H", "apikey: alice-key", &format!("{base}/logged/z")])).await;
    let mut batches = Vec::new();
    for _ in 0..250 {
        batches = got.lock().clone();
        if batches.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(batches.len(), 2, "{batches:?}");
    let entries: Vec<&serde_json::Value> = batches
        .iter()
        .flat_map(|(ct, b)| {
            assert_eq!(ct, "application/json");
            b.as_array().expect("a batch of two is an array").iter()
        })
        .collect();
    assert_eq!(entries.len(), 4, "{batches:?}");
    let statuses: Vec<&serde_json::Value> =
        entries.iter().map(|e| &e["response"]["status"]).collect();
    assert_eq!(statuses, [200, 401, 404, 200], "{batches:?}");
    let ok = entries[0];
    assert_eq!(ok["request"]["uri"], "/logged/x?y=1");
    assert_eq!(ok["request"]["headers"]["authorization"], "REDACTED");
    assert_eq!(ok["upstream_uri"], "/base/x?y=1");
    assert_eq!(ok["route"]["name"], "logged");
    assert_eq!(ok["consumer"]["username"], "alice");
    assert_eq!(ok["client_ip"], "127.0.0.1");
    assert_eq!(entries[2]["source"], "kong");

    // One at a time (Kong's default batch of one): the entry itself.
    let (sink, got) = collector(0).await;
    let (code, v) = post_config(
        &gw,
        &serde_json::json!({"_format_version": "3.0",
        "plugins": [{"name": "http-log", "config": {"http_endpoint": format!("http://{sink}/")}}]}),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    curl_h(s(&[&format!("{base}/nowhere/else")])).await;
    for _ in 0..250 {
        if !got.lock().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let one = got
        .lock()
        .first()
        .map(|(_, b)| b.clone())
        .expect("an entry");
    assert_eq!(one["request"]["uri"], "/nowhere/else", "{one}");

    refused(&gw, "http-log", &[
        (serde_json::json!({}), "http_endpoint"),
        (
            serde_json::json!({"http_endpoint": "ftp://x/"}),
            "http_endpoint",
        ),
        (
            serde_json::json!({"http_endpoint": "http://x/", "method": "GET"}),
            "method",
        ),
        (
            serde_json::json!({"http_endpoint": "http://x/", "queue": {"max_batch_size": 0}}),
            "queue.max_batch_size",
        ),
        (
            serde_json::json!({"http_endpoint": "http://x/", "queue": {"max_coalescing_delay": -1}}),
            "queue.max_coalescing_delay",
        ),
    ])
    .await;
}

#[tokio::test]
async fn file_log_writes_kong_json_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let gw = logged_requests(
        serde_json::json!({"name": "file-log", "config": {"path": log.display().to_string()}}),
    )
    .await;
    let mut lines = Vec::new();
    for _ in 0..100 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        lines = text.lines().map(json).collect::<Vec<_>>();
        if lines.len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 3, "{lines:?}");
    let ok = &lines[0];
    assert_eq!(ok["request"]["method"], "GET");
    assert_eq!(ok["request"]["uri"], "/logged/x?y=1");
    assert_eq!(ok["request"]["querystring"]["y"], "1");
    assert_eq!(ok["request"]["headers"]["authorization"], "REDACTED");
    assert_eq!(ok["upstream_uri"], "/base/x?y=1");
    assert_eq!(ok["response"]["status"], 200);
    // The answer's headers as the client got them, its length among them.
    let sent = &ok["response"]["headers"];
    assert!(sent["content-type"].is_string(), "{ok}");
    assert_eq!(
        ok["response"]["size"].as_u64().map(|n| n.to_string()),
        sent["content-length"].as_str().map(str::to_string),
        "{ok}"
    );
    assert!(
        ok["response"]["size"].as_u64().is_some_and(|n| n > 0),
        "{ok}"
    );
    assert_eq!(ok["route"]["name"], "logged");
    assert_eq!(ok["service"]["name"], "svc");
    assert_eq!(ok["consumer"]["username"], "alice");
    assert_eq!(ok["client_ip"], "127.0.0.1");
    assert_eq!(ok["source"], "service");
    assert!(
        ok["latencies"]["request"].is_u64() && ok["started_at"].is_u64(),
        "{ok}"
    );
    // Refused by key-auth: logged too, answered by the gateway.
    assert_eq!(lines[1]["response"]["status"], 401);
    assert_eq!(lines[1]["source"], "exit");
    assert_eq!(lines[2]["source"], "kong");
    assert!(lines[1].get("consumer").is_none());
    // No route: the global instance logs it.
    assert_eq!(lines[2]["response"]["status"], 404);
    assert_eq!(lines[2]["request"]["uri"], "/nowhere");

    let elsewhere = dir.path().join("missing-dir").join("x.log");
    let (code, v) = post_config(
        &gw,
        &serde_json::json!({"_format_version": "3.0", "plugins": [
            {"name": "file-log", "config": {"path": elsewhere.display().to_string()}}]}),
    )
    .await;
    assert_eq!(code, 400);
    assert!(v["fields"].get("plugins[0].config.path").is_some(), "{v}");
    assert!(!elsewhere.exists());
}

/// Kong's correlation-id: an id per request in the upstream request
/// (the client's own kept), echoed to the client when asked, on the
/// HTTP/1.1 path and over h2c; and it runs before the auth plugins, so a
/// refused request carries its id too.
#[tokio::test]
async fn correlation_id_tags_requests_as_kong_does() {
    let backend = echo("a").await;
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "consumers": [{"username": "u", "keyauth_credentials": [{"key": "k"}]}],
        "services": [{"name": "svc", "url": format!("http://{backend}"), "routes": [
            {"name": "counted", "paths": ["/counted"], "plugins": [
                {"name": "correlation-id", "config": {"echo_downstream": true}}]},
            {"name": "uuid", "paths": ["/uuid"], "plugins": [
                {"name": "correlation-id", "config": {"header_name": "X-Trace", "generator": "uuid"}}]},
            {"name": "tracker", "paths": ["/tracker"], "plugins": [
                {"name": "correlation-id", "config": {"generator": "tracker", "echo_downstream": true}},
                {"name": "key-auth"}]}]}]
    }))
    .await;
    let url = |p: &str| format!("http://{}{p}", gw.addr);
    let mut seen = Vec::new();
    for h2 in [false, true] {
        for _ in 0..2 {
            let mut args = s(&[&url("/counted")]);
            if h2 {
                args.insert(0, "--http2-prior-knowledge".into());
            }
            let (code, h, body) = curl_h(args).await;
            assert_eq!(code, 200, "{body}");
            let sent = json(&body)["headers"]["kong-request-id"]
                .as_str()
                .map(str::to_string)
                .expect("the upstream got an id");
            assert_eq!(h.get("kong-request-id"), Some(&sent), "echoed: {h:?}");
            seen.push(sent);
        }
    }
    // uuid#counter: one UUID, then #1, #2, ...
    let (prefix, _) = seen[0].split_once('#').expect("uuid#counter");
    assert!(uuid::Uuid::parse_str(prefix).is_ok(), "{seen:?}");
    let counters: Vec<u64> = seen
        .iter()
        .map(|id| {
            let (p, n) = id.split_once('#').expect("uuid#counter");
            assert_eq!(p, prefix);
            n.parse().expect("a counter")
        })
        .collect();
    assert_eq!(counters, [1, 2, 3, 4]);

    // The client's own id goes through unchanged.
    let (_, h, body) = curl_h(s(&["-H", "Kong-Request-ID: mine-1", &url("/counted")])).await;
    assert_eq!(json(&body)["headers"]["kong-request-id"], "mine-1");
    assert_eq!(h["kong-request-id"], "mine-1");

    // uuid, another header, not echoed.
    let (_, h, body) = curl_h(s(&[&url("/uuid")])).await;
    let id = json(&body)["headers"]["x-trace"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_default();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{body}");
    assert!(!h.contains_key("x-trace"), "{h:?}");

    // tracker; and before key-auth: the 401 has its id.
    let (code, h, _) = curl_h(s(&[&url("/tracker")])).await;
    assert_eq!(code, 401);
    let id = h.get("kong-request-id").cloned().unwrap_or_default();
    assert!(id.starts_with("127.0.0.1-"), "{h:?}");
    assert_eq!(id.split('-').count(), 5, "{id}");

    refused(
        &gw,
        "correlation-id",
        &[
            (serde_json::json!({"generator": "snowflake"}), "generator"),
            (serde_json::json!({"header_name": "a b"}), "header_name"),
            (serde_json::json!({"echo": true}), "echo"),
        ],
    )
    .await;
}

/// What a TCP log collector got: its lines, and how many connections
/// brought them.
pub(super) struct Lines {
    pub lines: std::sync::Arc<parking_lot::Mutex<Vec<String>>>,
    pub connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Lines {
    /// Waits (up to 5 s) for `n` lines.
    pub async fn wait_for(&self, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..250 {
            if self.lines.lock().len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.lines.lock().iter().map(|l| json(l)).collect()
    }
}

/// A TCP log input (as Logstash's or Vector's): newline-separated lines
/// on every connection accepted, through `tls` when given.
pub(super) async fn line_collector(tls: Option<tokio_rustls::TlsAcceptor>) -> (SocketAddr, Lines) {
    use tokio::io::AsyncBufReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let got = Lines {
        lines: Default::default(),
        connections: Default::default(),
    };
    let (lines, connections) = (got.lines.clone(), got.connections.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (lines, tls) = (lines.clone(), tls.clone());
            tokio::spawn(async move {
                let reader: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match tls {
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(s) => Box::new(s),
                        Err(_) => return,
                    },
                    None => Box::new(tcp),
                };
                let mut reader = tokio::io::BufReader::new(reader).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().push(line);
                }
            });
        }
    });
    (addr, got)
}

/// tcp-log: the entries as JSON lines over one kept connection; udp-log:
/// one datagram each.
#[tokio::test]
async fn tcp_log_and_udp_log_send_kong_entries() {
    let (tcp_sink, got) = line_collector(None).await;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind udp");
    let udp_sink = udp.local_addr().expect("addr");
    let backend = echo("a").await;
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "plugins": [
            {"name": "tcp-log", "config": {"host": "127.0.0.1", "port": tcp_sink.port()}},
            {"name": "udp-log", "config": {"host": "127.0.0.1", "port": udp_sink.port()}}],
        "services": [{"name": "svc", "url": format!("http://{backend}"), "routes": [
            {"name": "logged", "paths": ["/logged"]}]}]
    }))
    .await;
    for i in 0..3 {
        let (code, _, _) = curl_h(s(&[&format!("http://{}/logged/{i}", gw.addr)])).await;
        assert_eq!(code, 200);
    }
    let lines = got.wait_for(3).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["request"]["uri"], format!("/logged/{i}"), "{l}");
        assert_eq!(l["response"]["status"], 200);
        assert_eq!(l["route"]["name"], "logged");
    }
    assert_eq!(
        got.connections.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one kept connection"
    );
    let mut buf = vec![0u8; 65536];
    for i in 0..3 {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), udp.recv(&mut buf))
            .await
            .expect("a datagram")
            .expect("recv");
        let v = json(&String::from_utf8_lossy(&buf[..n]));
        assert_eq!(v["request"]["uri"], format!("/logged/{i}"), "{v}");
    }

    refused(
        &gw,
        "tcp-log",
        &[
            (serde_json::json!({"port": 5000}), "host"),
            (serde_json::json!({"host": "x"}), "port"),
            (
                serde_json::json!({"host": "x", "port": 1, "timeout": 0}),
                "timeout",
            ),
            (
                serde_json::json!({"host": "x", "port": 1, "tls": true, "tls_sni": "bad name!"}),
                "tls_sni",
            ),
        ],
    )
    .await;
    refused(
        &gw,
        "udp-log",
        &[(
            serde_json::json!({"host": "x", "port": 1, "keepalive": 5}),
            "keepalive",
        )],
    )
    .await;
}

/// request-termination's `trigger` (only requests with that header or
/// query argument are answered) and `echo` (the request described back).
#[tokio::test]
async fn request_termination_triggers_and_echoes() {
    let backend = echo("a").await;
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "services": [{"name": "svc", "url": format!("http://{backend}"), "routes": [
            {"name": "maint", "paths": ["/maint"], "plugins": [
                {"name": "request-termination", "config": {"trigger": "X-Maintenance", "status_code": 503}}]},
            {"name": "debug", "paths": ["/debug"], "plugins": [
                {"name": "request-termination", "config": {"trigger": "debug", "echo": true, "status_code": 200}}]}]}]
    }))
    .await;
    let url = |p: &str| format!("http://{}{p}", gw.addr);
    // No trigger: proxied.
    let (code, _, body) = curl_h(s(&[&url("/maint/x")])).await;
    assert_eq!(code, 200);
    assert_eq!(json(&body)["backend"], "a");
    // The header triggers it, and so does a query argument of that name.
    let (code, _, body) = curl_h(s(&["-H", "x-maintenance: 1", &url("/maint/x")])).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(json(&body)["message"], "Service unavailable");
    let (code, _, _) = curl_h(s(&[&url("/maint/x?X-Maintenance=on")])).await;
    assert_eq!(code, 503);

    let (code, _, body) = curl_h(s(&[&url("/debug/x")])).await;
    assert_eq!((code, json(&body)["backend"].as_str()), (200, Some("a")));
    let (code, h, body) = curl_h(s(&[
        "-H",
        "Debug: yes",
        "-H",
        "Host: api.example.com:8080",
        &url("/debug/path?a=1&b=two"),
    ]))
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(h["content-type"].starts_with("application/json"), "{h:?}");
    let v = json(&body);
    assert_eq!(v["request"]["method"], "GET");
    assert_eq!(v["request"]["host"], "api.example.com");
    assert_eq!(v["request"]["port"], 8080);
    assert_eq!(v["request"]["path"], "/debug/path");
    assert_eq!(v["request"]["query"]["b"], "two");
    assert_eq!(v["request"]["headers"]["debug"], "yes");
    assert_eq!(v["matched_route"]["name"], "debug");
    assert_eq!(v["matched_service"]["name"], "svc");

    refused(
        &gw,
        "request-termination",
        &[
            (serde_json::json!({"trigger": "bad name"}), "trigger"),
            (serde_json::json!({"echo": true, "message": "m"}), "echo"),
        ],
    )
    .await;
}

/// request-transformer's `http_method` and `replace.uri` (the whole
/// upstream path, the query kept), on the HTTP/1.1 path and over h2c.
#[tokio::test]
async fn request_transformer_sets_the_method_and_the_upstream_path() {
    let backend = echo("a").await;
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "services": [{"name": "svc", "url": format!("http://{backend}/base"), "routes": [
            {"name": "rw", "paths": ["/rw"], "plugins": [
                {"name": "request-transformer", "config": {
                    "http_method": "post",
                    "replace": {"uri": "/v2/rewritten"},
                    "add": {"querystring": ["added:1"]}}}]}]}]
    }))
    .await;
    for h2 in [false, true] {
        let mut args = s(&[&format!("http://{}/rw/anything?x=1", gw.addr)]);
        if h2 {
            args.insert(0, "--http2-prior-knowledge".into());
        }
        let (code, _, body) = curl_h(args).await;
        assert_eq!(code, 200, "{body}");
        let v = json(&body);
        assert_eq!(v["method"], "POST", "h2 {h2}: {v}");
        assert_eq!(v["uri"], "/v2/rewritten?x=1&added=1", "h2 {h2}: {v}");
    }
    refused(
        &gw,
        "request-transformer",
        &[
            (
                serde_json::json!({"replace": {"uri": "no-slash"}}),
                "replace.uri",
            ),
            (
                serde_json::json!({"replace": {"uri": "/$(uri_captures.id)"}}),
                "replace.uri",
            ),
            (
                serde_json::json!({"http_method": "BAD METHOD"}),
                "http_method",
            ),
            (serde_json::json!({"add": {"uri": "/x"}}), "add.uri"),
        ],
    )
    .await;
    refused(
        &gw,
        "response-transformer",
        &[(serde_json::json!({"http_method": "GET"}), "http_method")],
    )
    .await;
}

/// base64 of HMAC-`digest` (sha1, sha256, ...) of `text` with `secret`,
/// by the openssl CLI (a signer that is not Bronze's code).
fn openssl_hmac(digest: &str, secret: &str, text: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["dgst", &format!("-{digest}"), "-hmac", secret, "-binary"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("openssl");
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, out.stdout)
}

/// Kong's hmac-auth: requests signed with the consumer's secret (date and
/// request line), replayed too late, signed wrongly or not at all; the
/// credential made through the Admin API.
#[tokio::test]
async fn hmac_auth_as_kong() {
    let backend = echo("a").await;
    let gw = gateway(serde_json::json!({
        "_format_version": "3.0",
        "consumers": [{"username": "alice", "hmacauth_credentials": [
            {"username": "alice-hmac", "secret": "s3cret"}]}],
        "services": [{"name": "svc", "url": format!("http://{backend}"), "routes": [
            {"name": "signed", "paths": ["/signed"], "plugins": [
                {"name": "hmac-auth", "config": {"enforce_headers": ["date", "request-line"],
                    "hide_credentials": true}}]},
            {"name": "loose", "paths": ["/loose"], "plugins": [{"name": "hmac-auth"}]}]}]
    }))
    .await;
    let now = || httpdate::fmt_http_date(std::time::SystemTime::now());
    let call = |path: &str, date_header: &str, date: String, auth: Option<String>| {
        let mut args = s(&["-H", &format!("{date_header}: {date}")]);
        if let Some(a) = auth {
            args.extend(s(&["-H", &format!("Authorization: {a}")]));
        }
        args.push(format!("http://{}{path}", gw.addr));
        curl_h(args)
    };
    let auth = |user: &str, alg: &str, headers: &str, signature: &str| {
        format!(
            r#"hmac username="{user}", algorithm="{alg}", headers="{headers}", signature="{signature}""#
        )
    };

    // Signed date and request line: through, as alice, credentials hidden.
    let date = now();
    let signing = format!("date: {date}\nGET /signed/x?y=1 HTTP/1.1");
    let sig = openssl_hmac("sha256", "s3cret", &signing);
    let (code, _, body) = call(
        "/signed/x?y=1",
        "Date",
        date.clone(),
        Some(auth("alice-hmac", "hmac-sha256", "date request-line", &sig)),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["headers"]["x-consumer-username"], "alice");
    assert_eq!(v["headers"]["x-credential-identifier"], "alice-hmac");
    assert!(v["headers"].get("authorization").is_none(), "{v}");

    // The same signature for another path: does not match.
    let (code, _, body) = call(
        "/signed/other?y=1",
        "Date",
        date.clone(),
        Some(auth("alice-hmac", "hmac-sha256", "date request-line", &sig)),
    )
    .await;
    assert_eq!(code, 401);
    assert_eq!(json(&body)["message"], "HMAC signature does not match");

    // Too old a date: refused before any signature is checked.
    let old =
        httpdate::fmt_http_date(std::time::SystemTime::now() - std::time::Duration::from_secs(600));
    let signing = format!("date: {old}\nGET /signed/x HTTP/1.1");
    let (code, _, body) = call(
        "/signed/x",
        "Date",
        old,
        Some(auth(
            "alice-hmac",
            "hmac-sha256",
            "date request-line",
            &openssl_hmac("sha256", "s3cret", &signing),
        )),
    )
    .await;
    assert_eq!(code, 401);
    assert!(
        json(&body)["message"]
            .as_str()
            .is_some_and(|m| m.contains("date or x-date")),
        "{body}"
    );

    // No credentials: Kong's challenge.
    let (code, h, body) = call("/signed/x", "Date", now(), None).await;
    assert_eq!(code, 401);
    assert_eq!(json(&body)["message"], "Unauthorized");
    assert_eq!(h["www-authenticate"], "hmac");

    // The request line left unsigned where it is enforced.
    let date = now();
    let sig = openssl_hmac("sha256", "s3cret", &format!("date: {date}"));
    let (code, _, body) = call(
        "/signed/x",
        "Date",
        date,
        Some(auth("alice-hmac", "hmac-sha256", "date", &sig)),
    )
    .await;
    assert_eq!(code, 401);
    assert_eq!(json(&body)["message"], "HMAC signature cannot be verified");

    // hmac-sha1 with X-Date, where only the date is required.
    let date = now();
    let sig = openssl_hmac("sha1", "s3cret", &format!("x-date: {date}"));
    let (code, _, body) = call(
        "/loose/x",
        "X-Date",
        date,
        Some(auth("alice-hmac", "hmac-sha1", "x-date", &sig)),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(json(&body)["headers"]["authorization"].is_string(), "kept");

    // A credential made through the Admin API, its secret generated.
    let (code, created, _) = curl_h(s(&[
        "-X",
        "POST",
        "-d",
        "username=bob-hmac",
        &format!("http://{}/consumers/alice/hmac-auth", gw.admin),
    ]))
    .await;
    assert_eq!(code, 201);
    let _ = created;
    let (_, _, body) = curl_h(s(&[&format!(
        "http://{}/consumers/alice/hmac-auth/bob-hmac",
        gw.admin
    )]))
    .await;
    let secret = json(&body)["secret"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(secret.len(), 32, "{body}");
    let date = now();
    let sig = openssl_hmac("sha512", &secret, &format!("date: {date}"));
    let (code, _, body) = call(
        "/loose/x",
        "Date",
        date,
        Some(auth("bob-hmac", "hmac-sha512", "date", &sig)),
    )
    .await;
    assert_eq!(code, 200, "{body}");

    refused(
        &gw,
        "hmac-auth",
        &[
            (
                serde_json::json!({"validate_request_body": true}),
                "validate_request_body",
            ),
            (
                serde_json::json!({"algorithms": ["hmac-md5"]}),
                "algorithms[0]",
            ),
            (serde_json::json!({"clock_skew": 0}), "clock_skew"),
        ],
    )
    .await;
}
