//! The merged tree to the typed [`Project`]: every key checked against
//! what Compose allows (an unknown key is an error, as docker's "additional
//! property"), every value against its type, then references between
//! services and top-level objects, and `depends_on` cycles.
//!
//! Every function takes the node and its dotted path, and an error names
//! both: the file the node came from, its line and column, and the path.

pub(crate) mod deploy;
pub(crate) mod service;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Warning};
use crate::model::{Network, Project, Secret, Volume};
use crate::yaml::{Entry, Kind, Node, Pos};

pub(crate) type R<T> = Result<T, Error>;

/// The files being loaded (nodes name them by index) and the warnings so far.
pub(crate) struct Ctx<'a> {
    pub files: &'a [PathBuf],
    pub env: &'a BTreeMap<String, String>,
    pub warnings: Vec<Warning>,
}

impl Ctx<'_> {
    pub fn file(&self, pos: Pos) -> PathBuf {
        self.files.get(pos.file).cloned().unwrap_or_default()
    }

    /// The directory relative paths in a node's file are resolved against.
    pub fn dir(&self, pos: Pos) -> PathBuf {
        let file = self.file(pos);
        match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => absolute(p),
            _ => absolute(Path::new(".")),
        }
    }

    pub fn error(&self, pos: Pos, key: &str, message: impl Into<String>) -> Error {
        Error {
            file: self.file(pos),
            line: pos.line,
            column: pos.col,
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub fn warn(&mut self, pos: Pos, key: &str, message: impl Into<String>) {
        let w = Warning {
            file: self.file(pos),
            line: pos.line,
            key: key.to_string(),
            message: message.into(),
        };
        if !self.warnings.contains(&w) {
            self.warnings.push(w);
        }
    }
}

/// `p` made absolute against the working directory, `.` and `..` removed
/// textually (the path need not exist).
pub(crate) fn absolute(p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// An unknown key: the error docker gives as "additional property".
pub(crate) fn unknown(cx: &Ctx<'_>, e: &Entry, path: &str) -> Error {
    cx.error(
        e.key_pos,
        &join(path, &e.key),
        format!(
            "unknown key {:?} (additional property {} is not allowed here)",
            e.key, e.key
        ),
    )
}

/// The entries of a mapping (nothing for a null).
pub(crate) fn map<'n>(cx: &Ctx<'_>, node: &'n Node, path: &str) -> R<&'n [Entry]> {
    match &node.kind {
        Kind::Map(entries) => Ok(entries),
        Kind::Null => Ok(&[]),
        _ => Err(cx.error(
            node.pos,
            path,
            format!("expected a mapping, found {}", node.describe()),
        )),
    }
}

/// The items of a list (nothing for a null).
pub(crate) fn seq<'n>(cx: &Ctx<'_>, node: &'n Node, path: &str) -> R<&'n [Node]> {
    match &node.kind {
        Kind::Seq(items) => Ok(items),
        Kind::Null => Ok(&[]),
        _ => Err(cx.error(
            node.pos,
            path,
            format!("expected a list, found {}", node.describe()),
        )),
    }
}

/// Extension fields (`x-...`) are allowed wherever keys are and ignored.
pub(crate) fn is_extension(key: &str) -> bool {
    key.starts_with("x-")
}

pub(crate) fn string(cx: &Ctx<'_>, node: &Node, path: &str) -> R<String> {
    match &node.kind {
        Kind::Scalar { text, .. } => Ok(text.clone()),
        _ => Err(cx.error(
            node.pos,
            path,
            format!("expected a string, found {}", node.describe()),
        )),
    }
}

/// A string, or `None` for a null.
pub(crate) fn opt_string(cx: &Ctx<'_>, node: &Node, path: &str) -> R<Option<String>> {
    match node.kind {
        Kind::Null => Ok(None),
        _ => string(cx, node, path).map(Some),
    }
}

fn scalar_text<'n>(cx: &Ctx<'_>, node: &'n Node, path: &str, what: &str) -> R<&'n str> {
    match &node.kind {
        Kind::Scalar { text, .. } => Ok(text.trim()),
        _ => Err(cx.error(
            node.pos,
            path,
            format!("expected {what}, found {}", node.describe()),
        )),
    }
}

pub(crate) fn uint(cx: &Ctx<'_>, node: &Node, path: &str) -> R<u64> {
    let t = scalar_text(cx, node, path, "an integer")?;
    t.parse()
        .map_err(|_| cx.error(node.pos, path, format!("expected an integer, found {t:?}")))
}

pub(crate) fn int(cx: &Ctx<'_>, node: &Node, path: &str) -> R<i64> {
    let t = scalar_text(cx, node, path, "an integer")?;
    t.parse()
        .map_err(|_| cx.error(node.pos, path, format!("expected an integer, found {t:?}")))
}

pub(crate) fn float(cx: &Ctx<'_>, node: &Node, path: &str) -> R<f64> {
    let t = scalar_text(cx, node, path, "a number")?;
    t.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| cx.error(node.pos, path, format!("expected a number, found {t:?}")))
}

pub(crate) fn boolean(cx: &Ctx<'_>, node: &Node, path: &str) -> R<bool> {
    let t = scalar_text(cx, node, path, "true or false")?;
    match t {
        "true" | "True" | "TRUE" | "yes" | "on" => Ok(true),
        "false" | "False" | "FALSE" | "no" | "off" => Ok(false),
        _ => Err(cx.error(
            node.pos,
            path,
            format!("expected true or false, found {t:?}"),
        )),
    }
}

pub(crate) fn duration(cx: &Ctx<'_>, node: &Node, path: &str) -> R<Duration> {
    let t = scalar_text(cx, node, path, "a duration like 10s or 1m30s")?;
    bronze_runtime::duration::parse_go(t).map_err(|_| {
        cx.error(
            node.pos,
            path,
            format!("expected a duration like 10s or 1m30s, found {t:?}"),
        )
    })
}

pub(crate) fn opt_duration(cx: &Ctx<'_>, node: &Node, path: &str) -> R<Option<Duration>> {
    match node.kind {
        Kind::Null => Ok(None),
        _ => duration(cx, node, path).map(Some),
    }
}

/// Bytes: a number of bytes, or "512M", "1g", "100k" as Docker reads them.
pub(crate) fn size(cx: &Ctx<'_>, node: &Node, path: &str) -> R<u64> {
    let t = scalar_text(cx, node, path, "a size like 512M or 1G")?;
    bronze_runtime::units::parse_size(t)
        .ok()
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(|| {
            cx.error(
                node.pos,
                path,
                format!("expected a size like 512M or 1G, found {t:?}"),
            )
        })
}

/// CPUs, `"0.5"` or `0.5`, in billionths.
pub(crate) fn cpus(cx: &Ctx<'_>, node: &Node, path: &str) -> R<i64> {
    let t = scalar_text(cx, node, path, "a number of CPUs like 0.5 or 2")?;
    bronze_runtime::units::parse_cpus(t).map_err(|_| {
        cx.error(
            node.pos,
            path,
            format!("expected a number of CPUs like 0.5 or 2, found {t:?}"),
        )
    })
}

/// A list of strings.
pub(crate) fn strings(cx: &Ctx<'_>, node: &Node, path: &str) -> R<Vec<String>> {
    seq(cx, node, path)?
        .iter()
        .enumerate()
        .map(|(i, n)| string(cx, n, &index(path, i)))
        .collect()
}

/// A mapping of strings (a null value is ""), or a list of `KEY=VALUE`.
pub(crate) fn string_map(cx: &Ctx<'_>, node: &Node, path: &str) -> R<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    match &node.kind {
        Kind::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let text = string(cx, item, &index(path, i))?;
                let (k, v) = text.split_once('=').unwrap_or((&text, ""));
                out.insert(k.to_string(), v.to_string());
            }
        }
        _ => {
            for e in map(cx, node, path)? {
                let v = opt_string(cx, &e.value, &join(path, &e.key))?;
                out.insert(e.key.clone(), v.unwrap_or_default());
            }
        }
    }
    Ok(out)
}

