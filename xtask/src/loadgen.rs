//! An open-loop HTTP/1.1 load generator (what wrk2 and oha
//! `--latency-correction` do, which Debian does not package): every
//! connection has a fixed schedule of send times, and a request's latency is
//! measured from the time it was *scheduled*, not from when it could be
//! sent. A server that stalls for 100 ms therefore shows 100 ms, 99 ms, ...
//! for every request that should have gone out meanwhile, instead of one
//! slow sample (coordinated omission).
//!
//! Connections are hyper client connections, each polled in the same task as
//! its request loop (no channel hop). Send times come from a timerfd per
//! connection: tokio's timer wheel has 1 ms ticks, which would add up to a
//! millisecond to every latency. Each thread runs a current-thread runtime
//! and reports the CPU time it used, so a run can tell whether the generator
//! itself was the bottleneck.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

/// What to send, how fast, for how long.
#[derive(Clone, Debug)]
pub struct Plan {
    pub addr: SocketAddr,
    /// Host header and path of every request.
    pub host: String,
    pub path: String,
    /// Requests per second, all connections together.
    pub rate: f64,
    pub connections: usize,
    /// OS threads, each with a current-thread runtime.
    pub threads: usize,
    pub duration: Duration,
    /// Connection churn: close and reconnect after this many requests.
    pub requests_per_connection: Option<u64>,
}

impl Plan {
    /// The command-line-like description printed next to results.
    pub fn describe(&self) -> String {
        let churn = self
            .requests_per_connection
            .map(|n| format!(", reconnect every {n} requests"))
            .unwrap_or_default();
        format!(
            "xtask open-loop generator: {:.0} requests/s, {} connections, {} thread(s), {:.0} s{churn}, \
             latency from each request's scheduled send time, GET http://{}{}",
            self.rate,
            self.connections,
            self.threads,
            self.duration.as_secs_f64(),
            self.addr,
            self.path
        )
    }
}

/// When request `k` of connection `conn` is due, counted from the start:
/// the requests of the whole run form one grid of `1/rate` steps, dealt to
/// the connections in turn (slot `k * connections + conn`). Each connection
/// thus sends every `connections / rate`, the connections staggered by
/// `1/rate`, so the offered load is smooth and not bursts of `connections`.
pub fn scheduled(conn: usize, k: u64, connections: usize, rate: f64) -> Duration {
    let slot = k as f64 * connections as f64 + conn as f64;
    Duration::from_nanos((slot * 1e9 / rate).round() as u64)
}

/// Requests connection `conn` has scheduled before `duration` ends.
pub fn requests_due(conn: usize, connections: usize, rate: f64, duration: Duration) -> u64 {
    let slots = (duration.as_secs_f64() * rate).ceil() as u64;
    let (c, i) = (connections as u64, conn as u64);
    if i >= slots {
        0
    } else {
        (slots - i).div_ceil(c)
    }
}

/// Latencies in microseconds, 3 significant digits, 1 us to 100 s.
pub struct Latencies(Histogram<u64>);

/// Percentiles of a set of latencies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    const MAX_US: u64 = 100_000_000;

    pub fn new() -> Self {
        Self(Histogram::new_with_bounds(1, Self::MAX_US, 3).expect("constant bounds are valid"))
    }

    /// Records one request: scheduled at `due`, answered at `done`.
    /// Answers before their schedule (impossible here) count as 0.
    pub fn record(&mut self, due: Instant, done: Instant) {
        self.record_duration(done.saturating_duration_since(due));
    }

    pub fn record_duration(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(us.clamp(1, Self::MAX_US));
    }

    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn summary(&self) -> Summary {
        let at = |q: f64| Duration::from_micros(self.0.value_at_quantile(q));
        Summary {
            count: self.0.len(),
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: Duration::from_micros(if self.0.is_empty() { 0 } else { self.0.max() }),
        }
    }
}

/// What one run measured.
pub struct Report {
    pub plan: Plan,
    /// Answers received (any status).
    pub completed: u64,
    pub non_2xx: u64,
    /// Connect, write or read failures.
    pub errors: u64,
    /// Requests scheduled within the run but not answered when it was cut
    /// off (one second after its end); recorded with the latency they had
    /// reached then.
    pub unfinished: u64,
    /// Completed requests per second of the run (or of the time up to the
    /// last answer, when that was later).
    pub achieved_rate: f64,
    pub latencies: Summary,
    /// CPU time the generator's threads used, as a fraction of one core per
    /// thread (1.0: every thread was busy all the time).
    pub generator_cpu: f64,
    /// The generator's threads' CPU time, all together.
    pub generator_cpu_time: Duration,
    /// How late the generator itself sent requests whose connection was
    /// idle at their scheduled time (timer and thread wake-up delays; not
    /// the target's doing). Large values: the generator, or the machine,
    /// was the limit.
    pub send_lag: Summary,
}

