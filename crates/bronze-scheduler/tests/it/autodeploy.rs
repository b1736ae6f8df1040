//! Deploy on push: a registry and a scheduler following it in this
//! process, an agent on the real engine, images built offline (FROM the
//! busybox test image) and pushed with the real `docker push`.

use std::process::{Command, Stdio};
use std::time::Duration;

use bronze_proto::scheduler::v1 as pb;
use bronze_runtime::Shutdown;

use crate::harness::{
    Agent, Cleanup, Client, IMAGE, Scheduler, agent_config, client, converged, eventually, fast,
    image, ready_nodes, remove_containers, running, spec, tasks, unique,
};

/// Runs the docker CLI off this runtime's threads (the registry serves the
/// push on them); its stdout, or the test fails with its stderr.
async fn docker_cli(args: Vec<String>, stdin: Option<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("docker");
        cmd.args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn().expect("docker");
        if let Some(input) = stdin {
            use std::io::Write as _;
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(input.as_bytes()).expect("write stdin");
        }
        let out = child.wait_with_output().expect("docker");
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .expect("join")
}

/// Builds an image from the test image with these Dockerfile lines;
/// returns its id.
async fn build(tag: &str, lines: &str) -> String {
    let dockerfile = format!("FROM {IMAGE}\n{lines}\n");
    docker_cli(
        vec![
            "build".into(),
            "-q".into(),
            "-t".into(),
            tag.into(),
            "-".into(),
        ],
        Some(dockerfile),
    )
    .await
    .trim()
    .to_string()
}

