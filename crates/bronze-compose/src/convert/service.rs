//! One service: its keys, the short and long syntaxes of ports, volumes,
//! secrets and configs, its healthcheck, and its references to other
//! services and to top-level objects.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::convert::{
    Ctx, Names, R, absolute, boolean, deploy, index, is_extension, join, map, opt_duration,
    opt_string, seq, size, string, string_map, strings, uint, unknown,
};
use crate::interpolate::parse_env_lines;
use crate::model::{
    Condition, Healthcheck, Mount, MountKind, Port, Project, Service, ServiceObjectRef,
};
use crate::yaml::{Entry, Kind, Node, Pos};

/// A `depends_on` entry, checked once every service is known.
pub(crate) struct Dep {
    service: String,
    on: String,
    pos: Pos,
    path: String,
}

pub(crate) fn service(
    cx: &mut Ctx<'_>,
    entry: &Entry,
    path: &str,
    names: &Names,
    deps: &mut Vec<Dep>,
) -> R<Service> {
    let mut s = Service::default();
    let mut image = None;
    let mut from_files = BTreeMap::new();
    for e in map(cx, &entry.value, path)? {
        let p = join(path, &e.key);
        let v = &e.value;
        match e.key.as_str() {
            "image" => image = opt_string(cx, v, &p)?,
            "command" => s.command = words(cx, v, &p)?,
            "entrypoint" => s.entrypoint = words(cx, v, &p)?,
            "environment" => {
                for var in map(cx, v, &p)? {
                    let value = opt_string(cx, &var.value, &join(&p, &var.key))?;
                    s.environment.insert(var.key.clone(), value);
                }
            }
            "env_file" => env_files(cx, v, &p, &mut from_files)?,
            "ports" => {
                for (i, item) in seq(cx, v, &p)?.iter().enumerate() {
                    s.ports.extend(port(cx, item, &index(&p, i))?);
                }
            }
            "volumes" => {
                for (i, item) in seq(cx, v, &p)?.iter().enumerate() {
                    s.volumes.push(mount(cx, item, &index(&p, i), names)?);
                }
            }
            "labels" => s.labels = string_map(cx, v, &p)?,
            "healthcheck" => s.healthcheck = Some(healthcheck(cx, v, &p)?),
            "stop_grace_period" => s.stop_grace_period = opt_duration(cx, v, &p)?,
            "stop_signal" => s.stop_signal = opt_string(cx, v, &p)?,
            "user" => s.user = opt_string(cx, v, &p)?,
            "working_dir" => s.working_dir = opt_string(cx, v, &p)?,
            "hostname" => s.hostname = opt_string(cx, v, &p)?,
            "extra_hosts" => {
                for h in map(cx, v, &p)? {
                    let ip = string(cx, &h.value, &join(&p, &h.key))?;
                    s.extra_hosts.push(format!("{}:{ip}", h.key));
                }
            }
            "secrets" | "configs" => {
                let (defined, what) = if e.key == "secrets" {
                    (&names.secrets, "secret")
                } else {
                    (&names.configs, "config")
                };
                let mut refs = Vec::new();
                for (i, item) in seq(cx, v, &p)?.iter().enumerate() {
                    let ip = index(&p, i);
                    let r = object_ref(cx, item, &ip)?;
                    if !defined.contains(&r.source) {
                        return Err(cx.error(
                            item.pos,
                            &ip,
                            format!(
                                "undefined {what} {:?} (define it under the top-level {}:)",
                                r.source, e.key
                            ),
                        ));
                    }
                    refs.push(r);
                }
                if e.key == "secrets" {
                    s.secrets = refs;
                } else {
                    s.configs = refs;
                }
            }
            "depends_on" => {
                for d in map(cx, v, &p)? {
                    let dp = join(&p, &d.key);
                    s.depends_on
                        .insert(d.key.clone(), condition(cx, &d.value, &dp)?);
                    deps.push(Dep {
                        service: entry.key.clone(),
                        on: d.key.clone(),
                        pos: d.key_pos,
                        path: dp,
                    });
                }
            }
            "networks" => {
                for n in map(cx, v, &p)? {
                    let np = join(&p, &n.key);
                    if n.key != "default" && !names.networks.contains(&n.key) {
                        return Err(cx.error(
                            n.key_pos,
                            &np,
                            format!(
                                "undefined network {:?} (define it under the top-level networks:)",
                                n.key
                            ),
                        ));
                    }
                    for opt in map(cx, &n.value, &np)? {
                        if !is_extension(&opt.key) {
                            cx.warn(
                                opt.key_pos,
                                &join(&np, &opt.key),
                                "not supported by Bronze stacks; ignored",
                            );
                        }
                    }
                    s.networks.push(n.key.clone());
                }
            }
            "deploy" => s.deploy = deploy::deploy(cx, v, &p)?,
            "extends" => {
                return Err(cx.error(
                    e.key_pos,
                    &p,
                    "extends is not supported by stacks: give several -c files instead",
                ));
            }
            k if is_extension(k) => {}
            _ => return Err(unknown(cx, e, path)),
        }
    }
    for (k, v) in from_files {
        s.environment.entry(k).or_insert(v);
    }
    s.image = match image {
        Some(i) if !i.trim().is_empty() => i,
        _ => return Err(cx.error(entry.key_pos, path, "a service needs an image")),
    };
    Ok(s)
}

