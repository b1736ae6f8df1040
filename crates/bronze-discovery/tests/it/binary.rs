//! The real `bronze-discovery` binary: help, configuration errors, SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_bronze-discovery");

#[test]
fn help_explains_every_flag() {
    let out = Command::new(BIN).arg("--help").output().expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--http-addr",
        "--dns-addr",
        "--grpc-addr",
        "--domain",
        "--recursor",
        "--data-dir",
        "BRONZE_DISCOVERY_DOMAIN",
    ] {
        assert!(text.contains(flag), "--help mentions {flag}");
    }
}

#[test]
fn bad_configuration_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("discovery.toml");
    std::fs::write(&file, "[dns]\ndomain = \"not a domain\"\n").expect("write");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dns.domain"), "{err}");
    let out = Command::new(BIN)
        .env("BRONZE_DISCOVERY_HTTP_ADDR", "nowhere")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "clap rejects the env value");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("BRONZE_DISCOVERY_HTTP_ADDR")
            || String::from_utf8_lossy(&out.stderr).contains("http-addr")
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let http = free_port();
    let mut child = Command::new(BIN)
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--dns-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Ready when it logs that it serves (structured JSON logs).
    let ready = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("logs within 30s");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
        if v["message"] == "discovery serving" {
            break v;
        }
    };
    assert_eq!(ready["level"], "INFO");
    bronze_runtime::install_crypto_provider();
    let r = reqwest::get(format!("http://127.0.0.1:{http}/healthz"))
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "exits within 20s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "{code:?}");
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("discovery stopped")),
        "{rest:?}"
    );
}

/// Whether the binary, started with `http` as its HTTP address, warns
/// that a listener is unguarded before it logs that it serves.
fn warns_at_start(http: &str) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(BIN)
        .args(["--http-addr", http])
        .args(["--grpc-addr", "127.0.0.1:0", "--dns-addr", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .arg("--data-dir")
        .arg(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut warned = false;
    for line in lines.map_while(Result::ok) {
        warned |= line.contains("listens beyond loopback");
        if line.contains("discovery serving") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    warned
}

/// Discovery has no ACLs: bound beyond loopback it says so at start-up,
/// and on loopback (the default) it does not.
#[test]
fn says_so_when_bound_beyond_loopback() {
    assert!(warns_at_start("0.0.0.0:0"));
    assert!(!warns_at_start("127.0.0.1:0"));
}
