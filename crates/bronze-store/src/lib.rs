//! Bronze's embedded state.
//!
//! What a component must keep across restarts goes through [`Store`]: a
//! namespaced key-value map whose writes are durable (fsync'd) when the call
//! returns. [`RedbStore`] is the single-file implementation used by
//! `bronze dev` and single-host installs. A distributed implementation
//! (etcd) will implement the same trait; the trait is synchronous and small
//! on purpose, callers run it on a blocking thread.

pub mod conformance;

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {message}")]
    Open { path: String, message: String },
    #[error("store: {0}")]
    Backend(String),
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A namespaced, durable key-value map. Every write is committed (and
/// fsync'd) before it returns; a crash never leaves a half-written value.
pub trait Store: Send + Sync + 'static {
    fn put(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key`; says whether it was there.
    fn delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError>;
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every entry of a namespace, in key order.
    fn list(&self, namespace: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Entries whose key starts with `prefix`, in key order, strictly after
    /// `after` when given, at most `limit` of them.
    fn scan(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Applies every operation in one transaction: all or nothing.
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError>;

    /// Calls `each` with every entry whose key starts with `prefix`, in key
    /// order, reading `page` entries at a time (at least one): memory stays
    /// bounded however many there are. Each page is its own read, so
    /// writes between pages may or may not be seen.
    fn scan_each(
        &self,
        namespace: &str,
        prefix: &str,
        page: usize,
        each: &mut dyn FnMut(String, Vec<u8>),
    ) -> Result<(), StoreError> {
        let page = page.max(1);
        let mut after: Option<String> = None;
        loop {
            let entries = self.scan(namespace, prefix, after.as_deref(), page)?;
            let full = entries.len() == page;
            after = entries.last().map(|(k, _)| k.clone());
            for (k, v) in entries {
                each(k, v);
            }
            if !full {
                return Ok(());
            }
        }
    }
}

/// One write of a transaction ([`Store::apply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        namespace: String,
        key: String,
        value: Vec<u8>,
    },
    Delete {
        namespace: String,
        key: String,
    },
}

impl Op {
    pub fn put(namespace: &str, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            namespace: namespace.to_string(),
            key: key.into(),
            value: value.into(),
        }
    }

    pub fn delete(namespace: &str, key: impl Into<String>) -> Self {
        Op::Delete {
            namespace: namespace.to_string(),
            key: key.into(),
        }
    }
}

/// What a component keeps is small (registrations, configuration): a
/// bounded cache keeps resident memory small too (redb's default is 1 GiB).
const CACHE_BYTES: usize = 16 << 20;

/// [`Store`] in one redb file.
pub struct RedbStore {
    db: Database,
}

fn table(namespace: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(namespace)
}

impl RedbStore {
    /// Opens (or creates) the store file at `path`, creating parent folders.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: path.display().to_string(),
            message,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| open_err(e.to_string()))?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| open_err(e.to_string()))?;
        Ok(Self { db })
    }

    /// A store that lives in memory only (tests, throwaway dev runs).
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(backend)?;
        Ok(Self { db })
    }
}

