//! bronze-registrator against the real Docker engine, a real bronze-discovery
//! (in process, port 0) and dig, and (`traefik`) a gateway following that
//! discovery. Workloads are FROM-scratch images with Debian's static
//! busybox, built offline.

mod binary;
mod harness;
mod health;
mod lifecycle;
mod restarts;
mod traefik;
