//! End-to-end tests against the real Docker engine: the images `cargo xtask
//! images` builds, and `deploy/docker-compose.yml`.

mod containers;
