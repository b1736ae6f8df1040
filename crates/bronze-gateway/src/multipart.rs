//! `multipart/form-data` bodies (RFC 7578), as `curl -F` sends them to
//! Kong's Admin API: `-F cert=@cert.pem -F key=@key.pem -F snis[]=a.com`
//! on `/certificates`, `-F config=@kong.yml` on `POST /config`. The whole
//! body is in memory already (the Admin API reads bodies whole, bounded),
//! so this splits it in place: each part's name and its value.

/// One part: the form field's name and its bytes (a file's content when
/// the client sent a file).
#[derive(Debug, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: String,
    pub value: &'a [u8],
}

/// The `boundary` parameter of a `multipart/form-data` content type, or
/// `None` when the type is another one. `Some(Err)` says what is wrong
/// with the parameter.
pub fn boundary(content_type: &str) -> Option<Result<String, String>> {
    let mut params = content_type.split(';');
    let kind = params.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let value = params.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    });
    // RFC 2046: 1 to 70 characters.
    Some(match value {
        Some(b) if (1..=70).contains(&b.len()) && !b.contains(['\r', '\n']) => Ok(b),
        Some(_) => Err("multipart boundary: expected 1 to 70 characters".into()),
        None => Err("multipart/form-data without a boundary parameter".into()),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The body's parts in order, or what is wrong with it.
pub fn parts<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let open = format!("--{boundary}");
    // Every delimiter after the first is preceded by CRLF.
    let delimiter = format!("\r\n--{boundary}");
    let start = if body.starts_with(open.as_bytes()) {
        0
    } else {
        // A preamble (ignored) ends with CRLF before the first delimiter.
        find(body, delimiter.as_bytes())
            .map(|at| at + 2)
            .ok_or("multipart body: no boundary delimiter")?
    };
    let mut rest = &body[start + open.len()..];
    let mut out = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            // The close delimiter; an epilogue after it is ignored.
            return Ok(out);
        }
        // Transport padding, then the line break ending the delimiter.
        let line_end = find(rest, b"\r\n").ok_or("multipart body: delimiter line not ended")?;
        if rest[..line_end].iter().any(|&b| b != b' ' && b != b'\t') {
            return Err("multipart body: unexpected bytes after a boundary delimiter".into());
        }
        rest = &rest[line_end + 2..];
        let head_end = find(rest, b"\r\n\r\n")
            .map(|at| at + 4)
            .or_else(|| rest.starts_with(b"\r\n").then_some(2))
            .ok_or("multipart part: headers not ended by an empty line")?;
        let name = part_name(&rest[..head_end])?;
        rest = &rest[head_end..];
        let end = find(rest, delimiter.as_bytes())
            .ok_or("multipart body: no closing boundary delimiter (truncated?)")?;
        out.push(Part {
            name,
            value: &rest[..end],
        });
        rest = &rest[end + delimiter.len()..];
    }
}

/// The `name` of a part's `Content-Disposition: form-data` header.
fn part_name(head: &[u8]) -> Result<String, String> {
    let head = std::str::from_utf8(head).map_err(|_| "multipart part headers: not UTF-8")?;
    for line in head.split("\r\n") {
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        if !field.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        let mut params = value.split(';');
        if !params
            .next()
            .is_some_and(|d| d.trim().eq_ignore_ascii_case("form-data"))
        {
            return Err("multipart part: expected Content-Disposition: form-data".into());
        }
        for p in params {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            if k.trim().eq_ignore_ascii_case("name") {
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                if v.is_empty() {
                    break;
                }
                return Ok(v.to_string());
            }
        }
        return Err("multipart part: Content-Disposition without a name".into());
    }
    Err("multipart part: no Content-Disposition header".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut b = String::from("preamble\r\n");
        for (name, value) in parts {
            b += &format!(
                "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"f.pem\"\r\nContent-Type: application/octet-stream\r\n\r\n{value}\r\n"
            );
        }
        b += "--XyZ--\r\nepilogue";
        b.into_bytes()
    }

    #[test]
    fn curl_bodies_split_into_named_parts() {
        assert_eq!(
            boundary("multipart/form-data; boundary=XyZ"),
            Some(Ok("XyZ".into()))
        );
        assert_eq!(
            boundary("Multipart/Form-Data; charset=utf-8; boundary=\"a b\""),
            Some(Ok("a b".into()))
        );
        assert_eq!(boundary("application/json"), None);
        assert!(boundary("multipart/form-data").is_some_and(|b| b.is_err()));
        let b = body(&[
            ("cert", "-----BEGIN\r\nx\r\n"),
            ("snis[]", "a.com"),
            ("empty", ""),
        ]);
        let p = parts(&b, "XyZ").expect("parts");
        let got: Vec<(&str, &[u8])> = p.iter().map(|p| (p.name.as_str(), p.value)).collect();
        assert_eq!(
            got,
            vec![
                ("cert", &b"-----BEGIN\r\nx\r\n"[..]),
                ("snis[]", b"a.com"),
                ("empty", b"")
            ]
        );
        // No preamble, no parts.
        assert_eq!(parts(b"--XyZ--\r\n", "XyZ"), Ok(vec![]));
    }

    #[test]
    fn broken_bodies_say_what_is_wrong() {
        let whole = body(&[("a", "1"), ("b", "2")]);
        // Cut anywhere before the close delimiter: refused, never a part
        // with a value that was not whole.
        let close = find(&whole, b"--XyZ--").expect("close");
        for cut in 0..close {
            assert!(parts(&whole[..cut], "XyZ").is_err(), "cut at {cut}");
        }
        assert!(
            parts(b"--XyZ\r\nX-Other: 1\r\n\r\nv\r\n--XyZ--", "XyZ")
                .unwrap_err()
                .contains("Content-Disposition")
        );
        assert!(
            parts(
                b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nv\r\n--XyZ--",
                "XyZ"
            )
            .unwrap_err()
            .contains("without a name")
        );
        assert!(
            parts(
                b"--XyZjunk\r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n--XyZ--",
                "XyZ"
            )
            .is_err()
        );
    }
}
