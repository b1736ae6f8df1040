//! The headers that tell an upstream where a request came from
//! (`X-Forwarded-For`, `-Proto`, `-Host`, `X-Real-IP`) and which request it
//! is (`X-Request-Id`): decided and written once, here, for both proxy
//! paths. [`write`] says which headers and which values; it writes through
//! a [`Sink`], the one thing that differs between the paths: the HTTP/1.1
//! path writes its upstream head as bytes ([`Raw`], the client's values
//! borrowed from its parsed head), the general path edits hyper's
//! `HeaderMap` in place ([`Map`]). Both sinks are monomorphized into their
//! callers, and neither allocates beyond what the header itself needs (the
//! raw path none at all).
//!
//! The rules, as nginx's `proxy_add_x_forwarded_for` and Kong's:
//! - `X-Forwarded-For`: the client's (first) value, then the peer's
//!   address: always the peer, also when a trusted peer named the client;
//! - `X-Real-IP`: the client's address (a trusted peer's word on it, see
//!   `trusted`), never the client's own header;
//! - `X-Forwarded-Proto`, `-Host`: a trusted peer's are kept; otherwise the
//!   gateway's own: `https` over TLS, the Host the client sent (none when
//!   it sent none);
//! - `X-Request-Id`: the client's is kept, else a new one.

use http::HeaderValue;
use http::header::{HeaderMap, HeaderName};

use super::{Downstream, Proxy, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use super::{X_REAL_IP, X_REQUEST_ID};

const HTTPS: HeaderValue = HeaderValue::from_static("https");
const HTTP: HeaderValue = HeaderValue::from_static("http");

/// A header value in the form a path has it at hand.
#[derive(Clone, Copy)]
pub(crate) enum Value<'a> {
    Header(&'a HeaderValue),
    Bytes(&'a [u8]),
}

impl Value<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Value::Header(v) => v.as_bytes(),
            Value::Bytes(b) => b,
        }
    }
}

/// Where the forwarding headers go.
pub(crate) trait Sink {
    /// `X-Forwarded-For`: the client's first value, if it sent one, then
    /// `ip`.
    fn forwarded_for(&mut self, ip: &HeaderValue);
    /// Keeps the client's `name` as it came: whether it sent one.
    fn keep(&mut self, name: &HeaderName) -> bool;
    /// `name` is `value`, the client's replaced; `None`: the client's is
    /// dropped and there is none.
    fn set(&mut self, name: &HeaderName, value: Option<Value<'_>>);
}

/// Writes the forwarding headers of a request on `conn` to `sink`:
/// `real_ip` is the client's address, `host` the Host the client sent.
pub(crate) fn write(
    sink: &mut impl Sink,
    proxy: &Proxy,
    conn: &Downstream,
    real_ip: Value<'_>,
    host: Option<Value<'_>>,
) {
    sink.forwarded_for(&conn.ip);
    sink.set(&X_REAL_IP, Some(real_ip));
    if !(conn.trusted && sink.keep(&X_FORWARDED_PROTO)) {
        let own = if conn.tls { &HTTPS } else { &HTTP };
        sink.set(&X_FORWARDED_PROTO, Some(Value::Header(own)));
    }
    if !(conn.trusted && sink.keep(&X_FORWARDED_HOST)) {
        sink.set(&X_FORWARDED_HOST, host);
    }
    if !sink.keep(&X_REQUEST_ID) {
        let id = proxy.next_request_id();
        sink.set(&X_REQUEST_ID, Some(Value::Bytes(&id)));
    }
}

/// The HTTP/1.1 path's sink: appends `name: value\r\n` lines to `out`.
/// The head's copy loop leaves the client's forwarding headers out and
/// notes them here (the first of each) for `keep`.
pub(crate) struct Raw<'a, 'o> {
    pub out: &'o mut Vec<u8>,
    pub forwarded_for: Option<&'a [u8]>,
    pub forwarded_proto: Option<&'a [u8]>,
    pub forwarded_host: Option<&'a [u8]>,
    pub request_id: Option<&'a [u8]>,
}

impl<'a, 'o> Raw<'a, 'o> {
    pub fn new(out: &'o mut Vec<u8>) -> Self {
        Self {
            out,
            forwarded_for: None,
            forwarded_proto: None,
            forwarded_host: None,
            request_id: None,
        }
    }

