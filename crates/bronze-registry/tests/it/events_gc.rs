//! Push/delete events (gRPC stream, webhooks) and online garbage collection.

use std::time::Duration;

use bronze_proto::registry::v1 as pb;
use reqwest::Method;

use crate::harness::{Reg, sha256};

async fn next(s: &mut tonic::Streaming<pb::Event>) -> pb::Event {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("event in time")
        .expect("stream ok")
        .expect("event")
}

async fn client(r: &Reg) -> pb::registry_client::RegistryClient<tonic::transport::Channel> {
    pb::registry_client::RegistryClient::connect(format!("http://{}", r.grpc))
        .await
        .expect("grpc")
}

/// grpc.health.v1 beside the event stream: SERVING for the server as a
/// whole, NOT_FOUND for a service name it does not know.
#[tokio::test]
async fn the_grpc_port_answers_health_checks() {
    let r = Reg::start().await;
    let whole = bronze_runtime::grpc::serving(r.grpc, "").await;
    assert!(whole.expect("check"), "SERVING");
    let unknown = bronze_runtime::grpc::serving(r.grpc, "no.such.Service").await;
    assert_eq!(unknown.expect_err("unknown").code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn pushes_and_deletes_stream_as_events() {
    let r = Reg::start().await;
    let mut c = client(&r).await;
    let mut all = c
        .events(pb::EventsRequest::default())
        .await
        .expect("events")
        .into_inner();
    let mut only_b = c
        .events(pb::EventsRequest {
            repositories: vec!["ev/b".into()],
        })
        .await
        .expect("events")
        .into_inner();
    // The server subscribed each stream before it answered the call (see
    // `events::stream`): they see every push from here on.
    let (digest_a, _) = r.push_image("ev/a", "v1", b"a").await;
    let (digest_b, _) = r.push_image("ev/b", "v2", b"b").await;
    let e = next(&mut all).await;
    assert_eq!(
        (
            e.action,
            e.repository.as_str(),
            e.digest.as_str(),
            e.tag.as_str()
        ),
        (pb::Action::Push as i32, "ev/a", digest_a.as_str(), "v1")
    );
    assert_eq!(e.media_type, "application/vnd.oci.image.manifest.v1+json");
    let e = next(&mut all).await;
    assert_eq!(e.repository, "ev/b");
    let e = next(&mut only_b).await;
    assert_eq!(
        (e.repository.as_str(), e.digest.as_str()),
        ("ev/b", digest_b.as_str()),
        "filtered stream skips ev/a"
    );
    r.req(Method::DELETE, &format!("/v2/ev/b/manifests/{digest_b}"))
        .await
        .send()
        .await
        .expect("DELETE");
    let e = next(&mut only_b).await;
    assert_eq!(
        (e.action, e.digest.as_str()),
        (pb::Action::Delete as i32, digest_b.as_str())
    );
}

/// A webhook that fails is retried with growing delays (200 ms, then
/// 400 ms, ...): here the receiver refuses twice (503), then takes it; the
/// same event arrives three times, the gaps at least the backoff.
#[tokio::test]
async fn webhooks_are_retried_with_backoff() {
    use std::sync::Arc;
    use tokio::sync::Mutex;
    let arrivals: Arc<Mutex<Vec<(std::time::Instant, serde_json::Value)>>> = Arc::default();
    let sink = arrivals.clone();
    let (done_tx, done) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let (sink, done_tx) = (sink.clone(), done_tx.clone());
            async move {
                let mut seen = sink.lock().await;
                seen.push((std::time::Instant::now(), v));
                if seen.len() < 3 {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                let _ = done_tx.send(());
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let r = Reg::start_with(tempfile::tempdir().expect("tempdir"), |c| {
        c.webhooks = vec![hook];
    })
    .await;
    r.push_image("retry/app", "v1", b"layer").await;
    let mut done = done;
    tokio::time::timeout(Duration::from_secs(30), done.recv())
        .await
        .expect("taken on the third attempt")
        .expect("receiver");
    let got = arrivals.lock().await.clone();
    assert_eq!(got.len(), 3);
    assert!(
        got.iter().all(|(_, v)| *v == got[0].1),
        "the same event each time"
    );
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(gaps[0] >= Duration::from_millis(200), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(400), "{gaps:?}");
}

#[tokio::test]
async fn webhooks_receive_distributions_envelope() {
    use std::sync::Arc;
    use tokio::sync::Mutex;
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().await.push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let root = tempfile::tempdir().expect("tempdir");
    let mut config = bronze_registry::Config::ephemeral(&root.path().display().to_string());
    config.webhooks = vec![hook];
    let server = bronze_registry::Server::bind(config).await.expect("bind");
    let addr = server.addr();
    let shutdown = bronze_runtime::Shutdown::new();
    let s = shutdown.clone();
    let task = tokio::spawn(async move { server.serve(s).await });
    let r = crate::harness::Reg::attach(addr);
    let (digest, _) = r.push_image("hook/app", "v1", b"layer").await;
    for _ in 0..200 {
        if !received.lock().await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let got = received.lock().await.clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let e = &got[0]["events"][0];
    assert_eq!(e["action"], "push");
    assert_eq!(e["target"]["repository"], "hook/app");
    assert_eq!(e["target"]["digest"], digest.as_str());
    assert_eq!(e["target"]["tag"], "v1");
    shutdown.trigger();
    let _ = task.await;
}

/// A collection also purges the uploads untouched for the configured
/// `upload_ttl` (one hour here), not for a fixed day: an upload last
/// written two hours ago goes, one written now stays.
#[tokio::test]
async fn gc_purges_uploads_older_than_the_configured_ttl() {
    let r = Reg::start_with(tempfile::tempdir().expect("tempdir"), |c| {
        c.upload_ttl = Duration::from_secs(3600);
    })
    .await;
    let mut locations = Vec::new();
    for _ in 0..2 {
        let resp = r
            .req(Method::POST, "/v2/purge/app/blobs/uploads/")
            .await
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status(), 202);
        let location = resp.headers()["location"].to_str().expect("loc");
        locations.push(location.to_string());
    }
    let id = locations[0].rsplit('/').next().expect("id");
    let file = r.root.path().join("uploads").join(id);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .expect("the upload's file")
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(2 * 3600))
        .expect("set mtime");
    let report = client(&r)
        .await
        .collect_garbage(pb::CollectGarbageRequest {
            dry_run: false,
            grace: None,
        })
        .await
        .expect("gc")
        .into_inner();
    assert_eq!(report.uploads_purged, 1, "{report:?}");
    assert_eq!(r.get(&locations[0]).await.status(), 404, "the stale upload");
    assert!(!file.exists(), "its file is removed");
    assert_eq!(r.get(&locations[1]).await.status(), 204, "the fresh upload");
}

#[tokio::test]
async fn gc_frees_unreferenced_blobs_keeps_referenced_and_recent_ones() {
    let r = Reg::start().await;
    let (_, _) = r.push_image("gc/app", "keep", b"referenced layer").await;
    let (gone, _) = r.push_image("gc/app", "drop", b"orphaned layer").await;
    r.req(Method::DELETE, &format!("/v2/gc/app/manifests/{gone}"))
        .await
        .send()
        .await
        .expect("DELETE");
    let orphan = sha256(b"orphaned layer");
    let mut c = client(&r).await;

    // Within the grace period nothing is collected (pushes in flight).
    let report = c
        .collect_garbage(pb::CollectGarbageRequest {
            dry_run: true,
            grace: None,
        })
        .await
        .expect("gc")
        .into_inner();
    assert!(
        report.digests.is_empty(),
        "recent blobs are kept: {report:?}"
    );

    // No grace: everything unreferenced.
    let report = c
        .collect_garbage(pb::CollectGarbageRequest {
            dry_run: true,
            grace: Some(prost_types::Duration::default()),
        })
        .await
        .expect("gc")
        .into_inner();
    let mut freed = report.digests.clone();
    freed.sort();
    let mut expected = vec![orphan.clone(), gone.clone()];
    expected.sort();
    assert_eq!(freed, expected, "the deleted manifest and its only layer");
    // Dry run deleted nothing.
    assert_eq!(
        r.get(&format!("/v2/gc/app/blobs/{orphan}")).await.status(),
        200
    );

    let report = c
        .collect_garbage(pb::CollectGarbageRequest {
            dry_run: false,
            grace: Some(prost_types::Duration::default()),
        })
        .await
        .expect("gc")
        .into_inner();
    assert_eq!(report.digests.len(), 2);
    assert_eq!(
        r.get(&format!("/v2/gc/app/blobs/{orphan}")).await.status(),
        404
    );
    // What is referenced is intact: the kept image still pulls.
    let m = r.get("/v2/gc/app/manifests/keep").await;
    assert_eq!(m.status(), 200);
    assert_eq!(
        r.get(&format!("/v2/gc/app/blobs/{}", sha256(b"referenced layer")))
            .await
            .status(),
        200
    );
    assert_eq!(
        r.get(&format!(
            "/v2/gc/app/blobs/{}",
            sha256(br#"{"architecture":"amd64","os":"linux"}"#)
        ))
        .await
        .status(),
        200,
        "the config is shared by both images and still referenced"
    );
}

#[tokio::test]
async fn gc_running_while_pushes_continue_never_breaks_a_push() {
    let r = Reg::start().await;
    // Old garbage: blobs nothing references or links, written long ago.
    let mut garbage = Vec::new();
    for i in 0..10 {
        let data = format!("old garbage {i}").into_bytes();
        let d = sha256(&data);
        let hex = d.trim_start_matches("sha256:").to_string();
        let dir = r.root.path().join("blobs/sha256").join(&hex[..2]);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join(&hex);
        std::fs::write(&path, &data).expect("write");
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now() - Duration::from_secs(7200)))
            .expect("age");
        garbage.push(path);
    }
    let mut c = client(&r).await;
    // A short grace: long enough for one push's blobs to meet their
    // manifest, short enough that collections run all the time.
    let grace = Some(prost_types::Duration {
        seconds: 30,
        nanos: 0,
    });
    let pushes = async {
        for i in 0..20 {
            let layer = format!("layer {i}").into_bytes();
            r.push_image("gc/busy", &format!("t{i}"), &layer).await;
        }
    };
    let collections = async {
        for _ in 0..20 {
            c.collect_garbage(pb::CollectGarbageRequest {
                dry_run: false,
                grace,
            })
            .await
            .expect("gc");
        }
    };
    tokio::join!(pushes, collections);
    for i in 0..20 {
        let m = r.get(&format!("/v2/gc/busy/manifests/t{i}")).await;
        assert_eq!(m.status(), 200);
        let v: serde_json::Value = m.json().await.expect("json");
        for l in v["layers"].as_array().expect("layers") {
            let d = l["digest"].as_str().expect("digest");
            assert_eq!(
                r.head(&format!("/v2/gc/busy/blobs/{d}")).await.status(),
                200,
                "t{i} layer intact"
            );
        }
    }
    assert!(
        garbage.iter().all(|p| !p.exists()),
        "the old garbage was collected meanwhile"
    );
}
