//! `bronze`: the command line for people. `bronze dev` starts every
//! component that exists in this one process, with embedded state, and
//! prints where each listens; `bronze service ...` and `bronze node ...`
//! are Docker's `docker service` and `docker node` over the scheduler's
//! control API.

mod client;
mod dev;
mod json;
mod node;
mod object;
mod progress;
mod service;
mod stack;
mod table;
mod units;
mod words;

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

    #[command(flatten)]
    api: client::ApiArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole platform on this host in one process (state in
    /// --data-dir). Ctrl-C or SIGTERM drains and stops it.
    Dev(dev::DevArgs),

    /// Manage services: images run as tasks on the cluster's nodes (docker
    /// service).
    #[command(subcommand)]
    Service(service::Command),

    /// Manage the cluster's nodes, the hosts whose bronze-agent joined
    /// (docker node).
    #[command(subcommand)]
    Node(node::Command),

    /// Deploy and manage stacks: the services of compose files, deployed
    /// and updated together (docker stack).
    #[command(subcommand)]
    Stack(stack::Command),

    /// Manage secrets: versioned data mounted read-only on a tmpfs in the
    /// tasks of the services that name them (default /run/secrets/NAME),
    /// encrypted at rest, never shown by any command (docker secret).
    #[command(subcommand)]
    Secret(object::Command),

    /// Manage configs: versioned data mounted read-only in the tasks of
    /// the services that name them (default /NAME) (docker config).
    #[command(subcommand)]
    Config(object::Command),
}

/// Exit code of a command interrupted while it waited (128 + SIGINT).
const EX_INTERRUPTED: i32 = 130;

/// Runs a `service`, `node` or `stack` command; prints its error, if any, as
/// `bronze: <message>`.
fn run_api(api: &client::ApiArgs, command: Command) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bronze: cannot start the runtime: {e}");
            return 1;
        }
    };
    let result = runtime.block_on(async {
        if let Command::Stack(c) = command {
            // Connects itself: `stack config` needs no scheduler, and
            // `stack deploy` checks its files first.
            return stack::run(c, api).await;
        }
        let mut client = client::Api::connect(api).await?;
        match command {
            Command::Service(c) => service::run(c, &mut client).await,
            Command::Node(c) => node::run(c, &mut client).await,
            Command::Secret(c) => object::run(object::Kind::Secret, c, &mut client).await,
            Command::Config(c) => object::run(object::Kind::Config, c, &mut client).await,
            Command::Dev(_) | Command::Stack(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => 0,
        Err(client::Error::Reported) => 1,
        Err(e @ client::Error::Interrupted(_)) => {
            eprintln!("bronze: {e}");
            EX_INTERRUPTED
        }
        Err(e) => {
            eprintln!("bronze: {e}");
            1
        }
    }
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
        command => run_api(&cli.api, command),
    };
    std::process::exit(code);
}
