//! The OCI distribution spec's four conformance categories (pull, push,
//! content discovery, content management), as black-box request sequences
//! written from the spec text.

use reqwest::Method;

use crate::harness::{Reg, error_code, sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

// ----- pull -----

#[tokio::test]
async fn base_endpoint_announces_the_api() {
    let r = Reg::start().await;
    let resp = r.get("/v2/").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    assert_eq!(r.get("/v2").await.status(), 200);
}

#[tokio::test]
async fn pull_manifests_and_blobs_by_tag_and_digest() {
    let r = Reg::start().await;
    let layer = b"layer bytes for the pull test".repeat(100);
    let (digest, body) = r.push_image("pull/app", "v1", &layer).await;
    for reference in ["v1", digest.as_str()] {
        let resp = r.get(&format!("/v2/pull/app/manifests/{reference}")).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], OCI_MANIFEST);
        assert_eq!(resp.headers()["docker-content-digest"], digest.as_str());
        assert_eq!(resp.bytes().await.expect("body").to_vec(), body);
        let head = r.head(&format!("/v2/pull/app/manifests/{reference}")).await;
        assert_eq!(head.status(), 200);
        assert_eq!(
            head.headers()["content-length"],
            body.len().to_string().as_str()
        );
        assert_eq!(head.headers()["docker-content-digest"], digest.as_str());
    }
    let layer_digest = sha256(&layer);
    let resp = r.get(&format!("/v2/pull/app/blobs/{layer_digest}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["docker-content-digest"],
        layer_digest.as_str()
    );
    assert_eq!(resp.bytes().await.expect("body").to_vec(), layer);
    let head = r.head(&format!("/v2/pull/app/blobs/{layer_digest}")).await;
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        layer.len().to_string().as_str()
    );
    // Ranges.
    let part = r
        .req(Method::GET, &format!("/v2/pull/app/blobs/{layer_digest}"))
        .await
        .header("range", "bytes=10-19")
        .send()
        .await
        .expect("GET");
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 10-19/{}", layer.len()).as_str()
    );
    assert_eq!(
        part.bytes().await.expect("body").to_vec(),
        layer[10..20].to_vec()
    );
    let bad = r
        .req(Method::GET, &format!("/v2/pull/app/blobs/{layer_digest}"))
        .await
        .header("range", format!("bytes={}-", layer.len() + 5))
        .send()
        .await
        .expect("GET");
    assert_eq!(bad.status(), 416);
}

#[tokio::test]
async fn pulling_what_is_not_there_is_404_with_the_spec_codes() {
    let r = Reg::start().await;
    r.push_image("pull/there", "v1", b"x").await;
    let missing = format!("sha256:{}", "0".repeat(64));
    let resp = r.get("/v2/pull/there/manifests/nope").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    let resp = r.get(&format!("/v2/pull/there/manifests/{missing}")).await;
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    let resp = r.get(&format!("/v2/pull/there/blobs/{missing}")).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
    assert_eq!(
        r.head(&format!("/v2/pull/there/blobs/{missing}"))
            .await
            .status(),
        404
    );
    // A blob pushed to one repository is not readable through another.
    let blob = r.push_blob("pull/one", b"private to one").await;
    assert_eq!(
        r.get(&format!("/v2/pull/two/blobs/{blob}")).await.status(),
        404
    );
}

// ----- push -----

#[tokio::test]
async fn push_monolithic_single_post_chunked_and_resumable() {
    let r = Reg::start().await;
    // POST with digest and body: one request.
    let data = b"single post upload".to_vec();
    let digest = sha256(&data);
    let resp = r
        .req(
            Method::POST,
            &format!("/v2/push/a/blobs/uploads/?digest={digest}"),
        )
        .await
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 201);
    assert_eq!(
        resp.headers()["location"],
        format!("/v2/push/a/blobs/{digest}").as_str()
    );
    assert_eq!(resp.headers()["docker-content-digest"], digest.as_str());

    // Chunked: POST, PATCH with Content-Range, GET status, PATCH, PUT.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let digest = sha256(&data);
    let resp = r
        .req(Method::POST, "/v2/push/a/blobs/uploads/")
        .await
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 202);
    assert!(resp.headers().contains_key("docker-upload-uuid"));
    let location = resp.headers()["location"]
        .to_str()
        .expect("loc")
        .to_string();
    let patch = |from: usize, to: usize| {
        let url = r.url(&location);
        let chunk = data[from..to].to_vec();
        let client = r.client.clone();
        async move {
            client
                .patch(url)
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{from}-{}", to - 1))
                .header("content-length", chunk.len())
                .body(chunk)
                .send()
                .await
                .expect("PATCH")
        }
    };
    let resp = patch(0, 100_000).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["range"], "0-99999");
    let status = r.get(&location).await;
    assert_eq!(status.status(), 204);
    assert_eq!(status.headers()["range"], "0-99999");
    // An out-of-order chunk is refused and changes nothing.
    let resp = patch(200_000, 300_000).await;
    assert_eq!(resp.status(), 416);
    assert_eq!(r.get(&location).await.headers()["range"], "0-99999");
    assert_eq!(patch(100_000, 300_000).await.status(), 202);
    let resp = r
        .req(Method::PUT, &format!("{location}?digest={digest}"))
        .await
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 201);
    let pulled = r
        .get(&format!("/v2/push/a/blobs/{digest}"))
        .await
        .bytes()
        .await
        .expect("body");
    assert_eq!(pulled.to_vec(), data);
    // The session is gone once finished.
    assert_eq!(r.get(&location).await.status(), 404);
}

