//! The gateway's metrics, named `bronze_gateway_<what>_<unit>`.

use bronze_telemetry::Metrics;
use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Labels {
    pub route: String,
    pub service: String,
    /// `2xx`, `4xx`, ...
    pub status: &'static str,
}

/// The prometheus plugin's exact status codes (Kong's
/// `status_code_metrics`, with `per_consumer`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub route: String,
    pub service: String,
    pub code: u16,
    /// Kong's: `service` (the upstream answered), `exit` (a plugin
    /// answered), `kong` (the gateway's own error).
    pub source: &'static str,
    /// Empty unless the plugin's `per_consumer` is on.
    pub consumer: String,
}

/// The prometheus plugin's latencies (Kong's `latency_metrics`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub route: String,
    pub service: String,
}

type Histograms = Family<LatencyLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // Kong's buckets (ms), in seconds.
    Histogram::new(
        [
            1.0, 2.0, 5.0, 7.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0,
            100.0, 200.0, 300.0, 400.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0, 60000.0,
        ]
        .map(|ms| ms / 1000.0),
    )
}

pub struct GatewayMetrics {
    requests: Family<Labels, Counter>,
    pub codes: Family<CodeLabels, Counter>,
    /// Whole request, as the client sees it.
    pub request_latency: Histograms,
    /// Until the upstream's response head.
    pub upstream_latency: Histograms,
    /// Time spent in the gateway itself (Kong's `kong_latency`).
    pub gateway_latency: Histograms,
}

impl GatewayMetrics {
    pub fn register(m: &mut Metrics) -> Self {
        let this = Self {
            requests: Family::default(),
            codes: Family::default(),
            request_latency: Family::new_with_constructor(latency_histogram),
            upstream_latency: Family::new_with_constructor(latency_histogram),
            gateway_latency: Family::new_with_constructor(latency_histogram),
        };
        let r = m.registry();
        r.register(
            "http_requests",
            "Proxied requests, by route, service and status class (route \"\" when none matched)",
            this.requests.clone(),
        );
        r.register(
            "http_status",
            "Requests by exact status code, on routes with the prometheus plugin's status_code_metrics",
            this.codes.clone(),
        );
        r.register_with_unit(
            "request_latency",
            "Time from the request to the response head, on routes with the prometheus plugin's latency_metrics",
            prometheus_client::registry::Unit::Seconds,
            this.request_latency.clone(),
        );
        r.register_with_unit(
            "upstream_latency",
            "Time the upstream took to answer, on routes with the prometheus plugin's latency_metrics",
            prometheus_client::registry::Unit::Seconds,
            this.upstream_latency.clone(),
        );
        r.register_with_unit(
            "proxy_latency",
            "Time spent in the gateway itself (Kong's kong_latency), on routes with the prometheus plugin's latency_metrics",
            prometheus_client::registry::Unit::Seconds,
            this.gateway_latency.clone(),
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

/// The gateway's CPU-heavy work on the blocking pool (bcrypt checks of
/// basic-auth passwords, the Admin API's compiles), read from its
/// `CpuSlots` at each scrape: `bronze_gateway_cpu_work_started_total` and
/// `bronze_gateway_cpu_work_pending` (waiting for a slot or running). A
/// flood of wrong passwords shows in both as it happens.
#[derive(Debug)]
pub struct CpuWork(pub std::sync::Arc<bronze_runtime::cpu::CpuSlots>);

impl CpuWork {
    pub fn register(self, m: &mut Metrics) {
        m.registry().register_collector(Box::new(self));
    }
}

impl prometheus_client::collector::Collector for CpuWork {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let started = ConstCounter::new(self.0.started());
        started.encode(encoder.encode_descriptor(
            "cpu_work_started",
            "CPU-heavy work (password checks, Admin API compiles) handed to the blocking pool",
            None,
            started.metric_type(),
        )?)?;
        let pending = ConstGauge::new(i64::try_from(self.0.pending()).unwrap_or(i64::MAX));
        pending.encode(encoder.encode_descriptor(
            "cpu_work_pending",
            "CPU-heavy work waiting for a slot or running",
            None,
            pending.metric_type(),
        )?)?;
        Ok(())
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
