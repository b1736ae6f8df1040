//! The catalog's domain types, validated once on the way in.
//!
//! Both edges (gRPC in `grpc.rs`, Consul JSON in `http/`) convert what they
//! receive into a [`Registration`] through [`RawInstance`] and
//! [`RawCheck`], so the grammar and the error messages are the same whatever
//! the protocol. Nothing past this module re-validates.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Health of a check or an instance. Ordered from best to worst, so the
/// health of an instance is the maximum of its checks'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Passing,
    Warning,
    Critical,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "passing" => Ok(Health::Passing),
            "warning" => Ok(Health::Warning),
            "critical" => Ok(Health::Critical),
            _ => Err(Error::invalid(
                field,
                format!("{s:?} is not a health status; expected passing, warning or critical"),
            )),
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// DNS SRV weights while passing and while warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    pub passing: u32,
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            passing: 1,
            warning: 1,
        }
    }
}

/// What a check probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Http {
        url: String,
        method: String,
        headers: Vec<(String, String)>,
        tls_skip_verify: bool,
    },
    Tcp {
        address: String,
    },
    Ttl {
        #[serde(with = "duration_ms")]
        ttl: Duration,
        /// Refreshed by the service itself, not by its owner's heartbeat.
        #[serde(default)]
        external: bool,
    },
}

impl CheckKind {
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::Http { .. } => "http",
            CheckKind::Tcp { .. } => "tcp",
            CheckKind::Ttl { .. } => "ttl",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    pub id: String,
    pub name: String,
    pub kind: CheckKind,
    #[serde(with = "duration_ms")]
    pub interval: Duration,
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    pub initial_status: Health,
    #[serde(with = "opt_duration_ms")]
    pub deregister_critical_after: Option<Duration>,
    pub notes: String,
}

/// A validated instance registration. `service` is lower-cased: DNS is
/// case-insensitive, so the catalog treats service names the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub id: String,
    pub service: String,
    pub node: String,
    pub node_address: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub weights: Weights,
    pub checks: Vec<CheckSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub instance: InstanceSpec,
    /// Who heartbeats this instance; `None` for durable registrations.
    pub owner: Option<String>,
}

impl Registration {
    /// Registrations without an owner and without TTL checks are persisted
    /// and survive a restart; heartbeated ones are soft state.
    pub fn is_durable(&self) -> bool {
        self.owner.is_none()
            && !self
                .instance
                .checks
                .iter()
                .any(|c| matches!(c.kind, CheckKind::Ttl { .. }))
    }
}

/// Identity of an instance in the catalog: unique per node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceKey {
    pub node: Arc<str>,
    pub id: Arc<str>,
}

impl InstanceKey {
    pub fn new(node: &str, id: &str) -> Self {
        Self {
            node: node.into(),
            id: id.into(),
        }
    }

    /// The key under which a durable registration is persisted.
    pub fn storage_key(&self) -> String {
        format!("{}/{}", self.node, self.id)
    }
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.id)
    }
}

// ---------------------------------------------------------------------------
// Raw input, as either edge received it, and its validation.
// ---------------------------------------------------------------------------

/// An instance as received, before validation. Field names in errors are the
/// ones given in `names` so each protocol reports its own spelling.
#[derive(Debug, Default, Clone)]
pub struct RawInstance {
    pub id: Option<String>,
    pub service: String,
    pub node: Option<String>,
    pub node_address: Option<String>,
    pub address: Option<String>,
    /// Wide enough to hold anything a client may send, so range errors are ours.
    pub port: i64,
    pub tags: Vec<String>,
    pub meta: Vec<(String, String)>,
    pub weights: Option<(i64, i64)>,
    pub checks: Vec<RawCheck>,
}

#[derive(Debug, Default, Clone)]
pub struct RawCheck {
    pub id: Option<String>,
    pub name: Option<String>,
    pub http: Option<String>,
    pub method: Option<String>,
    pub headers: Vec<(String, String)>,
    pub tls_skip_verify: bool,
    pub tcp: Option<String>,
    pub ttl: Option<Duration>,
    /// A TTL check the service refreshes itself (not its owner's heartbeat).
    pub ttl_external: bool,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub status: Option<Health>,
    pub deregister_critical_after: Option<Duration>,
    pub notes: Option<String>,
    /// A check kind Bronze does not run (script, docker, grpc, ...), by name.
    pub unsupported: Option<String>,
}

