//! End-to-end tests of bronze-discovery with real clients: dig, curl-like
//! HTTP (reqwest), a tonic gRPC client, the py-consul library, and the
//! real binary. One test binary (see STYLE.md); servers bind port 0.

mod binary;
mod consul_api;
mod consul_client;
mod dns;
mod grpc;
mod harness;
