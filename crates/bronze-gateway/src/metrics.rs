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

    /// The counters of one route, one per status class (looked up once,
    /// then only atomics on the request path).
    pub fn route_counters(&self, route: &str, service: &str) -> RouteCounters {
        RouteCounters(CLASSES.map(|status| {
            self.requests
                .get_or_create(&Labels {
                    route: route.to_string(),
                    service: service.to_string(),
                    status,
                })
                .clone()
        }))
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Debug, Clone)]
pub struct RouteCounters([Counter; 5]);

impl RouteCounters {
    pub fn count(&self, status: StatusCode) {
        let i = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.0[i].inc();
    }
}
