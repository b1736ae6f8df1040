//! Durations in configuration files and flags: "10s", "1m30s", "250ms".

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
}