/// How one protocol spells the fields it may report in errors.
pub struct FieldNames {
    pub id: &'static str,
    pub service: &'static str,
    pub node: &'static str,
    pub node_address: &'static str,
    pub address: &'static str,
    pub port: &'static str,
    pub tags: &'static str,
    pub meta: &'static str,
    pub weights: &'static str,
    pub checks: &'static str,
    pub check_id: &'static str,
    pub check_http: &'static str,
    pub check_method: &'static str,
    pub check_header: &'static str,
    pub check_tcp: &'static str,
    pub check_ttl: &'static str,
    pub check_interval: &'static str,
    pub check_timeout: &'static str,
    pub check_deregister: &'static str,
}

pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_TAGS: usize = 64;
const MAX_TAG_LEN: usize = 255;
const MAX_META: usize = 128;
const MAX_META_KEY: usize = 128;
const MAX_META_VALUE: usize = 4096;
const MAX_CHECKS: usize = 16;
const MAX_ID_LEN: usize = 256;

/// A DNS label: 1-63 characters of letters, digits, '-' and '_', starting
/// and ending with a letter or digit.
pub fn validate_label(field: &str, what: &str, s: &str) -> Result<(), Error> {
    let bytes = s.as_bytes();
    let ok_char = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    if s.is_empty() || bytes.len() > 63 {
        return Err(Error::invalid(
            field,
            format!("{what} must be 1-63 characters, got {}", bytes.len()),
        ));
    }
    if let Some(bad) = s.chars().find(|c| !c.is_ascii() || !ok_char(&(*c as u8))) {
        return Err(Error::invalid(
            field,
            format!(
                "{what} {s:?} has {bad:?}; expected letters, digits, '-' and '_' (a DNS label)"
            ),
        ));
    }
    if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return Err(Error::invalid(
            field,
            format!("{what} {s:?} must start and end with a letter or digit"),
        ));
    }
    Ok(())
}

/// Node names: DNS labels, optionally dotted (host names); only undotted
/// ones are reachable as `<node>.node.<domain>`.
fn validate_node(field: &str, s: &str) -> Result<(), Error> {
    if s.len() > 253 {
        return Err(Error::invalid(
            field,
            "node name is longer than 253 characters",
        ));
    }
    for label in s.split('.') {
        validate_label(field, "node name label", label)?;
    }
    Ok(())
}

fn validate_id(field: &str, s: &str) -> Result<(), Error> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(Error::invalid(
            field,
            format!("ID must be 1-{MAX_ID_LEN} characters, got {}", s.len()),
        ));
    }
    if let Some(bad) = s.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::invalid(
            field,
            format!("ID {s:?} contains {bad:?}; expected no spaces or control characters"),
        ));
    }
    Ok(())
}

/// An IPv4/IPv6 literal or a host name.
fn validate_address(field: &str, s: &str) -> Result<(), Error> {
    if s.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let host = s.strip_suffix('.').unwrap_or(s);
    if host.is_empty() || host.len() > 253 {
        return Err(Error::invalid(
            field,
            format!("{s:?} is not an IP address or host name"),
        ));
    }
    for label in host.split('.') {
        validate_label(field, "address label", label).map_err(|_| {
            Error::invalid(field, format!("{s:?} is not an IP address or host name"))
        })?;
    }
    Ok(())
}

fn validate_duration(field: &str, d: Duration, min: Duration) -> Result<Duration, Error> {
    if d < min || d > MAX_DURATION {
        return Err(Error::invalid(
            field,
            format!(
                "{} is out of range; expected between {} and {}",
                bronze_runtime::duration::format(d),
                bronze_runtime::duration::format(min),
                bronze_runtime::duration::format(MAX_DURATION)
            ),
        ));
    }
    Ok(d)
}

impl RawInstance {
    /// Validates every field; on the first error nothing has been changed
    /// anywhere (validation has no side effects).
    pub fn validate(
        self,
        names: &FieldNames,
        default_node: &str,
        default_node_address: &str,
    ) -> Result<InstanceSpec, Error> {
        let service = self.service.trim().to_ascii_lowercase();
        if service.is_empty() {
            return Err(Error::invalid(names.service, "missing service name"));
        }
        validate_label(names.service, "service name", &service)?;

        let id = self
            .id
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| service.clone());
        validate_id(names.id, &id)?;

