//! The scheduler's link to bronze-discovery (optional: `--discovery`).
//!
//! Two jobs, both level-triggered:
//!
//! * **Registered and passing.** Discovery's watch stream tells which
//!   instances exist and their health; the registrator copies a container's
//!   `bronze.*` labels into instance metadata, so `bronze.task.id` names the
//!   task. Per task: no instance, or all passing, or not. Each change is an
//!   `Event::Registered` for the manager; rollouts count a new task as up
//!   only once discovery reports it passing (when it is registered).
//! * **Drain before stop.** A task that should stop (desired shutdown) but
//!   still runs has its instances put in maintenance (Consul's), so DNS, the
//!   gateway and everything reading discovery stop sending to it before its
//!   agent sends the stop signal (the agent waits the service's
//!   `drain_delay` first). Deregistering (the container is gone) ends the
//!   maintenance.
//!
//! Discovery down is not an error: the link retries, and until it is back a
//! task counts as up without discovery's word.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bronze_proto::discovery::v1 as dpb;
use bronze_proto::discovery::{Change, Watch};
use bronze_runtime::Shutdown;
use tokio::sync::{mpsc, watch};

use crate::manager::Event;
use crate::model::{Desired, TaskState};
use crate::state::State;

/// The metadata key the registrator copies from the container's label.
pub const TASK_META: &str = "bronze.task.id";

/// One instance as this link sees it.
#[derive(Debug, Clone)]
struct Seen {
    task: String,
    passing: bool,
}

/// What a task's instances say: none, or whether all pass.
pub type Registered = Option<bool>;

fn aggregate(instances: &HashMap<(String, String), Seen>, task: &str) -> Registered {
    let mut any = false;
    let mut all = true;
    for s in instances.values().filter(|s| s.task == task) {
        any = true;
        all &= s.passing;
    }
    any.then_some(all)
}

/// Runs until `shutdown`: follows discovery at `url`, feeds the manager,
/// drains stopping tasks.
pub async fn run(
    url: String,
    events: mpsc::Sender<Event>,
    snapshots: watch::Receiver<Arc<State>>,
    shutdown: Shutdown,
) {
    let instances: Arc<parking_lot::Mutex<HashMap<(String, String), Seen>>> = Arc::default();
    let drain = tokio::spawn(drainer(
        url.clone(),
        instances.clone(),
        snapshots,
        shutdown.clone(),
    ));
    let what = format!("discovery watch ({url})");
    shutdown
        .retry(&what, || follow(&url, &events, &instances, &shutdown))
        .await;
    let _ = drain.await;
}

async fn follow(
    url: &str,
    events: &mpsc::Sender<Event>,
    instances: &parking_lot::Mutex<HashMap<(String, String), Seen>>,
    shutdown: &Shutdown,
) -> String {
    // Tasks as last told to the manager.
    let mut told: HashMap<String, Registered> = HashMap::new();
    let mut watch = match Watch::open(url).await {
        Ok(w) => w,
        Err(e) => return e,
    };
    loop {
        let change = tokio::select! {
            c = watch.next() => c,
            () = shutdown.wait() => return "shutdown".into(),
        };
        let change = match change {
            Ok(c) => c,
            Err(e) => return e,
        };
        let mut touched: HashSet<String> = HashSet::new();
        {
            let mut map = instances.lock();
            match change {
                Change::Snapshot(all) => {
                    touched.extend(map.values().map(|s| s.task.clone()));
                    map.clear();
                    for i in all {
                        if let Some((key, seen)) = seen(&i) {
                            touched.insert(seen.task.clone());
                            map.insert(key, seen);
                        }
                    }
                    touched.extend(told.keys().cloned());
                }
                Change::Upsert(i) => {
                    let key = (i.node.clone(), i.id.clone());
                    if let Some(old) = map.remove(&key) {
                        touched.insert(old.task);
                    }
                    if let Some((key, seen)) = seen(&i) {
                        touched.insert(seen.task.clone());
                        map.insert(key, seen);
                    }
                }
                Change::Removed(r) => {
                    if let Some(old) = map.remove(&(r.node, r.id)) {
                        touched.insert(old.task);
                    }
                }
            }
        }
        let mut changes = Vec::new();
        {
            let map = instances.lock();
            for task in touched {
                let now = aggregate(&map, &task);
                if told.get(&task) != Some(&now) {
                    changes.push((task.clone(), now));
                    if now.is_some() {
                        told.insert(task, now);
                    } else {
                        told.remove(&task);
                    }
                }
            }
        }
        if !changes.is_empty() && events.send(Event::Registered(changes)).await.is_err() {
            return "the manager stopped".into();
        }
    }
}

/// The task an instance belongs to (from its metadata) and whether it
/// passes.
fn seen(i: &dpb::Instance) -> Option<((String, String), Seen)> {
    let task = i.meta.get(TASK_META)?.clone();
    let passing = i.health() == dpb::HealthStatus::Passing;
    Some(((i.node.clone(), i.id.clone()), Seen { task, passing }))
}

/// Puts the instances of every task that should stop (and still runs) in
/// maintenance, once per instance.
async fn drainer(
    url: String,
    instances: Arc<parking_lot::Mutex<HashMap<(String, String), Seen>>>,
    mut snapshots: watch::Receiver<Arc<State>>,
    shutdown: Shutdown,
) {
    let mut done: HashSet<(String, String)> = HashSet::new();
    let mut client: Option<dpb::discovery_client::DiscoveryClient<tonic::transport::Channel>> =
        None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
            () = shutdown.wait() => return,
        }
        let state = snapshots.borrow_and_update().clone();
        let wanted: Vec<((String, String), String)> = {
            let map = instances.lock();
            map.iter()
                .filter(|(key, s)| {
                    !done.contains(*key)
                        && state.task(&s.task).is_some_and(|t| {
                            t.desired == Desired::Shutdown
                                && !t.status.state.is_terminal()
                                && t.status.state >= TaskState::Assigned
                        })
                })
                .map(|(key, s)| (key.clone(), s.task.clone()))
                .collect()
        };
        // Forget instances that left discovery.
        {
            let map = instances.lock();
            done.retain(|k| map.contains_key(k));
        }
        for ((node, id), task) in wanted {
            if client.is_none() {
                client = dpb::discovery_client::DiscoveryClient::connect(url.clone())
                    .await
                    .ok();
            }
            let Some(c) = client.as_mut() else { break };
            let r = c
                .set_maintenance(dpb::SetMaintenanceRequest {
                    node: node.clone(),
                    id: id.clone(),
                    enable: true,
                    reason: format!("bronze: task {task} is stopping"),
                })
                .await;
            match r {
                Ok(_) => {
                    tracing::debug!(%node, %id, %task, "drained from discovery");
                    done.insert((node, id));
                }
                Err(e) if e.code() == tonic::Code::NotFound => {
                    done.insert((node, id));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot drain an instance from discovery");
                    client = None;
                }
            }
        }
    }
}
