//! The PROXY protocol (HAProxy's, versions 1 and 2): a TCP load balancer
//! in front (AWS NLB, HAProxy, Hetzner's and DigitalOcean's balancers)
//! sends one header before the client's bytes naming the client's
//! address. Only the parser lives here; `serve` reads the header when a
//! listener asks for it (`Options::proxy_protocol`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;

/// A complete header: how many bytes it took and the client's address
/// (`None` for v1 `UNKNOWN` and v2 `LOCAL`, e.g. the balancer's own health
/// checks, and for address families other than TCP/UDP over IPv4/IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: usize,
    pub source: Option<SocketAddr>,
}

/// Why the bytes are not a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PROXY protocol: {0}")]
pub struct Invalid(&'static str);

/// Parses the header at the start of `buf`: `Ok(None)` when more bytes are
/// needed to tell.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, Invalid> {
    if buf.is_empty() {
        return Ok(None);
    }
    let sig = V2_SIGNATURE.len().min(buf.len());
    if buf[..sig] == V2_SIGNATURE[..sig] {
        return parse_v2(buf);
    }
    let v1 = b"PROXY ".len().min(buf.len());
    if buf[..v1] == b"PROXY "[..v1] {
        return parse_v1(buf);
    }
    Err(Invalid("expected a PROXY header (v1 or v2) first"))
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, Invalid> {
    let Some(end) = buf.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(Invalid("v1 line longer than 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| Invalid("v1 line is not ASCII"))?;
    let mut parts = line.split(' ');
    let _proxy = parts.next();
    let len = end + 2;
    let source = match parts.next() {
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let mut field = || parts.next().ok_or(Invalid("v1 line has too few fields"));
            let (src, _dst, sport, _dport) = (field()?, field()?, field()?, field()?);
            let ip: IpAddr = src.parse().map_err(|_| Invalid("v1 source address"))?;
            if ip.is_ipv4() != (family == "TCP4") {
                return Err(Invalid("v1 source address of the wrong family"));
            }
            let port = port(sport).ok_or(Invalid("v1 source port"))?;
            if parts.next().is_some() {
                return Err(Invalid("v1 line has too many fields"));
            }
            Some(SocketAddr::new(ip, port))
        }
        _ => return Err(Invalid("v1 protocol: expected TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Some(Header { len, source }))
}

/// A decimal port as the spec writes it: 1 to 5 digits, no sign, no
/// leading zero (except "0").
fn port(s: &str) -> Option<u16> {
    let ok = !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    ok.then(|| s.parse().ok()).flatten()
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, Invalid> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let (ver_cmd, family) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Err(Invalid("v2 version"));
    }
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if buf.len() < len {
        return Ok(None);
    }
    let addrs = &buf[16..len];
    let source = match ver_cmd & 0x0f {
        // LOCAL: the balancer speaking for itself.
        0 => None,
        1 => match family >> 4 {
            // AF_INET: 4 + 4 + 2 + 2 bytes.
            1 => {
                let a = addrs
                    .get(..12)
                    .ok_or(Invalid("v2 IPv4 addresses truncated"))?;
                let ip = Ipv4Addr::from([a[0], a[1], a[2], a[3]]);
                Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
            }
            // AF_INET6: 16 + 16 + 2 + 2 bytes.
            2 => {
                let a = addrs
                    .get(..36)
                    .ok_or(Invalid("v2 IPv6 addresses truncated"))?;
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&a[..16]);
                let ip = Ipv6Addr::from(ip);
                Some(SocketAddr::new(
                    ip.into(),
                    u16::from_be_bytes([a[32], a[33]]),
                ))
            }
            // AF_UNSPEC, AF_UNIX: no address to use.
            0 | 3 => None,
            _ => return Err(Invalid("v2 address family")),
        },
        _ => return Err(Invalid("v2 command: expected LOCAL or PROXY")),
    };
    Ok(Some(Header { len, source }))
}

/// The fuzz target's property (`fuzz/fuzz_targets/proxy_header.rs`), also
/// replayed over the committed corpus by `cargo test`: any bytes parse
/// without panicking; a complete header lies within them, parses the same
/// alone (it delimits itself), and every shorter prefix of it asks for
/// more bytes rather than being refused or taken as complete.
pub fn fuzz_property(data: &[u8]) {
    let Ok(Some(h)) = parse(data) else {
        return;
    };
    assert!(h.len <= data.len());
    assert_eq!(parse(&data[..h.len]), Ok(Some(h)));
    for n in 0..h.len {
        assert_eq!(parse(&data[..n]), Ok(None), "prefix of {n} bytes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_replays() {
        crate::replay_fuzz_corpus("proxy_header", fuzz_property);
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().expect("addr"))
    }

    #[test]
    fn v1_lines() {
        let h = b"PROXY TCP4 203.0.113.9 10.0.0.1 56324 8000\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h),
            Ok(Some(Header {
                len: 44,
                source: addr("203.0.113.9:56324")
            }))
        );
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 443 8443\r\n";
        assert_eq!(
            parse(h).expect("ok").expect("complete").source,
            addr("[2001:db8::1]:443")
        );
        let h = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
        assert_eq!(parse(h).expect("ok").expect("complete").source, None);
        // Incomplete: more bytes needed.
        for n in 0..44 {
            assert_eq!(
                parse(&b"PROXY TCP4 203.0.113.9 10.0.0.1 56324 8000\r\n"[..n]),
                Ok(None),
                "{n}"
            );
        }
    }

    #[test]
    fn bad_v1_lines_are_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 203.0.113.9 10.0.0.1 56324\r\n",
            b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 203.0.113.9 10.0.0.1 65536 80\r\n",
            b"PROXY TCP4 203.0.113.9 10.0.0.1 080 80\r\n",
            b"PROXY TCP4 203.0.113.9 10.0.0.1 1 2 3\r\n",
            b"PROXY UDP4 203.0.113.9 10.0.0.1 1 2\r\n",
            &[b'P', b'R', b'O', b'X', b'Y', b' ', 0xff, b'\r', b'\n'],
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY ".as_slice(), &[b'A'; 120]].concat();
        assert!(parse(&long).is_err());
    }

    fn v2(cmd: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(family);
        h.extend_from_slice(&u16::try_from(addrs.len()).expect("len").to_be_bytes());
        h.extend_from_slice(addrs);
        h
    }

    #[test]
    fn v2_headers() {
        let mut a = vec![203, 0, 113, 9, 10, 0, 0, 1];
        a.extend_from_slice(&56324u16.to_be_bytes());
        a.extend_from_slice(&8000u16.to_be_bytes());
        a.extend_from_slice(&[0x03, 0x00, 0x01, 0xAA]); // a TLV after the addresses
        let h = v2(1, 0x11, &a);
        let mut with_data = h.clone();
        with_data.extend_from_slice(b"GET /");
        assert_eq!(
            parse(&with_data),
            Ok(Some(Header {
                len: h.len(),
                source: addr("203.0.113.9:56324")
            }))
        );
        for n in 0..h.len() {
            assert_eq!(parse(&h[..n]), Ok(None), "{n}");
        }
        let mut a6 = vec![0x20, 0x01, 0x0d, 0xb8];
        a6.resize(16, 0);
        a6[15] = 7;
        a6.resize(32, 0);
        a6.extend_from_slice(&443u16.to_be_bytes());
        a6.extend_from_slice(&8443u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &a6))
                .expect("ok")
                .expect("complete")
                .source,
            addr("[2001:db8::7]:443")
        );
        // LOCAL (health checks) and AF_UNSPEC carry no client.
        assert_eq!(
            parse(&v2(0, 0x00, &[]))
                .expect("ok")
                .expect("complete")
                .source,
            None
        );
        assert_eq!(
            parse(&v2(1, 0x00, &[]))
                .expect("ok")
                .expect("complete")
                .source,
            None
        );
    }

    #[test]
    fn bad_v2_headers_are_refused() {
        let mut wrong_version = v2(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        assert!(parse(&wrong_version).is_err());
        assert!(parse(&v2(2, 0x11, &[0; 12])).is_err(), "unknown command");
        assert!(parse(&v2(1, 0x11, &[0; 11])).is_err(), "truncated IPv4");
        assert!(parse(&v2(1, 0x21, &[0; 35])).is_err(), "truncated IPv6");
        assert!(parse(&v2(1, 0x41, &[0; 12])).is_err(), "unknown family");
    }
}
