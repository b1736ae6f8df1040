//! Layered configuration: defaults, then a TOML file, then environment
//! variables and command-line flags (clap reads both), each layer overriding
//! the one before. Every error names the offending key and what was expected.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Syntax { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// A semantic error found while validating a parsed configuration.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Every listener defaults to loopback. One bound wider while nothing
/// authenticates its callers is allowed (a private network, a firewall),
/// but said at start-up: `listener` names it ("the HTTP API"), `risk` says
/// what a caller who reaches it can do. Returns whether it warned.
pub fn warn_if_unguarded(listener: &str, addr: std::net::SocketAddr, risk: &str) -> bool {
    if addr.ip().is_loopback() {
        return false;
    }
    tracing::warn!(
        %addr,
        "{listener} listens beyond loopback and asks callers for no credentials: \
         anyone who reaches {addr} {risk}; keep it on a private network or firewall it"
    );
    true
}

/// Builds a `T` from its serde defaults, the TOML file at `file` (if any) and
/// `overrides` (typically the parsed flags/env, with unset options skipped
/// via `#[serde(skip_serializing_if = "Option::is_none")]`). Tables merge
/// key by key; any other value in a later layer replaces the earlier one.
pub fn load<T: DeserializeOwned>(
    file: Option<&Path>,
    overrides: &impl Serialize,
) -> Result<T, ConfigError> {
    let mut merged = toml::Table::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        merged = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Syntax {
                path: path.display().to_string(),
                message: e.to_string().trim_end().to_string(),
            })?;
    }
    let over = toml::Table::try_from(overrides).map_err(|e| ConfigError::Syntax {
        path: "<flags and environment>".into(),
        message: e.to_string(),
    })?;
    merge(&mut merged, over);
    from_table(merged)
}

/// Deserializes a table into `T`, naming the key path of the first error.
pub fn from_table<T: DeserializeOwned>(table: toml::Table) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().to_string();
        ConfigError::Invalid {
            key: if key == "." {
                "(top level)".into()
            } else {
                key
            },
            message: message.trim_end().to_string(),
        }
    })
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::io::Write as _;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Dns {
        port: u16,
        domain: String,
    }
    impl Default for Dns {
        fn default() -> Self {
            Self {
                port: 8600,
                domain: "bronze.".into(),
            }
        }
    }
    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Cfg {
        dns: Dns,
        name: String,
    }
    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn layers_override_in_order() {
        let f = file("name = \"from-file\"\n[dns]\nport = 53\n");
        let cfg: Cfg = load(
            Some(f.path()),
            &Flags {
                name: Some("from-flag".into()),
            },
        )
        .expect("load");
        assert_eq!(cfg.name, "from-flag");
        assert_eq!(cfg.dns.port, 53);
        assert_eq!(cfg.dns.domain, "bronze.");
    }

    #[test]
    fn errors_name_the_key() {
        let f = file("[dns]\nport = \"lots\"\n");
        let err = load::<Cfg>(Some(f.path()), &Flags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("dns.port"), "{err}");
        let f = file("[dns]\nprot = 1\n");
        let err = load::<Cfg>(Some(f.path()), &Flags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("prot"), "{err}");
        let f = file("[dns\n");
        let err = load::<Cfg>(Some(f.path()), &Flags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("config file"), "{err}");
    }
}
