//! Compose keys that are valid but that Bronze does not honour: each is
//! warned about once per file (with its line), then taken out of the tree
//! so the typed conversion, which rejects unknown keys, never sees it.
//! Swarm's own `docker stack deploy` ignores most of them too.

use std::collections::BTreeSet;

use crate::convert::Ctx;
use crate::yaml::{Kind, Node};

/// Service keys: (key, why).
const SERVICE: &[(&str, &str)] = &[
    ("build", "stacks deploy images; build and push first"),
    (
        "container_name",
        "task containers are named by the scheduler",
    ),
    ("restart", "use deploy.restart_policy"),
    (
        "links",
        "services reach each other by name on their networks",
    ),
    (
        "external_links",
        "services reach each other by name on their networks",
    ),
    ("cap_add", "not honoured by Bronze"),
    ("cap_drop", "not honoured by Bronze"),
    ("privileged", "not honoured by Bronze"),
    ("logging", "tasks log through the engine's default driver"),
    ("ulimits", "not honoured by Bronze"),
    ("sysctls", "not honoured by Bronze"),
    ("network_mode", "services use their stack's networks"),
    ("devices", "not honoured by Bronze"),
    ("device_cgroup_rules", "not honoured by Bronze"),
    ("init", "not honoured by Bronze"),
    ("security_opt", "not honoured by Bronze"),
    ("tmpfs", "use a volumes entry of type tmpfs"),
    ("cgroup_parent", "not honoured by Bronze"),
    ("cgroup", "not honoured by Bronze"),
    ("domainname", "not honoured by Bronze"),
    ("dns", "not honoured by Bronze"),
    ("dns_opt", "not honoured by Bronze"),
    ("dns_search", "not honoured by Bronze"),
    ("ipc", "not honoured by Bronze"),
    ("pid", "not honoured by Bronze"),
    ("uts", "not honoured by Bronze"),
    ("userns_mode", "not honoured by Bronze"),
    ("mac_address", "not honoured by Bronze"),
    ("shm_size", "not honoured by Bronze"),
    ("stdin_open", "not honoured by Bronze"),
    ("tty", "not honoured by Bronze"),
    ("isolation", "not honoured by Bronze"),
    ("read_only", "not honoured by Bronze"),
    ("expose", "informational only; publish with ports"),
    ("cpu_shares", "use deploy.resources"),
    ("cpus", "use deploy.resources.limits.cpus"),
    ("cpu_count", "use deploy.resources"),
    ("cpu_percent", "use deploy.resources"),
    ("cpu_period", "use deploy.resources"),
    ("cpu_quota", "use deploy.resources"),
    ("cpu_rt_period", "use deploy.resources"),
    ("cpu_rt_runtime", "use deploy.resources"),
    ("cpuset", "use deploy.resources"),
    ("mem_limit", "use deploy.resources.limits.memory"),
    (
        "mem_reservation",
        "use deploy.resources.reservations.memory",
    ),
    ("memswap_limit", "not honoured by Bronze"),
    ("mem_swappiness", "not honoured by Bronze"),
    ("oom_kill_disable", "not honoured by Bronze"),
    ("oom_score_adj", "not honoured by Bronze"),
    ("pids_limit", "use deploy.resources.limits.pids"),
    ("blkio_config", "not honoured by Bronze"),
    ("platform", "the scheduler places by node constraints"),
    ("profiles", "every service of a stack is deployed"),
    ("pull_policy", "use bronze stack deploy --resolve-image"),
    ("scale", "use deploy.replicas"),
    ("volumes_from", "not honoured by Bronze"),
    ("runtime", "not honoured by Bronze"),
    ("storage_opt", "not honoured by Bronze"),
    ("group_add", "not honoured by Bronze"),
    ("credential_spec", "not honoured by Bronze"),
    ("annotations", "not honoured by Bronze"),
    ("attach", "not honoured by Bronze"),
    ("develop", "not honoured by Bronze"),
    ("gpus", "not honoured by Bronze"),
    ("label_file", "not honoured by Bronze"),
    ("post_start", "not honoured by Bronze"),
    ("pre_stop", "not honoured by Bronze"),
    ("stop_signal_timeout", "use stop_grace_period"),
];

/// Keys under `deploy` and nested places: (dotted key below the service, why).
const NESTED: &[(&str, &str)] = &[
    (
        "deploy.resources.reservations.devices",
        "not honoured by Bronze",
    ),
    (
        "deploy.resources.reservations.generic_resources",
        "not honoured by Bronze",
    ),
    ("healthcheck.start_interval", "not honoured by Bronze"),
];

/// Warns about (and removes) the keys above in one file's tree.
pub(crate) fn strip(cx: &mut Ctx<'_>, root: &mut Node) {
    let Some(services) = root.get_mut("services") else {
        return;
    };
    let Kind::Map(services) = &mut services.kind else {
        return;
    };
    let mut seen = BTreeSet::new();
    for svc in services.iter_mut() {
        let Kind::Map(fields) = &mut svc.value.kind else {
            continue;
        };
        let name = svc.key.clone();
        fields.retain(|f| match SERVICE.iter().find(|(k, _)| *k == f.key) {
            Some((key, why)) => {
                if seen.insert(*key) {
                    cx.warn(
                        f.key_pos,
                        &format!("services.{name}.{key}"),
                        format!("not supported by Bronze stacks ({why}); ignored"),
                    );
                }
                false
            }
            None => true,
        });
        for (dotted, why) in NESTED {
            let (parent, leaf) = dotted.rsplit_once('.').unwrap_or(("", dotted));
            let Some(node) = descend(&mut svc.value, parent) else {
                continue;
            };
            if let Kind::Map(entries) = &mut node.kind {
                entries.retain(|e| {
                    if e.key != *leaf {
                        return true;
                    }
                    if seen.insert(dotted) {
                        cx.warn(
                            e.key_pos,
                            &format!("services.{name}.{dotted}"),
                            format!("not supported by Bronze stacks ({why}); ignored"),
                        );
                    }
                    false
                });
            }
        }
    }
}

/// The node at a dotted path below `node`.
fn descend<'n>(node: &'n mut Node, dotted: &str) -> Option<&'n mut Node> {
    match dotted.split_once('.') {
        None => node.get_mut(dotted),
        Some((first, rest)) => descend(node.get_mut(first)?, rest),
    }
}
