//! Traefik v2/v3 rule expressions (also `bronze.http.rule`'s syntax):
//! matcher calls such as ``Host(`a`)`` whose arguments are backquoted or
//! double-quoted strings, joined by `&&` and `||` (`&&` binds tighter),
//! `!` and parentheses.
//!
//! [`parse`] builds the tree; [`dnf`] turns it into alternatives of matcher
//! calls (an OR of ANDs), which is what Kong's routes can hold. Negation
//! has no place in a route and is refused there, by name.

/// A parsed rule.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Call(Call),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// One matcher: its name and arguments.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Call {
    pub name: String,
    pub args: Vec<String>,
}

/// At most this many alternatives after expansion: a rule that expands
/// further is refused rather than compiled into hundreds of routes.
pub(crate) const MAX_ALTERNATIVES: usize = 32;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Open,
    Close,
    Comma,
    And,
    Or,
    Not,
}

fn tokens(text: &str) -> Result<Vec<(usize, Token)>, String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let at = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => out.push((at, Token::Open)),
            b')' => out.push((at, Token::Close)),
            b',' => out.push((at, Token::Comma)),
            b'!' => out.push((at, Token::Not)),
            b'&' | b'|' => {
                if bytes.get(i + 1) != Some(&c) {
                    return Err(format!("at {at}: expected {0}{0}", char::from(c)));
                }
                out.push((at, if c == b'&' { Token::And } else { Token::Or }));
                i += 1;
            }
            b'`' => {
                let end = text[i + 1..]
                    .find('`')
                    .ok_or_else(|| format!("at {at}: unterminated `"))?;
                out.push((at, Token::Str(text[i + 1..i + 1 + end].to_string())));
                i += end + 1;
            }
            b'"' => {
                // A Go string literal: \" and \\ escapes.
                let mut s = String::new();
                let mut chars = text[i + 1..].char_indices();
                let mut end = None;
                while let Some((j, ch)) = chars.next() {
                    match ch {
                        '"' => {
                            end = Some(j);
                            break;
                        }
                        '\\' => match chars.next() {
                            Some((_, 'n')) => s.push('\n'),
                            Some((_, 't')) => s.push('\t'),
                            Some((_, e)) => s.push(e),
                            None => break,
                        },
                        ch => s.push(ch),
                    }
                }
                let end = end.ok_or_else(|| format!("at {at}: unterminated \""))?;
                out.push((at, Token::Str(s)));
                i += end + 1;
            }
            c if c.is_ascii_alphabetic() => {
                let len = text[i..]
                    .find(|ch: char| !ch.is_ascii_alphanumeric())
                    .unwrap_or(text.len() - i);
                out.push((at, Token::Ident(text[i..i + len].to_string())));
                i += len;
                continue;
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                return Err(format!("at {at}: unexpected {ch:?}"));
            }
        }
        i += 1;
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    pos: usize,
    len: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn at(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.len, |(a, _)| *a)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.unary()?;
        while self.peek() == Some(&Token::And) {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        let at = self.at();
        match self.tokens.get(self.pos).map(|(_, t)| t.clone()) {
            Some(Token::Not) => {
                self.pos += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Some(Token::Open) => {
                self.pos += 1;
                let inner = self.or()?;
                if self.peek() != Some(&Token::Close) {
                    return Err(format!("at {}: expected )", self.at()));
                }
                self.pos += 1;
                Ok(inner)
            }
            Some(Token::Ident(name)) => {
                self.pos += 1;
                if self.peek() != Some(&Token::Open) {
                    return Err(format!("at {}: expected ( after {name}", self.at()));
                }
                self.pos += 1;
                let mut args = Vec::new();
                loop {
                    match self.tokens.get(self.pos).map(|(_, t)| t.clone()) {
                        Some(Token::Str(s)) => args.push(s),
                        _ => {
                            return Err(format!(
                                "at {}: expected a value in backquotes in {name}(...)",
                                self.at()
                            ));
                        }
                    }
                    self.pos += 1;
                    match self.peek() {
                        Some(Token::Comma) => self.pos += 1,
                        Some(Token::Close) => {
                            self.pos += 1;
                            break;
                        }
                        _ => return Err(format!("at {}: expected , or )", self.at())),
                    }
                }
                Ok(Expr::Call(Call { name, args }))
            }
            _ => Err(format!("at {at}: expected a matcher such as Host(`...`)")),
        }
    }
}

