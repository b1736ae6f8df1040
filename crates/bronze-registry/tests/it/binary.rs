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

/// The binary serving on port 0 (run by `wrapper` when not empty, as
/// `strace`), killed when dropped.
struct Running {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Under a wrapper the binary is the wrapper's child, and a killed
        // strace leaves its tracee running: kill the children first.
        let id = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{id}/task/{id}/children"));
        for pid in children.iter().flat_map(|c| c.split_whitespace()) {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Starts it with `args` and waits for its "registry serving" line,
    /// which carries the bound address.
    fn start(wrapper: &[&str], args: &[&std::ffi::OsStr]) -> Self {
        use std::io::BufRead;
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .args(["--addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
            .args(args)
            .env("BRONZE_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("bronze-registry starts");
        let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!("bronze-registry ended before it served");
            };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "registry serving"
            {
                break v["addr"].as_str().expect("addr").parse().expect("addr");
            }
        };
        // The rest of the log goes nowhere, without blocking the binary.
        std::thread::spawn(move || lines.for_each(drop));
        Running { child, addr }
    }

    /// The binary's own process (under a wrapper: the wrapper's child).
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// bcrypt checks of wrong passwords are capped (one core's worth fewer
/// than the machine has at once), as the gateway's: a flood of them queues
/// instead of taking a blocking thread each. Watched on the real binary's
/// thread count until the first of them is answered.
#[tokio::test]
async fn a_flood_of_wrong_passwords_takes_a_few_threads_not_one_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Cost 10: a check takes long enough that an uncapped flood overlaps.
    let hash = tokio::task::spawn_blocking(|| bcrypt::hash("right", 10).expect("bcrypt"))
        .await
        .expect("join");
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("carol:{hash}\n")).expect("htpasswd");
    let root = dir.path().join("root");
    let registry = Running::start(
        &[],
        &[
            "--root".as_ref(),
            root.as_os_str(),
            "--auth".as_ref(),
            "basic".as_ref(),
            "--htpasswd".as_ref(),
            htpasswd.as_os_str(),
        ],
    );
    let client = reqwest::Client::new();
    let url = format!("http://{}/v2/", registry.addr);
    // Warm up: what an answer needs besides bcrypt has its threads.
    for _ in 0..3 {
        let resp = client.get(&url).send().await.expect("GET");
        assert_eq!(resp.status(), 401);
    }
    let pid = registry.pid();
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

/// A push that creates a new blob fan-out directory (`blobs/sha256/<2
/// hex>`, and `blobs/sha256` itself for the first blob) fsyncs the parent
/// of each new directory, then the directory after the rename: traced
/// with strace on the real binary.
#[tokio::test]
async fn a_new_blob_directory_is_fsynced_in_its_parent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("trace");
    let root = dir.path().join("root");
    let trace_arg = trace.display().to_string();
    let registry = Running::start(
        &[
            "strace",
            "-f",
            "-y",
            "-qq",
            "-e",
            "trace=mkdir,mkdirat,fsync,rename,renameat,renameat2",
            "-o",
            &trace_arg,
        ],
        &["--root".as_ref(), root.as_os_str()],
    );
    let data = b"a layer in a new directory";
    let digest = crate::harness::sha256(data);
    let resp = reqwest::Client::new()
        .post(format!(
            "http://{}/v2/durable/app/blobs/uploads/?digest={digest}",
            registry.addr
        ))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .expect("push");
    assert_eq!(resp.status(), 201);
    drop(registry);
    let hex = digest.trim_start_matches("sha256:");
    let blobs = root.join("blobs");
    let (alg, fan) = (blobs.join("sha256"), blobs.join("sha256").join(&hex[..2]));
    let text = std::fs::read_to_string(&trace).expect("trace");
    // Each line: "<pid> <call>(...) = <result>".
    let position = |what: &dyn Fn(&str) -> bool| text.lines().position(what);
    let mkdir = |d: &std::path::Path| {
        let quoted = format!("\"{}\"", d.display());
        position(&|l: &str| l.contains("mkdir") && l.contains(&quoted) && l.ends_with("= 0"))
    };
    let fsync = |d: &std::path::Path| {
        let fd = format!("<{}>)", d.display());
        position(&|l: &str| l.contains("fsync(") && l.contains(&fd))
    };
    let made_alg = mkdir(&alg).expect("blobs/sha256 created");
    let made_fan = mkdir(&fan).expect("the fan-out directory created");
    let synced_blobs = fsync(&blobs).unwrap_or_else(|| panic!("blobs/ never fsync'd:\n{text}"));
    let synced_alg = fsync(&alg).unwrap_or_else(|| panic!("blobs/sha256 never fsync'd:\n{text}"));
    let synced_fan = fsync(&fan).unwrap_or_else(|| panic!("the fan-out never fsync'd:\n{text}"));
    assert!(synced_blobs > made_alg && synced_alg > made_fan && synced_fan > made_fan);
}

/// Whether the binary, started with `args`, warns that a listener is
/// unguarded before it logs that it serves.
fn warns_at_start(args: &[&str]) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(BIN)
        .args(["--grpc-addr", "127.0.0.1:0", "--log-format", "json"])
        .args(args)
        .arg("--root")
        .arg(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut warned = false;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
        warned |= line.contains("listens beyond loopback");
        if line.contains("registry serving") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    warned
}

/// With no authentication (the default), the registry bound beyond
/// loopback says so at start-up; on loopback it does not.
#[test]
fn says_so_when_bound_beyond_loopback_without_auth() {
    assert!(warns_at_start(&["--addr", "0.0.0.0:0"]));
    assert!(!warns_at_start(&["--addr", "127.0.0.1:0"]));
}
