//! The seeds' flow as one test, on the platform the README gives a
//! newcomer (`bronze dev`, every component in one process): an app image
//! built offline, `docker push`ed to Bronze's registry, deployed as a stack
//! with `bronze stack deploy` (a file with an error first: nothing
//! deployed; then 3 replicas, a health check, a routing label,
//! start-first updates that roll back), registered (`dig SRV` answers 3)
//! and served through the gateway; v2 rolled out under constant load
//! (bounded, loopback) with zero failed requests; a v3 whose health check
//! fails rolled back by itself, the deploy exiting non-zero, v2 still
//! served with zero failed requests; `bronze stack rm` leaves no
//! container, registration or route behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use xtask::clients::{Clients, Tally};
use xtask::dev::Dev;
use xtask::images::{SEEDS_STACK as STACK, build_app};

use crate::cluster::docker;
use crate::containers::images;

/// Stops `bronze dev` and removes what the test made, also on failure.
struct Teardown {
    dev: Option<Dev>,
    log: PathBuf,
    stack: String,
    images: Vec<String>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- bronze dev, last lines:");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        if let Some(mut dev) = self.dev.take() {
            let _ = dev.child.kill();
            let _ = dev.child.wait();
        }
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=com.docker.stack.namespace={}", self.stack))
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
        for image in &self.images {
            let _ = Command::new("docker").args(["rmi", image]).output();
        }
    }
}

fn write_stack(dir: &Path) -> PathBuf {
    let file = dir.join("stack.yml");
    std::fs::write(&file, STACK).expect("write stack file");
    file
}

async fn version(gateway: SocketAddr) -> Option<(u16, String)> {
    let r = reqwest::get(format!("http://{gateway}/app/version"))
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?.trim().to_string()))
}

/// Polls (bounded) until `f` gives `Some`.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..1200 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 120 s");
}

