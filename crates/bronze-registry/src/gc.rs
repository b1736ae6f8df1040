//! Garbage collection, online: mark every blob a manifest references (and
//! every blob touched within the grace period, which covers pushes in
//! flight), then sweep the rest. The sweep re-checks each candidate while
//! holding the write side of the manifest lock, which every manifest PUT and
//! mount holds the read side of across its "is the blob there" check and its
//! write: a push can never reference a blob the sweep is deleting.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use crate::error::RegistryError;
use crate::reference::Digest;
use crate::storage::{ManifestMeta, NS_LINKS, NS_MANIFESTS, Storage};

/// Blobs written or linked this recently are never collected.
pub const GRACE: Duration = Duration::from_secs(3600);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub freed: Vec<(Digest, u64)>,
    pub kept: u64,
}

/// Every digest some manifest needs: manifests themselves and what they
/// reference.
fn marked(storage: &Storage, grace: Duration) -> Result<HashSet<String>, RegistryError> {
    let mut keep = HashSet::new();
    for (k, v) in storage.meta.list(NS_MANIFESTS)? {
        if let Some((_, digest)) = k.split_once('\n') {
            keep.insert(digest.to_string());
        }
        if let Ok(meta) = serde_json::from_slice::<ManifestMeta>(&v) {
            keep.extend(meta.references);
        }
    }
    // Recently linked blobs (uploads and mounts a manifest may soon use).
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    for (k, v) in storage.meta.list(NS_LINKS)? {
        let at = String::from_utf8_lossy(&v)
            .split_whitespace()
            .nth(1)
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0);
        if now.saturating_sub(at) < grace.as_secs()
            && let Some((_, digest)) = k.split_once('\n')
        {
            keep.insert(digest.to_string());
        }
    }
    Ok(keep)
}

fn recent(storage: &Storage, d: &Digest, grace: Duration) -> bool {
    std::fs::metadata(storage.blob_path(d))
        .and_then(|m| m.modified())
        .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() < grace)
}

/// Runs a collection. `lock` is the manifest lock (see the module doc).
pub async fn collect(
    storage: &std::sync::Arc<Storage>,
    lock: &tokio::sync::RwLock<()>,
    dry_run: bool,
    grace: Duration,
) -> Result<Report, RegistryError> {
    let s = storage.clone();
    let (candidates, kept) =
        tokio::task::spawn_blocking(move || -> Result<(Vec<Digest>, u64), RegistryError> {
            let keep = marked(&s, grace)?;
            let mut candidates = Vec::new();
            let mut kept = 0;
            for d in s.all_blobs()? {
                if keep.contains(&d.to_string()) || recent(&s, &d, grace) {
                    kept += 1;
                } else {
                    candidates.push(d);
                }
            }
            Ok((candidates, kept))
        })
        .await
        .map_err(|e| RegistryError::Internal(e.to_string()))??;

    let mut report = Report {
        freed: Vec::new(),
        kept,
    };
    if candidates.is_empty() {
        return Ok(report);
    }
    // Sweep under the write lock: no manifest PUT is between its check
    // and its write while we re-check and delete.
    let _guard = lock.write().await;
    let s = storage.clone();
    let freed =
        tokio::task::spawn_blocking(move || -> Result<Vec<(Digest, u64)>, RegistryError> {
            let keep = marked(&s, grace)?;
            let links = s.meta.list(NS_LINKS)?;
            let mut freed = Vec::new();
            for d in candidates {
                let name = d.to_string();
                if keep.contains(&name) || recent(&s, &d, grace) {
                    continue;
                }
                let size = s.blob_size(&d).unwrap_or(0);
                if !dry_run {
                    let ops: Vec<bronze_store::Op> = links
                        .iter()
                        .filter(|(k, _)| k.split_once('\n').is_some_and(|(_, dg)| dg == name))
                        .map(|(k, _)| bronze_store::Op::delete(NS_LINKS, k.clone()))
                        .collect();
                    s.meta.apply(&ops)?;
                    s.remove_blob_file(&d)?;
                }
                freed.push((d, size));
            }
            Ok(freed)
        })
        .await
        .map_err(|e| RegistryError::Internal(e.to_string()))??;
    report.freed = freed;
    Ok(report)
}
