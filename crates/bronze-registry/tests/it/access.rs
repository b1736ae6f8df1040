//! Access control and TLS with real clients: htpasswd basic auth, the
//! Docker token flow (`docker login`, push, anonymous pull of a public
//! namespace, refused pushes), skopeo with credentials, curl over HTTPS.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use bronze_registry::auth::{AuthConfig, Mode, Rule};
use reqwest::StatusCode;

use crate::clients::{multi_arch_layout, run};
use crate::harness::{Reg, error_code};

/// alice (`$2y$`, as `htpasswd -B` writes) and bob (`$2b$`).
fn htpasswd(dir: &Path) -> PathBuf {
    let alice = bcrypt::hash_with_result("alice-secret", 5)
        .expect("bcrypt")
        .format_for_version(bcrypt::Version::TwoY);
    let bob = bcrypt::hash("bob-secret", 5).expect("bcrypt");
    assert!(alice.starts_with("$2y$05$"));
    let path = dir.join("htpasswd");
    std::fs::write(&path, format!("# users\nalice:{alice}\nbob:{bob}\n")).expect("htpasswd");
    path
}

/// Everyone authenticated pulls `team/*`; alice also pushes and deletes
/// there and in `public/*`, and lists the catalog; anyone pulls `public/*`.
fn auth_config(mode: Mode, dir: &Path) -> AuthConfig {
    let rule = |users: &[&str], repos: &[&str], actions: &[&str]| Rule {
        users: users.iter().map(|s| s.to_string()).collect(),
        repositories: repos.iter().map(|s| s.to_string()).collect(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
    };
    AuthConfig {
        mode,
        htpasswd: htpasswd(dir).display().to_string(),
        anonymous_pull: vec!["public/*".into()],
        access: vec![
            rule(&["*"], &["team/*"], &["pull"]),
            rule(&["alice"], &["team/*", "public/*"], &["*"]),
            rule(&["alice"], &["*"], &["pull"]),
        ],
        ..AuthConfig::default()
    }
}

async fn start(mode: Mode) -> (Reg, tempfile::TempDir) {
    let secrets = tempfile::tempdir().expect("tempdir");
    let auth = auth_config(mode, secrets.path());
    let reg = Reg::start_with(tempfile::tempdir().expect("tempdir"), move |c| {
        c.auth = auth
    })
    .await;
    (reg, secrets)
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn challenge(r: &reqwest::Response) -> String {
    r.headers()
        .get("www-authenticate")
        .map(|v| v.to_str().expect("ascii").to_string())
        .unwrap_or_default()
}

/// Starts an upload as `auth` (an Authorization value, or none).
async fn start_upload(r: &Reg, repo: &str, auth: Option<&str>) -> reqwest::Response {
    let mut req = r.client.post(r.url(&format!("/v2/{repo}/blobs/uploads/")));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    req.send().await.expect("POST")
}

async fn get_as(r: &Reg, path: &str, auth: Option<&str>) -> reqwest::Response {
    let mut req = r.client.get(r.url(path));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    req.send().await.expect("GET")
}

#[tokio::test]
async fn basic_auth_challenges_checks_passwords_and_applies_rules() {
    let (r, _secrets) = start(Mode::Basic).await;
    let alice = basic("alice", "alice-secret");
    let bob = basic("bob", "bob-secret");

    let resp = get_as(&r, "/v2/", None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&resp).starts_with("Basic realm=\"bronze-registry\""),
        "{}",
        challenge(&resp)
    );
    assert_eq!(error_code(resp).await, "UNAUTHORIZED");
    let resp = get_as(&r, "/v2/", Some(&basic("alice", "wrong"))).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = get_as(&r, "/v2/", Some(&basic("mallory", "alice-secret"))).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Twice: the second check is served from the verified-password cache.
    for _ in 0..2 {
        assert_eq!(
            get_as(&r, "/v2/", Some(&alice)).await.status(),
            StatusCode::OK
        );
    }

    // alice pushes to team/* and public/*; bob may not.
    let alice_reg = r.with_header("authorization", &alice);
    let (team, _) = alice_reg.push_image("team/web", "1", b"team layer").await;
    alice_reg
        .push_image("public/tool", "1", b"public layer")
        .await;
    let resp = start_upload(&r, "team/web", Some(&bob)).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(resp).await, "DENIED");
    let resp = start_upload(&r, "public/tool", None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Pulls: bob may pull team/*, anyone may pull public/*, nobody
    // anonymous pulls team/*.
    let manifest = format!("/v2/team/web/manifests/{team}");
    assert_eq!(
        get_as(&r, &manifest, Some(&bob)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get_as(&r, &manifest, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_as(&r, "/v2/public/tool/manifests/1", None)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        get_as(&r, "/v2/public/tool/tags/list", None).await.status(),
        StatusCode::OK
    );

    // The catalog: alice (a rule on *) yes, bob no.
    assert_eq!(
        get_as(&r, "/v2/_catalog", Some(&alice)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get_as(&r, "/v2/_catalog", Some(&bob)).await.status(),
        StatusCode::FORBIDDEN
    );

    // Deleting needs the delete action.
    let del = |who: String| {
        r.client
            .delete(r.url(&format!("/v2/team/web/manifests/{team}")))
            .header("authorization", who)
            .send()
    };
    assert_eq!(
        del(bob.clone()).await.expect("DELETE").status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        del(alice.clone()).await.expect("DELETE").status(),
        StatusCode::ACCEPTED
    );

    // Cross-repository mount from a repository alice may pull from.
    let layer = crate::harness::sha256(b"public layer");
    let mount = |from: &str| {
        r.client
            .post(r.url(&format!(
                "/v2/team/web/blobs/uploads/?mount={layer}&from={from}"
            )))
            .header("authorization", alice.clone())
            .send()
    };
    assert_eq!(
        mount("public/tool").await.expect("POST").status(),
        StatusCode::CREATED
    );
}

/// The token's `access` claim.
fn access_of(token: &str) -> serde_json::Value {
    let body = token.split('.').nth(1).expect("JWT");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .expect("base64url");
    serde_json::from_slice::<serde_json::Value>(&json).expect("claims")["access"].clone()
}

async fn token(r: &Reg, auth: Option<&str>, scopes: &[&str]) -> reqwest::Response {
    let mut url = r.url("/token?service=bronze-registry");
    for s in scopes {
        url.push_str(&format!("&scope={s}"));
    }
    get_as_url(r, &url, auth).await
}

/// POST /token with a form body.
async fn post_token(r: &Reg, form: &[(&str, &str)]) -> reqwest::Response {
    r.client
        .post(r.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(form).expect("form"))
        .send()
        .await
        .expect("POST /token")
}

async fn get_as_url(r: &Reg, url: &str, auth: Option<&str>) -> reqwest::Response {
    let mut req = r.client.get(url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    req.send().await.expect("GET")
}

async fn bearer(r: &Reg, auth: Option<&str>, scopes: &[&str]) -> String {
    let resp = token(r, auth, scopes).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: serde_json::Value = resp.json().await.expect("token json");
    assert_eq!(v["token"], v["access_token"]);
    assert_eq!(v["expires_in"], 300);
    assert!(v["issued_at"].as_str().is_some_and(|s| s.ends_with('Z')));
    format!("Bearer {}", v["token"].as_str().expect("token"))
}

#[tokio::test]
async fn token_flow_grants_only_allowed_scopes() {
    let (r, secrets) = start(Mode::Token).await;
    let alice = basic("alice", "alice-secret");
    let bob = basic("bob", "bob-secret");

    // Challenges name the realm (on the address the client used), the
    // service, and the scope the request needs.
    let resp = get_as(&r, "/v2/", None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&resp),
        format!(
            "Bearer realm=\"http://{}/token\",service=\"bronze-registry\"",
            r.addr
        )
    );
    let resp = get_as(&r, "/v2/team/web/manifests/1", None).await;
    assert!(
        challenge(&resp).ends_with(",scope=\"repository:team/web:pull\""),
        "{}",
        challenge(&resp)
    );
    let resp = start_upload(&r, "team/web", None).await;
    assert!(challenge(&resp).ends_with(",scope=\"repository:team/web:pull,push\""));

    // Tokens carry what was asked for and allowed, nothing more.
    let t = bearer(&r, Some(&alice), &["repository:team/web:pull,push"]).await;
    assert_eq!(
        access_of(t.trim_start_matches("Bearer ")),
        serde_json::json!([{"type": "repository", "name": "team/web", "actions": ["pull", "push"]}])
    );
    let alice_reg = r.with_header("authorization", &t);
    let (digest, _) = alice_reg.push_image("team/web", "1", b"layer").await;
    let tb = bearer(&r, Some(&bob), &["repository:team/web:pull,push"]).await;
    assert_eq!(
        access_of(tb.trim_start_matches("Bearer ")),
        serde_json::json!([{"type": "repository", "name": "team/web", "actions": ["pull"]}])
    );
    assert_eq!(
        get_as(&r, &format!("/v2/team/web/manifests/{digest}"), Some(&tb))
            .await
            .status(),
        StatusCode::OK
    );
    let resp = start_upload(&r, "team/web", Some(&tb)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&resp).contains("error=\"insufficient_scope\""),
        "{}",
        challenge(&resp)
    );
    // A token for one repository does not open another.
    let resp = get_as(&r, "/v2/team/other/tags/list", Some(&tb)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // A mount from a repository the token does not cover is ignored: the
    // client gets an upload session (202) instead of the blob (201).
    let layer = crate::harness::sha256(b"layer");
    let mount = r
        .client
        .post(r.url(&format!(
            "/v2/team/web2/blobs/uploads/?mount={layer}&from=team/web"
        )))
        .header(
            "authorization",
            bearer(&r, Some(&alice), &["repository:team/web2:pull,push"]).await,
        )
        .send()
        .await
        .expect("POST");
    assert_eq!(mount.status(), StatusCode::ACCEPTED);
    let both = bearer(
        &r,
        Some(&alice),
        &["repository:team/web2:pull,push", "repository:team/web:pull"],
    )
    .await;
    let mount = r
        .client
        .post(r.url(&format!(
            "/v2/team/web2/blobs/uploads/?mount={layer}&from=team/web"
        )))
        .header("authorization", both)
        .send()
        .await
        .expect("POST");
    assert_eq!(mount.status(), StatusCode::CREATED);

    // Anonymous tokens: public/* pulls only.
    let anon = bearer(
        &r,
        None,
        &[
            "repository:public/tool:pull,push",
            "repository:team/web:pull",
        ],
    )
    .await;
    assert_eq!(
        access_of(anon.trim_start_matches("Bearer ")),
        serde_json::json!([{"type": "repository", "name": "public/tool", "actions": ["pull"]}])
    );
    // Catalog scope for alice only.
    let cat = bearer(&r, Some(&alice), &["registry:catalog:*"]).await;
    assert_eq!(
        get_as(&r, "/v2/_catalog", Some(&cat)).await.status(),
        StatusCode::OK
    );
    let cat_bob = bearer(&r, Some(&bob), &["registry:catalog:*"]).await;
    assert_eq!(
        get_as(&r, "/v2/_catalog", Some(&cat_bob)).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Wrong passwords get no token; neither does a wrong service.
    assert_eq!(
        token(&r, Some(&basic("alice", "nope")), &[]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let resp = get_as_url(&r, &r.url("/token?service=elsewhere"), Some(&alice)).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // A tampered token (alice's claims, bob's... any edit) is refused.
    let parts: Vec<&str> = t.trim_start_matches("Bearer ").split('.').collect();
    let forged_claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&serde_json::json!({
            "iss": "bronze-registry", "sub": "bob", "aud": "bronze-registry", "exp": u64::MAX / 2,
            "nbf": 0, "iat": 0, "jti": "x",
            "access": [{"type": "repository", "name": "team/web", "actions": ["push"]}]
        }))
        .expect("json"),
    );
    let forged = format!("Bearer {}.{forged_claims}.{}", parts[0], parts[2]);
    let resp = start_upload(&r, "team/web", Some(&forged)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&resp).contains("error=\"invalid_token\""));

    // OAuth2 password grant (POST), as containerd and others use it.
    let resp = post_token(
        &r,
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "alice-secret"),
            ("service", "bronze-registry"),
            ("scope", "repository:team/web:pull"),
            ("client_id", "test"),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: serde_json::Value = resp.json().await.expect("json");
    assert!(v["access_token"].as_str().is_some());
    let resp = post_token(&r, &[("grant_type", "client_credentials")]).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["error"], "unsupported_grant_type");

    // Refresh tokens (docker login's identity token): asked for offline,
    // redeemed for access tokens, refused once tampered with, when an
    // access token stands in for one, and after the password changes.
    let resp = get_as_url(
        &r,
        &r.url("/token?service=bronze-registry&offline_token=true"),
        Some(&alice),
    )
    .await;
    let v: serde_json::Value = resp.json().await.expect("json");
    let refresh = v["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_string();
    let anonymous = get_as_url(&r, &r.url("/token?offline_token=true"), None).await;
    let v: serde_json::Value = anonymous.json().await.expect("json");
    assert!(v.get("refresh_token").is_none(), "anonymous: {v}");
    let redeem = |token: String| {
        let r = &r;
        async move {
            post_token(
                r,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &token),
                    ("service", "bronze-registry"),
                    ("scope", "repository:team/web:push,pull"),
                    ("client_id", "docker"),
                ],
            )
            .await
        }
    };
    let resp = redeem(refresh.clone()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["refresh_token"], refresh.as_str());
    let pushing = format!("Bearer {}", v["access_token"].as_str().expect("token"));
    assert_eq!(
        start_upload(&r, "team/web", Some(&pushing)).await.status(),
        StatusCode::ACCEPTED
    );
    let access_token = t.trim_start_matches("Bearer ").to_string();
    for bad in [format!("{refresh}x"), access_token, "x".to_string()] {
        let resp = redeem(bad).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let v: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(v["error"], "invalid_grant");
    }
    // alice's password changes (the file is re-read when its mtime moves,
    // looked at most once a second).
    let path = secrets.path().join("htpasswd");
    let text = std::fs::read_to_string(&path).expect("htpasswd");
    let was = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    let new = bcrypt::hash("alice-new", 5).expect("bcrypt");
    let changed: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("alice:") {
                format!("alice:{new}")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&path, changed.join("\n") + "\n").expect("htpasswd");
    // A new mtime whatever the filesystem's granularity, without waiting
    // for the clock to move past it.
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(was + std::time::Duration::from_secs(2)))
        .expect("set mtime");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut refused = false;
    while !refused && std::time::Instant::now() < deadline {
        refused = redeem(refresh.clone()).await.status() == StatusCode::BAD_REQUEST;
        if !refused {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    assert!(
        refused,
        "a refresh token outlived the password it was issued for"
    );
    std::fs::write(&path, text).expect("htpasswd restored");

    // Tokens stay valid across a restart (the key lives in the root).
    let root = r.stop().await;
    let auth = auth_config(Mode::Token, secrets.path());
    let r = Reg::start_with(root, move |c| c.auth = auth).await;
    assert_eq!(
        get_as(&r, &format!("/v2/team/web/manifests/{digest}"), Some(&t))
            .await
            .status(),
        StatusCode::OK
    );
}

fn docker(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new("docker")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("docker runs");
    if let Some(s) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(s.as_bytes())
            .expect("stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("docker output")
}

fn ok(out: &Output) -> bool {
    out.status.success()
}

/// docker login, push, refused push, pull, anonymous pull of a public
/// namespace (token mode) and refused anonymous pull of a private one,
/// through the real engine, for both modes.
#[tokio::test]
async fn docker_login_push_and_pull_in_both_modes() {
    let source = "bronze-test/busybox-httpd:latest";
    xtask::images::build_busybox_httpd(source)
        .await
        .expect("workload image");
    for mode in [Mode::Token, Mode::Basic] {
        let (r, _secrets) = start(mode).await;
        let host = format!("127.0.0.1:{}", r.addr.port());
        tokio::task::spawn_blocking(move || {
            let cfg = tempfile::tempdir().expect("docker config");
            let cfg = cfg.path();
            let team = format!("{host}/team/busybox:1");
            let public = format!("{host}/public/busybox:1");
            run(Command::new("docker").args(["tag", source, &team]));
            run(Command::new("docker").args(["tag", source, &public]));

            // Not logged in: pushing fails.
            let out = docker(cfg, &["push", &team], None);
            assert!(!ok(&out), "{mode:?}: anonymous push succeeded");
            // A wrong password: login fails.
            let out = docker(
                cfg,
                &["login", "-u", "alice", "--password-stdin", &host],
                Some("wrong\n"),
            );
            assert!(!ok(&out), "{mode:?}: login with a wrong password succeeded");
            // bob may log in but not push to team/*.
            let out = docker(
                cfg,
                &["login", "-u", "bob", "--password-stdin", &host],
                Some("bob-secret\n"),
            );
            assert!(
                ok(&out),
                "{mode:?}: bob login: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let out = docker(cfg, &["push", &team], None);
            assert!(!ok(&out), "{mode:?}: bob pushed to team/*");
            // alice logs in and pushes to both.
            let out = docker(
                cfg,
                &["login", "-u", "alice", "--password-stdin", &host],
                Some("alice-secret\n"),
            );
            assert!(
                ok(&out) && String::from_utf8_lossy(&out.stdout).contains("Login Succeeded"),
                "{mode:?}: alice login: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if mode == Mode::Token {
                // docker keeps the refresh token, not the password.
                let saved = std::fs::read_to_string(cfg.join("config.json")).expect("config");
                let v: serde_json::Value = serde_json::from_str(&saved).expect("json");
                let entry = &v["auths"][host.as_str()];
                assert!(
                    entry["identitytoken"]
                        .as_str()
                        .is_some_and(|t| !t.is_empty()),
                    "{saved}"
                );
                let auth = entry["auth"].as_str().unwrap_or("");
                let auth = base64::engine::general_purpose::STANDARD
                    .decode(auth)
                    .unwrap_or_default();
                assert!(
                    !String::from_utf8_lossy(&auth).contains("alice-secret"),
                    "{saved}"
                );
            }
            for image in [&team, &public] {
                let out = docker(cfg, &["push", image], None);
                assert!(
                    ok(&out),
                    "{mode:?}: push {image}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            run(Command::new("docker").args(["rmi", &team, &public]));
            let out = docker(cfg, &["pull", &team], None);
            assert!(
                ok(&out),
                "{mode:?}: pull: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            run(Command::new("docker").args(["rmi", &team]));
            // Logged out: team/* does not pull; public/* does in token
            // mode (docker sends no request without credentials after a
            // Basic challenge, so basic mode has no anonymous docker pulls).
            let out = docker(cfg, &["logout", &host], None);
            assert!(ok(&out));
            if mode == Mode::Token {
                let out = docker(cfg, &["pull", &public], None);
                assert!(
                    ok(&out),
                    "anonymous pull of public/*: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let out = docker(cfg, &["pull", &team], None);
            assert!(!ok(&out), "{mode:?}: anonymous pull of team/* succeeded");
            let _ = Command::new("docker").args(["rmi", &public]).output();
        })
        .await
        .expect("docker");
    }
}

#[tokio::test]
async fn skopeo_with_credentials_over_tls() {
    let certs = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(certs.path());
    let secrets = tempfile::tempdir().expect("tempdir");
    let auth = auth_config(Mode::Token, secrets.path());
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let r = Reg::start_with(tempfile::tempdir().expect("tempdir"), move |cfg| {
        cfg.auth = auth;
        cfg.tls_cert = c;
        cfg.tls_key = k;
    })
    .await;
    let port = r.addr.port();
    // skopeo reads *.crt in --cert-dir as trusted roots.
    let trust = certs.path().join("trust");
    std::fs::create_dir_all(&trust).expect("dir");
    std::fs::copy(&cert, trust.join("ca.crt")).expect("ca.crt");
    let layout = tempfile::tempdir().expect("tempdir");
    let src = layout.path().join("src");
    multi_arch_layout(&src);
    tokio::task::spawn_blocking(move || {
        let dest = format!("docker://127.0.0.1:{port}/team/multi:1");
        // The registry's certificate is verified against the given root.
        let copy = |creds: &str| {
            Command::new("skopeo")
                .args(["copy", "--all", "--dest-creds", creds, "--dest-cert-dir"])
                .arg(&trust)
                .arg(format!("oci:{}:latest", src.display()))
                .arg(&dest)
                .output()
                .expect("skopeo")
        };
        let out = copy("bob:bob-secret");
        assert!(!out.status.success(), "bob pushed");
        let out = copy("alice:alice-secret");
        assert!(
            out.status.success(),
            "alice: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let raw = run(Command::new("skopeo")
            .args([
                "inspect",
                "--raw",
                "--creds",
                "bob:bob-secret",
                "--cert-dir",
            ])
            .arg(&trust)
            .arg(&dest));
        assert!(
            raw.contains("application/vnd.oci.image.index.v1+json"),
            "{raw}"
        );
        // Without the root, TLS verification fails.
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--creds", "bob:bob-secret", &dest])
            .output()
            .expect("skopeo");
        assert!(!out.status.success());
        // curl speaks HTTP/2 to it (ALPN) and gets the token challenge.
        let out = run(Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                "--cacert",
            ])
            .arg(&cert)
            .arg(format!("https://127.0.0.1:{port}/v2/")));
        assert_eq!(out, "2 401");
    })
    .await
    .expect("skopeo");
}

/// A self-signed certificate for 127.0.0.1 (openssl), and its key.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    (cert, key)
}

#[tokio::test]
async fn bad_tls_and_auth_configuration_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().display().to_string();
    let mut config = bronze_registry::Config::ephemeral(&root);
    config.tls_cert = dir.path().join("missing.pem").display().to_string();
    config.tls_key = dir.path().join("missing.key").display().to_string();
    let e = bronze_registry::Server::bind(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("tls_cert") && e.contains("missing.pem"), "{e}");

    let mut config = bronze_registry::Config::ephemeral(&root);
    config.tls_cert = "cert.pem".into();
    let e = bronze_registry::Server::bind(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("tls_key"), "{e}");

    let mut config = bronze_registry::Config::ephemeral(&root);
    let ht = dir.path().join("plain");
    std::fs::write(&ht, "alice:plaintext\n").expect("write");
    config.auth = AuthConfig {
        mode: Mode::Basic,
        htpasswd: ht.display().to_string(),
        ..AuthConfig::default()
    };
    let e = bronze_registry::Server::bind(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("plain:1") && e.contains("bcrypt"), "{e}");
}
