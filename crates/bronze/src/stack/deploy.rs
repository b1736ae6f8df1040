//! `stack deploy` and `stack config`.
//!
//! Deploy is check-then-change: every file is loaded (`bronze-compose`:
//! any error names file, line and key), every service converted
//! (`convert.rs`) and its spec checked by the scheduler's own validation
//! (`bronze_scheduler::convert::spec_from_proto`, the code the scheduler
//! runs on receipt) before the scheduler is even reached; a failure there
//! changes nothing. Then the stack as it runs is read, images pinned
//! (`resolve.rs`), services no longer in the files removed, and each
//! service's change (create, update with the version read, or nothing
//! when its spec is the same) handed to `rollout.rs`, which sends them in
//! `depends_on` order and waits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use bronze_compose as compose;
use bronze_proto::scheduler::v1 as pb;
use clap::Args;

use super::convert::{self, Converted, Warnings};
use super::resolve::{self, ResolveImage};
use super::rollout::{self, Change, Step};
use crate::client::{Api, ApiArgs, Error};
use crate::progress::WaitFlags;

/// The `-c` files of `deploy` and `config`.
#[derive(Debug, Args)]
pub struct Files {
    /// Compose file (repeat: later files are merged over earlier ones, as
    /// Compose merges them; `.env` beside the first file is read for
    /// interpolation).
    #[arg(
        short = 'c',
        long = "compose-file",
        required = true,
        value_name = "FILE"
    )]
    files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    files: Files,

    /// Keep services of the stack that are no longer in the files
    /// (by default they are removed).
    #[arg(long)]
    no_prune: bool,

    /// Docker's flag, accepted: removing what left the files is the default.
    #[arg(long, hide = true, conflicts_with = "no_prune")]
    prune: bool,

    /// Pin image tags to the digests their registry serves now (through
    /// the local engine), so every node runs the same image: always,
    /// changed (only images new or changed in the files) or never. An
    /// image that cannot be resolved is used as written, with a warning.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = ResolveImage::Always)]
    resolve_image: ResolveImage,

    /// Stack name: services are named STACK_service.
    stack: String,

    #[command(flatten)]
    wait: WaitFlags,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    files: Files,
}

/// This process's environment, for interpolation and for environment
/// keys given without a value.
fn process_env() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

fn load(
    files: &[PathBuf],
    stack: &str,
    env: &BTreeMap<String, String>,
) -> Result<compose::Project, Error> {
    let project = compose::load(&compose::LoadOptions {
        files: files.to_vec(),
        env: env.clone(),
        project_name: stack.to_string(),
    })
    .map_err(|e| Error::msg(e.to_string()))?;
    for w in &project.warnings {
        eprintln!("warning: {w}");
    }
    Ok(project)
}

pub fn config(a: &ConfigArgs) -> Result<(), Error> {
    let project = load(&a.files.files, "", &process_env())?;
    print!("{}", project.to_yaml());
    Ok(())
}

/// Checks a spec as the scheduler will on receipt; the error names the
/// service's key in the file and the spec field.
fn check(key: &str, spec: &pb::ServiceSpec) -> Result<(), String> {
    bronze_scheduler::convert::spec_from_proto(spec)
        .map(|_| ())
        .map_err(|e| format!("service {key}: {e}"))
}

/// The dependency graph has no cycle and names only services of the
/// stack.
fn check_order(services: &BTreeMap<String, Converted>) -> Result<(), String> {
    for (name, c) in services {
        for (dep, _) in &c.after {
            if !services.contains_key(dep) {
                return Err(format!("service {name}: depends_on {dep}: no such service"));
            }
        }
    }
    // Kahn: whatever never becomes free is on a cycle.
    let mut done: HashSet<&str> = HashSet::new();
    loop {
        let free: Vec<&str> = services
            .iter()
            .filter(|(n, c)| {
                !done.contains(n.as_str()) && c.after.iter().all(|(d, _)| done.contains(d.as_str()))
            })
            .map(|(n, _)| n.as_str())
            .collect();
        if free.is_empty() {
            break;
        }
        done.extend(free);
    }
    let stuck: Vec<&str> = services
        .keys()
        .map(String::as_str)
        .filter(|n| !done.contains(n))
        .collect();
    if stuck.is_empty() {
        Ok(())
    } else {
        Err(format!("depends_on has a cycle among {}", stuck.join(", ")))
    }
}

