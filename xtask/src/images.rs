//! Container images built offline: no base image can be pulled here, so each
//! image is FROM scratch with the component's binary, the shared libraries
//! `ldd` says it needs (at their own paths) and a minimal /etc.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use bollard::Docker;
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures::StreamExt;

pub struct Image {
    /// Image name under `bronze/`.
    pub name: &'static str,
    pub package: &'static str,
    pub binary: &'static str,
    /// Environment baked in: listen on every interface, state in /data.
    pub env: &'static [(&'static str, &'static str)],
    pub ports: &'static [&'static str],
    pub volume: Option<&'static str>,
}

pub const IMAGES: &[Image] = &[
    Image {
        name: "discovery",
        package: "bronze-discovery",
        binary: "bronze-discovery",
        env: &[
            ("BRONZE_DISCOVERY_HTTP_ADDR", "0.0.0.0:8500"),
            ("BRONZE_DISCOVERY_DNS_ADDR", "0.0.0.0:8600"),
            ("BRONZE_DISCOVERY_GRPC_ADDR", "0.0.0.0:8502"),
            ("BRONZE_DISCOVERY_DATA_DIR", "/data"),
            ("BRONZE_LOG_FORMAT", "json"),
        ],
        ports: &["8500/tcp", "8600/udp", "8600/tcp", "8502/tcp"],
        volume: Some("/data"),
    },
    Image {
        name: "registry",
        package: "bronze-registry",
        binary: "bronze-registry",
        env: &[
            ("BRONZE_REGISTRY_ADDR", "0.0.0.0:5000"),
            ("BRONZE_REGISTRY_GRPC_ADDR", "0.0.0.0:5002"),
            ("BRONZE_REGISTRY_ROOT", "/data"),
            ("BRONZE_LOG_FORMAT", "json"),
        ],
        ports: &["5000/tcp", "5002/tcp"],
        volume: Some("/data"),
    },
    Image {
        name: "gateway",
        package: "bronze-gateway",
        binary: "bronze-gateway",
        env: &[
            ("BRONZE_GATEWAY_ADDR", "0.0.0.0:8000"),
            // Loopback unless BRONZE_GATEWAY_ADMIN_TOKEN is set (the gateway
            // refuses an exposed admin API without a token).
            ("BRONZE_GATEWAY_ADMIN_ADDR", "127.0.0.1:8001"),
            // Admin API changes.
            ("BRONZE_GATEWAY_DATA_DIR", "/data"),
            ("BRONZE_LOG_FORMAT", "json"),
        ],
        ports: &["8000/tcp"],
        volume: Some("/data"),
    },
    Image {
        name: "scheduler",
        package: "bronze-scheduler",
        binary: "bronze-scheduler",
        env: &[
            ("BRONZE_SCHEDULER_ADDR", "0.0.0.0:7700"),
            ("BRONZE_SCHEDULER_DATA_DIR", "/data"),
            ("BRONZE_LOG_FORMAT", "json"),
        ],
        ports: &["7700/tcp"],
        volume: Some("/data"),
    },
    Image {
        name: "agent",
        package: "bronze-agent",
        binary: "bronze-agent",
        env: &[
            ("BRONZE_AGENT_METRICS_ADDR", "0.0.0.0:9700"),
            ("BRONZE_AGENT_DATA_DIR", "/data"),
            ("BRONZE_LOG_FORMAT", "json"),
        ],
        ports: &["9700/tcp"],
        volume: Some("/data"),
    },
    Image {
        name: "registrator",
        package: "bronze-registrator",
        binary: "bronze-registrator",
        env: &[
            ("BRONZE_REGISTRATOR_METRICS_ADDR", "0.0.0.0:9600"),
            ("BRONZE_LOG_FORMAT", "json"),
        ],
        ports: &["9600/tcp"],
        volume: None,
    },
];

pub fn find(name: &str) -> Option<&'static Image> {
    IMAGES.iter().find(|i| i.name == name)
}

