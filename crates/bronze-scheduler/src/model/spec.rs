//! A service's spec and its validation. Everything a request gives is
//! checked here once (names, ranges, grammars), and every error names the
//! field as the request spells it, relative to the spec (`ports[0].target`).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher as _};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Invalid;
use super::constraint::{Constraint, Preference};
use super::node::Resources;

/// `Duration` stored as milliseconds.
pub mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "" | "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            "sctp" => Ok(Self::Sctp),
            other => Err(format!("{other:?}: expected \"tcp\", \"udp\" or \"sctp\"")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortConfig {
    pub target: u16,
    /// 0: dynamic (the engine picks a free host port).
    pub published: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Volume,
    Bind,
    Tmpfs,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mount {
    pub kind: MountKind,
    pub source: String,
    pub target: String,
    pub read_only: bool,
    /// tmpfs only; 0: the engine's default.
    #[serde(default)]
    pub tmpfs_size_bytes: i64,
}

/// A secret or config mounted as a file: which object (and the version
/// this spec pins), where, with which owner and mode.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileRef {
    pub source: String,
    /// Absolute path in the container (normalized by [`normalize_refs`]).
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    /// The object's version; 0 only in a request (the manager pins the
    /// latest before the spec is stored).
    pub version: u64,
}

/// Compose's default mode of a mounted secret or config.
pub const DEFAULT_FILE_MODE: u32 = 0o444;

/// Where secrets go when their target is a bare file name (Swarm's).
pub const SECRETS_DIR: &str = "/run/secrets";

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HealthCheck {
    pub test: Vec<String>,
    #[serde(with = "millis")]
    pub interval: Duration,
    #[serde(with = "millis")]
    pub timeout: Duration,
    pub retries: u32,
    #[serde(with = "millis")]
    pub start_period: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Replicated { replicas: u64 },
    Global,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Placement {
    pub constraints: Vec<Constraint>,
    pub preferences: Vec<Preference>,
    /// 0: no limit.
    pub max_replicas_per_node: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    None,
    OnFailure,
    #[default]
    Any,
}

impl RestartCondition {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "" | "any" => Ok(Self::Any),
            "none" | "no" => Ok(Self::None),
            "on-failure" => Ok(Self::OnFailure),
            other => Err(format!(
                "{other:?}: expected \"none\", \"on-failure\" or \"any\""
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RestartCondition::None => "none",
            RestartCondition::OnFailure => "on-failure",
            RestartCondition::Any => "any",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    #[serde(with = "millis")]
    pub delay: Duration,
    /// 0: no limit.
    pub max_attempts: u32,
    /// Zero: every attempt counts.
    #[serde(with = "millis")]
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            condition: RestartCondition::Any,
            delay: Duration::from_secs(5),
            max_attempts: 0,
            window: Duration::ZERO,
        }
    }
}

/// The longest a restart waits, however many failures came before.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(300);

impl RestartPolicy {
    /// The delay before a restart after `failures` failures in a row: the
    /// configured delay, doubled for each earlier failure, at most
    /// [`MAX_RESTART_DELAY`] (or the configured delay when it is longer).
    pub fn backoff(&self, failures: u32) -> Duration {
        let doubled = self
            .delay
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        doubled.min(MAX_RESTART_DELAY.max(self.delay))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    #[default]
    StopFirst,
    StartFirst,
}

impl Order {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "" | "stop-first" => Ok(Self::StopFirst),
            "start-first" => Ok(Self::StartFirst),
            other => Err(format!(
                "{other:?}: expected \"stop-first\" or \"start-first\""
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Order::StopFirst => "stop-first",
            Order::StartFirst => "start-first",
        }
    }
}

/// What a rollout does when too many of its new tasks fail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    Rollback,
}

impl FailureAction {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "" | "pause" => Ok(Self::Pause),
            "continue" => Ok(Self::Continue),
            "rollback" => Ok(Self::Rollback),
            other => Err(format!(
                "{other:?}: expected \"pause\", \"continue\" or \"rollback\""
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureAction::Pause => "pause",
            FailureAction::Continue => "continue",
            FailureAction::Rollback => "rollback",
        }
    }
}

/// Swarm's default monitor window.
pub const DEFAULT_MONITOR: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// 0: all at once.
    pub parallelism: u64,
    #[serde(with = "millis")]
    pub delay: Duration,
    pub order: Order,
    #[serde(with = "millis", default = "default_monitor")]
    pub monitor: Duration,
    /// 0.0..=1.0
    #[serde(default)]
    pub max_failure_ratio: f64,
    #[serde(default)]
    pub failure_action: FailureAction,
}

fn default_monitor() -> Duration {
    DEFAULT_MONITOR
}

impl Eq for UpdateConfig {}

impl Hash for UpdateConfig {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (
            self.parallelism,
            self.delay,
            self.order,
            self.monitor,
            self.max_failure_ratio.to_bits(),
            self.failure_action,
        )
            .hash(state);
    }
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            parallelism: 1,
            delay: Duration::ZERO,
            order: Order::StopFirst,
            monitor: DEFAULT_MONITOR,
            max_failure_ratio: 0.0,
            failure_action: FailureAction::Pause,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub container_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub healthcheck: Option<HealthCheck>,
    #[serde(default)]
    pub stop_signal: String,
    #[serde(with = "millis")]
    pub stop_grace_period: Duration,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub workdir: String,
    pub mode: Mode,
    #[serde(default)]
    pub placement: Placement,
    #[serde(default)]
    pub reservations: Resources,
    #[serde(default)]
    pub limits: Resources,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub update: UpdateConfig,
    #[serde(default)]
    pub rollback: UpdateConfig,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    /// Out of discovery this long before the stop signal.
    #[serde(with = "millis", default)]
    pub drain_delay: Duration,
    /// Secrets mounted on a tmpfs, read-only.
    #[serde(default)]
    pub secrets: Vec<FileRef>,
    /// Configs mounted read-only.
    #[serde(default)]
    pub configs: Vec<FileRef>,
    /// "" (a virtual IP, as "vip") or "dnsrr": what the service's name
    /// answers inside its stack.
    #[serde(default)]
    pub endpoint_mode: String,
    /// Published ports answer on every node (Swarm's ingress mode).
    #[serde(default)]
    pub ingress: bool,
}