impl Report {
    /// The offered rate was reached: at least 99% of it, nothing cut off.
    pub fn reached(&self) -> bool {
        rate_reached(self.plan.rate, self.achieved_rate, self.unfinished)
    }
}

/// A target was reached when at least 99% of the offered rate was answered
/// and no request was left unanswered at the cut-off.
pub fn rate_reached(target: f64, achieved: f64, unfinished: u64) -> bool {
    unfinished == 0 && achieved >= 0.99 * target
}

/// Runs the plan against a server; blocks until it is done.
pub fn run(plan: &Plan) -> anyhow::Result<Report> {
    let threads = plan.threads.clamp(1, plan.connections.max(1));
    let start = Instant::now() + Duration::from_millis(50);
    let results: Vec<anyhow::Result<ThreadResult>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| s.spawn(move || thread_main(plan, t, threads, start)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("load generator thread panicked")))
            })
            .collect()
    });
    let mut total = ThreadResult::default();
    for r in results {
        let r = r?;
        total.latencies.merge(&r.latencies);
        total.send_lag.merge(&r.send_lag);
        total.completed += r.completed;
        total.non_2xx += r.non_2xx;
        total.errors += r.errors;
        total.unfinished += r.unfinished;
        total.cpu += r.cpu;
        total.last_done = total.last_done.max(r.last_done);
    }
    let elapsed = plan.duration.max(total.last_done);
    Ok(Report {
        plan: plan.clone(),
        completed: total.completed,
        non_2xx: total.non_2xx,
        errors: total.errors,
        unfinished: total.unfinished,
        achieved_rate: total.completed as f64 / elapsed.as_secs_f64(),
        latencies: total.latencies.summary(),
        generator_cpu: total.cpu.as_secs_f64() / (elapsed.as_secs_f64() * threads as f64),
        generator_cpu_time: total.cpu,
        send_lag: total.send_lag.summary(),
    })
}

#[derive(Default)]
struct ThreadResult {
    latencies: Latencies,
    send_lag: Latencies,
    completed: u64,
    non_2xx: u64,
    errors: u64,
    unfinished: u64,
    cpu: Duration,
    /// Time of the last answer, from the start.
    last_done: Duration,
}

/// CPU time this thread has used: the scheduler's nanoseconds, or where
/// the kernel keeps no schedstat, user + system time in `/proc`'s fixed
/// 100 ticks a second.
fn thread_cpu() -> Duration {
    let sched = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .filter(|ns| *ns > 0);
    if let Some(ns) = sched {
        return Duration::from_nanos(ns);
    }
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces):
            // state is the first, utime the 12th, stime the 13th.
            let rest = s.rsplit_once(") ")?.1;
            let mut f = rest.split_whitespace().skip(11);
            let utime: u64 = f.next()?.parse().ok()?;
            let stime: u64 = f.next()?.parse().ok()?;
            Some(Duration::from_millis((utime + stime) * 10))
        })
        .unwrap_or(Duration::ZERO)
}

fn thread_main(
    plan: &Plan,
    thread: usize,
    threads: usize,
    start: Instant,
) -> anyhow::Result<ThreadResult> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cpu_before = thread_cpu();
    let mut result = rt.block_on(async {
        let conns: Vec<_> = (thread..plan.connections)
            .step_by(threads)
            .map(|conn| connection(plan, conn, start))
            .collect();
        let mut total = ThreadResult::default();
        for r in futures::future::join_all(conns).await {
            let r = r?;
            total.latencies.merge(&r.latencies);
            total.send_lag.merge(&r.send_lag);
            total.completed += r.completed;
            total.non_2xx += r.non_2xx;
            total.errors += r.errors;
            total.unfinished += r.unfinished;
            total.last_done = total.last_done.max(r.last_done);
        }
        anyhow::Ok(total)
    })?;
    result.cpu = thread_cpu().saturating_sub(cpu_before);
    Ok(result)
}

/// A timerfd, readable when its one-shot alarm has gone off.
struct Tfd(TimerFd);

impl AsRawFd for Tfd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

struct Pacer(AsyncFd<Tfd>);

