//! DNS, asked with the real `dig`.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use crate::harness::{Running, dig, eventually, flags, section, status};

async fn web_fixture() -> Running {
    let s = Running::start().await;
    s.register(json!({"ID": "web-1", "Name": "web", "Address": "10.0.0.1", "Port": 8080, "Tags": ["blue", "v1"]}))
        .await;
    s.register(
        json!({"ID": "web-2", "Name": "web", "Address": "10.0.0.2", "Port": 8081, "Tags": ["green"],
        "Weights": {"Passing": 10, "Warning": 1}}),
    )
    .await;
    s.register(json!({"ID": "web-6", "Name": "web", "Address": "fd00::6", "Port": 8086}))
        .await;
    s
}

#[tokio::test]
async fn a_and_aaaa_list_healthy_instances() {
    let s = web_fixture().await;
    let out = s.dig(&["web.service.bronze", "A"]).await;
    assert_eq!(status(&out), "NOERROR");
    assert!(flags(&out).contains(&"aa".to_string()), "{out}");
    let mut ips: Vec<String> = section(&out, "ANSWER").into_iter().map(|r| r.2).collect();
    ips.sort();
    assert_eq!(ips, vec!["10.0.0.1", "10.0.0.2"]);
    let out = s.dig(&["WEB.Service.BRONZE", "AAAA", "+short"]).await;
    assert_eq!(out.trim(), "fd00::6");
    // The tag form.
    let out = s.dig(&["blue.web.service.bronze", "A", "+short"]).await;
    assert_eq!(out.trim(), "10.0.0.1");
    // The datacenter label of Consul's long form.
    let out = s
        .dig(&["green.web.service.dc1.bronze", "A", "+short"])
        .await;
    assert_eq!(out.trim(), "10.0.0.2");
    s.stop().await;
}

#[tokio::test]
async fn srv_has_port_weight_target_and_glue() {
    let s = web_fixture().await;
    for name in ["_web._tcp.service.bronze", "web.service.bronze"] {
        let out = s.dig(&[name, "SRV"]).await;
        let answers = section(&out, "ANSWER");
        assert_eq!(answers.len(), 3, "{out}");
        let additional = section(&out, "ADDITIONAL");
        for (_, rtype, data) in &answers {
            assert_eq!(rtype, "SRV");
            let f: Vec<&str> = data.split_whitespace().collect();
            let (prio, weight, port, target) = (f[0], f[1], f[2], f[3]);
            assert_eq!(prio, "1");
            let glue = additional
                .iter()
                .find(|r| r.0 == target)
                .unwrap_or_else(|| panic!("glue for {target}: {out}"));
            match port {
                "8080" => {
                    assert_eq!(target, "0a000001.addr.bronze.");
                    assert_eq!((glue.1.as_str(), glue.2.as_str()), ("A", "10.0.0.1"));
                }
                "8081" => {
                    assert_eq!(weight, "10");
                    assert_eq!(glue.2, "10.0.0.2");
                }
                "8086" => assert_eq!((glue.1.as_str(), glue.2.as_str()), ("AAAA", "fd00::6")),
                other => panic!("unexpected port {other}"),
            }
        }
    }
    // RFC 2782 with a tag instead of the protocol.
    let out = s
        .dig(&["_web._green.service.bronze", "SRV", "+short"])
        .await;
    assert_eq!(out.trim(), "1 10 8081 0a000002.addr.bronze.");
    // The SRV target resolves on its own.
    let out = s.dig(&["0a000002.addr.bronze", "A", "+short"]).await;
    assert_eq!(out.trim(), "10.0.0.2");
    s.stop().await;
}

#[tokio::test]
async fn answers_are_shuffled_per_query() {
    let s = Running::start().await;
    for i in 1..=8 {
        s.register(json!({"ID": format!("w{i}"), "Name": "web", "Address": format!("10.0.1.{i}"), "Port": 80})).await;
    }
    let mut orders = HashSet::new();
    for _ in 0..20 {
        orders.insert(s.dig(&["web.service.bronze", "A", "+short"]).await);
    }
    assert!(orders.len() > 1, "20 queries all gave the same order");
    s.stop().await;
}

