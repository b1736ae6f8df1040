//! Durations in configuration files and flags: "10s", "1m30s", "250ms";
//! and Go's `time.Duration` text ("1.5s", "0"), as Consul and compose
//! files write it ([`parse_go`], [`format_go`]).

use std::time::Duration;

/// Parses "10s", "1m30s", "250ms", "2h". A bare number is rejected: a unit
/// is always needed, so "10" can never be mistaken for ms or s.
pub fn parse(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("{s:?} is not a duration ({e}); expected e.g. \"10s\", \"1m30s\", \"250ms\"")
    })
}

/// Formats a duration as `parse` reads it back.
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// Go's `time.Duration` text ("1m30s", "1.5s", "100ms", "2h45m", "0") or,
/// as Consul accepts in JSON, a number of nanoseconds.
pub fn parse_go(s: &str) -> Result<Duration, String> {
    let orig = s;
    let s = s.trim();
    let err = || format!("{orig:?} is not a duration; expected e.g. \"10s\", \"1m30s\", \"250ms\"");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(err());
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total += value * nanos_per;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(err());
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Formats like Go's `time.Duration.String()` does for whole units, which is
/// what Consul clients print and parse back ("10s", "1m30s", "250ms").
pub fn format_go(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let ms = d.as_millis();
    if ms < 1000 && d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let frac = d.subsec_nanos();
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if frac == 0 {
        out.push_str(&format!("{s}s"));
    } else {
        let f = format!("{:09}", frac);
        out.push_str(&format!("{s}.{}s", f.trim_end_matches('0')));
    }
    out
}

/// `#[serde(with = "bronze_runtime::duration::serde")]` for `Duration` fields.
pub mod serde {
    use std::time::Duration;

    pub fn serialize<S: ::serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    pub fn deserialize<'de, D: ::serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s: String = ::serde::Deserialize::deserialize(d)?;
        super::parse(&s).map_err(::serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bare_numbers() {
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(
            parse(&format(Duration::from_millis(1500))),
            Ok(Duration::from_millis(1500))
        );
        assert!(parse("10").unwrap_err().contains("expected"));
        assert!(parse("-1s").is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_go("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_go("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_go("0"), Ok(Duration::ZERO));
        for bad in ["", "10", "s", "-1s", "1x", "1.2.3s", "ms10"] {
            assert!(parse_go(bad).is_err(), "{bad:?} should fail");
        }
        for d in [90_000, 1500, 100, 7_200_000, 10_000] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_go(&format_go(d)), Ok(d));
        }
    }

    proptest::proptest! {
        #[test]
        fn go_duration_parser_never_panics(s in "\\PC{0,24}") {
            let _ = parse_go(&s);
        }
    }
}