impl Pacer {
    fn new() -> anyhow::Result<Self> {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .context("timerfd_create")?;
        // Deprecated because a `T` that does not own its descriptor could
        // close it while registered; the only safe replacement is `unsafe`.
        // `Tfd` owns the timerfd (an `OwnedFd` inside `TimerFd`), which is
        // closed only when the `AsyncFd` (deregistering first) is dropped.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(Tfd(fd), tokio::io::Interest::READABLE)?;
        Ok(Self(fd))
    }

    /// Returns at `due` (at once when it has passed); whether it waited.
    async fn sleep_until(&self, due: Instant) -> std::io::Result<bool> {
        let Some(wait) = due
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return Ok(false);
        };
        self.0
            .get_ref()
            .0
            .set(Expiration::OneShot(wait.into()), TimerSetTimeFlags::empty())
            .map_err(std::io::Error::from)?;
        loop {
            let mut ready = self.0.readable().await?;
            // Reading the expiration count fails with EAGAIN until the alarm
            // has gone off; try_io then clears the readiness.
            match ready.try_io(|fd| fd.get_ref().0.wait().map_err(std::io::Error::from)) {
                Ok(r) => return r.map(|()| true),
                Err(_would_block) => continue,
            }
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// One connection's run: requests at their scheduled times, reconnecting
/// after errors or after `requests_per_connection`; cut off one second
/// after the run's end.
async fn connection(plan: &Plan, conn: usize, start: Instant) -> anyhow::Result<ThreadResult> {
    let pacer = Pacer::new()?;
    let due_total = requests_due(conn, plan.connections, plan.rate, plan.duration);
    let cut_off = start + plan.duration + Duration::from_secs(1);
    let mut st = ConnState {
        result: ThreadResult::default(),
        next: 0,
        in_flight: false,
    };
    let _ = tokio::time::timeout_at(
        cut_off.into(),
        requests(plan, conn, start, due_total, &pacer, &mut st),
    )
    .await;
    // Requests that never got an answer: their latency is at least what
    // they had waited at the cut-off.
    for k in st.next..due_total {
        let due = start + scheduled(conn, k, plan.connections, plan.rate);
        st.result.latencies.record(due, cut_off);
        st.result.unfinished += 1;
    }
    Ok(st.result)
}

struct ConnState {
    result: ThreadResult,
    /// The next request to send.
    next: u64,
    /// A request was sent and its answer is not complete yet.
    in_flight: bool,
}

async fn requests(
    plan: &Plan,
    conn: usize,
    start: Instant,
    due_total: u64,
    pacer: &Pacer,
    st: &mut ConnState,
) {
    while st.next < due_total {
        // The first request of a connection waits for its time before
        // connecting, so new connections are part of the load (churn).
        let first_due = start + scheduled(conn, st.next, plan.connections, plan.rate);
        if pacer.sleep_until(first_due).await.is_err() {
            st.result.errors += 1;
            st.next += 1;
            continue;
        }
        let (sender, driver) = match connect(plan.addr).await {
            Ok(c) => c,
            Err(_) => {
                st.result.errors += 1;
                st.next += 1;
                // Avoid spinning on a refused port.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let limit = plan
            .requests_per_connection
            .map_or(due_total, |n| (st.next + n).min(due_total));
        let mut driver = std::pin::pin!(driver);
        let work = on_connection(plan, conn, start, limit, pacer, sender, st);
        let closed = tokio::select! {
            biased;
            () = work => false,
            _ = &mut driver => true,
        };
        // The server closed the connection (or it failed): the request on
        // it, if any, failed; the next one goes on a new connection.
        if closed && std::mem::take(&mut st.in_flight) {
            st.result.errors += 1;
        }
    }
}

async fn connect(
    addr: SocketAddr,
) -> anyhow::Result<(
    Sender,
    hyper::client::conn::http1::Connection<TokioIo<tokio::net::TcpStream>, Empty<Bytes>>,
)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?)
}

async fn on_connection(
    plan: &Plan,
    conn: usize,
    start: Instant,
    limit: u64,
    pacer: &Pacer,
    mut sender: Sender,
    st: &mut ConnState,
) {
    while st.next < limit {
        let due = start + scheduled(conn, st.next, plan.connections, plan.rate);
        match pacer.sleep_until(due).await {
            Ok(true) => st.result.send_lag.record(due, Instant::now()),
            Ok(false) => {}
            Err(_) => {
                st.result.errors += 1;
                st.next += 1;
                return;
            }
        }
        // Closed by the server between requests (keep-alive limit): not a
        // failed request; reconnect and send it there.
        if sender.ready().await.is_err() {
            return;
        }
        let req = http::Request::get(plan.path.as_str())
            .header(http::header::HOST, plan.host.as_str())
            .body(Empty::<Bytes>::new());
        let Ok(req) = req else {
            st.result.errors += 1;
            st.next += 1;
            return;
        };
        st.next += 1;
        st.in_flight = true;
        let ok = match sender.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                let mut body = resp.into_body();
                let mut complete = true;
                while let Some(frame) = body.frame().await {
                    if frame.is_err() {
                        complete = false;
                        break;
                    }
                }
                if complete && !status.is_success() {
                    st.result.non_2xx += 1;
                }
                complete
            }
            Err(_) => false,
        };
        st.in_flight = false;
        if !ok {
            st.result.errors += 1;
            return;
        }
        let done = Instant::now();
        st.result.latencies.record(due, done);
        st.result.completed += 1;
        st.result.last_done = st
            .result
            .last_done
            .max(done.saturating_duration_since(start));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_one_even_grid_dealt_to_connections() {
        let (conns, rate) = (4, 1000.0);
        // Each connection every conns/rate = 4 ms, staggered by 1 ms.
        assert_eq!(scheduled(0, 0, conns, rate), Duration::ZERO);
        assert_eq!(scheduled(1, 0, conns, rate), Duration::from_millis(1));
        assert_eq!(scheduled(3, 0, conns, rate), Duration::from_millis(3));
        assert_eq!(scheduled(0, 1, conns, rate), Duration::from_millis(4));
        assert_eq!(scheduled(2, 10, conns, rate), Duration::from_millis(42));
        // All connections together: every slot exactly once, 1 ms apart.
        let mut all: Vec<Duration> = (0..conns)
            .flat_map(|c| (0..100).map(move |k| scheduled(c, k, conns, rate)))
            .collect();
        all.sort();
        for (i, t) in all.iter().enumerate() {
            assert_eq!(*t, Duration::from_millis(i as u64));
        }
    }

    #[test]
    fn schedule_does_not_drift_over_a_long_run() {
        // 3 per microsecond, not a whole number of nanoseconds apart: a
        // schedule built by adding a rounded step would drift.
        let rate = 3_000_000.0 / 7.0;
        let t = scheduled(0, 300_000_000, 1, rate);
        assert_eq!(t, Duration::from_millis(700_000));
    }

    #[test]
    fn requests_due_counts_every_slot_of_the_run_once() {
        let (rate, d) = (1000.0, Duration::from_millis(10));
        // Slots 0..10; with 3 connections: 0,3,6,9 / 1,4,7 / 2,5,8.
        assert_eq!(requests_due(0, 3, rate, d), 4);
        assert_eq!(requests_due(1, 3, rate, d), 3);
        assert_eq!(requests_due(2, 3, rate, d), 3);
        // More connections than slots: the extra ones send nothing.
        assert_eq!(requests_due(12, 20, rate, d), 0);
        for conns in [1, 7, 50, 64] {
            let total: u64 = (0..conns)
                .map(|c| requests_due(c, conns, 52_345.0, Duration::from_secs(3)))
                .sum();
            assert_eq!(total, 157_035, "{conns} connections");
            // And the last request of each is inside the run.
            for c in 0..conns {
                let n = requests_due(c, conns, 52_345.0, Duration::from_secs(3));
                if n > 0 {
                    assert!(scheduled(c, n - 1, conns, 52_345.0) < Duration::from_secs(3));
                    assert!(scheduled(c, n, conns, 52_345.0) >= Duration::from_secs(3));
                }
            }
        }
    }

    #[test]
    fn histogram_percentiles_and_max() {
        let mut l = Latencies::new();
        for us in 1..=1000u64 {
            l.record_duration(Duration::from_micros(us));
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50, Duration::from_micros(500));
        assert_eq!(s.p99, Duration::from_micros(990));
        assert_eq!(s.p999, Duration::from_micros(999));
        assert_eq!(s.max, Duration::from_micros(1000));
        // Three significant digits at larger values.
        let mut l = Latencies::new();
        l.record_duration(Duration::from_micros(123_456));
        let max = l.summary().max.as_micros();
        assert!((123_400..=123_600).contains(&max), "{max}");
        // Empty: zeros, not a panic.
        assert_eq!(Latencies::new().summary().max, Duration::ZERO);
    }

    #[test]
    fn latency_counts_from_the_schedule_so_a_stall_shows_on_every_request_it_delayed() {
        // One connection due every 1 ms; the server stalls 100 ms on the
        // first request and then answers at once. A closed-loop client would
        // record one 100 ms sample; from the schedule, the 100 requests due
        // during the stall each waited until it ended.
        let start = Instant::now();
        let mut l = Latencies::new();
        let stall_end = start + Duration::from_millis(100);
        for k in 0..200u64 {
            let due = start + scheduled(0, k, 1, 1000.0);
            let done = due.max(stall_end) + Duration::from_micros(50);
            l.record(due, done);
        }
        let s = l.summary();
        assert_eq!(s.count, 200);
        // Half the requests waited for the stall: p50 is well above the
        // 50 us service time, the max is the whole stall.
        assert!(s.p50 >= Duration::from_micros(50) && s.p50 <= Duration::from_millis(2));
        assert!(s.p99 >= Duration::from_millis(95), "{:?}", s.p99);
        assert!(s.max >= Duration::from_millis(100), "{:?}", s.max);
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        a.record_duration(Duration::from_micros(10));
        b.record_duration(Duration::from_micros(20));
        b.record_duration(Duration::from_secs(500)); // beyond the bound: clamped
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 3);
        assert!(s.max >= Duration::from_secs(99));
    }

