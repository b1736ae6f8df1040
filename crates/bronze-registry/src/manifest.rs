//! Manifests the registry accepts, checked before they are stored: OCI image
//! manifests and indexes, Docker schema 2 manifests and manifest lists.

use serde_json::{Map, Value};

use crate::error::RegistryError;
use crate::reference::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Manifests larger than this are refused (413), as the spec allows.
pub const MAX_MANIFEST: usize = 4 << 20;

pub fn is_index(media_type: &str) -> bool {
    matches!(media_type, OCI_INDEX | DOCKER_LIST)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    /// Foreign layers (with `urls`) need not be in this registry.
    pub foreign: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub media_type: String,
    /// Blobs (config, layers) an image manifest needs in the repository.
    pub blobs: Vec<Descriptor>,
    /// Manifests an index lists.
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    /// `artifactType`, else (image manifests) the config's media type.
    pub artifact_type: Option<String>,
    pub annotations: Option<Map<String, Value>>,
}

fn invalid(why: impl Into<String>) -> RegistryError {
    RegistryError::ManifestInvalid(why.into())
}

fn descriptor(v: &Value, at: &str) -> Result<Descriptor, RegistryError> {
    let o = v
        .as_object()
        .ok_or_else(|| invalid(format!("{at}: expected a descriptor object")))?;
    let media_type = o
        .get("mediaType")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{at}.mediaType: expected a string")))?
        .to_string();
    let digest = o
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{at}.digest: expected a string")))?;
    let digest = Digest::parse(digest).map_err(|e| invalid(format!("{at}.digest: {e}")))?;
    let size = o
        .get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| invalid(format!("{at}.size: expected a non-negative integer")))?;
    let foreign = o
        .get("urls")
        .and_then(Value::as_array)
        .is_some_and(|u| !u.is_empty());
    Ok(Descriptor {
        media_type,
        digest,
        size,
        foreign,
    })
}

/// Parses a manifest sent with `content_type` (the request's Content-Type).
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Parsed, RegistryError> {
    if body.len() > MAX_MANIFEST {
        return Err(RegistryError::ManifestTooLarge(format!(
            "{} bytes; at most {MAX_MANIFEST}",
            body.len()
        )));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let o = v
        .as_object()
        .ok_or_else(|| invalid("expected a JSON object"))?;
    if o.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
        return Err(invalid(
            "schemaVersion: expected 2 (schema 1 is not supported)",
        ));
    }
    let field_type = o.get("mediaType").and_then(Value::as_str);
    let header_type = content_type
        .map(|c| c.split(';').next().unwrap_or(c).trim())
        .filter(|c| !c.is_empty() && *c != "application/octet-stream");
    let media_type = match (header_type, field_type) {
        (Some(h), Some(f)) if h != f => {
            return Err(invalid(format!(
                "mediaType {f:?} does not match Content-Type {h:?}"
            )));
        }
        (Some(h), _) => h.to_string(),
        (None, Some(f)) => f.to_string(),
        (None, None) => {
            return Err(invalid(
                "no Content-Type and no mediaType: cannot tell the manifest's type",
            ));
        }
    };
    let annotations = o.get("annotations").and_then(Value::as_object).cloned();
    let subject = o
        .get("subject")
        .map(|s| descriptor(s, "subject"))
        .transpose()?;
    let artifact_type = o
        .get("artifactType")
        .and_then(Value::as_str)
        .map(str::to_string);
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = descriptor(
                o.get("config").ok_or_else(|| invalid("config: missing"))?,
                "config",
            )?;
            let layers = match o.get("layers") {
                None => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .enumerate()
                    .map(|(i, l)| descriptor(l, &format!("layers[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?,
                Some(_) => return Err(invalid("layers: expected an array")),
            };
            let artifact_type = artifact_type.or_else(|| Some(config.media_type.clone()));
            let mut blobs = vec![config];
            blobs.extend(layers);
            Ok(Parsed {
                media_type,
                blobs,
                manifests: Vec::new(),
                subject,
                artifact_type,
                annotations,
            })
        }
        OCI_INDEX | DOCKER_LIST => {
            let manifests = match o.get("manifests") {
                Some(Value::Array(a)) => a
                    .iter()
                    .enumerate()
                    .map(|(i, m)| descriptor(m, &format!("manifests[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?,
                _ => return Err(invalid("manifests: expected an array")),
            };
            Ok(Parsed {
                media_type,
                blobs: Vec::new(),
                manifests,
                subject,
                artifact_type,
                annotations,
            })
        }
        other => Err(invalid(format!(
            "media type {other:?} is not a manifest; expected {OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST} or {DOCKER_LIST}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn image_manifest() {
        let body = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d('a'), "size": 7},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d('b'), "size": 32},
                       {"mediaType": "x", "digest": d('c'), "size": 1, "urls": ["https://example/foreign"]}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": d('e'), "size": 100}
        });
        let p = parse(body.to_string().as_bytes(), Some(OCI_MANIFEST)).expect("valid");
        assert_eq!(p.blobs.len(), 3);
        assert!(p.blobs[2].foreign);
        assert_eq!(p.subject.expect("subject").digest.to_string(), d('e'));
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        // Without Content-Type the mediaType field decides.
        assert!(parse(body.to_string().as_bytes(), None).is_ok());
    }

    #[test]
    fn what_is_refused() {
        let cases: Vec<(Value, Option<&str>)> = vec![
            (serde_json::json!({"schemaVersion": 1}), Some(OCI_MANIFEST)),
            (serde_json::json!({"schemaVersion": 2}), None),
            (
                serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX}),
                Some(OCI_MANIFEST),
            ),
            (
                serde_json::json!({"schemaVersion": 2}),
                Some("application/vnd.unknown+json"),
            ),
            (
                serde_json::json!({"schemaVersion": 2, "config": {"digest": "sha256:zz", "size": 1, "mediaType": "x"}}),
                Some(OCI_MANIFEST),
            ),
            (
                serde_json::json!({"schemaVersion": 2, "manifests": {}}),
                Some(OCI_INDEX),
            ),
        ];
        for (body, ct) in cases {
            assert!(
                matches!(
                    parse(body.to_string().as_bytes(), ct),
                    Err(RegistryError::ManifestInvalid(_))
                ),
                "{body} as {ct:?}"
            );
        }
        let huge = vec![b' '; MAX_MANIFEST + 1];
        assert!(matches!(
            parse(&huge, Some(OCI_MANIFEST)),
            Err(RegistryError::ManifestTooLarge(_))
        ));
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), ct in prop::sample::select(vec![OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST, ""])) {
            let _ = parse(&bytes, Some(ct));
        }
    }
}
