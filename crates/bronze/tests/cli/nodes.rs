//! `bronze node ...` once an agent (on this machine's engine) has joined.

use crate::harness::{Agent, Scheduler, fast, node_status, unique};

#[tokio::test]
async fn node_ls_inspect_update_and_rm() {
    let s = Scheduler::start(fast()).await;
    let host = unique("cli-node");
    let agent = Agent::start(&s, &host, &[("zone", "eu")]).await;
    node_status(&s, &host, "Ready").await;

    let ls = s.bronze(&["node", "ls"]).await;
    let lines: Vec<&str> = ls.ok().lines().collect();
    assert_eq!(
        lines[0]
            .split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>(),
        [
            "ID",
            "HOSTNAME",
            "STATUS",
            "AVAILABILITY",
            "ROLE",
            "TASKS",
            "ENGINE VERSION"
        ]
    );
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&cols[1..5], [host.as_str(), "Ready", "Active", "worker"]);
    let id = cols[0].to_string();
    let quiet = s.bronze(&["node", "ls", "-q"]).await;
    assert_eq!(quiet.ok().trim(), id);

    // inspect: JSON by hostname or id, --pretty as Docker's.
    let v = s.bronze(&["node", "inspect", &host]).await.json();
    let n = &v[0];
    assert_eq!(n["id"], id.as_str());
    assert_eq!(n["hostname"], host.as_str());
    assert_eq!(n["state"], "ready");
    assert_eq!(n["availability"], "active");
    assert_eq!(n["labels"], serde_json::json!({"zone": "eu"}));
    assert_eq!(n["address"], "127.0.0.1");
    assert!(n["resources"]["nano_cpus"].as_i64().unwrap() > 0, "{n:#}");
    assert!(
        n["engine"]["version"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
    let v = s.bronze(&["node", "inspect", &id]).await.json();
    assert_eq!(v[0]["hostname"], host.as_str());
    let pretty = s.bronze(&["node", "inspect", "--pretty", &host]).await;
    let text = pretty.ok();
    for part in [
        "Hostname:",
        "State:",
        "Ready",
        "Availability:",
        "Operating System:",
        "zone=eu",
    ] {
        assert!(text.contains(part), "{part} in\n{text}");
    }

    // update: availability and labels.
    let out = s
        .bronze(&[
            "node",
            "update",
            "--availability",
            "drain",
            "--label-add",
            "rack=r1",
            "--label-add",
            "disk=ssd",
            "--label-rm",
            "zone",
            &host,
        ])
        .await;
    assert_eq!(out.ok().trim(), host);
    let v = s.bronze(&["node", "inspect", &host]).await.json();
    assert_eq!(v[0]["availability"], "drain");
    assert_eq!(
        v[0]["labels"],
        serde_json::json!({"disk": "ssd", "rack": "r1"})
    );
    let ls = s.bronze(&["node", "ls"]).await;
    assert!(ls.ok().contains("   Drain   "), "{ls:#?}");
    let v = s
        .bronze(&[
            "node",
            "update",
            "--availability",
            "pause",
            "--output",
            "json",
            &id,
        ])
        .await
        .json();
    assert_eq!(v["availability"], "pause");
    let out = s.bronze(&["node", "update", &host]).await;
    assert!(out.fails(1).contains("nothing to change"), "{out:#?}");
    let out = s
        .bronze(&["node", "update", "--availability", "gone", &host])
        .await;
    assert!(out.fails(2).contains("--availability"), "{out:#?}");
    let out = s
        .bronze(&["node", "update", "--availability", "active", "nope"])
        .await;
    assert!(out.fails(1).contains("no node \"nope\""), "{out:#?}");

    // rm: refused while its agent is connected, unless --force.
    let out = s.bronze(&["node", "rm", &host]).await;
    assert!(out.fails(1).contains("--force"), "{out:#?}");
    agent.stop().await;
    node_status(&s, &host, "Down").await;
    let out = s.bronze(&["node", "rm", &host]).await;
    assert_eq!(out.ok().trim(), host);
    let ls = s.bronze(&["node", "ls", "-q"]).await;
    assert_eq!(ls.ok(), "");
}
