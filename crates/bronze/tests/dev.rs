//! `bronze dev`: the platform in one process, as a newcomer starts it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bronze");

/// `bronze dev --ephemeral`, once it printed its listeners (the lines).
fn start_dev() -> (std::process::Child, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(["dev", "--ephemeral"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bronze dev starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.starts_with("ready")) {
        lines.push(
            rx.recv_timeout(Duration::from_secs(30))
                .expect("bronze dev prints its listeners"),
        );
    }
    (child, lines)
}

/// The address a listener line of `bronze dev` starting with `prefix` names.
fn listener(lines: &[String], prefix: &str) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{prefix} in {lines:?}"))
        .trim_start_matches("http://")
        .to_string()
}

/// SIGTERM, then the exit within 20 s.
fn stop_dev(mut child: std::process::Child) -> std::process::ExitStatus {
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(Instant::now() < deadline, "stops within 20s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn dev_prints_its_listeners_serves_and_stops_on_sigterm() {
    let (child, lines) = start_dev();
    let addr_of = |prefix: &str| listener(&lines, prefix);
    let http = addr_of("discovery http");
    let dns = addr_of("discovery dns");
    assert!(
        lines.iter().any(|l| l.starts_with("discovery grpc")),
        "{lines:?}"
    );

    bronze_runtime::install_crypto_provider();
    let r = reqwest::Client::new()
        .put(format!("http://{http}/v1/agent/service/register"))
        .body(r#"{"Name": "hello", "Address": "10.1.2.3", "Port": 80}"#)
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 200);
    let (ip, port) = dns.rsplit_once(':').expect("ip:port");
    let out = Command::new("dig")
        .args([
            &format!("@{ip}"),
            "-p",
            port,
            "+short",
            "hello.service.bronze",
        ])
        .output()
        .expect("dig");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10.1.2.3");

    // The registrator in the same process registers a container started now.
    assert!(
        lines.iter().any(|l| l.starts_with("registrator")),
        "{lines:?}"
    );
    xtask::images::build_busybox_httpd("bronze-test/busybox-httpd:latest")
        .await
        .expect("test image");
    let name = format!("bronze-dev-test-{}", std::process::id());
    let service = format!("devweb{}", std::process::id());
    let run = Command::new("docker")
        .args([
            "run",
            "-d",
            "--name",
            &name,
            "-p",
            "127.0.0.1::8080",
            "-e",
            &format!("SERVICE_NAME={service}"),
        ])
        .arg("bronze-test/busybox-httpd:latest")
        .output()
        .expect("docker run");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let srv = loop {
        let out = Command::new("dig")
            .args([
                &format!("@{ip}"),
                "-p",
                port,
                "+short",
                &format!("{service}.service.bronze"),
                "SRV",
            ])
            .output()
            .expect("dig");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !text.is_empty() || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    assert!(
        srv.ends_with("7f000001.addr.bronze."),
        "container registered by bronze dev: {srv:?}"
    );

    // The registry in the same process takes a docker push.
    let registry = addr_of("registry");
    let image = format!("{registry}/dev/busybox:1");
    let tag = Command::new("docker")
        .args(["tag", "bronze-test/busybox-httpd:latest", &image])
        .output()
        .expect("docker tag");
    assert!(tag.status.success());
    let push = Command::new("docker")
        .args(["push", &image])
        .output()
        .expect("docker push");
    let _ = Command::new("docker").args(["rmi", &image]).output();
    assert!(
        push.status.success(),
        "docker push to bronze dev: {}",
        String::from_utf8_lossy(&push.stderr)
    );
    let tags = reqwest::get(format!("http://{registry}/v2/dev/busybox/tags/list"))
        .await
        .expect("tags")
        .text()
        .await
        .expect("body");
    assert_eq!(tags, r#"{"name":"dev/busybox","tags":["1"]}"#);

    // The scheduler and agent in the same process run that image (pulled
    // back from the registry: the local tag is gone) as a service of two
    // replicas, which the registrator registers: two SRV answers.
    let scheduler = addr_of("scheduler");
    assert!(lines.iter().any(|l| l.starts_with("agent")), "{lines:?}");
    let svc = format!("devsvc{}", std::process::id());
    let create = Command::new(BIN)
        .args([
            "--scheduler",
            &format!("http://{scheduler}"),
            "service",
            "create",
            "--name",
            &svc,
            "--replicas",
            "2",
            "--publish",
            "8080",
            "--stable",
            "1s",
            &image,
        ])
        .output()
        .expect("bronze service create");
    assert!(
        create.status.success(),
        "service converges: {} {}",
        String::from_utf8_lossy(&create.stdout),
        String::from_utf8_lossy(&create.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let answers = loop {
        let out = Command::new("dig")
            .args([
                &format!("@{ip}"),
                "-p",
                port,
                "+short",
                &format!("{svc}.service.bronze"),
                "SRV",
            ])
            .output()
            .expect("dig");
        let n = String::from_utf8_lossy(&out.stdout).lines().count();
        if n == 2 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let rm = Command::new(BIN)
        .args([
            "--scheduler",
            &format!("http://{scheduler}"),
            "service",
            "rm",
            &svc,
        ])
        .output()
        .expect("bronze service rm");
    assert!(rm.status.success());
    assert_eq!(answers, 2, "two replicas registered by the registrator");
    // The agent removes the service's containers (before bronze dev stops).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=bronze.service.name={svc}"),
            ])
            .output()
            .expect("docker ps");
        if out.stdout.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "containers of a removed service are removed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("docker").args(["rmi", &image]).output();
    // The gateway answers (no routes configured yet: Kong's 404).
    let gateway = addr_of("gateway");
    let r = reqwest::get(format!("http://{gateway}/anything"))
        .await
        .expect("gateway");
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.text().await.expect("body"),
        r#"{"message":"no Route matched with those values"}"#
    );
    // The gateway resolves names with the in-process discovery DNS (SRV:
    // address and port): a service registered now is reachable through an
    // RFC 2782 name (`<svc>.service.bronze` alone would follow gRPC).
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("backend binds");
    let backend_port = backend.local_addr().expect("addr").port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = backend.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\nconnection: close\r\n\r\nhello via dns")
                    .await;
            });
        }
    });
    let svc = format!("devgw{}", std::process::id());
    let r = reqwest::Client::new()
        .put(format!("http://{http}/v1/agent/service/register"))
        .body(format!(
            r#"{{"Name": "{svc}", "Address": "127.0.0.1", "Port": {backend_port}}}"#
        ))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 200);
    let admin_api = lines
        .iter()
        .find(|l| l.starts_with("gateway "))
        .and_then(|l| l.rsplit("on http://").next())
        .and_then(|rest| rest.split(')').next())
        .expect("gateway admin address")
        .to_string();
    let r = reqwest::Client::new()
        .post(format!("http://{admin_api}/services"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("name=devgw&url=http://_{svc}._tcp.service.bronze/"))
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let r = reqwest::Client::new()
        .post(format!("http://{admin_api}/services/devgw/routes"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("paths[]=/devgw")
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        let r = reqwest::get(format!("http://{gateway}/devgw"))
            .await
            .expect("gateway");
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        if status == 200 || Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((status, body.as_str()), (200, "hello via dns"));

    let registry_root = std::env::temp_dir().join(format!("bronze-dev-registry-{}", child.id()));
    assert!(registry_root.exists(), "{registry_root:?}");

    let status = stop_dev(child);
    assert!(status.success(), "{status:?}");
    assert!(
        !registry_root.exists(),
        "the ephemeral registry's files are removed"
    );
}

/// Runs a command; its stdout, or the test fails with its stderr.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The digest `docker push` printed.
fn pushed_digest(out: &str) -> String {
    out.split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in {out}"))
        .to_string()
}

/// Deploy on push works in `bronze dev` as it starts: a service labelled
/// bronze.autodeploy=true rolls to a new digest pushed to the in-process
/// registry, and `service inspect` says so.
#[test]
fn dev_deploys_a_push_to_an_opted_in_service() {
    let (child, lines) = start_dev();
    let registry = listener(&lines, "registry");
    let scheduler = format!("http://{}", listener(&lines, "scheduler"));
    let id = std::process::id();
    let image = format!("{registry}/dev/auto{id}:latest");
    let local = format!("bronze-test/devauto{id}:v2");
    run(Command::new("docker").args(["tag", "bronze-test/busybox-httpd:latest", &image]));
    let d1 = pushed_digest(&run(Command::new("docker").args(["push", &image])));
    let svc = format!("devauto{id}");
    run(Command::new(BIN).args([
        "--scheduler",
        &scheduler,
        "service",
        "create",
        "--name",
        &svc,
        "--label",
        "bronze.autodeploy=true",
        "--stable",
        "1s",
        &image,
    ]));
    let mut build = Command::new("docker")
        .args(["build", "-q", "-t", &local, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("docker build");
    {
        use std::io::Write as _;
        let mut stdin = build.stdin.take().expect("stdin");
        stdin
            .write_all(b"FROM bronze-test/busybox-httpd:latest\nRUN echo v2 > /www/index.html\n")
            .expect("dockerfile");
    }
    assert!(build.wait().expect("build").success());
    run(Command::new("docker").args(["tag", &local, &image]));
    let digest = pushed_digest(&run(Command::new("docker").args(["push", &image])));
    let deadline = Instant::now() + Duration::from_secs(60);
    let pretty = loop {
        let out = run(Command::new(BIN).args([
            "--scheduler",
            &scheduler,
            "service",
            "inspect",
            "--pretty",
            &svc,
        ]));
        if out.contains("completed") && out.contains(&digest) || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    run(Command::new(BIN).args(["--scheduler", &scheduler, "service", "rm", &svc]));
    assert!(
        pretty.contains("Autodeploy:")
            && pretty.contains(&format!("dev/auto{id}:latest ({digest})")),
        "{pretty}"
    );
    // The agent removes the service's containers before bronze dev stops.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run(Command::new("docker").args([
        "ps",
        "-aq",
        "--filter",
        &format!("label=bronze.service.name={svc}"),
    ]))
    .is_empty()
    {
        assert!(Instant::now() < deadline, "containers removed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let repo = format!("{registry}/dev/auto{id}");
    let _ = Command::new("docker")
        .args([
            "rmi",
            &local,
            &image,
            &format!("{repo}@{d1}"),
            &format!("{repo}@{digest}"),
        ])
        .output();
    assert!(stop_dev(child).success());
}

#[test]
fn bad_dev_config_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dev.toml");
    std::fs::write(&file, "[discovery.dns]\ndomain = \"a b\"\n").expect("write");
    let out = Command::new(BIN)
        .args(["dev", "--config"])
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("discovery.dns.domain"), "{err}");
}

#[test]
fn help_lists_dev() {
    let out = Command::new(BIN).arg("--help").output().expect("runs");
    assert!(String::from_utf8_lossy(&out.stdout).contains("dev"));
}

/// `bronze` allocates with mimalloc, as the gateway binary does: asked to
/// show its statistics at exit (its own environment variable), it does.
#[test]
fn bronze_uses_the_gateways_allocator() {
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .env("MIMALLOC_SHOW_STATS", "1")
        .output()
        .expect("bronze runs");
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    assert!(stats.contains("pages") && stats.contains("peak"), "{stats}");
}

/// A newcomer's first failures say what to do: a port another program
/// holds names the fix (another port in a config file, or --ephemeral).
#[test]
fn a_taken_port_says_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dev.toml");
    std::fs::write(
        &file,
        format!("[discovery.http]\naddr = \"127.0.0.1:{port}\"\n"),
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["dev", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("What to do:"), "{err}");
    assert!(err.contains("--ephemeral"), "{err}");
}

/// An engine that does not answer is said before anything starts, with
/// where it was looked for and what to do.
#[test]
fn an_engine_that_does_not_answer_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("no-engine.sock");
    let out = Command::new(BIN)
        .args(["dev", "--ephemeral"])
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the Docker engine does not answer"), "{err}");
    assert!(err.contains(&socket.display().to_string()), "{err}");
    assert!(err.contains("systemctl start docker"), "{err}");
}
