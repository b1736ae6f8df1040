//! `bronze service ...` against a scheduler with no node: specs, tables,
//! JSON and errors (tasks stay pending, which is what some tests want).

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Scheduler, bronze, unique};

#[tokio::test]
async fn create_with_many_flags_round_trips_into_the_spec() {
    let s = Scheduler::start(bronze_scheduler::Config::ephemeral()).await;
    let name = unique("full");
    let dir = tempfile::tempdir().expect("dir");
    let env_file = dir.path().join("env");
    std::fs::write(&env_file, "# defaults\nFROM_FILE=1\nSHARED=file\n\n").expect("write");
    let out = s
        .bronze(&[
            "service",
            "create",
            "--detach",
            "--name",
            &name,
            "--replicas",
            "3",
            "-e",
            "A=1",
            "--env",
            "SHARED=flag",
            "--env-file",
            &env_file.display().to_string(),
            "--label",
            "team=shop",
            "--container-label",
            "SERVICE_TAGS=web",
            "-p",
            "8080:80",
            "--publish",
            "published=5353,target=53,protocol=udp",
            "-p",
            "9000",
            "--mount",
            "type=volume,source=cache,target=/cache",
            "--mount",
            "type=bind,src=/srv,dst=/data,readonly",
            "--health-cmd",
            "wget -q -O- localhost:80/health",
            "--health-interval",
            "5s",
            "--health-timeout",
            "2s",
            "--health-retries",
            "4",
            "--health-start-period",
            "1m30s",
            "--stop-signal",
            "quit",
            "--stop-grace-period",
            "20s",
            "-u",
            "nobody",
            "-w",
            "/work",
            "--entrypoint",
            "/bin/busybox sh -c",
            "--constraint",
            "node.labels.zone==eu",
            "--constraint",
            "node.role!=manager",
            "--placement-pref",
            "spread=node.labels.rack",
            "--replicas-max-per-node",
            "2",
            "--reserve-cpu",
            "0.25",
            "--reserve-memory",
            "64M",
            "--limit-cpu",
            "1.5",
            "--limit-memory",
            "1.5g",
            "--limit-pids",
            "100",
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "2s",
            "--restart-max-attempts",
            "3",
            "--restart-window",
            "1m",
            "--update-parallelism",
            "2",
            "--update-delay",
            "10s",
            "--update-order",
            "start-first",
            "--rollback-parallelism",
            "0",
            "--rollback-delay",
            "1s",
            "--rollback-order",
            "stop-first",
            "busybox:1.36",
            "echo hello; exec sleep 1000",
        ])
        .await;
    let id = out.ok().trim().to_string();
    assert_eq!(id.len(), 25, "create prints the id: {out:#?}");

    let inspected = s.bronze(&["service", "inspect", &name]).await.json();
    let svc = &inspected[0];
    assert_eq!(svc["id"], id.as_str());
    assert_eq!(svc["name"], name.as_str());
    assert_eq!(svc["version"], 1);
    let spec = &svc["spec"];
    let expected = serde_json::json!({
        "name": name,
        "image": "busybox:1.36",
        "command": ["/bin/busybox", "sh", "-c"],
        "args": ["echo hello; exec sleep 1000"],
        "env": ["FROM_FILE=1", "SHARED=file", "A=1", "SHARED=flag"],
        "labels": {"team": "shop"},
        "container_labels": {"SERVICE_TAGS": "web"},
        "ports": [
            {"target": 80, "published": 8080, "protocol": "tcp"},
            {"target": 53, "published": 5353, "protocol": "udp"},
            {"target": 9000, "published": 0, "protocol": "tcp"},
        ],
        "mounts": [
            {"type": "volume", "source": "cache", "target": "/cache", "read_only": false},
            {"type": "bind", "source": "/srv", "target": "/data", "read_only": true},
        ],
        "healthcheck": {
            "test": ["CMD-SHELL", "wget -q -O- localhost:80/health"],
            "interval": "5s",
            "timeout": "2s",
            "retries": 4,
            "start_period": "1m30s",
        },
        "stop_signal": "SIGQUIT",
        "stop_grace_period": "20s",
        "user": "nobody",
        "workdir": "/work",
        "mode": "replicated",
        "replicas": 3,
        "placement": {
            "constraints": ["node.labels.zone==eu", "node.role!=manager"],
            "preferences": ["spread=node.labels.rack"],
            "max_replicas_per_node": 2,
        },
        "resources": {
            "reservations": {"nano_cpus": 250_000_000, "memory_bytes": 64 << 20, "pids": 0},
            "limits": {"nano_cpus": 1_500_000_000, "memory_bytes": 3_i64 << 29, "pids": 100},
        },
        "restart_policy": {
            "condition": "on-failure",
            "delay": "2s",
            "max_attempts": 3,
            "window": "1m",
        },
        "update_config": {"parallelism": 2, "delay": "10s", "order": "start-first"},
        "rollback_config": {"parallelism": 0, "delay": "1s", "order": "stop-first"},
    });
    assert_eq!(
        spec,
        &expected,
        "{}",
        serde_json::to_string_pretty(spec).unwrap()
    );

    // --pretty is Docker's layout.
    let pretty = s.bronze(&["service", "inspect", "--pretty", &name]).await;
    let text = pretty.ok();
    for line in [
        "Name:".to_string(),
        "Service Mode:".into(),
        " Replicas:".into(),
        " Constraints:".into(),
        "  Memory:".into(),
        "1.5GiB".into(),
        "*:8080->80/tcp".into(),
        "Target = /data, Source = /srv, Type = bind, ReadOnly = true".into(),
    ] {
        assert!(text.contains(&line), "{line:?} in\n{text}");
    }

    // Defaults, for a bare create: one replica, Swarm's policies.
    let bare = unique("bare");
    s.bronze(&["service", "create", "-d", "--name", &bare, "busybox"])
        .await
        .ok();
    let v = s.bronze(&["service", "inspect", &bare]).await.json();
    let spec = &v[0]["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["restart_policy"]["condition"], "any");
    assert_eq!(spec["restart_policy"]["delay"], "5s");
    assert_eq!(spec["update_config"]["parallelism"], 1);
    assert_eq!(spec["stop_grace_period"], "10s");
    assert_eq!(spec["healthcheck"], Value::Null);

    // A global service.
    let global = unique("global");
    s.bronze(&[
        "service", "create", "-d", "--mode", "global", "--name", &global, "busybox",
    ])
    .await
    .ok();
    let v = s.bronze(&["service", "inspect", &global]).await.json();
    assert_eq!(v[0]["spec"]["mode"], "global");
    assert_eq!(v[0]["spec"]["replicas"], Value::Null);
    // Without a name: the image's and a suffix.
    let out = s
        .bronze(&["service", "create", "-d", "127.0.0.1:5000/shop/web:1.2"])
        .await;
    let id = out.ok().trim().to_string();
    let v = s.bronze(&["service", "inspect", &id]).await.json();
    assert!(v[0]["name"].as_str().unwrap().starts_with("web-"), "{v:#}");
}

#[tokio::test]
async fn ls_ps_and_inspect_as_tables_and_json() {
    let s = Scheduler::start(bronze_scheduler::Config::ephemeral()).await;
    let web = unique("web");
    let api = unique("api");
    // No node: --detach returns at once while the tasks are pending.
    let out = s
        .bronze(&[
            "service",
            "create",
            "--detach",
            "--name",
            &web,
            "--replicas",
            "2",
            "-p",
            "8080:80",
            "-p",
            "9090",
            "busybox",
        ])
        .await;
    out.ok();
    assert!(out.took < Duration::from_secs(10), "{out:#?}");
    s.bronze(&[
        "service",
        "create",
        "-d",
        "--name",
        &api,
        "--replicas-max-per-node",
        "1",
        "--label",
        "tier=back",
        "busybox",
    ])
    .await
    .ok();

    let ls = s.bronze(&["service", "ls"]).await;
    let lines: Vec<&str> = ls.ok().lines().collect();
    assert_eq!(
        lines[0]
            .split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>(),
        ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]
    );
    let row = |name: &str| -> String {
        lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("{name} in {lines:?}"))
            .to_string()
    };
    let web_row = row(&web);
    assert!(web_row.contains("   replicated   0/2   "), "{web_row}");
    assert!(
        web_row.ends_with("busybox   *:8080->80/tcp, 9090/tcp"),
        "{web_row}"
    );
    assert!(row(&api).contains("0/1 (max 1 per node)"), "{}", row(&api));
    // Columns line up under their headers.
    let at = lines[0].find("REPLICAS").unwrap();
    assert_eq!(&web_row[at..at + 3], "0/2");

    let filtered = s.bronze(&["service", "ls", "-f", "label=tier=back"]).await;
    assert_eq!(filtered.ok().lines().count(), 2, "{filtered:#?}");
    let quiet = s.bronze(&["service", "ls", "-q"]).await;
    assert_eq!(quiet.ok().lines().count(), 2);

    let ls = s
        .bronze(&["service", "ls", "--output", "json"])
        .await
        .json();
    let arr = ls.as_array().expect("array");
    assert_eq!(arr.len(), 2);
    let w = arr.iter().find(|x| x["name"] == web.as_str()).expect("web");
    assert_eq!(w["status"]["desired"], 2);
    assert_eq!(w["status"]["running"], 0);
    assert_eq!(w["status"]["converged"], false);
    assert!(
        w["status"]["message"]
            .as_str()
            .unwrap()
            .contains("nodes available"),
        "{w:#}"
    );

    // ps: Docker's columns, the pending reason in ERROR.
    let ps = s.bronze(&["service", "ps", &web]).await;
    let lines: Vec<&str> = ps.ok().lines().collect();
    assert_eq!(lines.len(), 3, "{ps:#?}");
    for h in [
        "ID",
        "NAME",
        "IMAGE",
        "NODE",
        "DESIRED STATE",
        "CURRENT STATE",
        "ERROR",
        "PORTS",
    ] {
        assert!(lines[0].contains(h), "{h} in {}", lines[0]);
    }
    assert!(lines[1].contains(&format!("   {web}.1   ")), "{}", lines[1]);
    assert!(lines[2].contains(&format!("   {web}.2   ")), "{}", lines[2]);
    for l in &lines[1..] {
        assert!(l.contains("   Running   "), "desired: {l}");
        assert!(l.contains("   Pending "), "current: {l}");
        assert!(l.contains(" ago   \"0/0 nodes available"), "error: {l}");
    }
    let ps = s.bronze(&["service", "ps", "-q", "--no-trunc", &web]).await;
    assert!(ps.ok().lines().all(|l| l.len() == 25), "{ps:#?}");
    let ps = s
        .bronze(&["service", "ps", "-f", "desired-state=shutdown", &web])
        .await;
    assert_eq!(ps.ok().lines().count(), 1, "only the header: {ps:#?}");
    let name1 = format!("name={web}.1");
    let ps = s.bronze(&["service", "ps", "-f", &name1, &web]).await;
    assert_eq!(ps.ok().lines().count(), 2, "{ps:#?}");

    let ps = s
        .bronze(&["service", "ps", &web, "--output", "json"])
        .await
        .json();
    let tasks = ps.as_array().expect("array");
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0]["service_name"], web.as_str());
    assert_eq!(tasks[0]["slot"], 1);
    assert_eq!(tasks[0]["desired_state"], "running");
    assert_eq!(tasks[0]["status"]["state"], "pending");
    assert!(
        tasks[0]["status"]["timestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    // inspect: an array, also of several; a missing one fails the command.
    let v = s.bronze(&["service", "inspect", &web, &api]).await.json();
    assert_eq!(v.as_array().unwrap().len(), 2);
    let missing = s.bronze(&["service", "inspect", &web, "nope"]).await;
    assert!(
        missing.fails(1).contains("bronze: no service \"nope\""),
        "{missing:#?}"
    );
    let v: Value = serde_json::from_str(&missing.stdout).expect("the found ones");
    assert_eq!(v.as_array().unwrap().len(), 1);

    // rm: one line per service; a missing one is reported, the others go.
    let rm = s.bronze(&["service", "rm", &api, "nope"]).await;
    assert!(rm.fails(1).contains("no service \"nope\""), "{rm:#?}");
    assert_eq!(rm.stdout.trim(), api);
}

#[tokio::test]
async fn invalid_arguments_name_the_field_or_the_flag() {
    let s = Scheduler::start(bronze_scheduler::Config::ephemeral()).await;
    // The scheduler refuses, naming the spec's field; nothing is created.
    for (args, field) in [
        (
            vec!["--name", "bad-c", "--constraint", "zone=eu"],
            "spec.placement.constraints[0]",
        ),
        (vec!["--name", "Bad Name"], "spec.name"),
        (
            vec!["--name", "bad-s", "--stop-signal", "SIGNOPE"],
            "spec.stop_signal",
        ),
        (
            vec![
                "--name",
                "bad-m",
                "--reserve-memory",
                "1G",
                "--limit-memory",
                "512M",
            ],
            "spec.resources.reservations.memory_bytes",
        ),
        (
            vec![
                "--name",
                "bad-b",
                "--mount",
                "type=bind,source=rel,target=/x",
            ],
            "spec.mounts[0].source",
        ),
        (
            vec!["--name", "bad-p", "-p", "8080:80", "-p", "8080:81"],
            "spec.ports[1].published",
        ),
    ] {
        let mut a = vec!["service", "create", "-d"];
        a.extend(args);
        a.push("busybox");
        let out = s.bronze(&a).await;
        let err = out.fails(1);
        assert!(
            err.starts_with(&format!("bronze: {field}: ")),
            "{field}: {out:#?}"
        );
        assert_eq!(err.lines().count(), 1, "{out:#?}");
    }
    let out = s
        .bronze(&["service", "create", "-d", "--name", "bad-i", "UPPER/Case"])
        .await;
    assert!(out.fails(1).starts_with("bronze: spec.image: "), "{out:#?}");
    let ls = s.bronze(&["service", "ls", "-q"]).await;
    assert_eq!(ls.ok(), "", "nothing was created");

    // Values the CLI parses are usage errors naming the flag (exit 2).
    for (flag, value) in [
        ("--restart-delay", "10x"),
        ("--stop-grace-period", "10"),
        ("--limit-memory", "12Q"),
        ("--reserve-cpu", "half"),
        ("--publish", "70000:80"),
        ("--mount", "type=tmpfs,target=/x"),
        ("--restart-condition", "sometimes"),
        ("--update-order", "sideways"),
        ("--replicas", "-1"),
    ] {
        let out = s
            .bronze(&["service", "create", "-d", flag, value, "busybox"])
            .await;
        let err = out.fails(2);
        assert!(err.contains(flag), "{flag}: {out:#?}");
        assert!(err.contains(value), "{flag}: {out:#?}");
    }
    let out = s
        .bronze(&[
            "service",
            "create",
            "--no-healthcheck",
            "--health-cmd",
            "x",
            "busybox",
        ])
        .await;
    out.fails(2);
    let out = s
        .bronze(&[
            "service",
            "create",
            "--mode",
            "global",
            "--replicas",
            "2",
            "busybox",
        ])
        .await;
    assert!(out.fails(1).contains("--replicas"), "{out:#?}");
    let out = s.bronze(&["service", "scale", "web"]).await;
    assert!(out.fails(2).contains("SERVICE=REPLICAS"), "{out:#?}");

    // Other refusals of the scheduler, as it words them.
    let web = unique("web");
    s.bronze(&["service", "create", "-d", "--name", &web, "busybox"])
        .await
        .ok();
    let out = s
        .bronze(&["service", "create", "-d", "--name", &web, "busybox"])
        .await;
    assert!(out.fails(1).contains("already exists"), "{out:#?}");
    let out = s.bronze(&["service", "rollback", &web]).await;
    assert!(out.fails(1).contains("no previous version"), "{out:#?}");
    let out = s.bronze(&["service", "ps", "nope"]).await;
    assert_eq!(out.fails(1).trim(), "bronze: no service \"nope\"");
}

#[tokio::test]
async fn update_changes_the_spec_it_read_and_scale_sets_replicas() {
    let s = Scheduler::start(bronze_scheduler::Config::ephemeral()).await;
    let web = unique("web");
    s.bronze(&[
        "service",
        "create",
        "-d",
        "--name",
        &web,
        "-e",
        "KEEP=1",
        "-e",
        "DROP=1",
        "-e",
        "CHANGE=old",
        "--label",
        "a=1",
        "--container-label",
        "c=1",
        "-p",
        "8080:80",
        "-p",
        "9090:90/udp",
        "--constraint",
        "node.labels.zone==eu",
        "--mount",
        "source=cache,target=/cache",
        "busybox",
    ])
    .await
    .ok();
    let out = s
        .bronze(&[
            "service",
            "update",
            "-d",
            "--image",
            "busybox:1.36",
            "--args",
            "sleep 100",
            "--env-add",
            "CHANGE=new",
            "--env-add",
            "NEW=1",
            "--env-rm",
            "DROP",
            "--label-add",
            "b=2",
            "--label-rm",
            "a",
            "--container-label-rm",
            "c",
            "--container-label-add",
            "d=4",
            "--publish-rm",
            "90/udp",
            "--publish-add",
            "7070:70",
            "--constraint-rm",
            "node.labels.zone == eu",
            "--constraint-add",
            "node.role==worker",
            "--mount-rm",
            "/cache",
            "--mount-add",
            "type=bind,source=/srv,target=/srv,ro",
            "--replicas",
            "4",
            "--limit-memory",
            "256M",
            "--update-delay",
            "3s",
            &web,
        ])
        .await;
    assert_eq!(out.ok().trim(), web);
    let v = s.bronze(&["service", "inspect", &web]).await.json();
    let svc = &v[0];
    assert_eq!(svc["version"], 2);
    assert_eq!(svc["previous_version"], 1);
    assert!(
        svc["update_status"]["state"].is_string(),
        "a rollout: {svc:#}"
    );
    let spec = &svc["spec"];
    assert_eq!(spec["image"], "busybox:1.36");
    assert_eq!(spec["args"], serde_json::json!(["sleep", "100"]));
    assert_eq!(
        spec["env"],
        serde_json::json!(["KEEP=1", "CHANGE=new", "NEW=1"])
    );
    assert_eq!(spec["labels"], serde_json::json!({"b": "2"}));
    assert_eq!(spec["container_labels"], serde_json::json!({"d": "4"}));
    assert_eq!(
        spec["ports"],
        serde_json::json!([
            {"target": 80, "published": 8080, "protocol": "tcp"},
            {"target": 70, "published": 7070, "protocol": "tcp"},
        ])
    );
    assert_eq!(
        spec["placement"]["constraints"],
        serde_json::json!(["node.role==worker"])
    );
    assert_eq!(
        spec["mounts"],
        serde_json::json!([{"type": "bind", "source": "/srv", "target": "/srv", "read_only": true}])
    );
    assert_eq!(spec["replicas"], 4);
    assert_eq!(spec["resources"]["limits"]["memory_bytes"], 256 << 20);
    assert_eq!(spec["update_config"]["delay"], "3s");
    assert_eq!(spec["update_config"]["parallelism"], 1, "kept");

    // Removing what is not there says what is.
    let out = s
        .bronze(&[
            "service",
            "update",
            "-d",
            "--constraint-rm",
            "node.id==x",
            &web,
        ])
        .await;
    assert!(out.fails(1).contains("node.role==worker"), "{out:#?}");
    // A label-only change makes a version without a rollout.
    s.bronze(&["service", "update", "-d", "--label-add", "c=3", &web])
        .await
        .ok();
    let v = s.bronze(&["service", "inspect", &web]).await.json();
    assert_eq!(v[0]["version"], 3);

    // scale: several at once, docker's message.
    let api = unique("api");
    s.bronze(&["service", "create", "-d", "--name", &api, "busybox"])
        .await
        .ok();
    let out = s
        .bronze(&[
            "service",
            "scale",
            "-d",
            &format!("{web}=1"),
            &format!("{api}=3"),
        ])
        .await;
    assert_eq!(out.ok(), format!("{web} scaled to 1\n{api} scaled to 3\n"));
    let v = s.bronze(&["service", "inspect", &web, &api]).await.json();
    assert_eq!(v[0]["spec"]["replicas"], 1);
    assert_eq!(v[1]["spec"]["replicas"], 3);
    let out = s
        .bronze(&["service", "scale", "-d", "nope=1", &format!("{web}=2")])
        .await;
    assert!(out.fails(1).contains("no service \"nope\""), "{out:#?}");
    assert_eq!(out.stdout, format!("{web} scaled to 2\n"));

    // rollback goes to the version before the last change.
    let out = s.bronze(&["service", "rollback", "-d", &web]).await;
    assert_eq!(out.ok().trim(), web);
    let v = s.bronze(&["service", "inspect", &web]).await.json();
    assert_eq!(v[0]["spec"]["replicas"], 1);
}

#[tokio::test]
async fn waiting_without_nodes_times_out_with_the_pending_reason() {
    let s = Scheduler::start(bronze_scheduler::Config::ephemeral()).await;
    let web = unique("web");
    let out = s
        .bronze(&[
            "service",
            "create",
            "--timeout",
            "2s",
            "--name",
            &web,
            "--constraint",
            "node.labels.zone==eu",
            "busybox",
        ])
        .await;
    let err = out.fails(1);
    assert!(
        err.contains(&format!(
            "bronze: service {web} did not converge within 2s: pending: 0/0 nodes available"
        )),
        "{out:#?}"
    );
    assert!(out.took >= Duration::from_secs(2), "{out:#?}");
    // The id, then the slot's progress, appended (stdout is not a terminal).
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0].len(), 25, "{out:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{web}.1: pending (0/0 nodes available"))),
        "{out:#?}"
    );
    // With --output json the progress goes to stderr and stdout stays JSON
    // (empty here: the command failed).
    let out = s
        .bronze(&[
            "service",
            "update",
            "--timeout",
            "1s",
            "--output",
            "json",
            "--env-add",
            "A=1",
            &web,
        ])
        .await;
    assert_eq!(out.code, 1, "{out:#?}");
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.contains(&format!("{web}.1: pending")),
        "{out:#?}"
    );
}

