//! Commands that wait for tasks to run, with an agent running containers
//! on this machine's engine: convergence and its progress, a stalled
//! service failing at once, rolling updates, rollbacks, logs.

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::time::Duration;

use crate::harness::{Agent, Cleanup, IMAGE, Scheduler, command, fast, image, node_status, unique};

/// Flags that keep tests quick: a short stop grace (busybox as PID 1
/// ignores SIGTERM) and a short restart delay.
const QUICK: [&str; 4] = ["--stop-grace-period", "1s", "--restart-delay", "200ms"];
/// A shorter check that the tasks stay up than the default 5s.
const STABLE: [&str; 2] = ["--stable", "1s"];

fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("{name} in\n{table}"))
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[tokio::test]
async fn create_scale_update_and_rollback_wait_for_convergence() {
    image().await;
    let s = Scheduler::start(fast()).await;
    let host = unique("cli-conv");
    let _agent = Agent::start(&s, &host, &[]).await;
    node_status(&s, &host, "Ready").await;
    let web = unique("web");
    let _cleanup = Cleanup(vec![web.clone()]);

    let mut args = vec![
        "service",
        "create",
        "--name",
        &web,
        "--replicas",
        "2",
        "-p",
        "8080",
    ];
    args.extend(QUICK);
    args.extend(STABLE);
    args.push(IMAGE);
    let out = s.bronze(&args).await;
    let stdout = out.ok();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0].len(), 25, "the id first: {out:#?}");
    for slot in 1..=2 {
        assert!(
            lines.contains(&format!("{web}.{slot}: running").as_str()),
            "slot {slot} shown running: {out:#?}"
        );
    }
    assert!(
        lines.contains(&"verify: converged; checking that the tasks stay up for 1s"),
        "{out:#?}"
    );
    assert_eq!(
        lines.last(),
        Some(&"converged: 2 of 2 tasks running"),
        "{out:#?}"
    );

    let ls = s.bronze(&["service", "ls"]).await;
    assert_eq!(
        row(ls.ok(), &web)[2..],
        ["replicated", "2/2", IMAGE, "8080/tcp"]
    );
    let ps = s.bronze(&["service", "ps", &web]).await;
    let table = ps.ok();
    for slot in 1..=2 {
        let r = row(table, &format!("{web}.{slot}"));
        assert_eq!(r[3], host, "NODE: {table}");
        assert_eq!(r[4], "Running", "DESIRED STATE: {table}");
        assert!(r[5].starts_with("Running "), "CURRENT STATE: {table}");
        assert!(r[5].ends_with(" ago"), "CURRENT STATE: {table}");
        assert!(
            r[6].starts_with("*:") && r[6].ends_with("->8080/tcp"),
            "PORTS, the host port the engine chose: {table}"
        );
    }

    let out = s
        .bronze(&["service", "scale", "--stable", "1s", &format!("{web}=3")])
        .await;
    let text = out.ok();
    assert!(
        text.starts_with(&format!("{web} scaled to 3\n")),
        "{out:#?}"
    );
    assert!(text.contains(&format!("{web}.3: running")), "{out:#?}");
    let ls = s.bronze(&["service", "ls"]).await;
    assert_eq!(row(ls.ok(), &web)[3], "3/3");

    // A rolling update, two at a time; the old tasks stay as history.
    let out = s
        .bronze(&[
            "service",
            "update",
            "--env-add",
            "COLOR=blue",
            "--update-parallelism",
            "2",
            "--stable",
            "1s",
            &web,
        ])
        .await;
    let text = out.ok();
    assert!(
        text.ends_with("converged: 3 of 3 tasks running\n"),
        "{out:#?}"
    );
    let ps = s.bronze(&["service", "ps", &web]).await;
    let table = ps.ok();
    let history = table.lines().filter(|l| l.contains(r" \_ ")).count();
    assert_eq!(history, 3, "one old task per slot: {table}");
    for l in table.lines().filter(|l| l.contains(r" \_ ")) {
        assert!(l.contains("   Shutdown   "), "{l}");
    }
    let running = s
        .bronze(&["service", "ps", "-f", "desired-state=running", &web])
        .await;
    assert_eq!(running.ok().lines().count(), 4, "{running:#?}");

    let out = s
        .bronze(&["service", "rollback", "--stable", "1s", &web])
        .await;
    assert!(
        out.ok().ends_with("converged: 3 of 3 tasks running\n"),
        "{out:#?}"
    );
    let v = s.bronze(&["service", "inspect", &web]).await.json();
    assert!(
        !v[0]["spec"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "COLOR=blue"),
        "{v:#}"
    );
    assert_eq!(v[0]["status"]["converged"], true);

    let out = s.bronze(&["service", "rm", &web]).await;
    assert_eq!(out.ok().trim(), web);
}