    /// A real HTTP/1.1 server on a thread of its own that answers at once,
    /// except request number `stall_at` which it holds for `stall`.
    fn server(stall_at: u64, stall: Duration) -> SocketAddr {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let seen = Arc::new(AtomicU64::new(0));
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |_req| {
                            let n = seen.fetch_add(1, Ordering::Relaxed);
                            async move {
                                if n == stall_at {
                                    tokio::time::sleep(stall).await;
                                }
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                    http_body_util::Full::new(Bytes::from_static(b"hello\n")),
                                ))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                    });
                }
            });
        });
        addr
    }

    fn plan(addr: SocketAddr, rate: f64, connections: usize) -> Plan {
        Plan {
            addr,
            host: addr.to_string(),
            path: "/".into(),
            rate,
            connections,
            threads: 1,
            duration: Duration::from_secs(2),
            requests_per_connection: None,
        }
    }

    #[test]
    fn against_a_real_server_the_rate_is_kept_and_a_stall_shows_in_the_tail() {
        // One connection, 500 requests/s for 2 s; the server holds request
        // 100 for 300 ms. The ~150 requests due meanwhile queue behind it
        // and are each measured from their own schedule: p99 near 300 ms,
        // where a closed-loop client would show one slow sample in 1,000.
        let addr = server(100, Duration::from_millis(300));
        let r = run(&plan(addr, 500.0, 1)).unwrap();
        assert_eq!(r.completed, 1000);
        assert_eq!((r.errors, r.non_2xx, r.unfinished), (0, 0, 0));
        assert!(r.reached(), "achieved {}", r.achieved_rate);
        let l = r.latencies;
        assert!(l.max >= Duration::from_millis(300), "{l:?}");
        assert!(l.p99 >= Duration::from_millis(250), "{l:?}");
        assert!(l.p50 < Duration::from_millis(50), "{l:?}");
        assert!(
            r.generator_cpu > 0.0 && r.generator_cpu < 1.0,
            "{}",
            r.generator_cpu
        );
        // The connection was idle before most sends: their lateness is known.
        assert!(r.send_lag.count > 500, "{:?}", r.send_lag);
    }

    #[test]
    fn churn_reconnects_and_counts_every_request() {
        let addr = server(u64::MAX, Duration::ZERO);
        let mut p = plan(addr, 400.0, 4);
        p.requests_per_connection = Some(10);
        p.threads = 2;
        let r = run(&p).unwrap();
        assert_eq!(r.completed, 800);
        assert_eq!((r.errors, r.non_2xx, r.unfinished), (0, 0, 0));
    }

    #[test]
    fn a_refused_port_is_counted_as_errors_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut p = plan(port, 100.0, 2);
        p.duration = Duration::from_millis(500);
        let r = run(&p).unwrap();
        assert_eq!(r.completed, 0);
        assert!(r.errors > 0);
        assert!(!r.reached());
    }

    #[test]
    fn reached_needs_99_percent_and_nothing_cut_off() {
        assert!(rate_reached(50_000.0, 49_600.0, 0));
        assert!(!rate_reached(50_000.0, 49_400.0, 0));
        assert!(!rate_reached(50_000.0, 50_000.0, 3));
    }
}
