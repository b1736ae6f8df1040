//! `${VAR}` in scalar values, as the Compose Specification defines it, and
//! the `.env` files that feed it (and `env_file:`).
//!
//! `$VAR`, `${VAR}`, `${VAR:-default}` (unset or empty), `${VAR-default}`
//! (unset), `${VAR:?err}`, `${VAR?err}`, `${VAR:+alt}` (set and not
//! empty), `${VAR+alt}` (set), `$$` for a literal `$`. The word after the
//! operator is interpolated itself, so defaults nest: `${A:-${B:-x}}`.
//! A `$` followed by anything else is an error, as in Compose.

use std::collections::{BTreeMap, BTreeSet};

use crate::convert::{Ctx, index, is_extension, join};
use crate::error::Error;
use crate::yaml::{Kind, Node};

/// Where variables come from: the process environment first, then `.env`.
pub(crate) struct Vars<'a> {
    pub env: &'a BTreeMap<String, String>,
    pub dotenv: &'a BTreeMap<String, String>,
}

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .or_else(|| self.dotenv.get(name))
            .map(String::as_str)
    }
}

/// What went wrong in one value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// `${VAR:?msg}` or `${VAR?msg}`.
    Required(String),
    /// A `$` not followed by a name, `{name...}` or `$`.
    Syntax(String),
}

/// Interpolates `s`; names of unset variables used bare (`$V`, `${V}`)
/// are pushed to `unset`, each once.
pub(crate) fn interpolate(
    s: &str,
    vars: &Vars<'_>,
    unset: &mut Vec<String>,
) -> Result<String, Failure> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = closing_brace(body).ok_or_else(|| {
                Failure::Syntax(format!(
                    "invalid interpolation format in {s:?}: no closing }}"
                ))
            })?;
            out.push_str(&braced(&body[..end], s, vars, unset)?);
            rest = &body[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                return Err(Failure::Syntax(format!(
                    "invalid interpolation format in {s:?}: a $ must be followed by a name, \
                     {{name}} or $ (write $$ for a literal $)"
                )));
            }
            let name = &after[..len];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => note_unset(name, unset),
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn note_unset(name: &str, unset: &mut Vec<String>) {
    if !unset.iter().any(|n| n == name) {
        unset.push(name.to_string());
    }
}

/// Length of a variable name at the start of `s`: `[A-Za-z_][A-Za-z0-9_]*`.
fn name_len(s: &str) -> usize {
    let b = s.as_bytes();
    if b.first()
        .is_none_or(|c| !(c.is_ascii_alphabetic() || *c == b'_'))
    {
        return 0;
    }
    b.iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
        .count()
}

/// Index of the `}` closing a `${`, whose body starts `s`; nested `${...}`
/// are skipped whole.
fn closing_brace(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'$' if b.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if b.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// The inside of `${...}`.
fn braced(
    body: &str,
    whole: &str,
    vars: &Vars<'_>,
    unset: &mut Vec<String>,
) -> Result<String, Failure> {
    let len = name_len(body);
    let bad = || {
        Failure::Syntax(format!(
            "invalid interpolation format in {whole:?}: \"${{{body}}}\" is not ${{NAME}}, \
             ${{NAME:-default}}, ${{NAME:?error}} or ${{NAME:+alternative}}"
        ))
    };
    if len == 0 {
        return Err(bad());
    }
    let name = &body[..len];
    let op = &body[len..];
    let value = vars.get(name);
    let set_nonempty = value.is_some_and(|v| !v.is_empty());
    let (colon, op) = match op.strip_prefix(':') {
        Some(o) => (true, o),
        None => (false, op),
    };
    let given = if colon { set_nonempty } else { value.is_some() };
    if op.is_empty() && !colon {
        return Ok(match value {
            Some(v) => v.to_string(),
            None => {
                note_unset(name, unset);
                String::new()
            }
        });
    }
    let (kind, word) = match op.chars().next() {
        Some(c @ ('-' | '?' | '+')) => (c, &op[1..]),
        _ => return Err(bad()),
    };
    match kind {
        '-' if given => Ok(value.unwrap_or_default().to_string()),
        '-' => interpolate(word, vars, unset),
        '+' if given => interpolate(word, vars, unset),
        '+' => Ok(String::new()),
        _ if given => Ok(value.unwrap_or_default().to_string()),
        _ => {
            let message = interpolate(word, vars, unset)?;
            let what = if colon { "missing a value" } else { "not set" };
            Err(Failure::Required(if message.is_empty() {
                format!("required variable {name} is {what}")
            } else {
                format!("required variable {name} is {what}: {message}")
            }))
        }
    }
}

/// The variables of an env file, in order; `None` for a name alone.
pub(crate) type EnvLines = Vec<(String, Option<String>)>;

/// `KEY=VALUE` lines: blank lines and `#` comments skipped, an optional
/// `export `, values in single quotes kept as written, in double quotes
/// with `\n`, `\t`, `\"` and `\\` escapes, unquoted values cut at ` #`
/// and trimmed. A line with a name alone maps to `None`. Errors name the
/// 1-based line.
pub(crate) fn parse_env_lines(text: &str) -> Result<EnvLines, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (line, None),
        };
        if key.is_empty() || key.chars().any(char::is_whitespace) {
            return Err((i + 1, format!("{line:?} is not KEY=VALUE")));
        }
        let value = match value {
            None => None,
            Some(v) => {
                Some(unquote(v).ok_or_else(|| (i + 1, format!("unterminated quote in {v:?}")))?)
            }
        };
        out.push((key.to_string(), value));
    }
    Ok(out)
}