    fn line(&mut self, name: &HeaderName, value: &[u8]) {
        super::h1::header(self.out, name.as_str().as_bytes(), value);
    }
}

impl Sink for Raw<'_, '_> {
    fn forwarded_for(&mut self, ip: &HeaderValue) {
        self.out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prior) = self.forwarded_for {
            self.out.extend_from_slice(prior);
            self.out.extend_from_slice(b", ");
        }
        self.out.extend_from_slice(ip.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn keep(&mut self, name: &HeaderName) -> bool {
        let sent = if name == X_FORWARDED_PROTO {
            self.forwarded_proto
        } else if name == X_FORWARDED_HOST {
            self.forwarded_host
        } else if name == X_REQUEST_ID {
            self.request_id
        } else {
            None
        };
        if let Some(v) = sent {
            self.line(name, v);
        }
        sent.is_some()
    }

    fn set(&mut self, name: &HeaderName, value: Option<Value<'_>>) {
        if let Some(v) = value {
            self.line(name, v.bytes());
        }
    }
}

/// The general path's sink: hyper's `HeaderMap` of the request, edited in
/// place (the client's headers are in it already).
pub(crate) struct Map<'m>(pub &'m mut HeaderMap);

impl Sink for Map<'_> {
    fn forwarded_for(&mut self, ip: &HeaderValue) {
        let joined = match self.0.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
            Some(prior) => {
                let mut v = Vec::with_capacity(prior.len() + 2 + ip.len());
                v.extend_from_slice(prior);
                v.extend_from_slice(b", ");
                v.extend_from_slice(ip.as_bytes());
                HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).ok()
            }
            None => Some(ip.clone()),
        };
        if let Some(v) = joined {
            self.0.insert(X_FORWARDED_FOR, v);
        }
    }

    fn keep(&mut self, name: &HeaderName) -> bool {
        self.0.contains_key(name)
    }

    fn set(&mut self, name: &HeaderName, value: Option<Value<'_>>) {
        let value = match value {
            Some(Value::Header(v)) => Some(v.clone()),
            Some(Value::Bytes(b)) => HeaderValue::from_bytes(b).ok(),
            None => None,
        };
        match value {
            Some(v) => {
                self.0.insert(name.clone(), v);
            }
            None => {
                self.0.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both sinks, given the same client headers, write the same headers
    /// with the same values.
    #[test]
    fn both_paths_forward_the_same_headers() {
        let proxy = crate::fuzzing::proxy_for_tests();
        let client: &[(&str, &str)] = &[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "front.example"),
            ("x-real-ip", "10.9.9.9"),
        ];
        for trusted in [false, true] {
            for with_id in [false, true] {
                let conn = Downstream::new("192.0.2.7:4000".parse().unwrap(), false, None, trusted);
                let mut map = HeaderMap::new();
                for (n, v) in client {
                    map.insert(HeaderName::from_static(n), HeaderValue::from_static(v));
                }
                if with_id {
                    map.insert(X_REQUEST_ID, HeaderValue::from_static("id-1"));
                }
                let mut out = Vec::new();
                let mut raw = Raw::new(&mut out);
                raw.forwarded_for = Some(b"10.0.0.1");
                raw.forwarded_proto = Some(b"https");
                raw.forwarded_host = Some(b"front.example");
                raw.request_id = with_id.then_some(&b"id-1"[..]);
                let host = HeaderValue::from_static("gw.example");
                let real = HeaderValue::from_static("192.0.2.7");
                write(
                    &mut raw,
                    &proxy,
                    &conn,
                    Value::Header(&real),
                    Some(Value::Header(&host)),
                );
                write(
                    &mut Map(&mut map),
                    &proxy,
                    &conn,
                    Value::Header(&real),
                    Some(Value::Header(&host)),
                );
                let text = String::from_utf8(out).unwrap();
                let mut from_raw: Vec<(String, String)> = text
                    .lines()
                    .filter_map(|l| l.split_once(": "))
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect();
                let mut from_map: Vec<(String, String)> = map
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
                    .collect();
                // Request ids are counted: the two writes made two.
                for list in [&mut from_raw, &mut from_map] {
                    for (n, v) in list.iter_mut() {
                        if n == "x-request-id" && v != "id-1" {
                            *v = "new".into();
                        }
                    }
                    list.sort();
                }
                assert_eq!(from_raw, from_map, "trusted {trusted}, id {with_id}");
                let get = |n: &str| {
                    from_map
                        .iter()
                        .find(|(k, _)| k == n)
                        .map(|(_, v)| v.as_str())
                };
                assert_eq!(get("x-forwarded-for"), Some("10.0.0.1, 192.0.2.7"));
                assert_eq!(get("x-real-ip"), Some("192.0.2.7"));
                let (proto, host) = if trusted {
                    ("https", "front.example")
                } else {
                    ("http", "gw.example")
                };
                assert_eq!(get("x-forwarded-proto"), Some(proto));
                assert_eq!(get("x-forwarded-host"), Some(host));
                assert_eq!(
                    get("x-request-id"),
                    Some(if with_id { "id-1" } else { "new" })
                );
            }
        }
    }

    /// No Host: no X-Forwarded-Host, and an untrusted client's is dropped
    /// on both paths.
    #[test]
    fn without_a_host_an_untrusted_forwarded_host_is_dropped() {
        let proxy = crate::fuzzing::proxy_for_tests();
        let conn = Downstream::new("192.0.2.7:4000".parse().unwrap(), true, None, false);
        let mut map = HeaderMap::new();
        map.insert(X_FORWARDED_HOST, HeaderValue::from_static("evil.example"));
        write(
            &mut Map(&mut map),
            &proxy,
            &conn,
            Value::Header(&conn.ip),
            None,
        );
        assert!(map.get(X_FORWARDED_HOST).is_none(), "{map:?}");
        assert_eq!(map[X_FORWARDED_PROTO], "https");
        let mut out = Vec::new();
        let mut raw = Raw::new(&mut out);
        raw.forwarded_host = Some(b"evil.example");
        write(&mut raw, &proxy, &conn, Value::Header(&conn.ip), None);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("x-forwarded-host"), "{text}");
    }
}
