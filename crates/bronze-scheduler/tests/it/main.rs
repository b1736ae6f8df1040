//! The scheduler and its agents against the real Docker engine: one test
//! binary (see `harness` for how a cluster is started in this process).

mod autodeploy;
mod harness;
mod lifecycle;
mod mesh;
mod nodes;
mod platform;
mod rollouts;
mod updates;