#[tokio::test]
async fn join_token_prints_and_rotates() {
    let s = Scheduler::start(bronze_scheduler::Config::ephemeral()).await;
    let out = s.bronze(&["node", "join-token", "-q"]).await;
    assert_eq!(out.ok().trim(), s.join_token);
    let out = s.bronze(&["node", "join-token"]).await;
    assert!(
        out.ok().contains(&format!(
            "bronze-agent --scheduler {} --join-token {}",
            s.url(),
            s.join_token
        )),
        "{out:#?}"
    );
    let out = s.bronze(&["node", "join-token", "--rotate"]).await;
    let text = out.ok();
    assert!(!text.contains(&s.join_token), "{text}");
    let rotated = s
        .bronze(&["node", "join-token", "--output", "json"])
        .await
        .json();
    let token = rotated["token"].as_str().expect("token");
    assert_ne!(token, s.join_token);
    assert!(text.contains(token), "{text}");
}

#[tokio::test]
async fn the_admin_token_is_sent_and_errors_say_what_to_do() {
    let s = Scheduler::start(bronze_scheduler::Config {
        admin_token: "s3cret-admin-token".into(),
        ..bronze_scheduler::Config::ephemeral()
    })
    .await;
    let out = s.bronze(&["service", "ls"]).await;
    let err = out.fails(1);
    assert!(err.contains("admin token"), "{out:#?}");
    assert!(err.contains("BRONZE_SCHEDULER_TOKEN"), "{out:#?}");
    let url = s.url();
    let out = bronze(
        &[
            ("BRONZE_SCHEDULER", url.as_str()),
            ("BRONZE_SCHEDULER_TOKEN", "s3cret-admin-token"),
        ],
        &["service", "ls"],
    )
    .await;
    assert!(out.ok().starts_with("ID "), "{out:#?}");
    let out = bronze(
        &[],
        &[
            "service",
            "ls",
            "--scheduler",
            &url,
            "--token",
            "s3cret-admin-token",
        ],
    )
    .await;
    out.ok();
    let out = bronze(
        &[],
        &["--scheduler", &url, "--token", "wrong", "node", "ls"],
    )
    .await;
    out.fails(1);

    // A scheduler that is not there: where we looked and how to say where.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let out = bronze(
        &[("BRONZE_SCHEDULER", &format!("http://{closed}"))],
        &["node", "ls"],
    )
    .await;
    let err = out.fails(1);
    assert!(
        err.starts_with(&format!(
            "bronze: cannot reach the scheduler at http://{closed}"
        )),
        "{out:#?}"
    );
    assert!(err.contains("BRONZE_SCHEDULER"), "{out:#?}");
}