        let (node, node_address) = match self.node.filter(|s| !s.is_empty()) {
            Some(node) => {
                // Node names are looked up in DNS: case-insensitive.
                let node = node.to_ascii_lowercase();
                validate_node(names.node, &node)?;
                let addr = self.node_address.unwrap_or_default();
                if node == default_node && addr.is_empty() {
                    (node, default_node_address.to_string())
                } else {
                    if !addr.is_empty() {
                        validate_address(names.node_address, &addr)?;
                    }
                    (node, addr)
                }
            }
            None => (default_node.to_string(), default_node_address.to_string()),
        };

        let address = self.address.unwrap_or_default().trim().to_string();
        if !address.is_empty() {
            validate_address(names.address, &address)?;
        } else if node_address.is_empty() {
            return Err(Error::invalid(
                names.address,
                "missing address: neither the instance nor its node has one",
            ));
        }

        let port = u16::try_from(self.port).map_err(|_| {
            Error::invalid(
                names.port,
                format!("{} is not a port; expected 0-65535", self.port),
            )
        })?;

        if self.tags.len() > MAX_TAGS {
            return Err(Error::invalid(
                names.tags,
                format!("{} tags; at most {MAX_TAGS} allowed", self.tags.len()),
            ));
        }
        let mut tags: Vec<String> = Vec::with_capacity(self.tags.len());
        for tag in self.tags {
            if tag.is_empty() || tag.len() > MAX_TAG_LEN || tag.chars().any(|c| c.is_control()) {
                return Err(Error::invalid(
                    names.tags,
                    format!(
                        "tag {tag:?} must be 1-{MAX_TAG_LEN} characters without control characters"
                    ),
                ));
            }
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }

        if self.meta.len() > MAX_META {
            return Err(Error::invalid(
                names.meta,
                format!("{} entries; at most {MAX_META} allowed", self.meta.len()),
            ));
        }
        let mut meta = BTreeMap::new();
        for (k, v) in self.meta {
            let key_ok = !k.is_empty()
                && k.len() <= MAX_META_KEY
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
            if !key_ok {
                return Err(Error::invalid(
                    names.meta,
                    format!(
                        "key {k:?}: expected 1-{MAX_META_KEY} characters of letters, digits, '-', '_', '.', '/'"
                    ),
                ));
            }
            if v.len() > MAX_META_VALUE {
                return Err(Error::invalid(
                    names.meta,
                    format!(
                        "value of {k:?} is {} bytes; at most {MAX_META_VALUE}",
                        v.len()
                    ),
                ));
            }
            meta.insert(k, v);
        }

        let weights = match self.weights {
            None => Weights::default(),
            Some((passing, warning)) => {
                let check = |v: i64| {
                    u32::try_from(v)
                        .ok()
                        .filter(|v| *v <= 65535)
                        .ok_or_else(|| {
                            Error::invalid(
                                names.weights,
                                format!("{v} is not a weight; expected 0-65535"),
                            )
                        })
                };
                let w = Weights {
                    passing: check(passing)?,
                    warning: check(warning)?,
                };
                if w.passing == 0 {
                    return Err(Error::invalid(
                        names.weights,
                        "passing weight must be at least 1",
                    ));
                }
                w
            }
        };

        if self.checks.len() > MAX_CHECKS {
            return Err(Error::invalid(
                names.checks,
                format!("{} checks; at most {MAX_CHECKS} allowed", self.checks.len()),
            ));
        }
        let many = self.checks.len() > 1;
        let mut checks: Vec<CheckSpec> = Vec::with_capacity(self.checks.len());
        for (i, raw) in self.checks.into_iter().enumerate() {
            let default_id = if many {
                format!("service:{id}:{}", i + 1)
            } else {
                format!("service:{id}")
            };
            let check = raw.validate(names, default_id, &service)?;
            if checks.iter().any(|c| c.id == check.id) {
                return Err(Error::invalid(
                    names.check_id,
                    format!("check ID {:?} is used twice", check.id),
                ));
            }
            checks.push(check);
        }

        Ok(InstanceSpec {
            id,
            service,
            node,
            node_address,
            address,
            port,
            tags,
            meta,
            weights,
            checks,
        })
    }
}

