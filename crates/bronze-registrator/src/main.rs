//! `bronze-registrator`: read flags (gliderlabs spellings too), env and
//! config file, set up logging, hand over to the library.

use bronze_registrator::cli::{Args, translate};
use bronze_runtime::{EX_USAGE, Shutdown};
use clap::Parser;

fn main() {
    let args = Args::parse_from(translate(std::env::args()));
    let config = match args.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bronze-registrator: {e}");
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
            eprintln!("bronze-registrator: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = Shutdown::new();
        shutdown.trigger_on_signals();
        bronze_registrator::run(config, shutdown).await
    });
    if let Err(e) = result {
        eprintln!("bronze-registrator: {e}");
        std::process::exit(1);
    }
}
