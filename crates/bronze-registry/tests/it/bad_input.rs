//! Bad input gets the spec's error, and the store is exactly as before.

use reqwest::Method;

use crate::harness::{Reg, error_code, sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Every file under the storage root, with its size: "exactly as before".
fn snapshot(root: &std::path::Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let e = e.expect("entry");
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.ends_with("registry.redb") {
                out.push((p.display().to_string(), e.metadata().expect("meta").len()));
            }
        }
    }
    out.sort();
    out
}

/// Sends a request line as given (HTTP clients normalise `..` away).
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

#[tokio::test]
async fn invalid_names_and_traversal_attempts() {
    let r = Reg::start().await;
    for path in [
        "/v2/a/../b/manifests/latest",
        "/v2/../../etc/passwd/blobs/sha256:00",
        "/v2/a/./b/tags/list",
    ] {
        let (status, text) = raw_get(r.addr, path).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains("NAME_INVALID"), "{path}: {text}");
    }
    for path in [
        "/v2/UPPER/manifests/latest",
        "/v2/a%2F..%2F..%2Fetc/manifests/latest",
        "/v2/a//b/manifests/latest",
        "/v2/-a/tags/list",
    ] {
        let resp = r.get(path).await;
        assert_eq!(resp.status(), 400, "{path}");
        assert_eq!(error_code(resp).await, "NAME_INVALID", "{path}");
    }
    let resp = r.get("/v2/ok/manifests/bad..tag!").await;
    assert_eq!(error_code(resp).await, "TAG_INVALID");
    let resp = r.get("/v2/ok/blobs/sha256:nothex").await;
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
    let resp = r.get("/v2/ok/blobs/../../../registry.redb").await;
    assert!(resp.status().is_client_error());
}

#[tokio::test]
async fn a_digest_mismatch_is_digest_invalid_and_stores_nothing() {
    let r = Reg::start().await;
    r.push_image("bad/app", "v1", b"existing").await;
    let before = snapshot(r.root.path());
    let wrong = sha256(b"something else");
    let resp = r
        .req(
            Method::POST,
            &format!("/v2/bad/app/blobs/uploads/?digest={wrong}"),
        )
        .await
        .body(b"the actual bytes".to_vec())
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
    assert_eq!(
        r.get(&format!("/v2/bad/app/blobs/{wrong}")).await.status(),
        404
    );
    let real = sha256(b"the actual bytes");
    assert_eq!(
        r.get(&format!("/v2/bad/app/blobs/{real}")).await.status(),
        404,
        "not visible under its real digest either"
    );
    // Only an upload file may remain (it is purged later); no blob appeared.
    let after: Vec<_> = snapshot(r.root.path())
        .into_iter()
        .filter(|(p, _)| !p.contains("/uploads/"))
        .collect();
    assert_eq!(
        after,
        before
            .into_iter()
            .filter(|(p, _)| !p.contains("/uploads/"))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn manifests_too_large_referencing_missing_blobs_or_of_unknown_type() {
    let r = Reg::start().await;
    r.push_image("bad/m", "v1", b"fine").await;
    let before = snapshot(r.root.path());
    let tags_before: serde_json::Value = r
        .get("/v2/bad/m/tags/list")
        .await
        .json()
        .await
        .expect("json");

    let huge = vec![b' '; 4 * 1024 * 1024 + 1];
    let resp = r.put_manifest("bad/m", "huge", OCI_MANIFEST, &huge).await;
    assert_eq!(resp.status(), 413);

    let missing = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(b"absent config"), "size": 13},
        "layers": []
    });
    let resp = r
        .put_manifest(
            "bad/m",
            "missing",
            OCI_MANIFEST,
            &serde_json::to_vec(&missing).expect("json"),
        )
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(resp).await, "MANIFEST_BLOB_UNKNOWN");

    let resp = r
        .put_manifest(
            "bad/m",
            "odd",
            "application/vnd.example.unknown+json",
            br#"{"schemaVersion":2}"#,
        )
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(resp).await, "MANIFEST_INVALID");

    let resp = r
        .put_manifest("bad/m", "junk", OCI_MANIFEST, b"{not json")
        .await;
    assert_eq!(error_code(resp).await, "MANIFEST_INVALID");

    // A manifest pushed by digest must hash to it.
    let body = serde_json::to_vec(&missing).expect("json");
    let resp = r
        .put_manifest("bad/m", &sha256(b"not the manifest"), OCI_MANIFEST, &body)
        .await;
    assert!(resp.status().is_client_error());

    assert_eq!(snapshot(r.root.path()), before, "no file changed");
    let tags_after: serde_json::Value = r
        .get("/v2/bad/m/tags/list")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(tags_before, tags_after);
}

