//! Flags and environment variables of `bronze-registrator`. gliderlabs/
//! registrator's single-dash spellings (`-internal`, `-useIpFromLabel`, ...)
//! are accepted too, so existing unit files keep working.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use bronze_runtime::config::{self, ConfigError};
use bronze_telemetry::LogFormat;
use clap::Parser;
use serde::Serialize;

use crate::config::{Config, DeregisterMode};

/// Registers every container of this Docker host into bronze-discovery
/// (gliderlabs/registrator's conventions), runs their checks locally and
/// heartbeats; reconnects to the engine and to discovery by itself.
///
/// Every setting comes from (lowest to highest precedence) its default, the
/// TOML file given by --config, its environment variable, and its flag.
#[derive(Debug, Parser, Serialize)]
#[command(name = "bronze-registrator", version, max_term_width = 100)]
pub struct Args {
    /// bronze-discovery's gRPC address [default: http://127.0.0.1:8502].
    #[arg(env = "BRONZE_REGISTRATOR_DISCOVERY", value_name = "DISCOVERY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<String>,

    /// TOML configuration file.
    #[arg(short, long, env = "BRONZE_REGISTRATOR_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Register exposed ports at the container's own address instead of
    /// published ports.
    #[arg(long, env = "BRONZE_REGISTRATOR_INTERNAL")]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,

    /// Address for ports published on every interface, and this node's
    /// address [default: the default route's source address].
    #[arg(long, env = "BRONZE_REGISTRATOR_IP", value_name = "IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,

    /// Only register containers that set SERVICE_NAME.
    #[arg(long, env = "BRONZE_REGISTRATOR_EXPLICIT")]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub explicit: bool,

    /// Tags added to every instance (comma-separated).
    #[arg(
        long,
        env = "BRONZE_REGISTRATOR_TAGS",
        value_name = "TAGS",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,

    /// always, or on-success (keep instances of containers that failed) [default: always].
    #[arg(long, env = "BRONZE_REGISTRATOR_DEREGISTER", value_name = "MODE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deregister: Option<DeregisterMode>,

    /// Full reconciliation with the engine this often, e.g. 60s [default: 60s].
    #[arg(long, env = "BRONZE_REGISTRATOR_RESYNC", value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resync: Option<String>,

    /// Remove this host's instances whose container is gone, at once.
    #[arg(long, env = "BRONZE_REGISTRATOR_CLEANUP")]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cleanup: bool,

    /// Take the instance address from this container label.
    #[arg(
        long,
        env = "BRONZE_REGISTRATOR_USE_IP_FROM_LABEL",
        value_name = "LABEL"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_ip_from_label: Option<String>,

    /// Only register containers carrying this label, KEY or KEY=VALUE
    /// (repeat, or comma-separated; all must match). For several
    /// registrators sharing one engine, each registering its own
    /// containers, e.g. bronze.node.id=NODE for the tasks an agent of that
    /// node started [default: every container].
    #[arg(
        long = "only-label",
        env = "BRONZE_REGISTRATOR_ONLY_LABELS",
        value_name = "KEY[=VALUE]",
        value_delimiter = ','
    )]
    #[serde(rename = "only_labels", skip_serializing_if = "Vec::is_empty")]
    pub only_labels: Vec<String>,

    /// Node name of this host [default: the host name].
    #[arg(long, env = "BRONZE_REGISTRATOR_HOSTNAME", value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,

    /// Docker engine address [default: DOCKER_HOST, else unix:///var/run/docker.sock].
    #[arg(long, env = "BRONZE_REGISTRATOR_DOCKER_HOST", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_host: Option<String>,

    /// Report to discovery this often [default: 3s].
    #[arg(long, env = "BRONZE_REGISTRATOR_HEARTBEAT", value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<String>,

    /// Without a report for this long, this host's instances turn critical [default: 15s].
    #[arg(long, env = "BRONZE_REGISTRATOR_TTL", value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,

    /// Critical instances are removed after this long [default: 2m].
    #[arg(
        long,
        env = "BRONZE_REGISTRATOR_DEREGISTER_AFTER",
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deregister_after: Option<String>,

    /// /metrics and /healthz [default: 127.0.0.1:9600].
    #[arg(long, env = "BRONZE_REGISTRATOR_METRICS_ADDR", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<SocketAddr>,

    /// Log format: plain or json [default: plain]. RUST_LOG sets the level.
    #[arg(long, env = "BRONZE_LOG_FORMAT", value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// gliderlabs/registrator flag spellings and ours.
const SINGLE_DASH: &[(&str, &str)] = &[
    ("-internal", "--internal"),
    ("-ip", "--ip"),
    ("-explicit", "--explicit"),
    ("-tags", "--tags"),
    ("-deregister", "--deregister"),
    ("-resync", "--resync"),
    ("-cleanup", "--cleanup"),
    ("-useIpFromLabel", "--use-ip-from-label"),
    ("-hostname", "--hostname"),
    ("-ttl", "--ttl"),
];

/// Rewrites registrator's `-flag` and `-flag=value` spellings.
pub fn translate(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .map(|a| {
            let (flag, value) = match a.split_once('=') {
                Some((f, v)) => (f.to_string(), Some(v.to_string())),
                None => (a.clone(), None),
            };
            match SINGLE_DASH.iter().find(|(old, _)| *old == flag) {
                Some((_, new)) => match value {
                    Some(v) => format!("{new}={v}"),
                    None => new.to_string(),
                },
                None => a,
            }
        })
        .collect()
}

impl Args {
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config: Config = config::load(self.config.as_deref(), self)?;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn registrator_spellings_work() {
        let argv = translate(
            [
                "bronze-registrator",
                "-internal",
                "-tags=a,b",
                "-resync",
                "30s",
                "-useIpFromLabel",
                "ip",
                "10.0.0.1:8502",
            ]
            .map(String::from),
        );
        let args = Args::try_parse_from(argv).expect("parses");
        let c = args.load().expect("valid");
        assert!(c.internal);
        assert_eq!(c.tags, vec!["a", "b"]);
        assert_eq!(c.resync, Duration::from_secs(30));
        assert_eq!(c.use_ip_from_label.as_deref(), Some("ip"));
        assert_eq!(c.discovery, "http://10.0.0.1:8502");
    }

    #[test]
    fn bad_values_name_their_key() {
        let args =
            Args::try_parse_from(["bronze-registrator", "--heartbeat", "often"]).expect("parses");
        let err = args.load().unwrap_err().to_string();
        assert!(err.contains("heartbeat"), "{err}");
        assert!(Args::try_parse_from(["bronze-registrator", "--deregister", "never"]).is_err());
        let args =
            Args::try_parse_from(["bronze-registrator", "--only-label", "=x"]).expect("parses");
        let err = args.load().unwrap_err().to_string();
        assert!(err.contains("only_labels") && err.contains("KEY"), "{err}");
    }

    #[test]
    fn only_labels_repeat_or_split_on_commas() {
        let args = Args::try_parse_from([
            "bronze-registrator",
            "--only-label",
            "bronze.node.id=n1,zone",
            "--only-label",
            "team=shop",
        ])
        .expect("parses");
        let c = args.load().expect("valid");
        assert_eq!(
            c.only_labels,
            vec!["bronze.node.id=n1", "zone", "team=shop"]
        );
    }
}
