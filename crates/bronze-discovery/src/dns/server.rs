//! DNS transports: UDP on one socket per worker thread (SO_REUSEPORT, so
//! the kernel spreads clients over cores) and TCP with length-prefixed
//! messages, idle timeouts and a connection limit. Queries outside the
//! domain go to the configured recursors when there are any.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bronze_runtime::Shutdown;
use bronze_telemetry::prometheus_client::metrics::counter::Counter;
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use super::answer::{Outcome, Resolver};
use super::wire::{self, HEADER_LEN, Rcode, Writer};
use crate::metrics::{DiscoveryMetrics, DnsLabels};

const TCP_IDLE: Duration = Duration::from_secs(10);
const MAX_TCP_CONNECTIONS: usize = 1024;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Datagrams read (and answered) per system call.
const BATCH: usize = 32;
/// Longest UDP query read; longer ones are cut and answered FORMERR.
const MAX_UDP_QUERY: usize = 4096;
const RCODES: [Rcode; 7] = [
    Rcode::NoError,
    Rcode::FormErr,
    Rcode::ServFail,
    Rcode::NxDomain,
    Rcode::NotImp,
    Rcode::Refused,
    Rcode::BadVers,
];

/// Bound DNS sockets, not yet serving.
pub struct DnsListeners {
    udp: Vec<UdpSocket>,
    tcp: std::net::TcpListener,
    pub addr: SocketAddr,
}

fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    // Room for bursts: a full receive queue drops queries.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

