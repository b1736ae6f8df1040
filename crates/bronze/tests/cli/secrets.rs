//! `bronze secret`, `bronze config`, `--secret`/`--config` and a stack's
//! `secrets:`/`configs:` against a real scheduler and agent on this
//! machine's engine: files mounted with their modes (secrets on a tmpfs),
//! a new version rolling the service, the value in no log line, no API
//! answer and not in clear in the store file; bad input refused with
//! nothing deployed.

use std::io::Write as _;
use std::process::Command;
use std::sync::{Mutex, Once};
use std::time::Duration;

use bronze_proto::scheduler::v1 as pb;

use crate::harness::{Agent, Cleanup, IMAGE, Out, Scheduler, eventually, fast, image, unique};

/// Every log line of the scheduler and agents in this process, at every
/// level.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Sink;

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_ansi(false)
            .with_writer(|| Sink)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().expect("logs")).into_owned()
}

/// A value no other run uses, so finding it means this test leaked it.
fn value(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{what}-{:x}-{}", nanos, std::process::id())
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("docker")
}

fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Running containers of a service.
fn running(service: &str) -> Vec<String> {
    text(&docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=bronze.service.name={service}"),
        "--filter",
        "status=running",
    ]))
    .split_whitespace()
    .map(str::to_string)
    .collect()
}

fn exec(container: &str, args: &[&str]) -> String {
    let mut all = vec!["exec", container, "/bin/busybox"];
    all.extend_from_slice(args);
    text(&docker(&all))
}

/// `bronze ARGS` with `input` on stdin (on a blocking thread: the
/// scheduler serves on this runtime meanwhile).
async fn with_stdin(s: &Scheduler, input: &str, args: &[&str]) -> Out {
    let cmd = crate::harness::command(&[("BRONZE_SCHEDULER", &s.url())], args);
    let input = input.to_string();
    tokio::task::spawn_blocking(move || feed(cmd, &input))
        .await
        .expect("join")
}

fn feed(mut cmd: Command, input: &str) -> Out {
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bronze runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("bronze ends");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: Duration::ZERO,
    }
}

