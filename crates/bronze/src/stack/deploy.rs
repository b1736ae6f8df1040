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
use crate::object::{self, Kind, Put};
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
    Err(refuse(errors))
}

/// Whether two specs mean the same service (the scheduler's domain types
/// compared, so defaults spelled out or left out are equal).
fn same(a: &pb::ServiceSpec, b: &pb::ServiceSpec) -> bool {
    use bronze_scheduler::convert::spec_from_proto;
    matches!((spec_from_proto(a), spec_from_proto(b)), (Ok(x), Ok(y)) if x == y)
}

/// Prints every problem found before anything was sent, and that nothing
/// was deployed.
fn refuse(errors: Vec<String>) -> Error {
    for e in errors {
        eprintln!("bronze: {e}");
    }
    eprintln!("bronze: nothing was deployed");
    Error::Reported
}

/// A top-level secret or config of the files: its cluster name, and its
/// data and labels (`None` when external: it must exist already).
struct StackObject {
    kind: Kind,
    key: String,
    name: String,
    content: Option<(Vec<u8>, HashMap<String, String>)>,
}

/// The files' secrets and configs, read and checked (name grammar, size:
/// the scheduler's own rules) before anything is sent; every problem
/// printed, `Reported` if there was one.
fn stack_objects(project: &compose::Project) -> Result<Vec<StackObject>, Error> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (kind, objects) in [
        (Kind::Secret, &project.secrets),
        (Kind::Config, &project.configs),
    ] {
        let what = kind.as_str();
        for (key, o) in objects {
            let name = convert::object_name(&project.name, key, o.name.as_ref(), o.external);
            let content = match (&o.file, o.external) {
                (Some(file), false) => match std::fs::read(file) {
                    Ok(data) => {
                        let mut labels: BTreeMap<String, String> = o.labels.clone();
                        labels.insert(super::NAMESPACE.into(), project.name.clone());
                        if let Err(e) =
                            bronze_scheduler::model::object::validate(kind, &name, &data, &labels)
                        {
                            errors.push(format!("{}.{key}: {e}", kind.field()));
                            continue;
                        }
                        Some((data, labels.into_iter().collect()))
                    }
                    Err(e) => {
                        errors.push(format!(
                            "{}.{key}.file: {}: {e}",
                            kind.field(),
                            file.display()
                        ));
                        continue;
                    }
                },
                _ => {
                    if let Err(m) = bronze_scheduler::model::object::validate_name(&name) {
                        errors.push(format!("{}.{key}: {what} name {m}", kind.field()));
                        continue;
                    }
                    None
                }
            };
            out.push(StackObject {
                kind,
                key: key.clone(),
                name,
                content,
            });
        }
    }
    if errors.is_empty() {
        return Ok(out);
    }
    Err(refuse(errors))
}

/// External objects must exist; the stack's own are created, or given a
/// new version when their content changed (which rolls the services that
/// use them). Externals are checked first, so a missing one changes
/// nothing. Returns the names given a new version.
async fn put_objects(api: &mut Api, objects: Vec<StackObject>) -> Result<HashSet<String>, Error> {
    // Each kind's objects as they are: name -> latest version.
    let mut known: HashMap<(Kind, String), u64> = HashMap::new();
    for kind in [Kind::Secret, Kind::Config] {
        for o in object::list(api, kind).await? {
            let v = o.versions.last().map_or(0, |v| v.version);
            known.insert((kind, o.name), v);
        }
    }
    let missing: Vec<String> = objects
        .iter()
        .filter(|o| o.content.is_none() && !known.contains_key(&(o.kind, o.name.clone())))
        .map(|o| {
            format!(
                "{}.{}: external {} {:?} does not exist (create it with `bronze {} create`)",
                o.kind.field(),
                o.key,
                o.kind.as_str(),
                o.name,
                o.kind.as_str(),
            )
        })
        .collect();
    if !missing.is_empty() {
        return Err(refuse(missing));
    }
    let mut changed = HashSet::new();
    for o in objects {
        let Some((data, labels)) = o.content else {
            continue;
        };
        let before = known.get(&(o.kind, o.name.clone())).copied();
        let r = object::create_or_update(api, o.kind, &o.name, data, labels, Put::Upsert).await?;
        let v = r.versions.last().map_or(0, |v| v.version);
        if before.is_some_and(|b| b != v) {
            changed.insert(o.name.clone());
        }
        if !api.json() {
            println!("Using {} {} (version {v})", o.kind.as_str(), o.name);
        }
    }
    Ok(changed)
}

/// The file's references (version 0: the latest) read as pinned to the
/// versions the running service uses, so an unchanged file is unchanged.
fn pin_like(spec: &mut pb::ServiceSpec, running: &pb::ServiceSpec) {
    for (refs, cur) in [
        (&mut spec.secrets, &running.secrets),
        (&mut spec.configs, &running.configs),
    ] {
        for r in refs.iter_mut().filter(|r| r.version == 0) {
            if let Some(c) = cur.iter().find(|c| c.source == r.source) {
                r.version = c.version;
            }
        }
    }
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

    let objects = stack_objects(&project)?;

    let mut api = Api::connect(args).await?;
    let changed = put_objects(&mut api, objects).await?;
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
            let mut c = c;
            if let Some(cur) = running.get(&name).and_then(|s| s.spec.as_ref()) {
                pin_like(&mut c.spec, cur);
            }
            let change = match running.get(&name) {
                None => Change::Create(c.spec),
                // A service whose secret or config got a new version is
                // rolling to it: followed like an update.
                Some(s)
                    if s.spec.as_ref().is_some_and(|cur| same(cur, &c.spec))
                        && !c
                            .spec
                            .secrets
                            .iter()
                            .chain(&c.spec.configs)
                            .any(|r| changed.contains(&r.source)) =>
                {
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
