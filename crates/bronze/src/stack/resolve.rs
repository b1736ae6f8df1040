//! `--resolve-image`: image tags pinned to digests at deploy, so every
//! node runs what the tag meant then (`docker stack deploy`'s). The digest
//! comes from the registry through the local engine's distribution
//! inspect (`GET /distribution/{name}/json`), with the engine's own
//! credentials and proxy; the tag as written stays in the service's
//! `com.docker.stack.image` label.
//!
//! A tag that cannot be resolved is used as written, with a warning (as
//! Docker does) — unless the service already runs a digest resolved from
//! that same tag: it keeps it, so an unreachable registry never turns into
//! a rolling update.

use std::collections::HashMap;
use std::time::Duration;

use bronze_proto::scheduler::v1 as pb;
use clap::ValueEnum;

use super::IMAGE_LABEL;
use super::convert::Warnings;

/// How long one registry lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResolveImage {
    /// Look every image up in its registry at each deploy.
    Always,
    /// Only images that are new, or whose reference changed in the file.
    Changed,
    /// Use images as written.
    Never,
}

/// `image@digest`: the reference as written, pinned.
pub fn pinned(written: &str, digest: &str) -> String {
    format!("{written}@{digest}")
}

/// Where one image's reference comes from, given what runs now.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// As written (already a digest, or `never`).
    Written,
    /// What the service runs already (`changed`, same tag).
    Current(String),
    /// Ask the registry; on failure, the fallback.
    Lookup { fallback: Option<String> },
}

fn plan(mode: ResolveImage, written: &str, current: Option<&pb::ServiceSpec>) -> Plan {
    if written.contains('@') || mode == ResolveImage::Never {
        return Plan::Written;
    }
    // What the service runs, when it was resolved from this same tag.
    let same = current
        .filter(|c| c.labels.get(IMAGE_LABEL).map(String::as_str) == Some(written))
        .map(|c| c.image.clone());
    match (mode, same) {
        (ResolveImage::Changed, Some(image)) => Plan::Current(image),
        (_, fallback) => Plan::Lookup { fallback },
    }
}

/// Pins the image of each spec as `mode` says; `current` holds the specs
/// running now, by service name.
pub async fn resolve(
    mode: ResolveImage,
    specs: &mut [pb::ServiceSpec],
    current: &HashMap<String, pb::ServiceSpec>,
    warnings: &mut Warnings,
) {
    let mut engine: Option<Result<bollard::Docker, String>> = None;
    // Each image is looked up once, however many services use it.
    let mut found: HashMap<String, Result<String, String>> = HashMap::new();
    for spec in specs.iter_mut() {
        let written = spec.image.clone();
        let fallback = match plan(mode, &written, current.get(&spec.name)) {
            Plan::Written => continue,
            Plan::Current(image) => {
                spec.image = image;
                continue;
            }
            Plan::Lookup { fallback } => fallback,
        };
        let docker = engine.get_or_insert_with(|| {
            bollard::Docker::connect_with_defaults().map_err(|e| e.to_string())
        });
        let result = match found.get(&written) {
            Some(r) => r.clone(),
            None => {
                let r = match docker {
                    Ok(d) => lookup(d, &written).await,
                    Err(e) => Err(format!("cannot reach the docker engine: {e}")),
                };
                found.insert(written.clone(), r.clone());
                r
            }
        };
        match result {
            Ok(digest) => spec.image = pinned(&written, &digest),
            Err(why) => {
                let keeps = match &fallback {
                    Some(image) if image != &written => format!("keeps running {image}"),
                    _ => "each node pulls the tag itself, so nodes may run different \
                          versions"
                        .into(),
                };
                warnings.add(format!(
                    "image {written} could not be resolved to a digest ({why}); {keeps}"
                ));
                spec.image = fallback.unwrap_or(written);
            }
        }
    }
}

async fn lookup(docker: &bollard::Docker, image: &str) -> Result<String, String> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, docker.inspect_registry_image(image, None)).await {
        Err(_) => Err(format!(
            "the registry did not answer within {}s",
            LOOKUP_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(d))
            if d.descriptor
                .digest
                .as_deref()
                .is_some_and(|x| x.starts_with("sha256:")) =>
        {
            Ok(d.descriptor.digest.unwrap_or_default())
        }
        Ok(Ok(_)) => Err("the registry sent no sha256 digest".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(written: &str, image: &str) -> pb::ServiceSpec {
        pb::ServiceSpec {
            image: image.into(),
            labels: [(IMAGE_LABEL.to_string(), written.to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn what_each_mode_looks_up() {
        let d = "sha256:".to_string() + &"a".repeat(64);
        let pinned_web = pinned("web:1", &d);
        let cur = running("web:1", &pinned_web);
        use ResolveImage::*;
        assert_eq!(plan(Never, "web:1", Some(&cur)), Plan::Written);
        assert_eq!(plan(Always, &pinned_web, None), Plan::Written);
        assert_eq!(
            plan(Changed, "web:1", Some(&cur)),
            Plan::Current(pinned_web.clone())
        );
        assert_eq!(
            plan(Changed, "web:2", Some(&cur)),
            Plan::Lookup { fallback: None }
        );
        assert_eq!(
            plan(Always, "web:1", Some(&cur)),
            Plan::Lookup {
                fallback: Some(pinned_web)
            }
        );
        assert_eq!(plan(Always, "web:1", None), Plan::Lookup { fallback: None });
    }
}
