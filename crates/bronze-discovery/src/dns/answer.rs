//! Answers queries for the synthetic names of the discovery domain:
//!
//! | name | answer |
//! |---|---|
//! | `<svc>.service.<domain>` | A/AAAA of healthy instances, SRV with `.addr.` targets |
//! | `<tag>.<svc>.service.<domain>` | the same, only instances with that tag |
//! | `_<svc>._tcp.service.<domain>` | RFC 2782 form, no tag filter |
//! | `_<svc>._<tag>.service.<domain>` | RFC 2782 form with a tag filter |
//! | `<node>.node.<domain>` | A/AAAA of the node |
//! | `<hex>.addr.<domain>` | A/AAAA encoded in the name (SRV targets) |
//! | `<domain>` | SOA, NS |
//!
//! A datacenter label after `service`/`node` (`web.service.dc1.consul`) is
//! accepted when it names this datacenter. Unknown names are NXDOMAIN, names
//! without the asked type NODATA, both with the SOA in the authority
//! section. Following Consul, a service with no healthy instance is NXDOMAIN.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::catalog::{Catalog, Instance};
use crate::model::Health;

use super::wire::{
    self, HEADER_LEN, NameRef, OPT_LEN, ParseError, Pointer, Query, Rcode, Section, TYPE_A,
    TYPE_AAAA, TYPE_ANY, TYPE_AXFR, TYPE_IXFR, TYPE_NS, TYPE_SOA, TYPE_SRV, Writer,
};

/// Everything the answering side needs to know, fixed at start-up.
pub struct Resolver {
    pub catalog: Arc<Catalog>,
    /// Lower-case labels of the domain ("bronze." is `[b"bronze"]`).
    pub domain: Vec<Vec<u8>>,
    pub datacenter: Vec<u8>,
    pub service_ttl: u32,
    pub node_ttl: u32,
    /// SOA minimum: how long resolvers cache negative answers.
    pub negative_ttl: u32,
    pub only_passing: bool,
    /// Recursors are configured: queries outside the domain are forwarded.
    pub recursion: bool,
    /// Largest UDP answer this server sends to EDNS clients.
    pub udp_max_payload: u16,
    /// Address answered for `ns.<domain>`.
    pub ns_address: Option<IpAddr>,
}

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `out` holds the answer, with this rcode.
    Answer(Rcode),
    /// Outside the domain: pass the query to a recursor.
    Forward,
    /// Send nothing.
    Drop,
}

const MAX_DOMAIN_LABELS: usize = 16;

fn hex_label(ip: IpAddr, out: &mut [u8; 32]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let (bytes, len) = match ip {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            (b, 4)
        }
        IpAddr::V6(v6) => (v6.octets(), 16),
    };
    for (i, b) in bytes[..len].iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 0xF) as usize];
    }
    len * 2
}

