//! `bronze service ...`: Docker's `docker service` commands over the
//! scheduler's control API. Each command is one function here or in its
//! own file (`create.rs` for create and update, `ps.rs`, `logs.rs`,
//! `inspect.rs`); they share the flags (`flags.rs`), the waiting
//! (`crate::progress`), tables and JSON.

mod create;
pub mod flags;
pub mod inspect;
mod logs;
pub mod ps;

use bronze_proto::scheduler::v1 as pb;
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::client::{Api, Error};
use crate::progress::{self, RULE, WaitFlags};
use crate::table::Table;
use crate::{json, words};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a service: IMAGE run as tasks (docker service create).
    ///
    /// COMMAND and ARGs replace the image's CMD (--entrypoint replaces its
    /// ENTRYPOINT). Without --name, the name is the image's with a random
    /// suffix. Prints the service's id, then waits for its tasks.
    #[command(after_long_help = RULE)]
    Create(Box<create::CreateArgs>),

    /// List services (docker service ls).
    ///
    /// Columns: ID, NAME, MODE (replicated or global), REPLICAS (running
    /// tasks of the current version / tasks asked for), IMAGE, PORTS
    /// ("*:8080->80/tcp" for a fixed host port, "80/tcp" when each task
    /// gets one from the engine: see `service ps`).
    #[command(visible_alias = "list")]
    Ls(LsArgs),

    /// List a service's tasks with their history (docker service ps).
    ///
    /// One row per task, newest first in each slot; older tasks of a slot
    /// are indented with "\_". CURRENT STATE is the task's observed state
    /// and how long ago it was reached; ERROR says why a task is pending or
    /// how it failed; PORTS are the host ports its container published.
    Ps(ps::PsArgs),

    /// Show services as JSON (docker service inspect).
    ///
    /// Always JSON (an array, one object per service, the proto's field
    /// names), unless --pretty.
    Inspect(inspect::InspectArgs),

    /// Change a service (docker service update).
    ///
    /// Reads the service's current spec, applies the flags, and sends it
    /// back with the version it read: if someone changed the service
    /// meanwhile, the update is refused and nothing changes (run it
    /// again). A change to what tasks run (image, command, env, ports,
    /// resources, ...) replaces the tasks as a rolling update
    /// (--update-parallelism, --update-delay, --update-order); a change of
    /// --replicas or of service labels replaces nothing.
    #[command(after_long_help = RULE)]
    Update(Box<create::UpdateArgs>),

    /// Set the number of tasks of replicated services (docker service
    /// scale): `bronze service scale web=5 api=2`.
    #[command(after_long_help = RULE)]
    Scale(ScaleArgs),

    /// Go back to a service's version before its last update (docker
    /// service rollback), as a rolling update with the --rollback-*
    /// settings of the version rolled back from.
    #[command(after_long_help = RULE)]
    Rollback(RollbackArgs),

    /// Remove services (docker service rm): their tasks are stopped, then
    /// their containers removed.
    #[command(visible_alias = "remove")]
    Rm(RmArgs),

    /// Print a service's container output (docker service logs).
    ///
    /// Each line is prefixed with its task ("web.1.abc123def456@host1    |
    /// "); stderr lines go to stderr. With --output json, one JSON object
    /// per line: {"source", "task_id", "stream", "line"}.
    Logs(logs::LogsArgs),
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only print the services' ids.
    #[arg(short, long)]
    pub quiet: bool,

    /// Only services matching: name=PREFIX, id=PREFIX, mode=replicated|global,
    /// label=KEY or label=KEY=VALUE (repeat to narrow).
    #[arg(short, long, value_name = "FILTER")]
    pub filter: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// SERVICE=REPLICAS pairs.
    #[arg(required = true, value_name = "SERVICE=REPLICAS", value_parser = parse_scale)]
    services: Vec<(String, u64)>,

    #[command(flatten)]
    wait: WaitFlags,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Service name or id.
    service: String,

    #[command(flatten)]
    wait: WaitFlags,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Service names or ids.
    #[arg(required = true, value_name = "SERVICE")]
    services: Vec<String>,
}

fn parse_scale(s: &str) -> Result<(String, u64), String> {
    let (name, n) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected SERVICE=REPLICAS, e.g. web=3"))?;
    let n = n
        .parse::<u64>()
        .map_err(|_| format!("{s:?}: replicas {n:?} is not a number 0 or more"))?;
    if name.is_empty() {
        return Err(format!("{s:?}: expected SERVICE=REPLICAS, e.g. web=3"));
    }
    Ok((name.to_string(), n))
}

pub async fn run(cmd: Command, api: &mut Api) -> Result<(), Error> {
    match cmd {
        Command::Create(a) => create::create(api, *a).await,
        Command::Ls(a) => ls(api, a).await,
        Command::Ps(a) => ps::run(api, &a.services, a.options, "").await,
        Command::Inspect(a) => inspect::run(api, a).await,
        Command::Update(a) => create::update(api, *a).await,
        Command::Scale(a) => scale(api, a).await,
        Command::Rollback(a) => rollback(api, a).await,
        Command::Rm(a) => rm(api, a).await,
        Command::Logs(a) => logs::run(api, a).await,
    }
}

