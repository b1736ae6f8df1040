//! `cargo xtask bench registry`: bronze-registry against Debian's
//! docker-registry (distribution 2.8.2), the same clients against both:
//! curl uploading and downloading one 512 MiB blob, 50 concurrent curl pulls
//! of a 100 MiB layer (resident memory sampled meanwhile), and
//! `docker pull` of a 5-layer image through the local engine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench_util::{Proc, free_port, rss_mb};
use anyhow::{Context, bail};

fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let out = sh(Command::new("sha256sum").arg(path))?;
    Ok(format!(
        "sha256:{}",
        out.split_whitespace().next().unwrap_or_default()
    ))
}

struct Target {
    name: &'static str,
    addr: SocketAddr,
    pid: u32,
    _proc: Proc,
}

/// Uploads `file` with POST then PUT (curl -T streams it); MB/s.
fn upload(t: &Target, repo: &str, file: &Path, digest: &str) -> anyhow::Result<f64> {
    let head = sh(Command::new("curl")
        .args(["-s", "-i", "-X", "POST"])
        .arg(format!("http://{}/v2/{repo}/blobs/uploads/", t.addr)))?;
    let location = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("location:"))
        .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        .context("no Location")?;
    let url = if location.starts_with("http") {
        location
    } else {
        format!("http://{}{location}", t.addr)
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let out = sh(Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{speed_upload} %{time_total}",
            "-X",
            "PUT",
        ])
        .args(["-H", "Content-Type: application/octet-stream", "-T"])
        .arg(file)
        .arg(format!("{url}{sep}digest={digest}")))?;
    let mut f = out.split_whitespace();
    if f.next() != Some("201") {
        bail!("{} upload failed: {out}", t.name);
    }
    let speed = f.next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 1e6;
    eprintln!(
        "  {}: upload {speed:.0} MB/s in {} s",
        t.name,
        f.next().unwrap_or("?")
    );
    Ok(speed)
}

fn download(t: &Target, repo: &str, digest: &str) -> anyhow::Result<f64> {
    let out = sh(Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{speed_download}",
        ])
        .arg(format!("http://{}/v2/{repo}/blobs/{digest}", t.addr)))?;
    let mut f = out.split_whitespace();
    if f.next() != Some("200") {
        bail!("{} download failed: {out}", t.name);
    }
    Ok(f.next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 1e6)
}

