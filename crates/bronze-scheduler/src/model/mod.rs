//! The scheduler's domain: nodes, services (their specs, versioned), tasks.
//!
//! These types are what the scheduler reasons about and stores; prost types
//! stay at the edges (`convert.rs` turns one into the other, validating
//! once). Every spec that reaches the state has passed [`spec::validate`].
//! Stored as JSON: readable with any redb viewer, and fields added later get
//! serde defaults, so an older store opens with a newer scheduler.

pub mod autodeploy;
pub mod constraint;
pub mod node;
pub mod object;
pub mod service;
pub mod spec;
pub mod task;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use constraint::{Constraint, Preference};
pub use node::{Availability, EngineInfo, Node, NodeState, Resources, Role};
pub use object::{Kind, Object, ObjectVersion, Plain, Stored};
pub use service::{Service, UpdateState, UpdateStatus, Version};
pub use spec::{
    FileRef, HealthCheck, Mode, Mount, MountKind, Order, Placement, PortConfig, Protocol,
    RestartCondition, RestartPolicy, ServiceSpec, UpdateConfig,
};
pub use task::{Desired, SlotKey, Task, TaskState, TaskStatus};

/// Wall-clock time in milliseconds since the Unix epoch: what is stored
/// (an `Instant` does not survive a restart).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Time(pub u64);

impl Time {
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub fn plus(self, d: Duration) -> Self {
        Time(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// How long after `earlier` this is (zero when it is not after).
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    pub fn system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }
}

impl From<SystemTime> for Time {
    fn from(t: SystemTime) -> Self {
        Time(
            t.duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
        )
    }
}

/// A new object id: 25 characters of [a-z0-9], as Swarm's.
pub fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..25)
        .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
        .collect()
}

/// The first 12 characters of an id, as tables show them.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// A spec refused: which field (in the request's own spelling) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error one level down: `spec` + `.ports[0].target`.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}
