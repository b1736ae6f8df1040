//! `service create` (a spec from flags) and `service update` (the current
//! spec, read, changed by the flags, sent back with the version read).

use std::hash::{BuildHasher as _, Hasher as _};
use std::path::PathBuf;

use bronze_proto::scheduler::v1 as pb;
use clap::Args;

use super::flags::{
    Mode, PortRm, SpecFlags, Words, edit_env, normalize_expr, parse_file_ref, parse_label,
    parse_mount, parse_publish, parse_publish_rm, parse_words, port_matches, read_env_file,
};
use super::settle;
use crate::client::{Api, Error};
use crate::json;
use crate::progress::WaitFlags;

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Service name: letters, digits, '-' and '_' [default: the image's
    /// name and a random suffix].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// replicated (--replicas tasks) or global (one task per eligible node).
    #[arg(long, value_enum, default_value_t = Mode::Replicated)]
    mode: Mode,

    /// Environment variable of the containers (repeat).
    #[arg(short, long, value_name = "KEY=VALUE")]
    env: Vec<String>,

    /// File of environment variables (KEY=value lines; # comments); --env
    /// entries come after and win.
    #[arg(long, value_name = "FILE")]
    env_file: Vec<PathBuf>,

    /// Label of the service (repeat). bronze.autodeploy=true rolls the
    /// service to each new digest pushed under its image's tag to the
    /// registry the scheduler follows (--registry); =glob:PATTERN to each
    /// new matching tag of its repository (e.g. glob:v1.*);
    /// =semver:major|minor|patch to each higher version tag.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    label: Vec<(String, String)>,

    /// Label of every container (repeat); SERVICE_* and bronze.* labels
    /// reach the registrator, as with `docker run`.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    container_label: Vec<(String, String)>,

    /// Publish a port on the node of each task: [PUBLISHED:]TARGET[/PROTOCOL]
    /// or published=8080,target=80,protocol=udp. Without PUBLISHED, the
    /// engine picks a free host port per task (`service ps` shows it).
    #[arg(short, long, value_name = "PORT", value_parser = parse_publish)]
    publish: Vec<pb::PortConfig>,

    /// Mount: type=volume|bind,source=NAME|/host/path,target=/path[,readonly]
    /// (a named volume is created when missing).
    #[arg(long, value_name = "MOUNT", value_parser = parse_mount)]
    mount: Vec<pb::Mount>,

    /// Mount a secret (repeat): NAME, or
    /// source=NAME,target=FILE,uid=0,gid=0,mode=0444. Read-only, on a
    /// tmpfs, at /run/secrets/TARGET (default: its name; an absolute
    /// target is used as is). A new version of it rolls the service.
    #[arg(long, value_name = "SECRET", value_parser = parse_file_ref)]
    secret: Vec<pb::FileReference>,

    /// Mount a config (repeat), as --secret; default target /NAME.
    #[arg(long, value_name = "CONFIG", value_parser = parse_file_ref)]
    config: Vec<pb::FileReference>,

    /// Placement constraint (repeat; all must hold): node.labels.zone==eu,
    /// node.role!=manager, node.hostname==h1, node.id==ID,
    /// engine.labels.K==V, node.platform.os==linux, node.platform.arch==x86_64.
    #[arg(long, value_name = "EXPR")]
    constraint: Vec<String>,

    /// Spread preference, applied in order: spread=node.labels.zone.
    #[arg(long, value_name = "PREF")]
    placement_pref: Vec<String>,

    /// Image reference (registry/repo:tag or @sha256:digest).
    image: String,

    /// Replaces the image's CMD: the command and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND ARG"
    )]
    args: Vec<String>,

    // Flattened groups last: each sets the help heading of what follows.
    #[command(flatten)]
    spec: SpecFlags,

    #[command(flatten)]
    wait: WaitFlags,
}

