//! YAML text to a tree of [`Node`]s that remember where they came from
//! (file, line, column), so every later error can point at its place.
//!
//! saphyr-parser gives events with spans; this file builds the tree,
//! expands aliases (with a budget, so a "billion laughs" file is an error,
//! not an out-of-memory) and applies merge keys (`<<: *base`, or a list of
//! them): keys written in the mapping win over merged ones, and earlier
//! merged mappings win over later ones, as YAML 1.1's merge type says.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// Where a node starts: index into the loaded files, 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub file: usize,
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub kind: Kind,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Null,
    /// Text as written; `plain` is false for quoted and block scalars (and
    /// `!!str`), which are always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

/// A syntax error: position and message.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// At most this many nodes may come from expanding aliases, in one file.
const ALIAS_BUDGET: usize = 100_000;
/// At most this deep (the recursion of later passes stays bounded).
const MAX_DEPTH: usize = 64;

impl Node {
    pub fn new(kind: Kind, pos: Pos) -> Node {
        Node { kind, pos }
    }

    pub fn scalar(text: impl Into<String>, pos: Pos) -> Node {
        Node::new(
            Kind::Scalar {
                text: text.into(),
                plain: false,
            },
            pos,
        )
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(entries) => entries.iter().find(|e| e.key == key).map(|e| &e.value),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match &mut self.kind {
            Kind::Map(entries) => entries
                .iter_mut()
                .find(|e| e.key == key)
                .map(|e| &mut e.value),
            _ => None,
        }
    }

    /// What a person would call this node's type, for "expected X, found Y".
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Null => "nothing".into(),
            Kind::Scalar { text, .. } => format!("{text:?}"),
            Kind::Seq(_) => "a list".into(),
            Kind::Map(_) => "a mapping".into(),
        }
    }

    fn depth(&self) -> usize {
        match &self.kind {
            Kind::Null | Kind::Scalar { .. } => 0,
            Kind::Seq(items) => 1 + items.iter().map(Node::depth).max().unwrap_or(0),
            Kind::Map(entries) => 1 + entries.iter().map(|e| e.value.depth()).max().unwrap_or(0),
        }
    }

    fn size(&self) -> usize {
        match &self.kind {
            Kind::Null | Kind::Scalar { .. } => 1,
            Kind::Seq(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            Kind::Map(entries) => 1 + entries.iter().map(|e| e.value.size()).sum::<usize>(),
        }
    }
}

/// Parses one YAML document. An empty document is `Kind::Null`.
pub(crate) fn parse(text: &str, file: usize) -> Result<Node, SyntaxError> {
    let mut b = Builder {
        file,
        stack: Vec::new(),
        anchors: HashMap::new(),
        budget: ALIAS_BUDGET,
        root: None,
        documents: 0,
    };
    let mut parser = Parser::new_from_str(text);
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| SyntaxError {
            line: e.marker().line(),
            col: e.marker().col() + 1,
            message: e.info().to_string(),
        })?;
        b.event(event, span)?;
    }
    Ok(b.root.unwrap_or(Node::new(
        Kind::Null,
        Pos {
            file,
            line: 1,
            col: 1,
        },
    )))
}

enum Open {
    Seq {
        node: Node,
        anchor: usize,
    },
    Map {
        node: Node,
        anchor: usize,
        /// A key waiting for its value; whether it was plain (a quoted
        /// "<<" is an ordinary key).
        key: Option<(String, Pos, bool)>,
        /// `<<` values, applied at the end.
        merges: Vec<Node>,
    },
}

struct Builder {
    file: usize,
    stack: Vec<Open>,
    anchors: HashMap<usize, Node>,
    budget: usize,
    root: Option<Node>,
    documents: usize,
}

