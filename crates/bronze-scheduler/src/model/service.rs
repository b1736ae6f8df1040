//! A service: its current spec version, the version a rollback returns to,
//! and where its rollout stands. Every spec it ever had is a [`Version`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Time;
use super::autodeploy::Push;
use super::spec::{ServiceSpec, UpdateConfig};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    #[default]
    None,
    Updating,
    Completed,
    /// Too many new tasks failed and `failure_action` is pause: nothing
    /// more is replaced until the next update.
    Paused,
    RollbackStarted,
    RollbackCompleted,
    /// A rollback whose tasks failed (a rollback is never rolled back).
    RollbackPaused,
}

impl UpdateState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::None => "",
            UpdateState::Updating => "updating",
            UpdateState::Completed => "completed",
            UpdateState::Paused => "paused",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackCompleted => "rollback_completed",
            UpdateState::RollbackPaused => "rollback_paused",
        }
    }

    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }
}

/// [`UpdateStatus::next_batch_at`] while a batch of a rollout is under way.
pub const BATCH_RUNNING: Time = Time(u64::MAX);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub started_at: Time,
    pub completed_at: Time,
    pub message: String,
    /// The next batch of a rollout starts no earlier (its `delay`);
    /// [`BATCH_RUNNING`] while a batch is under way.
    pub next_batch_at: Time,
    /// How this rollout goes: the update_config of the new version, or the
    /// rollback_config of the version rolled back from.
    pub config: UpdateConfig,
    /// Replace every task, even those whose template did not change
    /// (`--force`): tasks created before this time are outdated.
    pub force_before: Time,
    /// Rolled back automatically (failure_action rollback): the rollback
    /// was not asked for by a person.
    pub automatic: bool,
    /// The update (or the rollback of it) came from this push to the
    /// registry (`bronze.autodeploy`), not from an API call.
    pub autodeploy: Option<Push>,
}

impl UpdateStatus {
    /// `what`, said of this rollout: prefixed with the push it came from.
    pub fn say(&self, what: &str) -> String {
        match &self.autodeploy {
            Some(p) => format!("autodeploy of {} ({}): {what}", p.reference(), p.digest),
            None => what.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub version: u64,
    /// 0: none.
    #[serde(default)]
    pub previous_version: u64,
    pub created_at: Time,
    pub updated_at: Time,
    #[serde(default)]
    pub update: UpdateStatus,
    /// The service is being removed: its tasks stop, then it is deleted.
    #[serde(default)]
    pub removing: bool,
    /// The newest push that concerned the service while a rollout was under
    /// way: applied when it ends.
    #[serde(default)]
    pub autodeploy_queued: Option<Push>,
    /// The last digest an autodeploy rolled back from: pushes of it are not
    /// deployed again by themselves.
    #[serde(default)]
    pub autodeploy_failed: String,
}

/// One version of a service's spec, immutable once stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub service_id: String,
    pub version: u64,
    pub spec: Arc<ServiceSpec>,
    /// [`ServiceSpec::template_digest`], computed once.
    pub template: u64,
    pub created_at: Time,
}

impl Version {
    pub fn new(service_id: &str, version: u64, spec: ServiceSpec) -> Self {
        Self {
            service_id: service_id.to_string(),
            version,
            template: spec.template_digest(),
            spec: Arc::new(spec),
            created_at: Time::now(),
        }
    }
}
