//! Any bytes as the start of a connection to a listener that expects the
//! PROXY protocol: parsed without panicking, a complete header delimits
//! itself (`bronze_runtime::proxy_protocol::fuzz_property`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bronze_runtime::proxy_protocol::fuzz_property(data));
