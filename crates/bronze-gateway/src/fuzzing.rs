//! The properties the fuzz targets (`fuzz/fuzz_targets/gateway_*.rs`)
//! check on every input, here so that the committed corpus is replayed by
//! `cargo test` too. Each function panics when a property is broken.

use std::sync::{Arc, LazyLock};

use crate::proxy::{Chunked, Downstream, Proxy};

/// The first byte says where to split the rest: the scanner finds the same
/// end (or the same refusal) whole or in two pieces, never past the bytes
/// it was given.
pub fn chunked(data: &[u8]) {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let whole = Chunked::default().scan(body);
    if let Ok(Some(end)) = whole {
        assert!(end <= body.len());
    }
    let cut = usize::from(cut).min(body.len());
    let mut halves = Chunked::default();
    let split = match halves.scan(&body[..cut]) {
        Ok(None) => halves.scan(&body[cut..]).map(|e| e.map(|e| cut + e)),
        done => done,
    };
    assert_eq!(whole, split);
}

/// A gateway with routes of every kind the HTTP/1.1 path plans for: plain,
/// stripped and rewritten paths, hosts, headers, methods, preserve_host,
/// and plugins (key-auth, hmac-auth, correlation-id, request-transformer
/// with a replaced path, request-termination).
struct Fixture {
    runtime: tokio::runtime::Runtime,
    proxy: Arc<Proxy>,
    conn: Downstream,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let doc = crate::declarative::parse(
        br#"{"_format_version": "3.0",
        "consumers": [{"username": "u", "keyauth_credentials": [{"key": "k"}],
                       "hmacauth_credentials": [{"username": "h", "secret": "s"}]}],
        "services": [
          {"name": "a", "url": "http://127.0.0.1:9/base", "routes": [
            {"name": "root", "paths": ["/"]},
            {"name": "api", "paths": ["/api"], "strip_path": true, "methods": ["GET", "POST"]},
            {"name": "re", "paths": ["~/u/\\d+"]},
            {"name": "host", "hosts": ["*.example.com"], "preserve_host": true},
            {"name": "hdr", "paths": ["/h"], "headers": {"x-v": ["1"]}},
            {"name": "auth", "paths": ["/auth"], "plugins": [{"name": "key-auth"},
              {"name": "request-transformer", "config": {"add": {"headers": ["x-added:1"]}}}]},
            {"name": "stop", "paths": ["/stop"], "plugins": [{"name": "request-termination"}]},
            {"name": "hmac", "paths": ["/hmac"], "plugins": [{"name": "hmac-auth"},
              {"name": "correlation-id", "config": {"echo_downstream": true}},
              {"name": "request-transformer", "config": {"replace": {"uri": "/replaced"}}}]}
          ]}]}"#,
    )
    .expect("fixture config");
    let proxy = {
        let _enter = runtime.enter();
        let table = crate::router::Table::build(&doc).expect("fixture table");
        let mut metrics = bronze_telemetry::Metrics::new("fuzz");
        let gm = Arc::new(crate::metrics::GatewayMetrics::register(&mut metrics));
        let tls = crate::upstream::tls::Clients::new("").expect("TLS client configurations");
        let idle = std::time::Duration::from_secs(60);
        // The peer is a trusted balancer: the client's X-Forwarded-* and
        // its address list are read too.
        let trust = crate::proxy::Trust {
            ips: crate::proxy::TrustedIps::parse("10.0.0.0/8").expect("trusted_ips"),
            real_ip: crate::proxy::RealIp {
                header: http::HeaderName::from_static("x-forwarded-for"),
                recursive: true,
            },
        };
        Arc::new(Proxy::new(table, gm, idle, tls, trust))
    };
    let conn = Downstream::new(
        std::net::SocketAddr::from(([10, 0, 0, 1], 4242)),
        false,
        None,
        true,
    );
    Fixture {
        runtime,
        proxy,
        conn,
    }
});

/// The fixture's proxy, for unit tests of what it writes.
#[cfg(test)]
pub(crate) fn proxy_for_tests() -> Arc<Proxy> {
    FIXTURE.proxy.clone()
}