#[tokio::test]
async fn secrets_and_configs_are_mounted_rolled_and_never_shown() {
    capture_logs();
    image().await;
    let data = tempfile::tempdir().expect("dir");
    let s = Scheduler::start(bronze_scheduler::Config {
        data_dir: data.path().display().to_string(),
        ..fast()
    })
    .await;
    let agent = Agent::start(&s, &unique("sec-node"), &[]).await;
    let service = unique("secweb");
    let _cleanup = Cleanup(vec![service.clone()]);
    let (secret, config) = (unique("db_pw"), unique("app.conf"));
    let (first, second) = (value("first"), value("second"));
    let conf = value("conf");
    let dir = tempfile::tempdir().expect("dir");
    let file = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).expect("write");
        p.display().to_string()
    };
    let (secret_file, config_file) = (file("secret", &first), file("config", &conf));
    s.bronze(&["secret", "create", &secret, &secret_file])
        .await
        .ok();
    s.bronze(&["config", "create", &config, &config_file])
        .await
        .ok();
    s.bronze(&[
        "service",
        "create",
        "--detach",
        "--name",
        &service,
        "--secret",
        &format!("source={secret},target=pw,uid=1000,gid=1001,mode=0400"),
        "--config",
        &format!("source={config},target=/etc/app.conf,mode=0440"),
        IMAGE,
    ])
    .await
    .ok();

    // Mounted with their owners and modes; the secret on a tmpfs.
    let c1 = eventually(Duration::from_secs(60), "a running task", || async {
        running(&service).into_iter().next()
    })
    .await;
    assert_eq!(
        exec(&c1, &["stat", "-c", "%a %u %g", "/run/secrets/pw"]),
        "400 1000 1001"
    );
    assert_eq!(exec(&c1, &["cat", "/run/secrets/pw"]), first);
    assert_eq!(
        exec(&c1, &["stat", "-c", "%a %u %g", "/etc/app.conf"]),
        "440 0 0"
    );
    assert_eq!(exec(&c1, &["cat", "/etc/app.conf"]), conf);
    let mounts = exec(&c1, &["cat", "/proc/mounts"]);
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(" /run/secrets/pw tmpfs ") && l.contains(" ro,")),
        "{mounts}"
    );
    // Read-only.
    let write = docker(&[
        "exec",
        &c1,
        "/bin/busybox",
        "sh",
        "-c",
        "echo x > /run/secrets/pw",
    ]);
    assert!(!write.status.success(), "the secret is writable");

    let pretty = s
        .bronze(&["service", "inspect", "--pretty", &service])
        .await;
    assert!(
        pretty.ok().contains(&format!(
            "Source = {secret} (version 1), Target = /run/secrets/pw, UID = 1000, GID = 1001, Mode = 0400"
        )),
        "{pretty:#?}"
    );

    // Removing a secret in use is refused, naming the service.
    let e = s.bronze(&["secret", "rm", &secret]).await;
    assert!(e.fails(1).contains(&service), "{e:#?}");

    // A new version (from stdin) rolls the service: a new task with the
    // new value, the old one gone.
    let out = with_stdin(&s, &second, &["secret", "update", &secret, "-"]).await;
    assert!(out.ok().contains("version 2"), "{out:#?}");
    let c2 = eventually(Duration::from_secs(60), "the service rolled", || async {
        let now = running(&service);
        (now.len() == 1 && now[0] != c1).then(|| now[0].clone())
    })
    .await;
    assert_eq!(exec(&c2, &["cat", "/run/secrets/pw"]), second);
    assert!(!running(&service).contains(&c1), "the old task is gone");

    // The value is in no API answer.
    let inspect = s.bronze(&["secret", "inspect", &secret]).await;
    let j = inspect.json();
    assert_eq!(j[0]["versions"].as_array().map(Vec::len), Some(2));
    assert_eq!(j[0]["services"][0], service.as_str());
    let config_inspect = s.bronze(&["config", "inspect", &config]).await;
    assert_eq!(
        config_inspect.json()[0]["data"],
        conf.as_str(),
        "configs are not secret"
    );
    let mut answers = vec![inspect.stdout.clone()];
    for args in [
        &["secret", "ls"][..],
        &["secret", "ls", "--output", "json"],
        &["service", "inspect", &service],
        &["service", "ls", "--output", "json"],
        &["service", "ps", &service],
    ] {
        answers.push(s.bronze(args).await.ok().to_string());
    }
    let mut api = pb::scheduler_client::SchedulerClient::connect(s.url())
        .await
        .expect("connect");
    let got = api
        .get_secret(pb::GetDataObjectRequest {
            name: secret.clone(),
        })
        .await
        .expect("get secret")
        .into_inner();
    let raw = format!(
        "{:?}{:?}{got:?}{:?}",
        api.get_service(pb::GetServiceRequest {
            service: service.clone()
        })
        .await
        .expect("get")
        .into_inner(),
        api.list_services(pb::ListServicesRequest::default())
            .await
            .expect("list")
            .into_inner(),
        api.list_secrets(pb::ListDataObjectsRequest::default())
            .await
            .expect("list secrets")
            .into_inner(),
    );
    assert!(got.data.is_empty(), "a secret's data is never returned");
    for v in [&first, &second] {
        for a in answers.iter().chain([&raw]) {
            assert!(!a.contains(v.as_str()), "the value is in an answer: {a}");
        }
    }

    // No log line carries it (logs were captured: the agent's join is
    // there).
    let logs = logs();
    assert!(logs.contains("agent joined"), "logs are captured");
    for v in [&first, &second] {
        assert!(!logs.contains(v.as_str()), "the value is in a log line");
    }

    // The store file does not hold it in clear; the key is a file of its
    // own, readable by its owner only.
    let store = std::fs::read(data.path().join("scheduler.redb")).expect("store file");
    assert!(store.windows(secret.len()).any(|w| w == secret.as_bytes()));
    for v in [&first, &second] {
        assert!(
            !store.windows(v.len()).any(|w| w == v.as_bytes()),
            "the value is in the store in clear"
        );
    }
    {
        use std::os::unix::fs::PermissionsExt as _;
        let key = std::fs::metadata(data.path().join("secrets.key")).expect("key file");
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
    }

    // Once the service is gone, the secret can go; the task's files go
    // with its container.
    s.bronze(&["service", "rm", &service]).await.ok();
    eventually(Duration::from_secs(60), "containers removed", || async {
        let all = text(&docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=bronze.service.name={service}"),
        ]));
        all.is_empty().then_some(())
    })
    .await;
    s.bronze(&["secret", "rm", &secret]).await.ok();
    s.bronze(&["config", "rm", &config]).await.ok();
    eventually(Duration::from_secs(30), "task files removed", || async {
        std::fs::read_dir(agent.files.path())
            .expect("files dir")
            .next()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        !s.bronze(&["secret", "ls", "-q"])
            .await
            .ok()
            .contains(&secret)
    );
}

