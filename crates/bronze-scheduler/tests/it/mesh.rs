//! Service-to-service naming inside a stack, across two nodes: agents with
//! `--discovery`, discovery and a registrator in this process, the engine
//! shared (each agent its own node, network and virtual IPs). A client
//! task on node A calls `api` (whose only task runs on node B) by name and
//! target port from inside its container, and keeps succeeding while that
//! task is replaced (start-first). Traffic stays on this machine: the
//! containers' bridge networks and loopback.
//!
//! The calls resolve the name with busybox's `nslookup` and then call the
//! address with `wget`: busybox-static's `wget` resolves names through
//! static glibc, which crashes (SIGSEGV) without its NSS modules in a
//! FROM-scratch image; its `nslookup` speaks DNS itself, through Docker's
//! embedded DNS to the stack's responder, as any libc resolver would.
//! (Its `wget -T` crashes too: `timeout` bounds each call instead.)

use std::process::Stdio;
use std::time::Duration;

use bronze_proto::scheduler::v1 as pb;

use crate::harness::{
    Agent, Cleanup, Scheduler, agent_config, client, converged, eventually, fast, image,
    ready_nodes, spec, unique,
};
use crate::rollouts::{Platform, update_completed, versioned};

const NAMESPACE: &str = "com.docker.stack.namespace";

/// The advertised addresses of nodes A and B (loopback, each its own).
const ADDRESS_A: &str = "127.0.0.2";
const ADDRESS_B: &str = "127.0.0.3";

/// Resolves `$1` in the stack's DNS and GETs `http://<address>:$2/$3`;
/// prints the address on stderr.
const CALL: &str = r#"ip=$(nslookup "$1" 2>/dev/null | awk '/^Name:/{n=1} n && /^Address/{print $2; exit}')
[ -n "$ip" ] || { echo "no address for $1" >&2; exit 3; }
echo "$ip" >&2
exec timeout 5 wget -q -O - "http://$ip:$2/$3""#;

/// Calls `api` by name until /tmp/stop exists (at most 3000 calls), then
/// prints "<ok> <failed> <last answer>".
const LOOP: &str = r#"ok=0; fail=0; last=; i=0; touch /tmp/started
while [ ! -e /tmp/stop ] && [ $i -lt 3000 ]; do
  i=$((i+1))
  ip=$(nslookup api 2>/dev/null | awk '/^Name:/{n=1} n && /^Address/{print $2; exit}')
  if v=$(timeout 5 wget -q -O - "http://$ip:8080/version" 2>/dev/null) && [ -n "$v" ]; then
    ok=$((ok+1)); last=$v
  else
    fail=$((fail+1)); echo "failed at $i ($ip)" >&2
  fi
done
echo "$ok $fail $last""#;

async fn docker(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("docker runs")
}

/// The words `docker ARGS` prints.
async fn docker_words(args: &[&str]) -> Vec<String> {
    let out = docker(args).await;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The running container of `service`'s task.
async fn container_of(service: &str) -> Option<String> {
    let filter = format!("label=bronze.service.name={service}");
    docker_words(&["ps", "-q", "--filter", &filter])
        .await
        .into_iter()
        .next()
}

/// `docker exec <container> sh -c CALL sh <name> <port> <path>`: (stdout
/// if it succeeded, stderr).
async fn call(container: &str, name: &str, port: &str, path: &str) -> (Option<String>, String) {
    let out = docker(&["exec", container, "sh", "-c", CALL, "sh", name, port, path]).await;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    (
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()),
        stderr,
    )
}

/// Removes the stack's networks (this test's own, by their label) when
/// dropped, also when the test fails.
struct Networks(String);

