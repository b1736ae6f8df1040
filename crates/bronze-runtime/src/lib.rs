//! What every Bronze daemon needs at its edges.
//!
//! * [`config::load`]: configuration from a TOML file, then environment
//!   variables and flags on top, validated with errors that name the key.
//! * [`Shutdown`]: one cancellation signal shared by every task of a
//!   component; SIGTERM and SIGINT trigger it, and components drain before
//!   they return.
//! * [`serve::serve`] (feature `serve`): the HTTP accept loop, plain or
//!   TLS, shared by every listener.
//! * [`grpc`] (feature `grpc`): the gRPC health service of every gRPC
//!   port.
//! * [`cpu::CpuSlots`]: CPU-heavy work (bcrypt) on the blocking pool, a
//!   few at a time.
//! * [`duration`], [`units`], [`words`]: the text people type for
//!   durations, sizes, CPUs and command lines, parsed one way everywhere.

pub mod config;
pub mod cpu;
pub mod duration;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod proxy_protocol;
#[cfg(feature = "serve")]
pub mod serve;
pub mod units;
pub mod words;

use tokio_util::sync::CancellationToken;

/// Time since the Unix epoch (zero for a clock set before it): the one
/// wall-clock reading every component's timestamps, token expiries and
/// rate windows come from.
pub fn unix_time() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Exit code for a usage or configuration error (sysexits' EX_USAGE).
pub const EX_USAGE: i32 = 64;

/// A cloneable shutdown signal. Cancelling it asks every holder to drain and
/// return; it never forces anything.
#[derive(Clone, Default, Debug)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask every holder to stop.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Completes once shutdown has been asked for.
    pub async fn wait(&self) {
        self.0.cancelled().await;
    }

    /// Completes once shutdown has been asked for; owns its handle, so it
    /// can be kept (pinned) and polled again and again, registered once.
    pub fn waiter(&self) -> impl Future<Output = ()> + Send + 'static {
        self.0.clone().cancelled_owned()
    }

    /// A child signal: triggered with its parent, or on its own.
    pub fn child(&self) -> Self {
        Self(self.0.child_token())
    }

    /// Runs `attempt` again and again until this signal, each time it
    /// ends (its answer says why, logged with `what`), after a backoff from
    /// 100 ms doubling to 5 s; an attempt that lasted 10 s or more starts
    /// the backoff over. For streams followed for the process's life
    /// (discovery's watch).
    pub async fn retry<F, Fut>(&self, what: &str, mut attempt: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = String>,
    {
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            let started = std::time::Instant::now();
            let ended = attempt().await;
            if self.is_triggered() {
                return;
            }
            if started.elapsed() >= std::time::Duration::from_secs(10) {
                backoff = std::time::Duration::from_millis(100);
            }
            tracing::warn!(what, reason = %ended, retry_in = ?backoff, "ended; trying again");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.wait() => return,
            }
            backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
        }
    }

    /// Trigger this signal on SIGTERM or SIGINT (Ctrl-C).
    pub fn trigger_on_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let name = wait_for_signal().await;
            tracing::info!(signal = name, "shutting down: draining");
            this.trigger();
        });
    }
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can still be killed; never
        // trigger a shutdown by mistake.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "ctrl-c"
}

/// Makes ring the process' rustls crypto provider (once; later calls are
/// no-ops). Every TLS client and server in Bronze relies on it.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs `check` on every input of a fuzz target's committed corpus
/// (`fuzz/corpus/<target>` in the workspace), so `cargo test` replays what
/// fuzzing found. Panics when the corpus is missing or empty.
#[doc(hidden)]
pub fn replay_fuzz_corpus(target: &str, mut check: impl FnMut(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        check(&std::fs::read(entry.expect("corpus entry").path()).expect("corpus file"));
        n += 1;
    }
    assert!(n > 0, "empty corpus in {}", dir.display());
}
