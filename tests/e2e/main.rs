//! End-to-end tests against the real Docker engine: the images `cargo xtask
//! images` builds, `deploy/docker-compose.yml`, and a scheduler with agents
//! in containers on a network of the test's own, cut and reconnected; and
//! the per-host install's files under `deploy/` (configs, systemd units);
//! the seeds' flow on `bronze dev`; three hosts on a network of the test's
//! own, one killed and one cut off under load; discovery and the registry
//! restarted in the middle of the run.

mod cluster;
mod containers;
mod deploy;
mod faults;
mod hosts;
mod readme;
mod seeds;