impl Store for RedbStore {
    fn put(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut t = txn.open_table(table(namespace)).map_err(backend)?;
            t.insert(key, value).map_err(backend)?;
        }
        txn.commit().map_err(backend)
    }

    fn delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        let existed = {
            let mut t = txn.open_table(table(namespace)).map_err(backend)?;
            t.remove(key).map_err(backend)?.is_some()
        };
        txn.commit().map_err(backend)?;
        Ok(existed)
    }

    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = match txn.open_table(table(namespace)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        Ok(t.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    fn scan(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = match txn.open_table(table(namespace)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(backend(e)),
        };
        let start = match after {
            Some(a) if a >= prefix => a,
            _ => prefix,
        };
        let mut out = Vec::new();
        for entry in t.range(start..).map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            if after.is_some_and(|a| key <= a) {
                continue;
            }
            if out.len() >= limit {
                break;
            }
            out.push((key.to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        for op in ops {
            match op {
                Op::Put {
                    namespace,
                    key,
                    value,
                } => {
                    let mut t = txn.open_table(table(namespace)).map_err(backend)?;
                    t.insert(key.as_str(), value.as_slice()).map_err(backend)?;
                }
                Op::Delete { namespace, key } => {
                    let mut t = txn.open_table(table(namespace)).map_err(backend)?;
                    t.remove(key.as_str()).map_err(backend)?;
                }
            }
        }
        txn.commit().map_err(backend)
    }

    fn list(&self, namespace: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let exists = txn
            .list_tables()
            .map_err(backend)?
            .any(|t| t.name() == namespace);
        if !exists {
            return Ok(Vec::new());
        }
        let t = txn.open_table(table(namespace)).map_err(backend)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested/state.redb");
        {
            let s = RedbStore::open(&path).expect("open");
            assert!(s.list("regs").expect("list").is_empty());
            assert_eq!(s.get("regs", "a").expect("get"), None);
            s.put("regs", "a", b"1").expect("put");
            s.put("regs", "b", b"2").expect("put");
            assert!(s.delete("regs", "b").expect("delete"));
            assert!(!s.delete("regs", "b").expect("delete"));
        }
        let s = RedbStore::open(&path).expect("reopen");
        assert_eq!(
            s.list("regs").expect("list"),
            vec![("a".to_string(), b"1".to_vec())]
        );
        assert_eq!(s.get("regs", "a").expect("get"), Some(b"1".to_vec()));
    }

    #[test]
    fn scans_prefixes_in_pages_and_applies_atomically() {
        let s = RedbStore::in_memory().expect("mem");
        s.apply(&[
            Op::put("t", "a/1", b"x".to_vec()),
            Op::put("t", "a/2", b"y".to_vec()),
            Op::put("t", "a/3", b"z".to_vec()),
            Op::put("t", "b/1", b"w".to_vec()),
        ])
        .expect("apply");
        let keys = |v: Vec<(String, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(s.scan("t", "a/", None, 10).expect("scan")),
            vec!["a/1", "a/2", "a/3"]
        );
        assert_eq!(
            keys(s.scan("t", "a/", None, 2).expect("scan")),
            vec!["a/1", "a/2"]
        );
        assert_eq!(
            keys(s.scan("t", "a/", Some("a/2"), 10).expect("scan")),
            vec!["a/3"]
        );
        assert!(s.scan("t", "c/", None, 10).expect("scan").is_empty());
        assert!(s.scan("missing", "", None, 10).expect("scan").is_empty());
        s.apply(&[Op::delete("t", "a/1"), Op::put("u", "k", b"v".to_vec())])
            .expect("apply");
        assert_eq!(
            keys(s.scan("t", "a/", None, 10).expect("scan")),
            vec!["a/2", "a/3"]
        );
        assert_eq!(s.get("u", "k").expect("get"), Some(b"v".to_vec()));
    }

    #[test]
    fn conformance_on_a_file_and_in_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        conformance::run(&RedbStore::open(&path).expect("open"));
        conformance::durability(&|| Box::new(RedbStore::open(&path).expect("open")));
        conformance::run(&RedbStore::in_memory().expect("mem"));
    }

    #[test]
    fn scan_each_reads_everything_a_page_at_a_time() {
        let s = RedbStore::in_memory().expect("mem");
        let ops: Vec<Op> = (0..7)
            .map(|i| Op::put("t", format!("a/{i}"), vec![i]))
            .chain([Op::put("t", "b/0", vec![9])])
            .collect();
        s.apply(&ops).expect("apply");
        for page in [0, 1, 2, 3, 7, 100] {
            let mut seen = Vec::new();
            s.scan_each("t", "a/", page, &mut |k, v| seen.push((k, v[0])))
                .expect("scan");
            let want: Vec<(String, u8)> = (0..7).map(|i| (format!("a/{i}"), i)).collect();
            assert_eq!(seen, want, "page {page}");
        }
    }

    #[test]
    fn in_memory_works() {
        let s = RedbStore::in_memory().expect("mem");
        s.put("x", "k", b"v").expect("put");
        assert_eq!(s.list("x").expect("list").len(), 1);
    }
}