/// Uploads larger than the 16 MiB between two early flushes
/// (`storage::write_batches`): monolithic, and a PATCH then a PUT that
/// carries the rest. What is served and what is on disk is every byte sent.
#[tokio::test]
async fn large_uploads_are_stored_byte_exact() {
    let r = Reg::start().await;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..(40usize << 20))
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let digest = r.push_blob("large/mono", &data).await;
    let pulled = r.get(&format!("/v2/large/mono/blobs/{digest}")).await;
    assert_eq!(pulled.status(), 200);
    assert!(pulled.bytes().await.expect("body") == data);
    let hex = digest.trim_start_matches("sha256:");
    let on_disk = std::fs::read(
        r.root
            .path()
            .join(format!("blobs/sha256/{}/{hex}", &hex[..2])),
    )
    .expect("the blob's file");
    assert!(on_disk == data, "the file holds exactly the bytes sent");

    // The same content again, as a 20 MiB PATCH and a PUT with the rest.
    let location = r
        .req(Method::POST, "/v2/large/pieces/blobs/uploads/")
        .await
        .send()
        .await
        .expect("POST")
        .headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let half = 20 << 20;
    let resp = r
        .req(Method::PATCH, &location)
        .await
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("0-{}", half - 1))
        .body(data[..half].to_vec())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["range"], format!("0-{}", half - 1).as_str());
    let resp = r
        .req(Method::PUT, &format!("{location}?digest={digest}"))
        .await
        .header("content-type", "application/octet-stream")
        .body(data[half..].to_vec())
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 201);
    let pulled = r.get(&format!("/v2/large/pieces/blobs/{digest}")).await;
    assert!(pulled.bytes().await.expect("body") == data);
}

#[tokio::test]
async fn cross_repository_mount_links_without_upload() {
    let r = Reg::start().await;
    let digest = r.push_blob("mount/from", b"shared layer").await;
    let resp = r
        .req(
            Method::POST,
            &format!("/v2/mount/to/blobs/uploads/?mount={digest}&from=mount/from"),
        )
        .await
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 201);
    assert_eq!(
        resp.headers()["location"],
        format!("/v2/mount/to/blobs/{digest}").as_str()
    );
    assert_eq!(
        r.get(&format!("/v2/mount/to/blobs/{digest}"))
            .await
            .status(),
        200
    );
    // Mounting from a repository that does not have it: a normal upload.
    let missing = format!("sha256:{}", "1".repeat(64));
    let resp = r
        .req(
            Method::POST,
            &format!("/v2/mount/to/blobs/uploads/?mount={missing}&from=mount/from"),
        )
        .await
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 202);
}

#[tokio::test]
async fn push_manifests_by_tag_and_by_digest_and_indexes() {
    let r = Reg::start().await;
    let (digest, body) = r.push_image("push/m", "v1", b"layer").await;
    // The same manifest by digest.
    let resp = r.put_manifest("push/m", &digest, OCI_MANIFEST, &body).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(
        resp.headers()["location"],
        format!("/v2/push/m/manifests/{digest}").as_str()
    );
    // An index of it.
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest, "size": body.len(),
                       "platform": {"architecture": "amd64", "os": "linux"}}]
    });
    let index_body = serde_json::to_vec(&index).expect("json");
    let resp = r
        .put_manifest("push/m", "multi", OCI_INDEX, &index_body)
        .await;
    assert_eq!(resp.status(), 201);
    let got = r.get("/v2/push/m/manifests/multi").await;
    assert_eq!(got.headers()["content-type"], OCI_INDEX);
    // Docker schema 2 media types are accepted as such.
    let docker = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": sha256(br#"{"architecture":"amd64","os":"linux"}"#), "size": 37},
        "layers": []
    });
    let resp = r
        .put_manifest(
            "push/m",
            "docker",
            "application/vnd.docker.distribution.manifest.v2+json",
            &serde_json::to_vec(&docker).expect("json"),
        )
        .await;
    assert_eq!(resp.status(), 201);
}