/// The tag an image is built under.
pub fn tag(image: &Image) -> String {
    format!("bronze/{}:latest", image.name)
}

/// A regular file entry of a build context.
fn tar_file(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> anyhow::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_cksum();
    tar.append_data(&mut h, path, data)?;
    Ok(())
}

/// `rootfs/tmp`, world-writable with the sticky bit.
fn tar_tmp(tar: &mut tar::Builder<Vec<u8>>) -> anyhow::Result<()> {
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o1777);
    dir.set_size(0);
    dir.set_cksum();
    tar.append_data(&mut dir, "rootfs/tmp", std::io::empty())?;
    Ok(())
}

/// Shared libraries (and the dynamic loader) a binary needs, per `ldd`.
fn shared_libraries(binary: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") {
        return Ok(BTreeSet::new());
    }
    let mut libs = BTreeSet::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; vdso has no path.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.insert(PathBuf::from(p));
        }
    }
    if libs.is_empty() {
        bail!("ldd found no libraries for {}: {text}", binary.display());
    }
    Ok(libs)
}

fn dockerfile(image: &Image) -> String {
    let mut d = String::from("FROM scratch\nCOPY rootfs/ /\n");
    for (k, v) in image.env {
        d.push_str(&format!("ENV {k}={v}\n"));
    }
    for p in image.ports {
        d.push_str(&format!("EXPOSE {p}\n"));
    }
    if let Some(v) = image.volume {
        d.push_str(&format!("VOLUME {v}\n"));
    }
    d.push_str("STOPSIGNAL SIGTERM\n");
    d.push_str(&format!(
        "ENTRYPOINT [\"/usr/local/bin/{}\"]\n",
        image.binary
    ));
    d
}

/// The build context (a tar stream) for one image.
pub fn context(image: &Image, bin_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let binary = bin_dir.join(image.binary);
    if !binary.exists() {
        bail!(
            "{} is not built (looked in {})",
            image.binary,
            bin_dir.display()
        );
    }
    let mut tar = tar::Builder::new(Vec::new());
    tar_file(&mut tar, "Dockerfile", dockerfile(image).as_bytes(), 0o644)?;
    tar_file(
        &mut tar,
        "rootfs/etc/nsswitch.conf",
        b"hosts: files dns\n",
        0o644,
    )?;
    tar_file(
        &mut tar,
        "rootfs/etc/passwd",
        b"root:x:0:0:root:/:/nonexistent\n",
        0o644,
    )?;
    tar_tmp(&mut tar)?;
    // Regular entries with the file's bytes (never sparse ones, which the
    // engine's tar reader refuses), following symlinks to their targets.
    let add_file = |tar: &mut tar::Builder<Vec<u8>>, from: &Path, to: &str| -> anyhow::Result<()> {
        let data = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        tar_file(tar, to, &data, 0o755)
    };
    add_file(
        &mut tar,
        &binary,
        &format!("rootfs/usr/local/bin/{}", image.binary),
    )?;
    // CA certificates, for HTTPS health checks and clients.
    let ca = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if ca.exists() {
        add_file(&mut tar, ca, "rootfs/etc/ssl/certs/ca-certificates.crt")?;
    }
    for lib in shared_libraries(&binary)? {
        add_file(&mut tar, &lib, &format!("rootfs{}", lib.display()))?;
    }
    Ok(tar.into_inner()?)
}

pub async fn docker() -> anyhow::Result<Docker> {
    let docker =
        Docker::connect_with_local_defaults().context("connecting to the Docker engine")?;
    Ok(docker.negotiate_version().await?)
}

/// Builds one image from the binaries in `bin_dir`; returns its tag.
pub async fn build(image: &Image, bin_dir: &Path) -> anyhow::Result<String> {
    build_context(&tag(image), context(image, bin_dir)?).await
}