#[tokio::test]
async fn unhealthy_instances_leave_answers() {
    let s = Running::with(|c| c.dns.only_passing = false).await;
    s.register(
        json!({"ID": "a", "Name": "api", "Address": "10.0.0.1", "Port": 80,
        "Check": {"CheckID": "a-ttl", "TTL": "1h", "Status": "passing"}}),
    )
    .await;
    s.register(
        json!({"ID": "b", "Name": "api", "Address": "10.0.0.2", "Port": 80,
        "Check": {"CheckID": "b-ttl", "TTL": "1h", "Status": "passing"}}),
    )
    .await;
    assert_eq!(s.put("/v1/agent/check/fail/a-ttl", "").await.0, 200);
    assert_eq!(s.put("/v1/agent/check/warn/b-ttl", "").await.0, 200);
    // Critical is out; warning stays in (as in Consul).
    let out = s.dig(&["api.service.bronze", "A", "+short"]).await;
    assert_eq!(out.trim(), "10.0.0.2");
    assert_eq!(s.put("/v1/agent/check/fail/b-ttl", "").await.0, 200);
    // No healthy instance left: NXDOMAIN with the SOA, like Consul.
    let out = s.dig(&["api.service.bronze", "A"]).await;
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert_eq!(section(&out, "AUTHORITY")[0].1, "SOA");
    // Recovery brings it back.
    assert_eq!(s.put("/v1/agent/check/pass/a-ttl", "").await.0, 200);
    let out = s.dig(&["api.service.bronze", "A", "+short"]).await;
    assert_eq!(out.trim(), "10.0.0.1");
    s.stop().await;

    let s = Running::with(|c| c.dns.only_passing = true).await;
    s.register(
        json!({"ID": "b", "Name": "api", "Address": "10.0.0.2", "Port": 80,
        "Check": {"CheckID": "b-ttl", "TTL": "1h", "Status": "warning"}}),
    )
    .await;
    assert_eq!(
        status(&s.dig(&["api.service.bronze", "A"]).await),
        "NXDOMAIN"
    );
    s.stop().await;
}

#[tokio::test]
async fn nodes_apex_and_negative_answers_carry_the_soa() {
    let s = Running::with(|c| c.dns.negative_ttl = Duration::from_secs(30)).await;
    s.register(json!({"ID": "a", "Name": "api", "Address": "10.0.0.1", "Port": 80}))
        .await;
    let out = s.dig(&["bronze-test.node.bronze", "A", "+short"]).await;
    assert_eq!(out.trim(), "127.0.0.1");
    // NXDOMAIN: unknown service, unknown node, garbage under the domain.
    for name in [
        "nope.service.bronze",
        "nope.node.bronze",
        "a.b.c.d.bronze",
        "zz.addr.bronze",
    ] {
        let out = s.dig(&[name, "A"]).await;
        assert_eq!(status(&out), "NXDOMAIN", "{name}: {out}");
        let soa = section(&out, "AUTHORITY");
        assert_eq!(soa.len(), 1, "{out}");
        assert_eq!(soa[0].0, "bronze.");
        assert!(
            soa[0].2.starts_with("ns.bronze. hostmaster.bronze."),
            "{out}"
        );
        assert!(
            soa[0].2.ends_with(" 30"),
            "negative TTL in the SOA minimum: {out}"
        );
    }
    // NODATA: the name exists, the type does not.
    for (name, t) in [
        ("api.service.bronze", "AAAA"),
        ("api.service.bronze", "TXT"),
        ("service.bronze", "A"),
    ] {
        let out = s.dig(&[name, t]).await;
        assert_eq!(status(&out), "NOERROR", "{out}");
        assert!(section(&out, "ANSWER").is_empty(), "{out}");
        assert_eq!(section(&out, "AUTHORITY")[0].1, "SOA", "{out}");
    }
    let out = s.dig(&["bronze", "SOA", "+short"]).await;
    assert!(out.starts_with("ns.bronze. hostmaster.bronze."), "{out}");
    let out = s.dig(&["bronze", "NS", "+short"]).await;
    assert_eq!(out.trim(), "ns.bronze.");
    s.stop().await;
}

