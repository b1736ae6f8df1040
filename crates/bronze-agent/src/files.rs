//! The files of a task's secrets and configs: written on the host under
//! `files_dir/<task id>/` (a tmpfs, so secrets never reach a disk), owned
//! and moded as the spec says, then bind-mounted read-only at their
//! targets. Removed with the task's container. Their data is never logged.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use bollard::models::{Mount, MountType};
use bronze_proto::scheduler::v1 as pb;

/// The directory of one task's files.
pub fn task_dir(root: &Path, task_id: &str) -> PathBuf {
    root.join(task_id)
}

/// Creates the root (mode 0700, a real directory, not a link) and says
/// when it is not on a tmpfs.
pub fn prepare_root(root: &Path) -> Result<(), String> {
    let err = |e: std::io::Error| format!("files_dir {}: {e}", root.display());
    std::fs::create_dir_all(root).map_err(err)?;
    let meta = std::fs::symlink_metadata(root).map_err(err)?;
    if !meta.is_dir() {
        return Err(format!(
            "files_dir {}: expected a directory, found a link or a file",
            root.display()
        ));
    }
    set_mode(root, 0o700).map_err(err)?;
    match fs_type(root) {
        Some(t) if t == "tmpfs" || t == "ramfs" => {}
        other => tracing::warn!(
            files_dir = %root.display(),
            filesystem = other.as_deref().unwrap_or("unknown"),
            "files_dir is not on a tmpfs: secrets mounted into tasks are written to disk"
        ),
    }
    Ok(())
}

/// The filesystem type of the mount holding `path` (from /proc/mounts).
pub fn fs_type(path: &Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut cols = line.split_whitespace();
        let (Some(_), Some(point), Some(kind)) = (cols.next(), cols.next(), cols.next()) else {
            continue;
        };
        let point = point.replace("\\040", " ");
        if path.starts_with(&point) && best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
            best = Some((point.len(), kind.to_string()));
        }
    }
    best.map(|(_, kind)| kind)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

fn write_file(path: &Path, data: &[u8], r: &pb::FileReference) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    #[cfg(unix)]
    std::os::unix::fs::chown(path, Some(r.uid), Some(r.gid))?;
    set_mode(path, r.mode)
}

/// Writes the task's files and answers the mounts that put them in its
/// container. An object whose data the assignment lacks is refused by
/// name (removed meanwhile, or its secret would not open).
pub fn write(root: &Path, a: &pb::Assignment) -> Result<Vec<Mount>, String> {
    let (Some(task), Some(spec)) = (a.task.as_ref(), a.spec.as_ref()) else {
        return Ok(Vec::new());
    };
    if spec.secrets.is_empty() && spec.configs.is_empty() {
        return Ok(Vec::new());
    }
    let dir = task_dir(root, &task.id);
    let io = |e: std::io::Error| format!("writing the task's files under {}: {e}", dir.display());
    std::fs::create_dir_all(&dir).map_err(io)?;
    set_mode(&dir, 0o700).map_err(io)?;
    let mut mounts = Vec::new();
    for (kind, refs, data) in [
        ("secret", &spec.secrets, &a.secrets),
        ("config", &spec.configs, &a.configs),
    ] {
        for (i, r) in refs.iter().enumerate() {
            let Some(d) = data
                .iter()
                .find(|d| d.name == r.source && d.version == r.version)
            else {
                return Err(format!(
                    "{kind} {:?} version {} is not available (removed?)",
                    r.source, r.version
                ));
            };
            let path = dir.join(format!("{kind}-{i}"));
            write_file(&path, &d.data, r).map_err(io)?;
            mounts.push(Mount {
                target: Some(r.target.clone()),
                source: Some(path.display().to_string()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            });
        }
    }
    Ok(mounts)
}

/// Removes a task's files (its container is gone).
pub fn remove(root: &Path, task_id: &str) {
    let dir = task_dir(root, task_id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a task's files"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_with_their_modes_and_removed() {
        let root = tempfile::tempdir().expect("dir");
        let a = pb::Assignment {
            task: Some(pb::Task {
                id: "t1".into(),
                ..Default::default()
            }),
            spec: Some(pb::ServiceSpec {
                secrets: vec![pb::FileReference {
                    source: "db".into(),
                    target: "/run/secrets/db".into(),
                    uid: 0,
                    gid: 0,
                    mode: 0o400,
                    version: 2,
                }],
                configs: vec![pb::FileReference {
                    source: "conf".into(),
                    target: "/etc/app.conf".into(),
                    uid: 0,
                    gid: 0,
                    mode: 0o444,
                    version: 1,
                }],
                ..Default::default()
            }),
            secrets: vec![pb::FileData {
                name: "db".into(),
                version: 2,
                data: b"s3cret".to_vec(),
            }],
            configs: vec![pb::FileData {
                name: "conf".into(),
                version: 1,
                data: b"x=1".to_vec(),
            }],
            ..Default::default()
        };
        let mounts = write(root.path(), &a).expect("written");
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].target.as_deref(), Some("/run/secrets/db"));
        assert_eq!(mounts[0].read_only, Some(true));
        let src = mounts[0].source.clone().expect("source");
        assert_eq!(std::fs::read(&src).expect("read"), b"s3cret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&src).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o400);
        }
        // A version the assignment does not carry is refused by name.
        let mut missing = a.clone();
        missing.secrets[0].version = 1;
        let e = write(root.path(), &missing).expect_err("missing");
        assert!(e.contains("secret \"db\" version 2"), "{e}");
        remove(root.path(), "t1");
        assert!(!task_dir(root.path(), "t1").exists());
    }
}
