//! [`Project::to_yaml`]: the merged, interpolated project as one canonical
//! compose file, what `bronze stack config` prints (as `docker stack
//! config` does). Canonical: keys in alphabetical order, long syntax for
//! ports, volumes, secrets and configs, lists for commands, durations as
//! Go writes them, sizes in bytes; defaults that were not written stay out
//! (except a port's protocol and mode). The output loads back to the same
//! project.

use std::fmt::Write as _;
use std::time::Duration;

use crate::model::{
    Condition, Deploy, Healthcheck, Mode, MountKind, Project, ResourceSet, Secret, Service,
    ServiceObjectRef, UpdateConfig,
};

/// A YAML document written line by line at a given indentation.
struct Out {
    text: String,
    depth: usize,
}

impl Out {
    fn line(&mut self, s: &str) {
        for _ in 0..self.depth {
            self.text.push_str("  ");
        }
        self.text.push_str(s);
        self.text.push('\n');
    }

    /// `key:` then the body one level deeper.
    fn section(&mut self, key: &str, body: impl FnOnce(&mut Out)) {
        self.line(&format!("{}:", quote_key(key)));
        let header_end = self.text.len();
        self.depth += 1;
        body(self);
        self.depth -= 1;
        if self.text.len() == header_end {
            // Nothing inside: an empty mapping, not a null.
            self.text.pop();
            self.text.push_str(" {}\n");
        }
    }

    fn kv(&mut self, key: &str, value: &str) {
        self.line(&format!("{}: {value}", quote_key(key)));
    }

    fn str(&mut self, key: &str, value: &str) {
        self.kv(key, &quote(value));
    }

    fn opt_str(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.str(key, v);
        }
    }

    fn opt_num(&mut self, key: &str, value: Option<impl std::fmt::Display>) {
        if let Some(v) = value {
            self.kv(key, &v.to_string());
        }
    }

    fn opt_duration(&mut self, key: &str, value: Option<Duration>) {
        if let Some(d) = value {
            self.str(key, &bronze_runtime::duration::format_go(d));
        }
    }

    fn list(&mut self, key: &str, items: &[String]) {
        if items.is_empty() {
            self.kv(key, "[]");
            return;
        }
        self.section(key, |o| {
            for i in items {
                o.line(&format!("- {}", quote(i)));
            }
        });
    }

    fn map<'a>(&mut self, key: &str, entries: impl IntoIterator<Item = (&'a String, &'a String)>) {
        let entries: Vec<_> = entries.into_iter().collect();
        if entries.is_empty() {
            return;
        }
        self.section(key, |o| {
            for (k, v) in entries {
                o.str(k, v);
            }
        });
    }

    fn flag(&mut self, key: &str, on: bool) {
        if on {
            self.kv(key, "true");
        }
    }
}

/// A plain scalar when it reads back as the same string, else a
/// double-quoted one; `$` is written `$$`, so the file loads back as it
/// was printed.
pub(crate) fn quote(s: &str) -> String {
    quote_with(s, true)
}

/// A key: as [`quote`], but keys are never interpolated, so `$` stays.
fn quote_key(s: &str) -> String {
    quote_with(s, false)
}

