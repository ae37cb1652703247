//! Packages on a worker: acquires a version from the feed (the broker's object store, read
//! with direct gets only: the worker creates no consumer and writes nothing there), keeps
//! its chunks in a content-addressed cache shared by every slot, and puts the file together
//! for a task.
//!
//! What is trusted: the signed task carries the manifest's digest; the manifest fetched by
//! that digest names every chunk's digest and the whole file's. Each is checked before it is
//! used (and an object larger than it may be is refused before it is read), so the broker
//! (or anyone who can write to the feed) can make an acquisition fail but never change what
//! runs. A chunk is written to the cache under a temporary name,
//! synced and then renamed, so no half chunk survives a crash; a chunk is fetched once even
//! when several tasks want it at the same time.

use async_nats::jetstream::{self, stream::Stream};
use base64::Engine as _;
use futures::StreamExt as _;
use shoal_shared::messages::PackageSpec;
use shoal_shared::package::{
    ChunkRef, Manifest, Sha256, chunk_object, manifest_object, verify_chunk,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt as _;

mod cache;

/// Chunks fetched at once for one acquisition.
const FETCH_AHEAD: usize = 8;
/// Largest manifest a worker reads (a 4 GiB package of 64 KiB chunks has about 5 MB).
const MAX_MANIFEST: usize = 64 * 1024 * 1024;
/// Times a chunk whose bytes do not match its digest is fetched before the task fails.
const FETCH_TRIES: u32 = 2;

/// Why an acquisition failed: `retry` when waiting may help (the feed did not answer), not
/// when what came was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireError {
    pub reason: String,
    pub retry: bool,
}

impl AcquireError {
    fn wrong(reason: String) -> AcquireError {
        AcquireError {
            reason,
            retry: false,
        }
    }
    fn unavailable(reason: String) -> AcquireError {
        AcquireError {
            reason,
            retry: true,
        }
    }
}

/// What one acquisition moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Acquired {
    pub chunks_fetched: usize,
    pub bytes_fetched: u64,
    pub chunks_cached: usize,
    pub bytes_cached: u64,
}

/// The feed as a worker reads it, and its chunk cache.
#[derive(Clone)]
pub struct Acquirer {
    stream: Stream<()>,
    bucket: String,
    cache: PathBuf,
    /// What the cache holds and what acquisitions hold.
    index: Arc<Mutex<cache::Index>>,
    /// A lock per chunk being fetched, so two tasks fetch it once.
    fetching: Arc<Mutex<HashMap<Sha256, Arc<tokio::sync::Mutex<()>>>>>,
}

impl std::fmt::Debug for Acquirer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acquirer")
            .field("bucket", &self.bucket)
            .field("cache", &self.cache)
            .finish()
    }
}

