//! `bronze-agent`: read flags, env and config file, set up logging, hand
//! over to the library.

use bronze_agent::cli::Args;
use bronze_runtime::{EX_USAGE, Shutdown};
use clap::Parser;

fn main() {
    let args = Args::parse();
    let config = match args.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bronze-agent: {e}");
            std::process::exit(EX_USAGE);
        }
    };
    bronze_telemetry::init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bronze-agent: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = Shutdown::new();
        shutdown.trigger_on_signals();
        bronze_agent::run(config, shutdown).await
    });
    if let Err(e) = result {
        eprintln!("bronze-agent: {e}");
        std::process::exit(1);
    }
}
