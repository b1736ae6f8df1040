//! Service-to-service naming inside a stack, across two nodes: agents with
//! `--discovery`, discovery and a registrator in this process, the engine
//! shared (each agent its own node, network and virtual IPs). A client
//! task on node A calls `api` (whose only task runs on node B) by name and
//! target port from inside its container, and keeps succeeding while that
//! task is replaced (start-first). The registrator registers instances on
//! loopback, so a call to another node's instance takes the agent's
//! userland forwarder, and a call to an instance on the caller's node the
//! kernel path (DNAT to the container's address). Traffic stays on this
//! machine: the containers' bridge networks and loopback.
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
    /// A's agent, then B's.
    agents: Vec<Agent>,
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
            agents,
            _s: s,
            _p: p,
            _cleanup: cleanup,
            _networks: networks,
        }
    }

    /// Stops the agents as at SIGTERM (their rules go with them), then
    /// removes the rest.
    async fn stop(mut self) {
        for agent in std::mem::take(&mut self.agents) {
            agent.stop().await;
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
    let sp = api_spec(&t, "v2");
    let mut c = t.c.clone();
    replace_while_calling(&mut c, &container, sp).await;
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
    t.stop().await;
}

/// Updates the stack's `api` to `sp` (serving "v2", start-first, forced)
/// while the client in `container` calls `api` by name in a loop; asserts
/// that no call failed, that they ran all along and that the last ones
/// reached the new task.
async fn replace_while_calling(
    c: &mut crate::harness::Client,
    container: &str,
    sp: pb::ServiceSpec,
) {
    let calls = {
        let container = container.to_string();
        tokio::spawn(async move { docker(&["exec", &container, "sh", "-c", LOOP]).await })
    };
    eventually(Duration::from_secs(10), "the calls started", || async {
        let out = docker(&["exec", container, "sh", "-c", "test -e /tmp/started"]).await;
        out.status.success().then_some(())
    })
    .await;
    let api = sp.name.clone();
    c.update_service(pb::UpdateServiceRequest {
        service: api.clone(),
        spec: Some(sp),
        version: 0,
        force: true,
    })
    .await
    .expect("update api");
    update_completed(c, &api).await;
    let (after, _) = call(container, "api", "8080", "version").await;
    assert_eq!(after.as_deref(), Some("v2"), "the new task serves");
    docker(&["exec", container, "sh", "-c", "touch /tmp/stop"]).await;
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
    t.stop().await;
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
    t.stop().await;
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
    // Rules of an agent gone without removing them (its node has no stack
    // network here): the jumps and chains go too.
    let gone = bronze_agent::mesh::nat::tag(&format!("{stack}-gone"));
    let chain = bronze_agent::mesh::nat::top_chain(&gone);
    let rules =
        format!("*filter\n:{chain} - [0:0]\n-A INPUT -d 10.210.0.0/16 -j {chain}\nCOMMIT\n");
    let mut restore = tokio::process::Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .spawn()
        .expect("iptables-restore runs");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = restore.stdin.take().expect("stdin");
        stdin
            .write_all(rules.as_bytes())
            .await
            .expect("rules written");
    }
    assert!(restore.wait().await.expect("iptables-restore").success());
    eventually(
        Duration::from_secs(30),
        "the rules of an agent gone are removed",
        || {
            let chain = chain.clone();
            async move { (!iptables_save().await.contains(&chain)).then_some(()) }
        },
    )
    .await;
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
    t.stop().await;
}

/// `container`'s address on its (only) network, the stack's.
async fn address_of(container: &str) -> String {
    docker_words(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        container,
    ])
    .await
    .into_iter()
    .next()
    .unwrap_or_else(|| panic!("{container} has no address"))
}

/// Every rule of both tables, as `iptables-save` prints them.
async fn iptables_save() -> String {
    let out = tokio::process::Command::new("iptables-save")
        .output()
        .await
        .expect("iptables-save runs");
    assert!(out.status.success(), "iptables-save: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a socket of this network namespace listens on `addr`
/// (`/proc/net/tcp`: little-endian address, state 0A).
fn listening(addr: std::net::SocketAddrV4) -> bool {
    let o = addr.ip().octets();
    let local = format!(
        "{:02X}{:02X}{:02X}{:02X}:{:04X}",
        o[3],
        o[2],
        o[1],
        o[0],
        addr.port()
    );
    std::fs::read_to_string("/proc/net/tcp")
        .expect("/proc/net/tcp")
        .lines()
        .skip(1)
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A")
        })
}