/// Tags `local` as `remote` and pushes it; returns the pushed digest.
async fn push(local: &str, remote: &str) -> String {
    docker_cli(vec!["tag".into(), local.into(), remote.into()], None).await;
    let out = docker_cli(vec!["push".into(), remote.into()], None).await;
    out.split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .filter(|d| d.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest in docker push's output: {out}"))
        .to_string()
}

/// What the service's running task serves at `/`.
async fn served(c: &mut Client, name: &str) -> Option<String> {
    let ts = tasks(c, name).await;
    let port = running(&ts)
        .first()?
        .status
        .as_ref()?
        .ports
        .first()?
        .published;
    let body = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(body.trim().to_string())
}

async fn service(c: &mut Client, name: &str) -> pb::Service {
    c.get_service(pb::GetServiceRequest {
        service: name.into(),
    })
    .await
    .expect("get")
    .into_inner()
    .service
    .expect("service")
}

fn update_state(s: &pb::Service) -> &str {
    s.update_status.as_ref().map_or("", |u| u.state.as_str())
}

/// One replica of `image` publishing the httpd's port, with a health-gated
/// update that rolls back.
fn web(name: &str, image: &str, label: Option<&str>) -> pb::ServiceSpec {
    let mut sp = spec(name, 1);
    sp.image = image.into();
    sp.ports.push(pb::PortConfig {
        target: 8080,
        published: 0,
        protocol: "tcp".into(),
    });
    if let Some(v) = label {
        sp.labels.insert("bronze.autodeploy".into(), v.into());
    }
    sp.update_config = Some(pb::UpdateConfig {
        parallelism: 1,
        monitor: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        failure_action: "rollback".into(),
        ..Default::default()
    });
    sp
}

/// A registry, a scheduler following it, one agent.
struct Platform {
    registry: std::net::SocketAddr,
    scheduler: Scheduler,
    agent: Agent,
    stop: Shutdown,
    _root: tempfile::TempDir,
}

impl Platform {
    async fn start(host: &str) -> Self {
        bronze_runtime::install_crypto_provider();
        image().await;
        let stop = Shutdown::new();
        let root = tempfile::tempdir().expect("dir");
        let (http, grpc) = crate::harness::registry(root.path(), &stop).await;
        let scheduler = Scheduler::start(bronze_scheduler::Config {
            registry: format!("http://{grpc}"),
            registry_names: vec![http.to_string()],
            ..fast()
        })
        .await;
        let agent = Agent::start(agent_config(&scheduler.url(), &scheduler.token, host, &[])).await;
        let mut c = client(scheduler.addr).await;
        ready_nodes(&mut c, 1).await;
        Self {
            registry: http,
            scheduler,
            agent,
            stop,
            _root: root,
        }
    }
}

impl Platform {
    /// Stops everything, removes the services' containers (nothing
    /// restarts them now) and the images given by reference.
    async fn finish(self, services: Vec<String>, images: Vec<String>) {
        let Platform {
            scheduler,
            agent,
            stop,
            ..
        } = self;
        scheduler.stop().await;
        agent.stop().await;
        stop.trigger();
        remove_containers(&crate::harness::docker().await, &services).await;
        let _ = tokio::task::spawn_blocking(move || {
            Command::new("docker").arg("rmi").args(&images).output()
        })
        .await;
    }
}

async fn metric(scheduler: std::net::SocketAddr, result: &str) -> u64 {
    let text = reqwest::get(format!("http://{scheduler}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let key = format!("bronze_scheduler_autodeploys_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

/// `docker push` of a new version of a tag rolls the opted-in service to
/// its digest (and not the other one); the same digest again does nothing;
/// a version whose health check fails is rolled back and reported.
#[tokio::test]
async fn a_push_rolls_opted_in_services_and_a_failing_health_gate_rolls_back() {
    let name = unique("autodeploy");
    let (on, off) = (format!("{name}-on"), format!("{name}-off"));
    let _cleanup = Cleanup(vec![on.clone(), off.clone()]);
    let p = Platform::start("autodeploy-host").await;
    let local = |v: &str| format!("bronze-test/{name}:{v}");
    let v2 = build(&local("v2"), "RUN echo v2 > /www/index.html").await;
    build(
        &local("v3"),
        "RUN echo v3 > /www/index.html\nHEALTHCHECK --interval=300ms --timeout=1s --retries=1 \
         CMD [\"/bin/busybox\", \"false\"]",
    )
    .await;
    let remote = format!("{}/team/{name}:latest", p.registry);
    let d1 = push(IMAGE, &remote).await;

    let mut c = client(p.scheduler.addr).await;
    for (svc, label) in [(&on, Some("true")), (&off, None)] {
        c.create_service(pb::CreateServiceRequest {
            spec: Some(web(svc, &remote, label)),
        })
        .await
        .expect("create");
        converged(&mut c, svc, 1).await;
    }
    assert_eq!(
        served(&mut c, &on).await.as_deref(),
        Some("hello from busybox")
    );

    // v2 under the same tag: the opted-in service rolls to its digest.
    let d2 = push(&local("v2"), &remote).await;
    assert_ne!(d1, d2);
    let pinned = format!("{remote}@{d2}");
    let s = eventually(
        Duration::from_secs(90),
        "the opted-in service runs v2",
        || {
            let (mut c, on, pinned) = (c.clone(), on.clone(), pinned.clone());
            async move {
                let s = service(&mut c, &on).await;
                let ts = tasks(&mut c, &on).await;
                let runs =
                    running(&ts).iter().all(|t| t.image == pinned) && running(&ts).len() == 1;
                (update_state(&s) == "completed"
                    && runs
                    && served(&mut c, &on).await.as_deref() == Some("v2"))
                .then_some(s)
            }
        },
    )
    .await;
    assert_eq!(s.spec.as_ref().expect("spec").image, pinned);
    let u = s.update_status.as_ref().expect("status");
    assert_eq!(u.autodeploy_digest, d2);
    assert_eq!(u.autodeploy_reference, format!("team/{name}:latest"));
    assert!(u.message.contains(&d2), "{}", u.message);
    // The container runs v2's image.
    let ts = tasks(&mut c, &on).await;
    let container = running(&ts)[0]
        .status
        .as_ref()
        .expect("status")
        .container_id
        .clone();
    let d = crate::harness::docker().await;
    let inspected = d
        .inspect_container(&container, None)
        .await
        .expect("inspect");
    assert_eq!(inspected.image.as_deref(), Some(v2.as_str()));
    // The other one keeps v1, untouched.
    let other = service(&mut c, &off).await;
    assert_eq!(other.version, 1);
    assert_eq!(other.spec.as_ref().expect("spec").image, remote);
    assert_eq!(
        served(&mut c, &off).await.as_deref(),
        Some("hello from busybox")
    );

    // The same digest again changes nothing (shown below: the next push
    // makes version 3, not 4).
    assert_eq!(push(&local("v2"), &remote).await, d2);

    // v3 fails its health check: rolled back, and said so.
    let d3 = push(&local("v3"), &remote).await;
    let s = eventually(Duration::from_secs(120), "v3 rolled back", || {
        let (mut c, on) = (c.clone(), on.clone());
        async move {
            let s = service(&mut c, &on).await;
            (update_state(&s) == "rollback_completed").then_some(s)
        }
    })
    .await;
    let u = s.update_status.as_ref().expect("status");
    assert!(u.automatic);
    assert_eq!(u.autodeploy_digest, d3);
    assert!(
        u.message.contains("rolled back") && u.message.contains(&d3),
        "{}",
        u.message
    );
    assert_eq!(s.spec.as_ref().expect("spec").image, pinned);
    assert_eq!((s.version, s.previous_version), (2, 3));
    converged(&mut c, &on, 1).await;
    assert_eq!(served(&mut c, &on).await.as_deref(), Some("v2"));
    assert_eq!(service(&mut c, &off).await.version, 1);
    let m = p.scheduler.addr;
    assert_eq!(metric(m, "started").await, 2);
    assert_eq!(metric(m, "completed").await, 1);
    assert_eq!(metric(m, "rolled_back").await, 1);

    let repo = format!("{}/team/{name}", p.registry);
    p.finish(
        vec![on, off],
        vec![
            local("v2"),
            local("v3"),
            remote.clone(),
            format!("{repo}@{d1}"),
            format!("{repo}@{d2}"),
            format!("{repo}@{d3}"),
        ],
    )
    .await;
}

/// The pattern forms: `glob:v1.*` and `semver:minor`. A new tag matching
/// rolls the service (which then names that tag); a tag that does not
/// match does not.
#[tokio::test]
async fn a_pattern_rolls_to_a_matching_new_tag_only() {
    let name = unique("autoglob");
    let semver = format!("{name}-semver");
    let _cleanup = Cleanup(vec![name.clone(), semver.clone()]);
    let p = Platform::start("autoglob-host").await;
    let local = format!("bronze-test/{name}:next");
    build(&local, "RUN echo next > /www/index.html").await;
    let repo = format!("{}/team/{name}", p.registry);
    let d0 = push(IMAGE, &format!("{repo}:v1.0")).await;
    push(IMAGE, &format!("{repo}:1.0.0")).await;
    let mut c = client(p.scheduler.addr).await;
    for (svc, tag, label) in [
        (&name, "v1.0", "glob:v1.*"),
        (&semver, "1.0.0", "semver:minor"),
    ] {
        c.create_service(pb::CreateServiceRequest {
            spec: Some(web(svc, &format!("{repo}:{tag}"), Some(label))),
        })
        .await
        .expect("create");
        converged(&mut c, svc, 1).await;
    }

    // v2.0 and 2.0.0 match neither; v1.1 and 1.1.0 match one each (pushed
    // after, so had an earlier push rolled a service, it would be at
    // version 3).
    push(&local, &format!("{repo}:v2.0")).await;
    push(&local, &format!("{repo}:2.0.0")).await;
    let d = push(&local, &format!("{repo}:v1.1")).await;
    push(&local, &format!("{repo}:1.1.0")).await;
    for (svc, tag) in [(&name, "v1.1"), (&semver, "1.1.0")] {
        let s = eventually(
            Duration::from_secs(90),
            "the service runs the new tag",
            || {
                let (mut c, svc) = (c.clone(), svc.clone());
                async move {
                    let s = service(&mut c, &svc).await;
                    (update_state(&s) == "completed"
                        && served(&mut c, &svc).await.as_deref() == Some("next"))
                    .then_some(s)
                }
            },
        )
        .await;
        assert_eq!(
            s.spec.as_ref().expect("spec").image,
            format!("{repo}:{tag}@{d}")
        );
        assert_eq!((s.version, s.previous_version), (2, 1), "{svc}");
        assert_eq!(
            s.update_status
                .as_ref()
                .expect("status")
                .autodeploy_reference,
            format!("team/{name}:{tag}")
        );
    }

    let mut images = vec![local, format!("{repo}@{d0}"), format!("{repo}@{d}")];
    for tag in ["v1.0", "1.0.0", "v2.0", "2.0.0", "v1.1", "1.1.0"] {
        images.push(format!("{repo}:{tag}"));
    }
    p.finish(vec![name, semver], images).await;
}

/// A label value that does not parse: InvalidArgument naming the label,
/// and nothing stored (create and update alike).
#[tokio::test]
async fn a_label_that_does_not_parse_is_refused_by_name() {
    let s = Scheduler::start(fast()).await;
    let mut c = client(s.addr).await;
    let name = unique("autobad");
    let image = "127.0.0.1:5000/team/app:latest";
    let e = c
        .create_service(pb::CreateServiceRequest {
            spec: Some(web(&name, image, Some("semver:sometimes"))),
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("labels.bronze.autodeploy")
            && e.message().contains("semver:sometimes"),
        "{}",
        e.message()
    );
    let listed = c
        .list_services(pb::ListServicesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.services.iter().all(|r| {
        r.service
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .map(|s| &s.name)
            != Some(&name)
    }));
    // An update with it: refused, the stored spec unchanged.
    c.create_service(pb::CreateServiceRequest {
        spec: Some(web(&name, image, Some("true"))),
    })
    .await
    .expect("create");
    let e = c
        .update_service(pb::UpdateServiceRequest {
            service: name.clone(),
            spec: Some(web(&name, image, Some("glob:v1/*"))),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("labels.bronze.autodeploy"),
        "{}",
        e.message()
    );
    let stored = service(&mut c, &name).await;
    assert_eq!(stored.version, 1);
    assert_eq!(
        stored
            .spec
            .expect("spec")
            .labels
            .get("bronze.autodeploy")
            .map(String::as_str),
        Some("true")
    );
    // An image that names no registry cannot follow one.
    let e = c
        .create_service(pb::CreateServiceRequest {
            spec: Some(web(&unique("autobad"), "busybox:latest", Some("true"))),
        })
        .await
        .expect_err("refused");
    assert!(
        e.message().contains("labels.bronze.autodeploy"),
        "{}",
        e.message()
    );
    s.stop().await;
}

/// A push while the scheduler was not following the registry (here: it was
/// stopped) is caught up when its link (re)opens: the tag of a pinned,
/// opted-in service is asked through the registry's HTTP API, and the
/// service rolls to what it points to now. With `registry_http`, the API
/// is asked there, whatever name the image carries (here `localhost:1`,
/// where nothing listens).
#[tokio::test]
async fn a_push_missed_while_not_following_is_caught_up_on_reconnect() {
    bronze_runtime::install_crypto_provider();
    image().await;
    let name = unique("autocatch");
    let stop = Shutdown::new();
    let root = tempfile::tempdir().expect("dir");
    let (http, grpc) = crate::harness::registry(root.path(), &stop).await;
    let local = format!("bronze-test/{name}:v2");
    build(&local, "RUN echo v2 > /www/index.html").await;
    let remote = format!("{http}/team/{name}:latest");
    let d1 = push(IMAGE, &remote).await;
    let data = tempfile::tempdir().expect("dir");
    let config = bronze_scheduler::Config {
        registry: format!("http://{grpc}"),
        registry_names: vec![http.to_string(), "localhost:1".into()],
        registry_http: format!("http://{http}"),
        data_dir: data.path().display().to_string(),
        ..fast()
    };
    let alias = format!("{name}-alias");
    let aliased = format!("localhost:1/team/{name}:latest");
    let s = Scheduler::start(config.clone()).await;
    let mut c = client(s.addr).await;
    for (svc, image) in [(&name, &remote), (&alias, &aliased)] {
        c.create_service(pb::CreateServiceRequest {
            spec: Some(web(svc, &format!("{image}@{d1}"), Some("true"))),
        })
        .await
        .expect("create");
    }
    s.stop().await;

    let d2 = push(&local, &remote).await;
    let s = Scheduler::start(config).await;
    let c = client(s.addr).await;
    for (svc, image) in [(&name, &remote), (&alias, &aliased)] {
        let found = eventually(Duration::from_secs(30), "caught up with v2", || {
            let (mut c, svc, want) = (c.clone(), svc.clone(), format!("{image}@{d2}"));
            async move {
                let found = service(&mut c, &svc).await;
                (found.spec.as_ref()?.image == want).then_some(found)
            }
        })
        .await;
        let u = found.update_status.expect("status");
        assert_eq!(u.autodeploy_digest, d2);
        assert_eq!(found.version, 2);
    }
    s.stop().await;
    stop.trigger();
    let repo = format!("{http}/team/{name}");
    let _ = tokio::task::spawn_blocking(move || {
        Command::new("docker")
            .args([
                "rmi",
                &local,
                &remote,
                &format!("{repo}@{d1}"),
                &format!("{repo}@{d2}"),
            ])
            .output()
    })
    .await;
}
