//! The agent's metrics (`bronze_agent_*`).

use bronze_telemetry::Metrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

pub struct AgentMetrics {
    pub started: Counter,
    pub start_errors: Counter,
    pub events: Counter,
    pub connected: Gauge,
    pub sessions: Counter,
}

impl AgentMetrics {
    pub fn register(m: &mut Metrics) -> Self {
        let this = Self {
            started: Counter::default(),
            start_errors: Counter::default(),
            events: Counter::default(),
            connected: Gauge::default(),
            sessions: Counter::default(),
        };
        let r = m.registry();
        r.register(
            "containers_started",
            "Task containers started",
            this.started.clone(),
        );
        r.register(
            "container_errors",
            "Tasks the engine could not run (pull, create or start failed)",
            this.start_errors.clone(),
        );
        r.register(
            "engine_events",
            "Engine events about this node's containers",
            this.events.clone(),
        );
        r.register(
            "connected",
            "1 while a session with the scheduler is open",
            this.connected.clone(),
        );
        r.register(
            "sessions",
            "Sessions opened with the scheduler",
            this.sessions.clone(),
        );
        this
    }
}
