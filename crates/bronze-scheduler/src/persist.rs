//! The state in a [`Store`]: one namespace per kind of object, JSON values.
//! `load` rebuilds a [`State`] (and its derived indexes) at start-up;
//! `ops` turns the keys a pass changed into one transaction.
//!
//! Only the `Store` trait is used, so another backend (etcd) takes over
//! without a change here.

use std::collections::BTreeSet;

use bronze_store::{Op, Store, StoreError};

use crate::model::{Kind, Node, NodeState, Object, Service, Task, Version};
use crate::state::{Key, State};

const NODES: &str = "scheduler.nodes";
const SERVICES: &str = "scheduler.services";
const VERSIONS: &str = "scheduler.versions";
const TASKS: &str = "scheduler.tasks";
const META: &str = "scheduler.meta";
const JOIN_TOKEN: &str = "join_token";
const SECRETS: &str = "scheduler.secrets";
const CONFIGS: &str = "scheduler.configs";
const KEY_CHECK: &str = "secrets_key_check";

fn object_namespace(kind: Kind) -> &'static str {
    match kind {
        Kind::Secret => SECRETS,
        Kind::Config => CONFIGS,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored {what} {key:?} does not decode: {message}")]
    Decode {
        what: &'static str,
        key: String,
        message: String,
    },
    #[error("encoding {0}: {1}")]
    Encode(String, String),
}

