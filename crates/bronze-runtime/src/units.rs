//! The units people type in flags and compose files, as Docker reads and
//! prints them: memory sizes ("512M", "1.5g") and CPUs ("0.5"). Pure
//! functions shared by the CLI, the agent and the compose loader.

/// Docker's memory sizes (`RAMInBytes`): a number, then an optional unit
/// k, m, g, t or p (either case, binary: 1k = 1024), an optional `i` and
/// an optional `b`: "512M", "1G", "1.5g", "64MiB", "1024".
pub fn parse_size(s: &str) -> Result<i64, String> {
    let bad = || {
        format!("{s:?} is not a size; expected e.g. \"512M\", \"1G\" or \"1.5g\" (1K = 1024 bytes)")
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let mut unit = unit.trim_start().to_ascii_lowercase();
    if unit.ends_with('b') {
        unit.pop();
    }
    if unit.len() == 2 && unit.ends_with('i') {
        unit.pop();
    }
    let shift = match unit.as_str() {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(bad()),
    };
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= 9.2e18 {
        return Err(format!("{s:?} is too large"));
    }
    // Whole bytes, as Docker's int64 conversion.
    Ok(bytes as i64)
}

/// Docker's `BytesSize`: "512MiB", "1.5GiB", "100B".
pub fn format_size(bytes: i64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v.abs() >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    let text = format!("{v:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{}", UNITS[i])
}

/// CPUs as a decimal ("0.5", "2", "1.25") to Docker's NanoCPUs.
pub fn parse_cpus(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not a number of CPUs; expected e.g. \"0.5\" or \"2\"");
    let t = s.trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if (whole.is_empty() && frac.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    if frac.len() > 9 {
        return Err(format!("{s:?}: at most 9 decimals (a billionth of a CPU)"));
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let frac_nanos: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    };
    whole
        .checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(frac_nanos))
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// NanoCPUs as a decimal: "1.5", "0.25", "2".
pub fn format_cpus(nanos: i64) -> String {
    let whole = nanos / 1_000_000_000;
    let frac = (nanos % 1_000_000_000).abs();
    if frac == 0 {
        return whole.to_string();
    }
    let f = format!("{frac:09}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_dockers() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64mb"), Ok(64 << 20));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        for bad in ["", "M", "12Q", "1..5g", "-1G", "1.g", "1 GBB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_size(512 << 20), "512MiB");
        assert_eq!(format_size(3 << 29), "1.5GiB");
        assert_eq!(format_size(100), "100B");
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5"), Ok(500_000_000));
        assert_eq!(parse_cpus("2"), Ok(2_000_000_000));
        assert_eq!(parse_cpus("1.25"), Ok(1_250_000_000));
        assert_eq!(parse_cpus(".5"), Ok(500_000_000));
        for bad in ["", ".", "-1", "1.2.3", "abc", "0.0000000001"] {
            assert!(parse_cpus(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_cpus(1_500_000_000), "1.5");
        assert_eq!(format_cpus(2_000_000_000), "2");
        assert_eq!(format_cpus(250_000_000), "0.25");
    }
}