impl DnsListeners {
    /// Binds `workers` UDP sockets and one TCP listener to the same port.
    /// With port 0 the kernel picks one that is free for both.
    pub fn bind(addr: SocketAddr, workers: usize) -> io::Result<Self> {
        let workers = workers.max(1);
        let mut last_err = None;
        for _ in 0..20 {
            let first = udp_socket(addr)?;
            let bound = first.local_addr()?;
            let tcp = match tcp_listener(bound) {
                Ok(t) => t,
                // Only a port the kernel chose can be retried.
                Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => {
                    last_err = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut udp = vec![first];
            for _ in 1..workers {
                udp.push(udp_socket(bound)?);
            }
            return Ok(Self {
                udp,
                tcp,
                addr: bound,
            });
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no free port for DNS")))
    }

    /// Serves until `shutdown`, then stops taking queries, finishes the ones
    /// in flight and returns.
    pub async fn serve(
        self,
        resolver: Arc<Resolver>,
        recursors: Arc<Vec<SocketAddr>>,
        metrics: Arc<DiscoveryMetrics>,
        shutdown: Shutdown,
    ) -> io::Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let tracker = TaskTracker::new();
        let runtime = tokio::runtime::Handle::current();
        let mut threads = Vec::new();
        for (n, socket) in self.udp.into_iter().enumerate() {
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            let worker = UdpWorker {
                counters: counters(&metrics, "udp"),
                socket,
                resolver: resolver.clone(),
                recursors: recursors.clone(),
                metrics: metrics.clone(),
                stop: stop.clone(),
                runtime: runtime.clone(),
                tracker: tracker.clone(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("dns-udp-{n}"))
                    .spawn(move || worker.run())?,
            );
        }

        let tcp = TcpListener::from_std(self.tcp)?;
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
        let tcp_counters = Arc::new(counters(&metrics, "tcp"));
        loop {
            let (stream, peer) = tokio::select! {
                r = tcp.accept() => match r {
                    Ok(x) => x,
                    Err(error) => {
                        tracing::warn!(%error, "dns tcp accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.wait() => break,
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "dns tcp connection limit reached");
                continue;
            };
            let conn = TcpConn {
                resolver: resolver.clone(),
                recursors: recursors.clone(),
                metrics: metrics.clone(),
                counters: tcp_counters.clone(),
                shutdown: shutdown.clone(),
            };
            tracker.spawn(async move {
                let _permit = permit;
                if let Err(error) = conn.run(stream).await {
                    tracing::debug!(%peer, %error, "dns tcp connection closed");
                }
            });
        }
        drop(tcp);
        stop.store(true, Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        tracker.close();
        tracker.wait().await;
        Ok(())
    }
}

/// One counter per rcode, resolved once so the hot path does no lookups.
fn counters(metrics: &DiscoveryMetrics, transport: &'static str) -> [Counter; 7] {
    RCODES.map(|r| {
        metrics
            .dns_queries
            .get_or_create(&DnsLabels {
                transport,
                rcode: r.as_str(),
            })
            .clone()
    })
}

fn count(counters: &[Counter; 7], rcode: Rcode) {
    if let Some(i) = RCODES.iter().position(|r| *r == rcode) {
        counters[i].inc();
    }
}

struct UdpWorker {
    socket: UdpSocket,
    resolver: Arc<Resolver>,
    recursors: Arc<Vec<SocketAddr>>,
    metrics: Arc<DiscoveryMetrics>,
    counters: [Counter; 7],
    stop: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
    tracker: TaskTracker,
}

impl UdpWorker {
    /// Receives up to BATCH queries per system call (recvmmsg), answers
    /// them, and sends the answers in one call (sendmmsg), as Knot does.
    fn run(self) {
        let fd = self.socket.as_raw_fd();
        let mut bufs = vec![[0u8; MAX_UDP_QUERY]; BATCH];
        let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1232)).collect();
        let mut recv_headers: MultiHeaders<SockaddrStorage> =
            MultiHeaders::preallocate(BATCH, None);
        let mut send_headers: MultiHeaders<SockaddrStorage> =
            MultiHeaders::preallocate(BATCH, None);
        let mut received: Vec<(usize, Option<SockaddrStorage>)> = Vec::with_capacity(BATCH);
        let mut replies: Vec<(usize, SockaddrStorage)> = Vec::with_capacity(BATCH);
        while !self.stop.load(Ordering::Relaxed) {
            received.clear();
            {
                let mut slices: Vec<[IoSliceMut<'_>; 1]> = bufs
                    .iter_mut()
                    .map(|b| [IoSliceMut::new(&mut b[..])])
                    .collect();
                match recvmmsg(
                    fd,
                    &mut recv_headers,
                    slices.iter_mut(),
                    MsgFlags::MSG_WAITFORONE,
                    None,
                ) {
                    Ok(results) => received.extend(results.map(|m| (m.bytes, m.address))),
                    Err(Errno::EAGAIN | Errno::EINTR) => continue,
                    Err(error) => {
                        tracing::debug!(%error, "dns udp receive failed");
                        continue;
                    }
                }
            }
            replies.clear();
            for (i, (len, addr)) in received.iter().enumerate() {
                let Some(addr) = addr else { continue };
                let packet = &bufs[i][..(*len).min(MAX_UDP_QUERY)];
                match self.resolver.respond(packet, false, &mut outs[i]) {
                    Outcome::Answer(rcode) => {
                        count(&self.counters, rcode);
                        replies.push((i, *addr));
                    }
                    Outcome::Drop => {}
                    Outcome::Forward => {
                        if let Some(src) = socket_addr(addr) {
                            self.forward(packet.to_vec(), src);
                        }
                    }
                }
            }
            let mut sent = 0;
            while sent < replies.len() {
                let batch = &replies[sent..];
                let slices: Vec<[IoSlice<'_>; 1]> = batch
                    .iter()
                    .map(|(i, _)| [IoSlice::new(&outs[*i])])
                    .collect();
                let addrs: Vec<Option<SockaddrStorage>> =
                    batch.iter().map(|(_, a)| Some(*a)).collect();
                match sendmmsg(
                    fd,
                    &mut send_headers,
                    slices.iter(),
                    &addrs,
                    [],
                    MsgFlags::empty(),
                ) {
                    Ok(results) => sent += results.count().max(1),
                    Err(Errno::EINTR) => {}
                    Err(error) => {
                        tracing::debug!(%error, "dns udp send failed");
                        // Skip the datagram that failed; send the rest.
                        sent += 1;
                    }
                }
            }
        }
    }

    fn forward(&self, packet: Vec<u8>, src: SocketAddr) {
        let Ok(socket) = self.socket.try_clone() else {
            return;
        };
        let recursors = self.recursors.clone();
        let metrics = self.metrics.clone();
        let servfail = self.counters[2].clone();
        self.tracker.spawn_on(
            async move {
                metrics.dns_forwarded.inc();
                let answer = match forward(&packet, &recursors, false).await {
                    Some(answer) => answer,
                    None => {
                        servfail.inc();
                        servfail_for(&packet)
                    }
                };
                let _ = socket.send_to(&answer, src);
            },
            &self.runtime,
        );
    }
}

struct TcpConn {
    resolver: Arc<Resolver>,
    recursors: Arc<Vec<SocketAddr>>,
    metrics: Arc<DiscoveryMetrics>,
    counters: Arc<[Counter; 7]>,
    shutdown: Shutdown,
}

impl TcpConn {
    async fn run(self, mut stream: tokio::net::TcpStream) -> io::Result<()> {
        let mut msg = Vec::new();
        let mut out = Vec::with_capacity(4096);
        loop {
            let len = tokio::select! {
                r = tokio::time::timeout(TCP_IDLE, stream.read_u16()) => match r {
                    Ok(Ok(len)) => len as usize,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Ok(()), // idle
                },
                _ = self.shutdown.wait() => return Ok(()),
            };
            msg.resize(len, 0);
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut msg))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "slow query"))??;
            let answer: &[u8] = match self.resolver.respond(&msg, true, &mut out) {
                Outcome::Answer(rcode) => {
                    count(&self.counters, rcode);
                    &out
                }
                Outcome::Drop => continue,
                Outcome::Forward => {
                    self.metrics.dns_forwarded.inc();
                    out = match forward(&msg, &self.recursors, true).await {
                        Some(a) => a,
                        None => {
                            self.counters[2].inc();
                            servfail_for(&msg)
                        }
                    };
                    &out
                }
            };
            // Answers are written under a 64 KiB limit and forwarded ones
            // were read with a 16-bit length: this never fails.
            let Ok(len) = u16::try_from(answer.len()) else {
                return Ok(());
            };
            let mut frame = Vec::with_capacity(answer.len() + 2);
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(answer);
            stream.write_all(&frame).await?;
        }
    }
}

fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// SERVFAIL for a query that could not be forwarded.
fn servfail_for(packet: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(q) = wire::parse(packet) {
        let flags = 0x8000 | 0x0080 | if q.recursion_desired { 0x0100 } else { 0 };
        Writer::new(
            &mut out,
            q.id,
            flags,
            Some(&packet[HEADER_LEN..q.question_end]),
            usize::MAX,
            0,
        )
        .finish(Rcode::ServFail, None);
    }
    out
}

/// Sends `query` to each recursor in turn until one answers. Over UDP, a
/// truncated answer is retried over TCP with the same recursor.
async fn forward(query: &[u8], recursors: &[SocketAddr], tcp: bool) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    for recursor in recursors {
        let answer = if tcp {
            forward_tcp(query, *recursor).await
        } else {
            match forward_udp(query, *recursor).await {
                Some(a) if a.get(2).is_some_and(|f| f & 0x02 != 0) => {
                    forward_tcp(query, *recursor).await.or(Some(a))
                }
                other => other,
            }
        };
        match answer {
            Some(mut a) if a.len() >= HEADER_LEN && a.get(..2) == Some(id) => {
                // This server offers recursion (through the recursor).
                a[3] |= 0x80;
                return Some(a);
            }
            _ => tracing::debug!(%recursor, "recursor gave no usable answer"),
        }
    }
    None
}

async fn forward_udp(query: &[u8], recursor: SocketAddr) -> Option<Vec<u8>> {
    let local: SocketAddr = if recursor.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let socket = tokio::net::UdpSocket::bind(local).await.ok()?;
    socket.connect(recursor).await.ok()?;
    socket.send(query).await.ok()?;
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(FORWARD_TIMEOUT, socket.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

async fn forward_tcp(query: &[u8], recursor: SocketAddr) -> Option<Vec<u8>> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(recursor).await.ok()?;
        let len = u16::try_from(query.len()).ok()?;
        let mut frame = Vec::with_capacity(query.len() + 2);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(query);
        s.write_all(&frame).await.ok()?;
        let len = s.read_u16().await.ok()? as usize;
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await.ok()?;
        Some(buf)
    };
    tokio::time::timeout(FORWARD_TIMEOUT, exchange).await.ok()?
}
