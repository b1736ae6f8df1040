//! `bronze dev`: every component in one tokio runtime, each through the
//! same `run`/`bind` entry its own binary uses.

use std::path::{Path, PathBuf};

use bronze_runtime::Shutdown;
use bronze_runtime::config::{self, ConfigError};
use bronze_telemetry::LogFormat;
use clap::Args;
use serde::{Deserialize, Serialize};

#[derive(Debug, Args, Serialize)]
pub struct DevArgs {
    /// TOML file with one table per component ([discovery], ...), each
    /// holding that component's own configuration keys.
    #[arg(short, long, env = "BRONZE_DEV_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,

    /// Directory holding every component's state [default: bronze-data].
    #[arg(long, env = "BRONZE_DEV_DATA_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<String>,

    /// Log format: plain or json [default: plain].
    #[arg(long, env = "BRONZE_LOG_FORMAT", value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormat>,

    /// Listen on 127.0.0.1 with ports chosen by the kernel and keep state in
    /// memory: for tests and for a second platform beside a running one.
    #[arg(long)]
    #[serde(skip)]
    ephemeral: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevConfig {
    data_dir: String,
    log_format: LogFormat,
    discovery: bronze_discovery::Config,
    /// Its `discovery` key is filled in with the in-process discovery.
    registrator: bronze_registrator::Config,
    /// Its `root` defaults to `<data_dir>/registry`.
    registry: bronze_registry::Config,
    /// Its `discovery` key defaults to the in-process discovery's gRPC, its
    /// `dns_resolver` to the in-process discovery's DNS server (so
    /// `<svc>.service.<domain>` hosts and SRV names resolve).
    gateway: bronze_gateway::Config,
    /// Its `data_dir` defaults to `<data_dir>/scheduler`; its `discovery`
    /// and `registry` keys to the in-process discovery's and registry's
    /// gRPC (the registry's `registry_names` to its HTTP address as
    /// 127.0.0.1:PORT and localhost:PORT), so autodeploy works as is.
    scheduler: bronze_scheduler::Config,
    /// Its `scheduler` and `join_token` are the in-process scheduler's; its
    /// `data_dir` defaults to `<data_dir>/agent`.
    agent: bronze_agent::Config,
    #[serde(skip)]
    ephemeral: bool,
}

impl Default for DevConfig {
    fn default() -> Self {
        Self {
            data_dir: "bronze-data".into(),
            log_format: LogFormat::Plain,
            discovery: bronze_discovery::Config::default(),
            registrator: dev_registrator(),
            registry: bronze_registry::Config {
                root: String::new(),
                ..Default::default()
            },
            gateway: bronze_gateway::Config::default(),
            scheduler: bronze_scheduler::Config::default(),
            agent: dev_agent(),
            ephemeral: false,
        }
    }
}

/// On one host, the node's address is loopback.
fn dev_agent() -> bronze_agent::Config {
    bronze_agent::Config {
        address: "127.0.0.1".into(),
        ..Default::default()
    }
}

/// On one host, published ports are reachable on loopback.
fn dev_registrator() -> bronze_registrator::Config {
    bronze_registrator::Config {
        ip: Some(std::net::IpAddr::from([127, 0, 0, 1])),
        ..Default::default()
    }
}

impl DevArgs {
    pub fn load(&self) -> Result<DevConfig, ConfigError> {
        let mut c: DevConfig = config::load(self.config.as_deref(), self)?;
        c.ephemeral = self.ephemeral;
        if c.ephemeral {
            let e = bronze_discovery::Config::ephemeral();
            c.discovery.http.addr = e.http.addr;
            c.discovery.grpc.addr = e.grpc.addr;
            c.discovery.dns.addr = e.dns.addr;
            c.discovery.data_dir = String::new();
            c.registrator.metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            // Blobs need files: a directory of this process, removed at exit.
            let e = bronze_registry::Config::ephemeral(&ephemeral_registry_root());
            c.registry.addr = e.addr;
            c.registry.grpc_addr = e.grpc_addr;
            c.registry.root = e.root;
            let g = bronze_gateway::Config::ephemeral();
            c.gateway.addr = g.addr;
            c.gateway.admin_addr = g.admin_addr;
            c.gateway.data_dir = String::new();
            if !c.gateway.tls_addr.is_empty() {
                c.gateway.tls_addr = "127.0.0.1:0".into();
            }
            let s = bronze_scheduler::Config::ephemeral();
            c.scheduler.addr = s.addr;
            c.scheduler.data_dir = String::new();
            c.agent.metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            c.agent.data_dir = String::new();
        } else {
            c.discovery.data_dir = Path::new(&c.data_dir)
                .join("discovery")
                .display()
                .to_string();
            c.gateway.data_dir = Path::new(&c.data_dir).join("gateway").display().to_string();
            if c.scheduler.data_dir == bronze_scheduler::Config::default().data_dir {
                c.scheduler.data_dir = Path::new(&c.data_dir)
                    .join("scheduler")
                    .display()
                    .to_string();
            }
            if c.agent.data_dir == bronze_agent::Config::default().data_dir {
                c.agent.data_dir = Path::new(&c.data_dir).join("agent").display().to_string();
            }
            if c.registry.root.is_empty() {
                c.registry.root = Path::new(&c.data_dir)
                    .join("registry")
                    .display()
                    .to_string();
            }
        }
        c.discovery.log_format = c.log_format;
        c.registrator.log_format = c.log_format;
        c.registry.log_format = c.log_format;
        c.gateway.log_format = c.log_format;
        c.scheduler.log_format = c.log_format;
        c.agent.log_format = c.log_format;
        c.discovery.validate().map_err(|e| within("discovery", e))?;
        c.registrator
            .validate()
            .map_err(|e| within("registrator", e))?;
        c.registry.validate().map_err(|e| within("registry", e))?;
        c.gateway.validate().map_err(|e| within("gateway", e))?;
        c.scheduler.validate().map_err(|e| within("scheduler", e))?;
        // The agent is validated once it has the scheduler's join token.
        Ok(c)
    }
}

fn ephemeral_registry_root() -> String {
    std::env::temp_dir()
        .join(format!("bronze-dev-registry-{}", std::process::id()))
        .display()
        .to_string()
}

/// Names a component's key as seen from the dev config file.
fn within(table: &str, e: ConfigError) -> ConfigError {
    match e {
        ConfigError::Invalid { key, message } => ConfigError::Invalid {
            key: format!("{table}.{key}"),
            message,
        },
        other => other,
    }
}

/// Runs the platform until SIGTERM/SIGINT; returns the exit code.
pub fn run(config: DevConfig) -> i32 {
    bronze_telemetry::init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bronze dev: cannot start the runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(async move {
        let shutdown = Shutdown::new();
        shutdown.trigger_on_signals();
        let state = if config.ephemeral {
            "state in memory".to_string()
        } else {
            format!("state in {}/", config.data_dir)
        };
        if let Err(e) = engine_answers(&config.agent.docker_host).await {
            eprintln!("bronze dev: {e}");
            return 1;
        }
        let discovery = match bronze_discovery::Server::bind(config.discovery.clone()).await {
            Ok(s) => s,
            Err(e) => return cannot_start("discovery", &e),
        };
        let mut registrator_config = config.registrator.clone();
        registrator_config.discovery = format!("http://{}", discovery.grpc_addr());
        let registrator = match bronze_registrator::Server::bind(registrator_config).await {
            Ok(s) => s,
            Err(e) => return cannot_start("registrator", &e),
        };
        let registry = match bronze_registry::Server::bind(config.registry.clone()).await {
            Ok(s) => s,
            Err(e) => return cannot_start("registry", &e),
        };
        let mut gateway_config = config.gateway.clone();
        if gateway_config.discovery.is_empty() {
            gateway_config.discovery = format!("http://{}", discovery.grpc_addr());
        }
        if gateway_config.dns_resolver.is_empty() {
            gateway_config.dns_resolver = reachable(discovery.dns_addr()).to_string();
        }
        let gateway = match bronze_gateway::Server::bind(gateway_config).await {
            Ok(s) => s,
            Err(e) => return cannot_start("gateway", &e),
        };
        let mut scheduler_config = config.scheduler.clone();
        if scheduler_config.discovery.is_empty() {
            scheduler_config.discovery = format!("http://{}", reachable(discovery.grpc_addr()));
        }
        // Deploy on push: the scheduler follows the in-process registry,
        // whose images are named as clients push them (127.0.0.1:PORT or
        // localhost:PORT; other names through the config's
        // scheduler.registry_names).
        if scheduler_config.registry.is_empty() {
            scheduler_config.registry = format!("http://{}", reachable(registry.grpc_addr()));
            if scheduler_config.registry_names.is_empty() {
                let http = reachable(registry.addr());
                scheduler_config.registry_names =
                    vec![http.to_string(), format!("localhost:{}", http.port())];
            }
        }
        let scheduler = match bronze_scheduler::Server::bind(scheduler_config).await {
            Ok(s) => s,
            Err(e) => return cannot_start("scheduler", &e),
        };
        let mut agent_config = config.agent.clone();
        agent_config.scheduler = format!("http://{}", reachable(scheduler.addr()));
        agent_config.join_token = scheduler.join_token();
        let agent = match bronze_agent::Server::bind(agent_config).await {
            Ok(s) => s,
            Err(e) => return cannot_start("agent", &e),
        };
        // One line per listener, stable and parseable: tests read them.
        println!("bronze dev: every component in this process, {state}");
        println!(
            "discovery http  http://{}  (Consul API, /metrics, /healthz)",
            discovery.http_addr()
        );
        println!(
            "discovery dns   {}  (udp+tcp, domain {})",
            discovery.dns_addr(),
            config.discovery.dns.domain
        );
        println!(
            "discovery grpc  {}  (bronze.discovery.v1)",
            discovery.grpc_addr()
        );
        println!(
            "registrator     http://{}  (/metrics; node {}, registers this host's containers at {})",
            registrator.metrics_addr(),
            registrator.registrator().node(),
            registrator.registrator().host_ip()
        );
        println!(
            "registry        http://{}  (docker push/pull, /metrics, /healthz; events gRPC {})",
            registry.addr(),
            registry.grpc_addr()
        );
        println!(
            "gateway         http://{}  (proxy; admin API, /metrics, /healthz on http://{})",
            gateway.addr(),
            gateway.admin_addr()
        );
        if let Some(tls) = gateway.tls_addr() {
            println!("gateway tls     https://{tls}  (proxy over TLS; certificates by SNI)");
        }
        println!(
            "scheduler       http://{}  (bronze service/node API, agents' sessions, /metrics, /healthz)",
            scheduler.addr()
        );
        println!(
            "agent           http://{}  (/metrics; this host is node {}, running tasks on its engine)",
            agent.metrics_addr(),
            config.agent.hostname
        );
        println!("ready; Ctrl-C stops");
        // The registrator stops first: its last heartbeat needs discovery.
        let reg = tokio::spawn(registrator.serve(shutdown.clone()));
        let images = tokio::spawn(registry.serve(shutdown.clone()));
        let proxy = tokio::spawn(gateway.serve(shutdown.clone()));
        // The agent stops before the scheduler (its tasks keep running).
        let worker = tokio::spawn(agent.serve(shutdown.clone()));
        let scheduler_stop = Shutdown::new();
        let manager = tokio::spawn(scheduler.serve(scheduler_stop.clone()));
        let discovery_stop = Shutdown::new();
        let disc = tokio::spawn(discovery.serve(discovery_stop.clone()));
        shutdown.wait().await;
        let mut code = exit_code("agent", worker.await);
        scheduler_stop.trigger();
        code |= exit_code("scheduler", manager.await);
        let _ = reg.await;
        discovery_stop.trigger();
        code |= exit_code("registry", images.await);
        code |= exit_code("gateway", proxy.await);
        if config.ephemeral {
            let _ = std::fs::remove_dir_all(&config.registry.root);
        }
        code |= exit_code("discovery", disc.await);
        tracing::info!("bronze dev stopped");
        code
    })
}

/// The engine must answer before anything starts: the agent runs every
/// task on it and the registrator reads it. Says where it looked and what
/// to do when it does not.
async fn engine_answers(docker_host: &str) -> Result<(), String> {
    let host = (!docker_host.is_empty()).then_some(docker_host);
    let place = match host {
        Some(h) => h.to_string(),
        None => {
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
        }
    };
    let answered = match bronze_registrator::engine::connect(host).await {
        Ok(docker) => docker.ping().await.map(|_| ()),
        Err(e) => Err(e),
    };
    answered.map_err(|e| {
        format!(
            "the Docker engine does not answer at {place} ({e}).\n  \
             What to do: start it (`sudo systemctl start docker`), check that this user may \
             use its socket (the `docker` group), or point DOCKER_HOST (or [agent] docker_host \
             and [registrator] docker_host in `bronze dev --config FILE`) at it."
        )
    })
}

/// Says why `component` could not start and, for the failures a newcomer
/// meets (a port already taken, a privileged port), what to do; gives the
/// exit code.
fn cannot_start(component: &str, e: &(dyn std::error::Error + 'static)) -> i32 {
    eprintln!("bronze dev: {component}: {e}");
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::AddrInUse => eprintln!(
                    "  What to do: another program listens there (another `bronze dev`, or \
                     Consul, Kong, a registry on the same port?): stop it, move this listener \
                     in a config file (`bronze dev --config FILE`: a table per component with \
                     its own keys, e.g. [gateway] addr = \"127.0.0.1:18000\", \
                     [discovery.http] addr = \"127.0.0.1:18500\"), or run `bronze dev --ephemeral` (ports the kernel chooses, state in memory)."
                ),
                std::io::ErrorKind::PermissionDenied => eprintln!(
                    "  What to do: ports below 1024 need root or CAP_NET_BIND_SERVICE; pick a \
                     port above 1023 in the config file."
                ),
                _ => {}
            }
            break;
        }
        cause = c.source();
    }
    1
}

/// 0 when a component's task ended cleanly; otherwise says why and gives 1.
fn exit_code<E: std::fmt::Display>(
    component: &str,
    ended: Result<Result<(), E>, tokio::task::JoinError>,
) -> i32 {
    match ended {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("bronze dev: {component}: {e}");
            1
        }
        Err(e) => {
            eprintln!("bronze dev: {component}: {e}");
            1
        }
    }
}

/// A listener's address as a client in this process reaches it: an
/// unspecified bind address (`0.0.0.0`, `::`) becomes loopback.
fn reachable(mut addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}