fn quote_with(s: &str, escape_dollar: bool) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
        && !s.starts_with(['-', '.'])
        && s.chars().any(|c| c.is_ascii_alphabetic())
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n" | "inf" | "nan"
        );
    if safe {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            // The output is a compose file: `$` would be interpolated again.
            '$' if escape_dollar => out.push_str("$$"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(crate) fn project(p: &Project) -> String {
    let mut o = Out {
        text: String::new(),
        depth: 0,
    };
    if !p.configs.is_empty() {
        o.section("configs", |o| objects(o, &p.configs));
    }
    if !p.networks.is_empty() {
        o.section("networks", |o| {
            for (name, n) in &p.networks {
                o.section(name, |o| {
                    o.flag("attachable", n.attachable);
                    o.opt_str("driver", n.driver.as_deref());
                    o.map("driver_opts", &n.driver_opts);
                    o.flag("external", n.external);
                    o.flag("internal", n.internal);
                    o.map("labels", &n.labels);
                    o.opt_str("name", n.name.as_deref());
                });
            }
        });
    }
    if !p.secrets.is_empty() {
        o.section("secrets", |o| objects(o, &p.secrets));
    }
    o.section("services", |o| {
        for (name, s) in &p.services {
            o.section(name, |o| service(o, s));
        }
    });
    if !p.volumes.is_empty() {
        o.section("volumes", |o| {
            for (name, v) in &p.volumes {
                o.section(name, |o| {
                    o.opt_str("driver", v.driver.as_deref());
                    o.map("driver_opts", &v.driver_opts);
                    o.flag("external", v.external);
                    o.map("labels", &v.labels);
                    o.opt_str("name", v.name.as_deref());
                });
            }
        });
    }
    o.text
}

fn objects(o: &mut Out, objects: &std::collections::BTreeMap<String, Secret>) {
    for (name, s) in objects {
        o.section(name, |o| {
            o.flag("external", s.external);
            if let Some(f) = &s.file {
                o.str("file", &f.to_string_lossy());
            }
            o.map("labels", &s.labels);
            o.opt_str("name", s.name.as_deref());
        });
    }
}

fn service(o: &mut Out, s: &Service) {
    if let Some(c) = &s.command {
        o.list("command", c);
    }
    if !s.configs.is_empty() {
        o.section("configs", |o| refs(o, &s.configs));
    }
    if !s.depends_on.is_empty() {
        o.section("depends_on", |o| {
            for (name, c) in &s.depends_on {
                let c = match c {
                    Condition::Started => "service_started",
                    Condition::Healthy => "service_healthy",
                    Condition::CompletedSuccessfully => "service_completed_successfully",
                };
                o.section(name, |o| o.str("condition", c));
            }
        });
    }
    o.section("deploy", |o| deploy(o, &s.deploy));
    if let Some(e) = &s.entrypoint {
        o.list("entrypoint", e);
    }
    if !s.environment.is_empty() {
        o.section("environment", |o| {
            for (k, v) in &s.environment {
                match v {
                    Some(v) => o.str(k, v),
                    None => o.kv(k, "null"),
                }
            }
        });
    }
    if !s.extra_hosts.is_empty() {
        o.list("extra_hosts", &s.extra_hosts);
    }
    if let Some(h) = &s.healthcheck {
        o.section("healthcheck", |o| healthcheck(o, h));
    }
    o.opt_str("hostname", s.hostname.as_deref());
    o.str("image", &s.image);
    o.map("labels", &s.labels);
    if !s.networks.is_empty() {
        o.section("networks", |o| {
            for n in &s.networks {
                o.kv(n, "{}");
            }
        });
    }
    if !s.ports.is_empty() {
        o.section("ports", |o| {
            for p in &s.ports {
                o.line(&format!("- mode: {}", p.mode));
                o.depth += 1;
                o.kv("protocol", &p.protocol);
                o.opt_num("published", p.published);
                o.kv("target", &p.target.to_string());
                o.depth -= 1;
            }
        });
    }
    if !s.secrets.is_empty() {
        o.section("secrets", |o| refs(o, &s.secrets));
    }
    o.opt_duration("stop_grace_period", s.stop_grace_period);
    o.opt_str("stop_signal", s.stop_signal.as_deref());
    o.opt_str("user", s.user.as_deref());
    if !s.volumes.is_empty() {
        o.section("volumes", |o| {
            for m in &s.volumes {
                o.line(&format!("- read_only: {}", m.read_only));
                o.depth += 1;
                o.opt_str("source", m.source.as_deref());
                o.str("target", &m.target);
                if let Some(size) = m.tmpfs_size {
                    o.section("tmpfs", |o| o.kv("size", &size.to_string()));
                }
                let kind = match m.kind {
                    MountKind::Volume => "volume",
                    MountKind::Bind => "bind",
                    MountKind::Tmpfs => "tmpfs",
                };
                o.kv("type", kind);
                o.depth -= 1;
            }
        });
    }
    o.opt_str("working_dir", s.working_dir.as_deref());
}

fn refs(o: &mut Out, refs: &[ServiceObjectRef]) {
    for r in refs {
        o.line(&format!("- source: {}", quote(&r.source)));
        o.depth += 1;
        o.opt_str("gid", r.gid.as_deref());
        if let Some(m) = r.mode {
            o.kv("mode", &format!("0o{m:o}"));
        }
        o.opt_str("target", r.target.as_deref());
        o.opt_str("uid", r.uid.as_deref());
        o.depth -= 1;
    }
}

fn healthcheck(o: &mut Out, h: &Healthcheck) {
    o.flag("disable", h.disable);
    o.opt_duration("interval", h.interval);
    o.opt_num("retries", h.retries);
    o.opt_duration("start_period", h.start_period);
    if !h.test.is_empty() {
        o.list("test", &h.test);
    }
    o.opt_duration("timeout", h.timeout);
}

fn deploy(o: &mut Out, d: &Deploy) {
    o.opt_str("endpoint_mode", d.endpoint_mode.as_deref());
    o.map("labels", &d.labels);
    o.kv(
        "mode",
        match d.mode {
            Mode::Replicated => "replicated",
            Mode::Global => "global",
        },
    );
    let pl = &d.placement;
    if !pl.constraints.is_empty()
        || !pl.preferences.is_empty()
        || pl.max_replicas_per_node.is_some()
    {
        o.section("placement", |o| {
            if !pl.constraints.is_empty() {
                o.list("constraints", &pl.constraints);
            }
            o.opt_num("max_replicas_per_node", pl.max_replicas_per_node);
            if !pl.preferences.is_empty() {
                o.section("preferences", |o| {
                    for p in &pl.preferences {
                        let on = p.strip_prefix("spread=").unwrap_or(p);
                        o.line(&format!("- spread: {}", quote(on)));
                    }
                });
            }
        });
    }
    o.opt_num("replicas", d.replicas);
    let r = &d.resources;
    if r.limits != ResourceSet::default() || r.reservations != ResourceSet::default() {
        o.section("resources", |o| {
            for (key, set) in [("limits", &r.limits), ("reservations", &r.reservations)] {
                if *set != ResourceSet::default() {
                    o.section(key, |o| {
                        if let Some(c) = set.nano_cpus {
                            o.str("cpus", &bronze_runtime::units::format_cpus(c));
                        }
                        o.opt_num("memory", set.memory);
                        o.opt_num("pids", set.pids);
                    });
                }
            }
        });
    }
    if let Some(rp) = &d.restart_policy {
        o.section("restart_policy", |o| {
            o.kv("condition", rp.condition.as_str());
            o.opt_duration("delay", rp.delay);
            o.opt_num("max_attempts", rp.max_attempts);
            o.opt_duration("window", rp.window);
        });
    }
    if let Some(u) = &d.rollback_config {
        o.section("rollback_config", |o| update(o, u));
    }
    if let Some(u) = &d.update_config {
        o.section("update_config", |o| update(o, u));
    }
}

fn update(o: &mut Out, u: &UpdateConfig) {
    o.opt_duration("delay", u.delay);
    o.opt_str("failure_action", u.failure_action.as_deref());
    o.opt_num("max_failure_ratio", u.max_failure_ratio);
    o.opt_duration("monitor", u.monitor);
    o.opt_str("order", u.order.as_deref());
    o.opt_num("parallelism", u.parallelism);
}
