//! `cargo xtask <task>`: the project's automation, in Rust.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build every component into a container image, offline: FROM scratch
    /// with the project's own binary and the shared libraries it links.
    Images {
        /// Use the debug build instead of building --release.
        #[arg(long)]
        debug: bool,
    },
    /// Run the whole test suite: installs what the tests need when it is
    /// missing (dig, py-consul), then `cargo test --workspace`.
    Test {
        /// Passed on to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a benchmark on this machine and print a table of figures (and
    /// ratios to real peers where one exists; see BENCHMARKS.md). Names:
    /// dns, registrator, registry, gateway, scheduler, placement, rollout, mesh,
    /// e2e.
    Bench {
        name: String,
        /// Seconds per dnsperf or wrk run (and per fixed-rate run: gateway).
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Runs per peer (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Only this part: throughput, latency or memory (dns).
        #[arg(long)]
        only: Option<String>,
        /// Containers started at once (registrator), replicas (scheduler).
        #[arg(long)]
        containers: Option<usize>,
        /// Tasks placed (placement).
        #[arg(long, default_value_t = 30_000)]
        tasks: usize,
        /// gateway: instead of the table, a soak of this many minutes
        /// (10 when given alone): steady load, config swaps, memory sampled.
        #[arg(long, value_name = "MINUTES", num_args = 0..=1, default_missing_value = "10")]
        soak: Option<u32>,
        /// gateway: requests/s of the fixed-rate run [default: half of what
        /// wrk measured for the backend directly].
        #[arg(long)]
        rate: Option<f64>,
    },
    /// One fixed-rate run of the gateway bench's open-loop generator
    /// against 127.0.0.1:PORT (GET /, 50 connections, one thread, latency
    /// from each request's scheduled send time), after a one-second warm-up:
    /// to reproduce or compare a row of the fixed-rate columns by hand.
    Loadgen {
        /// Port of the target on 127.0.0.1.
        port: u16,
        /// Requests per second, all connections together.
        #[arg(long)]
        rate: f64,
        /// Seconds measured.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.task {
        Task::Images { debug } => rt.block_on(async {
            let profile = if debug {
                xtask::Profile::Debug
            } else {
                xtask::Profile::Release
            };
            let dir = xtask::build_binaries(profile)?;
            for image in xtask::images::IMAGES {
                let tag = xtask::images::build(image, &dir).await?;
                println!("built {tag}");
            }
            Ok(())
        }),
        Task::Test { args } => {
            xtask::prerequisites::install()?;
            let status = std::process::Command::new(
                std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            )
            .current_dir(xtask::root())
            .args(["test", "--workspace", "--locked"])
            .args(&args)
            .status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Bench {
            name,
            seconds,
            runs,
            only,
            containers,
            tasks,
            soak,
            rate,
        } => match name.as_str() {
            "dns" => rt.block_on(xtask::bench_dns::run(seconds, runs, only.as_deref())),
            "registrator" => rt.block_on(xtask::bench_registrator::run(containers.unwrap_or(100))),
            "placement" => rt.block_on(xtask::bench_placement::run(tasks, runs as usize)),
            "rollout" => rt.block_on(xtask::bench_rollout::run(runs as usize)),
            "e2e" => rt.block_on(xtask::bench_e2e::run(runs as usize)),
            "mesh" => rt.block_on(xtask::bench_mesh::run(u64::from(seconds), runs as usize)),
            "scheduler" => rt.block_on(xtask::bench_scheduler::run(
                containers.unwrap_or(50),
                runs as usize,
            )),
            "registry" => rt.block_on(xtask::bench_registry::run(runs as usize)),
            "gateway" => match soak {
                Some(minutes) => xtask::bench_gateway_soak::run(minutes),
                None => xtask::bench_gateway::run(u64::from(seconds), runs as usize, rate),
            },
            other => {
                anyhow::bail!(
                    "no benchmark named {other:?}; available: dns, registrator, registry, gateway, \
                     scheduler, placement, rollout, mesh, e2e"
                )
            }
        },
        Task::Loadgen {
            port,
            rate,
            seconds,
        } => {
            if !(rate.is_finite() && rate > 0.0) {
                anyhow::bail!("--rate: expected requests per second above 0, got {rate}");
            }
            if seconds == 0 {
                anyhow::bail!("--seconds: expected at least 1");
            }
            let reports =
                xtask::bench_gateway_rate::fixed_rate(&[("target", port)], rate, seconds)?;
            for r in &reports {
                println!("{}", r.plan.describe());
                println!("achieved | p50 | p99 | p99.9 | max");
                println!("{}", xtask::bench_gateway_rate::columns(r));
            }
            println!(
                "{}",
                xtask::bench_gateway_rate::generator_note(&["target"], &reports)
            );
            Ok(())
        }
    }
}
