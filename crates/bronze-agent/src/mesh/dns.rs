//! The stack network's DNS responder, on the bridge gateway's address,
//! port 53, UDP. Task containers name it as their DNS server
//! (`HostConfig.dns`); Docker's embedded DNS (127.0.0.11 in every
//! container on a user-defined network) answers container names itself and
//! forwards the rest here.
//!
//! | question | answer |
//! |---|---|
//! | A of a stack service's short name (`api`) or full name (`shop_api`) | its virtual IP on this host |
//! | any other type of such a name | no records (NOERROR), so resolvers do not give up on the name |
//! | anything else | forwarded to the host's resolvers (`/etc/resolv.conf`); none, or none answers: SERVFAIL |
//! | not a query, or unreadable | FORMERR (or nothing, when even the id is missing) |

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bronze_runtime::Shutdown;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use parking_lot::RwLock;
use tokio::net::UdpSocket;

/// Names this responder owns: lower-case name without the trailing dot ->
/// the addresses it answers.
pub type Names = Arc<RwLock<std::collections::HashMap<String, Vec<Ipv4Addr>>>>;

/// Time-to-live of the answers: short, since a service's instances (for
/// `dnsrr`) change; a virtual IP itself stays while the stack runs here.
const TTL: u32 = 5;

/// What to do with a packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not a name of the stack: ask the host's resolvers.
    Forward,
    /// Not even a DNS header: say nothing.
    Drop,
}

/// The answer to one query packet, from `lookup` (a name, lower case, no
/// trailing dot -> its addresses when the stack owns it).
pub fn answer(packet: &[u8], lookup: impl Fn(&str) -> Option<Vec<Ipv4Addr>>) -> Answer {
    let Ok(query) = Message::from_vec(packet) else {
        if packet.len() < 2 {
            return Answer::Drop;
        }
        let id = u16::from_be_bytes([packet[0], packet[1]]);
        return reply(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr));
    };
    let id = query.metadata.id;
    if query.metadata.message_type != MessageType::Query
        || query.metadata.op_code != OpCode::Query
        || query.queries.len() != 1
    {
        return reply(Message::error_msg(
            id,
            query.metadata.op_code,
            ResponseCode::FormErr,
        ));
    }
    let q = &query.queries[0];
    let name = q.name().to_ascii().to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    let Some(addresses) = lookup(name) else {
        return Answer::Forward;
    };
    let mut m = Message::response(id, OpCode::Query);
    m.metadata.authoritative = true;
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_query(q.clone());
    if q.query_type() == RecordType::A {
        for ip in addresses {
            m.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(ip))));
        }
    }
    reply(m)
}

fn reply(m: Message) -> Answer {
    m.to_vec().map_or(Answer::Drop, Answer::Reply)
}

/// SERVFAIL for `packet`'s id (a forward that got no answer).
fn servfail(packet: &[u8]) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
    Message::error_msg(id, OpCode::Query, ResponseCode::ServFail)
        .to_vec()
        .ok()
}

/// The nameservers of `/etc/resolv.conf`-formatted text, port 53.
pub fn resolvers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// How long a forwarded question waits for each upstream resolver.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves `socket` until `stop`: answers the stack's names from `names`,
/// forwards the rest to `upstream` (one task per forwarded question).
pub async fn serve(
    socket: UdpSocket,
    names: Names,
    upstream: Arc<Vec<SocketAddr>>,
    stop: Shutdown,
) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "stack DNS receive failed");
                    continue;
                }
            },
            () = stop.wait() => return,
        };
        let packet = &buf[..n];
        let answer = {
            let names = names.read();
            answer(packet, |name| names.get(name).cloned())
        };
        match answer {
            Answer::Reply(bytes) => {
                let _ = socket.send_to(&bytes, peer).await;
            }
            Answer::Drop => {}
            Answer::Forward => {
                let packet = packet.to_vec();
                let socket = socket.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let bytes = match forward(&packet, &upstream).await {
                        Some(b) => Some(b),
                        None => servfail(&packet),
                    };
                    if let Some(bytes) = bytes {
                        let _ = socket.send_to(&bytes, peer).await;
                    }
                });
            }
        }
    }
}

