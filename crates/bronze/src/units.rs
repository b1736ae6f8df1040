//! The units people type and read: durations ("1m30s"), sizes ("512M",
//! "1.5g"), CPUs ("0.5"), times ("5 seconds ago", RFC 3339). Pure
//! functions, as Docker's CLI reads and prints them; flags parse through
//! here so a bad value is a clap error naming the flag.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// "10s", "1m30s", "250ms", "2h"; "0" alone is zero (Go's rule).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    bronze_runtime::duration::parse(s)
}

/// As [`parse_duration`] reads it back: "1m30s", "0s".
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        "0s".into()
    } else {
        bronze_runtime::duration::format(d)
    }
}

pub fn to_proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub fn from_proto_duration(d: &prost_types::Duration) -> Duration {
    Duration::from_secs(d.seconds.max(0).unsigned_abs())
        + Duration::from_nanos(u64::from(d.nanos.max(0).unsigned_abs()))
}

/// A proto duration as people write it; "" when absent.
pub fn proto_duration_text(d: Option<&prost_types::Duration>) -> String {
    d.map(|d| format_duration(from_proto_duration(d)))
        .unwrap_or_default()
}

/// Sizes and CPUs as Docker reads and prints them: the shared parsers.
pub use bronze_runtime::units::{format_cpus, format_size, parse_cpus, parse_size};

pub fn system_time(ts: &prost_types::Timestamp) -> SystemTime {
    UNIX_EPOCH
        + Duration::from_secs(ts.seconds.max(0).unsigned_abs())
        + Duration::from_nanos(u64::from(ts.nanos.max(0).unsigned_abs()))
}

/// How long ago, as Docker's `HumanDuration` in lower case: "less than a
/// second", "5 seconds", "about a minute", "3 hours", "2 days".
pub fn human_duration(d: Duration) -> String {
    let seconds = d.as_secs();
    let minutes = seconds / 60;
    let hours = (seconds + 1800) / 3600;
    if seconds < 1 {
        "less than a second".into()
    } else if seconds == 1 {
        "1 second".into()
    } else if seconds < 60 {
        format!("{seconds} seconds")
    } else if minutes == 1 {
        "about a minute".into()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "about an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", seconds / 3600 / 24 / 365)
    }
}

/// "5 seconds ago" for a time in the past (a time ahead of this clock
/// counts as now).
pub fn ago(ts: &prost_types::Timestamp, now: SystemTime) -> String {
    let d = now
        .duration_since(system_time(ts))
        .unwrap_or(Duration::ZERO);
    format!("{} ago", human_duration(d))
}

/// RFC 3339 in UTC: "2026-01-02T03:04:05.123Z" (fraction only when there
/// is one, to the millisecond).
pub fn rfc3339(ts: &prost_types::Timestamp) -> String {
    let secs = ts.seconds;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let millis = ts.nanos.max(0) / 1_000_000;
    if millis == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{millis:03}Z")
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10x").is_err());
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn human_times() {
        assert_eq!(
            human_duration(Duration::from_millis(300)),
            "less than a second"
        );
        assert_eq!(human_duration(Duration::from_secs(5)), "5 seconds");
        assert_eq!(human_duration(Duration::from_secs(70)), "about a minute");
        assert_eq!(human_duration(Duration::from_secs(600)), "10 minutes");
        assert_eq!(human_duration(Duration::from_secs(3 * 3600)), "3 hours");
        assert_eq!(human_duration(Duration::from_secs(3 * 86_400)), "3 days");
        let ts = prost_types::Timestamp {
            seconds: 1_767_323_045,
            nanos: 123_000_000,
        };
        assert_eq!(rfc3339(&ts), "2026-01-02T03:04:05.123Z");
        assert_eq!(
            rfc3339(&prost_types::Timestamp {
                seconds: 951_782_400,
                nanos: 0
            }),
            "2000-02-29T00:00:00Z"
        );
        let now = system_time(&ts) + Duration::from_secs(5);
        assert_eq!(ago(&ts, now), "5 seconds ago");
    }
}