/// Names of the top-level objects, for checking a service's references.
#[derive(Default)]
pub(crate) struct Names {
    pub volumes: BTreeSet<String>,
    pub networks: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
    pub configs: BTreeSet<String>,
}

/// The whole merged tree.
pub(crate) fn project(cx: &mut Ctx<'_>, root: &Node, name: &str) -> R<Project> {
    let mut p = Project {
        name: name.to_string(),
        ..Project::default()
    };
    let entries = map(cx, root, "")?;
    let mut services = None;
    for e in entries {
        let path = e.key.as_str();
        match path {
            "version" | "name" => {
                opt_string(cx, &e.value, path)?;
            }
            "services" => services = Some(&e.value),
            "volumes" => {
                for v in map(cx, &e.value, path)? {
                    let vol = volume(cx, &v.value, &join(path, &v.key))?;
                    p.volumes.insert(v.key.clone(), vol);
                }
            }
            "networks" => {
                for n in map(cx, &e.value, path)? {
                    let net = network(cx, &n.value, &join(path, &n.key))?;
                    p.networks.insert(n.key.clone(), net);
                }
            }
            "secrets" | "configs" => {
                for s in map(cx, &e.value, path)? {
                    let obj = secret(cx, &s.value, &join(path, &s.key))?;
                    if path == "secrets" {
                        p.secrets.insert(s.key.clone(), obj);
                    } else {
                        p.configs.insert(s.key.clone(), obj);
                    }
                }
            }
            k if is_extension(k) => {}
            _ => {
                return Err(cx.error(
                    e.key_pos,
                    path,
                    format!(
                        "unknown top-level key {path:?} (expected version, name, services, \
                         volumes, networks, secrets, configs or x-...)"
                    ),
                ));
            }
        }
    }
    let names = Names {
        volumes: p.volumes.keys().cloned().collect(),
        networks: p.networks.keys().cloned().collect(),
        secrets: p.secrets.keys().cloned().collect(),
        configs: p.configs.keys().cloned().collect(),
    };
    let Some(services) = services else {
        return Err(cx.error(root.pos, "services", "a stack needs a services: mapping"));
    };
    let mut deps = Vec::new();
    for s in map(cx, services, "services")? {
        let path = join("services", &s.key);
        let svc = service::service(cx, s, &path, &names, &mut deps)?;
        p.services.insert(s.key.clone(), svc);
    }
    service::check_depends_on(cx, &p, &deps)?;
    Ok(p)
}

