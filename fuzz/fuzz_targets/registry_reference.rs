//! Any request path, digest or reference: a route with a valid repository
//! name or a spec error, never a panic (properties in
//! bronze_registry::fuzzing).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bronze_registry::fuzzing::reference(data));
