//! `bronze stack ...` with an agent on this machine's engine: compose
//! files written to a temp dir, deployed, redeployed, pruned, ordered by
//! depends_on, rolled back (by a failing health check, and for the whole
//! stack), removed; a file with an error changes nothing; `stack config`
//! prints the merged, interpolated file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    Agent, Cleanup, IMAGE, Scheduler, eventually, fast, image, node_status, unique,
};

/// Quick waits: a short verify.
const QUICK: [&str; 2] = ["--stable", "1s"];
/// No registry lookups (the test image is in no registry), unless a test
/// asks for them.
const NO_LOOKUP: [&str; 2] = ["--resolve-image", "never"];

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write compose file");
    p
}

/// A service of the test image: its httpd, one replica, quick to stop.
fn service(env: &str, extra: &str) -> String {
    format!(
        "    image: {IMAGE}
    stop_grace_period: 1s
    environment:
      V: \"{env}\"
{extra}"
    )
}

async fn deploy(s: &Scheduler, file: &Path, stack: &str, extra: &[&str]) -> crate::harness::Out {
    let file = file.display().to_string();
    let mut args = vec!["stack", "deploy", "-c", &file];
    args.extend(QUICK);
    if !extra.contains(&"--resolve-image") {
        args.extend(NO_LOOKUP);
    }
    args.extend(extra);
    args.push(stack);
    s.bronze(&args).await
}

async fn inspect(s: &Scheduler, name: &str) -> Value {
    s.bronze(&["service", "inspect", name]).await.json()[0].clone()
}

async fn tasks(s: &Scheduler, name: &str) -> Vec<Value> {
    let v = s
        .bronze(&["--output", "json", "service", "ps", name])
        .await
        .json();
    v.as_array().expect("tasks").clone()
}

/// A container's labels, as the engine has them.
fn container_labels(service: &str) -> Value {
    let out = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=bronze.service.name={service}"),
        ])
        .output()
        .expect("docker ps");
    let id = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("a running container of {service}"))
        .to_string();
    let out = Command::new("docker")
        .args(["inspect", "--format", "{{json .Config.Labels}}", &id])
        .output()
        .expect("docker inspect");
    serde_json::from_slice(&out.stdout).expect("labels JSON")
}

/// RFC 3339 times as the CLI prints them, comparable as text.
fn instant(v: &Value) -> String {
    let s = v.as_str().unwrap_or_else(|| panic!("a time: {v}"));
    if s.contains('.') {
        s.to_string()
    } else {
        s.replace('Z', ".000Z")
    }
}

async fn cluster(prefix: &str) -> (Scheduler, Agent) {
    image().await;
    let s = Scheduler::start(fast()).await;
    let host = unique(prefix);
    let agent = Agent::start(&s, &host, &[]).await;
    node_status(&s, &host, "Ready").await;
    (s, agent)
}

