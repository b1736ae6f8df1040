//! `service inspect`: JSON always (an array, as Docker's), or `--pretty`
//! text in Docker's layout.

use bronze_proto::scheduler::v1 as pb;
use clap::Args;

use crate::client::{Api, Error};
use crate::units::{format_cpus, format_size, proto_duration_text, rfc3339};
use crate::{json, words};

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Service names or ids.
    #[arg(required = true, value_name = "SERVICE")]
    services: Vec<String>,

    /// Readable text instead of JSON.
    #[arg(long)]
    pretty: bool,
}

pub async fn run(api: &mut Api, a: InspectArgs) -> Result<(), Error> {
    let text: fn(&pb::ServiceResponse) -> String = pretty;
    crate::client::inspect_each(
        api,
        &a.services,
        a.pretty.then_some(text),
        json::service,
        async |api, name| api.get_service(name).await,
    )
    .await
}

/// Lines of "key: value" with values aligned, as Docker's tab-separated
/// pretty output.
#[derive(Default)]
pub struct Pretty {
    rows: Vec<(String, String)>,
}

impl Pretty {
    pub fn new() -> Self {
        Self { rows: Vec::new() }
    }

    /// A key at `depth` (one space per level) and its value ("" for a
    /// heading).
    pub fn kv(&mut self, depth: usize, key: &str, value: impl Into<String>) {
        self.rows
            .push((format!("{}{key}:", " ".repeat(depth)), value.into()));
    }

    /// A line as is.
    pub fn line(&mut self, depth: usize, text: &str) {
        self.rows
            .push((format!("{}{text}", " ".repeat(depth)), String::new()));
    }

    pub fn render(&self) -> String {
        let w = self
            .rows
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (k, v) in &self.rows {
            if v.is_empty() {
                out.push_str(k);
            } else {
                out.push_str(&format!("{k:<w$}  {v}"));
            }
            out.push('\n');
        }
        out
    }
}

fn sorted(m: &std::collections::HashMap<String, String>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort();
    v
}

fn resources(p: &mut Pretty, title: &str, r: Option<&pb::Resources>) {
    let Some(r) = r.filter(|r| r.nano_cpus != 0 || r.memory_bytes != 0 || r.pids != 0) else {
        return;
    };
    p.kv(1, title, "");
    if r.nano_cpus != 0 {
        p.kv(2, "CPU", format_cpus(r.nano_cpus));
    }
    if r.memory_bytes != 0 {
        p.kv(2, "Memory", format_size(r.memory_bytes));
    }
    if r.pids != 0 {
        p.kv(2, "Pids", r.pids.to_string());
    }
}

fn rollout(p: &mut Pretty, title: &str, u: Option<&pb::UpdateConfig>) {
    let Some(u) = u else { return };
    p.kv(0, title, "");
    p.kv(1, "Parallelism", u.parallelism.to_string());
    let delay = proto_duration_text(u.delay.as_ref());
    if !delay.is_empty() && delay != "0s" {
        p.kv(1, "Delay", delay);
    }
    p.kv(1, "Order", u.order.clone());
}