// ----- content discovery -----

#[tokio::test]
async fn tags_and_catalog_paginate_with_link_headers() {
    let r = Reg::start().await;
    let (_, body) = r.push_image("disc/app", "a", b"l").await;
    for t in ["b", "c", "d", "e"] {
        assert_eq!(
            r.put_manifest("disc/app", t, OCI_MANIFEST, &body)
                .await
                .status(),
            201
        );
    }
    let all: serde_json::Value = r
        .get("/v2/disc/app/tags/list")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        all,
        serde_json::json!({"name": "disc/app", "tags": ["a", "b", "c", "d", "e"]})
    );
    let page = r.get("/v2/disc/app/tags/list?n=2").await;
    assert_eq!(
        page.headers()["link"],
        "</v2/disc/app/tags/list?n=2&last=b>; rel=\"next\""
    );
    let v: serde_json::Value = page.json().await.expect("json");
    assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
    let v: serde_json::Value = r
        .get("/v2/disc/app/tags/list?n=2&last=b")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["tags"], serde_json::json!(["c", "d"]));
    let last = r.get("/v2/disc/app/tags/list?n=2&last=d").await;
    assert!(!last.headers().contains_key("link"));
    assert_eq!(
        last.json::<serde_json::Value>().await.expect("json")["tags"],
        serde_json::json!(["e"])
    );
    let resp = r.get("/v2/disc/unknown/tags/list").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(error_code(resp).await, "NAME_UNKNOWN");

    r.push_image("disc/other", "x", b"l").await;
    let cat: serde_json::Value = r.get("/v2/_catalog").await.json().await.expect("json");
    assert_eq!(
        cat["repositories"],
        serde_json::json!(["disc/app", "disc/other"])
    );
    let page = r.get("/v2/_catalog?n=1").await;
    assert_eq!(
        page.headers()["link"],
        "</v2/_catalog?n=1&last=disc/app>; rel=\"next\""
    );
}

#[tokio::test]
async fn referrers_list_manifests_with_a_subject_and_filter_by_artifact_type() {
    let r = Reg::start().await;
    let (subject, subject_body) = r.push_image("ref/app", "v1", b"image").await;
    let empty = r.push_blob("ref/app", b"{}").await;
    let mut pushed = Vec::new();
    for (artifact, payload) in [
        ("application/vnd.example.sbom", "sbom"),
        ("application/vnd.example.sig", "sig"),
    ] {
        let layer = r.push_blob("ref/app", payload.as_bytes()).await;
        let m = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": payload.len()}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_body.len()},
            "annotations": {"org.example.kind": payload}
        });
        let body = serde_json::to_vec(&m).expect("json");
        let digest = sha256(&body);
        let resp = r
            .put_manifest("ref/app", &digest, OCI_MANIFEST, &body)
            .await;
        assert_eq!(resp.status(), 201);
        assert_eq!(
            resp.headers()["oci-subject"],
            subject.as_str(),
            "OCI-Subject on push"
        );
        pushed.push((artifact, digest));
    }
    let resp = r.get(&format!("/v2/ref/app/referrers/{subject}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], OCI_INDEX);
    let v: serde_json::Value = resp.json().await.expect("json");
    let list = v["manifests"].as_array().expect("array");
    assert_eq!(list.len(), 2);
    for m in list {
        assert!(
            pushed
                .iter()
                .any(|(a, d)| m["artifactType"] == *a && m["digest"] == d.as_str()),
            "{m}"
        );
        assert!(m["annotations"]["org.example.kind"].is_string());
    }
    let filtered = r
        .get(&format!(
            "/v2/ref/app/referrers/{subject}?artifactType=application/vnd.example.sig"
        ))
        .await;
    assert_eq!(filtered.headers()["oci-filters-applied"], "artifactType");
    let v: serde_json::Value = filtered.json().await.expect("json");
    assert_eq!(v["manifests"].as_array().expect("array").len(), 1);
    // A subject nobody refers to: an empty index, not an error.
    let v: serde_json::Value = r
        .get(&format!("/v2/ref/app/referrers/sha256:{}", "2".repeat(64)))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["manifests"], serde_json::json!([]));
}

