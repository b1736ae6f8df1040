//! Real clients: docker through the local engine (127.0.0.0/8 is an
//! insecure registry by default) and skopeo (Debian's package).

use std::path::Path;
use std::process::Command;

use crate::harness::{Reg, sha256};

pub(crate) fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn docker_push_and_pull_through_the_engine() {
    let r = Reg::start().await;
    let source = "bronze-test/busybox-httpd:latest";
    xtask::images::build_busybox_httpd(source)
        .await
        .expect("workload image");
    let target = format!("127.0.0.1:{}/e2e/busybox:pushed", r.addr.port());
    let t = target.clone();
    tokio::task::spawn_blocking(move || {
        run(Command::new("docker").args(["tag", source, &t]));
        run(Command::new("docker").args(["push", &t]));
        run(Command::new("docker").args(["rmi", &t]));
        run(Command::new("docker").args(["pull", &t]));
        // The pulled image runs.
        let out = run(Command::new("docker").args(["run", "--rm", &t, "echo", "pulled and ran"]));
        assert!(out.contains("pulled and ran"));
        run(Command::new("docker").args(["rmi", &t]));
    })
    .await
    .expect("docker");
    let tags: serde_json::Value = r
        .get("/v2/e2e/busybox/tags/list")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(tags["tags"], serde_json::json!(["pushed"]));
    let m = r.get("/v2/e2e/busybox/manifests/pushed").await;
    assert_eq!(
        m.headers()["content-type"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
}

fn write_blob(dir: &Path, data: &[u8]) -> String {
    let digest = sha256(data);
    let hex = digest.trim_start_matches("sha256:");
    std::fs::write(dir.join("blobs/sha256").join(hex), data).expect("write blob");
    digest
}

/// An OCI layout with a two-platform index tagged `latest`.
pub(crate) fn multi_arch_layout(dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("mkdir");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    let mut manifests = Vec::new();
    for arch in ["amd64", "arm64"] {
        let mut tar = tar::Builder::new(Vec::new());
        let content = format!("built for {arch}\n");
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "hello.txt", content.as_bytes())
            .expect("tar");
        let layer = tar.into_inner().expect("tar");
        let layer_digest = write_blob(dir, &layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
        }))
        .expect("json");
        let config_digest = write_blob(dir, &config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}]
        }))
        .expect("json");
        let digest = write_blob(dir, &manifest);
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"}
        }));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests
    }))
    .expect("json");
    let index_digest = write_blob(dir, &index);
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": index_digest,
                           "size": index.len(), "annotations": {"org.opencontainers.image.ref.name": "latest"}}]
        }))
        .expect("json"),
    )
    .expect("index.json");
    index_digest
}

#[tokio::test]
async fn skopeo_copies_a_multi_arch_index_both_ways() {
    let r = Reg::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let index_digest = multi_arch_layout(&src);
    let dest = format!("docker://127.0.0.1:{}/multi/app:1", r.addr.port());
    let back = dir.path().join("back");
    let (s, d, b) = (src.clone(), dest.clone(), back.clone());
    let raw = tokio::task::spawn_blocking(move || {
        run(Command::new("skopeo")
            .args([
                "copy",
                "--all",
                "--preserve-digests",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}:latest", s.display()))
            .arg(&d));
        let raw = run(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", &d]));
        run(Command::new("skopeo")
            .args([
                "copy",
                "--all",
                "--preserve-digests",
                "--dest-oci-accept-uncompressed-layers",
                "--src-tls-verify=false",
                &d,
            ])
            .arg(format!("oci:{}:copied", b.display())));
        raw
    })
    .await
    .expect("skopeo");
    // The index arrived byte for byte (same digest), children included.
    // (skopeo prints the raw bytes followed by a newline.)
    let raw = raw.strip_suffix('\n').unwrap_or(&raw).to_string();
    let source_index = std::fs::read(
        src.join("blobs/sha256")
            .join(index_digest.trim_start_matches("sha256:")),
    )
    .expect("src index");
    assert_eq!(
        sha256(raw.as_bytes()),
        index_digest,
        "{raw}\nvs\n{}",
        String::from_utf8_lossy(&source_index)
    );
    let index: serde_json::Value = serde_json::from_str(&raw).expect("index json");
    for m in index["manifests"].as_array().expect("manifests") {
        let digest = m["digest"].as_str().expect("digest");
        assert_eq!(
            r.head(&format!("/v2/multi/app/manifests/{digest}"))
                .await
                .status(),
            200
        );
    }
    // And came back whole.
    let layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.join("index.json")).expect("index.json"))
            .expect("json");
    assert_eq!(layout["manifests"][0]["digest"], index_digest.as_str());
}

