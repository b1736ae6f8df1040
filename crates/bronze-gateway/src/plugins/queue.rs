//! The log plugins' hand-off: a request puts its entry on a bounded queue
//! and goes on; one thread per plugin instance takes entries off it. The
//! thread starts with the first entry, so a configuration compiled only to
//! be validated (the Admin API compiles each change more than once) starts
//! none. A full queue drops the entry and counts it: a slow sink never
//! slows a request.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

/// What a log thread gets: an entry, or a request to say when everything
/// before it is done (shutdown).
pub(super) enum Msg<T> {
    Entry(T),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// What the thread is given: the receiving end of its queue.
type Run<M> = Box<dyn FnOnce(mpsc::Receiver<M>) + Send>;

pub(super) struct Queue<M> {
    /// The plugin's name, for its thread and its warnings.
    name: &'static str,
    capacity: usize,
    sender: OnceLock<Option<mpsc::Sender<M>>>,
    run: parking_lot::Mutex<Option<Run<M>>>,
    dropped: AtomicU64,
}

impl<M: Send + 'static> Queue<M> {
    /// A queue of `capacity` entries whose thread, once started, runs
    /// `run` until every sender is gone (the plugin instance dropped).
    pub fn new(
        name: &'static str,
        capacity: usize,
        run: impl FnOnce(mpsc::Receiver<M>) + Send + 'static,
    ) -> Self {
        Self {
            name,
            capacity,
            sender: OnceLock::new(),
            run: parking_lot::Mutex::new(Some(Box::new(run))),
            dropped: AtomicU64::new(0),
        }
    }

    /// The queue, if its thread has started.
    fn started(&self) -> Option<&mpsc::Sender<M>> {
        self.sender.get()?.as_ref()
    }

    /// The queue, its thread started now if this is the first use (`None`
    /// when it could not start: entries are then dropped, with a warning
    /// once).
    fn sender(&self) -> Option<&mpsc::Sender<M>> {
        self.sender
            .get_or_init(|| {
                let run = self.run.lock().take()?;
                let (sender, rx) = mpsc::channel::<M>(self.capacity);
                match std::thread::Builder::new()
                    .name(self.name.into())
                    .spawn(move || run(rx))
                {
                    Ok(_) => Some(sender),
                    Err(error) => {
                        tracing::warn!(plugin = self.name, %error, "cannot start the log thread; entries dropped");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Hands `entry` to the thread without waiting.
    fn push(&self, entry: M) {
        let Some(sender) = self.sender() else {
            return;
        };
        match sender.try_send(entry) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        plugin = self.name,
                        dropped = n,
                        "log plugin is behind; entries dropped"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Entries dropped because the queue was full.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl<T: Send + 'static> Queue<Msg<T>> {
    /// Shutdown's flush: the thread answers once what was queued before
    /// is done. `None` when the thread never started (nothing to do) or
    /// the queue is full.
    pub fn flush(&self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let (done, flushed) = tokio::sync::oneshot::channel();
        self.started()?.try_send(Msg::Flush(done)).ok()?;
        Some(flushed)
    }

    /// Queues one entry.
    pub fn entry(&self, entry: T) {
        self.push(Msg::Entry(entry));
    }
}

/// What a log thread has gathered: from `first` on, every message
/// already queued, until `take` (which stores an entry and returns the
/// bytes held) reports 64 KiB; flush requests go to `flushed`, to be
/// answered once what came before them is written.
pub(super) fn gather<T>(
    first: Msg<T>,
    rx: &mut mpsc::Receiver<Msg<T>>,
    flushed: &mut Vec<tokio::sync::oneshot::Sender<()>>,
    mut take: impl FnMut(T) -> usize,
) {
    let mut next = Some(first);
    let mut held = 0;
    while let Some(msg) = next {
        match msg {
            Msg::Entry(e) => held = take(e),
            Msg::Flush(done) => flushed.push(done),
        }
        next = if held < 64 << 10 {
            rx.try_recv().ok()
        } else {
            None
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_starts_with_the_first_entry_and_ends_with_the_queue() {
        let (tx, rx) = std::sync::mpsc::channel();
        let q = Queue::new("test-log", 2, move |mut entries: mpsc::Receiver<u32>| {
            let name = std::thread::current().name().map(str::to_string);
            while let Some(e) = entries.blocking_recv() {
                let _ = tx.send((name.clone(), Some(e)));
            }
            let _ = tx.send((name, None));
        });
        assert!(q.started().is_none(), "no thread before the first entry");
        assert!(rx.try_recv().is_err());
        q.push(7);
        assert!(q.started().is_some());
        let got = rx.recv().expect("the thread got the entry");
        assert_eq!(got, (Some("test-log".to_string()), Some(7)));
        drop(q);
        assert_eq!(
            rx.recv().expect("the thread ended"),
            (Some("test-log".to_string()), None)
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let q = Queue::new("test-log", 1, move |mut entries: mpsc::Receiver<u32>| {
            let _ = wait.recv();
            while entries.blocking_recv().is_some() {}
        });
        // The thread holds none until released: one entry fits.
        q.push(1);
        q.push(2);
        q.push(3);
        assert_eq!(q.dropped(), 2);
        let _ = release.send(());
    }
}