#[tokio::test]
async fn a_wrong_secrets_key_stops_the_start() {
    let data = tempfile::tempdir().expect("dir");
    let config = || bronze_scheduler::Config {
        data_dir: data.path().display().to_string(),
        ..fast()
    };
    {
        let s = Scheduler::start(config()).await;
        let f = data.path().join("v");
        std::fs::write(&f, "value").expect("write");
        s.bronze(&["secret", "create", "k", &f.display().to_string()])
            .await
            .ok();
    }
    // Another key: refused at start, naming the key file (once the first
    // scheduler has let go of the store).
    let other = tempfile::tempdir().expect("dir");
    let wrong = other.path().join("k").display().to_string();
    let e = eventually(Duration::from_secs(30), "the store is free", || async {
        match bronze_scheduler::Server::bind(bronze_scheduler::Config {
            secrets_key_file: wrong.clone(),
            ..config()
        })
        .await
        {
            Err(e) if e.to_string().contains("does not open") => Some(e.to_string()),
            Err(_) => None,
            Ok(_) => panic!("a wrong key was accepted"),
        }
    })
    .await;
    assert!(e.contains("secrets_key_file") && e.contains(&wrong), "{e}");
    // The right key still opens it.
    eventually(
        Duration::from_secs(30),
        "the right key opens it",
        || async {
            bronze_scheduler::Server::bind(config())
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
}

#[tokio::test]
async fn bad_secrets_and_stacks_are_refused_with_nothing_deployed() {
    let s = Scheduler::start(fast()).await;
    let dir = tempfile::tempdir().expect("dir");
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 500 * 1024 + 1]).expect("write");
    let small = dir.path().join("small");
    std::fs::write(&small, "ok").expect("write");
    let big = big.display().to_string();
    let small = small.display().to_string();

    let e = s.bronze(&["secret", "create", "big", &big]).await;
    assert!(e.fails(1).contains("500 KiB"), "{e:#?}");
    let e = s.bronze(&["config", "create", "-bad", &small]).await;
    assert_eq!(e.code, 2, "clap takes -bad for a flag: {e:#?}");
    let e = s.bronze(&["secret", "create", "bad name", &small]).await;
    assert!(e.fails(1).contains("name: \"bad name\""), "{e:#?}");
    let e = s.bronze(&["secret", "update", "missing", &small]).await;
    assert!(e.fails(1).contains("no secret \"missing\""), "{e:#?}");
    let e = s
        .bronze(&[
            "service", "create", "--detach", "--name", "nosec", "--secret", "nope", IMAGE,
        ])
        .await;
    assert!(e.fails(1).contains("spec.secrets[0].source"), "{e:#?}");
    let e = s
        .bronze(&[
            "service",
            "create",
            "--detach",
            "--secret",
            "source=x,mode=0999",
            IMAGE,
        ])
        .await;
    assert_eq!(e.code, 2, "{e:#?}");
    assert!(e.stderr.contains("mode=0999"), "{e:#?}");
    assert!(
        s.bronze(&["secret", "ls", "-q"])
            .await
            .ok()
            .trim()
            .is_empty()
    );

    let stack = unique("badstack");
    let deploy = |body: String| {
        let f = dir.path().join(format!("{}.yml", unique("c")));
        std::fs::write(&f, body).expect("write");
        f.display().to_string()
    };
    let cases = [
        (
            format!(
                "services:\n  web:\n    image: {IMAGE}\n    secrets: [undefined]\nsecrets:\n  ok:\n    file: {small}\n"
            ),
            "undefined secret \"undefined\"",
        ),
        (
            format!("services:\n  web:\n    image: {IMAGE}\n    configs: [nope]\n"),
            "undefined config \"nope\"",
        ),
        (
            format!("services:\n  web:\n    image: {IMAGE}\n    networks: [nowhere]\n"),
            "nowhere",
        ),
        (
            format!(
                "services:\n  web:\n    image: {IMAGE}\n    secrets: [ok, big]\nsecrets:\n  ok:\n    file: {small}\n  big:\n    file: {big}\n"
            ),
            "500 KiB",
        ),
        (
            format!(
                "services:\n  web:\n    image: {IMAGE}\n    secrets: [ok]\nsecrets:\n  ok:\n    name: \"bad name\"\n    file: {small}\n"
            ),
            "bad name",
        ),
        (
            format!(
                "services:\n  web:\n    image: {IMAGE}\n    secrets: [ok, ext]\nsecrets:\n  ok:\n    file: {small}\n  ext:\n    external: true\n"
            ),
            "external secret \"ext\" does not exist",
        ),
    ];
    for (body, expected) in cases {
        let f = deploy(body);
        let e = s
            .bronze(&["stack", "deploy", "--detach", "-c", &f, &stack])
            .await;
        assert!(e.fails(1).contains(expected), "{expected}: {e:#?}");
        assert!(
            s.bronze(&["service", "ls", "-q"])
                .await
                .ok()
                .trim()
                .is_empty(),
            "nothing deployed ({expected})"
        );
        assert!(
            s.bronze(&["secret", "ls", "-q"])
                .await
                .ok()
                .trim()
                .is_empty(),
            "no secret created ({expected})"
        );
    }
}