impl Drop for Networks {
    fn drop(&mut self) {
        let Ok(out) = std::process::Command::new("docker")
            .args([
                "network",
                "ls",
                "-q",
                "--filter",
                &format!("label=bronze.mesh.stack={}", self.0),
            ])
            .output()
        else {
            return;
        };
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = std::process::Command::new("docker")
                .args(["network", "rm", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

async fn stack_networks(stack: &str) -> Vec<String> {
    let filter = format!("label=bronze.mesh.stack={stack}");
    docker_words(&[
        "network",
        "ls",
        "--format",
        "{{.Name}}",
        "--filter",
        &filter,
    ])
    .await
}

/// Discovery, a registrator, a scheduler and two agents (A and B) that
/// follow discovery; `stack`'s containers and networks are removed when
/// dropped.
struct TwoNodes {
    c: crate::harness::Client,
    stack: String,
    host_a: String,
    host_b: String,
    node_a: String,
    node_b: String,
    _agents: Vec<Agent>,
    _s: Scheduler,
    _p: Platform,
    // Dropped after the containers are removed (fields drop in order).
    _cleanup: Cleanup,
    _networks: Networks,
}

impl TwoNodes {
    async fn start(stack: &str, services: &[&str]) -> Self {
        image().await;
        let networks = Networks(stack.to_string());
        let cleanup = Cleanup(services.iter().map(|s| format!("{stack}_{s}")).collect());
        let p = Platform::start().await;
        let mut config = fast();
        config.discovery = format!("http://{}", p.discovery);
        let s = Scheduler::start(config).await;
        let (host_a, host_b) = (unique("mesh-a"), unique("mesh-b"));
        let mut agents = Vec::new();
        for (host, address) in [(&host_a, ADDRESS_A), (&host_b, ADDRESS_B)] {
            let mut ac = agent_config(&s.url(), &s.token, host, &[]);
            ac.discovery = format!("http://{}", p.discovery);
            ac.address = address.into();
            agents.push(Agent::start(ac).await);
        }
        let mut c = client(s.addr).await;
        let nodes = ready_nodes(&mut c, 2).await;
        let node_of = |host: &str| {
            nodes
                .iter()
                .find(|n| n.hostname == *host)
                .map(|n| n.id.clone())
                .expect("node")
        };
        let (node_a, node_b) = (node_of(&host_a), node_of(&host_b));
        Self {
            c,
            stack: stack.to_string(),
            host_a,
            host_b,
            node_a,
            node_b,
            _agents: agents,
            _s: s,
            _p: p,
            _cleanup: cleanup,
            _networks: networks,
        }
    }

    /// `sp` as a service of the stack, pinned to `host`.
    fn stacked(&self, mut sp: pb::ServiceSpec, host: &str) -> pb::ServiceSpec {
        sp.container_labels = [(NAMESPACE.to_string(), self.stack.clone())].into();
        sp.placement = Some(pb::Placement {
            constraints: vec![format!("node.hostname=={host}")],
            ..Default::default()
        });
        sp
    }

    /// The stack's client: a shell that sleeps, on A, publishing nothing;
    /// its container once it runs.
    async fn caller(&mut self) -> String {
        let caller = format!("{}_client", self.stack);
        let mut client_spec = spec(&caller, 1);
        client_spec.args = vec!["sleep".into(), "3600".into()];
        let sp = self.stacked(client_spec, &self.host_a.clone());
        self.c
            .create_service(pb::CreateServiceRequest { spec: Some(sp) })
            .await
            .expect("create client");
        let tasks = converged(&mut self.c, &caller, 1).await;
        assert_eq!(tasks[0].node_id, self.node_a, "the client runs on A");
        eventually(Duration::from_secs(30), "the client's container", || {
            container_of(&caller)
        })
        .await
    }
}

#[tokio::test]
async fn a_task_calls_a_service_on_another_node_by_name_through_a_replacement() {
    let stack = unique("mesh");
    let mut t = TwoNodes::start(&stack, &["api", "client"]).await;
    let api = format!("{stack}_api");
    let caller = format!("{stack}_client");
    let (host_b, node_b) = (t.host_b.clone(), t.node_b.clone());

    // api: one task, pinned to B, serving its version on 8080.
    let api_spec = |t: &TwoNodes, version: &str| {
        let mut sp = versioned(&api, version, true);
        sp.mode = Some(pb::service_spec::Mode::Replicated(pb::Replicated {
            replicas: 1,
        }));
        t.stacked(sp, &host_b)
    };
    let sp = api_spec(&t, "v1");
    t.c.create_service(pb::CreateServiceRequest { spec: Some(sp) })
        .await
        .expect("create api");
    let container = t.caller().await;
    let api_tasks = converged(&mut t.c, &api, 1).await;
    assert_eq!(api_tasks[0].node_id, node_b, "api runs on B");
    assert_eq!(
        stack_networks(&stack).await.len(),
        2,
        "a stack network per node"
    );
    // By its short name and by its full name, from A to B.
    let (answer, address) = eventually(
        Duration::from_secs(60),
        "the client reaches api:8080 by name",
        || {
            let container = container.clone();
            async move {
                match call(&container, "api", "8080", "version").await {
                    (Some(body), addr) => Some((body, addr)),
                    (None, err) => {
                        eprintln!("not yet: {err}");
                        None
                    }
                }
            }
        },
    )
    .await;
    assert_eq!(answer, "v1");
    assert!(
        address.starts_with("10.210."),
        "api's name is its virtual IP in the stack network: {address}"
    );
    let (full, full_address) = call(&container, &api, "8080", "version").await;
    assert_eq!(full.as_deref(), Some("v1"), "{full_address}");
    assert_eq!(full_address, address, "both names are the same virtual IP");
    // A name the stack does not have is not answered with a virtual IP.
    let (none, err) = call(&container, &format!("{stack}_nothing"), "8080", "version").await;
    assert!(none.is_none(), "{err}");

    // Replace api's task (start-first) while the client calls it.
    let calls = {
        let container = container.clone();
        tokio::spawn(async move { docker(&["exec", &container, "sh", "-c", LOOP]).await })
    };
    eventually(Duration::from_secs(10), "the calls started", || {
        let container = container.clone();
        async move {
            let out = docker(&["exec", &container, "sh", "-c", "test -e /tmp/started"]).await;
            out.status.success().then_some(())
        }
    })
    .await;
    let sp = api_spec(&t, "v2");
    let mut c = t.c.clone();
    c.update_service(pb::UpdateServiceRequest {
        service: api.clone(),
        spec: Some(sp),
        version: 0,
        force: true,
    })
    .await
    .expect("update api");
    update_completed(&c, &api).await;
    let (after, _) = call(&container, "api", "8080", "version").await;
    assert_eq!(after.as_deref(), Some("v2"), "the new task serves");
    docker(&["exec", &container, "sh", "-c", "touch /tmp/stop"]).await;
    let out = calls.await.expect("calls");
    let report = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let errors = String::from_utf8_lossy(&out.stderr).to_string();
    let fields: Vec<&str> = report.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "{report:?} {errors}");
    let (ok, failed): (u64, u64) = (
        fields[0].parse().expect("ok"),
        fields[1].parse().expect("failed"),
    );
    assert_eq!(
        failed,
        0,
        "{failed} failed calls of {}: {errors}",
        ok + failed
    );
    assert!(ok >= 10, "the calls ran all along: {ok}");
    assert_eq!(fields[2], "v2", "the last calls reached the new task");
    let now: Vec<pb::Task> = crate::harness::running(&crate::harness::tasks(&mut c, &api).await)
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(now.len(), 1);
    assert_ne!(now[0].id, api_tasks[0].id, "api's task was replaced");
    assert_eq!(now[0].node_id, node_b);

    // No task of the stack left: each node's network goes.
    for service in [&api, &caller] {
        c.remove_service(pb::RemoveServiceRequest {
            service: service.clone(),
        })
        .await
        .expect("remove");
    }
    eventually(
        Duration::from_secs(60),
        "the stack networks are removed",
        || {
            let stack = stack.clone();
            async move { stack_networks(&stack).await.is_empty().then_some(()) }
        },
    )
    .await;
    drop(t);
}

/// Every address `name` answers in the stack's DNS.
const ADDRESSES: &str =
    r#"nslookup "$1" 2>/dev/null | awk '/^Name:/{n=1} n && /^Address/{print $2}'"#;

#[tokio::test]
async fn dnsrr_answers_an_address_per_task() {
    let stack = unique("rr");
    let mut t = TwoNodes::start(&stack, &["db", "client"]).await;
    let db = format!("{stack}_db");
    // db: two tasks on B, each serving its own host name, endpoint_mode
    // dnsrr.
    let mut sp = spec(&db, 2);
    sp.args = vec![
        "sh".into(),
        "-c".into(),
        "/bin/busybox hostname > /www/who && exec /bin/busybox httpd -f -p 8080 -h /www".into(),
    ];
    sp.ports.push(pb::PortConfig {
        target: 8080,
        published: 0,
        protocol: "tcp".into(),
    });
    sp.endpoint_mode = "dnsrr".into();
    let host_b = t.host_b.clone();
    let sp = t.stacked(sp, &host_b);
    t.c.create_service(pb::CreateServiceRequest { spec: Some(sp) })
        .await
        .expect("create db");
    let container = t.caller().await;
    let tasks = converged(&mut t.c, &db, 2).await;
    assert!(tasks.iter().all(|task| task.node_id == t.node_b));
    let addresses = eventually(Duration::from_secs(60), "db answers two addresses", || {
        let container = container.clone();
        async move {
            let out = docker(&["exec", &container, "sh", "-c", ADDRESSES, "sh", "db"]).await;
            let mut a: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            a.sort();
            (a.len() == 2).then_some(a)
        }
    })
    .await;
    // Each address is one task: together, both tasks' host names.
    let mut who = Vec::new();
    for address in &addresses {
        assert!(address.starts_with("10.210."), "{address}");
        let script = format!("timeout 5 wget -q -O - http://{address}:8080/who");
        let out = docker(&["exec", &container, "sh", "-c", &script]).await;
        assert!(out.status.success(), "{address}: {out:?}");
        who.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    who.sort();
    who.dedup();
    assert_eq!(who.len(), 2, "two tasks behind the two addresses: {who:?}");
    // The same answers under the full name.
    let out = docker(&["exec", &container, "sh", "-c", ADDRESSES, "sh", &db]).await;
    let mut full: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    full.sort();
    assert_eq!(full, addresses);
    drop(t);
}

#[tokio::test]
async fn an_ingress_port_answers_on_every_node() {
    let stack = unique("ing");
    let mut t = TwoNodes::start(&stack, &["web"]).await;
    let web = format!("{stack}_web");
    // A port free now on every loopback address.
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut sp = versioned(&web, "v1", true);
    sp.mode = Some(pb::service_spec::Mode::Replicated(pb::Replicated {
        replicas: 1,
    }));
    sp.ports = vec![pb::PortConfig {
        target: 8080,
        published: u32::from(port),
        protocol: "tcp".into(),
    }];
    sp.ingress = true;
    let host_b = t.host_b.clone();
    let sp = t.stacked(sp, &host_b);
    t.c.create_service(pb::CreateServiceRequest { spec: Some(sp) })
        .await
        .expect("create web");
    let tasks = converged(&mut t.c, &web, 1).await;
    assert_eq!(tasks[0].node_id, t.node_b, "its only task runs on B");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .no_proxy()
        .build()
        .expect("client");
    // Both nodes' addresses answer, A's with no task of web.
    for address in [ADDRESS_A, ADDRESS_B] {
        let url = format!("http://{address}:{port}/version");
        eventually(Duration::from_secs(60), &format!("{url} answers"), || {
            let http = http.clone();
            let url = url.clone();
            async move {
                let r = http.get(&url).send().await.ok()?;
                let body = r.text().await.ok()?;
                (body.trim() == "v1").then_some(())
            }
        })
        .await;
    }
    // The task itself publishes its target port on a dynamic host port.
    let container = container_of(&web).await.expect("web's container");
    let published = docker_words(&["port", &container, "8080/tcp"]).await;
    assert!(!published.is_empty(), "published");
    assert!(
        published.iter().all(|p| !p.ends_with(&format!(":{port}"))),
        "the task does not take the ingress port itself: {published:?}"
    );
    drop(t);
}

#[tokio::test]
async fn a_stack_network_left_from_an_earlier_run_is_removed() {
    let stack = unique("stale");
    let t = TwoNodes::start(&stack, &[]).await;
    // A network as node A's agent makes them, of a stack with no task
    // here (an earlier run's), and one of another node, which stays.
    let name = format!("bronze_{stack}_old");
    let other = format!("bronze_{stack}_other");
    for (network, node) in [(&name, t.node_a.as_str()), (&other, "some-other-node")] {
        let out = docker(&[
            "network",
            "create",
            "--label",
            &format!("bronze.mesh.node={node}"),
            "--label",
            &format!("bronze.mesh.stack={stack}"),
            network,
        ])
        .await;
        assert!(out.status.success(), "{out:?}");
    }
    eventually(
        Duration::from_secs(30),
        "the stale network is removed",
        || {
            let stack = stack.clone();
            let name = name.clone();
            async move { (!stack_networks(&stack).await.contains(&name)).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        stack_networks(&stack).await,
        vec![other],
        "another node's network is not this agent's"
    );
    drop(t);
}