/// `command:` and `entrypoint:`: a string split as a shell would, or a
/// list taken as it is.
fn words(cx: &Ctx<'_>, node: &Node, path: &str) -> R<Option<Vec<String>>> {
    match &node.kind {
        Kind::Null => Ok(None),
        Kind::Scalar { text, .. } => bronze_runtime::words::split(text)
            .map(Some)
            .map_err(|e| cx.error(node.pos, path, e)),
        _ => strings(cx, node, path).map(Some),
    }
}

/// `env_file:` (a path, a list of paths, or of `{path, required}`), read
/// relative to the compose file's directory; later files win.
fn env_files(
    cx: &Ctx<'_>,
    node: &Node,
    path: &str,
    into: &mut BTreeMap<String, Option<String>>,
) -> R<()> {
    let items: Vec<&Node> = match &node.kind {
        Kind::Seq(items) => items.iter().collect(),
        _ => vec![node],
    };
    for (i, item) in items.into_iter().enumerate() {
        let ip = index(path, i);
        let (file, required) = match &item.kind {
            Kind::Map(entries) => {
                let mut file = None;
                let mut required = true;
                for e in entries {
                    match e.key.as_str() {
                        "path" => file = Some(string(cx, &e.value, &join(&ip, "path"))?),
                        "required" => required = boolean(cx, &e.value, &join(&ip, "required"))?,
                        "format" => {}
                        _ => return Err(unknown(cx, e, &ip)),
                    }
                }
                let file = file.ok_or_else(|| cx.error(item.pos, &ip, "expected path:"))?;
                (file, required)
            }
            _ => (string(cx, item, &ip)?, true),
        };
        let full = absolute(&cx.dir(item.pos).join(&file));
        let text = match std::fs::read_to_string(&full) {
            Ok(t) => t,
            Err(_) if !required => continue,
            Err(e) => {
                return Err(cx.error(
                    item.pos,
                    &ip,
                    format!("cannot read env file {}: {e}", full.display()),
                ));
            }
        };
        let lines = parse_env_lines(&text).map_err(|(line, m)| crate::error::Error {
            file: full.clone(),
            line,
            column: 1,
            key: String::new(),
            message: m,
        })?;
        into.extend(lines);
    }
    Ok(())
}

/// A port, a range, `[ip:][published:]target[/protocol]`.
struct ShortPorts {
    ports: Vec<Port>,
    host_ip: Option<String>,
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let num = |t: &str| {
        t.parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{t:?} is not a port (1-65535)"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if b < a {
                return Err(format!("{s:?}: a range goes from low to high"));
            }
            Ok((a, b))
        }
        None => num(s).map(|n| (n, n)),
    }
}

