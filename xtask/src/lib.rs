//! Automation shared by `cargo xtask` and the end-to-end tests.

pub mod bench_dns;
pub mod bench_e2e;
pub mod bench_gateway;
pub mod bench_gateway_rate;
pub mod bench_gateway_soak;
pub mod bench_mesh;
pub mod bench_placement;
pub mod bench_registrator;
pub mod bench_registry;
pub mod bench_rollout;
pub mod bench_scheduler;
mod bench_util;
pub mod clients;
pub mod dev;
pub mod images;
pub mod loadgen;
pub mod prerequisites;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

/// Builds every component binary; returns the directory holding them.
pub fn build_binaries(profile: Profile) -> anyhow::Result<PathBuf> {
    let packages: Vec<&str> = images::IMAGES.iter().map(|i| i.package).collect();
    build_packages(&packages, profile)
}

/// Builds these packages' binaries; returns the directory holding them.
pub fn build_packages(packages: &[&str], profile: Profile) -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root()).arg("build").arg("--locked");
    // `cargo xtask` runs with the variables cargo sets for xtask itself;
    // ring's build script reruns when CARGO_MANIFEST_DIR changes, so
    // passing them on rebuilt ring, rustls and everything above it on
    // every run (and again on the next plain `cargo build`).
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || matches!(
                k.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
            )
        {
            cmd.env_remove(&key);
        }
    }
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    for package in packages {
        cmd.args(["-p", package]);
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root().join("target"), PathBuf::from);
    Ok(target.join(if profile == Profile::Release {
        "release"
    } else {
        "debug"
    }))
}
