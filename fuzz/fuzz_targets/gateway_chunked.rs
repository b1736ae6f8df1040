//! Any bytes an upstream sends as a chunked body, split anywhere: the
//! scanner finds the same end (or the same refusal) whole or in two
//! pieces (`bronze_gateway::fuzzing::chunked`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bronze_gateway::fuzzing::chunked(data));
