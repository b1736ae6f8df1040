//! Closed-loop clients for tests that count failed requests through a
//! rollout: each asks one URL again and again (keep-alive, one request at
//! a time) until stopped or until all of them together made `budget`
//! requests (tests send bounded traffic). Not a benchmark: `loadgen.rs` is;
//! but a benchmark that times a rollout by the answers' bodies paces them
//! ([`Clients::start_paced`]) and asks when the latest body began
//! ([`Clients::finish_settled`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// The body of the latest 200 answer, and since when the 200 answers
/// carried it without another one in between.
type Latest = (String, Option<Instant>);

pub struct Clients {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    last: Arc<Mutex<Latest>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    /// Starts `clients` tasks on the current tokio runtime, each sending
    /// its next request as soon as it has the answer.
    pub fn start(url: &str, clients: usize, budget: u64) -> Self {
        Self::spawn(url, clients, budget, None)
    }

    /// As [`Clients::start`], but each client sends at most `rate`
    /// requests per second (a slow answer delays its next request, never
    /// bunches them), and gives up on an answer after 2 s (a failure).
    pub fn start_paced(url: &str, clients: usize, budget: u64, rate: f64) -> Self {
        Self::spawn(
            url,
            clients,
            budget,
            Some(Duration::from_secs_f64(1.0 / rate)),
        )
    }

    fn spawn(url: &str, clients: usize, budget: u64, every: Option<Duration>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let last = Arc::new(Mutex::new((String::new(), None)));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failed, last) =
                    (stop.clone(), ok.clone(), failed.clone(), last.clone());
                let url = url.to_string();
                tokio::spawn(async move {
                    let client = match every {
                        Some(_) => reqwest::Client::builder()
                            .timeout(Duration::from_secs(2))
                            .build()
                            .unwrap_or_default(),
                        None => reqwest::Client::new(),
                    };
                    let mut pace = every.map(|every| {
                        let mut i = tokio::time::interval(every);
                        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        i
                    });
                    while !stop.load(Ordering::Relaxed)
                        && ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < budget
                    {
                        if let Some(pace) = &mut pace {
                            pace.tick().await;
                        }
                        match client.get(&url).send().await {
                            Ok(r) if r.status() == 200 => {
                                let body = r.text().await.unwrap_or_default();
                                let body = body.trim();
                                let mut last = last.lock().expect("lock");
                                if last.0 != body || last.1.is_none() {
                                    *last = (body.to_string(), Some(Instant::now()));
                                }
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

    /// Whether the clients have had `body` as the only 200 answer for
    /// at least `how_long` (and still do).
    pub fn settled_on(&self, body: &str, how_long: Duration) -> bool {
        let last = self.last.lock().expect("lock");
        last.0 == body && last.1.is_some_and(|since| since.elapsed() >= how_long)
    }

    /// Stops the clients, waits for their requests in flight, and tells.
    pub async fn finish(self) -> Tally {
        self.finish_settled().await.0
    }

    /// As [`Clients::finish`], with the moment the latest body began: the
    /// first 200 answer carrying it after the last one carrying another.
    pub async fn finish_settled(mut self) -> (Tally, Option<Instant>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        let (last, since) = self.last.lock().expect("lock").clone();
        (
            Tally {
                ok: self.ok.load(Ordering::Relaxed),
                failed: self.failed.load(Ordering::Relaxed),
                last,
            },
            since,
        )
    }
}

impl Drop for Clients {
    /// Clients dropped without [`Clients::finish`] (an error on the way)
    /// stop after their request in flight.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
