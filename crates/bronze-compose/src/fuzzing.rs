//! The property the fuzz target (`fuzz/fuzz_targets/compose_load.rs`)
//! checks on every input, here so that the committed corpus is replayed by
//! `cargo test` too: any bytes, loaded as a compose file, give a project or
//! an error that names the file; never a panic.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{LoadOptions, load};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Writes `data` to a fresh file in the temporary directory and loads it.
/// Panics when a property is broken (or the file cannot be written).
pub fn load_bytes(data: &[u8]) {
    let dir = std::env::temp_dir().join(format!("bronze-compose-fuzz-{}", std::process::id()));
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let file: PathBuf = dir.join(format!("stack-{n}.yml"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(&file, data).expect("temp file");
    let opts = LoadOptions {
        files: vec![file.clone()],
        env: [("HOME", "/home/fuzz"), ("SET", "value")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        project_name: "fuzz".into(),
    };
    let result = load(&opts);
    let _ = std::fs::remove_file(&file);
    match result {
        Ok(p) => {
            assert!(p.to_yaml().starts_with(|c: char| c.is_ascii_lowercase()));
            for w in &p.warnings {
                assert_eq!(w.file, file);
                assert!(w.line > 0, "{w}");
            }
        }
        Err(e) => {
            assert!(
                e.file == file || e.file.file_name().is_some_and(|n| n == ".env"),
                "{e}"
            );
            assert!(!e.message.is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fuzz_corpus_replays() {
        bronze_runtime::replay_fuzz_corpus("compose_load", super::load_bytes);
    }
}