#[tokio::test]
async fn every_command_explains_itself() {
    let commands: &[&[&str]] = &[
        &[],
        &["service"],
        &["service", "create"],
        &["service", "ls"],
        &["service", "ps"],
        &["service", "inspect"],
        &["service", "update"],
        &["service", "scale"],
        &["service", "rollback"],
        &["service", "rm"],
        &["service", "logs"],
        &["node"],
        &["node", "ls"],
        &["node", "inspect"],
        &["node", "update"],
        &["node", "rm"],
        &["node", "ps"],
        &["node", "join-token"],
    ];
    for c in commands {
        let mut args = c.to_vec();
        args.push("--help");
        let out = bronze(&[], &args).await;
        let text = out.ok();
        let about = text.lines().next().unwrap_or_default();
        assert!(about.len() > 20, "{c:?} has an about line: {text}");
        assert!(text.contains("Usage: bronze"), "{c:?}: {text}");
    }
    // The commands that wait state the rule they wait by.
    for c in ["create", "update", "scale", "rollback"] {
        let out = bronze(&[], &["service", c, "--help"]).await;
        let text = out.ok().replace('\n', " ");
        for part in [
            "--detach",
            "converged",
            "exits 1 at once if the restart policy gave up",
            "after --timeout",
            "[default: 2m]",
        ] {
            assert!(text.contains(part), "{c}: {part:?} in {text}");
        }
    }
}
