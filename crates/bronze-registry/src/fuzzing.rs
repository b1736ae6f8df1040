//! The properties the fuzz targets (`fuzz/fuzz_targets/registry_*.rs`)
//! check on every input, here so that the committed corpus is replayed by
//! `cargo test` too. Each function panics when a property is broken.

use crate::manifest::{self, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use crate::reference::{Digest, Name, Reference, Route, route};

const TYPES: [Option<&str>; 6] = [
    None,
    Some(OCI_MANIFEST),
    Some(OCI_INDEX),
    Some(DOCKER_MANIFEST),
    Some(DOCKER_LIST),
    Some("application/octet-stream"),
];

/// The first byte picks the Content-Type, the rest is the body: a parsed
/// manifest whose references are valid digests, or a spec error; never a
/// panic.
pub fn manifest(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let content_type = TYPES[first as usize % TYPES.len()];
    match manifest::parse(body, content_type) {
        Ok(parsed) => {
            assert!(!parsed.media_type.is_empty());
            let refs = parsed
                .blobs
                .iter()
                .chain(&parsed.manifests)
                .chain(&parsed.subject);
            for d in refs {
                let text = d.digest.to_string();
                assert_eq!(Digest::parse(&text).as_ref(), Ok(&d.digest));
            }
        }
        Err(e) => assert!(
            matches!(
                e.code(),
                "MANIFEST_INVALID" | "DIGEST_INVALID" | "UNSUPPORTED"
            ),
            "{e:?}"
        ),
    }
}

fn check_name(n: &Name) {
    let s = n.as_str();
    assert!(!s.is_empty() && s.len() <= crate::reference::MAX_NAME);
    assert!(s.split('/').all(|c| !c.is_empty() && c != ".." && c != "."));
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)),
        "{s:?}"
    );
    assert_eq!(Name::parse(s).as_ref(), Ok(n));
}

/// A request path (and the same text as a digest and a reference): a
/// route whose repository name follows the grammar, so no `..`, `%` or
/// empty component reaches the filesystem, or a spec error.
pub fn reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match route(text) {
        Ok(Route::Base | Route::Catalog) => {}
        Ok(
            Route::Tags(n)
            | Route::Uploads(n)
            | Route::Manifest(n, _)
            | Route::Blob(n, _)
            | Route::Upload(n, _)
            | Route::Referrers(n, _),
        ) => check_name(&n),
        Err(e) => assert!(!e.code().is_empty()),
    }
    if let Ok(d) = Digest::parse(text) {
        assert_eq!(d.to_string(), text);
    }
    if let Ok(Reference::Tag(t)) = Reference::parse(text) {
        assert!(!t.is_empty() && t.len() <= 128 && !t.contains('/'));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn manifest_corpus_replays() {
        bronze_runtime::replay_fuzz_corpus("registry_manifest", super::manifest);
    }

    #[test]
    fn reference_corpus_replays() {
        bronze_runtime::replay_fuzz_corpus("registry_reference", super::reference);
    }
}
