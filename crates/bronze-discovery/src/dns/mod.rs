//! DNS: the catalog as A/AAAA/SRV records (see `answer`), on UDP and TCP.

pub mod answer;
pub mod server;
pub mod wire;
