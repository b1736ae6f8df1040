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

/// The binary finds the engine through `DOCKER_HOST`: pointed at a unix
/// socket of this test's that forwards to the engine's socket (counting
/// the connections it carries), it registers a container, and its engine
/// traffic went through that socket.
#[tokio::test]
async fn docker_host_names_the_engine_the_binary_talks_to() {
    use crate::harness::{Container, Discovery, Spec, eventually, image, unique};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    image().await;
    let d = Discovery::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("engine.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
    let carried = Arc::new(AtomicUsize::new(0));
    let count = carried.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut engine) = tokio::net::UnixStream::connect("/var/run/docker.sock").await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
            });
        }
    });
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let node = unique("dockerhost");
    let _registrator = Kill(
        Command::new(BIN)
            .arg(format!("http://{}", d.grpc))
            .args(["--ip", "127.0.0.1", "--hostname", &node])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env("DOCKER_HOST", format!("unix://{}", socket.display()))
            .env_remove("BRONZE_REGISTRATOR_DOCKER_HOST")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("bronze-registrator starts"),
    );
    let service = unique("through-docker-host");
    let _c = Container::run(
        &unique("it-dockerhost"),
        Spec {
            env: vec![format!("SERVICE_NAME={service}")],
            ..Default::default()
        },
    )
    .await;
    eventually(
        std::time::Duration::from_secs(30),
        "registered by the binary",
        || async { d.srv(&service).await.len() == 1 },
    )
    .await;
    assert!(
        carried.load(Ordering::SeqCst) > 0,
        "no engine traffic through DOCKER_HOST"
    );
}
