//! Any bytes as a `multipart/form-data` body to the Admin API (the first
//! byte picks the boundary): split without panicking, and what is read
//! writes out and reads back the same (`bronze_gateway::fuzzing::multipart`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bronze_gateway::fuzzing::multipart(data));
