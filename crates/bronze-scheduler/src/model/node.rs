//! Nodes: one per host that runs an agent. What the agent reports (hostname,
//! resources, engine) is refreshed at every join; what operators set (role,
//! availability, labels) is kept.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Time;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Worker,
    Manager,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    #[default]
    Active,
    /// No new tasks; running ones stay.
    Pause,
    /// Tasks move elsewhere: replacements start first, then these stop.
    Drain,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(Self::Active),
            "pause" => Ok(Self::Pause),
            "drain" => Ok(Self::Drain),
            other => Err(format!(
                "{other:?}: expected \"active\", \"pause\" or \"drain\""
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Known, but its agent has not been heard from since this scheduler
    /// started (it gets a grace period to reconnect).
    #[default]
    Unknown,
    Ready,
    Down,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Unknown => "unknown",
            NodeState::Ready => "ready",
            NodeState::Down => "down",
        }
    }
}

/// CPUs (in billionths, as Docker's NanoCPUs) and memory in bytes; pids
/// only in limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    pub nano_cpus: i64,
    pub memory_bytes: i64,
    pub pids: i64,
}

impl Resources {
    pub fn is_zero(&self) -> bool {
        self.nano_cpus == 0 && self.memory_bytes == 0 && self.pids == 0
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineInfo {
    pub version: String,
    pub labels: BTreeMap<String, String>,
    pub os: String,
    pub arch: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub hostname: String,
    #[serde(default)]
    pub role: Role,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub availability: Availability,
    /// Not stored as such: a scheduler that starts knows no node as ready.
    #[serde(default)]
    pub state: NodeState,
    #[serde(default)]
    pub state_message: String,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub engine: EngineInfo,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub created_at: Time,
    #[serde(default)]
    pub updated_at: Time,
}

impl Node {
    pub fn new(id: String, hostname: String) -> Self {
        let now = Time::now();
        Self {
            id,
            hostname,
            role: Role::Worker,
            labels: BTreeMap::new(),
            availability: Availability::Active,
            state: NodeState::Unknown,
            state_message: String::new(),
            resources: Resources::default(),
            engine: EngineInfo::default(),
            address: String::new(),
            created_at: now,
            updated_at: now,
        }
    }

    /// Ready and not paused or drained: new tasks may go here.
    pub fn schedulable(&self) -> bool {
        self.state == NodeState::Ready && self.availability == Availability::Active
    }
}
