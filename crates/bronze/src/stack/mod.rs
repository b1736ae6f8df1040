//! `bronze stack ...`: Docker's `docker stack` commands. A stack is the
//! services labelled `com.docker.stack.namespace=NAME`, named
//! `NAME_service`, as Swarm names them; nothing else records it, so a
//! stack deployed by hand-made services with that label is one too.
//!
//! `deploy.rs` turns compose files (`bronze-compose` loads them) into
//! specs (`convert.rs`), resolves image digests (`resolve.rs`), and hands
//! the changes to `rollout.rs`, the one loop that submits them in
//! `depends_on` order and waits for the whole stack (also for `rollback`).
//! The listing commands reuse `service ls` and `service ps`.

mod convert;
mod deploy;
mod resolve;
mod rollout;

use std::collections::BTreeMap;

use bronze_proto::scheduler::v1 as pb;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::{Api, ApiArgs, Error};
use crate::progress::WaitFlags;
use crate::service::ps::{self, PsOptions};
use crate::table::Table;

/// The label naming a service's stack (Swarm's).
pub const NAMESPACE: &str = "com.docker.stack.namespace";
/// The label keeping the image as the file wrote it, before its digest
/// was resolved (Swarm's).
pub const IMAGE_LABEL: &str = "com.docker.stack.image";

/// What `--help` says about waiting for a stack.
const STACK_RULE: &str = "\
Waiting (unless --detach): one line per service, redrawn in place on a terminal (appended \
as they change otherwise): its state, tasks running / wanted, and its rollout's state. A \
service succeeds once the scheduler reports it converged and it stays so for --stable; it \
fails when its rollout paused, when its update's failure_action rolled it back, when the \
restart policy gave up on a task, or at --timeout. The command exits 1 if any service \
failed, naming each with the scheduler's reason; services that depend on a failed one are \
not deployed. With --detach the command returns once every change is sent; a service \
that depends on another is still sent only once that one passed its condition, so it waits \
for those. Ctrl-C stops the waiting, not the changes (exit 130).";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy a stack from compose files, or update it (docker stack
    /// deploy).
    ///
    /// Each service `S` of the files becomes the service NAME_S, labelled
    /// com.docker.stack.namespace=NAME. New services are created, changed
    /// ones updated (a rolling update when what their tasks run changed;
    /// an unchanged service is not touched), and services of the stack no
    /// longer in the files are removed (--no-prune keeps them).
    /// `depends_on` orders the changes: a service is created or updated
    /// only once the services it depends on have started
    /// (condition service_started, the default) or run with their health
    /// check passing (service_healthy).
    ///
    /// Nothing changes when a file has an error or a service's spec is
    /// invalid: every file is loaded and every spec checked first. Compose
    /// keys Bronze does not honour are warned about once each.
    #[command(after_long_help = STACK_RULE)]
    Deploy(deploy::DeployArgs),

    /// List stacks (docker stack ls): NAME and the number of SERVICES.
    #[command(visible_alias = "list")]
    Ls,

    /// List a stack's services (docker stack services), as `service ls`.
    Services(ServicesArgs),

    /// List a stack's tasks (docker stack ps), as `service ps`.
    Ps(PsArgs),

    /// Remove stacks (docker stack rm): every service of each.
    #[command(visible_alias = "remove")]
    Rm(RmArgs),

    /// Return every service of a stack to its version before its last
    /// update, together, and wait for the whole stack.
    ///
    /// Each service with a previous version rolls back as `service
    /// rollback` does (with the --rollback-* settings of the version
    /// rolled back from); services without one are left as they are. Exits
    /// 1 naming each service whose rollback failed.
    #[command(after_long_help = STACK_RULE)]
    Rollback(RollbackArgs),

    /// Print the merged, interpolated compose file (docker stack config):
    /// the files in order, `${VAR}` replaced from the environment and
    /// `.env`. Needs no scheduler.
    Config(deploy::ConfigArgs),
}

#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// Stack name.
    stack: String,

    /// Only print the services' ids.
    #[arg(short, long)]
    quiet: bool,

    /// Only services matching, as `service ls --filter`.
    #[arg(short, long, value_name = "FILTER")]
    filter: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Stack name.
    stack: String,

    #[command(flatten)]
    options: PsOptions,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Stack names.
    #[arg(required = true, value_name = "STACK")]
    stacks: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Stack name.
    stack: String,

    #[command(flatten)]
    wait: WaitFlags,
}

/// Runs a stack command; connects to the scheduler only when the command
/// needs it (after loading and checking the files, for `deploy`).
pub async fn run(cmd: Command, args: &ApiArgs) -> Result<(), Error> {
    match cmd {
        Command::Config(a) => deploy::config(&a),
        Command::Deploy(a) => deploy::deploy(args, a).await,
        cmd => {
            let mut api = Api::connect(args).await?;
            match cmd {
                Command::Ls => ls(&mut api).await,
                Command::Services(a) => services(&mut api, a).await,
                Command::Ps(a) => {
                    let names = names(&stack_services(&mut api, &a.stack).await?);
                    ps::run(&mut api, &names, a.options, "").await
                }
                Command::Rm(a) => rm(&mut api, a).await,
                Command::Rollback(a) => rollback(&mut api, a).await,
                Command::Config(_) | Command::Deploy(_) => Ok(()),
            }
        }
    }
}

