//! Tasks: one container's life, in one slot of a service. A task never
//! moves: a restart, a rollout or a move to another node is a new task in
//! the same slot, and the old one stays as history (`service ps`) until the
//! reaper drops it.

use serde::{Deserialize, Serialize};

use super::Time;
use super::spec::PortConfig;

/// Observed states in the order a task goes through them; everything from
/// `Complete` on is final.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    #[default]
    New,
    Pending,
    Assigned,
    Preparing,
    Starting,
    Running,
    Complete,
    Failed,
    Shutdown,
    Rejected,
    Orphaned,
}

impl TaskState {
    pub const ALL: [TaskState; 11] = [
        TaskState::New,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Preparing,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Complete,
        TaskState::Failed,
        TaskState::Shutdown,
        TaskState::Rejected,
        TaskState::Orphaned,
    ];

    /// The container is gone or will never run again.
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }

    /// Ended on its own in a way `on-failure` restarts.
    pub fn is_failure(self) -> bool {
        matches!(self, TaskState::Failed | TaskState::Rejected)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Preparing => "preparing",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Failed => "failed",
            TaskState::Shutdown => "shutdown",
            TaskState::Rejected => "rejected",
            TaskState::Orphaned => "orphaned",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskStatus {
    pub state: TaskState,
    pub timestamp: Time,
    pub message: String,
    pub err: String,
    pub exit_code: Option<i32>,
    pub container_id: String,
    /// "starting", "healthy" or "unhealthy" when the container has a check.
    pub health: String,
    pub ports: Vec<PortConfig>,
}

impl TaskStatus {
    pub fn new(state: TaskState, message: impl Into<String>) -> Self {
        Self {
            state,
            timestamp: Time::now(),
            message: message.into(),
            ..Default::default()
        }
    }
}

/// Whether a task should run or stop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    #[default]
    Running,
    Shutdown,
}

impl Desired {
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub service_id: String,
    pub service_name: String,
    /// Replicated: 1..=replicas. Global: 0 (the node is the slot).
    pub slot: u64,
    /// Empty until placed (global tasks are created with theirs).
    #[serde(default)]
    pub node_id: String,
    pub spec_version: u64,
    pub desired: Desired,
    pub status: TaskStatus,
    pub created_at: Time,
    /// Restarts of this slot that count against `max_attempts` (within the
    /// policy's window), this task's own start included.
    #[serde(default)]
    pub restarts: Vec<Time>,
    /// Failures in a row before this task (for the backoff).
    #[serde(default)]
    pub failures: u32,
    /// Not placed before this time (the restart delay).
    #[serde(default)]
    pub start_after: Time,
    /// When its container was first seen running (0: never).
    #[serde(default)]
    pub started_at: Time,
    /// Made by a rollout or a drain while an older task of the slot runs
    /// (start-first): the older one stops once this one runs.
    #[serde(default)]
    pub replaces: Option<String>,
    /// Asked to stop while registered in discovery: the agent waits this
    /// long before the stop signal (the service's drain_delay).
    #[serde(with = "crate::model::spec::millis", default)]
    pub drain: std::time::Duration,
    /// When it was first counted as up (running, healthy, passing in
    /// discovery when registered); 0: not yet.
    #[serde(default)]
    pub up_at: Time,
    /// Replaced elsewhere because its node went down: when the node comes
    /// back, the task is dropped, so its agent removes the container.
    #[serde(default)]
    pub moved: bool,
    /// The store index of this task's last change: sessions send a task to
    /// its agent again only when this moved.
    #[serde(default)]
    pub version: u64,
}

impl Task {
    /// Should run, or still runs (stopping).
    pub fn occupies_slot(&self) -> bool {
        self.desired == Desired::Running || !self.status.state.is_terminal()
    }

    /// The key a global task's slot has: its node.
    pub fn slot_key(&self) -> SlotKey {
        if self.slot == 0 {
            SlotKey::Node(self.node_id.clone())
        } else {
            SlotKey::Number(self.slot)
        }
    }
}

/// A replicated service's numbered slot, or a global service's node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SlotKey {
    Number(u64),
    Node(String),
}