#[tokio::test]
async fn wrong_or_overlapping_content_ranges_are_416_and_change_nothing() {
    let r = Reg::start().await;
    let resp = r
        .req(Method::POST, "/v2/bad/ranges/blobs/uploads/")
        .await
        .send()
        .await
        .expect("POST");
    let location = resp.headers()["location"]
        .to_str()
        .expect("loc")
        .to_string();
    let patch = |range: &str, body: &[u8]| {
        let req = r
            .client
            .patch(r.url(&location))
            .header("content-range", range)
            .header("content-length", body.len())
            .body(body.to_vec());
        async move { req.send().await.expect("PATCH") }
    };
    assert_eq!(patch("0-4", b"hello").await.status(), 202);
    for (range, body) in [
        ("0-4", &b"again"[..]),
        ("3-7", b"lapss"),
        ("10-14", b"skips"),
        ("5-9", b"short"),
        ("x-y", b"junks"),
    ] {
        let expect = if range == "5-9" { 202 } else { 416 };
        let resp = patch(range, body).await;
        assert_eq!(resp.status(), expect, "{range}");
        if expect == 416 {
            assert_eq!(error_code(resp).await, "BLOB_UPLOAD_INVALID");
        }
    }
    // Content-Range and Content-Length that disagree.
    let resp = r
        .client
        .patch(r.url(&location))
        .header("content-range", "10-19")
        .body(b"abc".to_vec())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(resp.status(), 416);
    assert_eq!(r.get(&location).await.headers()["range"], "0-9");
    let digest = sha256(b"helloshort");
    let resp = r
        .req(Method::PUT, &format!("{location}?digest={digest}"))
        .await
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 201);
}

#[tokio::test]
async fn a_truncated_upload_leaves_nothing_visible_and_can_resume() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = Reg::start().await;
    let data = vec![7u8; 64 * 1024];
    let digest = sha256(&data);
    let resp = r
        .req(Method::POST, "/v2/bad/cut/blobs/uploads/")
        .await
        .send()
        .await
        .expect("POST");
    let location = resp.headers()["location"]
        .to_str()
        .expect("loc")
        .to_string();
    // Announce 64 KiB, send 1 KiB, hang up.
    let mut s = tokio::net::TcpStream::connect(r.addr)
        .await
        .expect("connect");
    let head = format!(
        "PUT {location}?digest={digest} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(&data[..1024]).await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut sink)).await;
    assert_eq!(
        r.get(&format!("/v2/bad/cut/blobs/{digest}")).await.status(),
        404,
        "no partial blob"
    );
    // The session says what arrived; the client resumes from there.
    let status = r.get(&location).await;
    assert_eq!(status.status(), 204);
    let received: usize = status.headers()["range"]
        .to_str()
        .expect("range")
        .split('-')
        .nth(1)
        .and_then(|n| n.parse::<usize>().ok())
        .map_or(0, |n| n + 1);
    assert!(received <= 1024);
    let resp = r
        .client
        .put(r.url(&format!("{location}?digest={digest}")))
        .header("content-range", format!("{received}-{}", data.len() - 1))
        .body(data[received..].to_vec())
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 201);
    let got = r
        .get(&format!("/v2/bad/cut/blobs/{digest}"))
        .await
        .bytes()
        .await
        .expect("body");
    assert_eq!(got.len(), data.len());
}