fn unquote(v: &str) -> Option<String> {
    if let Some(r) = v.strip_prefix('\'') {
        let end = r.find('\'')?;
        return Some(r[..end].to_string());
    }
    if let Some(r) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = r.chars();
        loop {
            match chars.next()? {
                '"' => return Some(out),
                '\\' => match chars.next()? {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    c => out.push(c),
                },
                c => out.push(c),
            }
        }
    }
    let v = match v.find(" #") {
        Some(i) => &v[..i],
        None => v,
    };
    Some(v.trim_end().to_string())
}

/// Interpolates every scalar value of a file's tree (never keys, nor the
/// values of `x-` extension fields, which are ignored). An unset variable
/// used bare is warned about once per load, at its first use.
pub(crate) fn tree(
    cx: &mut Ctx<'_>,
    node: &mut Node,
    path: &str,
    vars: &Vars<'_>,
    warned: &mut BTreeSet<String>,
) -> Result<(), Error> {
    match &mut node.kind {
        Kind::Null => {}
        Kind::Scalar { text, .. } => {
            let mut unset = Vec::new();
            *text = interpolate(text, vars, &mut unset).map_err(|f| {
                let m = match f {
                    Failure::Required(m) | Failure::Syntax(m) => m,
                };
                cx.error(node.pos, path, m)
            })?;
            for name in unset {
                if warned.insert(name.clone()) {
                    cx.warn(
                        node.pos,
                        path,
                        format!("The {name} variable is not set. Defaulting to a blank string."),
                    );
                }
            }
        }
        Kind::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                tree(cx, item, &index(path, i), vars, warned)?;
            }
        }
        Kind::Map(entries) => {
            for e in entries.iter_mut().filter(|e| !is_extension(&e.key)) {
                tree(cx, &mut e.value, &join(path, &e.key), vars, warned)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str) -> (Result<String, Failure>, Vec<String>) {
        let env: BTreeMap<String, String> = [("SET", "v"), ("EMPTY", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let dotenv: BTreeMap<String, String> = [("DOT", "d"), ("SET", "shadowed")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let vars = Vars {
            env: &env,
            dotenv: &dotenv,
        };
        let mut unset = Vec::new();
        let r = interpolate(s, &vars, &mut unset);
        (r, unset)
    }

    fn ok(s: &str) -> String {
        run(s).0.expect("interpolates")
    }

    #[test]
    fn every_form() {
        assert_eq!(ok("a $SET b ${SET}c"), "a v b vc");
        assert_eq!(ok("${DOT}"), "d");
        assert_eq!(ok("${EMPTY:-def}|${EMPTY-def}|${NOPE-def}"), "def||def");
        assert_eq!(
            ok("${SET:+alt}|${EMPTY:+alt}|${EMPTY+alt}|${NOPE+alt}"),
            "alt||alt|"
        );
        assert_eq!(ok("$$SET $${SET}"), "$SET ${SET}");
        assert_eq!(ok("${NOPE:-${DOT}}"), "d");
        assert_eq!(ok("${NOPE:-${ALSO:-x}-y}"), "x-y");
        assert_eq!(ok("${SET:?never}"), "v");
        assert_eq!(ok("${EMPTY?fine}"), "");
        let (r, unset) = run("${NOPE}/$NOPE/$OTHER");
        assert_eq!(r, Ok("//".into()));
        assert_eq!(unset, ["NOPE", "OTHER"]);
    }

    #[test]
    fn required_and_invalid() {
        assert_eq!(
            run("${NOPE:?set NOPE to the host}").0,
            Err(Failure::Required(
                "required variable NOPE is missing a value: set NOPE to the host".into()
            ))
        );
        assert_eq!(
            run("${EMPTY:?}").0,
            Err(Failure::Required(
                "required variable EMPTY is missing a value".into()
            ))
        );
        assert_eq!(
            run("${NOPE?gone}").0,
            Err(Failure::Required(
                "required variable NOPE is not set: gone".into()
            ))
        );
        for bad in ["${", "${}", "${1A}", "$ x", "cost: 5$", "${A:x}"] {
            assert!(matches!(run(bad).0, Err(Failure::Syntax(_))), "{bad:?}");
        }
    }

    #[test]
    fn env_lines() {
        let text = "# c\n\nA=1\nexport B = two words # note\nC='x # y'\nD=\"l1\\nl2\"\nE\nF=\n";
        let got = parse_env_lines(text).expect("parses");
        let want: Vec<(String, Option<String>)> = vec![
            ("A".into(), Some("1".into())),
            ("B".into(), Some("two words".into())),
            ("C".into(), Some("x # y".into())),
            ("D".into(), Some("l1\nl2".into())),
            ("E".into(), None),
            ("F".into(), Some(String::new())),
        ];
        assert_eq!(got, want);
        assert_eq!(parse_env_lines("A=1\nB C=2\n").expect_err("bad").0, 2);
        assert_eq!(parse_env_lines("A='open\n").expect_err("bad").0, 1);
    }
}