/// Asks each upstream in turn; the first answer with the question's id.
async fn forward(packet: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for server in upstream {
        let bind: SocketAddr = if server.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(s) = UdpSocket::bind(bind).await else {
            continue;
        };
        if s.send_to(packet, server).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(FORWARD_TIMEOUT, s.recv(&mut buf)).await
            && n >= 2
            && buf[..2] == packet[..2]
        {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
        m.to_vec().expect("encode")
    }

    fn lookup(name: &str) -> Option<Vec<Ipv4Addr>> {
        match name {
            "api" | "shop_api" => Some(vec![Ipv4Addr::new(10, 210, 3, 130)]),
            "db" => Some(vec![
                Ipv4Addr::new(10, 210, 3, 5),
                Ipv4Addr::new(10, 210, 3, 6),
            ]),
            _ => None,
        }
    }

    fn decoded(a: Answer) -> Message {
        match a {
            Answer::Reply(b) => Message::from_vec(&b).expect("a DNS message"),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn addresses(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn service_names_answer_their_virtual_ip() {
        for name in ["api", "api.", "API", "shop_api."] {
            let m = decoded(answer(&query(name, RecordType::A), lookup));
            assert_eq!(m.metadata.id, 4242);
            assert_eq!(m.metadata.message_type, MessageType::Response);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert!(m.metadata.authoritative);
            assert_eq!(
                addresses(&m),
                vec![Ipv4Addr::new(10, 210, 3, 130)],
                "{name}"
            );
            assert_eq!(m.answers[0].ttl, TTL);
        }
        // dnsrr-style: every address.
        let m = decoded(answer(&query("db", RecordType::A), lookup));
        assert_eq!(addresses(&m).len(), 2);
    }

    #[test]
    fn other_types_of_owned_names_are_empty_not_missing() {
        let m = decoded(answer(&query("api", RecordType::AAAA), lookup));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn other_names_are_forwarded_and_garbage_is_refused() {
        assert_eq!(
            answer(&query("example.org", RecordType::A), lookup),
            Answer::Forward
        );
        assert_eq!(
            answer(&query("api.example.org", RecordType::A), lookup),
            Answer::Forward
        );
        let m = decoded(answer(&[0x12, 0x34, 0xff], lookup));
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(answer(&[1], lookup), Answer::Drop);
        let mut response = Message::response(7, OpCode::Query);
        response.add_query(Query::query(
            Name::from_ascii("api").expect("name"),
            RecordType::A,
        ));
        let m = decoded(answer(&response.to_vec().expect("encode"), lookup));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        let s = servfail(&query("x", RecordType::A)).expect("servfail");
        let m = Message::from_vec(&s).expect("decode");
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# generated\nsearch example.org\nnameserver 127.0.0.53\nnameserver ::1\nnameserver bogus\noptions edns0\n";
        assert_eq!(
            resolvers(text),
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().expect("addr"),
                "[::1]:53".parse().expect("addr")
            ]
        );
    }

    #[tokio::test]
    async fn the_responder_answers_and_forwards_over_real_sockets() {
        // An upstream resolver that answers everything with SERVFAIL-free
        // NXDOMAIN, so forwarding is visible.
        let upstream = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let upstream_addr = upstream.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            while let Ok((n, peer)) = upstream.recv_from(&mut buf).await {
                let q = Message::from_vec(&buf[..n]).expect("query");
                let mut m =
                    Message::error_msg(q.metadata.id, OpCode::Query, ResponseCode::NXDomain);
                m.queries = q.queries;
                let _ = upstream.send_to(&m.to_vec().expect("encode"), peer).await;
            }
        });
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let names: Names = Arc::default();
        names
            .write()
            .insert("api".into(), vec![Ipv4Addr::new(10, 210, 9, 200)]);
        let stop = Shutdown::new();
        tokio::spawn(serve(
            socket,
            names.clone(),
            Arc::new(vec![upstream_addr]),
            stop.clone(),
        ));
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let ask = |name: &'static str| {
            let client = &client;
            async move {
                client
                    .send_to(&query(name, RecordType::A), addr)
                    .await
                    .expect("send");
                let mut buf = vec![0u8; 512];
                let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
                    .await
                    .expect("an answer")
                    .expect("recv");
                Message::from_vec(&buf[..n]).expect("decode")
            }
        };
        let m = ask("api").await;
        assert_eq!(addresses(&m), vec![Ipv4Addr::new(10, 210, 9, 200)]);
        let m = ask("elsewhere.example").await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NXDomain,
            "the upstream's answer"
        );
        // A name added later is answered at once.
        names
            .write()
            .insert("web".into(), vec![Ipv4Addr::new(10, 210, 9, 201)]);
        assert_eq!(
            addresses(&ask("web").await),
            vec![Ipv4Addr::new(10, 210, 9, 201)]
        );
        stop.trigger();
    }
}