#[tokio::test]
async fn two_clients_pushing_the_same_blob_at_once_both_succeed() {
    let r = Reg::start().await;
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let digest = sha256(&data);
    let push = |repo: &'static str| {
        let client = r.client.clone();
        let base = r.url("");
        let data = data.clone();
        let digest = digest.clone();
        async move {
            let resp = client
                .post(format!("{base}/v2/{repo}/blobs/uploads/"))
                .send()
                .await
                .expect("POST");
            let location = resp.headers()["location"]
                .to_str()
                .expect("loc")
                .to_string();
            client
                .put(format!("{base}{location}?digest={digest}"))
                .body(data)
                .send()
                .await
                .expect("PUT")
                .status()
        }
    };
    let (a, b) = tokio::join!(push("race/one"), push("race/two"));
    assert_eq!((a.as_u16(), b.as_u16()), (201, 201));
    for repo in ["race/one", "race/two"] {
        let got = r
            .get(&format!("/v2/{repo}/blobs/{digest}"))
            .await
            .bytes()
            .await
            .expect("body");
        assert_eq!(sha256(&got), digest);
    }
    // Stored once.
    let blobs: Vec<_> = snapshot(r.root.path())
        .into_iter()
        .filter(|(p, _)| p.contains("/blobs/"))
        .collect();
    assert_eq!(blobs.len(), 1);
}

#[tokio::test]
async fn uploads_survive_a_restart_and_blobs_stay_verified() {
    let r = Reg::start().await;
    let resp = r
        .req(Method::POST, "/v2/persist/app/blobs/uploads/")
        .await
        .send()
        .await
        .expect("POST");
    let location = resp.headers()["location"]
        .to_str()
        .expect("loc")
        .to_string();
    let first = b"first half, ".to_vec();
    let resp = r
        .client
        .patch(r.url(&location))
        .body(first.clone())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(resp.status(), 202);
    let (digest, _) = r.push_image("persist/app", "v1", b"kept layer").await;
    let root = r.stop().await;
    let r = Reg::start_in(root).await;
    assert_eq!(
        r.get(&format!("/v2/persist/app/manifests/{digest}"))
            .await
            .status(),
        200
    );
    let status = r.get(&location).await;
    assert_eq!(
        status.headers()["range"],
        format!("0-{}", first.len() - 1).as_str()
    );
    let second = b"second half".to_vec();
    let all = [first, second.clone()].concat();
    let resp = r
        .client
        .put(r.url(&format!("{location}?digest={}", sha256(&all))))
        .body(second)
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 201, "the running hash was rebuilt from disk");
}

