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
