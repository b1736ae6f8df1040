//! Deploy on push: which services follow which pushes (the
//! `bronze.autodeploy` service label) and what image a push gives them.
//!
//! The label's grammar, checked when a spec is stored:
//!
//! * `true`: the service follows the tag its image names (`latest` when it
//!   names none): a push that moves that tag to another digest rolls the
//!   service to `repo:tag@digest`.
//! * `glob:PATTERN`: a push of any tag of the same repository matching
//!   PATTERN (`*` any run of characters, `?` one character; otherwise the
//!   characters of a tag) rolls the service to `repo:that-tag@digest`; the
//!   service then names the new tag. The last matching push wins, whatever
//!   its tag sorts as.
//! * `semver:major`, `semver:minor`, `semver:patch` (Keel's policies): the
//!   image's tag is a version (`1.2.3` or `v1.2.3`); a push of a higher
//!   version of the same repository rolls the service to it, any higher
//!   (`major`), with the same major (`minor`), or the same major and minor
//!   (`patch`). Tags that are not plain versions (`1.3.0-rc1`, `latest`)
//!   never match, nor does the same version pushed again.
//! * `false`: off (the same as no label).
//!
//! Only images whose registry host is one of the names clients push to the
//! followed registry with (the scheduler's `registry_names`) match. A push
//! of the digest the service already names does nothing.

use serde::{Deserialize, Serialize};

/// The service label that opts a service in.
pub const LABEL: &str = "bronze.autodeploy";

/// What a service's label asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// The tag the image names moved.
    SameTag,
    /// A tag of the same repository matching the pattern was pushed.
    Glob(String),
    /// A higher version of the same repository was pushed, within the
    /// bound.
    Semver(Bound),
}

/// How far a `semver:` policy follows new versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Major,
    Minor,
    Patch,
}

/// A tag that is a plain version: `1.2.3` or `v1.2.3`.
fn version(tag: &str) -> Option<(u64, u64, u64)> {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    let mut parts = t.split('.');
    let mut next = || -> Option<u64> {
        let p = parts.next()?;
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    let v = (next()?, next()?, next()?);
    parts.next().is_none().then_some(v)
}

impl Policy {
    /// The label's value: `None` for off.
    pub fn parse(value: &str) -> Result<Option<Policy>, String> {
        match value {
            "true" => return Ok(Some(Policy::SameTag)),
            "false" | "" => return Ok(None),
            _ => {}
        }
        if let Some(bound) = value.strip_prefix("semver:") {
            return match bound {
                "major" => Ok(Some(Policy::Semver(Bound::Major))),
                "minor" => Ok(Some(Policy::Semver(Bound::Minor))),
                "patch" => Ok(Some(Policy::Semver(Bound::Patch))),
                _ => Err(format!(
                    "{value:?}: expected \"semver:major\", \"semver:minor\" or \"semver:patch\""
                )),
            };
        }
        let Some(pattern) = value.strip_prefix("glob:") else {
            return Err(format!(
                "{value:?} is not an autodeploy policy; expected \"true\" (the image's tag \
                 moved), \"glob:PATTERN\" (a matching tag was pushed, e.g. \"glob:v1.*\"), \
                 \"semver:major|minor|patch\" (a higher version was pushed) or \"false\""
            ));
        };
        let ok = !pattern.is_empty()
            && pattern.len() <= 128
            && pattern.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'*' | b'?')
            });
        if ok {
            Ok(Some(Policy::Glob(pattern.to_string())))
        } else {
            Err(format!(
                "{value:?}: a glob pattern is 1-128 characters of a tag (letters, digits, '_', \
                 '.', '-') and the wildcards '*' and '?', e.g. \"glob:v1.*\""
            ))
        }
    }

    fn wants(&self, current_tag: &str, pushed_tag: &str) -> bool {
        match self {
            Policy::SameTag => current_tag == pushed_tag,
            Policy::Glob(p) => glob(p.as_bytes(), pushed_tag.as_bytes()),
            Policy::Semver(bound) => match (version(current_tag), version(pushed_tag)) {
                (Some(cur), Some(new)) if new > cur => match bound {
                    Bound::Major => true,
                    Bound::Minor => new.0 == cur.0,
                    Bound::Patch => (new.0, new.1) == (cur.0, cur.1),
                },
                _ => false,
            },
        }
    }
}

/// The service's policy from its labels (`None`: not opted in, or a label
/// that does not parse, which validation keeps out of the state).
pub fn policy(labels: &std::collections::BTreeMap<String, String>) -> Option<Policy> {
    Policy::parse(labels.get(LABEL)?).ok().flatten()
}