/// Default time between the stop signal and SIGKILL (Docker's).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Default time a registered task is out of discovery before its stop
/// signal: long enough for the gateway's watch to take it out.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(2);
/// More replicas than this is surely a typo.
pub const MAX_REPLICAS: u64 = 100_000;

impl ServiceSpec {
    /// A spec with Swarm's defaults: one replica of `image`.
    pub fn new(name: &str, image: &str) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            command: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            labels: BTreeMap::new(),
            container_labels: BTreeMap::new(),
            ports: Vec::new(),
            mounts: Vec::new(),
            healthcheck: None,
            stop_signal: String::new(),
            stop_grace_period: DEFAULT_STOP_GRACE,
            user: String::new(),
            workdir: String::new(),
            mode: Mode::Replicated { replicas: 1 },
            placement: Placement::default(),
            reservations: Resources::default(),
            limits: Resources::default(),
            restart: RestartPolicy::default(),
            update: UpdateConfig::default(),
            rollback: UpdateConfig::default(),
            hostname: String::new(),
            extra_hosts: Vec::new(),
            drain_delay: DEFAULT_DRAIN_DELAY,
            secrets: Vec::new(),
            configs: Vec::new(),
            endpoint_mode: String::new(),
            ingress: false,
        }
    }

    /// The references of one kind.
    pub fn refs(&self, kind: super::Kind) -> &[FileRef] {
        match kind {
            super::Kind::Secret => &self.secrets,
            super::Kind::Config => &self.configs,
        }
    }

    pub fn refs_mut(&mut self, kind: super::Kind) -> &mut Vec<FileRef> {
        match kind {
            super::Kind::Secret => &mut self.secrets,
            super::Kind::Config => &mut self.configs,
        }
    }

    /// Whether the spec mounts the object `name` of `kind`.
    pub fn uses(&self, kind: super::Kind, name: &str) -> bool {
        self.refs(kind).iter().any(|r| r.source == name)
    }

    /// A digest of what a task runs: the spec without its name, service
    /// labels, mode and rollout settings. Tasks whose version has another
    /// digest than the service's current one are replaced by a rollout;
    /// scaling or relabelling the service replaces nothing.
    pub fn template_digest(&self) -> u64 {
        let mut h = rustc_hash::FxHasher::default();
        self.image.hash(&mut h);
        self.command.hash(&mut h);
        self.args.hash(&mut h);
        self.env.hash(&mut h);
        self.container_labels.hash(&mut h);
        self.ports.hash(&mut h);
        self.mounts.hash(&mut h);
        self.healthcheck.hash(&mut h);
        self.stop_signal.hash(&mut h);
        self.stop_grace_period.hash(&mut h);
        self.user.hash(&mut h);
        self.workdir.hash(&mut h);
        self.placement.hash(&mut h);
        self.reservations.hash(&mut h);
        self.limits.hash(&mut h);
        self.restart.hash(&mut h);
        self.hostname.hash(&mut h);
        self.extra_hosts.hash(&mut h);
        // With their pinned versions: a new version of a secret is a new
        // template, so a rollout.
        self.secrets.hash(&mut h);
        self.configs.hash(&mut h);
        self.endpoint_mode.hash(&mut h);
        self.ingress.hash(&mut h);
        h.finish()
    }

    pub fn replicas(&self) -> Option<u64> {
        match self.mode {
            Mode::Replicated { replicas } => Some(replicas),
            Mode::Global => None,
        }
    }
}