#[tokio::test]
async fn udp_without_edns_stays_under_512_with_tc_and_tcp_is_whole() {
    let s = Running::start().await;
    for i in 0..60 {
        s.register(json!({"ID": format!("w{i}"), "Name": "big", "Address": format!("10.1.{}.{}", i / 200, i % 200 + 1), "Port": 80}))
            .await;
    }
    let out = s
        .dig(&["big.service.bronze", "SRV", "+noedns", "+ignore"])
        .await;
    assert!(flags(&out).contains(&"tc".to_string()), "TC set: {out}");
    let size: usize = out
        .split("MSG SIZE  rcvd: ")
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
        .expect("size");
    assert!(size <= 512, "{size} bytes");
    assert!(!section(&out, "ANSWER").is_empty());
    // EDNS with a bigger buffer: more fits, still within it.
    let out = s
        .dig(&["big.service.bronze", "SRV", "+bufsize=1232", "+ignore"])
        .await;
    let edns_answers = section(&out, "ANSWER").len();
    assert!(edns_answers > 10 && edns_answers < 60, "{edns_answers}");
    // TCP is never cut.
    let out = s.dig(&["big.service.bronze", "SRV", "+tcp"]).await;
    assert!(!flags(&out).contains(&"tc".to_string()), "{out}");
    assert_eq!(section(&out, "ANSWER").len(), 60);
    assert_eq!(section(&out, "ADDITIONAL").len(), 60);
    // Without +ignore dig retries over TCP by itself and gets everything.
    let out = s.dig(&["big.service.bronze", "A", "+noedns"]).await;
    assert_eq!(section(&out, "ANSWER").len(), 60);
    s.stop().await;
}

/// A service with 600 instances: its SRV answer over TCP runs past 16 KiB,
/// where a 14-bit compression pointer cannot reach. Every SRV target and
/// its glue must still name that instance's own address, as dig and
/// hickory-proto read them (before, glue past 0x3FFF pointed elsewhere).
#[tokio::test]
async fn srv_over_tcp_with_600_instances_keeps_every_target_and_glue() {
    const N: usize = 600;
    let s = Running::start().await;
    let ip = |i: usize| format!("10.2.{}.{}", i / 200, i % 200 + 1);
    for i in 0..N {
        s.register(
            json!({"ID": format!("m{i}"), "Name": "many", "Address": ip(i), "Port": 10000 + i}),
        )
        .await;
    }
    let out = s.dig(&["many.service.bronze", "SRV", "+tcp"]).await;
    assert!(!flags(&out).contains(&"tc".to_string()), "{out}");
    let answers = section(&out, "ANSWER");
    let additional = section(&out, "ADDITIONAL");
    assert_eq!(answers.len(), N);
    assert_eq!(additional.len(), N);
    let mut seen = HashSet::new();
    for (_, rtype, data) in &answers {
        assert_eq!(rtype, "SRV");
        let f: Vec<&str> = data.split_whitespace().collect();
        let port: usize = f[2].parse().expect("port");
        let i = port - 10000;
        let expected = ip(i);
        let octets: Vec<u8> = expected
            .split('.')
            .map(|o| o.parse().expect("octet"))
            .collect();
        let hex: String = octets.iter().map(|o| format!("{o:02x}")).collect();
        assert_eq!(f[3], format!("{hex}.addr.bronze."), "target of port {port}");
        let glue: Vec<_> = additional.iter().filter(|r| r.0 == f[3]).collect();
        assert_eq!(glue.len(), 1, "one glue record for {}", f[3]);
        assert_eq!(
            (glue[0].1.as_str(), glue[0].2.as_str()),
            ("A", expected.as_str())
        );
        assert!(seen.insert(port), "port {port} twice");
    }
    // The same answer, read by hickory-proto from the raw TCP stream.
    let msg = tcp_query(s.dns, "many.service.bronze.", 33).await;
    let mut targets = HashSet::new();
    for r in &msg.answers {
        if let hickory_proto::rr::RData::SRV(srv) = &r.data {
            targets.insert(srv.target.to_ascii());
        }
    }
    assert_eq!(targets.len(), N);
    let mut glued = 0;
    for r in &msg.additionals {
        if let hickory_proto::rr::RData::A(a) = &r.data {
            let name = r.name.to_ascii();
            let hex: String = a.0.octets().iter().map(|o| format!("{o:02x}")).collect();
            assert_eq!(name, format!("{hex}.addr.bronze."));
            assert!(targets.contains(&name), "{name} is a target");
            glued += 1;
        }
    }
    assert_eq!(glued, N);
    s.stop().await;
}