fn parse_hex_ip(label: &[u8]) -> Option<IpAddr> {
    let nibble = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut bytes = [0u8; 16];
    if label.len() != 8 && label.len() != 32 {
        return None;
    }
    for (i, pair) in label.chunks(2).enumerate() {
        bytes[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(if label.len() == 8 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    })
}

/// Instances of the example resolver's large service.
pub const EXAMPLE_BIG: usize = 600;

impl Resolver {
    /// A resolver for the domain `bronze.` over a small catalog (web on an
    /// IPv4 and an IPv6 address, api on a host name, db on its node's
    /// address) and one large service (`big`: [`EXAMPLE_BIG`] instances,
    /// an SRV answer over TCP past the 14-bit compression offsets): for
    /// fuzzing and tests.
    pub fn example() -> Self {
        use crate::model::{InstanceSpec, Registration, Weights};
        let catalog = Arc::new(Catalog::new(1, "n1", "10.0.0.1", 64));
        let small = [
            ("web", "10.0.0.5".to_string()),
            ("web", "fd00::5".to_string()),
            ("api", "api.example.com".to_string()),
            ("db", String::new()),
        ];
        let big = (0..EXAMPLE_BIG).map(|i| ("big", format!("10.1.{}.{}", i / 250, i % 250 + 1)));
        for (i, (svc, addr)) in small.into_iter().chain(big).enumerate() {
            let reg = Registration {
                instance: InstanceSpec {
                    id: format!("i{i}"),
                    service: svc.into(),
                    node: "n1".into(),
                    node_address: "10.0.0.1".into(),
                    address: addr,
                    port: u16::try_from(8000 + i).unwrap_or(u16::MAX),
                    tags: vec!["v1".into()],
                    meta: Default::default(),
                    weights: Weights::default(),
                    checks: Vec::new(),
                },
                owner: None,
            };
            // The example names are valid: registration cannot fail.
            let _ = catalog.register(reg, false);
        }
        Resolver {
            catalog,
            domain: vec![b"bronze".to_vec()],
            datacenter: b"dc1".to_vec(),
            service_ttl: 0,
            node_ttl: 0,
            negative_ttl: 0,
            only_passing: false,
            recursion: false,
            udp_max_payload: 1232,
            ns_address: Some(IpAddr::from([127, 0, 0, 1])),
        }
    }

    /// Answers `packet` into `out`. `tcp` lifts the size limit to 64 KiB.
    pub fn respond(&self, packet: &[u8], tcp: bool, out: &mut Vec<u8>) -> Outcome {
        let query = match wire::parse(packet) {
            Ok(q) => q,
            Err(ParseError::Drop) => return Outcome::Drop,
            Err(ParseError::Reply {
                rcode,
                question_end,
            }) => {
                // Echo the header bits a client matches on; the question
                // only when it could be read.
                let id = u16::from_be_bytes([packet[0], packet[1]]);
                let flags = 0x8000 | (u16::from_be_bytes([packet[2], packet[3]]) & 0x7900);
                let question = question_end.map(|end| &packet[HEADER_LEN..end]);
                Writer::new(out, id, flags, question, usize::MAX, 0).finish(rcode, None);
                return Outcome::Answer(rcode);
            }
        };
        let in_domain = query.name.ends_with(&self.domain);
        if !in_domain && self.recursion && !matches!(query.qtype, TYPE_AXFR | TYPE_IXFR) {
            return Outcome::Forward;
        }
        let limit = if tcp {
            u16::MAX as usize
        } else {
            match query.edns {
                Some(e) => e.payload.clamp(512, self.udp_max_payload.max(512)) as usize,
                None => 512,
            }
        };
        let mut flags: u16 = 0x8000;
        if query.recursion_desired {
            flags |= 0x0100;
        }
        if self.recursion {
            flags |= 0x0080;
        }
        if query.checking_disabled {
            flags |= 0x0010;
        }
        if in_domain {
            flags |= 0x0400;
        }
        let reserve = if query.edns.is_some() { OPT_LEN } else { 0 };
        let edns_payload = query.edns.map(|_| self.udp_max_payload.max(512));
        let mut w = Writer::new(
            out,
            query.id,
            flags,
            Some(&packet[HEADER_LEN..query.question_end]),
            limit,
            reserve,
        );
        let rcode = if query.edns.is_some_and(|e| e.version > 0) {
            Rcode::BadVers
        } else if !matches!(query.qclass, wire::CLASS_IN | wire::CLASS_ANY) || !in_domain {
            Rcode::Refused
        } else if matches!(query.qtype, TYPE_AXFR | TYPE_IXFR) {
            // Zone transfers of a synthetic zone are refused.
            Rcode::Refused
        } else {
            self.answer_in_domain(&query, &mut w)
        };
        w.finish(rcode, edns_payload);
        Outcome::Answer(rcode)
    }

    fn answer_in_domain(&self, q: &Query, w: &mut Writer<'_>) -> Rcode {
        let n = q.name.label_count();
        let mut rel = n - self.domain.len();
        // The question is at most 255 bytes, right after the header.
        let Some(apex) = Pointer::to(HEADER_LEN + q.name.label_offset(rel)) else {
            return Rcode::ServFail;
        };
        // `<...>.service.<dc>.<domain>`: drop this datacenter's label.
        if rel >= 2 && q.name.label(rel - 1) == self.datacenter.as_slice() {
            let kind = q.name.label(rel - 2);
            if kind == b"service" || kind == b"node" {
                rel -= 1;
            }
        }
        let label = |i: usize| q.name.label(i);
        let rcode = match rel {
            0 => self.apex(q, w, apex),
            1 if label(0) == b"ns" => {
                self.addresses(q, w, self.ns_address.into_iter().collect(), self.node_ttl)
            }
            1 if matches!(label(0), b"service" | b"node" | b"addr") => Rcode::NoError,
            2 if label(1) == b"service" => self.service(q, w, label(0), None),
            3 if label(2) == b"service" => {
                let (first, second) = (label(0), label(1));
                match (first.strip_prefix(b"_"), second.strip_prefix(b"_")) {
                    // RFC 2782: _<svc>._<proto or tag>.service
                    (Some(svc), Some(proto)) => {
                        let tag = (proto != b"tcp").then_some(proto);
                        self.service(q, w, svc, tag)
                    }
                    _ => self.service(q, w, second, Some(first)),
                }
            }
            2 if label(1) == b"node" => {
                let name = String::from_utf8_lossy(label(0));
                match self.catalog.node(&name) {
                    Some(node) => {
                        let ips: Vec<IpAddr> = node.address.parse().ok().into_iter().collect();
                        self.addresses(q, w, ips, self.node_ttl)
                    }
                    None => Rcode::NxDomain,
                }
            }
            2 if label(1) == b"addr" => match parse_hex_ip(label(0)) {
                Some(ip) => self.addresses(q, w, vec![ip], self.service_ttl),
                None => Rcode::NxDomain,
            },
            _ => Rcode::NxDomain,
        };
        if w.is_empty() && matches!(rcode, Rcode::NoError | Rcode::NxDomain) {
            self.soa(w, Section::Authority, apex);
        }
        rcode
    }

    fn soa(&self, w: &mut Writer<'_>, section: Section, apex: Pointer) {
        w.section(section);
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| u32::try_from(d.as_secs() % (1 << 32)).ok())
            .unwrap_or(1);
        w.soa(
            NameRef::Ptr(apex),
            self.negative_ttl,
            NameRef::Labels(&[b"ns"], Some(apex)),
            NameRef::Labels(&[b"hostmaster"], Some(apex)),
            serial,
            [3600, 600, 86400, self.negative_ttl],
        );
    }

    fn apex(&self, q: &Query, w: &mut Writer<'_>, apex: Pointer) -> Rcode {
        if matches!(q.qtype, TYPE_SOA | TYPE_ANY) {
            self.soa(w, Section::Answer, apex);
        }
        if matches!(q.qtype, TYPE_NS | TYPE_ANY) {
            w.section(Section::Answer);
            let at = w.name_record(
                NameRef::Ptr(apex),
                TYPE_NS,
                self.node_ttl,
                NameRef::Labels(&[b"ns"], Some(apex)),
            );
            if let (Some(at), Some(ip)) = (at.and_then(Pointer::to), self.ns_address) {
                w.section(Section::Additional);
                self.address_record(w, NameRef::Ptr(at), self.node_ttl, ip);
            }
        }
        Rcode::NoError
    }

    fn address_record(
        &self,
        w: &mut Writer<'_>,
        owner: NameRef<'_>,
        ttl: u32,
        ip: IpAddr,
    ) -> Option<usize> {
        match ip {
            IpAddr::V4(v4) => w.a(owner, ttl, v4),
            IpAddr::V6(v6) => w.aaaa(owner, ttl, v6),
        }
    }

    /// A/AAAA answers for the query name from `ips` (NODATA when none has
    /// the asked family or the type is neither).
    fn addresses(&self, q: &Query, w: &mut Writer<'_>, ips: Vec<IpAddr>, ttl: u32) -> Rcode {
        w.section(Section::Answer);
        for ip in ips {
            let wanted = match ip {
                IpAddr::V4(_) => matches!(q.qtype, TYPE_A | TYPE_ANY),
                IpAddr::V6(_) => matches!(q.qtype, TYPE_AAAA | TYPE_ANY),
            };
            if wanted {
                self.address_record(w, NameRef::Ptr(Pointer::QUESTION), ttl, ip);
            }
        }
        Rcode::NoError
    }

    fn healthy(&self, i: &Instance) -> bool {
        match i.health {
            Health::Passing => true,
            Health::Warning => !self.only_passing,
            Health::Critical => false,
        }
    }

    fn service(&self, q: &Query, w: &mut Writer<'_>, name: &[u8], tag: Option<&[u8]>) -> Rcode {
        let Ok(name) = std::str::from_utf8(name) else {
            return Rcode::NxDomain;
        };
        let tag = match tag.map(std::str::from_utf8) {
            Some(Ok(t)) => Some(t),
            Some(Err(_)) => return Rcode::NxDomain,
            None => None,
        };
        self.catalog.with_published(name, |instances| {
            let Some(instances) = instances else {
                return Rcode::NxDomain;
            };
            let mut picked: Vec<&Arc<Instance>> = instances
                .iter()
                .filter(|i| self.healthy(i) && tag.is_none_or(|t| i.has_tag(t)))
                .collect();
            if picked.is_empty() {
                return Rcode::NxDomain;
            }
            fastrand::shuffle(&mut picked);
            w.section(Section::Answer);
            match q.qtype {
                TYPE_SRV => self.srv_answers(w, &picked),
                TYPE_A | TYPE_AAAA | TYPE_ANY => {
                    let mut seen: Vec<IpAddr> = Vec::with_capacity(picked.len());
                    for i in &picked {
                        let Some(ip) = i.ip else { continue };
                        let wanted = match ip {
                            IpAddr::V4(_) => q.qtype != TYPE_AAAA,
                            IpAddr::V6(_) => q.qtype != TYPE_A,
                        };
                        if !wanted || seen.contains(&ip) {
                            continue;
                        }
                        seen.push(ip);
                        if self
                            .address_record(
                                w,
                                NameRef::Ptr(Pointer::QUESTION),
                                self.service_ttl,
                                ip,
                            )
                            .is_none()
                        {
                            break;
                        }
                    }
                }
                _ => {}
            }
            Rcode::NoError
        })
    }

    fn srv_answers(&self, w: &mut Writer<'_>, picked: &[&Arc<Instance>]) {
        // (target offset, ip) of each SRV written, for the additional section.
        let mut targets: Vec<(usize, IpAddr)> = Vec::with_capacity(picked.len());
        let mut hex = [0u8; 32];
        for i in picked {
            let mut labels: [&[u8]; MAX_DOMAIN_LABELS + 2] = [&[]; MAX_DOMAIN_LABELS + 2];
            let count;
            let host_labels: Vec<&[u8]>;
            match i.ip {
                Some(ip) => count = self.addr_name(ip, &mut hex, &mut labels),
                None => {
                    host_labels = i
                        .address
                        .trim_end_matches('.')
                        .split('.')
                        .map(str::as_bytes)
                        .collect();
                    count = host_labels.len().min(labels.len());
                    labels[..count].copy_from_slice(&host_labels[..count]);
                }
            }
            let at = w.srv(
                NameRef::Ptr(Pointer::QUESTION),
                self.service_ttl,
                1,
                i.weight(),
                i.spec.port,
                &labels[..count],
            );
            match (at, i.ip) {
                (None, _) => break,
                (Some(at), Some(ip)) => targets.push((at, ip)),
                (Some(_), None) => {}
            }
        }
        w.section(Section::Additional);
        for (at, ip) in targets {
            // A target written past 0x3FFF (a large TCP answer) cannot be
            // pointed to: its glue carries the name in full.
            let mut labels: [&[u8]; MAX_DOMAIN_LABELS + 2] = [&[]; MAX_DOMAIN_LABELS + 2];
            let owner = match Pointer::to(at) {
                Some(p) => NameRef::Ptr(p),
                None => {
                    let count = self.addr_name(ip, &mut hex, &mut labels);
                    NameRef::Labels(&labels[..count], None)
                }
            };
            if self
                .address_record(w, owner, self.service_ttl, ip)
                .is_none()
            {
                break;
            }
        }
    }

    /// `<hex ip>.addr.<domain>` into `labels`; returns how many labels.
    fn addr_name<'a>(
        &'a self,
        ip: IpAddr,
        hex: &'a mut [u8; 32],
        labels: &mut [&'a [u8]; MAX_DOMAIN_LABELS + 2],
    ) -> usize {
        let len = hex_label(ip, hex);
        labels[0] = &hex[..len];
        labels[1] = b"addr";
        for (k, d) in self.domain.iter().enumerate() {
            labels[2 + k] = d;
        }
        2 + self.domain.len()
    }
}