/// Service names: Swarm's grammar (letters, digits, '-' and '_', starting
/// and ending with a letter or digit, at most 63), so the name is also a
/// DNS label in discovery.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?}: expected 1-63 letters, digits, '-' or '_', starting and ending with a \
             letter or digit"
        ))
    }
}

/// An image reference as Docker reads it:
/// `[host[:port]/]path[:tag][@sha256:<64 hex>]`, path components lower-case.
pub fn validate_image(image: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "{image:?} is not an image reference ({why}); expected e.g. \
             \"127.0.0.1:5000/shop/web:1.2\""
        ))
    };
    if image.is_empty() || image.len() > 512 {
        return bad("empty or too long");
    }
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let Some(hex) = d.strip_prefix("sha256:") else {
            return bad("digest must be sha256:<hex>");
        };
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return bad("digest must be 64 lower-case hex digits");
        }
    }
    // A tag follows the last ':' after the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && tag.as_bytes()[0] != b'.'
            && tag.as_bytes()[0] != b'-'
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return bad("bad tag");
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        let is_host = first.contains('.') || first.contains(':') || first == "localhost";
        if is_host {
            let (host, port) = first.split_once(':').unwrap_or((first, ""));
            let host_ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
            let port_ok = port.is_empty() || port.parse::<u16>().is_ok();
            if !host_ok || !port_ok {
                return bad("bad registry host");
            }
            parts.remove(0);
        }
    }
    for part in parts {
        let ok = !part.is_empty()
            && part.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && part.as_bytes()[0].is_ascii_alphanumeric()
            && part.as_bytes()[part.len() - 1].is_ascii_alphanumeric();
        if !ok {
            return bad("path components are lower-case letters, digits and separators");
        }
    }
    Ok(())
}