/// One query over TCP (length-prefixed), parsed by hickory-proto.
async fn tcp_query(
    server: std::net::SocketAddr,
    name: &str,
    qtype: u16,
) -> hickory_proto::op::Message {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(u8::try_from(label.len()).expect("label"));
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    let mut conn = tokio::net::TcpStream::connect(server).await.expect("tcp");
    let len = u16::try_from(q.len()).expect("len");
    conn.write_all(&len.to_be_bytes()).await.expect("write");
    conn.write_all(&q).await.expect("write");
    let len = conn.read_u16().await.expect("length");
    let mut buf = vec![0; usize::from(len)];
    conn.read_exact(&mut buf).await.expect("answer");
    hickory_proto::op::Message::from_vec(&buf).expect("hickory parses the answer")
}

#[tokio::test]
async fn edns_is_echoed_and_unknown_versions_get_badvers() {
    let s = web_fixture().await;
    let out = s.dig(&["web.service.bronze", "A", "+bufsize=4096"]).await;
    assert!(out.contains("; EDNS: version: 0"), "{out}");
    let out = s
        .dig(&["web.service.bronze", "A", "+edns=1", "+noednsneg"])
        .await;
    assert_eq!(status(&out), "BADVERS", "{out}");
    let out = s.dig(&["web.service.bronze", "A", "+noedns"]).await;
    assert!(!out.contains("OPT PSEUDOSECTION"), "{out}");
    s.stop().await;
}

#[tokio::test]
async fn outside_names_are_refused_or_forwarded_and_transfers_refused() {
    let s = web_fixture().await;
    let out = s.dig(&["example.com", "A"]).await;
    assert_eq!(status(&out), "REFUSED");
    let out = s.dig(&["bronze", "AXFR"]).await;
    assert!(
        out.contains("Transfer failed") || out.contains("REFUSED"),
        "{out}"
    );

    // A second server, authoritative for "other.", is this one's recursor.
    let upstream = Running::with(|c| c.dns.domain = "other.".into()).await;
    upstream
        .register(json!({"ID": "x", "Name": "db", "Address": "10.9.9.9", "Port": 5432}))
        .await;
    let recursor = upstream.dns.to_string();
    let s2 = Running::with(|c| c.dns.recursors = vec![recursor]).await;
    let out = s2.dig(&["db.service.other", "A"]).await;
    assert_eq!(section(&out, "ANSWER")[0].2, "10.9.9.9", "{out}");
    assert!(flags(&out).contains(&"ra".to_string()), "{out}");
    let out = s2.dig(&["db.service.other", "A", "+tcp", "+short"]).await;
    assert_eq!(out.trim(), "10.9.9.9");
    upstream.stop().await;
    // The recursor is gone: SERVFAIL, never silence.
    let out = s2.dig(&["db.service.other", "A"]).await;
    assert_eq!(status(&out), "SERVFAIL", "{out}");
    s2.stop().await;
    s.stop().await;
}

