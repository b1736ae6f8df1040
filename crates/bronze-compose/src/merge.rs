//! Several `-c` files become one tree, later files winning, by Compose's
//! rules. Each file is first normalized (list forms that mean a mapping
//! become mappings), so the two spellings merge alike; then:
//!
//! * mappings merge key by key, recursively (environment, labels,
//!   extra_hosts, deploy.labels, depends_on, networks are mappings by
//!   then);
//! * `ports` merge by (published, target, protocol); `volumes` by target;
//!   `secrets` and `configs` by target (or source);
//! * `command`, `entrypoint` and `healthcheck.test` are replaced;
//! * any other list is the base's items followed by the override's items
//!   it did not have (constraints, preferences, env_file, ...);
//! * anything else is replaced.
//!
//! Nodes keep their file and position, so an error found after merging
//! still names the file the value came from.

use crate::convert::service::{mount_key, object_key, port_key};
use crate::convert::{Ctx, R};
use crate::yaml::{Entry, Kind, Node};

/// Rewrites the list forms of a file's services into mappings.
pub(crate) fn normalize(cx: &Ctx<'_>, root: &mut Node) -> R<()> {
    let Some(services) = root.get_mut("services") else {
        return Ok(());
    };
    let Kind::Map(services) = &mut services.kind else {
        return Ok(());
    };
    for svc in services.iter_mut() {
        let path = format!("services.{}", svc.key);
        let Kind::Map(fields) = &mut svc.value.kind else {
            continue;
        };
        for field in fields.iter_mut() {
            let p = format!("{path}.{}", field.key);
            match field.key.as_str() {
                "environment" => list_to_map(cx, &mut field.value, &p, Split::Equals, true)?,
                "labels" => list_to_map(cx, &mut field.value, &p, Split::Equals, false)?,
                "extra_hosts" => list_to_map(cx, &mut field.value, &p, Split::Host, false)?,
                "depends_on" | "networks" => {
                    list_to_map(cx, &mut field.value, &p, Split::Not, true)?
                }
                "deploy" => {
                    if let Some(labels) = field.value.get_mut("labels") {
                        list_to_map(cx, labels, &format!("{p}.labels"), Split::Equals, false)?;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Split {
    /// `KEY=VALUE`.
    Equals,
    /// `host:ip` or `host=ip`.
    Host,
    /// The item is the key.
    Not,
}

/// `[a=1, b]` to `{a: "1", b: null}` (or `b: ""` when `null_alone` is
/// false). A mapping is left as it is; a scalar is left for the type
/// check to report.
fn list_to_map(cx: &Ctx<'_>, node: &mut Node, path: &str, split: Split, null_alone: bool) -> R<()> {
    let Kind::Seq(items) = &node.kind else {
        return Ok(());
    };
    let mut entries: Vec<Entry> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Kind::Scalar { text, .. } = &item.kind else {
            return Err(cx.error(
                item.pos,
                &format!("{path}[{i}]"),
                format!("expected a string, found {}", item.describe()),
            ));
        };
        let (key, value) = match split {
            Split::Equals => match text.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (text.as_str(), None),
            },
            Split::Host => match text.split_once('=').or_else(|| text.split_once(':')) {
                Some((k, v)) => (k, Some(v)),
                None => {
                    return Err(cx.error(
                        item.pos,
                        &format!("{path}[{i}]"),
                        format!("expected host:ip, found {text:?}"),
                    ));
                }
            },
            Split::Not => (text.as_str(), None),
        };
        if key.is_empty() {
            return Err(cx.error(
                item.pos,
                &format!("{path}[{i}]"),
                format!("expected KEY=VALUE, found {text:?}"),
            ));
        }
        let value = match value {
            Some(v) => Node::scalar(v, item.pos),
            None if null_alone => Node::new(Kind::Null, item.pos),
            None => Node::scalar("", item.pos),
        };
        let entry = Entry {
            key: key.to_string(),
            key_pos: item.pos,
            value,
        };
        match entries.iter_mut().find(|e| e.key == entry.key) {
            Some(e) => *e = entry,
            None => entries.push(entry),
        }
    }
    node.kind = Kind::Map(entries);
    Ok(())
}

/// `over` merged onto `base`; `path` is the keys from the root.
pub(crate) fn merge(base: Node, over: Node, path: &[&str]) -> Node {
    match (base.kind, over.kind) {
        (Kind::Map(mut entries), Kind::Map(over_entries)) => {
            for o in over_entries {
                match entries.iter_mut().find(|e| e.key == o.key) {
                    Some(e) => {
                        let mut child: Vec<&str> = path.to_vec();
                        child.push(&o.key);
                        let b = std::mem::replace(&mut e.value, Node::new(Kind::Null, o.key_pos));
                        e.value = merge(b, o.value, &child);
                        e.key_pos = o.key_pos;
                    }
                    None => entries.push(o),
                }
            }
            Node::new(Kind::Map(entries), over.pos)
        }
        (Kind::Seq(items), Kind::Seq(over_items)) => {
            Node::new(Kind::Seq(merge_seq(items, over_items, path)), over.pos)
        }
        (_, kind) => Node::new(kind, over.pos),
    }
}

fn merge_seq(base: Vec<Node>, over: Vec<Node>, path: &[&str]) -> Vec<Node> {
    let key: Option<fn(&Node) -> String> = match path {
        ["services", _, "command" | "entrypoint"] | ["services", _, "healthcheck", "test"] => {
            return over;
        }
        ["services", _, "ports"] => Some(port_key),
        ["services", _, "volumes"] => Some(mount_key),
        ["services", _, "secrets" | "configs"] => Some(object_key),
        _ => None,
    };
    let mut out = base;
    for item in over {
        let found = match key {
            Some(key) => {
                let k = key(&item);
                out.iter().position(|b| key(b) == k)
            }
            None => out.iter().position(|b| same(b, &item)),
        };
        match (found, key) {
            (Some(i), Some(_)) => out[i] = item,
            (Some(_), None) => {}
            (None, _) => out.push(item),
        }
    }
    out
}

/// Equal values, wherever they were written.
fn same(a: &Node, b: &Node) -> bool {
    match (&a.kind, &b.kind) {
        (Kind::Null, Kind::Null) => true,
        (Kind::Scalar { text: x, .. }, Kind::Scalar { text: y, .. }) => x == y,
        (Kind::Seq(x), Kind::Seq(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Kind::Map(x), Kind::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(a, b)| a.key == b.key && same(&a.value, &b.value))
        }
        _ => false,
    }
}