#[tokio::test]
async fn a_stack_mounts_its_secrets_and_configs_and_rolls_on_a_change() {
    image().await;
    let s = Scheduler::start(fast()).await;
    let _agent = Agent::start(&s, &unique("stack-sec-node"), &[]).await;
    let stack = unique("secstack");
    let service = format!("{stack}_web");
    let _cleanup = Cleanup(vec![service.clone()]);
    let dir = tempfile::tempdir().expect("dir");
    let token = dir.path().join("token");
    let settings = dir.path().join("settings");
    std::fs::write(&token, "token-one").expect("write");
    std::fs::write(&settings, "a=1").expect("write");
    let compose = dir.path().join("compose.yml");
    std::fs::write(
        &compose,
        format!(
            "services:\n  web:\n    image: {IMAGE}\n    secrets:\n      - source: token\n        mode: 0400\n    configs:\n      - source: settings\n        target: /etc/settings\n        uid: \"100\"\nsecrets:\n  token:\n    file: ./token\nconfigs:\n  settings:\n    file: ./settings\n"
        ),
    )
    .expect("write");
    let file = compose.display().to_string();
    let out = s
        .bronze(&["stack", "deploy", "--detach", "-c", &file, &stack])
        .await;
    assert!(out.ok().contains(&format!("{stack}_token")), "{out:#?}");
    let c1 = eventually(Duration::from_secs(60), "a running task", || async {
        running(&service).into_iter().next()
    })
    .await;
    assert_eq!(exec(&c1, &["cat", "/run/secrets/token"]), "token-one");
    assert_eq!(
        exec(&c1, &["stat", "-c", "%a", "/run/secrets/token"]),
        "400"
    );
    assert_eq!(exec(&c1, &["cat", "/etc/settings"]), "a=1");
    assert_eq!(
        exec(&c1, &["stat", "-c", "%a %u", "/etc/settings"]),
        "444 100"
    );

    // The same files again change nothing.
    s.bronze(&["stack", "deploy", "--detach", "-c", &file, &stack])
        .await
        .ok();
    let svc = s.bronze(&["service", "inspect", &service]).await.json();
    assert_eq!(svc[0]["version"], 1, "{svc}");

    // A changed secret file: a new version, and the service rolls to it;
    // deploy follows that rollout as an update, and returns once done.
    std::fs::write(&token, "token-two").expect("write");
    let out = s.bronze(&["stack", "deploy", "-c", &file, &stack]).await;
    assert!(
        out.ok().contains(&format!("Updating service {service}")),
        "{out:#?}"
    );
    let c2 = eventually(Duration::from_secs(60), "the service rolled", || async {
        let now = running(&service);
        (now.len() == 1 && now[0] != c1).then(|| now[0].clone())
    })
    .await;
    assert_eq!(exec(&c2, &["cat", "/run/secrets/token"]), "token-two");

    // stack rm takes its secrets and configs too.
    let out = s.bronze(&["stack", "rm", &stack]).await;
    assert!(
        out.ok().contains(&format!("Removing secret {stack}_token")),
        "{out:#?}"
    );
    assert!(
        s.bronze(&["secret", "ls", "-q"])
            .await
            .ok()
            .trim()
            .is_empty()
    );
    assert!(
        s.bronze(&["config", "ls", "-q"])
            .await
            .ok()
            .trim()
            .is_empty()
    );
}

#[tokio::test]
async fn a_task_mounting_secrets_past_4_mib_in_all_runs() {
    image().await;
    let s = Scheduler::start(fast()).await;
    let _agent = Agent::start(&s, &unique("big-sec-node"), &[]).await;
    let service = unique("bigsec");
    let _cleanup = Cleanup(vec![service.clone()]);
    let dir = tempfile::tempdir().expect("dir");
    // Nine secrets of 500 KiB: one assignment of about 4.5 MiB, past
    // gRPC's default message limit.
    let mut args = vec![
        "service".to_string(),
        "create".into(),
        "--detach".into(),
        "--name".into(),
        service.clone(),
    ];
    for i in 0..9 {
        let name = unique(&format!("big{i}"));
        let f = dir.path().join(&name);
        std::fs::write(&f, vec![b'a' + i; 500 * 1024]).expect("write");
        s.bronze(&["secret", "create", &name, &f.display().to_string()])
            .await
            .ok();
        args.push("--secret".into());
        args.push(format!("source={name},target=s{i}"));
    }
    args.push(IMAGE.into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    s.bronze(&args).await.ok();
    let c = eventually(Duration::from_secs(60), "a running task", || async {
        running(&service).into_iter().next()
    })
    .await;
    assert_eq!(exec(&c, &["stat", "-c", "%s", "/run/secrets/s8"]), "512000");
}