#[tokio::test]
async fn stale_upload_sessions_expire_and_are_purged() {
    let r = Reg::start_with(tempfile::tempdir().expect("tempdir"), |c| {
        c.upload_ttl = std::time::Duration::from_secs(1);
    })
    .await;
    let resp = r
        .req(Method::POST, "/v2/stale/app/blobs/uploads/")
        .await
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"]
        .to_str()
        .expect("loc")
        .to_string();
    let id = location.rsplit('/').next().expect("id").to_string();
    let resp = r
        .client
        .patch(r.url(&location))
        .header("content-type", "application/octet-stream")
        .body(vec![1u8; 1000])
        .send()
        .await
        .expect("PATCH");
    assert_eq!(resp.status(), 202);
    let file = r.root.path().join("uploads").join(&id);
    assert!(file.exists());
    // Abandoned: the purger (every upload_ttl here) removes file and session.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let resp = loop {
        let resp = r.get(&location).await;
        if resp.status() == 404 || std::time::Instant::now() > deadline {
            break resp;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(resp.status(), 404);
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_UNKNOWN");
    assert!(!file.exists(), "the upload file is removed");
    // Nothing else was touched: no blob, no repository.
    let catalog: serde_json::Value = r.get("/v2/_catalog").await.json().await.expect("json");
    assert_eq!(catalog["repositories"], serde_json::json!([]));
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = Reg::start_with(tempfile::tempdir().expect("tempdir"), |c| {
        c.header_read_timeout = std::time::Duration::from_millis(500);
    })
    .await;
    // Slow-loris: half a request head, then silence.
    let mut conn = tokio::net::TcpStream::connect(r.addr)
        .await
        .expect("connect");
    conn.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.read_to_end(&mut buf),
    )
    .await;
    assert!(closed.is_ok(), "the registry closed the connection in time");
    assert!(
        !String::from_utf8_lossy(&buf).contains("200 OK"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    // A complete request is still served.
    let resp = r.client.get(r.url("/v2/")).send().await.expect("GET");
    assert_eq!(resp.status(), 200);
}

/// The real store, except that each commit to the upload sessions'
/// namespace waits (as behind a slow fsync) until the test releases it or
/// 10 s pass; it says when a commit starts waiting.
struct SlowUploadCommits {
    inner: bronze_store::RedbStore,
    waiting: tokio::sync::mpsc::UnboundedSender<()>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    timed_out: std::sync::atomic::AtomicBool,
}

impl SlowUploadCommits {
    fn slow(&self, namespace: &str) {
        if namespace != bronze_registry::storage::NS_UPLOADS {
            return;
        }
        let _ = self.waiting.send(());
        let release = self.release.lock().expect("lock");
        if release
            .recv_timeout(std::time::Duration::from_secs(10))
            .is_err()
        {
            self.timed_out
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl bronze_store::Store for SlowUploadCommits {
    fn put(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), bronze_store::StoreError> {
        self.slow(ns);
        self.inner.put(ns, key, value)
    }
    fn delete(&self, ns: &str, key: &str) -> Result<bool, bronze_store::StoreError> {
        self.inner.delete(ns, key)
    }
    fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, bronze_store::StoreError> {
        self.inner.get(ns, key)
    }
    fn list(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, bronze_store::StoreError> {
        self.inner.list(ns)
    }
    fn scan(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, bronze_store::StoreError> {
        self.inner.scan(ns, prefix, after, limit)
    }
    fn apply(&self, ops: &[bronze_store::Op]) -> Result<(), bronze_store::StoreError> {
        self.inner.apply(ops)
    }
}

/// A slow commit (the upload session's record, fsync'd) runs off the
/// async worker: on one worker thread (this test's runtime, as a registry
/// started with one), a `GET /v2/` is answered while a `POST` starting an
/// upload waits for its commit. Were the commit on the worker, nothing
/// else would run until it ended (here: its 10 s timeout).
#[tokio::test]
async fn a_slow_store_commit_does_not_stall_other_requests() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().expect("tempdir");
    let (waiting_tx, mut waiting) = tokio::sync::mpsc::unbounded_channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let store = Arc::new(SlowUploadCommits {
        inner: bronze_store::RedbStore::open(&dir.path().join("registry.redb")).expect("store"),
        waiting: waiting_tx,
        release: std::sync::Mutex::new(release_rx),
        timed_out: std::sync::atomic::AtomicBool::new(false),
    });
    let app = bronze_registry::api::App {
        storage: Arc::new(
            bronze_registry::storage::Storage::open(dir.path(), store.clone()).expect("storage"),
        ),
        events: bronze_registry::events::Events::new(),
        gc_lock: Arc::default(),
        auth: Arc::new(
            bronze_registry::auth::Auth::new(Default::default(), dir.path()).expect("auth"),
        ),
        tls: false,
    };
    let router = axum::Router::new()
        .route("/v2/", axum::routing::any(bronze_registry::api::dispatch))
        .route(
            "/v2/{*rest}",
            axum::routing::any(bronze_registry::api::dispatch),
        )
        .with_state(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    let post = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .post(format!("http://{addr}/v2/slow/app/blobs/uploads/"))
                .send()
                .await
                .expect("POST")
                .status()
        }
    });
    waiting.recv().await.expect("the upload's commit waits");
    let status = client
        .get(format!("http://{addr}/v2/"))
        .send()
        .await
        .expect("GET")
        .status();
    assert_eq!(status, 200);
    release.send(()).expect("release");
    assert_eq!(post.await.expect("join"), 202);
    assert!(
        !store.timed_out.load(std::sync::atomic::Ordering::SeqCst),
        "the GET waited for the commit"
    );
}