fn version_key(service_id: &str, version: u64) -> String {
    format!("{service_id}/{version:020}")
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, PersistError> {
    serde_json::from_slice(bytes).map_err(|e| PersistError::Decode {
        what,
        key: key.to_string(),
        message: e.to_string(),
    })
}

/// Reads the whole state. Nodes come back `Unknown`: whether they are up is
/// learned again from their agents.
pub fn load(store: &dyn Store) -> Result<State, PersistError> {
    let mut state = State::default();
    for (key, bytes) in store.list(NODES)? {
        let mut node: Node = decode("node", &key, &bytes)?;
        node.state = NodeState::Unknown;
        node.state_message = "waiting for its agent since the scheduler started".into();
        state.put_node(node);
    }
    for (key, bytes) in store.list(SERVICES)? {
        let service: Service = decode("service", &key, &bytes)?;
        state.put_service(service);
    }
    for (key, bytes) in store.list(VERSIONS)? {
        let version: Version = decode("version", &key, &bytes)?;
        state.put_version(version);
    }
    let mut max_version = 0;
    for (key, bytes) in store.list(TASKS)? {
        let task: Task = decode("task", &key, &bytes)?;
        max_version = max_version.max(task.version);
        state.put_task(task);
    }
    for kind in [Kind::Secret, Kind::Config] {
        for (key, bytes) in store.list(object_namespace(kind))? {
            let object: Object = decode(kind.as_str(), &key, &bytes)?;
            state.put_object(object);
        }
    }
    if let Some(check) = store.get(META, KEY_CHECK)? {
        state.key_check = check;
    }
    if let Some(token) = store.get(META, JOIN_TOKEN)? {
        state.join_token = String::from_utf8_lossy(&token).into_owned();
    }
    state.take_dirty();
    state.index = max_version;
    Ok(state)
}

fn encode<T: serde::Serialize>(what: &str, value: &T) -> Result<Vec<u8>, PersistError> {
    serde_json::to_vec(value).map_err(|e| PersistError::Encode(what.to_string(), e.to_string()))
}

/// The store operations that make the store hold `state` for `keys`.
pub fn ops(state: &State, keys: &BTreeSet<Key>) -> Result<Vec<Op>, PersistError> {
    let mut ops = Vec::with_capacity(keys.len());
    for key in keys {
        let op = match key {
            Key::Node(id) => match state.node(id) {
                Some(n) => Op::put(NODES, id.clone(), encode("node", n.as_ref())?),
                None => Op::delete(NODES, id.clone()),
            },
            Key::Service(id) => match state.service(id) {
                Some(s) => Op::put(SERVICES, id.clone(), encode("service", s.as_ref())?),
                None => Op::delete(SERVICES, id.clone()),
            },
            Key::Version(id, v) => match state.version(id, *v) {
                Some(ver) => Op::put(
                    VERSIONS,
                    version_key(id, *v),
                    encode("version", ver.as_ref())?,
                ),
                None => Op::delete(VERSIONS, version_key(id, *v)),
            },
            Key::Task(id) => match state.task(id) {
                Some(t) => Op::put(TASKS, id.clone(), encode("task", t.as_ref())?),
                None => Op::delete(TASKS, id.clone()),
            },
            Key::JoinToken => Op::put(META, JOIN_TOKEN, state.join_token.as_bytes().to_vec()),
            Key::Object(kind, name) => match state.objects.get(&(*kind, name.clone())) {
                Some(o) => Op::put(
                    object_namespace(*kind),
                    name.clone(),
                    encode(kind.as_str(), o.as_ref())?,
                ),
                None => Op::delete(object_namespace(*kind), name.clone()),
            },
            Key::KeyCheck => Op::put(META, KEY_CHECK, state.key_check.clone()),
        };
        ops.push(op);
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Desired, ServiceSpec, TaskState, TaskStatus, Time};
    use bronze_store::RedbStore;

    #[test]
    fn a_state_survives_a_round_trip() {
        let store = RedbStore::in_memory().expect("store");
        let mut s = State::default();
        let mut node = Node::new("n1".into(), "host-1".into());
        node.state = NodeState::Ready;
        s.put_node(node);
        s.put_service(Service {
            id: "s1".into(),
            name: "web".into(),
            version: 1,
            previous_version: 0,
            created_at: Time::now(),
            updated_at: Time::now(),
            update: Default::default(),
            removing: false,
            autodeploy_queued: None,
            autodeploy_failed: String::new(),
        });
        let mut spec = ServiceSpec::new("web", "busybox");
        spec.reservations.memory_bytes = 64 << 20;
        s.put_version(Version::new("s1", 1, spec));
        s.put_task(Task {
            id: "t1".into(),
            service_id: "s1".into(),
            service_name: "web".into(),
            slot: 1,
            node_id: "n1".into(),
            spec_version: 1,
            desired: Desired::Running,
            status: TaskStatus::new(TaskState::Running, "started"),
            created_at: Time::now(),
            restarts: vec![Time(5)],
            failures: 2,
            start_after: Time(0),
            started_at: Time(0),
            replaces: None,
            moved: false,
            drain: std::time::Duration::ZERO,
            up_at: Time(0),
            version: 0,
        });
        s.set_join_token("SWMTKN-x".into());
        let keys = s.take_dirty();
        store.apply(&ops(&s, &keys).expect("ops")).expect("commit");
        let back = load(&store).expect("load");
        assert_eq!(back.node("n1").expect("node").state, NodeState::Unknown);
        assert_eq!(back.find_service("web").expect("svc").id, "s1");
        assert_eq!(back.task("t1").expect("task").failures, 2);
        assert_eq!(back.usage("n1").reserved.memory_bytes, 64 << 20);
        assert_eq!(back.join_token, "SWMTKN-x");
        assert_eq!(back.index, 1);
        // Deleting writes deletes.
        let mut s = back.clone();
        s.remove_task("t1");
        s.remove_service("s1");
        let keys = s.take_dirty();
        store.apply(&ops(&s, &keys).expect("ops")).expect("commit");
        let back = load(&store).expect("load");
        assert!(back.task("t1").is_none());
        assert!(back.find_service("web").is_none());
        assert!(back.version("s1", 1).is_none());
    }

    #[test]
    fn a_corrupt_record_is_named() {
        let store = RedbStore::in_memory().expect("store");
        store.put(TASKS, "t9", b"{not json").expect("put");
        let e = load(&store).err().expect("refused").to_string();
        assert!(e.contains("task") && e.contains("t9"), "{e}");
    }
}
