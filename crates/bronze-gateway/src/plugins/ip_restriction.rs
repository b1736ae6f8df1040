//! ip-restriction: `allow` and `deny` lists of addresses and CIDR blocks
//! (IPv4 and IPv6) checked against the client's address. Deny wins; with
//! an allow list, anything not on it is refused (Kong's rules).

use std::net::IpAddr;

use http::StatusCode;
use serde::Deserialize;

use super::{Answer, Ctx, Plugin, exit, parse_config};
use crate::declarative::Invalid;

/// An address block: the network as a 128-bit number (IPv4 mapped into
/// IPv6) and the prefix length over those 128 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: u128,
    mask: u128,
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(v6),
        },
    }
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32`, or one address.
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let ip: IpAddr = addr.trim().parse().ok()?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return None;
        }
        let prefix = u32::from(len) + if ip.is_ipv4() { 96 } else { 0 };
        let mask = if prefix == 0 {
            0
        } else {
            u128::MAX << (128 - prefix)
        };
        let net = bits(ip) & mask;
        Some(Self { net, mask })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        bits(ip) & self.mask == self.net
    }
}

/// Kong's configuration of ip-restriction with nothing set, as Kong shows it
/// (3.9's `kong/plugins/ip-restriction/schema.lua`): every field, with its
/// default or null. Bronze reads an unset field as that default.
pub(crate) fn kong_defaults() -> serde_json::Value {
    serde_json::json!({
        "allow": null,
        "deny": null,
        "status": null,
        "message": null,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    allow: Option<Vec<String>>,
    #[serde(default)]
    deny: Option<Vec<String>>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    message: Option<String>,
}

pub struct IpRestriction {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    status: StatusCode,
    message: String,
}

impl IpRestriction {
    pub fn new(config: Option<&serde_json::Value>, field: &str) -> Result<Self, Invalid> {
        let c: Config = parse_config(config, field)?;
        let list = |v: Option<Vec<String>>, name: &str| -> Result<Vec<Cidr>, Invalid> {
            v.unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    Cidr::parse(s).ok_or_else(|| {
                        Invalid::new(
                            format!("{field}.{name}[{i}]"),
                            format!("{s:?}: invalid ip or cidr range"),
                        )
                    })
                })
                .collect()
        };
        let allow = list(c.allow, "allow")?;
        let deny = list(c.deny, "deny")?;
        if allow.is_empty() && deny.is_empty() {
            return Err(Invalid::new(
                format!("{field}.allow"),
                "at least one of these fields must be non-empty: 'config.allow', 'config.deny'",
            ));
        }
        let status = StatusCode::from_u16(c.status.unwrap_or(403))
            .ok()
            .filter(|s| s.as_u16() >= 400)
            .ok_or_else(|| {
                Invalid::new(format!("{field}.status"), "expected an HTTP error status")
            })?;
        Ok(Self {
            allow,
            deny,
            status,
            message: c.message.unwrap_or_else(|| "IP address not allowed".into()),
        })
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.deny.iter().any(|c| c.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip))
    }
}

impl Plugin for IpRestriction {
    fn name(&self) -> &'static str {
        "ip-restriction"
    }

    fn priority(&self) -> i32 {
        990
    }

    fn access(&self, _req: &mut http::request::Parts, ctx: &mut Ctx) -> Result<(), Answer> {
        if self.allows(ctx.peer.ip()) {
            Ok(())
        } else {
            Err(exit(self.status, &self.message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_blocks() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.255.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        // The same IPv4 address seen as IPv4-mapped IPv6.
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        let one = Cidr::parse("192.168.1.7").unwrap();
        assert!(one.contains(ip("192.168.1.7")));
        assert!(!one.contains(ip("192.168.1.8")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        assert!(!all.contains(ip("2001:db8::1")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("10.0.0/8").is_none());
        assert!(Cidr::parse("2001:db8::/129").is_none());
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let r = IpRestriction::new(
            Some(&serde_json::json!({"allow": ["10.0.0.0/8"], "deny": ["10.0.0.5"]})),
            "config",
        )
        .unwrap();
        assert!(r.allows(ip("10.9.9.9")));
        assert!(!r.allows(ip("10.0.0.5")));
        assert!(!r.allows(ip("11.0.0.1")));
        let e = IpRestriction::new(Some(&serde_json::json!({"deny": ["x"]})), "p.config")
            .err()
            .unwrap();
        assert_eq!(e.field, "p.config.deny[0]");
    }
}
