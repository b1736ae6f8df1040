//! The per-host install's files (`deploy/config/`, `deploy/systemd/`), as
//! the README's "Production" section has them copied: every example config
//! loads through its binary's own loader, and every unit starts a binary
//! that exists with a config file that exists.

use std::path::{Path, PathBuf};

use clap::Parser;

fn deploy() -> PathBuf {
    xtask::root().join("deploy")
}

/// `bronze-NAME --config deploy/config/NAME.toml`, parsed and validated as
/// the binary does at start (flags and environment on top of the file).
fn load(name: &str) -> Result<String, String> {
    let file = deploy().join("config").join(format!("{name}.toml"));
    let mut argv = vec!["bronze", "--config", file.to_str().expect("utf-8 path")];
    if name == "agent" {
        // A secret: bronze.env gives it (BRONZE_AGENT_JOIN_TOKEN), not the file.
        argv.extend(["--join-token", "example-token"]);
    }
    let loaded = match name {
        "discovery" => bronze_discovery::cli::Args::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .load()
            .map(|c| format!("{c:?}")),
        "registry" => bronze_registry::cli::Args::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .load()
            .map(|c| format!("{c:?}")),
        "gateway" => bronze_gateway::cli::Args::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .load()
            .map(|c| format!("{c:?}")),
        "scheduler" => bronze_scheduler::cli::Args::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .load()
            .map(|c| format!("{c:?}")),
        "agent" => bronze_agent::cli::Args::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .load()
            .map(|c| format!("{c:?}")),
        "registrator" => bronze_registrator::cli::Args::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .load()
            .map(|c| format!("{c:?}")),
        other => panic!("no component {other}"),
    };
    loaded.map_err(|e| e.to_string())
}

const COMPONENTS: [&str; 6] = [
    "discovery",
    "registry",
    "gateway",
    "scheduler",
    "agent",
    "registrator",
];

#[test]
fn every_example_config_loads_with_its_binary_s_loader() {
    for name in COMPONENTS {
        let config = load(name).unwrap_or_else(|e| panic!("deploy/config/{name}.toml: {e}"));
        // The examples keep every listener on loopback: the README's
        // install widens them with the environment file, on purpose.
        assert!(!config.contains("0.0.0.0"), "{name}: {config}");
    }
}

#[test]
fn every_unit_starts_an_existing_binary_with_its_config() {
    let manifest = |crate_dir: &str| {
        std::fs::read_to_string(
            xtask::root()
                .join("crates")
                .join(crate_dir)
                .join("Cargo.toml"),
        )
        .expect("Cargo.toml")
    };
    for name in COMPONENTS {
        let unit = std::fs::read_to_string(
            deploy()
                .join("systemd")
                .join(format!("bronze-{name}.service")),
        )
        .unwrap_or_else(|e| panic!("bronze-{name}.service: {e}"));
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("bronze-{name}.service has no ExecStart"));
        let mut words = exec.split_whitespace();
        let binary = Path::new(words.next().expect("a program"));
        let binary = binary.file_name().and_then(|b| b.to_str()).expect("name");
        assert!(
            manifest(&format!("bronze-{name}")).contains(&format!("name = \"{binary}\"")),
            "bronze-{name}.service starts {binary}, which crates/bronze-{name} does not build"
        );
        let rest: Vec<&str> = words.collect();
        assert_eq!(
            rest,
            ["--config", &format!("/etc/bronze/{name}.toml")],
            "bronze-{name}.service"
        );
        assert!(
            unit.contains("KillSignal=SIGTERM")
                && unit.contains("EnvironmentFile=-/etc/bronze/bronze.env"),
            "bronze-{name}.service drains on SIGTERM and reads the host's environment file"
        );
    }
}
