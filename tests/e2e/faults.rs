//! Faults during the run, each component its own process on loopback as on
//! a host (not `bronze dev`, whose parts cannot be restarted alone):
//! - discovery restarted under load through the gateway: the registrator
//!   registers its instance again at its first heartbeat to the new
//!   discovery, and the gateway keeps serving the last known instance
//!   meanwhile (zero failed requests, no 503/404 burst);
//! - the registry killed in the middle of a `docker push` and started
//!   again: every layer the push had been told was stored is still there
//!   (the push again finds it), and both that image and one pushed before
//!   pull whole.
//!
//! (A stack file with an error deploying nothing is a step of the seeds'
//! flow, `seeds.rs`.)

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use xtask::clients::{Clients, Tally};

use crate::cluster::{docker, until};
use crate::containers::{free_port, images_and_workload};
use xtask::images::build_app;

/// A component's binary, run as its own process with its log in a file;
/// killed on drop (its log printed when the test failed).
struct Daemon {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn start(
        bin: &Path,
        dir: &Path,
        name: &'static str,
        args: &[String],
        envs: &[(&str, String)],
    ) -> Self {
        let mut d = Self {
            name,
            program: bin.join(name),
            args: args.to_vec(),
            envs: envs
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect(),
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        self.child = Some(
            Command::new(&self.program)
                .args(&self.args)
                .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("RUST_LOG", "info")
                .env("BRONZE_LOG_FORMAT", "json")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("{} starts: {e}", self.name)),
        );
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// Sends `signal` and waits (bounded) for the process to exit.
    async fn stop(&mut self, signal: &str) {
        self.signal(signal);
        let mut child = self.child.take().expect("running");
        let name = self.name;
        until(&format!("{name} exits after SIG{signal}"), || {
            let exited = child.try_wait().expect("wait").is_some();
            async move { exited.then_some(()) }
        })
        .await;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {}:\n{}", self.name, self.log());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Removes the test's containers and images, also on failure.
struct Cleanup {
    containers: Vec<String>,
    images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        for i in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
    }
}

fn loopback(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// `service`'s instances in discovery's Consul API, with whether each
/// passes every check.
async fn passing(http: SocketAddr, service: &str) -> Option<Vec<bool>> {
    let url = format!("http://{http}/v1/health/service/{service}");
    let entries: Vec<serde_json::Value> = reqwest::get(url).await.ok()?.json().await.ok()?;
    Some(
        entries
            .iter()
            .map(|e| {
                e["Checks"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().all(|c| c["Status"] == "passing"))
            })
            .collect(),
    )
}

/// One line of a Prometheus text page.
async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_restarted_under_load_costs_no_failed_request() {
    bronze_runtime::install_crypto_provider();
    let bin = images_and_workload().await;
    let id = std::process::id();
    let app = format!("bronze-test/faults-app:{id}");
    build_app(&app, "v1", true).await.expect("app image builds");
    let container = format!("bronze-e2e-faults-{id}");
    let _cleanup = Cleanup {
        containers: vec![container.clone()],
        images: vec![app.clone()],
    };
    let dir = tempfile::tempdir().expect("dir");
    let (http, grpc, dns) = (free_port(), free_port(), free_port());
    let discovery_args = vec![
        "--data-dir".into(),
        dir.path().join("discovery").display().to_string(),
        "--http-addr".into(),
        loopback(http),
        "--grpc-addr".into(),
        loopback(grpc),
        "--dns-addr".into(),
        loopback(dns),
    ];
    let mut discovery = Daemon::start(bin, dir.path(), "bronze-discovery", &discovery_args, &[]);
    let metrics: SocketAddr = loopback(free_port()).parse().expect("addr");
    let _registrator = Daemon::start(
        bin,
        dir.path(),
        "bronze-registrator",
        &[format!("http://{}", loopback(grpc))],
        &[
            ("BRONZE_REGISTRATOR_HOSTNAME", format!("faults{id}")),
            (
                "BRONZE_REGISTRATOR_ONLY_LABELS",
                format!("bronze.e2e.faults={id}"),
            ),
            ("BRONZE_REGISTRATOR_HEARTBEAT", "1s".into()),
            ("BRONZE_REGISTRATOR_TTL", "3s".into()),
            ("BRONZE_REGISTRATOR_METRICS_ADDR", metrics.to_string()),
        ],
    );
    let gateway_addr: SocketAddr = loopback(free_port()).parse().expect("addr");
    let gateway = Daemon::start(
        bin,
        dir.path(),
        "bronze-gateway",
        &[],
        &[
            ("BRONZE_GATEWAY_ADDR", gateway_addr.to_string()),
            ("BRONZE_GATEWAY_ADMIN_ADDR", loopback(free_port())),
            ("BRONZE_GATEWAY_DATA_DIR", String::new()),
            (
                "BRONZE_GATEWAY_DISCOVERY",
                format!("http://{}", loopback(grpc)),
            ),
        ],
    );
    let service = format!("faults{id}");
    docker(&[
        "run",
        "-d",
        "--name",
        &container,
        "-p",
        "127.0.0.1::8080",
        "-e",
        &format!("SERVICE_NAME={service}"),
        "-l",
        &format!("bronze.e2e.faults={id}"),
        "-l",
        "traefik.frontend.rule=PathPrefixStrip:/faults",
        &app,
    ]);
    let http: SocketAddr = loopback(http).parse().expect("addr");
    let url = format!("http://{gateway_addr}/faults/version");
    until("the gateway serves the registered container", || async {
        let r = reqwest::get(&url).await.ok()?;
        (r.status() == 200 && r.text().await.ok()?.trim() == "v1").then_some(())
    })
    .await;

    // Under constant load (two closed-loop clients, loopback), discovery
    // stops and starts again: it keeps no registrator's instance (soft
    // state), so until the registrator's next heartbeat it has none.
    let load = Clients::start(&url, 2, 1_000_000);
    const OK: &str = "bronze_registrator_heartbeats_total{result=\"ok\"}";
    discovery.stop("TERM").await;
    let before = metric(metrics, OK).await;
    discovery.spawn();
    let heartbeats = until("registered again in the new discovery", || async {
        let all = passing(http, &service).await?;
        let now = metric(metrics, OK).await;
        (all == vec![true]).then_some(now - before)
    })
    .await;
    // The heartbeat that found the new discovery registers the instance
    // again, and the report right after the registration passes it.
    assert!(
        heartbeats <= 2.0,
        "registered again and passing within the first heartbeat and its report ({heartbeats} accepted)"
    );
    // The gateway followed the new discovery (it kept the instance it
    // lacked, then heard of it again) and served throughout.
    until("the gateway follows the new discovery", || async {
        gateway.log().contains("discovery restarted").then_some(())
    })
    .await;
    until("the load keeps being served", || async {
        let r = reqwest::get(&url).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let Tally { ok, failed, last } = load.finish().await;
    assert_eq!(
        failed, 0,
        "failed requests while discovery restarted ({ok} ok)"
    );
    assert!(ok > 0);
    assert_eq!(last, "v1");
}

/// Random bytes (incompressible: a layer that takes a while to push).
fn random_file(path: &Path, megabytes: usize) {
    let mut seed = fastrand_seed();
    let mut bytes = vec![0u8; megabytes << 20];
    for chunk in bytes.chunks_mut(8) {
        // xorshift64*: fast and good enough for filler bytes.
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        let v = seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    std::fs::write(path, bytes).expect("write layer file");
}

fn fastrand_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    t | 1
}

/// The layer ids `docker push` printed as `<id>: <status>`.
fn layers_with(output: &[String], status: &str) -> Vec<String> {
    output
        .iter()
        .filter_map(|l| l.strip_suffix(&format!(": {status}")))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_killed_during_a_push_loses_nothing_it_acknowledged() {
    bronze_runtime::install_crypto_provider();
    let bin = images_and_workload().await;
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let registry_args = vec![
        "--addr".into(),
        loopback(port),
        "--grpc-addr".into(),
        loopback(free_port()),
        "--root".into(),
        dir.path().join("registry").display().to_string(),
    ];
    let mut registry = Daemon::start(bin, dir.path(), "bronze-registry", &registry_args, &[]);
    let id = std::process::id();
    let v1 = format!("127.0.0.1:{port}/faults/app:v1-{id}");
    let big = format!("127.0.0.1:{port}/faults/app:big-{id}");
    let _cleanup = Cleanup {
        containers: Vec::new(),
        images: vec![v1.clone(), big.clone()],
    };
    let v2 = format!("http://127.0.0.1:{port}/v2/");
    until("the registry answers", || async {
        let r = reqwest::get(&v2).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    build_app(&v1, "v1", true).await.expect("app image builds");
    docker(&["push", &v1]);

    // An image with four new layers of random bytes (16, 48, 48, 48 MiB).
    let context = dir.path().join("big");
    std::fs::create_dir(&context).expect("dir");
    let mut dockerfile = format!("FROM {v1}\n");
    for (i, mb) in [16, 48, 48, 48].iter().enumerate() {
        random_file(&context.join(format!("layer{i}")), *mb);
        dockerfile.push_str(&format!("COPY layer{i} /layer{i}\n"));
    }
    std::fs::write(context.join("Dockerfile"), dockerfile).expect("write");
    docker(&["build", "-q", "-t", &big, &context.display().to_string()]);

    // Killed (SIGKILL: a crash) as soon as the push is told one layer is
    // stored, then started again on the same port and storage.
    let mut push = Command::new("docker")
        .args(["push", &big])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker push");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = BufReader::new(push.stdout.take().expect("stdout"));
    let reader = std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut before_kill = Vec::new();
    loop {
        let line = tokio::task::block_in_place(|| rx.recv_timeout(Duration::from_secs(120)))
            .expect("docker push reports a stored layer within 120 s");
        let pushed = line.ends_with(": Pushed");
        before_kill.push(line);
        if pushed {
            break;
        }
    }
    registry.stop("KILL").await;
    // Everything the push had been told before the kill: what the registry
    // acknowledged.
    before_kill.extend(rx.try_iter());
    let acknowledged = layers_with(&before_kill, "Pushed");
    registry.spawn();
    until("the registry answers again", || async {
        let r = reqwest::get(&v2).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    // The interrupted push ends one way or the other (docker retries).
    let first = until("the interrupted push ends", || {
        let done = push.try_wait().expect("wait");
        async move { done }
    })
    .await;
    let _ = reader.join();
    eprintln!("interrupted push exited {first}; acknowledged before the kill: {acknowledged:?}");

    // Pushed again: every acknowledged layer is found stored.
    let out = Command::new("docker")
        .args(["push", &big])
        .output()
        .expect("docker push");
    let said: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        out.status.success(),
        "push again: {said:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found = layers_with(&said, "Layer already exists");
    for layer in &acknowledged {
        assert!(
            found.contains(layer),
            "layer {layer} was acknowledged before the kill but is not stored: {said:?}"
        );
    }

    // Both images pull whole (docker checks every digest).
    for image in [&v1, &big] {
        docker(&["rmi", image]);
        docker(&["pull", image]);
    }
    // And the largest layers hold the bytes written.
    for layer in ["layer2", "layer3"] {
        let inside = docker(&["run", "--rm", &big, "sha256sum", &format!("/{layer}")]);
        let here = Command::new("sha256sum")
            .arg(context.join(layer))
            .output()
            .expect("sha256sum");
        let digest = |s: &str| s.split_whitespace().next().unwrap_or_default().to_string();
        assert_eq!(
            digest(&inside),
            digest(&String::from_utf8_lossy(&here.stdout)),
            "{layer}"
        );
    }
}
