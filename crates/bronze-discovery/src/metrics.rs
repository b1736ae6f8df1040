//! The component's metrics, named `bronze_discovery_<what>_<unit>`.

use std::sync::atomic::AtomicU64;

use bronze_telemetry::Metrics;
use bronze_telemetry::prometheus_client::encoding::EncodeLabelSet;
use bronze_telemetry::prometheus_client::metrics::counter::Counter;
use bronze_telemetry::prometheus_client::metrics::family::Family;
use bronze_telemetry::prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    pub transport: &'static str,
    pub rcode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub api: &'static str,
    pub code: u16,
}

pub struct DiscoveryMetrics {
    pub index: Gauge<u64, AtomicU64>,
    pub instances: Gauge,
    pub registrations: Counter,
    pub deregistrations: Counter,
    pub check_results: Family<StatusLabel, Counter>,
    pub dns_queries: Family<DnsLabels, Counter>,
    pub dns_forwarded: Counter,
    pub api_requests: Family<ApiLabels, Counter>,
    pub watch_streams: Gauge,
}

impl DiscoveryMetrics {
    pub fn register(m: &mut Metrics) -> Self {
        let this = Self {
            index: Gauge::default(),
            instances: Gauge::default(),
            registrations: Counter::default(),
            deregistrations: Counter::default(),
            check_results: Family::default(),
            dns_queries: Family::default(),
            dns_forwarded: Counter::default(),
            api_requests: Family::default(),
            watch_streams: Gauge::default(),
        };
        let r = m.registry();
        r.register("catalog_index", "Current catalog index", this.index.clone());
        r.register(
            "instances",
            "Registered service instances",
            this.instances.clone(),
        );
        r.register(
            "registrations",
            "Instance registrations that changed the catalog",
            this.registrations.clone(),
        );
        r.register(
            "deregistrations",
            "Instances removed",
            this.deregistrations.clone(),
        );
        r.register(
            "check_results",
            "Check results by status",
            this.check_results.clone(),
        );
        r.register(
            "dns_queries",
            "DNS queries answered, by transport and rcode",
            this.dns_queries.clone(),
        );
        r.register(
            "dns_forwarded",
            "DNS queries forwarded to recursors",
            this.dns_forwarded.clone(),
        );
        r.register(
            "api_requests",
            "Consul HTTP API and gRPC requests, by API and status",
            this.api_requests.clone(),
        );
        r.register(
            "watch_streams",
            "Open gRPC watch streams",
            this.watch_streams.clone(),
        );
        this
    }
}
