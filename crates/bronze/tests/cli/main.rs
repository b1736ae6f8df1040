//! The `bronze` binary against a real scheduler in this process: the
//! `service`, `node` and `stack` commands, their tables, JSON and errors; with
//! agents on this machine's Docker engine, the commands that wait for
//! tasks to run, and logs.

mod converge;
mod harness;
mod nodes;
mod secrets;
mod seed;
mod services;
mod stacks;
