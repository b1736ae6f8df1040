//! The HTTP/1.1 path (`proxy::h1`) against scripted backends: upstream
//! connections reused and replaced, chunked and close-delimited answers,
//! HEAD, pipelining, and a connection that moves to the general path
//! mid-way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{curl, echo, gateway, gateway_with, raw, s};

/// How a scripted backend answers one request head.
type Script = fn(&str) -> (&'static [u8], bool);

/// Connections a scripted backend accepted, those its peer closed, and
/// those it closed itself.
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    closed_by_peer: AtomicUsize,
    closed_here: AtomicUsize,
}

/// A backend that reads bodyless request heads and answers each with
/// `script` (the answer's bytes, and whether to close the connection
/// afterwards without saying so).
async fn scripted(script: Script) -> (SocketAddr, Arc<Counts>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counts = Arc::new(Counts::default());
    let count = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.accepted.fetch_add(1, Ordering::SeqCst);
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                count.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end + 4);
                    let (answer, close) = script(&head);
                    if conn.write_all(answer).await.is_err() {
                        return;
                    }
                    if close {
                        // Closed a moment later, as a keep-alive timeout
                        // would: the gateway holds it idle by then.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        drop(conn);
                        count.closed_here.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    (addr, counts)
}

/// A backend that answers each request head `delay` after it came, with
/// `slow`, on a kept-alive connection.
async fn slow(delay: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        tokio::time::sleep(delay).await;
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow";
                        if conn.write_all(answer).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

fn one_route(backend: SocketAddr) -> serde_json::Value {
    serde_json::json!({
        "_format_version": "3.0",
        "services": [{"name": "b", "url": format!("http://{backend}"),
            "routes": [{"name": "all", "paths": ["/"]}]}]
    })
}

#[tokio::test]
async fn one_upstream_connection_carries_many_requests_and_a_closed_one_is_replaced() {
    let (backend, accepted) =
        scripted(|_| (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false)).await;
    let gw = gateway(one_route(backend)).await;
    for i in 0..20 {
        // A new client connection each time; the upstream one is pooled.
        let (code, body) = curl(s(&[&format!("http://{}/n/{i}", gw.addr)])).await;
        assert_eq!((code, body.as_str()), (200, "ok"));
    }
    assert_eq!(
        accepted.accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection"
    );

    // A backend that closes every connection after its answer: the pooled
    // connection is found closed and replaced, and no request fails.
    let (closing, accepted) =
        scripted(|_| (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true)).await;
    let gw = gateway(one_route(closing)).await;
    for i in 0..5 {
        let (code, body) = curl(s(&[&format!("http://{}/c/{i}", gw.addr)])).await;
        assert_eq!((code, body.as_str()), (200, "ok"), "request {i}");
        // The next request comes after the backend closed this one's
        // connection, idle in the gateway's pool.
        super::eventually(Duration::from_secs(10), "the backend closed", || {
            accepted.closed_here.load(Ordering::SeqCst) == i + 1
        })
        .await;
    }
    assert_eq!(accepted.accepted.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn chunked_answers_pass_whole_and_broken_framing_cuts_the_connection() {
    let (backend, _) = scripted(|head| {
        if head.starts_with("GET /broken") {
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
                false,
            )
        } else {
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
                  5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n",
                false,
            )
        }
    })
    .await;
    let gw = gateway(one_route(backend)).await;
    // Two requests on one client connection: the second is answered only
    // if the first answer's end was found exactly.
    let url = format!("http://{}/chunks", gw.addr);
    let (code, body) = curl(s(&["--raw", &url, &url])).await;
    assert_eq!(code, 200);
    let once = "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n";
    // (curl's status line for the first URL sits between the two.)
    assert_eq!(
        body.matches(once).count(),
        2,
        "forwarded as it came: {body:?}"
    );
    let (code, body) = curl(s(&[&url])).await;
    assert_eq!((code, body.as_str()), (200, "hello world"));

    // Broken framing: the client sees its connection end early (curl's
    // exit code is not 0), never a body that looks complete.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-s", "-m", "10", &format!("http://{}/broken", gw.addr)])
            .output()
            .expect("curl runs")
    })
    .await
    .expect("join");
    assert!(!out.status.success(), "{out:?}");
}

