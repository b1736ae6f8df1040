//! Any bytes an upstream sends as a chunked body, split anywhere: the
//! scanner finds the same end (or the same refusal) whole or in two
//! pieces, never past the bytes it was given, never a panic.
#![no_main]

use bronze_gateway::proxy::Chunked;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let whole = Chunked::default().scan(body);
    if let Ok(Some(end)) = whole {
        assert!(end <= body.len());
    }
    let cut = usize::from(cut).min(body.len());
    let mut halves = Chunked::default();
    let split = match halves.scan(&body[..cut]) {
        Ok(None) => halves.scan(&body[cut..]).map(|e| e.map(|e| cut + e)),
        done => done,
    };
    assert_eq!(whole, split);
});