#[tokio::test]
async fn deploy_redeploy_prune_and_remove_a_stack() {
    let (s, _agent) = cluster("stk-host").await;
    let stack = unique("stk");
    let (web, api) = (format!("{stack}_web"), format!("{stack}_api"));
    let _cleanup = Cleanup(vec![web.clone(), api.clone()]);
    let dir = tempfile::tempdir().expect("dir");
    let both = format!(
        "services:\n  web:\n{}  api:\n{}",
        service(
            "1",
            "    labels:\n      team: shop\n    deploy:\n      labels:\n        tier: front\n"
        ),
        service("1", "")
    );
    let file = write(dir.path(), "stack.yml", &both);

    let out = deploy(&s, &file, &stack, &[]).await;
    let text = out.ok();
    assert!(
        text.contains(&format!("Creating service {web}")),
        "{out:#?}"
    );
    assert!(
        text.contains(&format!("Creating service {api}")),
        "{out:#?}"
    );
    assert!(
        text.trim_end()
            .ends_with("converged: 2 services, every task running"),
        "{out:#?}"
    );
    for name in [&web, &api] {
        let ts = tasks(&s, name).await;
        assert_eq!(ts.len(), 1, "{ts:?}");
        assert_eq!(ts[0]["status"]["state"], "running", "{ts:?}");
        assert_eq!(ts[0]["service_name"], name.as_str());
    }
    let svc = inspect(&s, &web).await;
    let labels = &svc["spec"]["labels"];
    assert_eq!(labels["com.docker.stack.namespace"], stack.as_str());
    assert_eq!(labels["com.docker.stack.image"], IMAGE);
    assert_eq!(labels["tier"], "front");
    let c = container_labels(&web);
    assert_eq!(c["com.docker.stack.namespace"], stack.as_str(), "{c}");
    assert_eq!(c["team"], "shop", "{c}");

    let ls = s.bronze(&["stack", "ls"]).await;
    assert!(
        ls.ok()
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == [stack.as_str(), "2"]),
        "{ls:#?}"
    );
    let services = s.bronze(&["stack", "services", &stack]).await;
    assert_eq!(services.ok().lines().count(), 3, "{services:#?}");
    assert!(services.stdout.contains("1/1"), "{services:#?}");
    let ps = s.bronze(&["stack", "ps", &stack]).await;
    assert!(ps.ok().contains(&format!("{web}.1")), "{ps:#?}");
    assert!(ps.stdout.contains(&format!("{api}.1")), "{ps:#?}");

    // The same file again: nothing is sent, no new version.
    let out = deploy(&s, &file, &stack, &[]).await;
    assert!(!out.ok().contains("Updating"), "{out:#?}");
    assert_eq!(inspect(&s, &web).await["version"], 1);
    assert_eq!(inspect(&s, &api).await["version"], 1);

    // A file with an error: nothing changes, the error names file, line
    // and key.
    let bad = write(
        dir.path(),
        "bad.yml",
        &format!(
            "services:\n  web:\n{}    deploy:\n      replicas: three\n",
            service("2", "")
        ),
    );
    let out = deploy(&s, &bad, &stack, &[]).await;
    let err = out.fails(1);
    assert!(
        err.contains("bad.yml:") && err.contains("replicas"),
        "{out:#?}"
    );
    assert_eq!(inspect(&s, &web).await["version"], 1);
    let services = s.bronze(&["stack", "services", "-q", &stack]).await;
    assert_eq!(
        services.ok().lines().count(),
        2,
        "api not pruned: {services:#?}"
    );

    // api left the file: kept with --no-prune, removed by default.
    let only_web = write(
        dir.path(),
        "web.yml",
        &format!(
            "services:\n  web:\n{}",
            service(
                "1",
                "    labels:\n      team: shop\n    deploy:\n      labels:\n        tier: front\n"
            )
        ),
    );
    let out = deploy(&s, &only_web, &stack, &["--no-prune"]).await;
    assert!(
        out.ok().contains(&format!("Keeping service {api}")),
        "{out:#?}"
    );
    assert_eq!(inspect(&s, &api).await["version"], 1);
    let out = deploy(&s, &only_web, &stack, &[]).await;
    assert!(
        out.ok().contains(&format!("Removing service {api}")),
        "{out:#?}"
    );
    let gone = s.bronze(&["service", "inspect", &api]).await;
    gone.fails(1);
    assert_eq!(inspect(&s, &web).await["version"], 1, "web untouched");

    let out = s.bronze(&["stack", "rm", &stack]).await;
    assert!(
        out.ok().contains(&format!("Removing service {web}")),
        "{out:#?}"
    );
    // The service goes once its tasks have stopped.
    eventually(Duration::from_secs(30), "the stack gone", || async {
        let ls = s.bronze(&["stack", "ls"]).await;
        (!ls.ok().contains(&stack)).then_some(())
    })
    .await;
    let out = s.bronze(&["stack", "ps", &stack]).await;
    assert!(out.fails(1).contains("nothing found in stack"), "{out:#?}");
}