fn parse_short_port(text: &str) -> Result<ShortPorts, String> {
    let (spec, protocol) = match text.rsplit_once('/') {
        Some((s, p)) => (s, p),
        None => (text, "tcp"),
    };
    if protocol != "tcp" && protocol != "udp" {
        return Err(format!("protocol {protocol:?}: expected tcp or udp"));
    }
    // An IPv6 host address comes in brackets: [::1]:8080:80.
    let (host_ip, rest) = match spec.strip_prefix('[') {
        Some(r) => {
            let (ip, rest) = r
                .split_once("]:")
                .ok_or_else(|| format!("{text:?}: expected [ip]:published:target"))?;
            (Some(ip.to_string()), rest)
        }
        None => (None, spec),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (host_ip, published, target) = match (host_ip, parts.as_slice()) {
        (None, [t]) => (None, None, *t),
        (None, [p, t]) => (None, Some(*p), *t),
        (None, [ip, p, t]) => (Some(ip.to_string()), Some(*p), *t),
        (Some(ip), [p, t]) => (Some(ip), Some(*p), *t),
        _ => {
            return Err(format!(
                "{text:?}: expected [ip:][published:]target[/protocol]"
            ));
        }
    };
    let published = published.filter(|p| !p.is_empty());
    let (t0, t1) = parse_range(target)?;
    let count = t1 - t0;
    let published = match published {
        None => None,
        Some(p) => {
            let (p0, p1) = parse_range(p)?;
            if p1 - p0 != count {
                return Err(format!(
                    "{text:?}: the published and target ranges differ in length"
                ));
            }
            Some(p0)
        }
    };
    let ports = (0..=count)
        .map(|i| Port {
            target: t0 + i,
            published: published.map(|p| p + i),
            protocol: protocol.to_string(),
            mode: "ingress".into(),
        })
        .collect();
    Ok(ShortPorts {
        ports,
        host_ip: host_ip.filter(|ip| !ip.is_empty()),
    })
}

fn port(cx: &mut Ctx<'_>, node: &Node, path: &str) -> R<Vec<Port>> {
    match &node.kind {
        Kind::Scalar { text, .. } => {
            let short = parse_short_port(text).map_err(|m| cx.error(node.pos, path, m))?;
            if let Some(ip) = short.host_ip
                && !matches!(ip.as_str(), "0.0.0.0" | "::")
            {
                cx.warn(
                    node.pos,
                    path,
                    format!(
                        "host address {ip} is not honoured: Swarm and Bronze publish on \
                         every address"
                    ),
                );
            }
            Ok(short.ports)
        }
        _ => long_port(cx, node, path).map(|p| vec![p]),
    }
}

fn port_number(cx: &Ctx<'_>, node: &Node, path: &str) -> R<u16> {
    let n = uint(cx, node, path)?;
    u16::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
        cx.error(
            node.pos,
            path,
            format!("expected a port (1-65535), found {n}"),
        )
    })
}

fn long_port(cx: &mut Ctx<'_>, node: &Node, path: &str) -> R<Port> {
    let mut target = None;
    let mut p = Port {
        target: 0,
        published: None,
        protocol: "tcp".into(),
        mode: "ingress".into(),
    };
    for e in map(cx, node, path)? {
        let kp = join(path, &e.key);
        match e.key.as_str() {
            "target" => target = Some(port_number(cx, &e.value, &kp)?),
            "published" => {
                p.published = match e.value.kind {
                    Kind::Null => None,
                    _ => Some(port_number(cx, &e.value, &kp)?),
                }
            }
            "protocol" => p.protocol = deploy::one_of(cx, &e.value, &kp, &["tcp", "udp"])?,
            "mode" => p.mode = deploy::one_of(cx, &e.value, &kp, &["ingress", "host"])?,
            "host_ip" | "name" | "app_protocol" => {
                cx.warn(e.key_pos, &kp, "not supported by Bronze stacks; ignored");
            }
            k if is_extension(k) => {}
            _ => return Err(unknown(cx, e, path)),
        }
    }
    p.target = target.ok_or_else(|| cx.error(node.pos, path, "a port needs a target"))?;
    Ok(p)
}

/// The merge key of a `ports` item: its (published, target, protocol)s.
pub(crate) fn port_key(node: &Node) -> String {
    match &node.kind {
        Kind::Scalar { text, .. } => match parse_short_port(text) {
            Ok(s) => s
                .ports
                .iter()
                .map(|p| format!("{:?}:{}/{}", p.published, p.target, p.protocol))
                .collect::<Vec<_>>()
                .join(","),
            Err(_) => text.clone(),
        },
        _ => {
            let field = |k: &str| match node.get(k).map(|n| &n.kind) {
                Some(Kind::Scalar { text, .. }) => text.clone(),
                _ => String::new(),
            };
            let published = field("published");
            let published = match published.parse::<u16>() {
                Ok(n) => format!("{:?}", Some(n)),
                Err(_) => "None".into(),
            };
            let protocol = match field("protocol").as_str() {
                "" => "tcp".to_string(),
                p => p.to_string(),
            };
            format!("{published}:{}/{protocol}", field("target"))
        }
    }
}

