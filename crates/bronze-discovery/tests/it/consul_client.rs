//! py-consul (PyPI), a real third-party Consul client, against Bronze.

use std::process::Command;

use serde_json::json;

use crate::harness::Running;

#[tokio::test]
async fn py_consul_works_unchanged() {
    let s = Running::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/consul_client.py");
    let port = s.http.port().to_string();
    let out =
        tokio::task::spawn_blocking(move || Command::new("python3").arg(script).arg(port).output())
            .await
            .expect("join")
            .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "py-consul script failed (pip install py-consul): {stderr}"
    );
    let seen: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("json from the script");
    assert_eq!(seen["self_dc"], "dc1");
    assert_eq!(seen["catalog_services"], json!({"web": ["v1", "v2"]}));
    assert_eq!(seen["catalog_index_is_int"], true);
    assert_eq!(
        seen["catalog_web"],
        json!([["web-1", "10.0.0.1", 8080], ["web-2", "10.0.0.2", 8081]])
    );
    assert_eq!(seen["passing"], json!(["web-1", "web-2"]));
    assert_eq!(seen["passing_checks"], json!(["passing"]));
    assert_eq!(seen["agent_services"], json!(["web-1", "web-2"]));
    assert_eq!(seen["blocking_woke"], true);
    assert_eq!(seen["after"], json!(["web-1", "web-2", "web-3"]));
    assert_eq!(seen["passing_after_fail"], json!(["web-2", "web-3"]));
    assert_eq!(seen["agent_services_after"], json!(["web-1", "web-3"]));
    assert_eq!(seen["nodes"], json!(["bronze-test"]));
    let bad = seen["bad_port"].as_str().expect("string");
    assert!(bad.contains("Port"), "{bad}");
    // And DNS agrees with what the client registered.
    let a = s.dig(&["web.service.bronze", "A", "+short"]).await;
    let mut ips: Vec<&str> = a.lines().collect();
    ips.sort();
    assert_eq!(ips, vec!["10.0.0.3"], "web-1 critical, web-2 deregistered");
    s.stop().await;
}