#[tokio::test]
async fn answers_without_a_length_end_with_the_connection_and_head_has_no_body() {
    let (backend, _) = scripted(|head| {
        if head.starts_with("HEAD") {
            (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", false)
        } else {
            (
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end",
                true,
            )
        }
    })
    .await;
    let gw = gateway(one_route(backend)).await;
    let answer = raw(gw.addr, b"GET /eof HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("connection: close\r\n"),
        "{answer}"
    );
    assert!(answer.ends_with("\r\n\r\nuntil the end"), "{answer}");

    // HEAD: the length is the GET's, no body follows; the connection
    // carries the next request.
    let answer = raw(
        gw.addr,
        b"HEAD /h HTTP/1.1\r\nhost: x\r\n\r\nHEAD /h HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
    assert_eq!(answer.matches("content-length: 100").count(), 2, "{answer}");
}

#[tokio::test]
async fn pipelined_requests_and_a_move_to_the_general_path_on_one_connection() {
    let backend = echo("p").await;
    let gw = gateway(one_route(backend)).await;
    // Two pipelined GETs (this path), a chunked POST (hyper takes the
    // connection over from its first byte), then a last GET.
    let answer = raw(
        gw.addr,
        b"GET /one HTTP/1.1\r\nhost: x\r\n\r\nGET /two HTTP/1.1\r\nhost: x\r\n\r\n\
          POST /three HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /four HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    let order: Vec<usize> = ["\"/one\"", "\"/two\"", "\"/three\"", "\"/four\""]
        .iter()
        .map(|u| {
            answer
                .find(u)
                .unwrap_or_else(|| panic!("{u} missing: {answer}"))
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 4, "{answer}");
    assert!(answer.contains("\"body_len\":3"), "{answer}");
}

#[tokio::test]
async fn a_body_sent_in_pieces_streams_through_and_a_plugin_answers_the_next_request() {
    let backend = echo("b").await;
    let mut config = one_route(backend);
    config["services"][0]["routes"]
        .as_array_mut()
        .expect("routes")
        .push(serde_json::json!({"name": "closed", "paths": ["/closed"],
            "plugins": [{"name": "request-termination",
                         "config": {"status_code": 403, "message": "closed"}}]}));
    let gw = gateway(config).await;
    // A body larger than any buffer, sent in pieces, then a request on the
    // same connection.
    let mut conn = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let len = 3 << 20;
    conn.write_all(
        format!("PUT /up HTTP/1.1\r\nhost: x\r\ncontent-length: {len}\r\n\r\n").as_bytes(),
    )
    .await
    .expect("head");
    for _ in 0..(len / (64 << 10)) {
        conn.write_all(&[b'x'; 64 << 10]).await.expect("body");
    }
    conn.write_all(b"GET /closed HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("next");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut out))
        .await
        .expect("answers in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.contains(&format!("\"body_len\":{len}")), "{answer}");
    assert!(answer.contains("HTTP/1.1 403 Forbidden"), "{answer}");
    assert!(answer.contains("{\"message\":\"closed\"}"), "{answer}");
}

#[tokio::test]
async fn idle_client_and_upstream_connections_close_after_their_timeouts() {
    let (backend, counts) =
        scripted(|_| (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false)).await;
    let gw = gateway_with(one_route(backend), |c| {
        c.keepalive_timeout = Duration::from_millis(600);
        c.upstream_keepalive_idle_timeout = Duration::from_millis(600);
    })
    .await;

    // A client connection that stays idle after one answer is closed.
    let mut conn = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    conn.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with("\r\n\r\nok"));
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "closed by the gateway: {closed:?}"
    );

    // The idle upstream connection was closed too (the backend saw it go),
    // and the next request opens a new one.
    for _ in 0..100 {
        if counts.closed_by_peer.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counts.closed_by_peer.load(Ordering::SeqCst), 1);
    let (code, _) = curl(s(&[&format!("http://{}/b", gw.addr)])).await;
    assert_eq!(code, 200);
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    let _ = gw.admin;
}