/// `external: true`, or the 3.x `external: {name: x}`, setting `name`.
fn external(cx: &Ctx<'_>, node: &Node, path: &str, name: &mut Option<String>) -> R<bool> {
    match &node.kind {
        Kind::Map(entries) => {
            for e in entries {
                match e.key.as_str() {
                    "name" => *name = opt_string(cx, &e.value, &join(path, "name"))?,
                    _ => return Err(unknown(cx, e, path)),
                }
            }
            Ok(true)
        }
        _ => boolean(cx, node, path),
    }
}

fn volume(cx: &mut Ctx<'_>, node: &Node, path: &str) -> R<Volume> {
    let mut v = Volume::default();
    for e in map(cx, node, path)? {
        let p = join(path, &e.key);
        match e.key.as_str() {
            "name" => v.name = opt_string(cx, &e.value, &p)?,
            "external" => v.external = external(cx, &e.value, &p, &mut v.name)?,
            "driver" => v.driver = opt_string(cx, &e.value, &p)?,
            "driver_opts" => v.driver_opts = string_map(cx, &e.value, &p)?,
            "labels" => v.labels = string_map(cx, &e.value, &p)?,
            k if is_extension(k) => {}
            _ => return Err(unknown(cx, e, path)),
        }
    }
    Ok(v)
}

fn network(cx: &mut Ctx<'_>, node: &Node, path: &str) -> R<Network> {
    let mut n = Network::default();
    for e in map(cx, node, path)? {
        let p = join(path, &e.key);
        match e.key.as_str() {
            "name" => n.name = opt_string(cx, &e.value, &p)?,
            "external" => n.external = external(cx, &e.value, &p, &mut n.name)?,
            "driver" => n.driver = opt_string(cx, &e.value, &p)?,
            "driver_opts" => n.driver_opts = string_map(cx, &e.value, &p)?,
            "attachable" => n.attachable = boolean(cx, &e.value, &p)?,
            "internal" => n.internal = boolean(cx, &e.value, &p)?,
            "labels" => n.labels = string_map(cx, &e.value, &p)?,
            "ipam" | "enable_ipv6" => {
                cx.warn(e.key_pos, &p, "not supported by Bronze stacks; ignored");
            }
            k if is_extension(k) => {}
            _ => return Err(unknown(cx, e, path)),
        }
    }
    Ok(n)
}

/// A top-level secret or config.
fn secret(cx: &mut Ctx<'_>, node: &Node, path: &str) -> R<Secret> {
    let mut s = Secret::default();
    for e in map(cx, node, path)? {
        let p = join(path, &e.key);
        match e.key.as_str() {
            "name" => s.name = opt_string(cx, &e.value, &p)?,
            "file" => {
                let f = string(cx, &e.value, &p)?;
                s.file = Some(absolute(&cx.dir(e.value.pos).join(f)));
            }
            "external" => s.external = external(cx, &e.value, &p, &mut s.name)?,
            "labels" => s.labels = string_map(cx, &e.value, &p)?,
            "template_driver" | "driver" | "driver_opts" | "environment" | "content" => {
                cx.warn(e.key_pos, &p, "not supported by Bronze stacks; ignored");
            }
            k if is_extension(k) => {}
            _ => return Err(unknown(cx, e, path)),
        }
    }
    if s.file.is_none() && !s.external {
        return Err(cx.error(node.pos, path, "expected file: (a path) or external: true"));
    }
    Ok(s)
}
