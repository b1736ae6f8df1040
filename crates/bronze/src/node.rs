//! `bronze node ...`: Docker's `docker node` commands (and `docker swarm
//! join-token`) over the scheduler's control API.

use bronze_proto::scheduler::v1 as pb;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::client::{Api, Error};
use crate::service::flags::parse_label;
use crate::service::inspect::Pretty;
use crate::service::ps::{self, PsOptions};
use crate::table::Table;
use crate::units::{format_cpus, format_size, rfc3339};
use crate::{json, words};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List nodes (docker node ls).
    ///
    /// Columns: ID, HOSTNAME, STATUS (Ready, Down: its agent missed
    /// heartbeats past the grace), AVAILABILITY (Active, Pause: no new
    /// tasks, Drain: tasks moved away), ROLE, TASKS (tasks that should run
    /// there), ENGINE VERSION.
    #[command(visible_alias = "list")]
    Ls(LsArgs),

    /// Show nodes as JSON (docker node inspect); --pretty for text.
    Inspect(InspectArgs),

    /// Change a node's availability or labels (docker node update).
    ///
    /// pause: no new tasks are placed there, running ones stay. drain:
    /// its tasks are started elsewhere first, then stopped there. Labels
    /// are what `node.labels.KEY==VALUE` constraints match; a pending task
    /// that a new label lets in is placed at once.
    Update(UpdateArgs),

    /// Forget nodes (docker node rm). A node whose agent is connected
    /// (Ready) is refused unless --force; its tasks are then replaced
    /// elsewhere.
    #[command(visible_alias = "remove")]
    Rm(RmArgs),

    /// List the tasks on a node (docker node ps), as `service ps` does.
    Ps(PsArgs),

    /// Print the token agents join with (docker swarm join-token), and how
    /// to start an agent with it.
    ///
    /// --rotate makes a new token: agents that joined keep their sessions;
    /// new sessions need the new token.
    JoinToken(JoinTokenArgs),
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only print the nodes' ids.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Node hostnames or ids.
    #[arg(required = true, value_name = "NODE")]
    nodes: Vec<String>,

    /// Readable text instead of JSON.
    #[arg(long)]
    pretty: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// active, pause (no new tasks) or drain (move its tasks away).
    #[arg(long, value_enum)]
    availability: Option<Availability>,

    /// Add or replace a node label (repeat).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    label_add: Vec<(String, String)>,

    /// Remove a node label (repeat).
    #[arg(long, value_name = "KEY")]
    label_rm: Vec<String>,

    /// Node hostname or id.
    node: String,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remove even a node whose agent is connected.
    #[arg(short, long)]
    force: bool,

    /// Node hostnames or ids.
    #[arg(required = true, value_name = "NODE")]
    nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Node hostname or id.
    node: String,

    #[command(flatten)]
    options: PsOptions,
}

#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    /// Make a new token (the old one stops working for new sessions).
    #[arg(long)]
    rotate: bool,

    /// Only print the token.
    #[arg(short, long)]
    quiet: bool,
}

pub async fn run(cmd: Command, api: &mut Api) -> Result<(), Error> {
    match cmd {
        Command::Ls(a) => ls(api, a).await,
        Command::Inspect(a) => inspect(api, a).await,
        Command::Update(a) => update(api, a).await,
        Command::Rm(a) => rm(api, a).await,
        Command::Ps(a) => ps::run(api, &[], a.options, &a.node).await,
        Command::JoinToken(a) => join_token(api, a).await,
    }
}

