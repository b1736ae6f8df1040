//! The words the CLI prints for the API's enums and small values: task
//! states ("running", "Running"), node availability and state, ports
//! ("*:8080->80/tcp"), short ids. One place, so tables, JSON and the
//! progress display say the same thing.

use bronze_proto::scheduler::v1 as pb;

/// A task state in lower case ("running"), as JSON and the progress show it.
pub fn task_state(s: i32) -> &'static str {
    match pb::TaskState::try_from(s).unwrap_or(pb::TaskState::Unspecified) {
        pb::TaskState::Unspecified => "unknown",
        pb::TaskState::New => "new",
        pb::TaskState::Pending => "pending",
        pb::TaskState::Assigned => "assigned",
        pb::TaskState::Preparing => "preparing",
        pb::TaskState::Starting => "starting",
        pb::TaskState::Running => "running",
        pb::TaskState::Complete => "complete",
        pb::TaskState::Failed => "failed",
        pb::TaskState::Shutdown => "shutdown",
        pb::TaskState::Rejected => "rejected",
        pb::TaskState::Orphaned => "orphaned",
    }
}

/// Whether a task in this state has ended (its container is gone or never
/// was).
pub fn task_state_ended(s: i32) -> bool {
    matches!(
        pb::TaskState::try_from(s),
        Ok(pb::TaskState::Complete
            | pb::TaskState::Failed
            | pb::TaskState::Shutdown
            | pb::TaskState::Rejected
            | pb::TaskState::Orphaned)
    )
}

/// "Running", as Docker's tables capitalize states.
pub fn capitalized(word: &str) -> String {
    let mut c = word.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

pub fn availability(a: i32) -> &'static str {
    match pb::NodeAvailability::try_from(a).unwrap_or(pb::NodeAvailability::Unspecified) {
        pb::NodeAvailability::Unspecified => "unknown",
        pb::NodeAvailability::Active => "active",
        pb::NodeAvailability::Pause => "pause",
        pb::NodeAvailability::Drain => "drain",
    }
}

pub fn node_state(s: i32) -> &'static str {
    match pb::NodeState::try_from(s).unwrap_or(pb::NodeState::Unspecified) {
        pb::NodeState::Unspecified => "unknown",
        pb::NodeState::Ready => "ready",
        pb::NodeState::Down => "down",
    }
}

pub fn role(r: i32) -> &'static str {
    match pb::NodeRole::try_from(r).unwrap_or(pb::NodeRole::Unspecified) {
        pb::NodeRole::Unspecified => "unknown",
        pb::NodeRole::Worker => "worker",
        pb::NodeRole::Manager => "manager",
    }
}

fn protocol(p: &str) -> &str {
    if p.is_empty() { "tcp" } else { p }
}

/// A port of a spec: "*:8080->80/tcp" when published on a fixed host
/// port, "80/tcp" when the engine picks one for each task.
pub fn spec_port(p: &pb::PortConfig) -> String {
    if p.published == 0 {
        format!("{}/{}", p.target, protocol(&p.protocol))
    } else {
        format!("*:{}->{}/{}", p.published, p.target, protocol(&p.protocol))
    }
}

/// A port a task published: "*:32768->80/tcp".
pub fn task_port(p: &pb::PortConfig) -> String {
    format!("*:{}->{}/{}", p.published, p.target, protocol(&p.protocol))
}

/// The first 12 characters of an id, as Docker's tables show them.
pub fn short(id: &str) -> &str {
    match id.char_indices().nth(12) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

/// A service's mode: "replicated" or "global".
pub fn mode(spec: &pb::ServiceSpec) -> &'static str {
    match spec.mode {
        Some(pb::service_spec::Mode::Global(_)) => "global",
        _ => "replicated",
    }
}

pub fn replicas(spec: &pb::ServiceSpec) -> Option<u64> {
    match &spec.mode {
        Some(pb::service_spec::Mode::Replicated(r)) => Some(r.replicas),
        Some(pb::service_spec::Mode::Global(_)) => None,
        None => Some(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        assert_eq!(task_state(pb::TaskState::Running.into()), "running");
        assert_eq!(capitalized("running"), "Running");
        assert_eq!(task_state(99), "unknown");
        let p = pb::PortConfig {
            target: 80,
            published: 8080,
            protocol: String::new(),
        };
        assert_eq!(spec_port(&p), "*:8080->80/tcp");
        assert_eq!(
            spec_port(&pb::PortConfig {
                published: 0,
                protocol: "udp".into(),
                ..p
            }),
            "80/udp"
        );
        assert_eq!(short("abcdefghijklmnopq"), "abcdefghijkl");
        assert_eq!(short("abc"), "abc");
    }
}
