//! Kong's `trusted_ips`: the peers (a load balancer, a CDN in front of the
//! gateway) whose `X-Forwarded-Proto` and `X-Forwarded-Host` are passed on
//! as they came instead of being replaced, and whose `X-Forwarded-Proto:
//! https` satisfies https-only routes. Everyone else's are replaced with
//! what the gateway saw.

use std::net::IpAddr;

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