impl Acquirer {
    /// The feed `bucket` through `js`, with the cache in `cache` (made if missing; every
    /// chunk in it checked, and what is not a whole chunk removed), holding at most `limit`
    /// bytes and fetching nothing that would leave less than `min_free` bytes free.
    ///
    /// # Errors
    /// The cache directory cannot be made or read.
    pub async fn new(
        js: &jetstream::Context,
        bucket: &str,
        cache: PathBuf,
        limit: u64,
        min_free: u64,
    ) -> std::io::Result<Acquirer> {
        tokio::fs::create_dir_all(&cache).await?;
        let dir = cache.clone();
        let index = tokio::task::spawn_blocking(move || cache::Index::load(&dir, limit, min_free))
            .await
            .map_err(std::io::Error::other)??;
        let (chunks, bytes) = index.usage();
        tracing::info!(chunks, bytes, dir = %cache.display(), "package cache checked");
        Ok(Acquirer {
            stream: js
                .get_stream_no_info(format!("OBJ_{bucket}"))
                .await
                .map_err(|e| std::io::Error::other(format!("the package feed's stream: {e}")))?,
            bucket: bucket.to_owned(),
            cache,
            index: Arc::new(Mutex::new(index)),
            fetching: Arc::default(),
        })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, cache::Index> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Acquires the package into `file`: every chunk from the cache or the feed, checked,
    /// and the whole file checked against the signed digest.
    ///
    /// # Errors
    /// Why the package could not be acquired, for the task's failure reason.
    pub async fn acquire(&self, spec: &PackageSpec, file: &Path) -> Result<Acquired, AcquireError> {
        let manifest = self.manifest(spec).await?;
        let mut unique: Vec<ChunkRef> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for c in &manifest.chunks {
            if seen.insert(c.sha256) {
                unique.push(*c);
            }
        }
        let missing: u64 = {
            let mut index = self.index();
            let missing = unique.iter().filter(|c| !index.has(&c.sha256));
            missing.map(|c| u64::from(c.size)).sum()
        };
        let cache = self.cache.clone();
        self.index()
            .room_for(missing, || free_bytes(&cache))
            .map_err(AcquireError::wrong)?;
        // Every chunk this acquisition ensured is held until it ends, however it ends.
        let held = Held {
            acquirer: self,
            chunks: Arc::default(),
        };
        let mut acquired = Acquired::default();
        // Each fetch owns what it uses, so the futures are Send whatever borrows them.
        let fetches = unique.into_iter().map(|c| {
            let this = self.clone();
            let held = held.chunks.clone();
            async move { this.ensure(&c, &held).await }
        });
        let mut results = futures::stream::iter(fetches).buffer_unordered(FETCH_AHEAD);
        while let Some(r) = results.next().await {
            let (chunk, fetched) = r?;
            if fetched {
                acquired.chunks_fetched += 1;
                acquired.bytes_fetched += u64::from(chunk.size);
            } else {
                acquired.chunks_cached += 1;
                acquired.bytes_cached += u64::from(chunk.size);
            }
        }
        drop(results);
        self.assemble(&manifest, file).await?;
        Ok(acquired)
    }

    /// The manifest the task's digest names, checked against the task.
    async fn manifest(&self, spec: &PackageSpec) -> Result<Manifest, AcquireError> {
        let name = manifest_object(&spec.manifest_sha256);
        let bytes = self.object(&name, MAX_MANIFEST).await?;
        let got = Sha256::of(&bytes);
        if got != spec.manifest_sha256 {
            return Err(AcquireError::wrong(format!(
                "the feed's manifest of package {} {} has digest {got}, not the signed {}",
                spec.id, spec.version, spec.manifest_sha256
            )));
        }
        let m: Manifest = shoal_shared::codec::decode("package manifest", &bytes)
            .map_err(|e| AcquireError::wrong(e.to_string()))?;
        m.check().map_err(AcquireError::wrong)?;
        if (&m.id, &m.version, m.size, m.sha256)
            != (&spec.id, &spec.version, spec.size, spec.sha256)
        {
            return Err(AcquireError::wrong(format!(
                "the manifest names package {} {}, not {} {}",
                m.id, m.version, spec.id, spec.version
            )));
        }
        Ok(m)
    }

    /// Makes sure the cache holds `chunk`; whether it had to be fetched.
    async fn ensure(
        &self,
        chunk: &ChunkRef,
        held: &Mutex<Vec<Sha256>>,
    ) -> Result<(ChunkRef, bool), AcquireError> {
        let lock = {
            let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
            fetching.entry(chunk.sha256).or_default().clone()
        };
        let guard = lock.lock().await;
        let path = self.chunk_path(&chunk.sha256);
        // Held from here on (so nothing evicts it before the file is put together).
        let fetched = if self.index().has_and_hold(&chunk.sha256) {
            false
        } else {
            self.fetch_into_cache(chunk, &path).await?;
            self.index().added_held(chunk.sha256, u64::from(chunk.size));
            true
        };
        (held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
        .push(chunk.sha256);
        drop(guard);
        let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::strong_count(&lock) <= 2 {
            fetching.remove(&chunk.sha256);
        }
        Ok((*chunk, fetched))
    }

    /// Fetches a chunk, checks it (fetching once more if it does not match), and writes it
    /// into the cache atomically.
    async fn fetch_into_cache(&self, chunk: &ChunkRef, path: &Path) -> Result<(), AcquireError> {
        let mut last = String::new();
        for _ in 0..FETCH_TRIES {
            let data = (self.object(&chunk_object(&chunk.sha256), chunk.size as usize)).await?;
            match verify_chunk(chunk, &data) {
                Ok(()) => {
                    return write_atomically(path, &data)
                        .await
                        .map_err(AcquireError::wrong);
                }
                Err(e) => last = e,
            }
        }
        Err(AcquireError::wrong(format!(
            "the feed served a bad chunk {FETCH_TRIES} times: {last}"
        )))
    }

    /// Puts the file together from the cache, checking every chunk and the whole digest (a
    /// chunk changed or gone on disk since it was checked is fetched once more).
    async fn assemble(&self, m: &Manifest, file: &Path) -> Result<(), AcquireError> {
        let io = |e: std::io::Error| AcquireError::wrong(format!("{}: {e}", file.display()));
        let mut out = tokio::fs::File::create(file).await.map_err(io)?;
        let mut whole = ring::digest::Context::new(&ring::digest::SHA256);
        for c in &m.chunks {
            let path = self.chunk_path(&c.sha256);
            let mut data = tokio::fs::read(&path).await.unwrap_or_default();
            if verify_chunk(c, &data).is_err() {
                tracing::warn!(chunk = %c.sha256, "a cached chunk does not match its digest; fetching it again");
                self.fetch_into_cache(c, &path).await?;
                data = tokio::fs::read(&path).await.map_err(io)?;
            }
            whole.update(&data);
            out.write_all(&data).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        let got = Sha256(whole.finish().as_ref().try_into().unwrap_or([0; 32]));
        if got != m.sha256 {
            return Err(AcquireError::wrong(format!(
                "package {} {} put together has digest {got}, not {}",
                m.id, m.version, m.sha256
            )));
        }
        Ok(())
    }

    fn chunk_path(&self, sha: &Sha256) -> PathBuf {
        self.cache.join(sha.to_hex())
    }

    /// An object's bytes: its info (last message on its meta subject), then its messages;
    /// one that says it is larger than `max` bytes is refused before anything is read.
    async fn object(&self, name: &str, max: usize) -> Result<Vec<u8>, AcquireError> {
        let key = base64::engine::general_purpose::URL_SAFE.encode(name);
        let meta_subject = format!("$O.{}.M.{key}", self.bucket);
        let meta = self
            .stream
            .direct_get_last_for_subject(meta_subject)
            .await
            .map_err(|e| got_error(name, &e))?;
        let info: ObjectInfo = serde_json::from_slice(&meta.payload)
            .map_err(|e| AcquireError::wrong(format!("object {name}: unreadable info: {e}")))?;
        if info.deleted {
            return Err(AcquireError::wrong(format!(
                "the package feed's object {name} was deleted"
            )));
        }
        if info.size > max {
            return Err(AcquireError::wrong(format!(
                "the package feed's object {name} says it has {} bytes, more than the {max} it may",
                info.size
            )));
        }
        let data_subject = format!("$O.{}.C.{}", self.bucket, info.nuid);
        let mut data = Vec::with_capacity(info.size);
        let mut from = None;
        while data.len() < info.size {
            let msg = self
                .stream
                .direct_get_next_for_subject(data_subject.as_str(), from)
                .await
                .map_err(|e| got_error(name, &e))?;
            data.extend_from_slice(&msg.payload);
            if data.len() > max {
                return Err(AcquireError::wrong(format!(
                    "the package feed's object {name} is longer than it says"
                )));
            }
            from = Some(msg.sequence + 1);
        }
        Ok(data)
    }
}

/// The chunks an acquisition holds in the cache, released when it ends.
struct Held<'a> {
    acquirer: &'a Acquirer,
    chunks: Arc<Mutex<Vec<Sha256>>>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let chunks = std::mem::take(
            &mut *self
                .chunks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        self.acquirer.index().release(&chunks);
    }
}

/// Free bytes on the disk of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available().saturating_mul(st.fragment_size()))
}

/// A failed direct get: an object the feed does not have is final; anything else (a
/// timeout, no answer) may pass.
fn got_error(name: &str, e: &jetstream::stream::DirectGetError) -> AcquireError {
    use jetstream::stream::DirectGetErrorKind;
    match e.kind() {
        DirectGetErrorKind::NotFound => {
            AcquireError::wrong(format!("the package feed has no object {name}"))
        }
        _ => AcquireError::unavailable(format!("reading object {name}: {e}")),
    }
}

/// The fields of an object's info the worker reads (JSON, as every object store client
/// writes it).
#[derive(serde::Deserialize)]
struct ObjectInfo {
    #[serde(default)]
    nuid: String,
    #[serde(default)]
    size: usize,
    #[serde(default)]
    deleted: bool,
}

/// Writes `data` to `path` through a temporary file that is synced, then renamed.
async fn write_atomically(path: &Path, data: &[u8]) -> Result<(), String> {
    let part = path.with_extension(format!("{}.part", uuid::Uuid::new_v4().simple()));
    let write = async {
        let mut f = tokio::fs::File::create(&part).await?;
        f.write_all(data).await?;
        f.sync_all().await?;
        tokio::fs::rename(&part, path).await
    };
    write.await.map_err(|e| {
        let _ = std::fs::remove_file(&part);
        format!("cannot write chunk to the cache {}: {e}", path.display())
    })
}