impl RawCheck {
    fn validate(
        self,
        names: &FieldNames,
        default_id: String,
        service: &str,
    ) -> Result<CheckSpec, Error> {
        if let Some(kind) = self.unsupported {
            return Err(Error::invalid(
                names.checks,
                format!("{kind} checks are not supported; expected an HTTP, TCP or TTL check"),
            ));
        }
        let id = self.id.filter(|s| !s.is_empty()).unwrap_or(default_id);
        validate_id(names.check_id, &id)?;
        let given = [self.http.is_some(), self.tcp.is_some(), self.ttl.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if given != 1 {
            return Err(Error::invalid(
                names.checks,
                format!(
                    "check {id:?} must set exactly one of {}, {} or {}",
                    names.check_http, names.check_tcp, names.check_ttl
                ),
            ));
        }
        let interval = self
            .interval
            .map(|d| validate_duration(names.check_interval, d, MIN_CHECK_INTERVAL))
            .transpose()?;
        let timeout = self
            .timeout
            .map(|d| validate_duration(names.check_timeout, d, Duration::from_millis(1)))
            .transpose()?;
        let deregister_critical_after = self
            .deregister_critical_after
            .map(|d| validate_duration(names.check_deregister, d, Duration::from_millis(1)))
            .transpose()?;

        let kind = if let Some(url) = self.http {
            let uri: http::Uri = url.parse().map_err(|e| {
                Error::invalid(names.check_http, format!("{url:?} is not a URL: {e}"))
            })?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
                return Err(Error::invalid(
                    names.check_http,
                    format!("{url:?}: expected an http:// or https:// URL with a host"),
                ));
            }
            let method = self
                .method
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "GET".into());
            http::Method::from_bytes(method.as_bytes()).map_err(|_| {
                Error::invalid(
                    names.check_method,
                    format!("{method:?} is not an HTTP method"),
                )
            })?;
            for (k, v) in &self.headers {
                http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                    Error::invalid(names.check_header, format!("{k:?} is not a header name"))
                })?;
                http::HeaderValue::from_str(v).map_err(|_| {
                    Error::invalid(
                        names.check_header,
                        format!("value of {k:?} is not a valid header value"),
                    )
                })?;
            }
            CheckKind::Http {
                url,
                method,
                headers: self.headers,
                tls_skip_verify: self.tls_skip_verify,
            }
        } else if let Some(address) = self.tcp {
            let port_ok = address
                .rsplit_once(':')
                .and_then(|(host, port)| (!host.is_empty()).then_some(port))
                .and_then(|p| p.parse::<u16>().ok())
                .is_some_and(|p| p != 0);
            if !port_ok {
                return Err(Error::invalid(
                    names.check_tcp,
                    format!("{address:?}: expected host:port with a port of 1-65535"),
                ));
            }
            CheckKind::Tcp { address }
        } else {
            let ttl = self.ttl.unwrap_or_default();
            CheckKind::Ttl {
                ttl: validate_duration(names.check_ttl, ttl, Duration::from_millis(10))?,
                external: self.ttl_external,
            }
        };

        let interval = match (&kind, interval) {
            (CheckKind::Ttl { .. }, i) => i.unwrap_or_default(),
            (_, Some(i)) => i,
            (_, None) => DEFAULT_CHECK_INTERVAL,
        };
        let timeout = timeout
            .unwrap_or(DEFAULT_CHECK_TIMEOUT)
            .min(if interval.is_zero() {
                DEFAULT_CHECK_TIMEOUT
            } else {
                interval
            });
        Ok(CheckSpec {
            name: self
                .name
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| format!("Service '{service}' check")),
            id,
            kind,
            interval,
            timeout,
            initial_status: self.status.unwrap_or(Health::Critical),
            deregister_critical_after,
            notes: self.notes.unwrap_or_default(),
        })
    }
}

/// Go's `time.Duration` text, as Consul reads and prints it: the one
/// shared parser in `bronze_runtime::duration`.
pub use bronze_runtime::duration::{
    format_go as format_go_duration, parse_go as parse_go_duration,
};

mod duration_ms {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms: u64 = serde::Deserialize::deserialize(d)?;
        Ok(Duration::from_millis(ms))
    }
}

mod opt_duration_ms {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let ms: Option<u64> = serde::Deserialize::deserialize(d)?;
        Ok(ms.map(Duration::from_millis))
    }
}

/// Consul's words when maintenance is asked for without a reason.
pub const DEFAULT_MAINTENANCE_REASON: &str = "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.";