/// Any bytes from a client as a request head: the HTTP/1.1 path takes it
/// or leaves it to hyper, never panics, and what it would send upstream is
/// one well-formed HTTP/1.1 request head, with no `Transfer-Encoding`, at
/// most one `Content-Length`, no header the client could use to smuggle
/// a second message, and one each of the gateway's `X-Forwarded-For`,
/// `X-Forwarded-Proto` and `X-Real-IP` (the last a valid address, whatever
/// the client's address list said).
pub fn request_head(data: &[u8]) {
    let f = &*FIXTURE;
    let _enter = f.runtime.enter();
    if let Some(upstream) = crate::proxy::plan_for_fuzzing(&f.proxy, &f.conn, data) {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&upstream) {
            Ok(httparse::Status::Complete(n)) => assert_eq!(
                n,
                upstream.len(),
                "one head, nothing after it: {:?}",
                String::from_utf8_lossy(&upstream)
            ),
            other => panic!(
                "malformed upstream head ({other:?}): {:?}",
                String::from_utf8_lossy(&upstream)
            ),
        }
        let count = |name: &str| {
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .count()
        };
        assert_eq!(count("transfer-encoding"), 0);
        assert!(count("content-length") <= 1);
        assert_eq!(count("host"), 1);
        assert_eq!(count("connection"), 0);
        assert_eq!(count("x-forwarded-for"), 1);
        assert_eq!(count("x-forwarded-proto"), 1);
        assert!(count("x-forwarded-host") <= 1);
        assert_eq!(count("x-real-ip"), 1);
        let real_ip = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("x-real-ip"))
            .map(|h| h.value);
        assert!(
            real_ip.is_some_and(
                |v| std::str::from_utf8(v).is_ok_and(|v| v.parse::<std::net::IpAddr>().is_ok())
            ),
            "x-real-ip {real_ip:?}"
        );
    }
}

/// The first byte is the boundary's length (the bytes after it, when
/// they make one); the rest is a `multipart/form-data` body. Parts are
/// read without panicking, each value lies inside the body, and the parts
/// written out again with the same boundary read back the same.
pub fn multipart(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 71).min(rest.len());
    let (boundary, body) = rest.split_at(n);
    let Some(Ok(boundary)) = std::str::from_utf8(boundary)
        .ok()
        .and_then(|b| crate::multipart::boundary(&format!("multipart/form-data; boundary={b}")))
    else {
        return;
    };
    let Ok(parts) = crate::multipart::parts(body, &boundary) else {
        return;
    };
    let range = body.as_ptr_range();
    let mut again = Vec::new();
    for p in &parts {
        let inside = p.value.as_ptr_range();
        assert!(range.start <= inside.start && inside.end <= range.end);
        assert!(!p.name.is_empty());
        again.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"\r\n\r\n",
                p.name
            )
            .as_bytes(),
        );
        again.extend_from_slice(p.value);
        again.extend_from_slice(b"\r\n");
    }
    again.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let reread = crate::multipart::parts(&again, &boundary).expect("written parts read back");
    assert_eq!(parts, reread);
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunked_corpus_replays() {
        bronze_runtime::replay_fuzz_corpus("gateway_chunked", super::chunked);
    }

    #[test]
    fn multipart_corpus_replays() {
        bronze_runtime::replay_fuzz_corpus("admin_multipart", super::multipart);
    }

    #[test]
    fn request_head_corpus_replays() {
        bronze_runtime::replay_fuzz_corpus("gateway_request", super::request_head);
    }

    #[test]
    fn the_fixture_forwards_plain_requests_and_leaves_the_rest() {
        let f = &*super::FIXTURE;
        let _enter = f.runtime.enter();
        let plan = |data: &[u8]| crate::proxy::plan_for_fuzzing(&f.proxy, &f.conn, data);
        let head = plan(b"GET /api/x?y=1 HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n")
            .expect("forwarded");
        let head = String::from_utf8(head).expect("text");
        // (No target is picked here: the client's Host goes up.)
        assert!(
            head.starts_with("GET /base/x?y=1 HTTP/1.1\r\nhost: a\r\n"),
            "{head}"
        );
        assert!(
            head.contains("x-forwarded-for: 1.2.3.4, 10.0.0.1\r\n"),
            "{head}"
        );
        // Routes matched on a header read from the parsed head: with it,
        // the header route (its path stripped); without, the root route.
        let line = |data: &[u8]| {
            let head = plan(data).expect("forwarded");
            let end = head.iter().position(|&b| b == b'\r').expect("line");
            String::from_utf8_lossy(&head[..end]).into_owned()
        };
        assert_eq!(
            line(b"GET /h HTTP/1.1\r\nHost: a\r\nX-V: 1\r\n\r\n"),
            "GET /base HTTP/1.1"
        );
        assert_eq!(
            line(b"GET /h HTTP/1.1\r\nHost: a\r\n\r\n"),
            "GET /base/h HTTP/1.1"
        );
        // Plugins rewrite on this path too.
        let head = plan(b"GET /auth HTTP/1.1\r\nHost: a\r\napikey: k\r\n\r\n").expect("forwarded");
        assert!(String::from_utf8_lossy(&head).contains("x-added: 1\r\n"));
        for general in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /auth HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(plan(general), None, "{:?}", String::from_utf8_lossy(general));
        }
    }
}