#[tokio::test]
async fn depends_on_service_healthy_orders_creation() {
    let (s, _agent) = cluster("stk-dep").await;
    let stack = unique("dep");
    let (db, web) = (format!("{stack}_db"), format!("{stack}_web"));
    let _cleanup = Cleanup(vec![db.clone(), web.clone()]);
    let dir = tempfile::tempdir().expect("dir");
    // db becomes healthy only after a second or two; web must wait.
    let file = write(
        dir.path(),
        "stack.yml",
        &format!(
            "services:\n  web:\n{}  db:\n{}",
            service(
                "1",
                "    depends_on:\n      db:\n        condition: service_healthy\n"
            ),
            service(
                "1",
                "    entrypoint: [\"/bin/sh\", \"-c\"]
    command: [\"busybox sleep 2; busybox touch /tmp/ready; exec busybox httpd -f -p 8080\"]
    healthcheck:
      test: [\"CMD-SHELL\", \"busybox test -e /tmp/ready\"]
      interval: 1s
      timeout: 1s
      retries: 30
"
            )
        ),
    );
    // The image cannot be resolved to a digest (it is in no registry):
    // a warning, and the tag as written.
    let out = deploy(&s, &file, &stack, &["--resolve-image", "always"]).await;
    let text = out.ok();
    assert!(
        out.stderr.contains(&format!(
            "warning: image {IMAGE} could not be resolved to a digest"
        )),
        "{out:#?}"
    );
    assert_eq!(inspect(&s, &db).await["spec"]["image"], IMAGE);
    let created_db = text
        .find(&format!("Creating service {db}"))
        .expect("db created");
    let created_web = text
        .find(&format!("Creating service {web}"))
        .expect("web created");
    assert!(created_db < created_web, "{out:#?}");
    let db_up = tasks(&s, &db).await[0]["up_at"].clone();
    let web_created = inspect(&s, &web).await["created_at"].clone();
    assert!(
        instant(&web_created) >= instant(&db_up),
        "web created at {web_created}, db up at {db_up}"
    );
}

#[tokio::test]
async fn a_failed_update_rolls_back_and_the_stack_rolls_back_together() {
    let (s, _agent) = cluster("stk-rb").await;
    let stack = unique("rb");
    let (web, api) = (format!("{stack}_web"), format!("{stack}_api"));
    let _cleanup = Cleanup(vec![web.clone(), api.clone()]);
    let dir = tempfile::tempdir().expect("dir");
    let rollout = "    deploy:
      update_config:
        failure_action: rollback
        monitor: 1s
";
    let stack_file = |v: &str, check: &str| {
        format!(
            "services:\n  web:\n{}  api:\n{}",
            service(
                v,
                &format!(
                    "{rollout}    healthcheck:\n      test: [\"CMD-SHELL\", \"{check}\"]\n      interval: 1s\n      timeout: 1s\n      retries: 1\n"
                )
            ),
            service(v, "")
        )
    };
    let v1 = write(dir.path(), "v1.yml", &stack_file("1", "true"));
    deploy(&s, &v1, &stack, &[]).await.ok();

    // web's new version never passes its check: rolled back, named.
    let broken = write(dir.path(), "broken.yml", &stack_file("2", "exit 1"));
    let out = deploy(&s, &broken, &stack, &[]).await;
    let err = out.fails(1);
    assert!(err.contains(&format!("service {web}")), "{out:#?}");
    let svc = inspect(&s, &web).await;
    assert_eq!(svc["update_status"]["automatic"], true, "{svc:#}");
    assert_eq!(svc["spec"]["env"], serde_json::json!(["V=1"]), "{svc:#}");
    let running: Vec<Value> = tasks(&s, &web)
        .await
        .into_iter()
        .filter(|t| t["desired_state"] == "running")
        .collect();
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0]["status"]["state"], "running", "{running:?}");
    assert_eq!(
        inspect(&s, &api).await["spec"]["env"],
        serde_json::json!(["V=2"]),
        "api's update succeeded"
    );

    // A good v3, then the whole stack goes back together.
    let v3 = write(dir.path(), "v3.yml", &stack_file("3", "true"));
    deploy(&s, &v3, &stack, &[]).await.ok();
    let out = s
        .bronze(&["stack", "rollback", "--stable", "1s", &stack])
        .await;
    out.ok();
    assert_eq!(
        inspect(&s, &web).await["spec"]["env"],
        serde_json::json!(["V=1"])
    );
    assert_eq!(
        inspect(&s, &api).await["spec"]["env"],
        serde_json::json!(["V=2"])
    );
}

#[tokio::test]
async fn config_prints_the_merged_interpolated_file() {
    let dir = tempfile::tempdir().expect("dir");
    let base = write(
        dir.path(),
        "base.yml",
        "services:
  web:
    image: \"shop/web:${TAG:-1.0}\"
    environment:
      MODE: base
    deploy:
      replicas: 2
",
    );
    let over = write(
        dir.path(),
        "override.yml",
        "services:
  web:
    environment:
      MODE: ${MODE}
    deploy:
      replicas: 3
",
    );
    std::fs::write(dir.path().join(".env"), "MODE=prod\n").expect(".env");
    let out = crate::harness::bronze(
        &[("TAG", "2.1")],
        &[
            "stack",
            "config",
            "-c",
            &base.display().to_string(),
            "-c",
            &over.display().to_string(),
        ],
    )
    .await;
    assert_eq!(out.ok(), EXPECTED_CONFIG, "{out:#?}");
}

