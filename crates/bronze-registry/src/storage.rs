//! Content-addressed filesystem storage, deduplicated across repositories,
//! with metadata (which repository holds which blob, tags, manifests,
//! referrers, uploads) in the embedded store.
//!
//! Layout under the root:
//! - `blobs/<alg>/<2 hex>/<hex>`: blob and manifest bytes, written once;
//! - `uploads/<uuid>`: bytes of an upload in progress.
//!
//! A blob becomes visible only after its digest was verified while the bytes
//! streamed in, the file was fsync'd and atomically renamed into place (and
//! the directory fsync'd): a crash or a dropped connection never leaves a
//! partial or corrupt blob readable. Metadata changes of one request are one
//! store transaction.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bronze_store::{Op, Store};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::error::RegistryError;
use crate::reference::{Algorithm, Digest, Name};

pub const NS_REPOS: &str = "registry.repos";
pub const NS_LINKS: &str = "registry.blob_links";
pub const NS_MANIFESTS: &str = "registry.manifests";
pub const NS_TAGS: &str = "registry.tags";
pub const NS_REFERRERS: &str = "registry.referrers";
pub const NS_UPLOADS: &str = "registry.uploads";

/// Bytes per batch an upload hands to its hashing and writing threads
/// (`write_stream`): one vectored write each.
const WRITE_CHUNK: usize = 1 << 20;
/// Bytes an upload writes between two early flushes (`write_batches`).
const FLUSH_EVERY: u64 = 16 << 20;
/// Batches queued for the hashing and the writing thread each: enough to
/// absorb either one's pauses, and at most ~5 MiB per upload in memory
/// (deeper queues measured no faster).
const QUEUED_BATCHES: usize = 4;
/// Bytes all downloads together may hold in read buffers at once: each
/// download reads chunks of `READ_BUDGET / downloads in progress`, between
/// `MIN_READ_CHUNK` and `MAX_READ_CHUNK`, with at most `READ_AHEAD` chunks
/// queued. One download streams 1 MiB chunks (fast); fifty stream 160 KiB
/// ones, so memory stays flat however many clients pull at once.
const READ_BUDGET: usize = 8 << 20;
const MIN_READ_CHUNK: usize = 64 << 10;
const MAX_READ_CHUNK: usize = 1 << 20;
const READ_AHEAD: usize = 2;

/// Downloads in progress, which size each one's read chunks.
static DOWNLOADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn read_chunk_size() -> usize {
    let active = DOWNLOADS.load(std::sync::atomic::Ordering::Relaxed).max(1);
    (READ_BUDGET / active).clamp(MIN_READ_CHUNK, MAX_READ_CHUNK)
}

/// Counts one download for as long as its reader runs.
struct DownloadGuard;

impl DownloadGuard {
    fn new() -> Self {
        DOWNLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self
    }
}

impl Drop for DownloadGuard {
    fn drop(&mut self) {
        DOWNLOADS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A link's value: the blob's size and when it was linked (GC's grace).
pub fn link_value(size: u64) -> Vec<u8> {
    format!("{size} {}", now_secs()).into_bytes()
}

pub fn key(repo: &Name, rest: &str) -> String {
    format!("{repo}\n{rest}")
}

pub fn prefix(repo: &Name) -> String {
    format!("{repo}\n")
}

/// What the registry remembers about a stored manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestMeta {
    pub media_type: String,
    pub size: u64,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
    /// Digests this manifest references (config, layers, child manifests):
    /// what garbage collection must keep.
    #[serde(default)]
    pub references: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UploadRecord {
    repo: String,
    created: u64,
}

/// An incremental hasher for either algorithm.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(alg: Algorithm) -> Self {
        match alg {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        let (alg, bytes): (Algorithm, Vec<u8>) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, h.finalize().to_vec()),
            Hasher::Sha512(h) => (Algorithm::Sha512, h.finalize().to_vec()),
        };
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Digest::from_parts(alg, hex)
    }
}

pub fn digest_of(alg: Algorithm, data: &[u8]) -> Digest {
    let mut h = Hasher::new(alg);
    h.update(data);
    h.finish()
}

