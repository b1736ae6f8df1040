//! Placement constraints (`node.labels.zone==eu`) and spread preferences
//! (`spread=node.labels.zone`), Swarm's grammar: parsed once when a spec is
//! validated, matched against nodes by the scheduler.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::node::Node;

/// What a constraint or preference reads from a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Attribute {
    Id,
    Hostname,
    Role,
    NodeLabel(String),
    EngineLabel(String),
    Os,
    Arch,
}

impl Attribute {
    pub fn parse(key: &str) -> Result<Self, String> {
        let key = key.trim();
        let lower = key.to_ascii_lowercase();
        let label = |prefix: &str| -> Option<Result<String, String>> {
            let name = key.get(prefix.len()..)?;
            if !lower.starts_with(prefix) {
                return None;
            }
            Some(if name.is_empty() {
                Err(format!("{key:?}: expected a label name after {prefix:?}"))
            } else {
                Ok(name.to_string())
            })
        };
        Ok(match lower.as_str() {
            "node.id" => Attribute::Id,
            "node.hostname" => Attribute::Hostname,
            "node.role" => Attribute::Role,
            "node.platform.os" => Attribute::Os,
            "node.platform.arch" => Attribute::Arch,
            _ => {
                if let Some(l) = label("node.labels.") {
                    Attribute::NodeLabel(l?)
                } else if let Some(l) = label("engine.labels.") {
                    Attribute::EngineLabel(l?)
                } else {
                    return Err(format!(
                        "unknown attribute {key:?}: expected node.id, node.hostname, node.role, \
                         node.labels.<name>, engine.labels.<name>, node.platform.os or \
                         node.platform.arch"
                    ));
                }
            }
        })
    }

    /// The node's value, if it has one.
    pub fn value<'n>(&self, node: &'n Node) -> Option<&'n str> {
        match self {
            Attribute::Id => Some(&node.id),
            Attribute::Hostname => Some(&node.hostname),
            Attribute::Role => Some(node.role.as_str()),
            Attribute::NodeLabel(l) => node.labels.get(l).map(String::as_str),
            Attribute::EngineLabel(l) => node.engine.labels.get(l).map(String::as_str),
            Attribute::Os => Some(&node.engine.os),
            Attribute::Arch => Some(&node.engine.arch),
        }
    }
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attribute::Id => f.write_str("node.id"),
            Attribute::Hostname => f.write_str("node.hostname"),
            Attribute::Role => f.write_str("node.role"),
            Attribute::NodeLabel(l) => write!(f, "node.labels.{l}"),
            Attribute::EngineLabel(l) => write!(f, "engine.labels.{l}"),
            Attribute::Os => f.write_str("node.platform.os"),
            Attribute::Arch => f.write_str("node.platform.arch"),
        }
    }
}

/// `attribute == value` or `attribute != value`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Constraint {
    pub attribute: Attribute,
    pub equal: bool,
    pub value: String,
}

impl Constraint {
    pub fn parse(expr: &str) -> Result<Self, String> {
        let (key, value, equal) = if let Some((k, v)) = expr.split_once("==") {
            (k, v, true)
        } else if let Some((k, v)) = expr.split_once("!=") {
            (k, v, false)
        } else {
            return Err(format!(
                "{expr:?}: expected <attribute>==<value> or <attribute>!=<value>, \
                 e.g. \"node.labels.zone==eu\""
            ));
        };
        let value = value.trim();
        if value.is_empty() || value.contains("==") || value.contains("!=") {
            return Err(format!("{expr:?}: expected one value after the operator"));
        }
        let attribute = Attribute::parse(key)?;
        if attribute == Attribute::Role && !matches!(value, "manager" | "worker") {
            return Err(format!("{expr:?}: node.role is \"manager\" or \"worker\""));
        }
        Ok(Self {
            attribute,
            equal,
            value: value.to_string(),
        })
    }

    /// Swarm's matching: values compare without regard to case; a node
    /// without the label fails `==` and passes `!=`.
    pub fn matches(&self, node: &Node) -> bool {
        let found = self
            .attribute
            .value(node)
            .is_some_and(|v| v.eq_ignore_ascii_case(&self.value));
        found == self.equal
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.equal { "==" } else { "!=" };
        write!(f, "{}{op}{}", self.attribute, self.value)
    }
}

/// `spread=<attribute>`: tasks spread evenly over the attribute's values
/// (nodes without it form one group of their own).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Preference {
    pub spread: Attribute,
}

impl Preference {
    pub fn parse(expr: &str) -> Result<Self, String> {
        let Some(("spread", key)) = expr.split_once('=').map(|(k, v)| (k.trim(), v.trim())) else {
            return Err(format!(
                "{expr:?}: expected spread=<attribute>, e.g. \"spread=node.labels.zone\""
            ));
        };
        Ok(Self {
            spread: Attribute::parse(key)?,
        })
    }
}

impl fmt::Display for Preference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spread={}", self.spread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        let mut n = Node::new("n1".into(), "host-1".into());
        n.labels.insert("zone".into(), "EU".into());
        n.engine.labels.insert("disk".into(), "ssd".into());
        n.engine.os = "linux".into();
        n.engine.arch = "x86_64".into();
        n
    }

    #[test]
    fn parses_and_matches_like_swarm() {
        let n = node();
        for (expr, expected) in [
            ("node.labels.zone==eu", true),
            ("node.labels.zone!=eu", false),
            ("node.labels.rack==r1", false),
            ("node.labels.rack!=r1", true),
            ("node.hostname==host-1", true),
            ("node.id!=n1", false),
            ("node.role==worker", true),
            ("engine.labels.disk==ssd", true),
            ("node.platform.os==linux", true),
            ("node.platform.arch==aarch64", false),
            (" node.labels.zone == eu ", true),
        ] {
            let c = Constraint::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            assert_eq!(c.matches(&n), expected, "{expr}");
        }
        assert_eq!(
            Constraint::parse("node.labels.zone==eu")
                .expect("ok")
                .to_string(),
            "node.labels.zone==eu"
        );
    }

    #[test]
    fn bad_expressions_say_what_was_expected() {
        for bad in [
            "node.labels.zone=eu",
            "node.labels.==x",
            "node.colour==red",
            "node.role==boss",
            "node.hostname==",
            "a==b==c",
        ] {
            let e = Constraint::parse(bad).expect_err(bad);
            assert!(
                e.contains("expected") || e.contains("node.role"),
                "{bad}: {e}"
            );
        }
        assert!(Preference::parse("spread=node.labels.zone").is_ok());
        assert!(Preference::parse("pack=node.labels.zone").is_err());
    }
}
