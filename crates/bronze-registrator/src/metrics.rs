//! The component's metrics, named `bronze_registrator_<what>_<unit>`.

use bronze_telemetry::Metrics;
use bronze_telemetry::prometheus_client::encoding::EncodeLabelSet;
use bronze_telemetry::prometheus_client::metrics::counter::Counter;
use bronze_telemetry::prometheus_client::metrics::family::Family;
use bronze_telemetry::prometheus_client::metrics::gauge::Gauge;
use bronze_telemetry::prometheus_client::metrics::histogram::Histogram;

/// Upper bounds (seconds) of the latency buckets: fine below 100 ms.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

pub struct RegistratorMetrics {
    pub events: Family<ActionLabel, Counter>,
    pub registrations: Counter,
    pub deregistrations: Counter,
    pub instances: Gauge,
    pub stream_reconnects: Counter,
    pub heartbeats: Family<ResultLabel, Counter>,
    pub warnings: Counter,
    pub resyncs: Counter,
    /// From receiving an engine event to discovery confirming the
    /// registrations it caused.
    pub event_to_registered: Histogram,
}

impl RegistratorMetrics {
    pub fn register(m: &mut Metrics) -> Self {
        let this = Self {
            events: Family::default(),
            registrations: Counter::default(),
            deregistrations: Counter::default(),
            instances: Gauge::default(),
            stream_reconnects: Counter::default(),
            heartbeats: Family::default(),
            warnings: Counter::default(),
            resyncs: Counter::default(),
            event_to_registered: Histogram::new(LATENCY_BUCKETS),
        };
        let r = m.registry();
        r.register(
            "events",
            "Container events received, by action",
            this.events.clone(),
        );
        r.register(
            "registrations",
            "Instances registered with discovery",
            this.registrations.clone(),
        );
        r.register(
            "deregistrations",
            "Instances removed from discovery",
            this.deregistrations.clone(),
        );
        r.register(
            "instances",
            "Instances this registrator keeps registered",
            this.instances.clone(),
        );
        r.register(
            "event_stream_reconnects",
            "Times the engine's event stream was reopened",
            this.stream_reconnects.clone(),
        );
        r.register(
            "heartbeats",
            "Heartbeats sent to discovery, by result",
            this.heartbeats.clone(),
        );
        r.register(
            "warnings",
            "Malformed container settings reported",
            this.warnings.clone(),
        );
        r.register(
            "resyncs",
            "Full reconciliations with the engine",
            this.resyncs.clone(),
        );
        r.register(
            "event_to_registered_seconds",
            "From an engine event to discovery confirming the registrations it caused",
            this.event_to_registered.clone(),
        );
        this
    }
}