/// "2/3", with Docker's "(max 1 per node)".
fn replicas_column(r: &pb::ServiceResponse) -> String {
    let status = r.status.clone().unwrap_or_default();
    let mut s = format!("{}/{}", status.running, status.desired);
    let max = r
        .service
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.placement.as_ref())
        .map_or(0, |p| p.max_replicas_per_node);
    if max > 0 {
        s.push_str(&format!(" (max {max} per node)"));
    }
    s
}

fn matches_filter(r: &pb::ServiceResponse, filter: &str) -> Result<bool, Error> {
    let service = r.service.clone().unwrap_or_default();
    let spec = service.spec.clone().unwrap_or_default();
    let (key, value) = filter.split_once('=').ok_or_else(|| {
        Error::msg(format!(
            "--filter {filter:?}: expected name=, id=, mode= or label="
        ))
    })?;
    Ok(match key {
        "name" => spec.name.starts_with(value),
        "id" => service.id.starts_with(value),
        "mode" => words::mode(&spec) == value,
        "label" => match value.split_once('=') {
            Some((k, v)) => spec.labels.get(k).is_some_and(|x| x == v),
            None => spec.labels.contains_key(value),
        },
        other => {
            return Err(Error::msg(format!(
                "--filter {other:?}: expected name, id, mode or label"
            )));
        }
    })
}

pub async fn ls(api: &mut Api, args: LsArgs) -> Result<(), Error> {
    let mut services = Vec::new();
    for r in api.list_services().await? {
        let mut keep = true;
        for f in &args.filter {
            keep &= matches_filter(&r, f)?;
        }
        if keep {
            services.push(r);
        }
    }
    if api.json() {
        json::print(&Value::Array(services.iter().map(json::service).collect()));
        return Ok(());
    }
    if args.quiet {
        for r in &services {
            println!("{}", r.service.as_ref().map_or("", |s| s.id.as_str()));
        }
        return Ok(());
    }
    let mut t = Table::new(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]);
    for r in &services {
        let service = r.service.clone().unwrap_or_default();
        let spec = service.spec.clone().unwrap_or_default();
        t.row(vec![
            words::short(&service.id).to_string(),
            spec.name.clone(),
            words::mode(&spec).to_string(),
            replicas_column(r),
            spec.image.clone(),
            spec.ports
                .iter()
                .map(words::spec_port)
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

/// After a change: waits as the flags say, then prints the service as JSON
/// when asked to.
async fn settle(
    api: &mut Api,
    name: &str,
    first: pb::ServiceResponse,
    wait: &WaitFlags,
) -> Result<pb::ServiceResponse, Error> {
    for w in &first.warnings {
        eprintln!("warning: {w}");
    }
    if wait.detach {
        return Ok(first);
    }
    progress::wait(api, name, wait, &first).await
}

async fn scale(api: &mut Api, args: ScaleArgs) -> Result<(), Error> {
    let mut scaled = Vec::new();
    let mut failed = false;
    for (name, n) in &args.services {
        let r = api
            .client
            .scale_service(pb::ScaleServiceRequest {
                service: name.clone(),
                replicas: *n,
            })
            .await;
        match r {
            Ok(r) => {
                if !api.json() {
                    println!("{name} scaled to {n}");
                }
                scaled.push((name.clone(), r.into_inner()));
            }
            Err(s) => {
                eprintln!("bronze: {}", api.err(s));
                failed = true;
            }
        }
    }
    let mut out = Vec::new();
    for (name, first) in scaled {
        match settle(api, &name, first, &args.wait).await {
            Ok(r) => out.push(json::service(&r)),
            Err(e @ Error::Interrupted(_)) => return Err(e),
            Err(e) => {
                eprintln!("bronze: {e}");
                failed = true;
            }
        }
    }
    if api.json() {
        json::print(&Value::Array(out));
    }
    if failed { Err(Error::Reported) } else { Ok(()) }
}

async fn rollback(api: &mut Api, args: RollbackArgs) -> Result<(), Error> {
    let first = api
        .client
        .rollback_service(pb::RollbackServiceRequest {
            service: args.service.clone(),
        })
        .await
        .map_err(|s| api.err(s))?
        .into_inner();
    if !api.json() {
        println!("{}", args.service);
    }
    let r = settle(api, &args.service, first, &args.wait).await?;
    if api.json() {
        json::print(&json::service(&r));
    }
    Ok(())
}

async fn rm(api: &mut Api, args: RmArgs) -> Result<(), Error> {
    crate::client::remove_each(api, &args.services, async |api, name| {
        api.client
            .remove_service(pb::RemoveServiceRequest {
                service: name.clone(),
            })
            .await
            .map(|_| ())
            .map_err(|s| api.err(s))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_pairs() {
        assert_eq!(parse_scale("web=5"), Ok(("web".into(), 5)));
        assert!(parse_scale("web").is_err());
        assert!(parse_scale("web=-1").is_err());
        assert!(parse_scale("=1").is_err());
    }
}