fn srv(dns: SocketAddr, name: &str) -> Vec<String> {
    let out = Command::new("dig")
        .arg(format!("@{}", dns.ip()))
        .args(["-p", &dns.port().to_string(), "+short", "+tcp", name, "SRV"])
        .output()
        .expect("dig runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_flow_from_push_to_rollback_to_removal() {
    bronze_runtime::install_crypto_provider();
    images().await;
    let bin =
        tokio::task::spawn_blocking(|| xtask::build_packages(&["bronze"], xtask::Profile::Debug))
            .await
            .expect("join")
            .expect("cargo build -p bronze");
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("dev.log");
    let dev = Dev::start(&bin, &log, &["--ephemeral"], dir.path()).expect("bronze dev starts");
    let registry = format!("127.0.0.1:{}", dev.registry.port());
    let stack = format!("seeds{}", std::process::id());
    let tag = |v: &str| format!("{registry}/seeds/app:{v}");
    let (gateway, dns) = (dev.gateway, dev.dns);
    let mut teardown = Teardown {
        dev: Some(dev),
        log,
        stack: stack.clone(),
        images: ["v1", "v2", "v3"].iter().map(|v| tag(v)).collect(),
    };
    let dev = teardown.dev.as_ref().expect("started");
    let file = write_stack(dir.path());
    let file = file.display().to_string();
    let deploy = |dev: &Dev, version: &str| {
        dev.bronze(
            &bin,
            &[
                ("VERSION", version.to_string()),
                ("REGISTRY", registry.clone()),
            ],
            &["stack", "deploy", "--stable", "1s", "-c", &file, &stack],
        )
        .expect("bronze runs")
    };

    // 1-2. Three versions built offline, each pushed to Bronze's registry.
    for (v, ready) in [("v1", true), ("v2", true), ("v3", false)] {
        build_app(&tag(v), v, ready)
            .await
            .expect("app image builds");
    }
    for v in ["v1", "v2", "v3"] {
        docker(&["push", &tag(v)]);
    }

    // A stack file with an error (a service naming a secret the file does
    // not define) deploys nothing, not even its valid service.
    let broken = dir.path().join("broken.yml");
    std::fs::write(
        &broken,
        format!(
            "{STACK}  worker:\n    image: ${{REGISTRY}}/seeds/app:${{VERSION}}\n    secrets:\n      - nope\n"
        ),
    )
    .expect("write");
    let out = dev
        .bronze(
            &bin,
            &[("VERSION", "v1".into()), ("REGISTRY", registry.clone())],
            &[
                "stack",
                "deploy",
                "-c",
                &broken.display().to_string(),
                &stack,
            ],
        )
        .expect("bronze runs");
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "a broken stack deploys: {said}");
    assert!(
        said.contains("worker") && said.contains("nope"),
        "the error names the service and the secret: {said}"
    );
    let listed = dev
        .bronze(&bin, &[], &["service", "ls"])
        .expect("bronze runs");
    assert!(listed.status.success());
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains(&stack),
        "no service of the broken stack: {}",
        String::from_utf8_lossy(&listed.stdout)
    );
    let containers = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=com.docker.stack.namespace={stack}"),
    ]);
    assert!(containers.is_empty(), "no container: {containers}");

    // 3-4. Deployed: 3 replicas registered, served through the gateway.
    let out = deploy(dev, "v1");
    assert!(
        out.status.success(),
        "deploy v1: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let service = format!("{stack}_app");
    let records = eventually("dig SRV answers 3 instances", || async {
        let name = format!("{service}.service.bronze");
        let records = tokio::task::spawn_blocking(move || srv(dns, &name))
            .await
            .expect("join");
        (records.len() == 3).then_some(records)
    })
    .await;
    assert_eq!(records.len(), 3, "{records:?}");
    eventually("the gateway serves v1", || async {
        (version(gateway).await == Some((200, "v1".into()))).then_some(())
    })
    .await;

    // 5. v2 under constant load: zero failed requests, v2 served.
    let url = format!("http://{gateway}/app/version");
    let load = Clients::start(&url, 2, 200_000);
    let out = deploy(dev, "v2");
    let Tally { ok, failed, last } = load.finish().await;
    assert!(
        out.status.success(),
        "deploy v2: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(failed, 0, "failed requests during the v2 rollout ({ok} ok)");
    assert!(ok > 0);
    assert_eq!(last, "v2");
    assert_eq!(version(gateway).await, Some((200, "v2".into())));

    // 6. v3 never passes its health check: rolled back by itself, the
    // deploy exits non-zero naming the service, v2 still served.
    let load = Clients::start(&url, 2, 200_000);
    let out = deploy(dev, "v3");
    let Tally { ok, failed, last } = load.finish().await;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "deploy v3 should fail: {said}");
    assert!(
        said.contains(&service),
        "the failure names {service}: {said}"
    );
    assert_eq!(
        failed, 0,
        "failed requests during the v3 rollback ({ok} ok)"
    );
    assert_eq!(last, "v2");
    assert_eq!(version(gateway).await, Some((200, "v2".into())));

    // 7. Removed: no container, registration or route left.
    let out = dev
        .bronze(&bin, &[], &["stack", "rm", &stack])
        .expect("bronze runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the stack's containers are gone", || async {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=com.docker.stack.namespace={stack}"))
            .output()
            .expect("docker ps");
        out.stdout.is_empty().then_some(())
    })
    .await;
    eventually("discovery forgets the instances", || async {
        let name = format!("{service}.service.bronze");
        let records = tokio::task::spawn_blocking(move || srv(dns, &name))
            .await
            .expect("join");
        records.is_empty().then_some(())
    })
    .await;
    eventually("the route is gone", || async {
        (version(gateway).await.map(|(s, _)| s) == Some(404)).then_some(())
    })
    .await;

    // bronze dev drains and exits 0 on SIGTERM.
    let mut dev = teardown.dev.take().expect("started");
    let code = dev
        .terminate(Duration::from_secs(60))
        .expect("bronze dev exits within 60 s of SIGTERM");
    assert!(code.success(), "{code:?}");
}
