//! bronze-registry end to end: the spec's request sequences (written from
//! the OCI distribution-spec text, category by category), bad input, and
//! real clients (docker through the engine, skopeo).

mod access;
mod bad_input;
mod binary;
mod clients;
mod conformance;
mod differential;
mod events_gc;
mod harness;