/// A maintenance reason as stored: the default when none is given, at most
/// 1 KiB.
pub fn maintenance_reason(reason: &str) -> String {
    let r = reason.trim();
    if r.is_empty() {
        return DEFAULT_MAINTENANCE_REASON.to_string();
    }
    let mut end = r.len().min(1024);
    while !r.is_char_boundary(end) {
        end -= 1;
    }
    r[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const NAMES: FieldNames = FieldNames {
        id: "ID",
        service: "Name",
        node: "Node",
        node_address: "NodeAddress",
        address: "Address",
        port: "Port",
        tags: "Tags",
        meta: "Meta",
        weights: "Weights",
        checks: "Check",
        check_id: "CheckID",
        check_http: "HTTP",
        check_method: "Method",
        check_header: "Header",
        check_tcp: "TCP",
        check_ttl: "TTL",
        check_interval: "Interval",
        check_timeout: "Timeout",
        check_deregister: "DeregisterCriticalServiceAfter",
    };

    fn raw() -> RawInstance {
        RawInstance {
            service: "Web".into(),
            port: 8080,
            ..Default::default()
        }
    }

    fn field_of(r: Result<InstanceSpec, Error>) -> String {
        match r {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("expected an invalid-argument error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_normalisation() {
        let spec = raw().validate(&NAMES, "n1", "10.0.0.1").expect("valid");
        assert_eq!(spec.service, "web");
        assert_eq!(spec.id, "web");
        assert_eq!(spec.node, "n1");
        assert_eq!(spec.node_address, "10.0.0.1");
        assert_eq!(spec.weights, Weights::default());
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut r = raw();
        r.service = "we b".into();
        assert_eq!(field_of(r.validate(&NAMES, "n", "1.2.3.4")), "Name");
        let mut r = raw();
        r.service = "web.api".into();
        assert_eq!(field_of(r.validate(&NAMES, "n", "1.2.3.4")), "Name");
        let mut r = raw();
        r.port = 70000;
        assert_eq!(field_of(r.validate(&NAMES, "n", "1.2.3.4")), "Port");
        let mut r = raw();
        r.port = -1;
        assert_eq!(field_of(r.validate(&NAMES, "n", "1.2.3.4")), "Port");
        let mut r = raw();
        r.address = Some("not an address!".into());
        assert_eq!(field_of(r.validate(&NAMES, "n", "1.2.3.4")), "Address");
        let mut r = raw();
        r.checks.push(RawCheck {
            http: Some("ftp://x".into()),
            ..Default::default()
        });
        assert_eq!(field_of(r.validate(&NAMES, "n", "1.2.3.4")), "HTTP");
        let mut r = raw();
        r.checks.push(RawCheck {
            tcp: Some("host".into()),
            ..Default::default()
        });
        assert_eq!(field_of(r.validate(&NAMES, "n", "1.2.3.4")), "TCP");
        let mut r = raw();
        r.checks.push(RawCheck {
            tcp: Some("host:80".into()),
            interval: Some(Duration::from_millis(1)),
            ..Default::default()
        });
        assert_eq!(field_of(r.validate(&NAMES, "n", "1.2.3.4")), "Interval");
        let mut r = raw();
        r.checks.push(RawCheck {
            unsupported: Some("script".into()),
            ..Default::default()
        });
        assert_eq!(field_of(r.validate(&NAMES, "n", "1.2.3.4")), "Check");
        let mut r = raw();
        r.checks.push(RawCheck::default());
        assert_eq!(field_of(r.validate(&NAMES, "n", "1.2.3.4")), "Check");
        let mut r = raw();
        r.meta.push(("bad key".into(), "v".into()));
        assert_eq!(field_of(r.validate(&NAMES, "n", "1.2.3.4")), "Meta");
    }

    #[test]
    fn check_ids_follow_consul() {
        let mut r = raw();
        r.checks.push(RawCheck {
            ttl: Some(Duration::from_secs(5)),
            ..Default::default()
        });
        let spec = r.clone().validate(&NAMES, "n", "1.2.3.4").expect("valid");
        assert_eq!(spec.checks[0].id, "service:web");
        assert_eq!(spec.checks[0].initial_status, Health::Critical);
        r.checks.push(RawCheck {
            tcp: Some("127.0.0.1:1".into()),
            ..Default::default()
        });
        let spec = r.validate(&NAMES, "n", "1.2.3.4").expect("valid");
        assert_eq!(spec.checks[0].id, "service:web:1");
        assert_eq!(spec.checks[1].id, "service:web:2");
        assert_eq!(spec.checks[1].interval, DEFAULT_CHECK_INTERVAL);
    }
}