/// The stack a service belongs to, if any.
fn namespace(r: &pb::ServiceResponse) -> Option<&str> {
    r.service
        .as_ref()?
        .spec
        .as_ref()?
        .labels
        .get(NAMESPACE)
        .map(String::as_str)
}

fn name_of(r: &pb::ServiceResponse) -> &str {
    r.service
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .map_or("", |s| s.name.as_str())
}

fn names(services: &[pb::ServiceResponse]) -> Vec<String> {
    services.iter().map(|r| name_of(r).to_string()).collect()
}

/// The services of stack `stack`, in name order; none is an error
/// (Docker's "Nothing found in stack").
async fn stack_services(api: &mut Api, stack: &str) -> Result<Vec<pb::ServiceResponse>, Error> {
    let found = of_stack(api, stack).await?;
    if found.is_empty() {
        return Err(Error::msg(format!("nothing found in stack: {stack}")));
    }
    Ok(found)
}

/// The services of stack `stack` (maybe none).
async fn of_stack(api: &mut Api, stack: &str) -> Result<Vec<pb::ServiceResponse>, Error> {
    let mut found: Vec<pb::ServiceResponse> = api
        .list_services()
        .await?
        .into_iter()
        .filter(|r| namespace(r) == Some(stack))
        .collect();
    found.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    Ok(found)
}

async fn ls(api: &mut Api) -> Result<(), Error> {
    let mut stacks: BTreeMap<String, usize> = BTreeMap::new();
    for r in api.list_services().await? {
        if let Some(ns) = namespace(&r) {
            *stacks.entry(ns.to_string()).or_default() += 1;
        }
    }
    if api.json() {
        crate::json::print(&Value::Array(
            stacks
                .iter()
                .map(|(name, n)| json!({"name": name, "services": n}))
                .collect(),
        ));
        return Ok(());
    }
    let mut t = Table::new(&["NAME", "SERVICES"]);
    for (name, n) in &stacks {
        t.row(vec![name.clone(), n.to_string()]);
    }
    print!("{}", t.render());
    Ok(())
}

async fn services(api: &mut Api, a: ServicesArgs) -> Result<(), Error> {
    stack_services(api, &a.stack).await?;
    let mut filter = vec![format!("label={NAMESPACE}={}", a.stack)];
    filter.extend(a.filter);
    crate::service::ls(
        api,
        crate::service::LsArgs {
            quiet: a.quiet,
            filter,
        },
    )
    .await
}

async fn rm(api: &mut Api, a: RmArgs) -> Result<(), Error> {
    let mut removed = Vec::new();
    let result = crate::client::each(api, &a.stacks, async |api, stack| {
        let services = stack_services(api, stack).await?;
        let mut failed = None;
        for name in names(&services) {
            if !api.json() {
                println!("Removing service {name}");
            }
            match api
                .client
                .remove_service(pb::RemoveServiceRequest {
                    service: name.clone(),
                })
                .await
            {
                Ok(_) => removed.push(Value::String(name)),
                Err(s) => failed = Some(api.err(s)),
            }
        }
        // Then its secrets and configs (its services no longer count as
        // users once they are being removed).
        for kind in [crate::object::Kind::Secret, crate::object::Kind::Config] {
            for o in crate::object::list(api, kind).await? {
                let ours = o
                    .versions
                    .last()
                    .is_some_and(|v| v.labels.get(NAMESPACE).is_some_and(|n| n == stack));
                if !ours {
                    continue;
                }
                if !api.json() {
                    println!("Removing {} {}", kind.as_str(), o.name);
                }
                match crate::object::remove(api, kind, &o.name).await {
                    Ok(()) => removed.push(Value::String(o.name)),
                    Err(e) => failed = Some(e),
                }
            }
        }
        failed.map_or(Ok(()), Err)
    })
    .await;
    if api.json() {
        crate::json::print(&Value::Array(removed));
    }
    result
}

/// Prints the services that failed, one line each; `Reported` if any.
fn report(api: &Api, outcome: rollout::Outcome) -> Result<(), Error> {
    if api.json() {
        crate::json::print(&Value::Array(
            outcome.services.iter().map(crate::json::service).collect(),
        ));
    }
    for f in &outcome.failures {
        eprintln!("bronze: {f}");
    }
    if outcome.failures.is_empty() {
        Ok(())
    } else {
        Err(Error::Reported)
    }
}

/// Strips `STACK_` for the lines shown.
fn shortener(stack: &str) -> impl Fn(&str) -> String + use<> {
    let prefix = format!("{stack}_");
    move |name: &str| name.strip_prefix(&prefix).unwrap_or(name).to_string()
}

async fn rollback(api: &mut Api, a: RollbackArgs) -> Result<(), Error> {
    let services = stack_services(api, &a.stack).await?;
    let mut steps = Vec::new();
    for r in &services {
        let name = name_of(r).to_string();
        if r.service.as_ref().is_some_and(|s| s.previous_version > 0) {
            steps.push(rollout::Step {
                name,
                change: rollout::Change::Rollback,
                after: Vec::new(),
            });
        } else if !api.json() {
            println!("service {name} has no previous version; left as it is");
        }
    }
    if steps.is_empty() {
        return Err(Error::msg(format!(
            "stack {}: no service has a previous version to go back to",
            a.stack
        )));
    }
    let outcome = rollout::run(api, steps, &a.wait, shortener(&a.stack)).await?;
    report(api, outcome)
}