/// A signal by name ("SIGTERM", "TERM") or number; normalized to "SIGTERM".
pub fn normalize_signal(s: &str) -> Result<String, String> {
    const NAMES: &[&str] = &[
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    if s.is_empty() {
        return Ok(String::new());
    }
    if let Ok(n) = s.parse::<u32>() {
        return if (1..=64).contains(&n) {
            Ok(n.to_string())
        } else {
            Err(format!("{s:?}: expected a signal number 1-64"))
        };
    }
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if NAMES.contains(&bare) {
        Ok(format!("SIG{bare}"))
    } else {
        Err(format!(
            "{s:?}: expected a signal such as \"SIGTERM\" or \"SIGQUIT\""
        ))
    }
}

/// Fills in Compose's defaults and checks the references: secrets' bare
/// file names go under /run/secrets (default `/run/secrets/<source>`),
/// configs' default is `/<source>`; modes are permission bits; no two
/// files share a target.
pub fn normalize_refs(spec: &mut ServiceSpec) -> Result<(), Invalid> {
    let mut targets = std::collections::HashSet::new();
    for kind in [super::Kind::Secret, super::Kind::Config] {
        let field = kind.field();
        for (i, r) in spec.refs_mut(kind).iter_mut().enumerate() {
            super::object::validate_name(&r.source)
                .map_err(|m| Invalid::new(format!("{field}[{i}].source"), m))?;
            if r.target.is_empty() {
                r.target = r.source.clone();
            }
            if !r.target.starts_with('/') {
                r.target = match kind {
                    super::Kind::Secret => format!("{SECRETS_DIR}/{}", r.target),
                    super::Kind::Config => format!("/{}", r.target),
                };
            }
            let bad = r.target.len() > 4096
                || r.target.ends_with('/')
                || r.target.contains('\0')
                || r.target.split('/').any(|p| p == ".." || p == ".");
            if bad {
                return Err(Invalid::new(
                    format!("{field}[{i}].target"),
                    format!(
                        "{:?}: expected a file name or an absolute file path without '.' or '..'",
                        r.target
                    ),
                ));
            }
            if r.mode > 0o777 {
                return Err(Invalid::new(
                    format!("{field}[{i}].mode"),
                    format!("{:o}: expected permission bits, 0 to 0777", r.mode),
                ));
            }
            if !targets.insert(r.target.clone()) {
                return Err(Invalid::new(
                    format!("{field}[{i}].target"),
                    format!("{:?} is mounted twice", r.target),
                ));
            }
        }
    }
    Ok(())
}

fn check<T>(field: &str, r: Result<T, String>) -> Result<T, Invalid> {
    r.map_err(|m| Invalid::new(field, m))
}

/// Every check a spec must pass before it is stored. Fields are named as in
/// the request (`ports[1].published`).
pub fn validate(spec: &ServiceSpec) -> Result<(), Invalid> {
    check("name", validate_name(&spec.name))?;
    check("image", validate_image(&spec.image))?;
    for (i, e) in spec.env.iter().enumerate() {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        if key.is_empty() || key.contains('\0') {
            return Err(Invalid::new(
                format!("env[{i}]"),
                format!("{e:?}: expected KEY=value"),
            ));
        }
    }
    for (what, labels) in [
        ("labels", &spec.labels),
        ("container_labels", &spec.container_labels),
    ] {
        if let Some(k) = labels.keys().find(|k| k.is_empty() || k.len() > 1024) {
            return Err(Invalid::new(
                what,
                format!("label key {k:?}: expected 1-1024 characters"),
            ));
        }
    }
    check(
        &format!("labels.{}", super::autodeploy::LABEL),
        super::autodeploy::validate(&spec.labels, &spec.image),
    )?;
    let mut published = std::collections::HashSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        if p.target == 0 {
            return Err(Invalid::new(
                format!("ports[{i}].target"),
                "expected a port 1-65535",
            ));
        }
        if p.published != 0 && !published.insert((p.published, p.protocol)) {
            return Err(Invalid::new(
                format!("ports[{i}].published"),
                format!("{}/{} is published twice", p.published, p.protocol.as_str()),
            ));
        }
    }
    for (i, m) in spec.mounts.iter().enumerate() {
        if !m.target.starts_with('/') {
            return Err(Invalid::new(
                format!("mounts[{i}].target"),
                format!("{:?}: expected an absolute path", m.target),
            ));
        }
        match m.kind {
            MountKind::Bind if !m.source.starts_with('/') => {
                return Err(Invalid::new(
                    format!("mounts[{i}].source"),
                    format!(
                        "{:?}: a bind mount's source is an absolute host path",
                        m.source
                    ),
                ));
            }
            MountKind::Tmpfs if !m.source.is_empty() => {
                return Err(Invalid::new(
                    format!("mounts[{i}].source"),
                    "a tmpfs mount has no source",
                ));
            }
            MountKind::Volume
                if !m.source.is_empty()
                    && !m
                        .source
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) =>
            {
                return Err(Invalid::new(
                    format!("mounts[{i}].source"),
                    format!(
                        "{:?}: a volume name is letters, digits, '_', '.' and '-'",
                        m.source
                    ),
                ));
            }
            _ => {}
        }
    }
    if let Some(h) = &spec.healthcheck
        && let Some(first) = h.test.first()
        && !matches!(first.as_str(), "CMD" | "CMD-SHELL" | "NONE")
    {
        return Err(Invalid::new(
            "healthcheck.test[0]",
            format!("{first:?}: expected \"CMD\", \"CMD-SHELL\" or \"NONE\""),
        ));
    }
    check("stop_signal", normalize_signal(&spec.stop_signal))?;
    if !spec.hostname.is_empty()
        && (spec.hostname.len() > 63
            || !spec
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
    {
        return Err(Invalid::new(
            "hostname",
            format!("{:?}: expected a host name", spec.hostname),
        ));
    }
    if !matches!(spec.endpoint_mode.as_str(), "" | "vip" | "dnsrr") {
        return Err(Invalid::new(
            "endpoint_mode",
            format!("{:?}: expected vip or dnsrr", spec.endpoint_mode),
        ));
    }
    for (i, h) in spec.extra_hosts.iter().enumerate() {
        let ok = h
            .split_once(':')
            .or_else(|| h.split_once('='))
            .is_some_and(|(name, ip)| !name.is_empty() && ip.parse::<std::net::IpAddr>().is_ok());
        if !ok {
            return Err(Invalid::new(
                format!("extra_hosts[{i}]"),
                format!("{h:?}: expected host:ip, e.g. \"db:10.0.0.5\""),
            ));
        }
    }
    for (what, u) in [
        ("update_config", &spec.update),
        ("rollback_config", &spec.rollback),
    ] {
        if !(0.0..=1.0).contains(&u.max_failure_ratio) {
            return Err(Invalid::new(
                format!("{what}.max_failure_ratio"),
                format!("{}: expected 0 to 1", u.max_failure_ratio),
            ));
        }
    }
    if let Mode::Replicated { replicas } = spec.mode
        && replicas > MAX_REPLICAS
    {
        return Err(Invalid::new(
            "replicated.replicas",
            format!("{replicas}: expected at most {MAX_REPLICAS}"),
        ));
    }
    for (what, r) in [
        ("resources.reservations", &spec.reservations),
        ("resources.limits", &spec.limits),
    ] {
        for (name, v) in [
            ("nano_cpus", r.nano_cpus),
            ("memory_bytes", r.memory_bytes),
            ("pids", r.pids),
        ] {
            if v < 0 {
                return Err(Invalid::new(
                    format!("{what}.{name}"),
                    format!("{v}: expected 0 or more"),
                ));
            }
        }
    }
    if spec.reservations.pids != 0 {
        return Err(Invalid::new(
            "resources.reservations.pids",
            "pids can only be limited, not reserved",
        ));
    }
    let (res, lim) = (&spec.reservations, &spec.limits);
    if lim.memory_bytes > 0 && res.memory_bytes > lim.memory_bytes {
        return Err(Invalid::new(
            "resources.reservations.memory_bytes",
            "expected at most the memory limit",
        ));
    }
    if lim.nano_cpus > 0 && res.nano_cpus > lim.nano_cpus {
        return Err(Invalid::new(
            "resources.reservations.nano_cpus",
            "expected at most the CPU limit",
        ));
    }
    if lim.memory_bytes > 0 && lim.memory_bytes < 6 << 20 {
        return Err(Invalid::new(
            "resources.limits.memory_bytes",
            "expected at least 6 MiB (the engine's minimum)",
        ));
    }
    Ok(())
}

