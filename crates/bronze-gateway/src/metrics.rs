//! The gateway's metrics, named `bronze_gateway_<what>_<unit>`.

use bronze_telemetry::Metrics;
use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Labels {
    pub route: String,
    pub service: String,
    /// `2xx`, `4xx`, ...
    pub status: &'static str,
}

pub struct GatewayMetrics {
    requests: Family<Labels, Counter>,
}

impl GatewayMetrics {
    pub fn register(m: &mut Metrics) -> Self {
        let this = Self {
            requests: Family::default(),
        };
        m.registry().register(
            "http_requests",
            "Proxied requests, by route, service and status class (route \"\" when none matched)",
            this.requests.clone(),
        );
        this
    }

    pub fn count(&self, route: &str, service: &str, status: StatusCode) {
        let status = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .get_or_create(&Labels {
                route: route.to_string(),
                service: service.to_string(),
                status,
            })
            .inc();
    }
}