/// The test workload image: FROM scratch with Debian's static busybox
/// (apt-get install busybox-static) and /bin/sh linked to it, serving /www
/// on port 8080 with httpd.
/// `/www/health` exists, so a check on `/health` passes until a test
/// removes it (`busybox rm /www/health` through docker exec).
pub async fn build_busybox_httpd(tag: &str) -> anyhow::Result<String> {
    crate::prerequisites::apt(&[("busybox", "busybox-static")])?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("busybox not found (apt-get install busybox-static)")?;
    let data = std::fs::read(busybox)?;
    let mut tar = tar::Builder::new(Vec::new());
    let dockerfile = "FROM scratch\nCOPY rootfs/ /\nEXPOSE 8080\nENTRYPOINT [\"/bin/busybox\"]\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n";
    tar_file(&mut tar, "Dockerfile", dockerfile.as_bytes(), 0o644)?;
    tar_file(&mut tar, "rootfs/bin/busybox", &data, 0o755)?;
    // /bin/sh, so CMD-SHELL health checks (docker's --health-cmd) and
    // `sh -c` commands work as in any busybox image.
    let mut sh = tar::Header::new_gnu();
    sh.set_entry_type(tar::EntryType::Symlink);
    sh.set_size(0);
    sh.set_mode(0o777);
    tar.append_link(&mut sh, "rootfs/bin/sh", "busybox")?;
    tar_file(
        &mut tar,
        "rootfs/www/index.html",
        b"hello from busybox\n",
        0o644,
    )?;
    tar_file(&mut tar, "rootfs/www/health", b"ok\n", 0o644)?;
    tar_tmp(&mut tar)?;
    build_context(tag, tar.into_inner()?).await
}

/// The seeds' app, tagged `tag`: the busybox httpd test image (built by
/// [`build_busybox_httpd`] beforehand) serving `/version` (`version`), and
/// `/ready` unless `ready` is false (the seeds' stack checks it for
/// health: a version without it never turns healthy).
pub async fn build_app(tag: &str, version: &str, ready: bool) -> anyhow::Result<String> {
    let mut dockerfile = format!(
        "FROM bronze-test/busybox-httpd:latest\nCOPY version /www/version\nLABEL bronze.e2e.version={version}\n"
    );
    let mut tar = tar::Builder::new(Vec::new());
    tar_file(
        &mut tar,
        "version",
        format!("{version}\n").as_bytes(),
        0o644,
    )?;
    if ready {
        tar_file(&mut tar, "ready", b"ok\n", 0o644)?;
        dockerfile.push_str("COPY ready /www/ready\n");
    }
    tar_file(&mut tar, "Dockerfile", dockerfile.as_bytes(), 0o644)?;
    build_context(tag, tar.into_inner()?).await
}

/// The seeds' stack file for that app (`tests/e2e/seeds.rs` deploys it,
/// `cargo xtask bench e2e` times it): 3 replicas, a health check on
/// `/www/ready`, a Traefik routing label, start-first updates that roll
/// back; `VERSION` and `REGISTRY` come from the environment, as the
/// seeds' CI sets them.
pub const SEEDS_STACK: &str = r#"version: "3.8"
services:
  app:
    image: ${REGISTRY}/seeds/app:${VERSION:?the version to deploy}
    ports:
      - target: 8080
    healthcheck:
      test: ["CMD", "/bin/busybox", "test", "-f", "/www/ready"]
      interval: 500ms
      timeout: 2s
      retries: 2
    stop_grace_period: 1s
    deploy:
      replicas: 3
      labels:
        - "traefik.frontend.rule=PathPrefixStrip:/app"
      restart_policy:
        condition: any
        delay: 200ms
      update_config:
        parallelism: 1
        order: start-first
        failure_action: rollback
        monitor: 2s
"#;

async fn build_context(tag: &str, context: Vec<u8>) -> anyhow::Result<String> {
    let docker = docker().await?;
    let tag = tag.to_string();
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(&tag)
        .rm(true)
        .forcerm(true)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(msg) = stream.next().await {
        let info = msg.with_context(|| format!("building {tag}"))?;
        if let Some(err) = info.error_detail.and_then(|e| e.message) {
            bail!("building {tag}: {err}");
        }
    }
    Ok(tag)
}