/// The spec's constraints and preferences from their text forms.
pub fn parse_placement(
    constraints: &[String],
    preferences: &[String],
    max_replicas_per_node: u64,
) -> Result<Placement, Invalid> {
    let constraints = constraints
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Constraint::parse(c).map_err(|m| Invalid::new(format!("constraints[{i}]"), m))
        })
        .collect::<Result<_, _>>()?;
    let preferences = preferences
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Preference::parse(p).map_err(|m| Invalid::new(format!("preferences[{i}]"), m))
        })
        .collect::<Result<_, _>>()?;
    Ok(Placement {
        constraints,
        preferences,
        max_replicas_per_node,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        for ok in [
            "busybox",
            "busybox:1.36",
            "127.0.0.1:5000/shop/web:1.2",
            "localhost/web",
            "registry.example.com/a/b/c",
            "web@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "bronze-test/busybox-httpd:latest",
        ] {
            validate_image(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "Web",
            "web:",
            "web:-x",
            "web@sha256:12",
            "a//b",
            "host:port/x",
            "web:1.2:3",
            "-web",
        ] {
            assert!(validate_image(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_and_signals() {
        assert!(validate_name("web").is_ok());
        assert!(validate_name("shop_web-1").is_ok());
        for bad in ["", "-web", "web-", "web.app", "a b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(normalize_signal("term").as_deref(), Ok("SIGTERM"));
        assert_eq!(normalize_signal("SIGQUIT").as_deref(), Ok("SIGQUIT"));
        assert_eq!(normalize_signal("9").as_deref(), Ok("9"));
        assert!(normalize_signal("SIGNOPE").is_err());
        assert!(normalize_signal("99").is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let mut s = ServiceSpec::new("web", "busybox");
        s.ports.push(PortConfig {
            target: 0,
            published: 0,
            protocol: Protocol::Tcp,
        });
        assert_eq!(validate(&s).expect_err("bad").field, "ports[0].target");
        let mut s = ServiceSpec::new("web", "busybox");
        s.mode = Mode::Replicated {
            replicas: MAX_REPLICAS + 1,
        };
        assert_eq!(validate(&s).expect_err("bad").field, "replicated.replicas");
        let mut s = ServiceSpec::new("web", "busybox");
        s.limits.memory_bytes = 64 << 20;
        s.reservations.memory_bytes = 128 << 20;
        assert_eq!(
            validate(&s).expect_err("bad").field,
            "resources.reservations.memory_bytes"
        );
        let e = parse_placement(&["node.labels.zone=eu".into()], &[], 0).expect_err("bad");
        assert_eq!(e.field, "constraints[0]");
        let mut s = ServiceSpec::new("web", "busybox");
        for ok in ["", "vip", "dnsrr"] {
            s.endpoint_mode = ok.into();
            assert!(validate(&s).is_ok(), "{ok}");
        }
        s.endpoint_mode = "round-robin".into();
        let e = validate(&s).expect_err("bad");
        assert_eq!(e.field, "endpoint_mode");
        assert!(e.to_string().contains("expected vip or dnsrr"), "{e}");
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let p = RestartPolicy {
            delay: Duration::from_millis(100),
            ..Default::default()
        };
        assert_eq!(p.backoff(0), Duration::from_millis(100));
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(4), Duration::from_millis(800));
        assert_eq!(p.backoff(40), MAX_RESTART_DELAY);
    }

    #[test]
    fn scaling_keeps_the_template() {
        let a = ServiceSpec::new("web", "busybox");
        let mut b = a.clone();
        b.mode = Mode::Replicated { replicas: 5 };
        b.labels.insert("team".into(), "x".into());
        assert_eq!(a.template_digest(), b.template_digest());
        b.env.push("A=1".into());
        assert_ne!(a.template_digest(), b.template_digest());
    }
}