/// Checks the label against the service's image: the error is the
/// message for the `labels.bronze.autodeploy` field.
pub fn validate(
    labels: &std::collections::BTreeMap<String, String>,
    image: &str,
) -> Result<(), String> {
    let Some(value) = labels.get(LABEL) else {
        return Ok(());
    };
    let Some(policy) = Policy::parse(value)? else {
        return Ok(());
    };
    let r = ImageRef::parse(image);
    if r.host.is_empty() {
        return Err(format!(
            "{value:?}: the image {image:?} names no registry host; autodeploy follows images \
             pushed to Bronze's registry, e.g. \"127.0.0.1:5000/team/app:latest\""
        ));
    }
    if r.tag.is_none() && r.digest.is_some() {
        return Err(format!(
            "{value:?}: the image {image:?} names a digest and no tag; autodeploy follows a \
             tag, e.g. \"127.0.0.1:5000/team/app:latest\""
        ));
    }
    if matches!(policy, Policy::Semver(_)) && version(r.tag.unwrap_or("latest")).is_none() {
        return Err(format!(
            "{value:?}: the image {image:?} is not tagged with a version; a semver policy \
             follows tags such as \"1.2.3\" or \"v1.2.3\""
        ));
    }
    Ok(())
}

/// `*` matches any run of characters, `?` one character.
fn glob(p: &[u8], s: &[u8]) -> bool {
    // Iterative with one backtrack point: linear enough for 128 bytes.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// An image reference in its parts: `host/path:tag@digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef<'a> {
    /// Empty when the reference names no registry host.
    pub host: &'a str,
    pub path: &'a str,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

impl<'a> ImageRef<'a> {
    /// Splits a reference that passed `validate_image`.
    pub fn parse(image: &'a str) -> Self {
        let (rest, digest) = match image.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (image, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        let (host, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first, path)
            }
            _ => ("", name),
        };
        Self {
            host,
            path,
            tag,
            digest,
        }
    }
}

/// A push the registry reported: repository (its path), tag, digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    pub repository: String,
    pub tag: String,
    pub digest: String,
}

impl Push {
    /// `repo:tag`, as the registry knows it.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }
}

