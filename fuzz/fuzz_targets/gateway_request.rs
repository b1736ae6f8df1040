//! Any bytes from a client as a request head: the gateway's HTTP/1.1 path
//! forwards one well-formed upstream head or leaves the request to hyper,
//! never panics (`bronze_gateway::fuzzing::request_head`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bronze_gateway::fuzzing::request_head(data));
