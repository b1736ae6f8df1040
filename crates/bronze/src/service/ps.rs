//! `service ps` (and `node ps`): tasks as Docker's table shows them, the
//! history of a slot under its current task, indented with "\_".

use std::collections::HashMap;
use std::time::SystemTime;

use bronze_proto::scheduler::v1 as pb;
use clap::Args;
use serde_json::Value;

use crate::client::{Api, Error};
use crate::table::Table;
use crate::units::ago;
use crate::{json, words};

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Service names or ids.
    #[arg(required = true, value_name = "SERVICE")]
    pub services: Vec<String>,

    #[command(flatten)]
    pub options: PsOptions,
}

#[derive(Debug, Clone, Args)]
pub struct PsOptions {
    /// Only tasks matching: desired-state=running|shutdown, node=NODE
    /// (hostname or id), id=PREFIX, name=TASK (e.g. web.1). Repeat to narrow.
    #[arg(short, long, value_name = "FILTER")]
    pub filter: Vec<String>,

    /// Full ids, and task names with their id.
    #[arg(long)]
    pub no_trunc: bool,

    /// Only print the tasks' ids.
    #[arg(short, long)]
    pub quiet: bool,
}

/// What the filters ask, split into what the scheduler filters and what is
/// filtered here.
#[derive(Default)]
struct Filters {
    desired_running: bool,
    desired_shutdown: bool,
    node: String,
    ids: Vec<String>,
    names: Vec<String>,
}

fn parse_filters(filters: &[String]) -> Result<Filters, Error> {
    let mut f = Filters::default();
    for x in filters {
        let (k, v) = x.split_once('=').ok_or_else(|| {
            Error::msg(format!(
                "--filter {x:?}: expected desired-state=, node=, id= or name="
            ))
        })?;
        match (k, v) {
            ("desired-state", "running" | "accepted") => f.desired_running = true,
            ("desired-state", "shutdown") => f.desired_shutdown = true,
            ("desired-state", other) => {
                return Err(Error::msg(format!(
                    "--filter desired-state={other}: expected running or shutdown"
                )));
            }
            ("node", v) => f.node = v.to_string(),
            ("id", v) => f.ids.push(v.to_string()),
            ("name", v) => f.names.push(v.to_string()),
            (other, _) => {
                return Err(Error::msg(format!(
                    "--filter {other:?}: expected desired-state, node, id or name"
                )));
            }
        }
    }
    Ok(f)
}

/// A task's name as Docker prints it: "web.1", or "web.<node>" for a
/// global service's task; with --no-trunc, the task id after it.
pub fn task_name(t: &pb::Task, no_trunc: bool) -> String {
    let slot = if t.slot == 0 {
        if no_trunc {
            t.node_id.clone()
        } else {
            words::short(&t.node_id).to_string()
        }
    } else {
        t.slot.to_string()
    };
    if no_trunc {
        format!("{}.{slot}.{}", t.service_name, t.id)
    } else {
        format!("{}.{slot}", t.service_name)
    }
}

/// The ERROR column: the engine's error, why a task is pending, or its
/// exit code; quoted as Docker's.
fn error_column(t: &pb::Task) -> String {
    let st = t.status.clone().unwrap_or_default();
    let text = if !st.err.is_empty() {
        st.err
    } else if matches!(
        pb::TaskState::try_from(st.state),
        Ok(pb::TaskState::Pending | pb::TaskState::Rejected | pb::TaskState::Orphaned)
    ) {
        st.message
    } else if st.state == i32::from(pb::TaskState::Failed) {
        match st.exit_code {
            Some(code) => format!("task: non-zero exit ({code})"),
            None => st.message,
        }
    } else {
        String::new()
    };
    if text.is_empty() {
        text
    } else {
        format!("\"{text}\"")
    }
}

/// "Running 5 seconds ago".
fn current_state(t: &pb::Task, now: SystemTime) -> String {
    let st = t.status.clone().unwrap_or_default();
    let state = words::capitalized(words::task_state(st.state));
    match st.timestamp.as_ref().or(t.created_at.as_ref()) {
        Some(ts) => format!("{state} {}", ago(ts, now)),
        None => state,
    }
}

