//! Any datagram, over UDP and TCP: no panic, and every answer is a DNS
//! message for the same ID within the transport's limit, that
//! hickory-proto reads. The example catalog has a service of 600
//! instances (`big`), so answers over TCP run past the 14-bit compression
//! offsets: every SRV glue record must still name its own address.
#![no_main]

use std::sync::OnceLock;

use bronze_discovery::dns::answer::{Outcome, Resolver};
use hickory_proto::op::Message;
use hickory_proto::rr::RData;
use libfuzzer_sys::fuzz_target;

fn resolver() -> &'static Resolver {
    static R: OnceLock<Resolver> = OnceLock::new();
    R.get_or_init(Resolver::example)
}

fuzz_target!(|data: &[u8]| {
    let r = resolver();
    let mut out = Vec::new();
    for tcp in [false, true] {
        if let Outcome::Answer(_) = r.respond(data, tcp, &mut out) {
            assert!(out.len() >= 12);
            assert_eq!(out[..2], data[..2]);
            assert!(tcp || out.len() <= 1232);
            assert!(out.len() <= usize::from(u16::MAX));
            let msg = Message::from_vec(&out).expect("every answer parses");
            let targets: Vec<String> = msg
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(s) => Some(s.target.to_ascii().to_ascii_lowercase()),
                    _ => None,
                })
                .collect();
            if targets.is_empty() {
                continue;
            }
            for g in &msg.additionals {
                let octets = match &g.data {
                    RData::A(a) => a.0.octets().to_vec(),
                    RData::AAAA(a) => a.0.octets().to_vec(),
                    _ => continue,
                };
                let hex: String = octets.iter().map(|o| format!("{o:02x}")).collect();
                let name = g.name.to_ascii().to_ascii_lowercase();
                assert!(name.starts_with(&format!("{hex}.")), "glue {name}");
                assert!(targets.contains(&name), "glue {name} is no SRV target");
            }
        }
    }
});
