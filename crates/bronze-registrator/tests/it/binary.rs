//! The real `bronze-registrator` binary.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_bronze-registrator");

#[test]
fn help_explains_the_flags() {
    let out = Command::new(BIN).arg("--help").output().expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--internal",
        "--ip",
        "--explicit",
        "--tags",
        "--deregister",
        "--resync",
        "--cleanup",
        "--use-ip-from-label",
        "DISCOVERY",
    ] {
        assert!(text.contains(flag), "--help mentions {flag}");
    }
}

#[test]
fn bad_configuration_exits_64_naming_the_key() {
    let out = Command::new(BIN)
        .args(["-ttl", "1s", "--heartbeat", "1s"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ttl"));
}
