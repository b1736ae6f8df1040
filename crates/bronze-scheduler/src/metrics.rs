//! The scheduler's metrics (`bronze_scheduler_*`).

use bronze_telemetry::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

/// What became of a push that concerned an opted-in service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AutodeployLabel {
    /// `started` (a rolling update began), `queued` (an update was under
    /// way: it waits), `skipped` (the digest was rolled back before),
    /// `unchanged` (a queued push that no longer changes the service),
    /// `refused` (the update could not be made; logged), `completed`,
    /// `rolled_back` (the health gate failed), `paused`.
    pub result: &'static str,
}

pub struct SchedulerMetrics {
    pub autodeploys: Family<AutodeployLabel, Counter>,
    pub commits: Counter,
    pub commit_errors: Counter,
    pub placed: Counter,
    pub round_seconds: Histogram,
    pub reports_ignored: Counter,
    pub sessions: Gauge,
    pub sessions_refused: Counter,
}

impl SchedulerMetrics {
    pub fn register(m: &mut Metrics) -> Self {
        let this = Self {
            autodeploys: Family::default(),
            commits: Counter::default(),
            commit_errors: Counter::default(),
            placed: Counter::default(),
            round_seconds: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            reports_ignored: Counter::default(),
            sessions: Gauge::default(),
            sessions_refused: Counter::default(),
        };
        let r = m.registry();
        r.register(
            "commits",
            "State commits to the store",
            this.commits.clone(),
        );
        r.register(
            "commit_errors",
            "Rounds thrown away because the store could not commit",
            this.commit_errors.clone(),
        );
        r.register(
            "tasks_placed",
            "Tasks placed on a node",
            this.placed.clone(),
        );
        r.register(
            "round_seconds",
            "Time of one manager round (passes and commit)",
            this.round_seconds.clone(),
        );
        r.register(
            "agent_reports_ignored",
            "Task reports from agents that were not applied (unknown task, wrong node, bad state)",
            this.reports_ignored.clone(),
        );
        r.register(
            "autodeploys",
            "Pushes that concerned a service labelled bronze.autodeploy, by what became of them",
            this.autodeploys.clone(),
        );
        r.register("agent_sessions", "Agents connected", this.sessions.clone());
        r.register(
            "agent_sessions_refused",
            "Agent sessions refused (wrong join token, bad hello)",
            this.sessions_refused.clone(),
        );
        this
    }
}