/// 50 concurrent curl downloads; returns (seconds, peak resident MB).
fn concurrent_pulls(t: &Target, repo: &str, digest: &str, n: usize) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let mut children: Vec<Child> = (0..n)
        .map(|_| {
            Command::new("curl")
                .args(["-s", "-f", "-o", "/dev/null"])
                .arg(format!("http://{}/v2/{repo}/blobs/{digest}", t.addr))
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut peak: f64 = 0.0;
    let mut failed = 0;
    loop {
        peak = peak.max(rss_mb(t.pid));
        let mut running = 0;
        for c in &mut children {
            match c.try_wait()? {
                None => running += 1,
                Some(s) if !s.success() => failed += 1,
                Some(_) => {}
            }
        }
        if running == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in &mut children {
        let _ = c.wait();
    }
    if failed > 0 {
        bail!("{}: {failed} of {n} pulls failed", t.name);
    }
    Ok((started.elapsed().as_secs_f64(), peak))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn random_file(path: &Path, mib: usize) -> anyhow::Result<()> {
    sh(Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "status=none"])
        .arg(format!("of={}", path.display()))
        .arg(format!("count={mib}")))?;
    Ok(())
}

/// A 5-layer image built from the busybox workload image (4 layers of
/// 16 MiB of random bytes on top of its own).
async fn five_layer_image() -> anyhow::Result<&'static str> {
    const TAG: &str = "bronze-bench/five-layers:latest";
    crate::images::build_busybox_httpd("bronze-test/busybox-httpd:latest").await?;
    let dir = tempfile_dir()?;
    let dockerfile = "FROM bronze-test/busybox-httpd:latest\n\
        RUN [\"/bin/busybox\", \"dd\", \"if=/dev/urandom\", \"of=/l1\", \"bs=1048576\", \"count=16\"]\n\
        RUN [\"/bin/busybox\", \"dd\", \"if=/dev/urandom\", \"of=/l2\", \"bs=1048576\", \"count=16\"]\n\
        RUN [\"/bin/busybox\", \"dd\", \"if=/dev/urandom\", \"of=/l3\", \"bs=1048576\", \"count=16\"]\n\
        RUN [\"/bin/busybox\", \"dd\", \"if=/dev/urandom\", \"of=/l4\", \"bs=1048576\", \"count=16\"]\n";
    std::fs::write(dir.join("Dockerfile"), dockerfile)?;
    sh(Command::new("docker")
        .args(["build", "-q", "-t", TAG])
        .arg(&dir)
        .env("DOCKER_BUILDKIT", "0"))?;
    Ok(TAG)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("bronze-bench-registry-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Seconds for `docker pull` of `image`, with none of its layers present
/// locally (every image that shares them is removed first).
fn docker_pull(image: &str, sharing: &[&str]) -> anyhow::Result<f64> {
    for i in sharing.iter().chain(std::iter::once(&image)) {
        let _ = Command::new("docker").args(["rmi", "-f", i]).output();
    }
    let started = Instant::now();
    sh(Command::new("docker").args(["pull", "-q", image]))?;
    Ok(started.elapsed().as_secs_f64())
}

pub async fn run(runs: usize) -> anyhow::Result<()> {
    crate::prerequisites::apt(&[("docker-registry", "docker-registry"), ("curl", "curl")])?;
    let bin = crate::build_binaries(crate::Profile::Release)?;
    let dir = tempfile_dir()?;

    let bronze = {
        let port = free_port()?;
        let root = dir.join("bronze");
        let child = Command::new(bin.join("bronze-registry"))
            .arg("--root")
            .arg(&root)
            .args([
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--grpc-addr",
                &format!("127.0.0.1:{}", free_port()?),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?;
        Target {
            name: "bronze-registry",
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pid: child.id(),
            _proc: Proc(child),
        }
    };
    let distribution = {
        let (proc, port) = crate::bench_util::spawn_distribution(&dir)?;
        Target {
            name: "distribution 2.8.2",
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pid: proc.0.id(),
            _proc: proc,
        }
    };
    for t in [&bronze, &distribution] {
        let mut ok = false;
        for _ in 0..200 {
            if Command::new("curl")
                .args(["-s", "-f", "-o", "/dev/null"])
                .arg(format!("http://{}/v2/", t.addr))
                .status()?
                .success()
            {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        if !ok {
            bail!("{} did not start", t.name);
        }
    }

    let big = dir.join("blob-512m");
    random_file(&big, 512)?;
    let layer = dir.join("layer-100m");
    random_file(&layer, 100)?;
    let layer_digest = sha256_file(&layer)?;

    // Every upload is new content (its first bytes carry a counter), so
    // neither registry can skip work for a blob it already has. Before each
    // upload, dirty pages are flushed so one run's writeback does not slow
    // the next, and (as root) the page cache is dropped: on this VM, page
    // cache growing into guest memory not touched since boot halves both
    // servers' upload speed after a few uploads (the same loop ran 736, 722,
    // 445, 353 MB/s into bronze and 293, 294, 212, 192 into distribution,
    // and was back to full speed after a drop), which measures the
    // hypervisor, not the registry.
    let mut n = 0u32;
    let mut fresh = || -> anyhow::Result<String> {
        use std::io::{Seek, Write};
        n += 1;
        let mut f = std::fs::OpenOptions::new().write(true).open(&big)?;
        f.seek(std::io::SeekFrom::Start(0))?;
        f.write_all(format!("{n:016}").as_bytes())?;
        drop(f);
        sha256_file(&big)
    };
    let warned = std::cell::Cell::new(false);
    let settle = |drop_caches: bool| {
        let _ = Command::new("sync").status();
        if drop_caches
            && let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "1")
            && !warned.replace(true)
        {
            eprintln!(
                "  cannot drop the page cache ({e}; needs root): later uploads may \
                 measure the machine's page-cache growth, for both servers alike"
            );
        }
    };
    for t in [&bronze, &distribution] {
        let d = fresh()?;
        upload(t, "bench/warm", &big, &d)?;
        download(t, "bench/warm", &d)?;
    }
    let (mut up_b, mut up_d, mut down_b, mut down_d) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        eprintln!("blob run {}/{runs}", i + 1);
        let repo = format!("bench/r{i}");
        // fresh() reads the file back, so curl reads it from memory; each
        // blob is downloaded right after its upload, from the page cache.
        settle(true);
        let d = fresh()?;
        up_b.push(upload(&bronze, &repo, &big, &d)?);
        down_b.push(download(&bronze, &repo, &d)?);
        settle(true);
        let d2 = fresh()?;
        up_d.push(upload(&distribution, &repo, &big, &d2)?);
        down_d.push(download(&distribution, &repo, &d2)?);
    }

    for t in [&bronze, &distribution] {
        upload(t, "bench/layer", &layer, &layer_digest)?;
    }
    settle(false);
    eprintln!(
        "50 concurrent pulls (resident before: bronze {:.1} MB, distribution {:.1} MB)",
        rss_mb(bronze.pid),
        rss_mb(distribution.pid)
    );
    let (pull_b, rss_b) = concurrent_pulls(&bronze, "bench/layer", &layer_digest, 50)?;
    let (pull_d, rss_d) = concurrent_pulls(&distribution, "bench/layer", &layer_digest, 50)?;

    eprintln!("docker pull of a 5-layer image");
    let image = five_layer_image().await?;
    let mut pulls_b = Vec::new();
    let mut pulls_d = Vec::new();
    let name_b = format!("127.0.0.1:{}/bench/five:1", bronze.addr.port());
    let name_d = format!("127.0.0.1:{}/bench/five:1", distribution.addr.port());
    for name in [&name_b, &name_d] {
        sh(Command::new("docker").args(["tag", image, name]))?;
        sh(Command::new("docker").args(["push", "-q", name]))?;
    }
    let sharing = [
        image,
        "bronze-test/busybox-httpd:latest",
        name_b.as_str(),
        name_d.as_str(),
    ];
    for i in 0..runs {
        eprintln!("docker pull run {}/{runs}", i + 1);
        pulls_b.push(docker_pull(&name_b, &sharing)?);
        pulls_d.push(docker_pull(&name_d, &sharing)?);
    }
    for name in [&name_b, &name_d] {
        let _ = Command::new("docker").args(["rmi", "-f", name]).output();
    }
    let _ = std::fs::remove_dir_all(&dir);

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let (ub, ud, db, dd) = (median(up_b), median(up_d), median(down_b), median(down_d));
    let (pb, pd) = (median(pulls_b), median(pulls_d));
    println!(
        "\nmachine: {} cores, {cpu}; median of {runs}\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| measure | bronze-registry | distribution 2.8.2 | bronze / distribution |");
    println!("|---|---|---|---|");
    println!(
        "| upload 512 MiB (curl -T, POST+PUT) | {ub:.0} MB/s | {ud:.0} MB/s | {:.2}x |",
        ub / ud
    );
    println!(
        "| download 512 MiB (curl) | {db:.0} MB/s | {dd:.0} MB/s | {:.2}x |",
        db / dd
    );
    println!(
        "| 50 concurrent pulls of 100 MiB: time | {pull_b:.2} s | {pull_d:.2} s | {:.2}x faster |",
        pull_d / pull_b
    );
    println!(
        "| 50 concurrent pulls of 100 MiB: peak resident memory | {rss_b:.1} MB | {rss_d:.1} MB | |"
    );
    println!(
        "| docker pull, 5 layers (~66 MiB), nothing cached locally | {pb:.2} s | {pd:.2} s | {:.2}x faster |",
        pd / pb
    );
    Ok(())
}