/// A name from the image ("registry:5000/shop/web:1.2" -> "web-x7k2q"),
/// for a create without --name.
fn default_name(image: &str) -> String {
    let base = image.rsplit('/').next().unwrap_or(image);
    let base = base.split(['@', ':']).next().unwrap_or(base);
    let cleaned: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let mut name: String = cleaned.trim_matches('-').chars().take(56).collect();
    if name.is_empty() {
        name = "service".into();
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let mut n = h.finish();
    let mut suffix = String::new();
    for _ in 0..5 {
        let d = u32::try_from(n % 36).unwrap_or(0);
        suffix.push(char::from_digit(d, 36).unwrap_or('x'));
        n /= 36;
    }
    format!("{name}-{suffix}")
}

pub async fn create(api: &mut Api, a: CreateArgs) -> Result<(), Error> {
    if a.mode == Mode::Global {
        if a.spec.replicas.is_some() {
            return Err(Error::msg(
                "--replicas: a global service runs one task per eligible node",
            ));
        }
        if a.spec.placement.replicas_max_per_node.is_some() {
            return Err(Error::msg(
                "--replicas-max-per-node: a global service runs one task per node",
            ));
        }
    }
    let mut env = Vec::new();
    for f in &a.env_file {
        env.extend(read_env_file(f)?);
    }
    env.extend(a.env.iter().cloned());
    let mut spec = pb::ServiceSpec {
        name: a.name.clone().unwrap_or_else(|| default_name(&a.image)),
        image: a.image.clone(),
        args: a.args.clone(),
        env,
        labels: a.label.iter().cloned().collect(),
        container_labels: a.container_label.iter().cloned().collect(),
        ports: a.publish.clone(),
        mounts: a.mount.clone(),
        secrets: a.secret.clone(),
        configs: a.config.clone(),
        mode: Some(match a.mode {
            Mode::Replicated => pb::service_spec::Mode::Replicated(pb::Replicated { replicas: 1 }),
            Mode::Global => pb::service_spec::Mode::Global(pb::Global {}),
        }),
        placement: (!a.constraint.is_empty() || !a.placement_pref.is_empty()).then(|| {
            pb::Placement {
                constraints: a.constraint.clone(),
                preferences: a.placement_pref.clone(),
                max_replicas_per_node: 0,
            }
        }),
        ..Default::default()
    };
    a.spec.apply(&mut spec)?;
    let name = spec.name.clone();
    let first = api
        .client
        .create_service(pb::CreateServiceRequest { spec: Some(spec) })
        .await
        .map_err(|s| api.err(s))?
        .into_inner();
    if !api.json() {
        println!("{}", first.service.as_ref().map_or("", |s| s.id.as_str()));
    }
    let r = settle(api, &name, first, &a.wait).await?;
    if api.json() {
        json::print(&json::service(&r));
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// New image reference.
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,

    /// New command and arguments (the image's CMD), split as a shell would;
    /// "" restores the image's.
    #[arg(long, value_name = "COMMAND", value_parser = parse_words)]
    args: Option<Words>,

    /// Replace every task, even if nothing changed (as a rolling update).
    #[arg(long)]
    force: bool,

    /// Add or replace an environment variable (repeat).
    #[arg(long, value_name = "KEY=VALUE")]
    env_add: Vec<String>,

    /// Remove an environment variable by name (repeat).
    #[arg(long, value_name = "KEY")]
    env_rm: Vec<String>,

    /// Add or replace a service label (repeat); e.g. bronze.autodeploy=true
    /// (deploy on push: see `service create --label`).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    label_add: Vec<(String, String)>,

    /// Remove a service label (repeat).
    #[arg(long, value_name = "KEY")]
    label_rm: Vec<String>,

    /// Add or replace a container label (repeat).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    container_label_add: Vec<(String, String)>,

    /// Remove a container label (repeat).
    #[arg(long, value_name = "KEY")]
    container_label_rm: Vec<String>,

    /// Publish a port, as create's --publish (a port with the same target
    /// and protocol is replaced).
    #[arg(long, value_name = "PORT", value_parser = parse_publish)]
    publish_add: Vec<pb::PortConfig>,

    /// Stop publishing: TARGET[/PROTOCOL] or PUBLISHED:TARGET[/PROTOCOL].
    #[arg(long, value_name = "PORT", value_parser = parse_publish_rm)]
    publish_rm: Vec<PortRm>,

    /// Add a mount, as create's --mount (a mount at the same target is
    /// replaced).
    #[arg(long, value_name = "MOUNT", value_parser = parse_mount)]
    mount_add: Vec<pb::Mount>,

    /// Remove the mount at this container path.
    #[arg(long, value_name = "TARGET")]
    mount_rm: Vec<String>,

    /// Mount a secret, as create's --secret (one of the same name is
    /// replaced); its latest version.
    #[arg(long, value_name = "SECRET", value_parser = parse_file_ref)]
    secret_add: Vec<pb::FileReference>,

    /// Stop mounting the secret of this name.
    #[arg(long, value_name = "NAME")]
    secret_rm: Vec<String>,

    /// Mount a config, as create's --config (one of the same name is
    /// replaced); its latest version.
    #[arg(long, value_name = "CONFIG", value_parser = parse_file_ref)]
    config_add: Vec<pb::FileReference>,

    /// Stop mounting the config of this name.
    #[arg(long, value_name = "NAME")]
    config_rm: Vec<String>,

    /// Add a placement constraint, as create's --constraint.
    #[arg(long, value_name = "EXPR")]
    constraint_add: Vec<String>,

    /// Remove a placement constraint (the same expression).
    #[arg(long, value_name = "EXPR")]
    constraint_rm: Vec<String>,

    /// Add a spread preference.
    #[arg(long, value_name = "PREF")]
    placement_pref_add: Vec<String>,

    /// Remove a spread preference.
    #[arg(long, value_name = "PREF")]
    placement_pref_rm: Vec<String>,

    /// Service name or id.
    service: String,

    // Flattened groups last: each sets the help heading of what follows.
    #[command(flatten)]
    spec: SpecFlags,

    #[command(flatten)]
    wait: WaitFlags,
}

fn edit_labels(
    labels: &mut std::collections::HashMap<String, String>,
    add: &[(String, String)],
    rm: &[String],
) {
    for k in rm {
        labels.remove(k);
    }
    for (k, v) in add {
        labels.insert(k.clone(), v.clone());
    }
}

fn edit_exprs(list: &mut Vec<String>, add: &[String], rm: &[String]) -> Result<(), Error> {
    for r in rm {
        let n = normalize_expr(r);
        let before = list.len();
        list.retain(|c| normalize_expr(c) != n);
        if list.len() == before {
            return Err(Error::msg(format!(
                "{r:?} is not one of the service's: {}",
                if list.is_empty() {
                    "it has none".to_string()
                } else {
                    list.join(", ")
                }
            )));
        }
    }
    for a in add {
        let n = normalize_expr(a);
        if !list.iter().any(|c| normalize_expr(c) == n) {
            list.push(a.clone());
        }
    }
    Ok(())
}

impl UpdateArgs {
    fn apply(&self, spec: &mut pb::ServiceSpec) -> Result<(), Error> {
        if let Some(image) = &self.image {
            spec.image.clone_from(image);
        }
        if let Some(Words(args)) = &self.args {
            spec.args.clone_from(args);
        }
        edit_env(&mut spec.env, &self.env_add, &self.env_rm);
        edit_labels(&mut spec.labels, &self.label_add, &self.label_rm);
        edit_labels(
            &mut spec.container_labels,
            &self.container_label_add,
            &self.container_label_rm,
        );
        spec.ports
            .retain(|p| !self.publish_rm.iter().any(|rm| port_matches(p, rm)));
        for p in &self.publish_add {
            spec.ports
                .retain(|x| !(x.target == p.target && x.protocol == p.protocol));
            spec.ports.push(p.clone());
        }
        spec.mounts.retain(|m| !self.mount_rm.contains(&m.target));
        for m in &self.mount_add {
            spec.mounts.retain(|x| x.target != m.target);
            spec.mounts.push(m.clone());
        }
        for (refs, add, rm) in [
            (&mut spec.secrets, &self.secret_add, &self.secret_rm),
            (&mut spec.configs, &self.config_add, &self.config_rm),
        ] {
            refs.retain(|r| !rm.contains(&r.source) && !add.iter().any(|a| a.source == r.source));
            refs.extend(add.iter().cloned());
        }
        let placement = spec.placement.get_or_insert_with(Default::default);
        edit_exprs(
            &mut placement.constraints,
            &self.constraint_add,
            &self.constraint_rm,
        )
        .map_err(|e| Error::msg(format!("--constraint-rm {e}")))?;
        edit_exprs(
            &mut placement.preferences,
            &self.placement_pref_add,
            &self.placement_pref_rm,
        )
        .map_err(|e| Error::msg(format!("--placement-pref-rm {e}")))?;
        self.spec.apply(spec)
    }
}

pub async fn update(api: &mut Api, a: UpdateArgs) -> Result<(), Error> {
    let current = api.get_service(&a.service).await?;
    let service = current
        .service
        .ok_or_else(|| Error::msg(format!("the scheduler sent no service for {}", a.service)))?;
    let mut spec = service
        .spec
        .ok_or_else(|| Error::msg(format!("the scheduler sent no spec for {}", a.service)))?;
    a.apply(&mut spec)?;
    let first = api
        .client
        .update_service(pb::UpdateServiceRequest {
            service: a.service.clone(),
            spec: Some(spec),
            version: service.version,
            force: a.force,
        })
        .await
        .map_err(|s| api.err(s))?
        .into_inner();
    if !api.json() {
        println!("{}", a.service);
    }
    let r = settle(api, &a.service, first, &a.wait).await?;
    if api.json() {
        json::print(&json::service(&r));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_valid_service_names() {
        for image in [
            "busybox",
            "127.0.0.1:5000/shop/web:1.2",
            "x/My_App@sha256:0123",
            "___",
        ] {
            let n = default_name(image);
            assert!(n.len() <= 63, "{n}");
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{n}"
            );
            assert!(!n.starts_with('-'), "{n}");
        }
        assert!(default_name("127.0.0.1:5000/shop/web:1.2").starts_with("web-"));
    }

    #[test]
    fn constraint_edits_match_the_scheduler_spelling() {
        let mut list = vec!["node.labels.zone==eu".to_string()];
        edit_exprs(
            &mut list,
            &["node.role != manager".into()],
            &["node.labels.zone == eu".into()],
        )
        .unwrap();
        assert_eq!(list, ["node.role != manager"]);
        assert!(edit_exprs(&mut list, &[], &["node.id==x".into()]).is_err());
    }
}