/// An upload in progress.
pub struct Upload {
    pub id: String,
    pub repo: Name,
    pub offset: u64,
    /// The running sha256 of the bytes so far; `None` after a restart
    /// (rebuilt from the file on first use).
    hasher: Option<Hasher>,
}

impl Upload {
    /// The `Range` header value describing what was received.
    pub fn range(&self) -> String {
        format!("0-{}", self.offset.saturating_sub(1))
    }
}

pub type UploadHandle = Arc<tokio::sync::Mutex<Upload>>;

pub struct Storage {
    root: PathBuf,
    pub meta: Arc<dyn Store>,
    uploads: Mutex<HashMap<String, UploadHandle>>,
}

fn now_secs() -> u64 {
    bronze_runtime::unix_time().as_secs()
}

/// Hashes the first `len` bytes of a file, off the async threads.
async fn hash_file(path: PathBuf, alg: Algorithm, len: u64) -> Result<Hasher, RegistryError> {
    tokio::task::spawn_blocking(move || -> std::io::Result<Hasher> {
        let mut h = Hasher::new(alg);
        let mut f = File::open(path)?.take(len);
        let mut buf = vec![0u8; MAX_READ_CHUNK];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(h);
            }
            h.update(&buf[..n]);
        }
    })
    .await
    .map_err(|e| RegistryError::Internal(e.to_string()))?
    .map_err(Into::into)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and whichever of its parents are missing, fsyncing the
/// parent of each directory it creates: the caller then renames a file
/// into `dir` and fsyncs `dir`, and a crash right after cannot lose the
/// entries that lead to it (a new blob fan-out directory is an entry in
/// its parent, durable only once the parent is fsync'd).
fn create_dir_durable(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let Some(parent) = dir.parent() else {
        return fs::create_dir(dir);
    };
    create_dir_durable(parent)?;
    match fs::create_dir(dir) {
        // Created by a concurrent writer, who may not have fsync'd the
        // parent yet: fsync it here too.
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    fsync_dir(parent)
}

/// Filesystem and store work (creates, fsyncs, fsync'd commits) on the
/// blocking pool, never on an async worker: the store says callers run it
/// on a blocking thread, and a slow disk must not stall other requests.
async fn off_worker<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RegistryError::Internal(e.to_string()))?
}

impl Storage {
    pub fn open(root: &Path, meta: Arc<dyn Store>) -> std::io::Result<Self> {
        fs::create_dir_all(root.join("blobs"))?;
        fs::create_dir_all(root.join("uploads"))?;
        Ok(Self {
            root: root.to_path_buf(),
            meta,
            uploads: Mutex::new(HashMap::new()),
        })
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(d.algorithm.name())
            .join(&d.hex()[..2])
            .join(d.hex())
    }

    fn upload_path(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(id)
    }