const MOUNT_MODES: &[&str] = &[
    "ro",
    "rw",
    "z",
    "Z",
    "nocopy",
    "consistent",
    "cached",
    "delegated",
    "rshared",
    "shared",
    "rslave",
    "slave",
    "rprivate",
    "private",
];

/// `[source:]target[:mode]` split; `None` source is an anonymous volume.
fn split_short_mount(text: &str) -> (Option<&str>, &str, &str) {
    let parts: Vec<&str> = text.splitn(3, ':').collect();
    match parts.as_slice() {
        [t] => (None, t, ""),
        [t, m] if m.split(',').all(|m| MOUNT_MODES.contains(&m)) && t.starts_with('/') => {
            (None, t, m)
        }
        [s, t] => (Some(s), t, ""),
        [s, t, m] => (Some(s), t, m),
        _ => (None, text, ""),
    }
}

/// The merge key of a `volumes` item: its target.
pub(crate) fn mount_key(node: &Node) -> String {
    match &node.kind {
        Kind::Scalar { text, .. } => split_short_mount(text).1.to_string(),
        _ => match node.get("target").map(|n| &n.kind) {
            Some(Kind::Scalar { text, .. }) => text.clone(),
            _ => String::new(),
        },
    }
}

/// A bind source made absolute: `~` is `$HOME`, relative is the file's
/// directory.
fn host_path(cx: &Ctx<'_>, pos: Pos, source: &str) -> String {
    let path = if let Some(rest) = source.strip_prefix('~') {
        let home = cx.env.get("HOME").cloned().unwrap_or_default();
        PathBuf::from(format!("{home}{rest}"))
    } else {
        cx.dir(pos).join(source)
    };
    absolute(&path).to_string_lossy().into_owned()
}

fn is_host_path(source: &str) -> bool {
    source.starts_with('/') || source.starts_with('.') || source.starts_with('~')
}

fn mount(cx: &mut Ctx<'_>, node: &Node, path: &str, names: &Names) -> R<Mount> {
    let m = match &node.kind {
        Kind::Scalar { text, .. } => {
            let (source, target, mode) = split_short_mount(text);
            for m in mode.split(',').filter(|m| !m.is_empty()) {
                if !MOUNT_MODES.contains(&m) {
                    return Err(cx.error(
                        node.pos,
                        path,
                        format!("{text:?}: unknown mount option {m:?} (expected ro, rw, ...)"),
                    ));
                }
            }
            let read_only = mode.split(',').any(|m| m == "ro");
            let (kind, source) = match source {
                Some(s) if is_host_path(s) => (MountKind::Bind, Some(host_path(cx, node.pos, s))),
                Some(s) => (MountKind::Volume, Some(s.to_string())),
                None => (MountKind::Volume, None),
            };
            Mount {
                kind,
                source,
                target: target.to_string(),
                read_only,
                tmpfs_size: None,
            }
        }
        _ => long_mount(cx, node, path)?,
    };
    if m.target.is_empty() || !m.target.starts_with('/') {
        return Err(cx.error(
            node.pos,
            path,
            format!(
                "the target {:?} must be an absolute path in the container",
                m.target
            ),
        ));
    }
    if let (MountKind::Volume, Some(v)) = (m.kind, &m.source)
        && !names.volumes.contains(v)
    {
        return Err(cx.error(
            node.pos,
            path,
            format!("undefined volume {v:?} (define it under the top-level volumes:)"),
        ));
    }
    Ok(m)
}

