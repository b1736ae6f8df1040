//! Kong's Admin API driven with curl against the real gateway and echo
//! backends: CRUD in Kong's paths with JSON and form bodies, no 404 window
//! while routes are created, upstream targets moving traffic, paging,
//! Kong's error shapes, persistence across restarts, YAML, the admin token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bronze_gateway::{Config, Server, StartError};
use bronze_runtime::Shutdown;
use serde_json::{Value, json};

use super::{curl, echo, s};

pub(super) struct Running {
    pub(super) addr: SocketAddr,
    pub(super) admin: SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops the gateway and waits until it let go of its store.
    pub(super) async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.expect("gateway task");
    }
}

pub(super) async fn start(config: Config) -> Running {
    let server = Server::bind(config).await.expect("gateway binds");
    let (addr, admin) = (server.addr(), server.admin_addr());
    let shutdown = Shutdown::new();
    let sd = shutdown.clone();
    let task = tokio::spawn(async move { server.serve(sd).await.expect("gateway serves") });
    Running {
        addr,
        admin,
        shutdown,
        task,
    }
}

/// curl against the admin API: method, path, extra curl args; status and
/// the body as JSON (null when empty).
pub(super) async fn admin(gw: &Running, method: &str, path: &str, args: &[&str]) -> (u16, Value) {
    let mut all = s(&["-X", method]);
    all.extend(s(args));
    all.push(format!("http://{}{path}", gw.admin));
    let (code, body) = curl(all).await;
    let v = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"))
    };
    (code, v)
}

fn json_body(v: Value) -> Vec<String> {
    s(&["-H", "Content-Type: application/json", "-d", &v.to_string()])
}

async fn post_json(gw: &Running, path: &str, v: Value) -> (u16, Value) {
    let args = json_body(v);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    admin(gw, "POST", path, &args).await
}