async fn ls(api: &mut Api, a: LsArgs) -> Result<(), Error> {
    let nodes = api.list_nodes().await?;
    if api.json() {
        json::print(&Value::Array(nodes.iter().map(json::node).collect()));
        return Ok(());
    }
    if a.quiet {
        for n in &nodes {
            println!("{}", n.id);
        }
        return Ok(());
    }
    let mut t = Table::new(&[
        "ID",
        "HOSTNAME",
        "STATUS",
        "AVAILABILITY",
        "ROLE",
        "TASKS",
        "ENGINE VERSION",
    ]);
    for n in &nodes {
        t.row(vec![
            n.id.clone(),
            n.hostname.clone(),
            words::capitalized(words::node_state(n.state)),
            words::capitalized(words::availability(n.availability)),
            words::role(n.role).to_string(),
            n.tasks.to_string(),
            n.engine
                .as_ref()
                .map(|e| e.version.clone())
                .unwrap_or_default(),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

fn pretty(n: &pb::Node) -> String {
    let mut p = Pretty::default();
    p.kv(0, "ID", n.id.clone());
    p.kv(0, "Hostname", n.hostname.clone());
    if let Some(t) = &n.created_at {
        p.kv(0, "Joined at", rfc3339(t));
    }
    if !n.labels.is_empty() {
        p.kv(0, "Labels", "");
        let mut labels: Vec<_> = n.labels.iter().collect();
        labels.sort();
        for (k, v) in labels {
            p.line(1, &format!("{k}={v}"));
        }
    }
    p.kv(0, "Status", "");
    p.kv(1, "State", words::capitalized(words::node_state(n.state)));
    if !n.state_message.is_empty() {
        p.kv(1, "Message", n.state_message.clone());
    }
    p.kv(
        1,
        "Availability",
        words::capitalized(words::availability(n.availability)),
    );
    p.kv(1, "Address", n.address.clone());
    p.kv(0, "Role", words::role(n.role));
    p.kv(0, "Tasks", n.tasks.to_string());
    let engine = n.engine.clone().unwrap_or_default();
    p.kv(0, "Platform", "");
    p.kv(1, "Operating System", engine.os.clone());
    p.kv(1, "Architecture", engine.arch.clone());
    let res = n.resources.unwrap_or_default();
    let reserved = n.reserved.unwrap_or_default();
    p.kv(0, "Resources", "");
    p.kv(
        1,
        "CPUs",
        format!(
            "{} ({} reserved)",
            format_cpus(res.nano_cpus),
            format_cpus(reserved.nano_cpus)
        ),
    );
    p.kv(
        1,
        "Memory",
        format!(
            "{} ({} reserved)",
            format_size(res.memory_bytes),
            format_size(reserved.memory_bytes)
        ),
    );
    p.kv(0, "Engine Version", engine.version.clone());
    if !engine.labels.is_empty() {
        p.kv(0, "Engine Labels", "");
        let mut labels: Vec<_> = engine.labels.iter().collect();
        labels.sort();
        for (k, v) in labels {
            p.line(1, &format!("{k}={v}"));
        }
    }
    p.render()
}

async fn get(api: &mut Api, node: &str) -> Result<pb::Node, Error> {
    api.client
        .get_node(pb::GetNodeRequest {
            node: node.to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| api.err(s))
}

async fn inspect(api: &mut Api, a: InspectArgs) -> Result<(), Error> {
    let text: fn(&pb::Node) -> String = pretty;
    crate::client::inspect_each(
        api,
        &a.nodes,
        a.pretty.then_some(text),
        json::node,
        async |api, name| get(api, name).await,
    )
    .await
}

async fn update(api: &mut Api, a: UpdateArgs) -> Result<(), Error> {
    if a.availability.is_none() && a.label_add.is_empty() && a.label_rm.is_empty() {
        return Err(Error::msg(
            "nothing to change: give --availability, --label-add or --label-rm",
        ));
    }
    let availability = match a.availability {
        None => pb::NodeAvailability::Unspecified,
        Some(Availability::Active) => pb::NodeAvailability::Active,
        Some(Availability::Pause) => pb::NodeAvailability::Pause,
        Some(Availability::Drain) => pb::NodeAvailability::Drain,
    };
    let node = api
        .client
        .update_node(pb::UpdateNodeRequest {
            node: a.node.clone(),
            availability: availability.into(),
            label_add: a.label_add.iter().cloned().collect(),
            label_rm: a.label_rm.clone(),
        })
        .await
        .map_err(|s| api.err(s))?
        .into_inner();
    if api.json() {
        json::print(&json::node(&node));
    } else {
        println!("{}", a.node);
    }
    Ok(())
}

async fn rm(api: &mut Api, a: RmArgs) -> Result<(), Error> {
    let force = a.force;
    crate::client::remove_each(api, &a.nodes, async |api, name| {
        api.client
            .remove_node(pb::RemoveNodeRequest {
                node: name.clone(),
                force,
            })
            .await
            .map(|_| ())
            .map_err(|s| api.err(s))
    })
    .await
}

async fn join_token(api: &mut Api, a: JoinTokenArgs) -> Result<(), Error> {
    let token = api
        .client
        .join_token(pb::JoinTokenRequest { rotate: a.rotate })
        .await
        .map_err(|s| api.err(s))?
        .into_inner()
        .token;
    if api.json() {
        json::print(&json!({ "token": token }));
    } else if a.quiet {
        println!("{token}");
    } else {
        if a.rotate {
            println!("Successfully rotated the join token.\n");
        }
        println!(
            "To add a node to this cluster, run on it:\n\n    bronze-agent --scheduler {} \
             --join-token {token}\n",
            api.url
        );
    }
    Ok(())
}
