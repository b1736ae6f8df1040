//! Kong's `trusted_ips`: the peers (a load balancer, a CDN in front of the
//! gateway) whose `X-Forwarded-Proto` and `X-Forwarded-Host` are passed on
//! as they came instead of being replaced, and whose `X-Forwarded-Proto:
//! https` satisfies https-only routes. Everyone else's are replaced with
//! what the gateway saw.
//!
//! And Kong's (nginx's) `real_ip_header`/`real_ip_recursive`: from a
//! trusted peer, the client's address is the one that header names, for
//! everything that looks at the client's address (ip-restriction,
//! rate-limiting by IP, hashing on the IP, logs, `X-Real-IP`).

use std::net::IpAddr;

use http::HeaderName;

/// Where a trusted peer says who the client is.
#[derive(Debug, Clone)]
pub struct RealIp {
    /// `X-Real-IP` (Kong's default), `X-Forwarded-For`, or another.
    pub header: HeaderName,
    /// The header is a list (as X-Forwarded-For): take its rightmost
    /// address not in `trusted_ips` instead of its last.
    pub recursive: bool,
}

impl Default for RealIp {
    fn default() -> Self {
        Self {
            header: HeaderName::from_static("x-real-ip"),
            recursive: false,
        }
    }
}

impl RealIp {
    /// The client's address from the header's values (in the order they
    /// came), as nginx's realip module reads them: the last address, or
    /// with `recursive` the rightmost one not trusted (the leftmost when
    /// all are). `None` when there is no such header or an address in it
    /// does not parse (then the peer's address stands).
    pub fn client<'a>(
        &self,
        trusted: &TrustedIps,
        values: impl Iterator<Item = &'a [u8]>,
    ) -> Option<IpAddr> {
        let mut addrs = Vec::new();
        for v in values {
            for a in std::str::from_utf8(v).ok()?.split(',') {
                let a = a.trim();
                if !a.is_empty() {
                    addrs.push(a.parse::<IpAddr>().ok()?);
                }
            }
        }
        if self.recursive {
            addrs
                .iter()
                .rev()
                .find(|a| !trusted.contains(**a))
                .or(addrs.first())
                .copied()
        } else {
            addrs.last().copied()
        }
    }
}

/// Whom the gateway believes about the client, and how it reads them.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    pub ips: TrustedIps,
    pub real_ip: RealIp,
}

/// Addresses and CIDR blocks.
#[derive(Debug, Clone, Default)]
pub struct TrustedIps(Vec<(IpAddr, u8)>);

impl TrustedIps {
    /// A comma-separated list of addresses and CIDR blocks, e.g.
    /// `10.0.0.0/8, 192.168.1.7, fd00::/8` (Kong's `0.0.0.0/0,::/0`
    /// trusts everyone); empty: no one. Errors name the bad entry.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = || format!("{entry:?}: expected an IP address or a CIDR block (10.0.0.0/8)");
            let (ip, len) = match entry.split_once('/') {
                Some((ip, len)) => (ip, Some(len)),
                None => (entry, None),
            };
            let ip: IpAddr = ip.parse().map_err(|_| bad())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = match len {
                None => max,
                Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(bad)?,
            };
            nets.push((ip, len));
        }
        Ok(Self(nets))
    }

    /// Whether `ip` is in one of the blocks (an IPv4 address seen as
    /// IPv4-mapped IPv6 counts as the IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|&(net, len)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn blocks_and_addresses_match_what_they_cover() {
        let t = TrustedIps::parse(" 10.0.0.0/8, 192.168.1.7 ,fd00::/8").expect("parses");
        assert!(t.contains(ip("10.200.3.4")));
        assert!(!t.contains(ip("11.0.0.1")));
        assert!(t.contains(ip("192.168.1.7")));
        assert!(!t.contains(ip("192.168.1.8")));
        assert!(t.contains(ip("fd12::1")));
        assert!(!t.contains(ip("fe80::1")));
        assert!(t.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        let all = TrustedIps::parse("0.0.0.0/0,::/0").expect("parses");
        assert!(all.contains(ip("8.8.8.8")) && all.contains(ip("2001:db8::1")));
        assert!(
            !TrustedIps::parse("")
                .expect("empty")
                .contains(ip("127.0.0.1"))
        );
    }

    #[test]
    fn the_client_is_the_last_address_or_the_last_untrusted_one() {
        let trusted = TrustedIps::parse("10.0.0.0/8").expect("parses");
        let plain = RealIp::default();
        let recursive = RealIp {
            header: HeaderName::from_static("x-forwarded-for"),
            recursive: true,
        };
        let list: [&[u8]; 2] = [b"203.0.113.9, 198.51.100.2", b"10.1.1.1"];
        assert_eq!(
            plain.client(&trusted, list.into_iter()),
            Some(ip("10.1.1.1"))
        );
        assert_eq!(
            recursive.client(&trusted, list.into_iter()),
            Some(ip("198.51.100.2"))
        );
        let all_trusted: [&[u8]; 1] = [b"10.0.0.1, 10.0.0.2"];
        assert_eq!(
            recursive.client(&trusted, all_trusted.into_iter()),
            Some(ip("10.0.0.1"))
        );
        let single: [&[u8]; 1] = [b" 2001:db8::7 "];
        assert_eq!(
            plain.client(&trusted, single.into_iter()),
            Some(ip("2001:db8::7"))
        );
        for bad in [&b"not-an-ip"[..], b"1.2.3.4:80", b"\xff"] {
            assert_eq!(plain.client(&trusted, [bad].into_iter()), None);
        }
        assert_eq!(plain.client(&trusted, std::iter::empty()), None);
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0",
            "example.com",
            "10.0.0.0/",
            "1.2.3.4/x",
        ] {
            let e = TrustedIps::parse(&format!("127.0.0.1,{bad}")).expect_err(bad);
            assert!(e.contains(bad), "{e}");
        }
    }
}