/// The oci-client crate: push (chunked and monolithic uploads) and pull of
/// an image, its tags and its manifest digest; then the same through the
/// token flow with credentials.
#[tokio::test]
async fn oci_client_pushes_and_pulls() {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::manifest::{IMAGE_LAYER_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE};
    use oci_client::secrets::RegistryAuth;

    async fn round_trip(r: &Reg, auth: &RegistryAuth, monolithic: bool, repo: &str) {
        let client = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            use_monolithic_push: monolithic,
            ..ClientConfig::default()
        });
        let reference: oci_client::Reference = format!("127.0.0.1:{}/{repo}:v1", r.addr.port())
            .parse()
            .expect("reference");
        let layers = vec![
            ImageLayer::new(vec![7u8; 3 << 20], IMAGE_LAYER_MEDIA_TYPE.to_string(), None),
            ImageLayer::new(
                b"second layer".to_vec(),
                IMAGE_LAYER_MEDIA_TYPE.to_string(),
                None,
            ),
        ];
        let config = Config::oci_v1(br#"{"architecture":"amd64","os":"linux"}"#.to_vec(), None);
        client
            .push(&reference, &layers, config, auth, None)
            .await
            .expect("oci-client push");
        let image = client
            .pull(&reference, auth, vec![IMAGE_LAYER_MEDIA_TYPE])
            .await
            .expect("oci-client pull");
        // (oci-client fetches layers concurrently and returns them as they
        // complete.)
        let mut pulled: Vec<_> = image.layers.iter().map(|l| l.data.clone()).collect();
        pulled.sort_by_key(|d| std::cmp::Reverse(d.len()));
        assert_eq!(pulled.len(), 2);
        assert_eq!(pulled[0].len(), 3 << 20);
        assert!(pulled[0].iter().all(|b| *b == 7));
        assert_eq!(&pulled[1][..], b"second layer");
        let tags = client
            .list_tags(&reference, auth, None, None)
            .await
            .expect("tags");
        assert_eq!(tags.tags, vec!["v1".to_string()]);
        let (manifest, digest) = client
            .pull_manifest_raw(&reference, auth, &[OCI_IMAGE_MEDIA_TYPE])
            .await
            .expect("manifest");
        assert_eq!(sha256(&manifest), digest);
        assert_eq!(
            client
                .fetch_manifest_digest(&reference, auth)
                .await
                .expect("digest"),
            digest
        );
    }

    let r = Reg::start().await;
    round_trip(&r, &RegistryAuth::Anonymous, false, "oci/chunked").await;
    round_trip(&r, &RegistryAuth::Anonymous, true, "oci/monolithic").await;

    let secrets = tempfile::tempdir().expect("tempdir");
    let htpasswd = secrets.path().join("htpasswd");
    let hash = bcrypt::hash("pw", 4).expect("bcrypt");
    std::fs::write(&htpasswd, format!("ci:{hash}\n")).expect("htpasswd");
    let auth = bronze_registry::auth::AuthConfig {
        mode: bronze_registry::auth::Mode::Token,
        htpasswd: htpasswd.display().to_string(),
        ..Default::default()
    };
    let r = Reg::start_with(tempfile::tempdir().expect("tempdir"), move |c| {
        c.auth = auth
    })
    .await;
    round_trip(
        &r,
        &RegistryAuth::Basic("ci".into(), "pw".into()),
        false,
        "oci/authed",
    )
    .await;
}