#[tokio::test]
async fn consul_domain_is_a_drop_in() {
    let s = Running::with(|c| c.dns.domain = "consul.".into()).await;
    s.register(json!({"ID": "r1", "Name": "redis", "Address": "10.0.0.7", "Port": 6379}))
        .await;
    let out = s.dig(&["redis.service.consul", "SRV", "+short"]).await;
    assert_eq!(out.trim(), "1 1 6379 0a000007.addr.consul.");
    let out = s.dig(&["redis.service.dc1.consul", "A", "+short"]).await;
    assert_eq!(out.trim(), "10.0.0.7");
    assert_eq!(
        status(&s.dig(&["redis.service.bronze", "A"]).await),
        "REFUSED"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_registration_is_visible_in_dns_at_once_and_gone_at_once() {
    let s = Running::start().await;
    s.register(json!({"ID": "q", "Name": "quick", "Address": "10.0.0.9", "Port": 1}))
        .await;
    // No delay: the registration call returned, so DNS answers.
    assert_eq!(
        s.dig(&["quick.service.bronze", "A", "+short"]).await.trim(),
        "10.0.0.9"
    );
    assert_eq!(s.put("/v1/agent/service/deregister/q", "").await.0, 200);
    assert_eq!(
        status(&s.dig(&["quick.service.bronze", "A"]).await),
        "NXDOMAIN"
    );
    s.stop().await;
}

#[tokio::test]
async fn hostile_packets_get_formerr_or_nothing_and_the_server_lives() {
    use std::net::UdpSocket;
    let s = web_fixture().await;
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    // Two questions: FORMERR with the same ID.
    let mut two = vec![0x42, 0x42, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0];
    two.extend_from_slice(&[3, b'w', b'e', b'b', 0, 0, 1, 0, 1]);
    sock.send_to(&two, s.dns).expect("send");
    let n = sock.recv(&mut buf).expect("an answer");
    assert_eq!(&buf[..2], &[0x42, 0x42]);
    assert_eq!(buf[3] & 0x0F, 1, "FORMERR");
    assert!(n >= 12);
    // Garbage and a response packet: no answer (no reflection).
    for junk in [
        vec![1, 2, 3],
        vec![0x42, 0x42, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1],
    ] {
        sock.send_to(&junk, s.dns).expect("send");
        assert!(sock.recv(&mut buf).is_err(), "no answer to {junk:?}");
    }
    // A label longer than 63 and a pointer loop: FORMERR.
    let mut long = vec![0x43, 0x43, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 64];
    long.extend_from_slice(&[b'a'; 64]);
    long.extend_from_slice(&[0, 0, 1, 0, 1]);
    sock.send_to(&long, s.dns).expect("send");
    sock.recv(&mut buf).expect("an answer");
    assert_eq!(buf[3] & 0x0F, 1, "FORMERR");
    // Still serving.
    eventually(Duration::from_secs(5), "server answers", || async {
        dig(s.dns, &["web.service.bronze", "A", "+short"])
            .await
            .contains("10.0.0.1")
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn ttls_are_configurable() {
    let s = Running::with(|c| {
        c.dns.service_ttl = Duration::from_secs(30);
        c.dns.node_ttl = Duration::from_secs(60);
    })
    .await;
    s.register(json!({"ID": "a", "Name": "api", "Address": "10.0.0.1", "Port": 80}))
        .await;
    let ttl_of = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
            .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_string())
            .collect()
    };
    let out = s
        .dig(&[
            "api.service.bronze",
            "SRV",
            "+noall",
            "+answer",
            "+additional",
        ])
        .await;
    assert_eq!(ttl_of(&out), vec!["30", "30"], "{out}");
    let out = s
        .dig(&["bronze-test.node.bronze", "A", "+noall", "+answer"])
        .await;
    assert_eq!(ttl_of(&out), vec!["60"], "{out}");
    s.stop().await;
}