/// Parses a rule; errors say where (byte offset) and what was expected.
pub(crate) fn parse(text: &str) -> Result<Expr, String> {
    let tokens = tokens(text)?;
    if tokens.is_empty() {
        return Err("empty rule".into());
    }
    let mut p = Parser {
        tokens,
        pos: 0,
        len: text.len(),
    };
    let e = p.or()?;
    if p.pos != p.tokens.len() {
        return Err(format!("at {}: expected && or ||", p.at()));
    }
    Ok(e)
}

/// The rule as alternatives of matcher calls. Refuses `!` (a route has no
/// negation) and expansions beyond [`MAX_ALTERNATIVES`].
pub(crate) fn dnf(e: &Expr) -> Result<Vec<Vec<Call>>, String> {
    match e {
        Expr::Call(c) => Ok(vec![vec![c.clone()]]),
        Expr::Not(_) => Err("! (negation) cannot be expressed by a Bronze route".into()),
        Expr::Or(a, b) => {
            let mut out = dnf(a)?;
            out.extend(dnf(b)?);
            if out.len() > MAX_ALTERNATIVES {
                return Err(format!(
                    "more than {MAX_ALTERNATIVES} alternatives once expanded"
                ));
            }
            Ok(out)
        }
        Expr::And(a, b) => {
            let (a, b) = (dnf(a)?, dnf(b)?);
            if a.len() * b.len() > MAX_ALTERNATIVES {
                return Err(format!(
                    "more than {MAX_ALTERNATIVES} alternatives once expanded"
                ));
            }
            let mut out = Vec::new();
            for x in &a {
                for y in &b {
                    out.push(x.iter().chain(y).cloned().collect());
                }
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(alts: &[Vec<Call>]) -> Vec<Vec<String>> {
        alts.iter()
            .map(|a| {
                a.iter()
                    .map(|c| format!("{}:{}", c.name, c.args.join(",")))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn precedence_parentheses_and_quotes() {
        let e = parse("Host(`a`) && PathPrefix(`/x`) || Host(\"b\")").unwrap();
        assert_eq!(
            names(&dnf(&e).unwrap()),
            vec![vec!["Host:a", "PathPrefix:/x"], vec!["Host:b"]]
        );
        let e = parse("Host(`a`, `b`) && (PathPrefix(`/x`) || PathPrefix(`/y`))").unwrap();
        assert_eq!(
            names(&dnf(&e).unwrap()),
            vec![
                vec!["Host:a,b", "PathPrefix:/x"],
                vec!["Host:a,b", "PathPrefix:/y"]
            ]
        );
        let e = parse(r#"Header("X-A", "say \"hi\"")"#).unwrap();
        assert_eq!(
            e,
            Expr::Call(Call {
                name: "Header".into(),
                args: vec!["X-A".into(), "say \"hi\"".into()]
            })
        );
    }

    #[test]
    fn bad_rules_name_the_place() {
        for (bad, want) in [
            ("", "empty rule"),
            ("Host(`a`", "at 8: expected , or )"),
            ("Host(a)", "at 5: expected a value in backquotes"),
            ("Host(`a`) & Path(`/`)", "at 10: expected &&"),
            ("Host(`a`) Path(`/`)", "at 10: expected && or ||"),
            ("Host `a`", "at 5: expected ( after Host"),
            ("(Host(`a`)", "at 10: expected )"),
            ("Host(`a)", "at 5: unterminated `"),
            ("Host(`a`) && #", "at 13: unexpected '#'"),
            ("&& Host(`a`)", "at 0: expected a matcher"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.starts_with(want), "{bad:?}: {e}");
        }
        let not = parse("Host(`a`) && !PathPrefix(`/admin`)").unwrap();
        assert!(dnf(&not).unwrap_err().contains("negation"));
        // 6 x 6 alternatives: refused.
        let six = "(Host(`a`) || Host(`b`) || Host(`c`) || Host(`d`) || Host(`e`) || Host(`f`))";
        let big = parse(&format!("{six} && {}", six.replace("Host", "Method"))).unwrap();
        assert!(dnf(&big).unwrap_err().contains("alternatives"));
    }
}
