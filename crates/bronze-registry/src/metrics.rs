//! The component's metrics, named `bronze_registry_<what>_<unit>`.

use bronze_telemetry::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub code: u16,
}

pub struct RegistryMetrics {
    pub requests: Family<RequestLabels, Counter>,
}

impl RegistryMetrics {
    pub fn register(m: &mut Metrics) -> Self {
        let this = Self {
            requests: Family::default(),
        };
        m.registry().register(
            "http_requests",
            "Registry API requests, by method and status",
            this.requests.clone(),
        );
        this
    }
}