fn long_mount(cx: &mut Ctx<'_>, node: &Node, path: &str) -> R<Mount> {
    let mut kind = MountKind::Volume;
    let mut source = None;
    let mut source_pos = node.pos;
    let mut m = Mount {
        kind,
        source: None,
        target: String::new(),
        read_only: false,
        tmpfs_size: None,
    };
    for e in map(cx, node, path)? {
        let kp = join(path, &e.key);
        match e.key.as_str() {
            "type" => {
                kind = match deploy::one_of(cx, &e.value, &kp, &["volume", "bind", "tmpfs"])?
                    .as_str()
                {
                    "bind" => MountKind::Bind,
                    "tmpfs" => MountKind::Tmpfs,
                    _ => MountKind::Volume,
                }
            }
            "source" => {
                source = opt_string(cx, &e.value, &kp)?;
                source_pos = e.value.pos;
            }
            "target" => m.target = string(cx, &e.value, &kp)?,
            "read_only" => m.read_only = boolean(cx, &e.value, &kp)?,
            "tmpfs" => {
                for t in map(cx, &e.value, &kp)? {
                    let tp = join(&kp, &t.key);
                    match t.key.as_str() {
                        "size" => m.tmpfs_size = Some(size(cx, &t.value, &tp)?),
                        "mode" => {
                            cx.warn(t.key_pos, &tp, "not supported by Bronze stacks; ignored")
                        }
                        _ => return Err(unknown(cx, t, &kp)),
                    }
                }
            }
            "bind" | "volume" | "consistency" => {
                if !matches!(e.value.kind, Kind::Null) {
                    cx.warn(e.key_pos, &kp, "not supported by Bronze stacks; ignored");
                }
            }
            k if is_extension(k) => {}
            _ => return Err(unknown(cx, e, path)),
        }
    }
    m.kind = kind;
    m.source = match (kind, source) {
        (MountKind::Bind, Some(s)) => Some(host_path(cx, source_pos, &s)),
        (MountKind::Bind, None) => {
            return Err(cx.error(node.pos, path, "a bind mount needs a source"));
        }
        (MountKind::Tmpfs, Some(_)) => {
            return Err(cx.error(
                source_pos,
                &join(path, "source"),
                "a tmpfs mount has no source",
            ));
        }
        (_, s) => s,
    };
    if m.tmpfs_size.is_some() && kind != MountKind::Tmpfs {
        return Err(cx.error(
            node.pos,
            &join(path, "tmpfs"),
            "tmpfs options need type: tmpfs",
        ));
    }
    Ok(m)
}

fn healthcheck(cx: &Ctx<'_>, node: &Node, path: &str) -> R<Healthcheck> {
    let mut h = Healthcheck::default();
    for e in map(cx, node, path)? {
        let p = join(path, &e.key);
        let v = &e.value;
        match e.key.as_str() {
            "test" => match &v.kind {
                Kind::Scalar { text, .. } => h.test = vec!["CMD-SHELL".into(), text.clone()],
                _ => {
                    let test = strings(cx, v, &p)?;
                    match test.first().map(String::as_str) {
                        Some("NONE") => h.disable = true,
                        Some("CMD" | "CMD-SHELL") => {}
                        _ => {
                            return Err(cx.error(
                                v.pos,
                                &p,
                                "a test list starts with CMD, CMD-SHELL or NONE",
                            ));
                        }
                    }
                    h.test = test;
                }
            },
            "interval" => h.interval = opt_duration(cx, v, &p)?,
            "timeout" => h.timeout = opt_duration(cx, v, &p)?,
            "start_period" => h.start_period = opt_duration(cx, v, &p)?,
            "retries" => h.retries = Some(uint(cx, v, &p)?),
            "disable" => h.disable = h.disable || boolean(cx, v, &p)?,
            k if is_extension(k) => {}
            _ => return Err(unknown(cx, e, path)),
        }
    }
    Ok(h)
}

/// A file mode: `0440` and `0o440` are octal (as Compose reads them),
/// other numbers decimal.
fn file_mode(cx: &Ctx<'_>, node: &Node, path: &str) -> R<u32> {
    let text = string(cx, node, path)?;
    let t = text.trim();
    let parsed = if let Some(o) = t.strip_prefix("0o") {
        u32::from_str_radix(o, 8).ok()
    } else if t.len() > 1 && t.starts_with('0') {
        u32::from_str_radix(&t[1..], 8).ok()
    } else {
        t.parse().ok()
    };
    parsed.filter(|m| *m <= 0o7777).ok_or_else(|| {
        cx.error(
            node.pos,
            path,
            format!("expected a file mode like 0440, found {t:?}"),
        )
    })
}

