//! Percent-decoding (RFC 3986 `%XX`), the gateway's one decoder: of a
//! query component (where `+` is a space, as forms write it) or of a path
//! segment (where it is a `+`). A `%` not followed by two hex digits is
//! kept as it is, and bytes that do not make UTF-8 become U+FFFD.

use std::borrow::Cow;

pub fn decode(s: &str, plus_is_space: bool) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || (plus_is_space && b == b'+')) {
        return s.into();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (hex, b[i]) {
            (Some(v), _) => {
                out.push(v);
                i += 3;
                continue;
            }
            (None, b'+') if plus_is_space => out.push(b' '),
            (None, c) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned().into()
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn query_components_and_path_segments() {
        assert_eq!(decode("a%3Ab+c", true), "a:b c");
        assert_eq!(decode("a%3Ab+c", false), "a:b+c");
        // Incomplete or not hex: kept.
        for s in ["100%", "%zz", "a%3", "%"] {
            assert_eq!(decode(s, true), s);
        }
        assert_eq!(decode("a%3Ab%2", false), "a:b%2");
        // Not UTF-8: replaced, never a panic.
        assert_eq!(decode("%FF", false), "\u{FFFD}");
        // Nothing to decode: borrowed.
        assert!(matches!(
            decode("plain", true),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
