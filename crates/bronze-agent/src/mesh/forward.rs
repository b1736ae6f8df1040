//! The forwarder: a TCP listener at a service's virtual IP and target port
//! that splices each connection to one of the service's passing instances,
//! wherever they run. Round robin; an instance that does not accept within
//! [`CONNECT_TIMEOUT`] is skipped for the next one; with none left the
//! connection is closed (the caller sees a reset or an empty answer, as
//! with Swarm's VIP when no task runs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bronze_runtime::Shutdown;
use parking_lot::RwLock;
use tokio::net::{TcpListener, TcpStream};

/// How long one instance has to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The passing instances of one (service, target port), swapped whole by
/// the discovery follower.
#[derive(Default)]
pub struct Pool {
    addrs: RwLock<Arc<Vec<SocketAddr>>>,
    next: AtomicUsize,
}

impl Pool {
    /// Replaces the instances (kept in the order given).
    pub fn set(&self, addrs: Vec<SocketAddr>) {
        if **self.addrs.read() != addrs {
            *self.addrs.write() = Arc::new(addrs);
        }
    }

    pub fn addrs(&self) -> Arc<Vec<SocketAddr>> {
        self.addrs.read().clone()
    }

    /// A connection to the next instance in turn that accepts one.
    pub async fn connect(&self) -> Option<(TcpStream, SocketAddr)> {
        let addrs = self.addrs();
        let n = addrs.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let addr = addrs[(start + i) % n];
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Some((s, addr));
                }
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "instance refused; trying the next")
                }
                Err(_) => {
                    tracing::debug!(%addr, "instance did not accept in time; trying the next")
                }
            }
        }
        None
    }
}

/// Accepts on `listener` until `stop`; each connection is spliced to an
/// instance of `pool` on its own task.
pub async fn serve(listener: TcpListener, pool: Arc<Pool>, stop: Shutdown) {
    loop {
        let (mut down, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "forwarder accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = stop.wait() => return,
        };
        let _ = down.set_nodelay(true);
        let pool = pool.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let Some((mut up, _)) = pool.connect().await else {
                tracing::debug!(%peer, "no passing instance; connection closed");
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                () = stop.wait() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend that answers every connection with its name.
    async fn backend(name: &'static str) -> (SocketAddr, Shutdown) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let stop = Shutdown::new();
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = tokio::select! {
                    r = l.accept() => r.expect("accept"),
                    () = s.wait() => return,
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 16];
                    let n = c.read(&mut buf).await.unwrap_or(0);
                    let _ = c.write_all(name.as_bytes()).await;
                    let _ = c.write_all(&buf[..n]).await;
                });
            }
        });
        (addr, stop)
    }

    /// An address nothing listens on.
    async fn dead() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    }

    async fn call(addr: SocketAddr) -> String {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"!").await.expect("write");
        let mut out = String::new();
        // Closed without an answer may be a reset (the "!" unread).
        if c.read_to_string(&mut out).await.is_err() {
            out.clear();
        }
        out
    }

    #[tokio::test]
    async fn balances_round_robin_skips_dead_instances_and_follows_changes() {
        let (a, _sa) = backend("a").await;
        let (b, _sb) = backend("b").await;
        let gone = dead().await;
        let pool = Arc::new(Pool::default());
        pool.set(vec![a, gone, b]);
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let front = l.local_addr().expect("addr");
        let stop = Shutdown::new();
        tokio::spawn(serve(l, pool.clone(), stop.clone()));
        let mut seen = std::collections::HashMap::new();
        for _ in 0..30 {
            let answer = call(front).await;
            assert!(
                answer == "a!" || answer == "b!",
                "spliced both ways: {answer:?}"
            );
            *seen.entry(answer).or_insert(0) += 1;
        }
        // Three turns per round, the dead one's going to the next: a gets
        // its own turn, b its own and the dead one's.
        assert_eq!(seen["a!"], 10, "{seen:?}");
        assert_eq!(seen["b!"], 20, "{seen:?}");
        // A new set is used at once.
        pool.set(vec![a]);
        for _ in 0..5 {
            assert_eq!(call(front).await, "a!");
        }
        // None passing: the connection is closed without an answer.
        pool.set(vec![]);
        assert_eq!(call(front).await, "");
        pool.set(vec![gone]);
        assert_eq!(call(front).await, "");
        stop.trigger();
    }
}