#[tokio::test]
async fn a_stalled_service_fails_the_wait_at_once_with_the_reason() {
    image().await;
    let s = Scheduler::start(fast()).await;
    let host = unique("cli-stall");
    let _agent = Agent::start(&s, &host, &[]).await;
    node_status(&s, &host, "Ready").await;
    let bad = unique("bad");
    let _cleanup = Cleanup(vec![bad.clone()]);
    let mut args = vec![
        "service",
        "create",
        "--name",
        &bad,
        "--restart-condition",
        "none",
        "--timeout",
        "2m",
    ];
    args.extend(QUICK);
    args.extend([IMAGE, "sh", "-c", "echo bye; exit 3"]);
    let out = s.bronze(&args).await;
    let err = out.fails(1);
    assert!(
        err.starts_with(&format!("bronze: service {bad} did not converge: ")),
        "{out:#?}"
    );
    assert!(err.contains("restart policy gave up"), "{out:#?}");
    assert!(err.contains("exit code 3"), "{out:#?}");
    assert!(
        out.took < Duration::from_secs(60),
        "not the timeout: {out:#?}"
    );
    assert!(
        out.stdout
            .contains(&format!("{bad}.1: failed (exit code 3")),
        "the slot's end is shown: {out:#?}"
    );
    let ps = s.bronze(&["service", "ps", &bad]).await;
    assert!(
        ps.ok().contains("\"task: non-zero exit (3)\""),
        "docker's ERROR: {ps:#?}"
    );
}

