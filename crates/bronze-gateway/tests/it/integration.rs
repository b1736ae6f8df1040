//! The Admin API over the kinds the plugin, TLS and balancer work added,
//! driven as a Kong user's shell script drives Kong (curl with form
//! bodies), against the real gateway and an echo backend: consumers,
//! credentials, plugins at every scope, basic-auth passwords kept hashed.

use bronze_gateway::Config;
use serde_json::Value;

use super::admin::{Running, admin, start};
use super::{curl, echo, s};

/// `curl <args> http://proxy<path>`: status and body.
async fn proxied(gw: &Running, path: &str, args: &[&str]) -> (u16, String) {
    let mut all = s(args);
    all.push(format!("http://{}{path}", gw.addr));
    curl(all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kong_script_consumers_credentials_and_plugins_through_the_admin_api() {
    let backend = echo("a").await;
    let gw = start(Config::ephemeral()).await;
    let url = format!("url=http://{backend}");
    let (code, body) = admin(&gw, "POST", "/services", &["-d", "name=svc", "-d", &url]).await;
    assert_eq!(code, 201, "{body}");
    for (name, path) in [("locked", "/locked"), ("open", "/open")] {
        let (code, body) = admin(
            &gw,
            "POST",
            "/services/svc/routes",
            &[
                "-d",
                &format!("name={name}"),
                "-d",
                &format!("paths[]={path}"),
            ],
        )
        .await;
        assert_eq!(code, 201, "{body}");
    }
    for user in ["ann", "bob"] {
        let (code, body) = admin(
            &gw,
            "POST",
            "/consumers",
            &["-d", &format!("username={user}")],
        )
        .await;
        assert_eq!(code, 201, "{body}");
    }

    // key-auth: a credential without a key gets one generated; one with a key keeps it.
    let (code, cred) = admin(&gw, "POST", "/consumers/ann/key-auth", &[]).await;
    assert_eq!(code, 201, "{cred}");
    let ann_key = cred["key"].as_str().expect("generated key").to_string();
    assert_eq!(ann_key.len(), 32, "{cred}");
    assert!(ann_key.bytes().all(|b| b.is_ascii_hexdigit()), "{cred}");
    let (code, cred) = admin(
        &gw,
        "POST",
        "/consumers/bob/key-auth",
        &["-d", "key=bob-key"],
    )
    .await;
    assert_eq!(
        (code, cred["key"].as_str()),
        (201, Some("bob-key")),
        "{cred}"
    );
    let (code, list) = admin(&gw, "GET", "/consumers/ann/key-auth", &[]).await;
    assert_eq!(code, 200);
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list["data"][0]["key"], ann_key.as_str());

    // Before the plugin, the route is open.
    let (code, _) = proxied(&gw, "/locked", &[]).await;
    assert_eq!(code, 200);
    let (code, plugin) = admin(
        &gw,
        "POST",
        "/routes/locked/plugins",
        &["-d", "name=key-auth", "-d", "config.key_names=apikey"],
    )
    .await;
    assert_eq!(code, 201, "{plugin}");
    assert_eq!(plugin["config"]["key_names"], serde_json::json!(["apikey"]));
    assert_eq!(plugin["route"]["id"].as_str().map(str::len), Some(36));
    let (code, body) = proxied(&gw, "/locked", &[]).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(body, r#"{"message":"No API key found in request"}"#);
    let (code, body) = proxied(&gw, "/locked", &["-H", &format!("apikey: {ann_key}")]).await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("echo");
    assert_eq!(v["headers"]["x-consumer-username"], "ann");
    let (code, _) = proxied(&gw, "/open", &[]).await;
    assert_eq!(code, 200, "a plugin on one route leaves the other open");

    // The plugin is listed at /plugins and under its route.
    let (_, all) = admin(&gw, "GET", "/plugins", &[]).await;
    assert_eq!(all["data"].as_array().map(Vec::len), Some(1), "{all}");
    let (_, scoped) = admin(&gw, "GET", "/routes/locked/plugins", &[]).await;
    assert_eq!(scoped["data"][0]["id"], plugin["id"], "{scoped}");
    let (_, none) = admin(&gw, "GET", "/routes/open/plugins", &[]).await;
    assert_eq!(none["data"].as_array().map(Vec::len), Some(0), "{none}");

    // A plugin on a consumer: bob is turned away (request-termination), ann is not.
    let (code, body) = admin(
        &gw,
        "POST",
        "/consumers/bob/plugins",
        &[
            "-d",
            "name=request-termination",
            "-d",
            "config.status_code=418",
        ],
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, _) = proxied(&gw, "/locked", &["-H", "apikey: bob-key"]).await;
    assert_eq!(code, 418);
    let (code, _) = proxied(&gw, "/locked", &["-H", &format!("apikey: {ann_key}")]).await;
    assert_eq!(code, 200);

    // A plugin on a service: every route of it gets the header.
    let (code, body) = admin(
        &gw,
        "POST",
        "/services/svc/plugins",
        &[
            "-d",
            "name=response-transformer",
            "-d",
            "config.add.headers=x-svc:yes",
        ],
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, headers) = proxied(&gw, "/open", &["-D", "-", "-o", "/dev/null"]).await;
    assert_eq!(code, 200);
    assert!(
        headers.to_ascii_lowercase().contains("x-svc: yes"),
        "{headers}"
    );

    // Refused: an unknown plugin (naming `name`), a bad config field
    // (naming `config.<field>`); neither changes what runs.
    let (code, body) = admin(&gw, "POST", "/plugins", &["-d", "name=no-such-plugin"]).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["name"], "schema violation", "{body}");
    assert!(body["fields"].get("name").is_some(), "{body}");
    let (code, body) = admin(
        &gw,
        "POST",
        "/routes/open/plugins",
        &["-d", "name=rate-limiting", "-d", "config.minute=lots"],
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body["fields"]["config"].get("minute").is_some(), "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("config.minute")),
        "{body}"
    );
    let (_, all) = admin(&gw, "GET", "/plugins", &[]).await;
    assert_eq!(all["data"].as_array().map(Vec::len), Some(3), "{all}");
    let (code, _) = proxied(&gw, "/locked", &[]).await;
    assert_eq!(code, 401, "still locked after refused changes");

    // jwt: key and secret generated (and shown, as Kong shows them).
    let (code, jwt) = admin(&gw, "POST", "/consumers/ann/jwt", &[]).await;
    assert_eq!(code, 201, "{jwt}");
    assert_eq!(jwt["key"].as_str().map(str::len), Some(32), "{jwt}");
    assert_eq!(jwt["secret"].as_str().map(str::len), Some(32), "{jwt}");
    let (code, _) = admin(
        &gw,
        "GET",
        &format!(
            "/consumers/ann/jwt/{}",
            jwt["key"].as_str().unwrap_or_default()
        ),
        &[],
    )
    .await;
    assert_eq!(code, 200);

    // Deleting the plugin opens the route again.
    let id = plugin["id"].as_str().expect("id");
    let (code, _) = admin(&gw, "DELETE", &format!("/plugins/{id}"), &[]).await;
    assert_eq!(code, 204);
    let (code, _) = proxied(&gw, "/locked", &[]).await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_passwords_are_stored_hashed_and_a_reposted_config_still_works() {
    let backend = echo("a").await;
    let gw = start(Config::ephemeral()).await;
    let url = format!("url=http://{backend}");
    let (code, _) = admin(&gw, "POST", "/services", &["-d", "name=svc", "-d", &url]).await;
    assert_eq!(code, 201);
    let (code, _) = admin(
        &gw,
        "POST",
        "/services/svc/routes",
        &["-d", "name=r", "-d", "paths[]=/b"],
    )
    .await;
    assert_eq!(code, 201);
    let (code, _) = admin(&gw, "POST", "/routes/r/plugins", &["-d", "name=basic-auth"]).await;
    assert_eq!(code, 201);
    let (code, _) = admin(&gw, "POST", "/consumers", &["-d", "username=ann"]).await;
    assert_eq!(code, 201);
    let (code, cred) = admin(
        &gw,
        "POST",
        "/consumers/ann/basic-auth",
        &["-d", "username=ann", "-d", "password=open sesame"],
    )
    .await;
    assert_eq!(code, 201, "{cred}");
    let hashed = |v: &Value| {
        v.as_str()
            .is_some_and(|p| p.starts_with("$2b$") && !p.contains("open sesame"))
    };
    assert!(hashed(&cred["password"]), "the answer holds a hash: {cred}");
    let (_, got) = admin(&gw, "GET", "/consumers/ann/basic-auth/ann", &[]).await;
    assert!(hashed(&got["password"]), "GET holds a hash: {got}");
    let (_, config) = admin(&gw, "GET", "/config", &[]).await;
    assert!(!config.to_string().contains("open sesame"), "{config}");
    let creds = &config["basicauth_credentials"];
    assert!(
        hashed(&creds[0]["password"]),
        "GET /config holds a hash: {config}"
    );

    let (code, _) = proxied(&gw, "/b", &["-u", "ann:open sesame"]).await;
    assert_eq!(code, 200);
    let (code, _) = proxied(&gw, "/b", &["-u", "ann:wrong"]).await;
    assert_eq!(code, 401);

    // What GET /config gave, posted back, still lets the password in (the
    // hash is recognised as one, not hashed again).
    let (code, body) = admin(
        &gw,
        "POST",
        "/config",
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            &config.to_string(),
        ],
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, _) = proxied(&gw, "/b", &["-u", "ann:open sesame"]).await;
    assert_eq!(code, 200, "the re-posted configuration keeps the password");
    let (code, _) = proxied(&gw, "/b", &["-u", "ann:wrong"]).await;
    assert_eq!(code, 401);

    // A document with a password in clear: stored and shown hashed too.
    let mut doc = config.clone();
    doc["basicauth_credentials"][0]["password"] = "second try".into();
    let (code, body) = admin(
        &gw,
        "POST",
        "/config",
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            &doc.to_string(),
        ],
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (_, config) = admin(&gw, "GET", "/config", &[]).await;
    assert!(!config.to_string().contains("second try"), "{config}");
    assert!(
        hashed(&config["basicauth_credentials"][0]["password"]),
        "{config}"
    );
    let (_, list) = admin(&gw, "GET", "/basic-auths", &[]).await;
    assert!(hashed(&list["data"][0]["password"]), "{list}");
    let (code, _) = proxied(&gw, "/b", &["-u", "ann:second try"]).await;
    assert_eq!(code, 200);

    // PATCH with a new password in clear: hashed; the old one stops working.
    let (code, patched) = admin(
        &gw,
        "PATCH",
        "/consumers/ann/basic-auth/ann",
        &["-d", "password=third"],
    )
    .await;
    assert_eq!(code, 200, "{patched}");
    assert!(hashed(&patched["password"]), "{patched}");
    let (code, _) = proxied(&gw, "/b", &["-u", "ann:third"]).await;
    assert_eq!(code, 200);
    let (code, _) = proxied(&gw, "/b", &["-u", "ann:second try"]).await;
    assert_eq!(code, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_an_older_build_stored_in_clear_are_hashed_at_start() {
    use bronze_store::{Op, RedbStore, Store};
    let backend = echo("a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (svc, route, plugin, consumer, cred) = (
        "2b1a0b6e-0a8f-4c43-9a41-0c7d4b7f0001",
        "2b1a0b6e-0a8f-4c43-9a41-0c7d4b7f0002",
        "2b1a0b6e-0a8f-4c43-9a41-0c7d4b7f0003",
        "2b1a0b6e-0a8f-4c43-9a41-0c7d4b7f0004",
        "2b1a0b6e-0a8f-4c43-9a41-0c7d4b7f0005",
    );
    {
        let store = RedbStore::open(&dir.path().join("gateway.redb")).expect("store");
        let put = |ns: &str, id: &str, v: Value| Op::put(ns, id, v.to_string());
        store
            .apply(&[
                put(
                    "gateway.services",
                    svc,
                    serde_json::json!({"id": svc, "name": "s", "url": format!("http://{backend}")}),
                ),
                put(
                    "gateway.routes",
                    route,
                    serde_json::json!({"id": route, "paths": ["/b"], "service": {"id": svc}}),
                ),
                put(
                    "gateway.plugins",
                    plugin,
                    serde_json::json!({"id": plugin, "name": "basic-auth", "route": {"id": route}}),
                ),
                put(
                    "gateway.consumers",
                    consumer,
                    serde_json::json!({"id": consumer, "username": "ann"}),
                ),
                put(
                    "gateway.basicauth_credentials",
                    cred,
                    serde_json::json!({"id": cred, "username": "ann", "password": "in clear",
                        "consumer": {"id": consumer}}),
                ),
            ])
            .expect("write");
    }
    let mut config = Config::ephemeral();
    config.data_dir = dir.path().display().to_string();
    let gw = start(config).await;

    let (code, got) = admin(&gw, "GET", &format!("/basic-auths/{cred}"), &[]).await;
    assert_eq!(code, 200, "{got}");
    assert!(
        got["password"]
            .as_str()
            .is_some_and(|p| p.starts_with("$2b$")),
        "{got}"
    );
    let (_, config) = admin(&gw, "GET", "/config", &[]).await;
    assert!(!config.to_string().contains("in clear"), "{config}");
    let (code, _) = proxied(&gw, "/b", &["-u", "ann:in clear"]).await;
    assert_eq!(code, 200);
    let (code, _) = proxied(&gw, "/b", &["-u", "ann:wrong"]).await;
    assert_eq!(code, 401);
}
