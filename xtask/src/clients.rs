//! Closed-loop clients for tests that count failed requests through a
//! rollout: each asks one URL again and again (keep-alive, one request at
//! a time) until stopped or until all of them together made `budget`
//! requests (tests send bounded traffic). Not a benchmark: `loadgen.rs` is.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the clients saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// 200 answers.
    pub ok: u64,
    /// Anything else: another status, or no answer.
    pub failed: u64,
    /// The body of the latest 200 answer, trimmed.
    pub last: String,
}

pub struct Clients {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    last: Arc<Mutex<String>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    /// Starts `clients` tasks on the current tokio runtime.
    pub fn start(url: &str, clients: usize, budget: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let last = Arc::new(Mutex::new(String::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failed, last) =
                    (stop.clone(), ok.clone(), failed.clone(), last.clone());
                let url = url.to_string();
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    while !stop.load(Ordering::Relaxed)
                        && ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < budget
                    {
                        match client.get(&url).send().await {
                            Ok(r) if r.status() == 200 => {
                                let body = r.text().await.unwrap_or_default();
                                *last.lock().expect("lock") = body.trim().to_string();
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                eprintln!("failed request: {}", r.status());
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                eprintln!("failed request: {e}");
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            last,
            tasks,
        }
    }

    /// Stops the clients, waits for their requests in flight, and tells.
    pub async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let last = self.last.lock().expect("lock").clone();
        Tally {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            last,
        }
    }
}
