//! Command-line flags and environment variables of `bronze-discovery`.
//! Each overrides the same key of the config file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use bronze_runtime::config::{self, ConfigError};
use bronze_telemetry::LogFormat;
use clap::{Args as ClapArgs, Parser};
use serde::Serialize;

use crate::config::Config;

/// Bronze's service catalog: health checks, DNS (A/AAAA/SRV), a
/// Consul-compatible HTTP API and gRPC with streaming watch.
///
/// Every setting comes from (lowest to highest precedence) its default, the
/// TOML file given by --config, its environment variable, and its flag.
#[derive(Debug, Parser, Serialize)]
#[command(name = "bronze-discovery", version, max_term_width = 100)]
pub struct Args {
    /// TOML configuration file (keys as in the README's example).
    #[arg(short, long, env = "BRONZE_DISCOVERY_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// This server's node name [default: the host name].
    #[arg(long, env = "BRONZE_DISCOVERY_NODE_NAME", value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,

    /// Datacenter name reported to Consul clients [default: dc1].
    #[arg(long, env = "BRONZE_DISCOVERY_DATACENTER", value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,

    /// This node's address [default: 127.0.0.1].
    #[arg(
        long = "advertise",
        env = "BRONZE_DISCOVERY_ADVERTISE",
        value_name = "IP"
    )]
    #[serde(rename = "advertise_address", skip_serializing_if = "Option::is_none")]
    pub advertise_address: Option<IpAddr>,

    /// Directory for durable registrations; "" keeps them in memory only
    /// [default: bronze-data/discovery].
    #[arg(long, env = "BRONZE_DISCOVERY_DATA_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,

    /// Log format: plain or json [default: plain]. RUST_LOG sets the level.
    #[arg(long, env = "BRONZE_LOG_FORMAT", value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,

    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub grpc: GrpcArgs,
    #[command(flatten)]
    pub dns: DnsArgs,
}

#[derive(Debug, ClapArgs, Serialize)]
pub struct HttpArgs {
    /// Consul-compatible HTTP API, /metrics and /healthz [default: 127.0.0.1:8500].
    #[arg(
        id = "http_addr",
        long = "http-addr",
        env = "BRONZE_DISCOVERY_HTTP_ADDR",
        value_name = "ADDR"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,
}

#[derive(Debug, ClapArgs, Serialize)]
pub struct GrpcArgs {
    /// gRPC API (bronze.discovery.v1) [default: 127.0.0.1:8502].
    #[arg(
        id = "grpc_addr",
        long = "grpc-addr",
        env = "BRONZE_DISCOVERY_GRPC_ADDR",
        value_name = "ADDR"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,
}

#[derive(Debug, ClapArgs, Serialize)]
pub struct DnsArgs {
    /// DNS, UDP and TCP [default: 127.0.0.1:8600].
    #[arg(
        id = "dns_addr",
        long = "dns-addr",
        env = "BRONZE_DISCOVERY_DNS_ADDR",
        value_name = "ADDR"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,

    /// DNS zone answered [default: bronze.]; "consul." makes Bronze a
    /// drop-in for existing Consul DNS setups.
    #[arg(
        long = "domain",
        env = "BRONZE_DISCOVERY_DOMAIN",
        value_name = "DOMAIN"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,

    /// Forward names outside the domain to this resolver (repeatable;
    /// comma-separated in the environment). Without one they are REFUSED.
    #[arg(
        long = "recursor",
        env = "BRONZE_DISCOVERY_RECURSORS",
        value_name = "IP[:PORT]",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recursors: Vec<String>,
}

impl Args {
    /// The validated configuration these flags (and their file) describe.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config: Config = config::load(self.config.as_deref(), self)?;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn flags_override_the_file() {
        let mut f = tempfile::NamedTempFile::new().expect("temp");
        writeln!(
            f,
            "datacenter = \"east\"\n[dns]\ndomain = \"consul.\"\nservice_ttl = \"5s\""
        )
        .expect("write");
        let path = f.path().display().to_string();
        let args = Args::try_parse_from([
            "bronze-discovery",
            "--config",
            &path,
            "--domain",
            "sd.example.",
            "--recursor",
            "10.0.0.2,10.0.0.3:5353",
        ])
        .expect("parse");
        let c = args.load().expect("valid");
        assert_eq!(c.datacenter, "east");
        assert_eq!(c.dns.domain, "sd.example.");
        assert_eq!(c.dns.service_ttl, std::time::Duration::from_secs(5));
        assert_eq!(c.dns.recursors, vec!["10.0.0.2", "10.0.0.3:5353"]);
    }

    #[test]
    fn bad_file_values_name_the_key() {
        let mut f = tempfile::NamedTempFile::new().expect("temp");
        writeln!(f, "[dns]\nservice_ttl = \"soon\"").expect("write");
        let path = f.path().display().to_string();
        let args = Args::try_parse_from(["bronze-discovery", "-c", &path]).expect("parse");
        let err = args.load().unwrap_err().to_string();
        assert!(err.contains("dns.service_ttl"), "{err}");
    }
}
