//! DNS: the catalog as A/AAAA/SRV records (see `answer`), on UDP and TCP.
//!
//! Lengths and offsets go into 8- and 16-bit wire fields here: a cast that
//! truncates silently wrote wrong compression pointers once, so every
//! narrowing is checked.
#![deny(clippy::cast_possible_truncation)]

pub mod answer;
pub mod server;
pub mod wire;