/// One service in Docker's `inspect --pretty` layout.
pub fn pretty(r: &pb::ServiceResponse) -> String {
    let service = r.service.clone().unwrap_or_default();
    let spec = service.spec.clone().unwrap_or_default();
    let status = r.status.clone().unwrap_or_default();
    let mut p = Pretty::new();
    p.kv(0, "ID", service.id.clone());
    p.kv(0, "Name", spec.name.clone());
    p.kv(0, "Version", service.version.to_string());
    if !spec.labels.is_empty() {
        p.kv(0, "Labels", "");
        for (k, v) in sorted(&spec.labels) {
            p.line(1, &format!("{k}={v}"));
        }
    }
    match words::replicas(&spec) {
        Some(n) => {
            p.kv(0, "Service Mode", "Replicated");
            p.kv(1, "Replicas", n.to_string());
        }
        None => p.kv(0, "Service Mode", "Global"),
    }
    p.kv(
        0,
        "Status",
        if status.converged {
            format!("converged, {}/{} running", status.running, status.desired)
        } else {
            format!("{}/{} running", status.running, status.desired)
        },
    );
    if !status.message.is_empty() {
        p.kv(1, "Message", status.message.clone());
    }
    if let Some(u) = &service.update_status {
        p.kv(0, "UpdateStatus", "");
        p.kv(1, "State", u.state.clone());
        if let Some(t) = &u.started_at {
            p.kv(1, "Started", rfc3339(t));
        }
        if let Some(t) = &u.completed_at {
            p.kv(1, "Completed", rfc3339(t));
        }
        if !u.message.is_empty() {
            p.kv(1, "Message", u.message.clone());
        }
        if !u.autodeploy_reference.is_empty() {
            p.kv(
                1,
                "Autodeploy",
                format!(
                    "push of {} ({})",
                    u.autodeploy_reference, u.autodeploy_digest
                ),
            );
        }
    }
    if !service.autodeploy_queued.is_empty() {
        p.kv(0, "AutodeployQueued", service.autodeploy_queued.clone());
    }
    if let Some(pl) = &spec.placement
        && (!pl.constraints.is_empty()
            || !pl.preferences.is_empty()
            || pl.max_replicas_per_node != 0)
    {
        p.kv(0, "Placement", "");
        if !pl.constraints.is_empty() {
            p.kv(1, "Constraints", format!("[{}]", pl.constraints.join(" ")));
        }
        if !pl.preferences.is_empty() {
            p.kv(1, "Preferences", format!("[{}]", pl.preferences.join(" ")));
        }
        if pl.max_replicas_per_node != 0 {
            p.kv(
                1,
                "Max Replicas Per Node",
                pl.max_replicas_per_node.to_string(),
            );
        }
    }
    rollout(&mut p, "UpdateConfig", spec.update_config.as_ref());
    rollout(&mut p, "RollbackConfig", spec.rollback_config.as_ref());
    p.kv(0, "ContainerSpec", "");
    p.kv(1, "Image", spec.image.clone());
    if !spec.command.is_empty() {
        p.kv(1, "Command", spec.command.join(" "));
    }
    if !spec.args.is_empty() {
        p.kv(1, "Args", spec.args.join(" "));
    }
    if !spec.env.is_empty() {
        p.kv(1, "Env", spec.env.join(" "));
    }
    if !spec.user.is_empty() {
        p.kv(1, "User", spec.user.clone());
    }
    if !spec.workdir.is_empty() {
        p.kv(1, "Dir", spec.workdir.clone());
    }
    if !spec.stop_signal.is_empty() {
        p.kv(1, "StopSignal", spec.stop_signal.clone());
    }
    let grace = proto_duration_text(spec.stop_grace_period.as_ref());
    if !grace.is_empty() {
        p.kv(1, "StopGracePeriod", grace);
    }
    if !spec.container_labels.is_empty() {
        p.kv(1, "Labels", "");
        for (k, v) in sorted(&spec.container_labels) {
            p.line(2, &format!("{k}={v}"));
        }
    }
    if let Some(h) = &spec.healthcheck {
        p.kv(1, "Healthcheck", "");
        if !h.test.is_empty() {
            p.kv(2, "Test", h.test.join(" "));
        }
        for (k, d) in [
            ("Interval", &h.interval),
            ("Timeout", &h.timeout),
            ("StartPeriod", &h.start_period),
        ] {
            let t = proto_duration_text(d.as_ref());
            if !t.is_empty() && t != "0s" {
                p.kv(2, k, t);
            }
        }
        if h.retries != 0 {
            p.kv(2, "Retries", h.retries.to_string());
        }
    }
    if !spec.mounts.is_empty() {
        p.kv(0, "Mounts", "");
        for m in &spec.mounts {
            p.line(
                1,
                &format!(
                    "Target = {}, Source = {}, Type = {}, ReadOnly = {}",
                    m.target, m.source, m.r#type, m.read_only
                ),
            );
        }
    }
    for (heading, refs) in [("Secrets", &spec.secrets), ("Configs", &spec.configs)] {
        if refs.is_empty() {
            continue;
        }
        p.kv(0, heading, "");
        for r in refs {
            p.line(
                1,
                &format!(
                    "Source = {} (version {}), Target = {}, UID = {}, GID = {}, Mode = {:04o}",
                    r.source, r.version, r.target, r.uid, r.gid, r.mode
                ),
            );
        }
    }
    if let Some(res) = &spec.resources {
        let any = |r: &Option<pb::Resources>| {
            r.as_ref()
                .is_some_and(|r| r.nano_cpus != 0 || r.memory_bytes != 0 || r.pids != 0)
        };
        if any(&res.reservations) || any(&res.limits) {
            p.kv(0, "Resources", "");
            resources(&mut p, "Reservations", res.reservations.as_ref());
            resources(&mut p, "Limits", res.limits.as_ref());
        }
    }
    if let Some(rp) = &spec.restart_policy {
        p.kv(0, "RestartPolicy", "");
        p.kv(1, "Condition", rp.condition.clone());
        p.kv(1, "Delay", proto_duration_text(rp.delay.as_ref()));
        p.kv(1, "MaxAttempts", rp.max_attempts.to_string());
        let w = proto_duration_text(rp.window.as_ref());
        if !w.is_empty() && w != "0s" {
            p.kv(1, "Window", w);
        }
    }
    if !spec.ports.is_empty() {
        p.kv(0, "Ports", "");
        for port in &spec.ports {
            p.line(1, &words::spec_port(port));
        }
    }
    p.render()
}