/// The files' services, converted and checked; every problem printed,
/// `Reported` if there was one.
fn prepare(
    project: &compose::Project,
    env: &BTreeMap<String, String>,
    warnings: &mut Warnings,
) -> Result<BTreeMap<String, Converted>, Error> {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for (key, s) in &project.services {
        match convert::service(project, key, s, env, warnings) {
            Ok(c) => match check(key, &c.spec) {
                Ok(()) => {
                    out.insert(c.spec.name.clone(), c);
                }
                Err(e) => errors.push(e),
            },
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty()
        && let Err(e) = check_order(&out)
    {
        errors.push(e);
    }
    if errors.is_empty() {
        return Ok(out);
    }
    for e in errors {
        eprintln!("bronze: {e}");
    }
    eprintln!("bronze: nothing was deployed");
    Err(Error::Reported)
}

/// Whether two specs mean the same service (the scheduler's domain types
/// compared, so defaults spelled out or left out are equal).
fn same(a: &pb::ServiceSpec, b: &pb::ServiceSpec) -> bool {
    use bronze_scheduler::convert::spec_from_proto;
    matches!((spec_from_proto(a), spec_from_proto(b)), (Ok(x), Ok(y)) if x == y)
}

pub async fn deploy(args: &ApiArgs, a: DeployArgs) -> Result<(), Error> {
    let env = process_env();
    let project = load(&a.files.files, &a.stack, &env)?;
    let mut warnings = Warnings::default();
    let mut services = prepare(&project, &env, &mut warnings)?;
    if services.is_empty() {
        return Err(Error::msg(format!(
            "{}: no services to deploy",
            a.files
                .files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }

    let mut api = Api::connect(args).await?;
    let running: HashMap<String, pb::Service> = super::of_stack(&mut api, &a.stack)
        .await?
        .into_iter()
        .filter_map(|r| {
            let s = r.service?;
            Some((s.spec.as_ref()?.name.clone(), s))
        })
        .collect();
    let current: HashMap<String, pb::ServiceSpec> = running
        .iter()
        .filter_map(|(n, s)| Some((n.clone(), s.spec.clone()?)))
        .collect();
    let mut specs: Vec<pb::ServiceSpec> = services.values().map(|c| c.spec.clone()).collect();
    resolve::resolve(a.resolve_image, &mut specs, &current, &mut warnings).await;
    for spec in specs {
        check(&spec.name, &spec).map_err(Error::msg)?;
        if let Some(c) = services.get_mut(&spec.name) {
            c.spec = spec;
        }
    }
    for w in warnings.into_vec() {
        eprintln!("warning: {w}");
    }

    // Prune first, as Swarm does: a renamed service's ports are free for
    // its new name.
    let mut pruned = Vec::new();
    for name in running.keys().filter(|n| !services.contains_key(*n)) {
        if a.no_prune {
            if !api.json() {
                println!("Keeping service {name} (not in the files; --no-prune)");
            }
            continue;
        }
        pruned.push(name.clone());
    }
    pruned.sort();
    for name in &pruned {
        if !api.json() {
            println!("Removing service {name}");
        }
        api.client
            .remove_service(pb::RemoveServiceRequest {
                service: name.clone(),
            })
            .await
            .map_err(|s| api.err(s))?;
    }

    let steps = services
        .into_iter()
        .map(|(name, c)| {
            let change = match running.get(&name) {
                None => Change::Create(c.spec),
                Some(s) if s.spec.as_ref().is_some_and(|cur| same(cur, &c.spec)) => {
                    Change::Unchanged
                }
                Some(s) => Change::Update(c.spec, s.version),
            };
            Step {
                name,
                change,
                after: c.after,
            }
        })
        .collect();
    let outcome = rollout::run(&mut api, steps, &a.wait, super::shortener(&a.stack)).await?;
    super::report(&api, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::rollout::Gate;

    fn converted(after: &[&str]) -> Converted {
        Converted {
            spec: pb::ServiceSpec::default(),
            after: after
                .iter()
                .map(|d| ((*d).to_string(), Gate::Started))
                .collect(),
        }
    }

    #[test]
    fn dependency_order_is_checked() {
        let mut s = BTreeMap::new();
        s.insert("a".to_string(), converted(&[]));
        s.insert("b".to_string(), converted(&["a"]));
        assert_eq!(check_order(&s), Ok(()));
        s.insert("c".to_string(), converted(&["d"]));
        assert!(check_order(&s).unwrap_err().contains("no such service"));
        s.insert("c".to_string(), converted(&["b", "e"]));
        s.insert("e".to_string(), converted(&["c"]));
        assert_eq!(
            check_order(&s),
            Err("depends_on has a cycle among c, e".into())
        );
    }
}
