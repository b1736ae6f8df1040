//! `bronze-registry`: serve (default) or run a garbage collection on the
//! running registry (`gc [--dry-run]`, through its gRPC address).

use bronze_proto::registry::v1 as pb;
use bronze_registry::cli::{Args, Command};
use bronze_runtime::{EX_USAGE, Shutdown};
use clap::Parser;

fn main() {
    let args = Args::parse();
    let config = match args.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bronze-registry: {e}");
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
            eprintln!("bronze-registry: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async {
        match args.command {
            Some(Command::Gc { dry_run, ref grace }) => gc(config, dry_run, grace.as_deref()).await,
            Some(Command::Serve) | None => {
                let shutdown = Shutdown::new();
                shutdown.trigger_on_signals();
                match bronze_registry::run(config, shutdown).await {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("bronze-registry: {e}");
                        1
                    }
                }
            }
        }
    });
    std::process::exit(code);
}

async fn gc(config: bronze_registry::Config, dry_run: bool, grace: Option<&str>) -> i32 {
    let grace = match grace.map(bronze_runtime::duration::parse).transpose() {
        Ok(g) => g.map(|d| prost_types::Duration {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }),
        Err(e) => {
            eprintln!("bronze-registry gc: --grace: {e}");
            return bronze_runtime::EX_USAGE;
        }
    };
    let url = format!("http://{}", config.grpc_addr);
    let mut client = match pb::registry_client::RegistryClient::connect(url.clone()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bronze-registry gc: cannot reach the registry's gRPC address {url}: {e}");
            return 1;
        }
    };
    match client
        .collect_garbage(pb::CollectGarbageRequest { dry_run, grace })
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            let verb = if dry_run { "would free" } else { "freed" };
            for d in &r.digests {
                println!("{d}");
            }
            println!(
                "{verb} {} blobs, {} bytes; kept {}; stale uploads purged: {}",
                r.digests.len(),
                r.bytes,
                r.kept,
                r.uploads_purged
            );
            0
        }
        Err(e) => {
            eprintln!("bronze-registry gc: {}", e.message());
            1
        }
    }
}
