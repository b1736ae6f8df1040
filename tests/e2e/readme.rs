//! The README's newcomer path, run as written: `bronze dev` with its
//! default ports (from a directory of the test's own, so its state goes
//! there), then the README's block marked `<!-- newcomer: ... -->` in
//! bash: an app image built offline from Debian's static busybox, pushed to
//! Bronze's registry, `bronze service create` with a routing label, and
//! `curl` through the gateway, which must answer "hello from bronze". The
//! one change: the block's `$PWD/target/release` (where the README's
//! `cargo run --release` put `bronze`) is this test's debug build.

use std::path::Path;
use std::process::Command;

use xtask::dev::Dev;

const MARK: &str = "<!-- newcomer: tests/e2e/readme.rs runs the next block -->";

/// The fenced block after the README's newcomer mark.
fn newcomer_block() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let after = &readme[readme.find(MARK).expect("the newcomer mark in README.md") + MARK.len()..];
    let start = after.find("```sh\n").expect("a sh block after the mark") + "```sh\n".len();
    let body = &after[start..];
    body[..body.find("```").expect("the block's end")].to_string()
}

/// Stops `bronze dev` and removes what the block made, also on failure.
struct Teardown {
    dev: Option<Dev>,
    log: std::path::PathBuf,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- bronze dev:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        if let Some(mut dev) = self.dev.take() {
            let _ = dev.child.kill();
            let _ = dev.child.wait();
        }
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", "label=bronze.service.name=hello"])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
        let _ = Command::new("docker")
            .args(["rmi", "127.0.0.1:5000/team/hello:1"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_newcomer_block_answers_through_the_gateway() {
    let block = newcomer_block();
    assert!(block.contains("bronze service create"), "{block}");
    let bin =
        tokio::task::spawn_blocking(|| xtask::build_packages(&["bronze"], xtask::Profile::Debug))
            .await
            .expect("join")
            .expect("cargo build -p bronze");
    // The block installs busybox when it is missing, with sudo; the
    // machines this runs on have it from the test images' prerequisites.
    xtask::prerequisites::apt(&[("busybox", "busybox-static")]).expect("busybox-static");
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("dev.log");
    let dev = Dev::start(&bin, &log, &[], dir.path()).expect("bronze dev starts");
    assert_eq!(dev.gateway.port(), 8000, "the README's gateway port");
    assert_eq!(dev.registry.port(), 5000, "the README's registry port");
    let _teardown = Teardown {
        dev: Some(dev),
        log,
    };
    let script = block.replace("$PWD/target/release", &bin.display().to_string());
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .output()
        .expect("bash runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the README's block failed:\n{said}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().last(),
        Some("hello from bronze"),
        "{said}"
    );
}

/// IPv4 addresses in `text` outside loopback and the unspecified address
/// (a network range, `10.0.0.0/8`, is not an address to call).
fn foreign_addresses(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit()
            && (i == 0 || !(bytes[i - 1].is_ascii_digit() || bytes[i - 1] == b'.'))
        {
            let end = text[i..]
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .map_or(text.len(), |n| i + n);
            let word = text[i..end].trim_end_matches('.');
            if let Ok(ip) = word.parse::<std::net::Ipv4Addr>()
                && !ip.is_loopback()
                && !ip.is_unspecified()
                && !text[i + word.len()..].starts_with('/')
            {
                found.push(word.to_string());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    found
}

#[test]
fn examples_in_the_readme_and_every_help_use_loopback() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    // The fenced blocks: what a reader copies.
    let blocks: Vec<&str> = readme.split("```").skip(1).step_by(2).collect();
    assert!(blocks.len() > 10);
    for b in &blocks {
        assert_eq!(
            foreign_addresses(b),
            Vec::<String>::new(),
            "in README block:\n{b}"
        );
    }
    let bin = xtask::build_packages(
        &[
            "bronze",
            "bronze-discovery",
            "bronze-registrator",
            "bronze-registry",
            "bronze-gateway",
            "bronze-scheduler",
            "bronze-agent",
        ],
        xtask::Profile::Debug,
    )
    .expect("cargo build");
    let helps: &[&[&str]] = &[
        &["bronze", "--help"],
        &["bronze", "dev", "--help"],
        &["bronze", "service", "create", "--help"],
        &["bronze", "stack", "deploy", "--help"],
        &["bronze-discovery", "--help"],
        &["bronze-registrator", "--help"],
        &["bronze-registry", "--help"],
        &["bronze-gateway", "--help"],
        &["bronze-scheduler", "--help"],
        &["bronze-agent", "--help"],
    ];
    for args in helps {
        let out = Command::new(bin.join(args[0]))
            .args(&args[1..])
            .output()
            .expect("--help runs");
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            foreign_addresses(&text),
            Vec::<String>::new(),
            "in {args:?}:\n{text}"
        );
    }
    assert_eq!(
        foreign_addresses("at 10.0.0.1:7700, not 127.0.0.1 or 0.0.0.0, ranges 10.0.0.0/8 ok"),
        vec!["10.0.0.1"]
    );
}