impl Builder {
    fn pos(&self, span: Span) -> Pos {
        Pos {
            file: self.file,
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }

    fn err(&self, pos: Pos, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            line: pos.line,
            col: pos.col,
            message: message.into(),
        }
    }

    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), SyntaxError> {
        let pos = self.pos(span);
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(self.err(pos, "a compose file holds one YAML document"));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let forced_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let plain = style == ScalarStyle::Plain && !forced_str;
                let kind = if plain && matches!(&*text, "" | "~" | "null" | "Null" | "NULL") {
                    Kind::Null
                } else {
                    Kind::Scalar {
                        text: text.into_owned(),
                        plain,
                    }
                };
                self.finish(Node::new(kind, pos), anchor)?;
            }
            Event::Alias(id) => {
                let node = self
                    .anchors
                    .get(&id)
                    .ok_or_else(|| self.err(pos, "an alias to an unknown anchor"))?;
                let size = node.size();
                if size > self.budget {
                    return Err(self.err(pos, "aliases expand to too many nodes"));
                }
                if self.stack.len() + node.depth() > MAX_DEPTH {
                    return Err(self.err(pos, format!("nested deeper than {MAX_DEPTH} levels")));
                }
                self.budget -= size;
                let node = node.clone();
                self.finish(node, 0)?;
            }
            Event::SequenceStart(anchor, _) => {
                self.open_check(pos)?;
                self.stack.push(Open::Seq {
                    node: Node::new(Kind::Seq(Vec::new()), pos),
                    anchor,
                });
            }
            Event::MappingStart(anchor, _) => {
                self.open_check(pos)?;
                self.stack.push(Open::Map {
                    node: Node::new(Kind::Map(Vec::new()), pos),
                    anchor,
                    key: None,
                    merges: Vec::new(),
                });
            }
            Event::SequenceEnd => {
                if let Some(Open::Seq { node, anchor }) = self.stack.pop() {
                    self.finish(node, anchor)?;
                }
            }
            Event::MappingEnd => {
                if let Some(Open::Map {
                    mut node,
                    anchor,
                    merges,
                    ..
                }) = self.stack.pop()
                {
                    apply_merges(&mut node, merges).map_err(|(p, m)| self.err(p, m))?;
                    self.finish(node, anchor)?;
                }
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn open_check(&self, pos: Pos) -> Result<(), SyntaxError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.err(pos, format!("nested deeper than {MAX_DEPTH} levels")));
        }
        if let Some(Open::Map { key: None, .. }) = self.stack.last() {
            return Err(self.err(pos, "a mapping key must be a string, not a list or mapping"));
        }
        Ok(())
    }

    /// A complete node: record its anchor, then put it where it belongs.
    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), SyntaxError> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq { node: seq, .. }) => {
                if let Kind::Seq(items) = &mut seq.kind {
                    items.push(node);
                }
            }
            Some(Open::Map {
                node: map,
                key,
                merges,
                ..
            }) => match key.take() {
                None => {
                    let (text, plain) = match node.kind {
                        Kind::Scalar { text, plain } => (text, plain),
                        Kind::Null => (String::new(), true),
                        _ => {
                            return Err(self.err(node.pos, "a mapping key must be a string"));
                        }
                    };
                    *key = Some((text, node.pos, plain));
                }
                Some((k, _, true)) if k == "<<" => merges.push(node),
                Some((k, key_pos, _)) => {
                    if let Kind::Map(entries) = &mut map.kind {
                        if entries.iter().any(|e| e.key == k) {
                            return Err(SyntaxError {
                                line: key_pos.line,
                                col: key_pos.col,
                                message: format!(
                                    "the key {k:?} is already defined in this mapping"
                                ),
                            });
                        }
                        entries.push(Entry {
                            key: k,
                            key_pos,
                            value: node,
                        });
                    }
                }
            },
        }
        Ok(())
    }
}

/// `<<: *a` or `<<: [*a, *b]`: entries of the merged mappings that the
/// mapping does not have itself, the first merged mapping winning.
fn apply_merges(node: &mut Node, merges: Vec<Node>) -> Result<(), (Pos, String)> {
    let Kind::Map(entries) = &mut node.kind else {
        return Ok(());
    };
    for merge in merges {
        let sources = match merge.kind {
            Kind::Map(_) => vec![merge],
            Kind::Seq(items) => items,
            _ => {
                return Err((
                    merge.pos,
                    "a merge key `<<` takes a mapping or a list of mappings".into(),
                ));
            }
        };
        for source in sources {
            let Kind::Map(merged) = source.kind else {
                return Err((
                    source.pos,
                    "a merge key `<<` takes a mapping or a list of mappings".into(),
                ));
            };
            for entry in merged {
                if !entries.iter().any(|e| e.key == entry.key) {
                    entries.push(entry);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: &Node) -> &str {
        match &n.kind {
            Kind::Scalar { text, .. } => text,
            _ => "",
        }
    }

    #[test]
    fn positions_anchors_and_merge_keys() {
        let src = "x-base: &base\n  a: 1\n  b: 2\nsvc:\n  <<: *base\n  b: 3\n  c: 'q'\n";
        let root = parse(src, 0).expect("parses");
        let svc = root.get("svc").expect("svc");
        assert_eq!(text(svc.get("a").expect("a")), "1");
        assert_eq!(text(svc.get("b").expect("b")), "3");
        let c = svc.get("c").expect("c");
        assert_eq!((c.pos.line, c.pos.col), (7, 6));
        assert!(matches!(c.kind, Kind::Scalar { plain: false, .. }));
        // the merged entry keeps the position it was written at
        assert_eq!(svc.get("a").expect("a").pos.line, 2);
        // a quoted "<<" is an ordinary key
        let root = parse("m: {'<<': {a: 1}}\n", 0).expect("parses");
        assert!(root.get("m").and_then(|m| m.get("<<")).is_some());
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("a: 1\nb: [1, 2\n", 0).expect_err("unclosed");
        assert!(e.line >= 2, "{e:?}");
        let e = parse("a: 1\na: 2\n", 0).expect_err("duplicate");
        assert_eq!((e.line, e.col), (2, 1));
        let e = parse("a: &x [*x]\n", 0).expect_err("unknown anchor");
        assert_eq!(e.line, 1);
        let mut deep = String::from("a0: &a0 [x]\n");
        for i in 1..70 {
            deep.push_str(&format!("a{i}: &a{i} [*a{}]\n", i - 1));
        }
        let e = parse(&deep, 0).expect_err("too deep");
        assert!(e.message.contains("deeper"), "{e:?}");
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            src.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let e = parse(&src, 0).expect_err("too big");
        assert!(e.message.contains("too many"), "{e:?}");
    }
}
