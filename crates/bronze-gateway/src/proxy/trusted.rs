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

use crate::plugins::ip_restriction::Cidr;

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

/// Addresses and CIDR blocks (ip-restriction's `Cidr`).
#[derive(Debug, Clone, Default)]
pub struct TrustedIps(Vec<Cidr>);

impl TrustedIps {
    /// A comma-separated list of addresses and CIDR blocks, e.g.
    /// `10.0.0.0/8, 192.168.1.7, fd00::/8` (Kong's `0.0.0.0/0,::/0`
    /// trusts everyone); empty: no one. Errors name the bad entry.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|entry| {
                Cidr::parse(entry).ok_or_else(|| {
                    format!("{entry:?}: expected an IP address or a CIDR block (10.0.0.0/8)")
                })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether `ip` is in one of the blocks (an IPv4 address seen as
    /// IPv4-mapped IPv6 counts as the IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
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