/// The referrers list comes in pages: `n` at most (1000 by default), with
/// a `Link` to the rest that keeps the filter; following the links yields
/// every referrer once.
#[tokio::test]
async fn referrers_come_in_pages_linked_to_the_rest() {
    let r = Reg::start().await;
    let (subject, subject_body) = r.push_image("pages/app", "v1", b"image").await;
    let empty = r.push_blob("pages/app", b"{}").await;
    let mut pushed = std::collections::BTreeSet::new();
    for i in 0..5 {
        let artifact = if i % 2 == 0 {
            "application/vnd.example.sig+json"
        } else {
            "application/vnd.example.sbom"
        };
        let m = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_body.len()},
            "annotations": {"i": i.to_string()}
        });
        let body = serde_json::to_vec(&m).expect("json");
        let digest = sha256(&body);
        let resp = r
            .put_manifest("pages/app", &digest, OCI_MANIFEST, &body)
            .await;
        assert_eq!(resp.status(), 201);
        pushed.insert((artifact, digest));
    }
    // Follows the links from `first`: each page's artifact types and
    // digests, in order.
    let walk = |first: String| {
        let r = &r;
        async move {
            let (mut url, mut pages) = (Some(first), Vec::new());
            while let Some(u) = url.take() {
                let resp = r.get(&u).await;
                assert_eq!(resp.status(), 200);
                url = resp.headers().get("link").map(|l| {
                    let l = l.to_str().expect("link");
                    assert!(l.ends_with(">; rel=\"next\""), "{l}");
                    l.trim_start_matches('<')
                        .split_once('>')
                        .expect("<url>")
                        .0
                        .to_string()
                });
                let v: serde_json::Value = resp.json().await.expect("json");
                let page: Vec<(String, String)> = v["manifests"]
                    .as_array()
                    .expect("manifests")
                    .iter()
                    .map(|m| {
                        let s = |f: &str| m[f].as_str().expect("string").to_string();
                        (s("artifactType"), s("digest"))
                    })
                    .collect();
                pages.push(page);
            }
            pages
        }
    };
    let pages = walk(format!("/v2/pages/app/referrers/{subject}?n=2")).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 2, 1]);
    let all: std::collections::BTreeSet<(&str, String)> = pages
        .iter()
        .flatten()
        .map(|(a, d)| {
            let a = pushed.iter().find(|(p, _)| p == a).expect("known").0;
            (a, d.clone())
        })
        .collect();
    assert_eq!(all, pushed);
    // Filtered: the links keep the filter (a media type with '+' and '/').
    let pages = walk(format!(
        "/v2/pages/app/referrers/{subject}?n=2&artifactType=application%2Fvnd.example.sig%2Bjson"
    ))
    .await;
    let sigs: Vec<&(String, String)> = pages.iter().flatten().collect();
    assert_eq!(sigs.len(), 3, "{pages:?}");
    assert!(
        sigs.iter()
            .all(|(a, _)| a == "application/vnd.example.sig+json")
    );
    // Without n: one page of everything, no link.
    let pages = walk(format!("/v2/pages/app/referrers/{subject}")).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [5]);
}

// ----- content management -----

#[tokio::test]
async fn delete_tags_manifests_and_blobs() {
    let r = Reg::start().await;
    let (digest, body) = r.push_image("del/app", "v1", b"layer to delete").await;
    assert_eq!(
        r.put_manifest("del/app", "v2", OCI_MANIFEST, &body)
            .await
            .status(),
        201
    );
    // Deleting a tag leaves the manifest and the other tag.
    let resp = r
        .req(Method::DELETE, "/v2/del/app/manifests/v1")
        .await
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status(), 202);
    assert_eq!(r.get("/v2/del/app/manifests/v1").await.status(), 404);
    assert_eq!(r.get("/v2/del/app/manifests/v2").await.status(), 200);
    // Deleting by digest removes the manifest and every tag on it.
    let resp = r
        .req(Method::DELETE, &format!("/v2/del/app/manifests/{digest}"))
        .await
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status(), 202);
    assert_eq!(
        r.get(&format!("/v2/del/app/manifests/{digest}"))
            .await
            .status(),
        404
    );
    assert_eq!(r.get("/v2/del/app/manifests/v2").await.status(), 404);
    let v: serde_json::Value = r
        .get("/v2/del/app/tags/list")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["tags"], serde_json::json!([]));
    // Blobs.
    let layer = sha256(b"layer to delete");
    let resp = r
        .req(Method::DELETE, &format!("/v2/del/app/blobs/{layer}"))
        .await
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status(), 202);
    assert_eq!(
        r.get(&format!("/v2/del/app/blobs/{layer}")).await.status(),
        404
    );
    let resp = r
        .req(Method::DELETE, &format!("/v2/del/app/blobs/{layer}"))
        .await
        .send()
        .await
        .expect("DELETE");
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
    // Cancel an upload.
    let resp = r
        .req(Method::POST, "/v2/del/app/blobs/uploads/")
        .await
        .send()
        .await
        .expect("POST");
    let location = resp.headers()["location"]
        .to_str()
        .expect("loc")
        .to_string();
    assert_eq!(
        r.req(Method::DELETE, &location)
            .await
            .send()
            .await
            .expect("DELETE")
            .status(),
        204
    );
    let resp = r.get(&location).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_UNKNOWN");
}