#[tokio::test]
async fn a_call_by_name_takes_the_kernel_path_whose_rules_go_with_the_agent() {
    let stack = unique("nat");
    let mut t = TwoNodes::start(&stack, &["api", "down", "client"]).await;
    let (api, down) = (format!("{stack}_api"), format!("{stack}_down"));
    let host_a = t.host_a.clone();
    // api on A, the client's node; down on A too, never passing (its
    // health check's first probe is an hour away: "starting").
    let mut sp = versioned(&api, "v1", true);
    sp.mode = Some(pb::service_spec::Mode::Replicated(pb::Replicated {
        replicas: 1,
    }));
    let sp = t.stacked(sp, &host_a);
    t.c.create_service(pb::CreateServiceRequest { spec: Some(sp) })
        .await
        .expect("create api");
    let mut sp = versioned(&down, "v0", true);
    sp.mode = Some(pb::service_spec::Mode::Replicated(pb::Replicated {
        replicas: 1,
    }));
    if let Some(h) = sp.healthcheck.as_mut() {
        h.interval = Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        });
    }
    let sp = t.stacked(sp, &host_a);
    t.c.create_service(pb::CreateServiceRequest { spec: Some(sp) })
        .await
        .expect("create down");
    let container = t.caller().await;
    converged(&mut t.c, &api, 1).await;
    let api_container = eventually(Duration::from_secs(30), "api's container", || {
        container_of(&api)
    })
    .await;
    let api_address = address_of(&api_container).await;
    let tag = bronze_agent::mesh::nat::tag(&t.node_a);
    let chain = bronze_agent::mesh::nat::top_chain(&tag);
    let dnat = format!("-j DNAT --to-destination {api_address}:8080");

    // The call by name succeeds, the rules DNAT api's virtual address to
    // its container, and nothing listens there: not the forwarder.
    let vip = eventually(
        Duration::from_secs(60),
        "api is called by name through the kernel's DNAT",
        || {
            let (container, dnat, tag) = (container.clone(), dnat.clone(), tag.clone());
            async move {
                let (answer, address) = call(&container, "api", "8080", "version").await;
                if answer.as_deref() != Some("v1") {
                    eprintln!("not yet: {address}");
                    return None;
                }
                let vip: std::net::Ipv4Addr = address.parse().ok()?;
                let rules = iptables_save().await;
                let ours = rules
                    .lines()
                    .any(|l| l.contains(&tag) && l.ends_with(&dnat));
                let listened = listening(std::net::SocketAddrV4::new(vip, 8080));
                if !ours || listened {
                    eprintln!("not yet: DNAT to api {ours}, a listener at {vip}:8080 {listened}");
                    return None;
                }
                Some(vip)
            }
        },
    )
    .await;
    let rules = iptables_save().await;
    assert!(
        rules.contains(&format!(
            "-A {chain} -d {vip}/32 -p tcp -m tcp --dport 8080 -j "
        )),
        "{vip}:8080 goes to its own chain: {rules}"
    );
    let (again, _) = call(&container, &api, "8080", "version").await;
    assert_eq!(again.as_deref(), Some("v1"), "by its full name too");

    // Replaced (start-first) under calls by name: none fails, new
    // connections reach the new task, and the rule follows its container.
    let mut sp = versioned(&api, "v2", true);
    sp.mode = Some(pb::service_spec::Mode::Replicated(pb::Replicated {
        replicas: 1,
    }));
    let sp = t.stacked(sp, &host_a);
    let mut c = t.c.clone();
    replace_while_calling(&mut c, &container, sp).await;
    let new_container = eventually(Duration::from_secs(30), "api's new container", || {
        let (api, old) = (api.clone(), api_container.clone());
        async move { container_of(&api).await.filter(|c| *c != old) }
    })
    .await;
    let new_address = address_of(&new_container).await;
    eventually(
        Duration::from_secs(30),
        "the rule follows the new task",
        || {
            let (tag, old, new) = (
                tag.clone(),
                dnat.clone(),
                format!("-j DNAT --to-destination {new_address}:8080"),
            );
            async move {
                let rules = iptables_save().await;
                let ours: Vec<&str> = rules.lines().filter(|l| l.contains(&tag)).collect();
                (ours.iter().any(|l| l.ends_with(&new)) && !ours.iter().any(|l| l.ends_with(&old)))
                    .then_some(())
            }
        },
    )
    .await;

    // down has a virtual address and no passing instance: refused at once
    // (a TCP reset), not left to time out.
    eventually(
        Duration::from_secs(60),
        "a call to down is refused by the kernel",
        || {
            let (container, chain) = (container.clone(), chain.clone());
            async move {
                let (_, address) = call(&container, "down", "8080", "version").await;
                let vip = address.lines().next()?.trim().to_string();
                let rules = iptables_save().await;
                let reject = format!(
                    "-A {chain} -d {vip}/32 -p tcp -m tcp --dport 8080 -j REJECT --reject-with tcp-reset"
                );
                rules.lines().any(|l| l == reject).then_some(())
            }
        },
    )
    .await;
    // A reset, not a timeout: "refused" is what the client says for the
    // former (no wall-clock bound here: the exec alone can be slow on a
    // loaded machine).
    let (none, err) = call(&container, "down", "8080", "version").await;
    assert!(none.is_none(), "down answered: {err}");
    assert!(err.contains("refused"), "refused, not timed out: {err}");

    // The agent stops (as at SIGTERM): no chain or rule of its node left.
    let agent_a = t.agents.remove(0);
    agent_a.stop().await;
    let rules = iptables_save().await;
    let left: Vec<&str> = rules.lines().filter(|l| l.contains(&tag)).collect();
    assert!(left.is_empty(), "rules left after the agent: {left:?}");
    t.stop().await;
}
