//! A compose service as a scheduler spec, the way `docker stack deploy`
//! maps it: name `STACK_service`; service labels = `deploy.labels` + the
//! namespace + the image as written; container labels = `labels` + the
//! namespace; entrypoint -> command, command -> args; named volumes
//! prefixed `STACK_` unless external or named. Pure: the same project
//! gives the same specs, so a redeploy of an unchanged file changes
//! nothing.
//!
//! What a spec cannot express (networks, endpoint
//! modes, volume drivers, ...) is returned as a warning, never dropped in
//! silence. Checking the spec is the scheduler's own validation
//! (`deploy.rs`), not repeated here.

use std::collections::BTreeMap;

use bronze_compose as compose;
use bronze_proto::scheduler::v1 as pb;

use super::rollout::Gate;
use super::{IMAGE_LABEL, NAMESPACE};
use crate::units::to_proto_duration;

/// One service of the file, converted.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    pub spec: pb::ServiceSpec,
    /// Full names of the services it waits for, and how.
    pub after: Vec<(String, Gate)>,
}

/// Warnings, each said once, in the order found.
#[derive(Debug, Default)]
pub struct Warnings(Vec<String>);

impl Warnings {
    pub fn add(&mut self, w: String) {
        if !self.0.contains(&w) {
            self.0.push(w);
        }
    }

    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

/// `STACK_service`.
pub fn full_name(stack: &str, service: &str) -> String {
    format!("{stack}_{service}")
}

/// The cluster's name of a top-level object of the stack (a volume, a
/// secret, a config): its `name:`, else its key when external, else
/// `STACK_key` (Swarm's namespacing).
pub fn object_name(stack: &str, key: &str, name: Option<&String>, external: bool) -> String {
    match name {
        Some(n) => n.clone(),
        None if external => key.to_string(),
        None => full_name(stack, key),
    }
}

/// The engine's name of a volume used by the stack.
fn volume_name(project: &compose::Project, key: &str) -> String {
    let v = project.volumes.get(key);
    object_name(
        &project.name,
        key,
        v.and_then(|v| v.name.as_ref()),
        v.is_some_and(|v| v.external),
    )
}

/// A service's `secrets:` or `configs:` as references to the cluster's
/// objects (their latest versions: the scheduler pins them).
fn file_refs(
    project: &compose::Project,
    objects: &BTreeMap<String, compose::Secret>,
    refs: &[compose::ServiceObjectRef],
    key: &str,
    what: &str,
) -> Result<Vec<pb::FileReference>, String> {
    let id = |v: &Option<String>, field: &str, i: usize| -> Result<u32, String> {
        v.as_deref().map_or(Ok(0), |v| {
            v.parse::<u32>().map_err(|_| {
                format!("service {key}: {what}[{i}].{field}: {v:?}: expected a number")
            })
        })
    };
    refs.iter()
        .enumerate()
        .map(|(i, r)| {
            let o = objects.get(&r.source);
            Ok(pb::FileReference {
                source: object_name(
                    &project.name,
                    &r.source,
                    o.and_then(|o| o.name.as_ref()),
                    o.is_some_and(|o| o.external),
                ),
                // Compose's default target is the key, not the cluster's name.
                target: r.target.clone().unwrap_or_else(|| r.source.clone()),
                uid: id(&r.uid, "uid", i)?,
                gid: id(&r.gid, "gid", i)?,
                mode: r.mode.unwrap_or(0),
                version: 0,
            })
        })
        .collect()
}

fn rollout(u: &compose::UpdateConfig) -> pb::UpdateConfig {
    pb::UpdateConfig {
        // Swarm's defaults for what the file leaves out: 0 would mean all
        // at once.
        parallelism: u
            .parallelism
            .map_or(1, |p| u32::try_from(p).unwrap_or(u32::MAX)),
        delay: u.delay.map(to_proto_duration),
        order: u.order.clone().unwrap_or_else(|| "stop-first".into()),
        monitor: u.monitor.map(to_proto_duration),
        max_failure_ratio: u.max_failure_ratio.unwrap_or(0.0),
        failure_action: u.failure_action.clone().unwrap_or_default(),
    }
}

fn resources(r: &compose::ResourceSet) -> Option<pb::Resources> {
    if r.nano_cpus.is_none() && r.memory.is_none() && r.pids.is_none() {
        return None;
    }
    Some(pb::Resources {
        nano_cpus: r.nano_cpus.unwrap_or(0),
        memory_bytes: r.memory.map_or(0, |m| i64::try_from(m).unwrap_or(i64::MAX)),
        pids: r.pids.unwrap_or(0),
    })
}

/// The environment as the tasks get it: a key without a value takes this
/// process's value (`env`), or is left out when it has none (Docker's).
fn environment(
    vars: &BTreeMap<String, Option<String>>,
    env: &BTreeMap<String, String>,
) -> Vec<String> {
    vars.iter()
        .filter_map(|(k, v)| match v {
            Some(v) => Some(format!("{k}={v}")),
            None => env.get(k).map(|v| format!("{k}={v}")),
        })
        .collect()
}

/// Converts service `key` of `project`; `env` is this process's
/// environment (for keys without a value). Errors name the service and the
/// key.
pub fn service(
    project: &compose::Project,
    key: &str,
    s: &compose::Service,
    env: &BTreeMap<String, String>,
    warnings: &mut Warnings,
) -> Result<Converted, String> {
    let stack = &project.name;
    let d = &s.deploy;
    let mut labels: std::collections::HashMap<String, String> = d
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(NAMESPACE.into(), stack.clone());
    labels.insert(IMAGE_LABEL.into(), s.image.clone());
    let mut container_labels: std::collections::HashMap<String, String> = s
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    container_labels.insert(NAMESPACE.into(), stack.clone());

    let mode = match d.mode {
        compose::Mode::Replicated => pb::service_spec::Mode::Replicated(pb::Replicated {
            replicas: d.replicas.unwrap_or(1),
        }),
        compose::Mode::Global => {
            if d.replicas.is_some() {
                return Err(format!(
                    "service {key}: deploy.replicas: a global service runs one task per node"
                ));
            }
            pb::service_spec::Mode::Global(pb::Global {})
        }
    };

    let mut ports = Vec::new();
    for p in &s.ports {
        ports.push(pb::PortConfig {
            target: u32::from(p.target),
            published: p.published.map_or(0, u32::from),
            protocol: p.protocol.clone(),
        });
    }

    let mut mounts = Vec::new();
    for m in &s.volumes {
        let (kind, source) = match m.kind {
            compose::MountKind::Volume => (
                "volume",
                m.source
                    .as_deref()
                    .map(|v| volume_name(project, v))
                    .unwrap_or_default(),
            ),
            compose::MountKind::Bind => ("bind", m.source.clone().unwrap_or_default()),
            compose::MountKind::Tmpfs => ("tmpfs", String::new()),
        };
        mounts.push(pb::Mount {
            r#type: kind.into(),
            source,
            target: m.target.clone(),
            read_only: m.read_only,
            tmpfs_size_bytes: m
                .tmpfs_size
                .map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        });
    }

    let healthcheck = s.healthcheck.as_ref().map(|h| {
        if h.disable {
            pb::HealthCheck {
                test: vec!["NONE".into()],
                ..Default::default()
            }
        } else {
            pb::HealthCheck {
                test: h.test.clone(),
                interval: h.interval.map(to_proto_duration),
                timeout: h.timeout.map(to_proto_duration),
                retries: h
                    .retries
                    .map_or(0, |r| u32::try_from(r).unwrap_or(u32::MAX)),
                start_period: h.start_period.map(to_proto_duration),
            }
        }
    });

    let p = &d.placement;
    let placement = pb::Placement {
        constraints: p.constraints.clone(),
        preferences: p.preferences.clone(),
        max_replicas_per_node: p
            .max_replicas_per_node
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
    };
    let limits = resources(&d.resources.limits);
    let reservations = resources(&d.resources.reservations);
    let secrets = file_refs(project, &project.secrets, &s.secrets, key, "secrets")?;
    let configs = file_refs(project, &project.configs, &s.configs, key, "configs")?;
    let spec = pb::ServiceSpec {
        name: full_name(stack, key),
        image: s.image.clone(),
        command: s.entrypoint.clone().unwrap_or_default(),
        args: s.command.clone().unwrap_or_default(),
        env: environment(&s.environment, env),
        labels,
        container_labels,
        ports,
        mounts,
        healthcheck,
        stop_signal: s.stop_signal.clone().unwrap_or_default(),
        stop_grace_period: s.stop_grace_period.map(to_proto_duration),
        user: s.user.clone().unwrap_or_default(),
        workdir: s.working_dir.clone().unwrap_or_default(),
        mode: Some(mode),
        placement: Some(placement),
        resources: (limits.is_some() || reservations.is_some()).then_some(
            pb::ResourceRequirements {
                reservations,
                limits,
            },
        ),
        restart_policy: d.restart_policy.as_ref().map(|r| pb::RestartPolicy {
            condition: r.condition.as_str().into(),
            delay: r.delay.map(to_proto_duration),
            max_attempts: r
                .max_attempts
                .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            window: r.window.map(to_proto_duration),
        }),
        update_config: d.update_config.as_ref().map(rollout),
        rollback_config: d.rollback_config.as_ref().map(rollout),
        hostname: s.hostname.clone().unwrap_or_default(),
        extra_hosts: s.extra_hosts.clone(),
        drain_delay: None,
        secrets,
        configs,
        endpoint_mode: d.endpoint_mode.clone().unwrap_or_default(),
        ingress: ingress(key, s, warnings),
    };

    warn_unsupported(project, key, s, warnings);
    let mut after = Vec::new();
    for (dep, condition) in &s.depends_on {
        let gate = match condition {
            compose::Condition::Started => Gate::Started,
            compose::Condition::Healthy => Gate::Healthy,
            compose::Condition::CompletedSuccessfully => {
                warnings.add(format!(
                    "service {key}: depends_on.{dep}: condition service_completed_successfully \
                     is for one-off containers, not services; {key} waits for {dep} to have \
                     started instead"
                ));
                Gate::Started
            }
        };
        after.push((full_name(stack, dep), gate));
    }
    Ok(Converted { spec, after })
}

/// Whether the service's published ports are in ingress mode (Swarm's
/// default): all of them, or none (a mix is published as mode host, with a
/// warning).
fn ingress(key: &str, s: &compose::Service, warnings: &mut Warnings) -> bool {
    let published: Vec<&compose::Port> = s.ports.iter().filter(|p| p.published.is_some()).collect();
    let ingress = published.iter().filter(|p| p.mode == "ingress").count();
    if ingress > 0 && ingress < published.len() {
        warnings.add(format!(
            "service {key}: ports mix modes ingress and host; all are published as mode host"
        ));
        return false;
    }
    ingress > 0
}

/// The service's keys a spec cannot express, one warning each.
fn warn_unsupported(
    project: &compose::Project,
    key: &str,
    s: &compose::Service,
    warnings: &mut Warnings,
) {
    if s.networks.iter().any(|n| n != "default") {
        warnings.add(format!(
            "service {key}: networks are not honoured: every service of the stack is on the \
             stack's one network (agents with --discovery answer service names) ({})",
            s.networks.join(", ")
        ));
    }
    if s.deploy.resources.reservations.pids.is_some() {
        warnings.add(format!(
            "service {key}: deploy.resources.reservations.pids is not honoured (only a limit)"
        ));
    }
    for m in &s.volumes {
        let Some(source) = m.source.as_deref() else {
            continue;
        };
        if m.kind != compose::MountKind::Volume {
            continue;
        }
        if let Some(v) = project.volumes.get(source)
            && (v.driver.is_some() || !v.driver_opts.is_empty() || !v.labels.is_empty())
        {
            warnings.add(format!(
                "volume {source}: driver, driver_opts and labels are not honoured: the \
                 engine's local driver creates it when missing"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn project() -> compose::Project {
        let mut web = compose::Service {
            image: "busybox:1.36".into(),
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            command: Some(vec!["exec httpd -f".into()]),
            ..Default::default()
        };
        web.environment.insert("A".into(), Some("1".into()));
        web.environment.insert("FROM_SHELL".into(), None);
        web.environment.insert("UNSET".into(), None);
        web.labels.insert("SERVICE_TAGS".into(), "web".into());
        web.deploy.labels.insert("traefik.port".into(), "80".into());
        web.deploy.replicas = Some(2);
        web.deploy.endpoint_mode = Some("dnsrr".into());
        web.ports.push(compose::Port {
            target: 80,
            published: Some(8080),
            protocol: "tcp".into(),
            mode: "ingress".into(),
        });
        web.deploy.update_config = Some(compose::UpdateConfig {
            failure_action: Some("rollback".into()),
            monitor: Some(Duration::from_secs(2)),
            ..Default::default()
        });
        web.volumes.push(compose::Mount {
            kind: compose::MountKind::Volume,
            source: Some("data".into()),
            target: "/data".into(),
            read_only: false,
            tmpfs_size: None,
        });
        web.volumes.push(compose::Mount {
            kind: compose::MountKind::Volume,
            source: Some("shared".into()),
            target: "/shared".into(),
            read_only: true,
            tmpfs_size: None,
        });
        web.depends_on
            .insert("db".into(), compose::Condition::Healthy);
        web.secrets.push(compose::ServiceObjectRef {
            source: "token".into(),
            target: None,
            uid: Some("1000".into()),
            gid: None,
            mode: Some(0o400),
        });
        web.configs.push(compose::ServiceObjectRef {
            source: "conf".into(),
            target: Some("/etc/app.conf".into()),
            uid: None,
            gid: None,
            mode: None,
        });
        web.networks.push("front".into());
        let mut p = compose::Project {
            name: "shop".into(),
            ..Default::default()
        };
        p.volumes.insert("data".into(), compose::Volume::default());
        p.volumes.insert(
            "shared".into(),
            compose::Volume {
                external: true,
                ..Default::default()
            },
        );
        p.secrets.insert("token".into(), compose::Secret::default());
        p.configs.insert(
            "conf".into(),
            compose::Secret {
                external: true,
                ..Default::default()
            },
        );
        p.services.insert("web".into(), web);
        p
    }

    #[test]
    fn a_service_becomes_swarms_spec() {
        let p = project();
        let env = BTreeMap::from([("FROM_SHELL".to_string(), "x".to_string())]);
        let mut w = Warnings::default();
        let c = service(&p, "web", &p.services["web"], &env, &mut w).unwrap();
        let s = &c.spec;
        assert_eq!(s.name, "shop_web");
        assert_eq!(s.command, ["/bin/sh", "-c"]);
        assert_eq!(s.args, ["exec httpd -f"]);
        assert_eq!(s.env, ["A=1", "FROM_SHELL=x"]);
        assert_eq!(s.labels[NAMESPACE], "shop");
        assert_eq!(s.labels[IMAGE_LABEL], "busybox:1.36");
        assert_eq!(s.labels["traefik.port"], "80");
        assert_eq!(s.container_labels[NAMESPACE], "shop");
        assert_eq!(s.container_labels["SERVICE_TAGS"], "web");
        assert_eq!(s.mounts[0].source, "shop_data");
        assert_eq!(s.mounts[1].source, "shared", "external: as named");
        let u = s.update_config.clone().unwrap();
        assert_eq!((u.parallelism, u.failure_action.as_str()), (1, "rollback"));
        assert_eq!(c.after, [("shop_db".to_string(), Gate::Healthy)]);
        assert_eq!(s.endpoint_mode, "dnsrr", "honoured, not warned about");
        assert!(s.ingress, "published in Swarm's default mode, ingress");
        let mut mixed = p.services["web"].clone();
        mixed.ports.push(compose::Port {
            target: 81,
            published: Some(8081),
            protocol: "tcp".into(),
            mode: "host".into(),
        });
        let mut w2 = Warnings::default();
        let m = service(&p, "web", &mixed, &env, &mut w2).unwrap();
        assert!(!m.spec.ingress);
        assert!(w2.into_vec().iter().any(|w| w.contains("mix modes")));
        assert_eq!(
            s.mode,
            Some(pb::service_spec::Mode::Replicated(pb::Replicated {
                replicas: 2
            }))
        );
        // Secrets and configs: the stack's own namespaced, external ones
        // as named; the default target is the key.
        let sec = &s.secrets[0];
        assert_eq!(
            (sec.source.as_str(), sec.target.as_str()),
            ("shop_token", "token")
        );
        assert_eq!((sec.uid, sec.mode), (1000, 0o400));
        assert_eq!(s.configs[0].source, "conf");
        assert_eq!(s.configs[0].target, "/etc/app.conf");
        let w = w.into_vec();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("networks"), "{w:?}");
    }
}
