//! The real `bronze-registry` binary: help, configuration errors, `gc`.

use std::process::Command;

use reqwest::Method;

use crate::harness::Reg;

const BIN: &str = env!("CARGO_BIN_EXE_bronze-registry");

#[test]
fn help_and_bad_configuration() {
    let out = Command::new(BIN).arg("--help").output().expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for w in ["--addr", "--root", "--webhook", "gc"] {
        assert!(text.contains(w), "--help mentions {w}");
    }
    let out = Command::new(BIN)
        .args(["--webhook", "ftp://nope"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("webhooks"));
}

#[tokio::test]
async fn gc_dry_run_reports_through_the_running_registry() {
    let r = Reg::start().await;
    let (digest, _) = r.push_image("cli/app", "v1", b"to be orphaned").await;
    r.req(Method::DELETE, &format!("/v2/cli/app/manifests/{digest}"))
        .await
        .send()
        .await
        .expect("DELETE");
    let grpc = r.grpc.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["gc", "--dry-run", "--grace", "0s", "--grpc-addr", &grpc])
            .output()
            .expect("runs")
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&digest), "{text}");
    assert!(
        text.contains("would free 3 blobs"),
        "manifest, config and layer: {text}"
    );
    // Nothing was deleted: the orphaned layer is still there.
    let layer = crate::harness::sha256(b"to be orphaned");
    assert_eq!(
        r.get(&format!("/v2/cli/app/blobs/{layer}")).await.status(),
        200
    );
}

/// Threads of process `pid` (`Threads` of /proc).
fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads")
}

/// bcrypt checks of wrong passwords are capped (one core's worth fewer
/// than the machine has at once), as the gateway's: a flood of them queues
/// instead of taking a blocking thread each. Watched on the real binary's
/// thread count until the first of them is answered.
#[tokio::test]
async fn a_flood_of_wrong_passwords_takes_a_few_threads_not_one_each() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    // Cost 10: a check takes long enough that an uncapped flood overlaps.
    let hash = tokio::task::spawn_blocking(|| bcrypt::hash("right", 10).expect("bcrypt"))
        .await
        .expect("join");
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("carol:{hash}\n")).expect("htpasswd");
    let mut child = Command::new(BIN)
        .args(["--addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .arg("--root")
        .arg(dir.path().join("root"))
        .args(["--auth", "basic", "--htpasswd"])
        .arg(&htpasswd)
        .env("BRONZE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bronze-registry starts");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let child = Kill(child);
    let addr: std::net::SocketAddr = loop {
        let line = lines.next().expect("a log line").expect("stderr");
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["message"] == "registry serving"
        {
            break v["addr"].as_str().expect("addr").parse().expect("addr");
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v2/");
    // Warm up: what an answer needs besides bcrypt has its threads.
    for _ in 0..3 {
        let resp = client.get(&url).send().await.expect("GET");
        assert_eq!(resp.status(), 401);
    }
    let pid = child.0.id();
    let before = threads(pid);
    let flood = 12;
    let (first_tx, mut first) = tokio::sync::mpsc::channel(flood);
    for i in 0..flood {
        let (client, url, tx) = (client.clone(), url.clone(), first_tx.clone());
        tokio::spawn(async move {
            let resp = client
                .get(url)
                .basic_auth("carol", Some(format!("wrong{i}")))
                .send()
                .await;
            let _ = tx.send(resp.map(|r| r.status().as_u16())).await;
        });
    }
    let mut most = before;
    let answer = loop {
        most = most.max(threads(pid));
        tokio::select! {
            a = first.recv() => break a,
            () = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
        }
    };
    assert_eq!(answer.expect("an answer").expect("response"), 401);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    assert!(
        most - before < flood / 2,
        "{} threads more for {flood} wrong passwords on {cores} cores",
        most - before
    );
}