/// `docker stack config`'s canonical form: keys sorted, defaults spelled
/// out, the override's values and the variables in.
const EXPECTED_CONFIG: &str = "services:
  web:
    deploy:
      mode: replicated
      replicas: 3
    environment:
      MODE: prod
    image: \"shop/web:2.1\"
";

/// `docker ARGS` on a blocking thread (the registry serves on this
/// runtime meanwhile); asserts success.
async fn docker(args: &[&str]) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_string()).collect();
    let out = tokio::task::spawn_blocking(move || Command::new("docker").args(&args).output())
        .await
        .expect("join")
        .expect("docker runs");
    assert!(out.status.success(), "docker: {out:?}");
}

#[tokio::test]
async fn image_tags_are_pinned_to_their_registry_digest() {
    let (s, _agent) = cluster("stk-pin").await;
    let root = tempfile::tempdir().expect("dir");
    let registry = bronze_registry::Server::bind(bronze_registry::Config::ephemeral(
        &root.path().display().to_string(),
    ))
    .await
    .expect("registry binds");
    let reference = format!("{}/{}/httpd:v1", registry.addr(), unique("stk"));
    let shutdown = bronze_runtime::Shutdown::new();
    let sd = shutdown.clone();
    tokio::spawn(async move { registry.serve(sd).await.expect("registry serves") });
    docker(&["tag", IMAGE, &reference]).await;
    docker(&["push", &reference]).await;

    let stack = unique("pin");
    let web = format!("{stack}_web");
    let _cleanup = Cleanup(vec![web.clone()]);
    let dir = tempfile::tempdir().expect("dir");
    let file = write(
        dir.path(),
        "stack.yml",
        &format!("services:\n  web:\n    image: {reference}\n    stop_grace_period: 1s\n"),
    );
    let out = deploy(&s, &file, &stack, &["--resolve-image", "always"]).await;
    out.ok();
    assert!(!out.stderr.contains("warning"), "{out:#?}");
    let svc = inspect(&s, &web).await;
    let image = svc["spec"]["image"].as_str().expect("image").to_string();
    let digest = image
        .strip_prefix(&format!("{reference}@sha256:"))
        .unwrap_or_else(|| panic!("pinned: {image}"));
    assert_eq!(digest.len(), 64, "{image}");
    assert_eq!(
        svc["spec"]["labels"]["com.docker.stack.image"],
        reference.as_str()
    );
    assert_eq!(tasks(&s, &web).await[0]["image"], image.as_str());

    // Resolved again to the same digest: nothing to update.
    deploy(&s, &file, &stack, &["--resolve-image", "always"])
        .await
        .ok();
    assert_eq!(inspect(&s, &web).await["version"], 1);
    // `never` deploys the tag as written: a change, rolled out.
    deploy(&s, &file, &stack, &["--resolve-image", "never"])
        .await
        .ok();
    let svc = inspect(&s, &web).await;
    assert_eq!(svc["version"], 2);
    assert_eq!(svc["spec"]["image"], reference.as_str());
    shutdown.trigger();
    let _ = Command::new("docker").args(["rmi", &reference]).output();
}

/// A `bronze.autodeploy` deploy label that does not parse: the deploy
/// fails naming it, and nothing is deployed (not even the stack's valid
/// services).
#[tokio::test]
async fn an_autodeploy_label_that_does_not_parse_deploys_nothing() {
    let s = Scheduler::start(fast()).await;
    let stack = unique("autobad");
    let dir = tempfile::tempdir().expect("dir");
    let file = write(
        dir.path(),
        "stack.yml",
        &format!(
            "services:\n  web:\n{}  api:\n{}    deploy:\n      labels:\n        bronze.autodeploy: \"sometimes\"\n",
            service("1", ""),
            service("1", ""),
        ),
    );
    let out = deploy(&s, &file, &stack, &[]).await;
    let err = out.fails(1);
    assert!(
        err.contains("bronze.autodeploy") && err.contains("sometimes"),
        "{out:#?}"
    );
    let services = s.bronze(&["stack", "services", "-q", &stack]).await;
    assert!(
        services.fails(1).contains("nothing found in stack"),
        "{services:#?}"
    );
}