/// The image `push` gives a service of `image` under `policy`, when the
/// registry is reached under one of `names`; `None` when it does not
/// concern the service or changes nothing (the same digest).
pub fn plan(policy: &Policy, image: &str, names: &[String], push: &Push) -> Option<String> {
    let r = ImageRef::parse(image);
    if r.host.is_empty() || !names.iter().any(|n| n == r.host) || r.path != push.repository {
        return None;
    }
    let current_tag = r.tag.unwrap_or("latest");
    if !policy.wants(current_tag, &push.tag) {
        return None;
    }
    if r.digest == Some(push.digest.as_str()) && current_tag == push.tag {
        return None;
    }
    Some(format!(
        "{}/{}:{}@{}",
        r.host, r.path, push.tag, push.digest
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn push(repo: &str, tag: &str, digest: &str) -> Push {
        Push {
            repository: repo.into(),
            tag: tag.into(),
            digest: digest.into(),
        }
    }

    #[test]
    fn the_labels_grammar() {
        assert_eq!(Policy::parse("true"), Ok(Some(Policy::SameTag)));
        assert_eq!(Policy::parse("false"), Ok(None));
        assert_eq!(
            Policy::parse("glob:v1.*"),
            Ok(Some(Policy::Glob("v1.*".into())))
        );
        assert_eq!(
            Policy::parse("semver:minor"),
            Ok(Some(Policy::Semver(Bound::Minor)))
        );
        for bad in [
            "yes",
            "glob:",
            "glob:v1/*",
            "semver:sometimes",
            "True",
            "glob:a b",
        ] {
            let e = Policy::parse(bad).expect_err(bad);
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn globs() {
        for (p, s, m) in [
            ("v1.*", "v1.2", true),
            ("v1.*", "v1.", true),
            ("v1.*", "v2.0", false),
            ("v?.0", "v3.0", true),
            ("v?.0", "v10.0", false),
            ("*-rc*", "1.0-rc2", true),
            ("*", "anything", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ] {
            assert_eq!(glob(p.as_bytes(), s.as_bytes()), m, "{p} ~ {s}");
        }
    }

    #[test]
    fn references_split() {
        let r = ImageRef::parse("127.0.0.1:5000/team/app:v1@sha256:ab");
        assert_eq!(
            r,
            ImageRef {
                host: "127.0.0.1:5000",
                path: "team/app",
                tag: Some("v1"),
                digest: Some("sha256:ab")
            }
        );
        let r = ImageRef::parse("team/app");
        assert_eq!((r.host, r.path, r.tag), ("", "team/app", None));
        let r = ImageRef::parse("localhost:5000/app");
        assert_eq!((r.host, r.path, r.tag), ("localhost:5000", "app", None));
    }

    #[test]
    fn what_a_push_gives() {
        let names = vec!["127.0.0.1:5000".to_string()];
        let same = Policy::SameTag;
        // The tag moved: pinned to the new digest.
        assert_eq!(
            plan(
                &same,
                "127.0.0.1:5000/app:latest",
                &names,
                &push("app", "latest", D1)
            ),
            Some(format!("127.0.0.1:5000/app:latest@{D1}"))
        );
        // No tag is latest.
        assert_eq!(
            plan(
                &same,
                "127.0.0.1:5000/app",
                &names,
                &push("app", "latest", D1)
            ),
            Some(format!("127.0.0.1:5000/app:latest@{D1}"))
        );
        // The same digest again: nothing.
        let pinned = format!("127.0.0.1:5000/app:latest@{D1}");
        assert_eq!(
            plan(&same, &pinned, &names, &push("app", "latest", D1)),
            None
        );
        assert_eq!(
            plan(&same, &pinned, &names, &push("app", "latest", D2)),
            Some(format!("127.0.0.1:5000/app:latest@{D2}"))
        );
        // Another tag, repository or registry: nothing.
        assert_eq!(plan(&same, &pinned, &names, &push("app", "v2", D2)), None);
        assert_eq!(
            plan(&same, &pinned, &names, &push("other", "latest", D2)),
            None
        );
        let other = vec!["registry.example:5000".to_string()];
        assert_eq!(
            plan(&same, &pinned, &other, &push("app", "latest", D2)),
            None
        );
        // A pattern: a matching new tag, not another.
        let g = Policy::Glob("v1.*".into());
        let v10 = format!("127.0.0.1:5000/app:v1.0@{D1}");
        assert_eq!(
            plan(&g, &v10, &names, &push("app", "v1.1", D2)),
            Some(format!("127.0.0.1:5000/app:v1.1@{D2}"))
        );
        assert_eq!(plan(&g, &v10, &names, &push("app", "v2.0", D2)), None);
        // The same digest under a new matching tag: the service names it.
        assert_eq!(
            plan(&g, &v10, &names, &push("app", "v1.2", D1)),
            Some(format!("127.0.0.1:5000/app:v1.2@{D1}"))
        );
    }

    #[test]
    fn semver_policies() {
        let names = vec!["r:5000".to_string()];
        let at = |tag: &str| format!("r:5000/app:{tag}@{D1}");
        let gives = |bound: Bound, from: &str, to: &str| {
            plan(
                &Policy::Semver(bound),
                &at(from),
                &names,
                &push("app", to, D2),
            )
            .is_some()
        };
        assert!(gives(Bound::Major, "1.2.3", "2.0.0"));
        assert!(gives(Bound::Minor, "1.2.3", "1.3.0"));
        assert!(!gives(Bound::Minor, "1.2.3", "2.0.0"));
        assert!(gives(Bound::Patch, "v1.2.3", "v1.2.10"));
        assert!(!gives(Bound::Patch, "1.2.3", "1.3.0"));
        // Not higher, not a plain version: never.
        assert!(!gives(Bound::Major, "1.2.3", "1.2.3"));
        assert!(!gives(Bound::Major, "1.2.3", "1.2.2"));
        assert!(!gives(Bound::Major, "1.2.3", "1.3.0-rc1"));
        assert!(!gives(Bound::Major, "1.2.3", "latest"));
        assert!(!gives(Bound::Major, "1.2", "1.3.0"));
        assert_eq!(
            plan(
                &Policy::Semver(Bound::Minor),
                &at("1.2.3"),
                &names,
                &push("app", "1.4.0", D2)
            ),
            Some(format!("r:5000/app:1.4.0@{D2}"))
        );
        assert_eq!(version("v01.2.3"), Some((1, 2, 3)));
        assert_eq!(version("1.2.3.4"), None);
    }

    #[test]
    fn validation_against_the_image() {
        let labels = |v: &str| [(LABEL.to_string(), v.to_string())].into();
        assert!(validate(&labels("true"), "127.0.0.1:5000/app:1").is_ok());
        assert!(validate(&labels("false"), "app:1").is_ok());
        assert!(
            validate(&labels("true"), "app:1")
                .unwrap_err()
                .contains("registry host")
        );
        assert!(
            validate(&labels("glob:*"), &format!("127.0.0.1:5000/app@{D1}"))
                .unwrap_err()
                .contains("no tag")
        );
        assert!(validate(&labels("semver:patch"), "127.0.0.1:5000/app:v1.0.2").is_ok());
        assert!(
            validate(&labels("semver:patch"), "127.0.0.1:5000/app:latest")
                .unwrap_err()
                .contains("version")
        );
        assert!(
            validate(&labels("nope"), "127.0.0.1:5000/app:1")
                .unwrap_err()
                .contains("nope")
        );
    }
}
