//! Any bytes as a compose file: a project or an error naming the file,
//! never a panic (property in bronze_compose::fuzzing).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bronze_compose::fuzzing::load_bytes(data));
