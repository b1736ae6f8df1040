//! What the tests and benchmarks need beyond cargo, installed when missing:
//! Debian packages through apt-get, Python packages through pip.

use std::process::{Command, Stdio};

use anyhow::bail;

/// (command that proves it is there, Debian package)
const DEBIAN: &[(&str, &str)] = &[
    ("dig", "dnsutils"),
    ("busybox", "busybox-static"),
    ("skopeo", "skopeo"),
    ("docker-registry", "docker-registry"),
    ("openssl", "openssl"),
    ("curl", "curl"),
    // The registry's durability test traces the binary's fsyncs.
    ("strace", "strace"),
    // The end-to-end test brings deploy/docker-compose.yml up with it.
    ("docker-compose", "docker-compose"),
    // The agent's mesh writes its DNAT rules with it (the mesh tests).
    ("iptables-restore", "iptables"),
];
/// (Python module, PyPI package)
const PYTHON: &[(&str, &str)] = &[("consul", "py-consul")];

fn sh(script: &str) -> bool {
    Command::new("sh")
        .args(["-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the Debian packages whose command is missing.
pub fn apt(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(cmd, _)| !sh(&format!("command -v {cmd} || test -x /usr/sbin/{cmd}")))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    let ok = Command::new("sh")
        .args([
            "-c",
            &format!(
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {}",
                missing.join(" ")
            ),
        ])
        .status()?
        .success();
    if !ok {
        bail!(
            "apt-get could not install {} (run as root?)",
            missing.join(" ")
        );
    }
    Ok(())
}

/// Everything the test suite needs.
pub fn install() -> anyhow::Result<()> {
    apt(DEBIAN)?;
    for (module, package) in PYTHON {
        if sh(&format!("python3 -c 'import {module}'")) {
            continue;
        }
        eprintln!("installing PyPI package {package}");
        let ok = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                package,
            ])
            .status()?
            .success();
        if !ok {
            bail!("pip could not install {package}");
        }
    }
    Ok(())
}