#[tokio::test]
async fn logs_print_each_line_with_its_task_and_follow() {
    image().await;
    let s = Scheduler::start(fast()).await;
    let host = unique("cli-logs");
    let _agent = Agent::start(&s, &host, &[]).await;
    node_status(&s, &host, "Ready").await;
    let talk = unique("talk");
    let _cleanup = Cleanup(vec![talk.clone()]);
    let mut args = vec!["service", "create", "--name", &talk];
    args.extend(QUICK);
    args.extend(STABLE);
    args.extend([
        IMAGE,
        "sh",
        "-c",
        "echo out-line; echo err-line >&2; while true; do echo tick; sleep 1; done",
    ]);
    s.bronze(&args).await.ok();

    let out = s.bronze(&["service", "logs", &talk]).await;
    let text = out.ok();
    let first = text.lines().next().expect("a line");
    let (source, line) = first.split_once("    | ").expect("docker's prefix");
    assert_eq!(line, "out-line", "{out:#?}");
    assert!(source.starts_with(&format!("{talk}.1.")), "{out:#?}");
    assert!(source.ends_with(&format!("@{host}")), "{out:#?}");
    assert!(
        out.stderr.contains(&format!("{source}    | err-line")),
        "stderr lines on stderr: {out:#?}"
    );
    let raw = s.bronze(&["service", "logs", "--raw", &talk]).await;
    assert!(raw.ok().starts_with("out-line\n"), "{raw:#?}");
    let short = s
        .bronze(&["service", "logs", "--no-task-ids", "--tail", "1", &talk])
        .await;
    let both = format!("{}{}", short.ok(), short.stderr);
    assert_eq!(both.lines().count(), 1, "--tail 1: {short:#?}");
    assert!(
        both.starts_with(&format!("{talk}.1@{host}    | ")),
        "{short:#?}"
    );
    let json = s
        .bronze(&["service", "logs", "--output", "json", &talk])
        .await;
    let lines: Vec<serde_json::Value> = json
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    let out_line = lines
        .iter()
        .find(|l| l["line"] == "out-line")
        .expect("out-line");
    assert_eq!(out_line["stream"], "stdout");
    assert_eq!(out_line["source"], source);
    let err_line = lines
        .iter()
        .find(|l| l["line"] == "err-line")
        .expect("err-line");
    assert_eq!(err_line["stream"], "stderr");

    // -f: lines arrive as the container prints them.
    let url = s.url();
    let mut child = command(
        &[("BRONZE_SCHEDULER", &url)],
        &["service", "logs", "-f", "--tail", "1", &talk],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("logs -f");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let ticks = tokio::task::spawn_blocking(move || {
        let mut ticks = 0;
        while ticks < 3 {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(l) if l.ends_with("    | tick") => ticks += 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        ticks
    })
    .await
    .expect("join");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ticks, 3, "--tail 1 gave one line, the others came live");
}

#[tokio::test]
async fn on_a_terminal_the_progress_is_redrawn_in_place() {
    image().await;
    let s = Scheduler::start(fast()).await;
    let host = unique("cli-tty");
    let _agent = Agent::start(&s, &host, &[]).await;
    node_status(&s, &host, "Ready").await;
    let web = unique("tty");
    let _cleanup = Cleanup(vec![web.clone()]);
    // `script` gives the command a pseudo-terminal.
    let line = format!(
        "{} service create --name {web} --replicas 2 --stable 1s {} {IMAGE}",
        crate::harness::BIN,
        QUICK.join(" ")
    );
    let out = crate::harness::on_terminal(&[("BRONZE_SCHEDULER", &s.url())], &line).await;
    let text = out.ok();
    assert!(
        text.contains("overall progress: 0 out of 2 tasks"),
        "{out:#?}"
    );
    assert!(
        text.contains("overall progress: 2 out of 2 tasks"),
        "{out:#?}"
    );
    // Moved back up over the headline and the two slots, cleared, redrawn.
    assert!(text.contains("\x1b[3A\r\x1b[J"), "{out:#?}");
    assert!(text.contains("1/2: running    [====="), "{out:#?}");
    assert!(text.contains("converged: 2 of 2 tasks running"), "{out:#?}");
}

/// An update whose new tasks fail their health check, with
/// `--update-failure-action rollback`: the scheduler rolls it back by
/// itself, and `service update` exits 1 saying so (Docker's exits 0 and
/// leaves CI none the wiser). A later `scale` of the same service is not
/// blamed for that old failure.
#[tokio::test]
async fn an_update_rolled_back_by_its_failure_action_fails_the_command() {
    image().await;
    let s = Scheduler::start(fast()).await;
    let host = unique("cli-rb");
    let _agent = Agent::start(&s, &host, &[]).await;
    node_status(&s, &host, "Ready").await;
    let web = unique("rb");
    let _cleanup = Cleanup(vec![web.clone()]);
    let mut args = vec![
        "service",
        "create",
        "--name",
        &web,
        "--replicas",
        "2",
        "--health-cmd",
        "/bin/busybox test -f /www/health",
        "--health-interval",
        "300ms",
        "--health-retries",
        "1",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "1s",
        "--update-order",
        "start-first",
    ];
    args.extend(QUICK);
    args.extend(STABLE);
    args.push(IMAGE);
    s.bronze(&args).await.ok();
    let mut args = vec![
        "service",
        "update",
        "--args",
        "sh -c '/bin/busybox rm /www/health; exec /bin/busybox httpd -f -p 8080 -h /www'",
    ];
    args.extend(STABLE);
    args.push(&web);
    let out = s.bronze(&args).await;
    let err = out.fails(1);
    assert!(err.contains("update rolled back"), "{out:#?}");
    let inspect = s.bronze(&["service", "inspect", &web]).await.json();
    assert_eq!(
        inspect[0]["update_status"]["state"], "rollback_completed",
        "{inspect:#}"
    );
    // Scaling afterwards starts no rollout: it succeeds.
    let mut args = vec!["service", "scale"];
    let target = format!("{web}=3");
    args.push(&target);
    args.extend(STABLE);
    s.bronze(&args).await.ok();
}

/// An update that also adds a replica and whose new tasks fail their
/// health check: the rollback has nothing to start or stop (the old tasks
/// still run, the added slot goes away), and still completes: the command
/// says so at once rather than waiting out its timeout.
#[tokio::test]
async fn a_failed_update_that_scales_up_rolls_back_and_completes() {
    image().await;
    let s = Scheduler::start(fast()).await;
    let host = unique("cli-rbs");
    let _agent = Agent::start(&s, &host, &[]).await;
    node_status(&s, &host, "Ready").await;
    let web = unique("rbs");
    let _cleanup = Cleanup(vec![web.clone()]);
    let mut args = vec!["service", "create", "--name", &web, "--replicas", "2"];
    args.extend(QUICK);
    args.extend(STABLE);
    args.push(IMAGE);
    s.bronze(&args).await.ok();
    let mut args = vec![
        "service",
        "update",
        "--replicas",
        "3",
        "--health-cmd",
        "exit 1",
        "--health-interval",
        "300ms",
        "--health-retries",
        "1",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "1s",
        "--timeout",
        "60s",
    ];
    args.extend(STABLE);
    args.push(&web);
    let out = s.bronze(&args).await;
    let err = out.fails(1);
    assert!(err.contains("rollback completed"), "{out:#?}");
    let inspect = s.bronze(&["service", "inspect", &web]).await.json();
    assert_eq!(
        inspect[0]["update_status"]["state"], "rollback_completed",
        "{inspect:#}"
    );
    assert_eq!(inspect[0]["spec"]["replicas"], 2, "{inspect:#}");
}