/// Splits a configured domain ("consul.", "bronze", "sd.example.com.")
/// into lower-case labels, rejecting anything that is not a DNS name.
pub fn domain_labels(domain: &str) -> Result<Vec<Vec<u8>>, String> {
    let d = domain.trim_end_matches('.');
    if d.is_empty() {
        return Err(format!(
            "{domain:?}: expected a domain such as \"bronze.\" or \"consul.\""
        ));
    }
    let labels: Vec<Vec<u8>> = d
        .split('.')
        .map(|l| l.to_ascii_lowercase().into_bytes())
        .collect();
    if labels.len() > MAX_DOMAIN_LABELS {
        return Err(format!(
            "{domain:?} has more than {MAX_DOMAIN_LABELS} labels"
        ));
    }
    for l in &labels {
        let ok = !l.is_empty()
            && l.len() <= 63
            && l.iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
        if !ok {
            return Err(format!(
                "{domain:?}: label {:?} is not a DNS label",
                String::from_utf8_lossy(l)
            ));
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Message;
    use proptest::prelude::*;

    /// Built once: the example holds 600 instances.
    fn resolver() -> &'static Resolver {
        static R: std::sync::OnceLock<Resolver> = std::sync::OnceLock::new();
        R.get_or_init(Resolver::example)
    }

    fn query(name: &str, qtype: u16, edns: bool) -> Vec<u8> {
        let mut p = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)];
        for label in name.split('.').filter(|l| !l.is_empty()) {
            p.push(u8::try_from(label.len()).expect("test labels are short"));
            p.extend_from_slice(label.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        if edns {
            p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        }
        p
    }

    /// Whatever comes in: no panic, and any answer is a well-formed DNS
    /// message (as hickory parses it) for the same ID, within the UDP limit.
    fn check(r: &Resolver, packet: &[u8]) {
        let mut out = Vec::new();
        for tcp in [false, true] {
            if let Outcome::Answer(_) = r.respond(packet, tcp, &mut out) {
                let msg = Message::from_vec(&out).expect("our answer parses");
                assert_eq!(msg.metadata.id, u16::from_be_bytes([packet[0], packet[1]]));
                if !tcp {
                    assert!(out.len() <= 1232, "udp answer of {} bytes", out.len());
                }
                glue_matches(&msg);
            }
        }
    }

    /// Every address in the additional section belongs to an SRV target of
    /// the answer, and its owner name is that address's own `.addr.` name:
    /// a wrong compression pointer names some other place of the message.
    pub(crate) fn glue_matches(msg: &Message) {
        use hickory_proto::rr::RData;
        let targets: Vec<String> = msg
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(srv.target.to_ascii().to_ascii_lowercase()),
                _ => None,
            })
            .collect();
        if targets.is_empty() {
            return;
        }
        for r in &msg.additionals {
            let ip = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            let name = r.name.to_ascii().to_ascii_lowercase();
            let first = name.split('.').next().unwrap_or_default();
            assert_eq!(
                parse_hex_ip(first.as_bytes()),
                Some(ip),
                "glue {name} for {ip}"
            );
            assert!(targets.contains(&name), "glue {name} is no SRV target");
        }
    }

    /// `big` answers every instance over TCP, past offset 0x3FFF: every
    /// SRV target and its glue are the instance's own (before, glue past
    /// 16 KiB pointed into the middle of other records).
    #[test]
    fn large_tcp_srv_answer_keeps_names_right() {
        let r = resolver();
        let mut out = Vec::new();
        let q = query("big.service.bronze", TYPE_SRV, true);
        assert!(matches!(
            r.respond(&q, true, &mut out),
            Outcome::Answer(Rcode::NoError)
        ));
        assert!(out.len() > Pointer::MAX, "answer of {} bytes", out.len());
        let msg = Message::from_vec(&out).expect("parses");
        assert_eq!(msg.answers.len(), EXAMPLE_BIG);
        assert_eq!(msg.additionals.len(), EXAMPLE_BIG, "glue for each");
        glue_matches(&msg);
        let mut ports: Vec<u16> = msg
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                hickory_proto::rr::RData::SRV(s) => Some(s.port),
                _ => None,
            })
            .collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), EXAMPLE_BIG);
    }

    #[test]
    fn answers_parse_for_every_name_form() {
        let r = resolver();
        for name in [
            "web.service.bronze",
            "v1.web.service.bronze",
            "_web._tcp.service.bronze",
            "_web._v1.service.bronze",
            "api.service.bronze",
            "db.service.bronze",
            "big.service.bronze",
            "web.service.dc1.bronze",
            "n1.node.bronze",
            "0a000005.addr.bronze",
            "bronze",
            "ns.bronze",
            "service.bronze",
            "nope.service.bronze",
            "x.y.z.service.bronze",
            "example.com",
        ] {
            for qtype in [
                TYPE_A,
                TYPE_AAAA,
                TYPE_SRV,
                TYPE_SOA,
                TYPE_NS,
                TYPE_ANY,
                wire::TYPE_TXT,
                TYPE_AXFR,
                999,
            ] {
                for edns in [false, true] {
                    check(r, &query(name, qtype, edns));
                }
            }
        }
    }

    /// The fuzzing corpus (fuzz/corpus/dns_respond, grown by `cargo fuzz`)
    /// replayed on every test run.
    #[test]
    fn fuzz_corpus_replays() {
        let r = resolver();
        bronze_runtime::replay_fuzz_corpus("dns_respond", |bytes| check(r, bytes));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn random_packets_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            check(resolver(), &bytes);
        }

        #[test]
        fn mutated_queries_never_panic(
            name in prop::sample::select(vec!["web.service.bronze", "_web._tcp.service.bronze", "n1.node.bronze", "bronze"]),
            qtype in prop::sample::select(vec![TYPE_A, TYPE_SRV, TYPE_AAAA, TYPE_ANY]),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in any::<usize>(),
        ) {
            let mut p = query(name, qtype, true);
            for (at, b) in flips {
                let i = at % p.len();
                p[i] = b;
            }
            let keep = p.len() - cut % 4;
            p.truncate(keep);
            check(resolver(), &p);
        }
    }

    #[test]
    fn hex_labels_round_trip() {
        let mut buf = [0u8; 32];
        for ip in ["10.0.0.1", "::1", "fe80::1:2"] {
            let ip: IpAddr = ip.parse().expect("ip");
            let n = hex_label(ip, &mut buf);
            assert_eq!(parse_hex_ip(&buf[..n]), Some(ip));
        }
        assert_eq!(parse_hex_ip(b"0a00000"), None);
        assert_eq!(parse_hex_ip(b"0a00000g"), None);
    }

    #[test]
    fn domains_are_checked() {
        assert_eq!(
            domain_labels("Consul.").expect("ok"),
            vec![b"consul".to_vec()]
        );
        assert_eq!(domain_labels("sd.example.com").expect("ok").len(), 3);
        assert!(domain_labels(".").is_err());
        assert!(domain_labels("a..b").is_err());
        assert!(domain_labels("bad domain").is_err());
    }
}