fn object_ref(cx: &Ctx<'_>, node: &Node, path: &str) -> R<ServiceObjectRef> {
    let mut r = ServiceObjectRef {
        source: String::new(),
        target: None,
        uid: None,
        gid: None,
        mode: None,
    };
    match &node.kind {
        Kind::Scalar { text, .. } => r.source = text.clone(),
        _ => {
            for e in map(cx, node, path)? {
                let p = join(path, &e.key);
                match e.key.as_str() {
                    "source" => r.source = string(cx, &e.value, &p)?,
                    "target" => r.target = opt_string(cx, &e.value, &p)?,
                    "uid" => r.uid = opt_string(cx, &e.value, &p)?,
                    "gid" => r.gid = opt_string(cx, &e.value, &p)?,
                    "mode" => r.mode = Some(file_mode(cx, &e.value, &p)?),
                    k if is_extension(k) => {}
                    _ => return Err(unknown(cx, e, path)),
                }
            }
        }
    }
    if r.source.is_empty() {
        return Err(cx.error(node.pos, path, "expected a source: name"));
    }
    Ok(r)
}

/// The merge key of a `secrets`/`configs` item: its target, else source.
pub(crate) fn object_key(node: &Node) -> String {
    match &node.kind {
        Kind::Scalar { text, .. } => text.clone(),
        _ => {
            let field = |k: &str| match node.get(k).map(|n| &n.kind) {
                Some(Kind::Scalar { text, .. }) => Some(text.clone()),
                _ => None,
            };
            field("target")
                .or_else(|| field("source"))
                .unwrap_or_default()
        }
    }
}

fn condition(cx: &mut Ctx<'_>, node: &Node, path: &str) -> R<Condition> {
    let mut c = Condition::Started;
    for e in map(cx, node, path)? {
        let p = join(path, &e.key);
        match e.key.as_str() {
            "condition" => {
                c = match deploy::one_of(
                    cx,
                    &e.value,
                    &p,
                    &[
                        "service_started",
                        "service_healthy",
                        "service_completed_successfully",
                    ],
                )?
                .as_str()
                {
                    "service_healthy" => Condition::Healthy,
                    "service_completed_successfully" => Condition::CompletedSuccessfully,
                    _ => Condition::Started,
                }
            }
            "restart" | "required" => {
                cx.warn(e.key_pos, &p, "not supported by Bronze stacks; ignored");
            }
            k if is_extension(k) => {}
            _ => return Err(unknown(cx, e, path)),
        }
    }
    Ok(c)
}

/// Every `depends_on` names a service of the stack, and there is no cycle.
pub(crate) fn check_depends_on(cx: &Ctx<'_>, p: &Project, deps: &[Dep]) -> R<()> {
    for d in deps {
        if !p.services.contains_key(&d.on) {
            return Err(cx.error(
                d.pos,
                &d.path,
                format!("{} depends on undefined service {:?}", d.service, d.on),
            ));
        }
    }
    // Depth-first from each service in name order; a service met again
    // while still on the path closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> =
        p.services.keys().map(|k| (k.as_str(), Mark::New)).collect();
    for start in p.services.keys() {
        if marks.get(start.as_str()) != Some(&Mark::New) {
            continue;
        }
        // (service, index of the next dependency to visit)
        let mut stack: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
        marks.insert(start, Mark::OnPath);
        while let Some(top) = stack.last_mut() {
            let (name, next) = *top;
            let on: Vec<&String> = p.services[name].depends_on.keys().collect();
            let Some(dep) = on.get(next) else {
                marks.insert(name, Mark::Done);
                stack.pop();
                continue;
            };
            top.1 += 1;
            match marks.get(dep.as_str()) {
                Some(Mark::OnPath) => {
                    let from = stack.iter().position(|(n, _)| n == dep).unwrap_or(0);
                    let mut cycle: Vec<&str> = stack[from..].iter().map(|(n, _)| *n).collect();
                    cycle.push(dep);
                    let closing = deps.iter().find(|d| d.service == name && &d.on == *dep);
                    let (pos, path) = closing
                        .map_or((Pos::default(), String::new()), |d| (d.pos, d.path.clone()));
                    return Err(cx.error(
                        pos,
                        &path,
                        format!("depends_on cycle: {}", cycle.join(" -> ")),
                    ));
                }
                Some(Mark::New) => {
                    marks.insert(dep, Mark::OnPath);
                    stack.push((dep, 0));
                }
                _ => {}
            }
        }
    }
    Ok(())
}
