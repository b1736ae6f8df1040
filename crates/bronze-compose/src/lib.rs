//! Compose files as `docker stack deploy` reads them: format 3.x and the
//! Compose Specification, one or several `-c` files, into a typed
//! [`Project`]. A pure library: no gRPC, no engine; the `bronze` CLI maps
//! the project onto the scheduler's specs and namespaces it (`NAME_web`).
//!
//! One path, in this order, for every load ([`load`]):
//! 1. each file is parsed into a tree whose every node knows its file,
//!    line and column (`yaml`: anchors, aliases, `<<` merge keys);
//! 2. its scalar values are interpolated (`interpolate`: `${VAR:-x}` and
//!    friends, from the process environment, then `.env` beside the
//!    first file);
//! 3. keys Bronze does not honour are warned about, once per key per file,
//!    and taken out (`unsupported`);
//! 4. list forms that mean mappings become mappings, then the file is
//!    merged onto the files before it (`merge`, Compose's rules);
//! 5. the merged tree is typed and checked (`convert`): unknown keys,
//!    wrong types, missing images, undefined services, volumes, networks,
//!    secrets and configs, `depends_on` cycles.
//!
//! The first problem stops the load with one [`Error`] naming file, line,
//! column and dotted key; nothing is deployed from a file that has one.
//!
//! # Decisions, key by key
//! * Top level: `version` accepted and ignored (3.x and versionless
//!   Compose Specification files load alike); `name` accepted and ignored
//!   (a stack's name comes from the command line); `x-*` ignored;
//!   `include`, `models` and any other key: an error.
//! * Honoured service keys: image (required), command, entrypoint,
//!   environment, env_file, ports, volumes, labels, healthcheck,
//!   stop_grace_period, stop_signal, user, working_dir, hostname,
//!   extra_hosts, secrets, configs, depends_on, networks, deploy.
//! * Warned and ignored service keys (valid Compose that stacks do not
//!   honour; docker ignores most of them too): build, container_name,
//!   restart, links, external_links, cap_add, cap_drop, privileged,
//!   logging, ulimits, sysctls, network_mode, devices,
//!   device_cgroup_rules, init, security_opt, tmpfs, cgroup_parent,
//!   cgroup, domainname, dns, dns_opt, dns_search, ipc, pid, uts,
//!   userns_mode, mac_address, shm_size, stdin_open, tty, isolation,
//!   read_only, expose, cpu_shares, cpus, cpu_count, cpu_percent,
//!   cpu_period, cpu_quota, cpu_rt_period, cpu_rt_runtime, cpuset,
//!   mem_limit, mem_reservation, memswap_limit, mem_swappiness,
//!   oom_kill_disable, oom_score_adj, pids_limit, blkio_config, platform,
//!   profiles, pull_policy, scale, volumes_from, runtime, storage_opt,
//!   group_add, credential_spec, annotations, attach, develop, gpus,
//!   label_file, post_start, pre_stop, stop_signal_timeout;
//!   `deploy.resources.reservations.devices` and `.generic_resources`;
//!   `healthcheck.start_interval`; a port's `host_ip`, `name`,
//!   `app_protocol` and a short port's host address other than 0.0.0.0;
//!   a mount's `bind`, `volume`, `consistency` and `tmpfs.mode` options;
//!   a service network's `aliases`, `ipv4_address` and other options;
//!   `depends_on`'s `restart` and `required`; a network's `ipam` and
//!   `enable_ipv6`; a secret's or config's `template_driver`, `driver`,
//!   `driver_opts`, `environment` and `content`.
//! * Errors, not warnings, because ignoring them would deploy something
//!   else than the file says: `extends`; `deploy.mode` replicated-job and
//!   global-job; `replicas` with `mode: global`; any unknown key.
//! * Values: durations in Go's syntax ("1m30s", "500ms"); sizes as Docker
//!   reads them ("512M", "1g", or bytes); CPUs "0.5" or 0.5; file modes
//!   `0440`/`0o440` octal; a `command` string split as a shell would.
//! * Paths: a bind mount's `./rel` and `~/x`, `env_file`, and a secret's or
//!   config's `file` are resolved against the directory of the file that
//!   wrote them, and kept absolute.

mod convert;
mod emit;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod interpolate;
mod merge;
mod model;
mod unsupported;
mod yaml;

pub use error::{Error, Warning};
pub use model::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use convert::{Ctx, absolute};
use interpolate::Vars;
use yaml::Node;

/// What to load: the `-c` files in order, the process environment and the
/// stack's name.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub files: Vec<PathBuf>,
    /// The process environment: interpolation looks here first, then in
    /// `.env` beside the first file.
    pub env: BTreeMap<String, String>,
    pub project_name: String,
}

/// Loads, interpolates, merges and checks `opts.files`.
pub fn load(opts: &LoadOptions) -> Result<Project, Error> {
    let Some(first) = opts.files.first() else {
        return Err(Error {
            file: PathBuf::new(),
            line: 0,
            column: 0,
            key: String::new(),
            message: "no compose file given".into(),
        });
    };
    let mut cx = Ctx {
        files: &opts.files,
        env: &opts.env,
        warnings: Vec::new(),
    };
    let dotenv = read_dotenv(first)?;
    let vars = Vars {
        env: &opts.env,
        dotenv: &dotenv,
    };
    let mut warned = BTreeSet::new();
    let mut merged: Option<Node> = None;
    for (i, file) in opts.files.iter().enumerate() {
        let text = std::fs::read_to_string(file).map_err(|e| Error {
            file: file.clone(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        let mut root = yaml::parse(&text, i).map_err(|e| Error {
            file: file.clone(),
            line: e.line,
            column: e.col,
            key: String::new(),
            message: format!("invalid YAML: {}", e.message),
        })?;
        if !matches!(root.kind, yaml::Kind::Map(_)) {
            return Err(cx.error(
                root.pos,
                "",
                format!(
                    "a compose file is a mapping with services:, found {}",
                    root.describe()
                ),
            ));
        }
        interpolate::tree(&mut cx, &mut root, "", &vars, &mut warned)?;
        unsupported::strip(&mut cx, &mut root);
        merge::normalize(&cx, &mut root)?;
        merged = Some(match merged {
            None => root,
            Some(base) => merge::merge(base, root, &[]),
        });
    }
    let Some(root) = merged else {
        return Err(cx.error(yaml::Pos::default(), "", "no compose file given"));
    };
    let mut project = convert::project(&mut cx, &root, &opts.project_name)?;
    project.warnings = cx.warnings;
    Ok(project)
}

/// `.env` beside the first file, when there is one.
fn read_dotenv(first: &std::path::Path) -> Result<BTreeMap<String, String>, Error> {
    let dir = first
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| absolute(std::path::Path::new(".")), absolute);
    let path = dir.join(".env");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(BTreeMap::new());
    };
    let lines = interpolate::parse_env_lines(&text).map_err(|(line, message)| Error {
        file: path.clone(),
        line,
        column: 1,
        key: String::new(),
        message,
    })?;
    Ok(lines
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

impl Project {
    /// The merged, interpolated project as one canonical compose file:
    /// what `bronze stack config` prints, like `docker stack config`.
    pub fn to_yaml(&self) -> String {
        emit::project(self)
    }
}
