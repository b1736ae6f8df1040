//! `bronze`: the command line for people. `bronze dev` starts every
//! component that exists in this one process, with embedded state, and
//! prints where each listens.

mod dev;

/// The gateway binary's allocator (see `bronze-gateway`'s main.rs), so
/// `bronze dev` proxies with what the benchmarks measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bronze_runtime::EX_USAGE;
use clap::{Parser, Subcommand};

/// Bronze: Swarm + Consul + Registrator + Kong + a private registry, as one
/// coherent platform for teams without an operations team.
#[derive(Debug, Parser)]
#[command(name = "bronze", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole platform on this host in one process (state in
    /// --data-dir). Ctrl-C or SIGTERM drains and stops it.
    Dev(dev::DevArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Dev(args) => match args.load() {
            Ok(config) => dev::run(config),
            Err(e) => {
                eprintln!("bronze dev: {e}");
                EX_USAGE
            }
        },
    };
    std::process::exit(code);
}