    /// Size of a stored blob, if the bytes are there.
    pub fn blob_size(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(d)).ok().map(|m| m.len())
    }

    /// Whether `repo` may read blob `d` (it was pushed to, mounted into, or
    /// referenced by a manifest of that repository).
    pub fn linked(&self, repo: &Name, d: &Digest) -> Result<bool, RegistryError> {
        Ok(self
            .meta
            .get(NS_LINKS, &key(repo, &d.to_string()))?
            .is_some())
    }

    /// Stores bytes already in memory (manifests) under their digest.
    pub async fn put_bytes(&self, d: &Digest, data: Bytes) -> Result<(), RegistryError> {
        let dest = self.blob_path(d);
        if dest.exists() {
            return Ok(());
        }
        let temp = self
            .root
            .join("uploads")
            .join(format!("put-{}", uuid::Uuid::new_v4()));
        let root = self.root.clone();
        off_worker(move || {
            let mut f = File::create(&temp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            drop(f);
            let dir = dest.parent().unwrap_or(&root).to_path_buf();
            create_dir_durable(&dir)?;
            if dest.exists() {
                let _ = fs::remove_file(&temp);
                return Ok(());
            }
            fs::rename(&temp, &dest)?;
            Ok(fsync_dir(&dir)?)
        })
        .await
    }

    pub async fn read_all(&self, d: &Digest) -> Result<Bytes, RegistryError> {
        let path = self.blob_path(d);
        let data = tokio::fs::read(&path).await?;
        Ok(Bytes::from(data))
    }

    /// Streams `len` bytes of a blob from `start`.
    pub fn read_stream(
        &self,
        d: &Digest,
        start: u64,
        len: u64,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let path = self.blob_path(d);
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(READ_AHEAD);
        let guard = DownloadGuard::new();
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let result = (|| -> std::io::Result<()> {
                let mut f = File::open(&path)?;
                f.seek(SeekFrom::Start(start))?;
                let mut left = len;
                while left > 0 {
                    let n = left.min(read_chunk_size() as u64) as usize;
                    // read_to_end fills spare capacity without zeroing it first.
                    let mut buf = Vec::with_capacity(n);
                    (&mut f).take(n as u64).read_to_end(&mut buf)?;
                    if buf.len() != n {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("blob {} is shorter than its size", path.display()),
                        ));
                    }
                    left -= n as u64;
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return Ok(());
                    }
                }
                Ok(())
            })();
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(e));
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    // ----- uploads -----

    pub async fn start_upload(&self, repo: &Name) -> Result<UploadHandle, RegistryError> {
        let id = uuid::Uuid::new_v4().to_string();
        let record = UploadRecord {
            repo: repo.to_string(),
            created: now_secs(),
        };
        let bytes =
            serde_json::to_vec(&record).map_err(|e| RegistryError::Internal(e.to_string()))?;
        let (path, meta, key) = (self.upload_path(&id), self.meta.clone(), id.clone());
        off_worker(move || {
            File::create(path)?;
            Ok(meta.put(NS_UPLOADS, &key, &bytes)?)
        })
        .await?;
        let handle = Arc::new(tokio::sync::Mutex::new(Upload {
            id: id.clone(),
            repo: repo.clone(),
            offset: 0,
            hasher: Some(Hasher::new(Algorithm::Sha256)),
        }));
        self.uploads.lock().insert(id, handle.clone());
        Ok(handle)
    }

    /// An upload of `repo` by ID (also one begun before a restart).
    pub async fn upload(&self, repo: &Name, id: &str) -> Result<UploadHandle, RegistryError> {
        let unknown = || RegistryError::BlobUploadUnknown(format!("{id:?} in {repo}"));
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(unknown());
        }
        if let Some(h) = self.uploads.lock().get(id) {
            return Ok(h.clone());
        }
        let (meta, path, key) = (self.meta.clone(), self.upload_path(id), id.to_string());
        let (record, size) = off_worker(move || {
            let record = meta.get(NS_UPLOADS, &key)?;
            Ok((record, fs::metadata(path).map(|m| m.len())))
        })
        .await?;
        let record: UploadRecord = match record {
            Some(b) => {
                serde_json::from_slice(&b).map_err(|e| RegistryError::Internal(e.to_string()))?
            }
            None => return Err(unknown()),
        };
        if record.repo != repo.as_str() {
            return Err(unknown());
        }
        let offset = size.map_err(|_| unknown())?;
        let handle = Arc::new(tokio::sync::Mutex::new(Upload {
            id: id.to_string(),
            repo: repo.clone(),
            offset,
            hasher: None,
        }));
        Ok(self
            .uploads
            .lock()
            .entry(id.to_string())
            .or_insert(handle)
            .clone())
    }

    /// Appends a body to an upload, hashing as it goes. On a client error
    /// (connection dropped mid-chunk), what was received stays and the
    /// offset says so: the client can resume.
    pub async fn append<S, E>(&self, upload: &mut Upload, body: S) -> Result<u64, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let hasher = match upload.hasher.take() {
            Some(h) => h,
            None => self.rehash(&upload.id, upload.offset).await?,
        };
        let path = self.upload_path(&upload.id);
        let (written, hasher, failure) = write_stream(path, upload.offset, hasher, body).await?;
        upload.offset += written;
        upload.hasher = Some(hasher);
        match failure {
            Some(e) => Err(RegistryError::BlobUploadInvalid(format!(
                "body cut after {written} bytes: {e}"
            ))),
            None => Ok(written),
        }
    }

    /// Recomputes the running hash of an upload from its file (after a
    /// restart, the in-memory state is gone).
    async fn rehash(&self, id: &str, offset: u64) -> Result<Hasher, RegistryError> {
        hash_file(self.upload_path(id), Algorithm::Sha256, offset).await
    }

    /// Verifies the upload against `expected`, fsyncs it and moves it into
    /// place, links it into the repository, and forgets the upload.
    pub async fn finish_upload(
        &self,
        upload: &mut Upload,
        expected: &Digest,
    ) -> Result<u64, RegistryError> {
        let actual = match (expected.algorithm, upload.hasher.take()) {
            (Algorithm::Sha256, Some(h)) => h.finish(),
            (Algorithm::Sha256, None) => self.rehash(&upload.id, upload.offset).await?.finish(),
            // Rare: hash the file once more with the other algorithm.
            (alg, _) => hash_file(self.upload_path(&upload.id), alg, upload.offset)
                .await?
                .finish(),
        };
        if actual != *expected {
            // Keep the session usable: the client may retry the PUT.
            upload.hasher = None;
            return Err(RegistryError::DigestInvalid(format!(
                "expected {expected}, content is {actual}"
            )));
        }
        let path = self.upload_path(&upload.id);
        let size = upload.offset;
        let (root, blob, meta) = (
            self.root.clone(),
            self.blob_path(expected),
            self.meta.clone(),
        );
        let ops = [
            Op::put(
                NS_LINKS,
                key(&upload.repo, &expected.to_string()),
                link_value(size),
            ),
            Op::put(NS_REPOS, upload.repo.to_string(), Vec::new()),
            Op::delete(NS_UPLOADS, upload.id.clone()),
        ];
        off_worker(move || {
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.sync_all())?;
            let dir = blob.parent().unwrap_or(&root).to_path_buf();
            create_dir_durable(&dir)?;
            if blob.exists() {
                fs::remove_file(&path)?;
            } else {
                fs::rename(&path, &blob)?;
                fsync_dir(&dir)?;
            }
            Ok(meta.apply(&ops)?)
        })
        .await?;
        self.uploads.lock().remove(&upload.id);
        Ok(size)
    }

    pub async fn cancel_upload(&self, upload: &Upload) -> Result<(), RegistryError> {
        let (path, meta, id) = (
            self.upload_path(&upload.id),
            self.meta.clone(),
            upload.id.clone(),
        );
        off_worker(move || {
            let _ = fs::remove_file(path);
            Ok(meta.delete(NS_UPLOADS, &id)?)
        })
        .await?;
        self.uploads.lock().remove(&upload.id);
        Ok(())
    }

    /// Removes uploads untouched for longer than `ttl`; returns how many.
    pub fn purge_uploads(&self, ttl: Duration) -> Result<usize, RegistryError> {
        let now = SystemTime::now();
        let mut purged = 0;
        for entry in fs::read_dir(self.root.join("uploads"))? {
            let entry = entry?;
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > ttl);
            if !stale {
                continue;
            }
            let name = entry.file_name().to_string_lossy().to_string();
            let busy = self
                .uploads
                .lock()
                .get(&name)
                .is_some_and(|h| h.try_lock().is_err());
            if busy {
                continue;
            }
            let _ = fs::remove_file(entry.path());
            self.meta.delete(NS_UPLOADS, &name)?;
            self.uploads.lock().remove(&name);
            purged += 1;
        }
        Ok(purged)
    }

    /// Every stored blob digest (for garbage collection).
    pub fn all_blobs(&self) -> std::io::Result<Vec<Digest>> {
        let mut out = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = self.root.join("blobs").join(alg.name());
            let Ok(fans) = fs::read_dir(&dir) else {
                continue;
            };
            for fan in fans {
                for entry in fs::read_dir(fan?.path())? {
                    let name = entry?.file_name().to_string_lossy().to_string();
                    if let Ok(d) = Digest::parse(&format!("{}:{name}", alg.name())) {
                        out.push(d);
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn remove_blob_file(&self, d: &Digest) -> std::io::Result<()> {
        fs::remove_file(self.blob_path(d))
    }
}

/// Writes a stream to `path` from `offset`, hashing every byte, in three
/// stages that run in parallel: this task receives, one blocking thread
/// hashes (sha256 on one core is the slowest stage, so it gets a thread of
/// its own) and another writes, starting writeback as it goes
/// (`write_batches`). Chunks are grouped into batches of about a megabyte
/// and handed to both threads without copying (`Bytes` are shared).
/// Returns the bytes written, the hasher, and the client's error if the
/// stream broke.
async fn write_stream<S, E>(
    path: PathBuf,
    offset: u64,
    hasher: Hasher,
    mut body: S,
) -> Result<(u64, Hasher, Option<String>), RegistryError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    let (to_writer, writer_rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(QUEUED_BATCHES);
    let writer = tokio::task::spawn_blocking(move || write_batches(&path, offset, writer_rx));
    let (to_hasher, mut hasher_rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(QUEUED_BATCHES);
    let hashing = tokio::task::spawn_blocking(move || {
        let mut hasher = hasher;
        while let Some(batch) = hasher_rx.blocking_recv() {
            for chunk in &batch {
                hasher.update(chunk);
            }
        }
        hasher
    });
    let mut failure = None;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batched = 0usize;
    loop {
        let next = body.next().await;
        let done = match next {
            Some(Ok(chunk)) => {
                batched += chunk.len();
                batch.push(chunk);
                false
            }
            Some(Err(e)) => {
                failure = Some(e.to_string());
                true
            }
            None => true,
        };
        if (batched >= WRITE_CHUNK || done) && !batch.is_empty() {
            batched = 0;
            let batch = std::mem::take(&mut batch);
            let hashed = to_hasher.send(batch.clone()).await;
            if hashed.is_err() || to_writer.send(batch).await.is_err() {
                break;
            }
        }
        if done {
            break;
        }
    }
    drop(to_hasher);
    drop(to_writer);
    let written = writer
        .await
        .map_err(|e| RegistryError::Internal(e.to_string()))??;
    let hasher = hashing
        .await
        .map_err(|e| RegistryError::Internal(e.to_string()))?;
    Ok((written, hasher, failure))
}

/// Writes every batch `batches` brings to `path` from `offset`, one
/// vectored write per batch; returns the bytes written. Every
/// `FLUSH_EVERY` bytes a second thread starts writeback of what is written
/// so far (`fdatasync`), so the data goes to disk while the upload goes on
/// and the fsync that makes the blob durable at the end has little left to
/// do (like RocksDB's `bytes_per_sync`): without it, 512 MiB uploads here
/// ran about a third slower, the kernel holding every page dirty until the
/// end. An error from an early flush fails the write, since a later fsync
/// may no longer report it.
fn write_batches(
    path: &Path,
    offset: u64,
    mut batches: tokio::sync::mpsc::Receiver<Vec<Bytes>>,
) -> std::io::Result<u64> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(offset)?;
    (&file).seek(SeekFrom::Start(offset))?;
    let file = &file;
    std::thread::scope(|scope| {
        let mut flusher: Option<(std::sync::mpsc::SyncSender<()>, _)> = None;
        let mut out = file;
        let mut written = 0u64;
        let mut unflushed = 0u64;
        while let Some(batch) = batches.blocking_recv() {
            let mut slices: Vec<std::io::IoSlice<'_>> =
                batch.iter().map(|b| std::io::IoSlice::new(b)).collect();
            let mut rest: &mut [std::io::IoSlice<'_>] = &mut slices;
            while !rest.is_empty() {
                let n = out.write_vectored(rest)?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        "disk accepted nothing",
                    ));
                }
                written += n as u64;
                unflushed += n as u64;
                std::io::IoSlice::advance_slices(&mut rest, n);
            }
            if unflushed >= FLUSH_EVERY {
                unflushed = 0;
                let (flush, _) = flusher.get_or_insert_with(|| {
                    let (flush, requests) = std::sync::mpsc::sync_channel::<()>(1);
                    let thread = scope.spawn(move || -> std::io::Result<()> {
                        while requests.recv().is_ok() {
                            file.sync_data()?;
                        }
                        Ok(())
                    });
                    (flush, thread)
                });
                // Full: a flush is pending and will cover these bytes too.
                // Disconnected: the flusher failed; its error is reported
                // below.
                let _ = flush.try_send(());
            }
        }
        if let Some((flush, thread)) = flusher {
            drop(flush);
            thread
                .join()
                .map_err(|_| std::io::Error::other("the flusher thread panicked"))??;
        }
        Ok(written)
    })
}
