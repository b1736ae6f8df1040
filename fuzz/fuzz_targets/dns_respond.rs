//! Any datagram, over UDP and TCP: no panic, and every answer is a DNS
//! message for the same ID within the transport's limit.
#![no_main]

use std::sync::OnceLock;

use bronze_discovery::dns::answer::{Outcome, Resolver};
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
        }
    }
});