#[tokio::test]
async fn a_request_in_flight_when_draining_starts_is_answered_and_told_the_connection_ends() {
    // A backend that says when the request reached it, and answers only
    // when the test lets it: the request is in flight when the drain
    // starts, however slow the machine.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let backend = listener.local_addr().expect("addr");
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel();
    let (answer_tx, answer) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the gateway closed before sending the head");
            buf.extend_from_slice(&chunk[..n]);
        }
        let _ = arrived_tx.send(());
        let _ = answer.await;
        let _ = conn
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")
            .await;
        // Kept open: the gateway reads the answer by its length.
        let _ = conn.read(&mut chunk).await;
    });
    let gw = gateway(one_route(backend)).await;
    let mut conn = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    conn.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    arrived.await.expect("the request reached the backend");
    gw._shutdown.trigger();
    // The drain has started; now the backend answers.
    answer_tx.send(()).expect("backend waits");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out))
        .await
        .expect("answered and closed in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nslow"), "{answer}");
}

/// Plugins that only add response headers and count (rate-limiting,
/// prometheus) get the upstream's headers written as they came, with
/// rate-limiting's in place of the upstream's of the same name; a plugin
/// that changes the upstream's headers (response-transformer) still sees
/// them, on the same connection.
#[tokio::test]
async fn plugin_headers_replace_the_upstreams_of_the_same_name() {
    let (backend, _) = scripted(|_| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-custom: kept\r\n\
              x-ratelimit-limit-minute: 999\r\nx-remove-me: yes\r\n\r\nok",
            false,
        )
    })
    .await;
    let mut config = one_route(backend);
    config["services"][0]["routes"] = serde_json::json!([
        {"name": "counted", "paths": ["/counted"], "plugins": [
            {"name": "rate-limiting", "config": {"minute": 5}},
            {"name": "prometheus", "config": {"status_code_metrics": true}}]},
        {"name": "changed", "paths": ["/changed"], "plugins": [
            {"name": "rate-limiting", "config": {"minute": 5}},
            {"name": "response-transformer", "config": {"remove": {"headers": ["x-remove-me"]}}}]}
    ]);
    let gw = gateway(config).await;
    let answer = raw(
        gw.addr,
        b"GET /counted HTTP/1.1\r\nhost: x\r\n\r\nGET /changed HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    let (counted, changed) = answer
        .split_once("\r\n\r\nok")
        .unwrap_or_else(|| panic!("two answers: {answer}"));
    for (name, one) in [("counted", counted), ("changed", changed)] {
        assert!(one.contains("http/1.1 200 ok\r\n"), "{name}: {one}");
        assert!(one.contains("x-custom: kept\r\n"), "{name}: {one}");
        assert_eq!(
            one.matches("x-ratelimit-limit-minute").count(),
            1,
            "{name}: {one}"
        );
        assert!(
            one.contains("x-ratelimit-limit-minute: 5\r\n"),
            "{name}: {one}"
        );
        assert!(
            one.contains("x-ratelimit-remaining-minute: 4\r\n"),
            "{name}: {one}"
        );
        assert_eq!(
            one.matches("content-length: 2\r\n").count(),
            1,
            "{name}: {one}"
        );
    }
    assert!(counted.contains("x-remove-me: yes\r\n"), "{counted}");
    assert!(!changed.contains("x-remove-me"), "{changed}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
}

/// The connection's one timer is re-armed lazily (`proxy::until`): a
/// timer still armed for an earlier instant (the 400 ms keep-alive wait)
/// does not cut a later deadline short (the service's 3 s read timeout, an
/// answer after 900 ms), and a deadline earlier than the one armed (a
/// 300 ms read timeout after the 3 s one, on the same connection) fires on
/// time (504, not the answer that comes at 900 ms).
#[tokio::test]
async fn timers_armed_for_other_deadlines_neither_cut_short_nor_fire_late() {
    let backend = slow(Duration::from_millis(900)).await;
    let doc = serde_json::json!({
        "_format_version": "3.0",
        "services": [
            {"name": "patient", "url": format!("http://{backend}"), "read_timeout": 3000,
             "routes": [{"name": "patient", "paths": ["/patient"]}]},
            {"name": "hasty", "url": format!("http://{backend}"), "read_timeout": 300,
             "routes": [{"name": "hasty", "paths": ["/hasty"]}]}
        ]
    });
    let gw = gateway_with(doc, |c| c.keepalive_timeout = Duration::from_millis(400)).await;

    let mut conn = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    conn.write_all(b"GET /patient HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("answered")
        .expect("read");
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nslow"), "{answer}");

    conn.write_all(b"GET /hasty HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 504 "), "{answer}");
    assert!(!answer.contains("slow"), "{answer}");
}
