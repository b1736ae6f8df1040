//! Any body sent to /v1/agent/service/register: a validated registration or
//! an error naming a field, never a panic.
#![no_main]

use bronze_discovery::Error;
use bronze_discovery::http::parse_registration;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_registration("node-1", "10.0.0.1", data) {
        Ok(reg) => assert!(!reg.instance.service.is_empty()),
        Err(Error::Invalid { field, .. }) => assert!(!field.is_empty()),
        Err(e) => panic!("unexpected error kind: {e}"),
    }
});