/// The table of `tasks` (in the scheduler's order: service, slot, newest
/// first), history rows indented.
pub fn table(tasks: &[pb::Task], hosts: &HashMap<String, String>, no_trunc: bool) -> String {
    let now = SystemTime::now();
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "IMAGE",
        "NODE",
        "DESIRED STATE",
        "CURRENT STATE",
        "ERROR",
        "PORTS",
    ]);
    let mut previous: Option<(String, u64, String)> = None;
    for task in tasks {
        let key = (
            task.service_id.clone(),
            task.slot,
            if task.slot == 0 {
                task.node_id.clone()
            } else {
                String::new()
            },
        );
        let mut name = task_name(task, no_trunc);
        if previous.as_ref() == Some(&key) {
            name = format!(" \\_ {name}");
        }
        previous = Some(key);
        let node = if task.node_id.is_empty() {
            String::new()
        } else {
            hosts
                .get(&task.node_id)
                .cloned()
                .unwrap_or_else(|| words::short(&task.node_id).to_string())
        };
        let st = task.status.clone().unwrap_or_default();
        t.row(vec![
            if no_trunc {
                task.id.clone()
            } else {
                words::short(&task.id).to_string()
            },
            name,
            task.image.clone(),
            node,
            words::capitalized(words::task_state(task.desired_state)),
            current_state(task, now),
            error_column(task),
            st.ports
                .iter()
                .map(words::task_port)
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    t.render()
}

/// Tasks of `services` (or of every service when empty) on `node` (or any
/// when empty), printed as the options say.
pub async fn run(
    api: &mut Api,
    services: &[String],
    options: PsOptions,
    node: &str,
) -> Result<(), Error> {
    let f = parse_filters(&options.filter)?;
    let node = if f.node.is_empty() { node } else { &f.node };
    let mut tasks = Vec::new();
    if services.is_empty() {
        tasks = api.list_tasks("", node, f.desired_running).await?;
    } else {
        for s in services {
            tasks.extend(api.list_tasks(s, node, f.desired_running).await?);
        }
    }
    let shutdown = i32::from(pb::TaskState::Shutdown);
    tasks.retain(|t| {
        (!f.desired_shutdown || t.desired_state == shutdown)
            && (f.ids.is_empty() || f.ids.iter().any(|p| t.id.starts_with(p.as_str())))
            && (f.names.is_empty() || f.names.contains(&task_name(t, false)))
    });
    if api.json() {
        json::print(&Value::Array(tasks.iter().map(json::task).collect()));
        return Ok(());
    }
    if options.quiet {
        for t in &tasks {
            if options.no_trunc {
                println!("{}", t.id);
            } else {
                println!("{}", words::short(&t.id));
            }
        }
        return Ok(());
    }
    let hosts: HashMap<String, String> = api
        .list_nodes()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|n| (n.id, n.hostname))
        .collect();
    print!("{}", table(&tasks, &hosts, options.no_trunc));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_rows_are_indented() {
        let task = |id: &str, slot: u64, state: pb::TaskState, desired: pb::TaskState| pb::Task {
            id: id.into(),
            service_id: "s".into(),
            service_name: "web".into(),
            slot,
            node_id: "n1".into(),
            image: "busybox".into(),
            desired_state: desired.into(),
            status: Some(pb::TaskStatus {
                state: state.into(),
                exit_code: (state == pb::TaskState::Failed).then_some(1),
                ports: vec![pb::PortConfig {
                    target: 80,
                    published: 30000,
                    protocol: "tcp".into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        use pb::TaskState::*;
        let tasks = [
            task("t1new", 1, Running, Running),
            task("t1old", 1, Failed, Shutdown),
            task("t2", 2, Running, Running),
        ];
        let hosts = HashMap::from([("n1".to_string(), "host1".to_string())]);
        let out = table(&tasks, &hosts, false);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("ID "), "{out}");
        assert!(lines[1].contains("   web.1   "), "{out}");
        assert!(lines[2].contains(r"    \_ web.1   "), "{out}");
        assert!(lines[2].contains("\"task: non-zero exit (1)\""), "{out}");
        assert!(lines[3].contains("   web.2   "), "{out}");
        assert!(lines[1].contains("host1"), "{out}");
        assert!(lines[1].ends_with("*:30000->80/tcp"), "{out}");
    }
}
