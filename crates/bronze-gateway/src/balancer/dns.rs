//! Targets from DNS SRV (RFC 2782), as Kong resolves a target or service
//! host that is a name: the records' priorities become priority groups
//! (the lowest first; the next only when none of the first is usable),
//! their weights the weights within a group (0 counts as 1), their ports
//! the ports. A name without SRV records is kept as `name:port` for the
//! connector to resolve (A/AAAA). One background task per upstream
//! refreshes when the answer's TTL runs out (at least every second, at most
//! every hour; 30 s after "no records", 1 s after an error, keeping the
//! last answer) and swaps the upstream's target list, not the table.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Weak;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use super::{Resolved, Source, Upstream};

#[derive(Clone)]
pub struct Resolver(TokioResolver);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl Resolver {
    /// A resolver asking `server` (UDP, then TCP), or the system's
    /// (`/etc/resolv.conf`); `None` when neither can be set up.
    pub fn new(server: Option<SocketAddr>) -> Option<Self> {
        let builder = match server {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], vec![ns]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => match TokioResolver::builder_tokio() {
                Ok(b) => b,
                Err(error) => {
                    tracing::warn!(%error, "no system DNS configuration; SRV targets are off");
                    return None;
                }
            },
        };
        let mut builder = builder;
        let opts = builder.options_mut();
        // The gateway refreshes on TTL itself.
        opts.cache_size = 0;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        match builder.build() {
            Ok(r) => Some(Self(r)),
            Err(error) => {
                tracing::warn!(%error, "DNS resolver unavailable; SRV targets are off");
                None
            }
        }
    }

    /// SRV records of `name` as (priority, weight, `addr:port`), and how
    /// long they hold; `Ok(None)` when the name has none.
    pub async fn srv(
        &self,
        name: &str,
    ) -> Result<Option<(Vec<(u16, u16, String)>, Duration)>, String> {
        let fqdn = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        let lookup = match self.0.srv_lookup(fqdn.as_str()).await {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let mut glue: HashMap<String, IpAddr> = HashMap::new();
        for r in lookup.additionals() {
            let ip = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            glue.entry(r.name.to_ascii().to_ascii_lowercase())
                .or_insert(ip);
        }
        let mut ttl = u32::MAX;
        let mut out = Vec::new();
        for r in lookup.answers() {
            let RData::SRV(srv) = &r.data else { continue };
            ttl = ttl.min(r.ttl);
            let target = srv.target.to_ascii().to_ascii_lowercase();
            let ip = match glue.get(&target) {
                Some(ip) => Some(*ip),
                None => self
                    .0
                    .lookup_ip(target.as_str())
                    .await
                    .ok()
                    .and_then(|l| l.iter().next()),
            };
            let addr = match ip {
                Some(ip) => SocketAddr::new(ip, srv.port).to_string(),
                None => format!("{}:{}", target.trim_end_matches('.'), srv.port),
            };
            out.push((srv.priority, srv.weight, addr));
        }
        if out.is_empty() {
            return Ok(None);
        }
        Ok(Some((out, Duration::from_secs(u64::from(ttl)))))
    }
}

/// SRV records as targets: priorities become ranks 0, 1, ...
pub fn ranked(records: &[(u16, u16, String)]) -> Vec<Resolved> {
    let priorities: BTreeSet<u16> = records.iter().map(|r| r.0).collect();
    let mut out: Vec<Resolved> = records
        .iter()
        .map(|(p, w, addr)| Resolved {
            addr: addr.clone(),
            weight: u32::from(*w).max(1),
            rank: priorities.iter().position(|x| x == p).unwrap_or(0) as u32,
        })
        .collect();
    out.sort_by(|a, b| (a.rank, &a.addr).cmp(&(b.rank, &b.addr)));
    out
}

pub fn cache_key(host: &str, port: u16) -> String {
    format!("dns:{host}:{port}")
}

/// Refreshes the DNS names of `upstream` until it is dropped.
pub async fn run(upstream: Weak<Upstream>) {
    loop {
        let Some(u) = upstream.upgrade() else { return };
        let Some(resolver) = u.registry.resolver().cloned() else {
            return;
        };
        let registry = u.registry.clone();
        let names: Vec<(String, u16)> = u
            .specs
            .iter()
            .filter(|s| s.source == Source::Dns)
            .map(|s| (s.host.clone(), s.port))
            .collect();
        let name = u.name.clone();
        drop(u);
        let mut wait = Duration::from_secs(3600);
        let mut changed = false;
        for (host, port) in names {
            let key = cache_key(&host, port);
            // Still valid (an earlier configuration's task asked): wait.
            let now = Instant::now();
            if let Some((_, until)) = registry.resolved.lock().get(&key)
                && *until > now
            {
                wait = wait.min(*until - now);
                continue;
            }
            let (targets, ttl) = match resolver.srv(&host).await {
                Ok(Some((records, ttl))) => (ranked(&records), ttl.max(Duration::from_secs(1))),
                // Cached as empty: the name is used as it is.
                Ok(None) => (Vec::new(), Duration::from_secs(30)),
                Err(error) => {
                    tracing::debug!(upstream = %name, %host, %error, "SRV lookup failed; keeping the last answer");
                    wait = wait.min(Duration::from_secs(1));
                    continue;
                }
            };
            wait = wait.min(ttl);
            registry
                .resolved
                .lock()
                .insert(key, (targets, Instant::now() + ttl));
            changed = true;
        }
        if changed {
            let Some(u) = upstream.upgrade() else { return };
            u.recompute();
        }
        tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_become_ranks_and_zero_weight_counts_as_one() {
        let r = ranked(&[
            (20, 0, "10.0.0.3:3".into()),
            (10, 60, "10.0.0.1:1".into()),
            (10, 20, "10.0.0.2:2".into()),
        ]);
        assert_eq!(
            r,
            vec![
                Resolved {
                    addr: "10.0.0.1:1".into(),
                    weight: 60,
                    rank: 0
                },
                Resolved {
                    addr: "10.0.0.2:2".into(),
                    weight: 20,
                    rank: 0
                },
                Resolved {
                    addr: "10.0.0.3:3".into(),
                    weight: 1,
                    rank: 1
                },
            ]
        );
    }
}
