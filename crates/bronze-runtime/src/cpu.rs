//! CPU-heavy work (a bcrypt check costs tens of milliseconds by design)
//! run on tokio's blocking pool a few at a time: one core's worth fewer
//! than the machine has, at least one. A flood of such work (a client
//! sending wrong passwords) then leaves the async workers a core, and
//! what waits for a slot waits without holding a thread. One `CpuSlots`
//! per server (the gateway's plugins, the registry's htpasswd checks), not
//! per process: two servers in one process (`bronze dev`, tests) do not
//! queue behind each other.

use tokio::sync::Semaphore;

#[derive(Debug)]
pub struct CpuSlots(Semaphore);

impl Default for CpuSlots {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self::new(cores.saturating_sub(1))
    }
}

impl CpuSlots {
    /// At most `slots` (at least one) pieces of work at once.
    pub fn new(slots: usize) -> Self {
        Self(Semaphore::new(slots.max(1)))
    }

    /// Runs `work` on the blocking pool once a slot is free; `None` if it
    /// panicked.
    pub async fn run<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        // The semaphore is never closed: a permit always comes.
        let _slot = self.0.acquire().await.ok();
        tokio::task::spawn_blocking(work).await.ok()
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
    }
}
