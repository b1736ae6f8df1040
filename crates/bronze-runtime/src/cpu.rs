//! CPU-heavy work (a bcrypt check costs tens of milliseconds by design)
//! run on tokio's blocking pool a few at a time: one core's worth fewer
//! than the machine has, at least one. A flood of such work (a client
//! sending wrong passwords) then leaves the async workers a core, and
//! what waits for a slot waits without holding a thread. One `CpuSlots`
//! per server (the gateway's plugins, the registry's htpasswd checks), not
//! per process: two servers in one process (`bronze dev`, tests) do not
//! queue behind each other. The work is counted (`started`, `pending`),
//! so a server's metrics show a flood as it happens.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Semaphore;

#[derive(Debug)]
pub struct CpuSlots {
    slots: Semaphore,
    started: AtomicU64,
    pending: AtomicUsize,
}

impl Default for CpuSlots {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self::new(cores.saturating_sub(1))
    }
}

/// Takes one off `pending` when the work it stands for ends (or is
/// dropped waiting).
struct Pending<'a>(&'a AtomicUsize);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl CpuSlots {
    /// At most `slots` (at least one) pieces of work at once.
    pub fn new(slots: usize) -> Self {
        Self {
            slots: Semaphore::new(slots.max(1)),
            started: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
        }
    }

    /// Runs `work` on the blocking pool once a slot is free; `None` if it
    /// panicked.
    pub async fn run<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.pending.fetch_add(1, Ordering::Relaxed);
        let _pending = Pending(&self.pending);
        // The semaphore is never closed: a permit always comes.
        let _slot = self.slots.acquire().await.ok();
        tokio::task::spawn_blocking(work).await.ok()
    }

    /// How many pieces of work `run` was given so far.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// How many are waiting for a slot or running now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::CpuSlots;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_its_slots_run_at_once() {
        let slots = Arc::new(CpuSlots::new(2));
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut all = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (slots, running, most) = (slots.clone(), running.clone(), most.clone());
            all.spawn(async move {
                slots
                    .run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        // Long enough that others would overlap if let in.
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
            });
        }
        while let Some(r) = all.join_next().await {
            assert_eq!(r.expect("join"), Some(()));
        }
        let most = most.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} at once");
        assert_eq!((slots.started(), slots.pending()), (16, 0));
    }

    #[tokio::test]
    async fn work_is_counted_while_it_waits_and_while_it_runs() {
        let slots = Arc::new(CpuSlots::new(1));
        let (release, held) = std::sync::mpsc::channel::<()>();
        let s = slots.clone();
        let first = tokio::spawn(async move { s.run(move || held.recv().is_ok()).await });
        let s = slots.clone();
        let second = tokio::spawn(async move { s.run(|| true).await });
        // Both tasks get to `run` at their first poll.
        for _ in 0..1000 {
            if slots.started() == 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!((slots.started(), slots.pending()), (2, 2));
        release.send(()).expect("release");
        assert_eq!(first.await.expect("join"), Some(true));
        assert_eq!(second.await.expect("join"), Some(true));
        assert_eq!(slots.pending(), 0);
    }
}