async fn proxied(gw: &Running, path: &str) -> (u16, Value) {
    let (code, body) = curl(s(&[&format!("http://{}{path}", gw.addr)])).await;
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn kong_crud_with_json_and_forms_proxies_at_once_and_refuses_bad_input() {
    let (a, b) = (echo("a").await, echo("b").await);
    let gw = start(Config::ephemeral()).await;

    // A client keeps asking for /api/x while the route is created: it sees
    // 404 (before) or 200 (after), and never 404 again once it saw 200.
    let done = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (d, n, url) = (
        done.clone(),
        asked.clone(),
        format!("http://{}/api/x", gw.addr),
    );
    bronze_runtime::install_crypto_provider();
    let client = reqwest::Client::new();
    let c = client.clone();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while !d.load(Ordering::Relaxed) {
            let status = c.get(&url).send().await.map_or(0, |r| r.status().as_u16());
            if seen.last() != Some(&status) {
                seen.push(status);
            }
            n.fetch_add(1, Ordering::Relaxed);
        }
        seen
    });
    while asked.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    let (code, svc) = post_json(
        &gw,
        "/services",
        json!({"name": "svc", "url": format!("http://{a}")}),
    )
    .await;
    assert_eq!(code, 201, "{svc}");
    let svc_id = svc["id"].as_str().expect("id").to_string();
    assert!(uuid_like(&svc_id), "{svc}");
    assert!(
        svc["created_at"]
            .as_i64()
            .is_some_and(|t| t > 1_600_000_000)
    );
    assert!(svc["updated_at"].is_i64());

    // A form body as Kong takes it: paths[] array, a boolean coerced.
    let (code, route) = admin(
        &gw,
        "POST",
        "/services/svc/routes",
        &[
            "-d",
            "name=r1",
            "-d",
            "paths[]=/api",
            "-d",
            "strip_path=false",
            "-d",
            "methods=GET",
        ],
    )
    .await;
    assert_eq!(code, 201, "{route}");
    assert_eq!(route["service"], json!({"id": svc_id}));
    assert_eq!(route["strip_path"], false);
    assert_eq!(route["paths"], json!(["/api"]));
    // Proxies at once, with strip_path false.
    let (code, v) = proxied(&gw, "/api/x").await;
    assert_eq!(code, 200);
    assert_eq!(v["backend"], "a");
    assert_eq!(v["uri"], "/api/x");
    // The watcher asks a few more times once the route answers: never a
    // 404 again.
    let after = asked.load(Ordering::Relaxed);
    super::eventually(
        std::time::Duration::from_secs(30),
        "the watcher asked after the change",
        || asked.load(Ordering::Relaxed) >= after + 20,
    )
    .await;
    done.store(true, Ordering::Relaxed);
    let seen = watcher.await.expect("watcher");
    drop(client);
    assert_eq!(seen, vec![404, 200], "statuses in the order seen");

    // PATCH a route's paths: the old path goes, the new one works.
    let (code, v) = admin(
        &gw,
        "PATCH",
        "/routes/r1",
        &json_body(json!({"paths": ["/v2"]}))
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["strip_path"], false, "PATCH keeps other fields: {v}");
    assert_eq!(proxied(&gw, "/v2/y").await.1["uri"], "/v2/y");
    assert_eq!(proxied(&gw, "/api/x").await.0, 404);

    // Forms: a number coerced, `service.name=`, repeated `paths=`.
    let (code, svc2) = admin(
        &gw,
        "POST",
        "/services",
        &[
            "-d",
            "name=svc2",
            "-d",
            "host=127.0.0.1",
            "-d",
            &format!("port={}", b.port()),
        ],
    )
    .await;
    assert_eq!(code, 201, "{svc2}");
    assert_eq!(svc2["port"], b.port());
    let (code, r2) = admin(
        &gw,
        "POST",
        "/routes",
        &[
            "-d",
            "name=r2",
            "-d",
            "paths=/b1",
            "-d",
            "paths=/b2",
            "-d",
            "service.name=svc2",
        ],
    )
    .await;
    assert_eq!(code, 201, "{r2}");
    assert_eq!(r2["service"]["id"], svc2["id"]);
    assert_eq!(proxied(&gw, "/b2/z").await.1["backend"], "b");
    assert_eq!(
        admin(&gw, "GET", "/routes", &[]).await.1["data"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let (_, mine) = admin(&gw, "GET", "/services/svc2/routes", &[]).await;
    assert_eq!(mine["data"][0]["name"], "r2", "{mine}");
    assert_eq!(mine["data"].as_array().map(Vec::len), Some(1));
    let (code, by_id) = admin(&gw, "GET", &format!("/services/{svc_id}"), &[]).await;
    assert_eq!((code, by_id["name"].as_str()), (200, Some("svc")));

    // Refusals: Kong's shapes, and nothing changes.
    let (code, v) = post_json(&gw, "/services", json!({"name": "svc", "host": "x"})).await;
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["code"], 5);
    assert_eq!(v["name"], "unique constraint violation");
    assert_eq!(v["fields"]["name"], "svc");
    let (code, v) = post_json(
        &gw,
        "/services/svc/routes",
        json!({"name": "bad", "paths": ["/ok", "nope"]}),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["code"], 2);
    assert_eq!(v["name"], "schema violation");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("schema violation (paths.2: ")),
        "{v}"
    );
    assert!(v["fields"]["paths"][0].is_null(), "{v}");
    assert!(v["fields"]["paths"][1].is_string(), "{v}");
    let (code, v) = post_json(
        &gw,
        "/routes",
        json!({"name": "x", "paths": ["/x"], "protocols": ["http"], "snis": ["a.example.com"], "service": {"id": svc_id}}),
    )
    .await;
    assert_eq!(code, 400);
    assert!(v["fields"]["snis"].is_string(), "{v}");
    let (code, v) = admin(
        &gw,
        "POST",
        "/services",
        &["-d", "name=s3&host=x&port=many"],
    )
    .await;
    assert_eq!(code, 400);
    assert!(v["fields"]["port"].is_string(), "{v}");
    let (code, v) = post_json(
        &gw,
        "/routes",
        json!({"name": "orphan", "paths": ["/o"], "service": {"name": "nope"}}),
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(v["name"], "foreign key violation", "{v}");
    let (code, v) = admin(
        &gw,
        "POST",
        "/services",
        &["-H", "Content-Type: application/json", "-d", "{not json"],
    )
    .await;
    assert_eq!(
        (code, &v["message"]),
        (400, &json!("Cannot parse JSON body"))
    );
    assert_eq!(
        admin(&gw, "GET", "/services", &[]).await.1["data"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(proxied(&gw, "/v2/y").await.0, 200);

    // A service that routes use cannot go; its routes can, then it can.
    let (code, v) = admin(&gw, "DELETE", "/services/svc", &[]).await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["name"], "foreign key violation");
    assert_eq!(admin(&gw, "DELETE", "/routes/r1", &[]).await.0, 204);
    assert_eq!(proxied(&gw, "/v2/y").await.0, 404);
    assert_eq!(admin(&gw, "DELETE", "/services/svc", &[]).await.0, 204);
    assert_eq!(
        admin(&gw, "GET", "/services/svc", &[]).await,
        (404, json!({"message": "Not found"}))
    );
    // PUT upserts by name.
    let (code, v) = admin(
        &gw,
        "PUT",
        "/services/svc",
        &json_body(json!({"url": format!("http://{a}")}))
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["name"], "svc");

    // Node information, status, and the running flat document.
    let (code, root) = admin(&gw, "GET", "/", &[]).await;
    assert_eq!(code, 200);
    assert!(root["version"].as_str().is_some_and(|v| v.starts_with('3')));
    assert_eq!(
        root["configuration"]["admin_listen"][0],
        gw.admin.to_string()
    );
    let (code, status) = admin(&gw, "GET", "/status", &[]).await;
    assert_eq!(code, 200);
    assert_eq!(status["database"]["reachable"], true);
    let (_, config) = admin(&gw, "GET", "/config", &[]).await;
    assert_eq!(config["routes"][0]["name"], "r2", "{config}");
    assert_eq!(config["routes"][0]["service"]["id"], svc2["id"]);
    gw.stop().await;
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test]
async fn upstream_targets_move_traffic_and_lists_page() {
    let (a, b) = (echo("a").await, echo("b").await);
    let gw = start(Config::ephemeral()).await;
    let (code, up) = admin(&gw, "PUT", "/upstreams/pool", &[]).await;
    assert_eq!(code, 200, "{up}");
    assert_eq!(up["name"], "pool");
    let (code, t) = post_json(
        &gw,
        "/upstreams/pool/targets",
        json!({"target": a.to_string()}),
    )
    .await;
    assert_eq!(code, 201, "{t}");
    assert_eq!(t["upstream"]["id"], up["id"]);
    assert_eq!(
        post_json(&gw, "/services", json!({"name": "pool", "host": "pool"}))
            .await
            .0,
        201
    );
    assert_eq!(
        post_json(&gw, "/services/pool/routes", json!({"paths": ["/pool"]}))
            .await
            .0,
        201
    );
    let backends = |n| {
        let gw = &gw;
        async move {
            let mut seen = std::collections::BTreeMap::new();
            for _ in 0..n {
                let (_, v) = proxied(gw, "/pool").await;
                *seen
                    .entry(v["backend"].as_str().unwrap_or("?").to_string())
                    .or_insert(0) += 1;
            }
            seen
        }
    };
    assert_eq!(backends(4).await.keys().collect::<Vec<_>>(), vec!["a"]);

    // A second target shares the traffic; removing the first moves it all.
    let (code, _) = admin(
        &gw,
        "POST",
        "/upstreams/pool/targets",
        &["-d", &format!("target={b}"), "-d", "weight=100"],
    )
    .await;
    assert_eq!(code, 201);
    let (code, v) = post_json(
        &gw,
        "/upstreams/pool/targets",
        json!({"target": b.to_string()}),
    )
    .await;
    assert_eq!(code, 409, "{v}");
    // Weight 100 is 10 ring slots each: 20 requests, 10 to each.
    let seen = backends(20).await;
    assert_eq!((seen.get("a"), seen.get("b")), (Some(&10), Some(&10)));
    assert_eq!(
        admin(&gw, "DELETE", &format!("/upstreams/pool/targets/{a}"), &[])
            .await
            .0,
        204
    );
    assert_eq!(backends(4).await.keys().collect::<Vec<_>>(), vec!["b"]);
    let (_, targets) = admin(&gw, "GET", "/upstreams/pool/targets", &[]).await;
    assert_eq!(targets["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(targets["data"][0]["target"], b.to_string());
    // Targets are validated as the declarative file's are.
    let (code, v) = post_json(&gw, "/upstreams/pool/targets", json!({"target": "no-port"})).await;
    assert_eq!(code, 400);
    assert!(v["fields"]["target"].is_string(), "{v}");

    // Six services created at once: every change is applied whole.
    let created = futures::future::join_all((0..6).map(|i| {
        let tags = if i % 2 == 0 {
            vec!["even"]
        } else {
            vec!["odd"]
        };
        post_json(
            &gw,
            "/services",
            json!({"name": format!("s{i}"), "url": "http://127.0.0.1:9", "tags": tags}),
        )
    }))
    .await;
    assert!(created.iter().all(|(code, _)| *code == 201), "{created:?}");
    let (_, even) = admin(&gw, "GET", "/services?tags=even", &[]).await;
    assert_eq!(even["data"].as_array().map(Vec::len), Some(3), "{even}");
    let (_, either) = admin(&gw, "GET", "/services?tags=even/odd", &[]).await;
    assert_eq!(either["data"].as_array().map(Vec::len), Some(6));
    let (_, both) = admin(&gw, "GET", "/services?tags=even,odd", &[]).await;
    assert_eq!(both["data"], json!([]));

    // Paging: size and offset as Kong pages.
    let mut names = Vec::new();
    let mut path = "/services?size=3".to_string();
    let mut pages = 0;
    loop {
        let (code, page) = admin(&gw, "GET", &path, &[]).await;
        assert_eq!(code, 200, "{page}");
        let data = page["data"].as_array().expect("data");
        assert!(data.len() <= 3);
        names.extend(
            data.iter()
                .map(|s| s["name"].as_str().unwrap_or("").to_string()),
        );
        pages += 1;
        match page["next"].as_str() {
            Some(next) => path = next.to_string(),
            None => break,
        }
    }
    names.sort();
    assert_eq!(names, vec!["pool", "s0", "s1", "s2", "s3", "s4", "s5"]);
    assert_eq!(pages, 3);
    let (code, v) = admin(&gw, "GET", "/services?size=0", &[]).await;
    assert_eq!((code, &v["name"]), (400, &json!("invalid size")));
    let (code, v) = admin(&gw, "GET", "/services?offset=zzz", &[]).await;
    assert_eq!((code, &v["name"]), (400, &json!("invalid offset")));

    // Deleting the upstream takes its targets with it.
    assert_eq!(admin(&gw, "DELETE", "/upstreams/pool", &[]).await.0, 204);
    assert_eq!(
        admin(&gw, "GET", "/upstreams/pool/targets", &[]).await.0,
        404
    );
    let (_, config) = admin(&gw, "GET", "/config", &[]).await;
    assert!(config.get("targets").is_none(), "{config}");
    gw.stop().await;
}

#[tokio::test]
async fn entities_survive_restarts_and_a_yaml_file_replaces_them() {
    let (a, b) = (echo("a").await, echo("b").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || Config {
        data_dir: dir.path().display().to_string(),
        ..Config::ephemeral()
    };

    let gw = start(config()).await;
    assert_eq!(
        post_json(
            &gw,
            "/services",
            json!({"name": "kept", "url": format!("http://{a}")})
        )
        .await
        .0,
        201
    );
    let (code, route) = post_json(
        &gw,
        "/services/kept/routes",
        json!({"name": "kept", "paths": ["/kept"]}),
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(proxied(&gw, "/kept/1").await.1["backend"], "a");
    gw.stop().await;

    // Same directory, no file: the route is back, with its id.
    let gw = start(config()).await;
    assert_eq!(proxied(&gw, "/kept/1").await.1["backend"], "a");
    let (_, again) = admin(&gw, "GET", "/routes/kept", &[]).await;
    assert_eq!(again["id"], route["id"]);
    gw.stop().await;

    // A YAML declarative file at start replaces what the store held.
    let file = dir.path().join("kong.yml");
    std::fs::write(
        &file,
        format!(
            "_format_version: \"3.0\"\nservices:\n  - name: yaml\n    url: http://{b}\n    routes:\n      - name: yaml\n        paths:\n          - /yaml\n"
        ),
    )
    .expect("write");
    let gw = start(Config {
        declarative_config: file.display().to_string(),
        ..config()
    })
    .await;
    assert_eq!(proxied(&gw, "/yaml/1").await.1["backend"], "b");
    assert_eq!(proxied(&gw, "/kept/1").await.0, 404);
    gw.stop().await;
    let gw = start(config()).await;
    assert_eq!(proxied(&gw, "/yaml/1").await.1["backend"], "b");
    let (_, services) = admin(&gw, "GET", "/services", &[]).await;
    assert_eq!(services["data"].as_array().map(Vec::len), Some(1));

    // POST /config takes YAML too, and a bad one names the field.
    let (code, v) = admin(
        &gw,
        "POST",
        "/config",
        &[
            "--data-binary",
            &format!("_format_version: \"3.0\"\nservices:\n- name: y2\n  url: http://{a}\n  routes:\n  - name: y2\n    paths: [/y2]\n"),
        ],
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(proxied(&gw, "/y2").await.1["backend"], "a");
    assert_eq!(proxied(&gw, "/yaml/1").await.0, 404);
    let (code, v) = admin(
        &gw,
        "POST",
        "/config",
        &[
            "--data-binary",
            "_format_version: \"3.0\"\nservices:\n- name: y3\n  port: many\n",
        ],
    )
    .await;
    assert_eq!(code, 400);
    assert!(v["fields"]["services[0].port"].is_string(), "{v}");
    assert_eq!(proxied(&gw, "/y2").await.1["backend"], "a");
    // GET /config as YAML is a file POST /config takes back.
    let (code, yaml) = curl(s(&[
        "-H",
        "Accept: application/yaml",
        &format!("http://{}/config", gw.admin),
    ]))
    .await;
    assert_eq!(code, 200);
    assert!(yaml.contains("name: y2"), "{yaml}");
    assert!(!yaml.trim_start().starts_with('{'), "{yaml}");
    let (code, v) = admin(&gw, "POST", "/config", &["--data-binary", &yaml]).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(proxied(&gw, "/y2").await.1["backend"], "a");
    gw.stop().await;
    let gw = start(config()).await;
    assert_eq!(proxied(&gw, "/y2").await.1["backend"], "a");
    gw.stop().await;
}

#[tokio::test]
async fn an_exposed_admin_api_needs_a_token_and_every_request_carries_it() {
    let exposed = Config {
        admin_addr: "0.0.0.0:0".parse().expect("addr"),
        ..Config::ephemeral()
    };
    match Server::bind(exposed.clone()).await {
        Err(e @ StartError::AdminExposed { .. }) => {
            assert!(e.to_string().contains("admin_token"), "{e}")
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("an exposed admin API without a token must not start"),
    }
    let mut unchecked = exposed.clone();
    assert!(
        unchecked
            .validate()
            .is_err_and(|e| e.to_string().contains("admin_token"))
    );

    let gw = start(Config {
        admin_token: "s3cret".into(),
        ..exposed
    })
    .await;
    let at = |gw: &Running| SocketAddr::from(([127, 0, 0, 1], gw.admin.port()));
    let call = |args: &[&str], path: &str| {
        let mut all = s(args);
        all.push(format!("http://{}{path}", at(&gw)));
        curl(all)
    };
    let (code, body) = call(&[], "/services").await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("Invalid credentials"));
    assert_eq!(
        call(&["-H", "Kong-Admin-Token: wrong"], "/services")
            .await
            .0,
        401
    );
    assert_eq!(
        call(&["-H", "Authorization: Bearer s3cre"], "/services")
            .await
            .0,
        401
    );
    assert_eq!(
        call(&["-H", "Kong-Admin-Token: s3cret"], "/services")
            .await
            .0,
        200
    );
    assert_eq!(
        call(&["-H", "Authorization: Bearer s3cret"], "/services")
            .await
            .0,
        200
    );
    assert_eq!(
        call(&["-X", "POST", "-d", "name=x&host=y"], "/services")
            .await
            .0,
        401
    );
    assert_eq!(call(&["-X", "POST", "-d", "{}"], "/config").await.0, 401);
    assert_eq!(call(&[], "/").await.0, 401);
    // Nothing was created by the refused calls.
    let (_, body) = call(&["-H", "Kong-Admin-Token: s3cret"], "/services").await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["data"],
        json!([])
    );
    // Health and metrics stay open.
    assert_eq!(call(&[], "/healthz").await.0, 200);
    assert_eq!(call(&[], "/metrics").await.0, 200);
    gw.stop().await;
}

/// A gateway started from the YAML `fixture`, its `BACKEND` an echo
/// backend named `name`.
async fn serve_fixture(fixture: &str, name: &'static str) -> super::Gw {
    let backend = super::echo(name).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kong.yaml");
    std::fs::write(&path, fixture.replace("BACKEND", &backend.to_string())).expect("write");
    let mut config = bronze_gateway::Config::ephemeral();
    config.declarative_config = path.display().to_string();
    // The file is read at start: the directory may go.
    super::serve(config).await
}

/// A configuration shaped exactly as `deck gateway dump` writes one from
/// Kong 3 (keys sorted, entities with every default and without their
/// unset fields, plugin configurations with every field, nulls included;
/// the shape of deck's own dump expectations,
/// `tests/integration/testdata/dump/*/expected*.yaml` in Kong/deck) loads
/// as it is and proxies.
#[tokio::test]
async fn a_deck_dump_with_every_default_loads_unchanged() {
    let gw = serve_fixture(include_str!("fixtures/deck-dump.yaml"), "deck").await;
    let (code, body) = super::curl(super::s(&[
        "-H",
        "apikey: alice-key",
        &format!("http://{}/users/x", gw.addr),
    ]))
    .await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("echo JSON");
    assert_eq!(v["uri"], "/v1/x");
    assert!(v["headers"]["kong-request-id"].is_string(), "{v}");
    let (code, _) = super::curl(super::s(&[&format!("http://{}/users/x", gw.addr)])).await;
    assert_eq!(code, 401);
}

/// Anchors, aliases and merge keys (which deck never writes, people do):
/// merged settings apply, an explicit key wins over a merged one, an
/// aliased list is the list, and `_ignore` holding the anchors is not an
/// entity.
#[tokio::test]
async fn yaml_anchors_and_merge_keys_are_applied() {
    let gw = serve_fixture(
        include_str!("fixtures/yaml-anchors-and-merge-keys.yaml"),
        "anchors",
    )
    .await;
    let service = |name: &'static str| {
        let admin = gw.admin;
        async move {
            let (code, body) =
                super::curl(super::s(&[&format!("http://{admin}/services/{name}")])).await;
            assert_eq!(code, 200, "{body}");
            serde_json::from_str::<Value>(&body).expect("json")
        }
    };
    let a = service("a").await;
    assert_eq!(
        (&a["connect_timeout"], &a["read_timeout"], &a["tags"]),
        (&json!(1234), &json!(5678), &json!(["shared"])),
        "{a}"
    );
    let b = service("b").await;
    assert_eq!(
        (&b["connect_timeout"], &b["read_timeout"]),
        (&json!(1234), &json!(42)),
        "{b}"
    );
    for (path, host, want) in [
        ("/a/x", None, "/a/x"),
        ("/bee/x", None, "/b/x"),
        ("/b/y", Some("again.example"), "/b/y"),
    ] {
        let mut args = vec![format!("http://{}{path}", gw.addr)];
        if let Some(h) = host {
            args.extend(["-H".to_string(), format!("Host: {h}")]);
        }
        let (code, body) = super::curl(args).await;
        assert_eq!(code, 200, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).expect("echo JSON");
        assert_eq!(v["uri"], want, "{path}");
    }
    let (code, body) = super::curl(super::s(&[&format!("http://{}/services", gw.admin)])).await;
    assert_eq!(code, 200);
    let services: Value = serde_json::from_str(&body).expect("json");
    let names: Vec<&str> = services["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{body}");
}

/// `v` with every `id` and timestamp replaced by a placeholder, once it
/// is checked to be what it must be (a UUID, a number): answers compare
/// whole with Kong's documented ones.
fn placeheld(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        "id" => {
                            assert!(v.as_str().is_some_and(uuid_like), "id: {v}");
                            json!("<id>")
                        }
                        "created_at" | "updated_at" => {
                            assert!(v.is_number(), "{k}: {v}");
                            json!("<time>")
                        }
                        _ => placeheld(v),
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(placeheld).collect()),
        other => other,
    }
}

/// Kong's documented answers (`fixtures/kong-admin-answers.json`: the
/// get-started tutorial's service and route, the reference's upstream,
/// target, consumer and plugin, every plugin's configuration as Kong 3.9's
/// schema fills it), played in order with curl: each entity comes back
/// with every field and its default, a service created with `url` as
/// `protocol`, `host`, `port` and `path`. Then every entity is read and
/// written back unchanged (deck's sync, Konga's edit form): each is
/// accepted and is the same entity.
#[tokio::test]
async fn kong_admin_answers_match_kongs_documented_shapes() {
    let fixture: Value = serde_json::from_str(include_str!("fixtures/kong-admin-answers.json"))
        .expect("fixture is JSON");
    let gw = start(Config::ephemeral()).await;
    for x in fixture["exchanges"].as_array().expect("exchanges") {
        let (method, path) = (
            x["method"].as_str().expect("method"),
            x["path"].as_str().expect("path"),
        );
        let mut args = Vec::new();
        for field in x["form"].as_array().into_iter().flatten() {
            args.extend(s(&["-d", field.as_str().expect("form field")]));
        }
        if let Some(body) = x.get("json") {
            args.extend(json_body(body.clone()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, answer) = admin(&gw, method, path, &args).await;
        assert_eq!(json!(code), x["status"], "{method} {path}: {answer}");
        assert_eq!(
            placeheld(answer.clone()),
            placeheld(x["answer"].clone()),
            "{method} {path} ({}): {answer:#}",
            x["source"]
        );
    }

    let (_, upstream) = admin(&gw, "GET", "/upstreams/my-upstream", &[]).await;
    for collection in [
        "/services".to_string(),
        "/routes".to_string(),
        "/upstreams".to_string(),
        format!(
            "/upstreams/{}/targets",
            upstream["id"].as_str().expect("id")
        ),
        "/consumers".to_string(),
        "/plugins".to_string(),
    ] {
        let (_, list) = admin(&gw, "GET", &collection, &[]).await;
        let items = list["data"].as_array().expect("data").clone();
        assert!(!items.is_empty(), "{collection}");
        for before in items {
            let id = before["id"].as_str().expect("id");
            let path = format!("{collection}/{id}");
            let body = json_body(before.clone());
            let body: Vec<&str> = body.iter().map(String::as_str).collect();
            let (code, after) = admin(&gw, "PUT", &path, &body).await;
            assert_eq!(code, 200, "PUT {path} as read: {after}");
            let same = |mut v: Value| {
                v.as_object_mut().map(|o| o.remove("updated_at"));
                v
            };
            assert_eq!(same(after), same(before), "{path}");
        }
    }
    gw.stop().await;
}

/// `url` is Kong's write-only shorthand: a service created with one (by
/// the Admin API, or declared in `POST /config`) is a protocol, host,
/// port and path, so a PATCH of `port` moves its requests there (the path
/// stays).
#[tokio::test]
async fn a_patched_port_of_a_service_made_with_url_is_where_requests_go() {
    let a = echo("a").await;
    let gw = start(Config::ephemeral()).await;
    // Nothing listens on port 9 of the loopback.
    let (code, v) = post_json(
        &gw,
        "/services",
        json!({"name": "made", "url": "http://127.0.0.1:9/v1"}),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        [&v["protocol"], &v["host"], &v["port"], &v["path"]],
        [
            &json!("http"),
            &json!("127.0.0.1"),
            &json!(9),
            &json!("/v1")
        ],
        "{v}"
    );
    assert!(v.get("url").is_none(), "{v}");
    let route = json!({"paths": ["/made"]});
    assert_eq!(post_json(&gw, "/services/made/routes", route).await.0, 201);
    // Declared with a url in a document.
    let doc = json!({"_format_version": "3.0", "services": [
        {"name": "made", "url": "http://127.0.0.1:9/v1", "routes": [{"paths": ["/made"]}]},
        {"name": "declared", "url": "http://127.0.0.1:9/v2", "routes": [{"paths": ["/declared"]}]}]});
    for (service, path, want) in [
        ("made", "/made/x", "/v1/x"),
        ("declared", "/declared/y", "/v2/y"),
    ] {
        if service == "declared" {
            let (code, v) = post_json(&gw, "/config", doc.clone()).await;
            assert_eq!(code, 201, "{v}");
        }
        assert_eq!(proxied(&gw, path).await.0, 502, "{service}");
        let port = format!("port={}", a.port());
        let (code, v) = admin(
            &gw,
            "PATCH",
            &format!("/services/{service}"),
            &["-d", &port],
        )
        .await;
        assert_eq!((code, &v["port"]), (200, &json!(a.port())), "{v}");
        let (code, v) = proxied(&gw, path).await;
        assert_eq!((code, &v["uri"]), (200, &json!(want)), "{service}: {v}");
    }
    gw.stop().await;
}
