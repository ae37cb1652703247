//! The package feed at the planner's I/O edge: chunks in a JetStream object store (the
//! bucket [`Subjects::packages_bucket`], replicated like any stream when the broker is a
//! cluster, reached by regional workers through their leaf node), each an object named by
//! its SHA-256. A push cuts the upload into content-defined chunks as it streams in (the
//! file is never held in memory: a chunk at a time), stores each chunk the bucket lacks, and
//! only then is the version recorded in the log (`Command::RecordPackage`), so a version in
//! the log always has its chunks.
//!
//! A sweep ([`sweeper`], asked for by `Effect::SweepFeed`: a version left the feed, or the
//! planner started) deletes every object no version in the feed needs: the chunks only a
//! removed version used, and those a push stored before it failed or was cut off. It runs
//! while no push does (a push holds [`Feed::pushing`] until its version is recorded), and
//! reads what to keep once it has the feed to itself.

use async_nats::jetstream::{self, object_store};
use shoal_shared::PackageId;
use shoal_shared::package::{
    Chunk, Chunker, MAX_CHUNK, Manifest, Sha256, chunk_object, encode_manifest, manifest_object,
};
use shoal_shared::subjects::Subjects;
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::io::AsyncRead;
use tokio::sync::{Notify, OwnedRwLockReadGuard, RwLock, mpsc};
use tokio_util::sync::CancellationToken;

/// Largest package the feed takes (bytes).
pub const MAX_PACKAGE_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Largest message of an object in the feed: a whole chunk.
const OBJECT_MESSAGE: usize = MAX_CHUNK as usize;

/// How long a sweep waits for the next entry of the bucket's listing.
const LIST_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// Chunks cut and waiting to be stored: the chunker runs ahead of the broker by this many.
const CHUNKS_AHEAD: usize = 8;

/// Why a push or a read of the feed failed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("the package feed's bucket {bucket} cannot be opened or created: {cause}")]
    Open { bucket: String, cause: String },
    #[error("the broker did not store chunk {chunk}: {cause}")]
    Store { chunk: Sha256, cause: String },
    #[error("the broker cannot say whether it has chunk {chunk}: {cause}")]
    Lookup { chunk: Sha256, cause: String },
    #[error("reading the upload failed after {read} bytes: {cause}")]
    Upload { read: u64, cause: String },
    #[error("the package is larger than the feed takes ({MAX_PACKAGE_BYTES} bytes)")]
    TooLarge,
    #[error("sweeping the package feed failed: {0}")]
    Sweep(String),
}

/// What a push stores: its chunks and manifest, or nothing (the version is in the feed
/// already: the upload is only hashed, to tell the same bytes from others without leaving
/// chunks of a refused push behind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Chunks,
    Nothing,
}

/// What a push moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushStats {
    pub chunks: usize,
    /// Chunks the bucket did not have yet.
    pub new_chunks: usize,
    pub new_bytes: u64,
}

/// What a sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub objects: usize,
    pub bytes: u64,
}

/// The feed's bucket.
#[derive(Clone)]
pub struct Feed {
    store: object_store::ObjectStore,
    /// Pushes share it, a sweep has it to itself.
    turns: Arc<RwLock<()>>,
    /// A sweep is wanted.
    sweep: Arc<Notify>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Feed")
    }
}

impl Feed {
    /// Opens the bucket, creating it if missing, kept on as many servers as the task stream
    /// ([`crate::broker::task_stream_replicas`]).
    ///
    /// # Errors
    /// The broker refused or did not answer.
    pub async fn open(js: &jetstream::Context, subjects: &Subjects) -> Result<Feed, FeedError> {
        let bucket = subjects.packages_bucket();
        let store = match js.get_object_store(&bucket).await {
            Ok(store) => store,
            Err(_) => {
                let replicas = crate::broker::task_stream_replicas(js, subjects)
                    .await
                    .map_err(|e| FeedError::Open {
                        bucket: bucket.clone(),
                        cause: e.to_string(),
                    })?;
                js.create_object_store(object_store::Config {
                    bucket: bucket.clone(),
                    description: Some("shoal package feed: chunks by SHA-256".into()),
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| FeedError::Open {
                    bucket: bucket.clone(),
                    cause: e.to_string(),
                })?
            }
        };
        Ok(Feed {
            store,
            turns: Arc::default(),
            sweep: Arc::default(),
        })
    }

    /// Held by a push from its first chunk until its version is recorded (or it failed),
    /// so that no sweep deletes a chunk it counts on.
    pub async fn pushing(&self) -> OwnedRwLockReadGuard<()> {
        self.turns.clone().read_owned().await
    }

    /// Asks [`sweeper`] for a sweep (requests while one is due make one).
    pub fn sweep_soon(&self) {
        self.sweep.notify_one();
    }

    /// Deletes every chunk and manifest in the bucket that `keep` does not name (an object
    /// of another name is not the feed's and stays); with `known` false (the log has never
    /// seen a package) it deletes nothing and says so if the bucket holds any: that feed is
    /// not this log's (another planner's, or a data dir that is not the one the feed was
    /// pushed through), and what is deleted cannot come back. The caller holds the feed to
    /// itself.
    async fn sweep(&self, keep: &BTreeSet<String>, known: bool) -> Result<Swept, FeedError> {
        let failed = |e: &dyn std::fmt::Display| FeedError::Sweep(e.to_string());
        let mut doomed = Vec::new();
        let mut listing = self.store.list().await.map_err(|e| failed(&e))?;
        // A listing waits for the broker's last entry, which an object deleted meanwhile
        // (by an admin's client) can take away: a listing that stalls is given up.
        loop {
            let next = tokio::time::timeout(LIST_STALL, futures::StreamExt::next(&mut listing));
            let Some(info) = next
                .await
                .map_err(|_| failed(&"listing the bucket stalled"))?
            else {
                break;
            };
            let info = info.map_err(|e| failed(&e))?;
            if !keep.contains(&info.name) && is_feed_object(&info.name) {
                doomed.push((info.name, info.size as u64));
            }
        }
        if !known && !doomed.is_empty() {
            return Err(FeedError::Sweep(format!(
                "the bucket holds {} chunks and manifests and this planner's log knows of no package: not deleting a feed that is not this log's",
                doomed.len()
            )));
        }
        let mut swept = Swept::default();
        for (name, size) in doomed {
            // One that cannot be deleted now is tried again at the next sweep.
            if let Err(e) = self.store.delete(&name).await {
                tracing::warn!(object = %name, error = %e, "package feed: object not deleted");
                continue;
            }
            swept.objects += 1;
            swept.bytes += size;
        }
        Ok(swept)
    }

    /// Whether the bucket holds `chunk`.
    ///
    /// # Errors
    /// The broker did not answer.
    pub async fn has(&self, chunk: &Sha256) -> Result<bool, FeedError> {
        self.has_object(&chunk_object(chunk), chunk).await
    }

    async fn has_object(&self, name: &str, chunk: &Sha256) -> Result<bool, FeedError> {
        match self.store.info(name).await {
            Ok(info) => Ok(!info.deleted),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(false),
            Err(e) => Err(FeedError::Lookup {
                chunk: *chunk,
                cause: e.to_string(),
            }),
        }
    }

    /// Stores a chunk unless the bucket has it; whether it was stored.
    ///
    /// # Errors
    /// The broker refused or did not answer.
    pub async fn put(&self, chunk: &Chunk) -> Result<bool, FeedError> {
        let sha = chunk.chunk.sha256;
        if self.has(&sha).await? {
            return Ok(false);
        }
        self.put_object(&chunk_object(&sha), &chunk.data)
            .await
            .map_err(|cause| FeedError::Store { chunk: sha, cause })?;
        Ok(true)
    }

    /// Stores an object as messages of up to [`OBJECT_MESSAGE`] bytes: a chunk is one
    /// message, so a worker reads it with two direct gets (its info, its data).
    async fn put_object(&self, name: &str, data: &[u8]) -> Result<(), String> {
        let meta = object_store::ObjectMetadata {
            name: name.to_owned(),
            chunk_size: Some(OBJECT_MESSAGE),
            ..Default::default()
        };
        let mut data = data;
        self.store
            .put(meta, &mut data)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Stores a version's manifest under its digest (see [`manifest_object`]); the digest.
    ///
    /// # Errors
    /// The broker did not store it.
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<Sha256, FeedError> {
        let (bytes, digest) = encode_manifest(manifest).map_err(|e| FeedError::Store {
            chunk: manifest.sha256,
            cause: e.to_string(),
        })?;
        if !self.has_object(&manifest_object(&digest), &digest).await? {
            self.put_object(&manifest_object(&digest), &bytes)
                .await
                .map_err(|cause| FeedError::Store {
                    chunk: digest,
                    cause,
                })?;
        }
        Ok(digest)
    }

    /// Cuts what `upload` yields into chunks and stores those the bucket lacks, then the
    /// manifest; the manifest of the version and its digest, to be recorded.
    ///
    /// # Errors
    /// The upload broke off or was too large, or the broker did not store a chunk.
    pub async fn push(
        &self,
        id: PackageId,
        version: semver::Version,
        upload: impl AsyncRead + Send + Unpin + 'static,
        store: Store,
    ) -> Result<(Manifest, Sha256, PushStats), FeedError> {
        let (tx, mut rx) = mpsc::channel::<Chunk>(CHUNKS_AHEAD);
        // The chunker reads synchronously; on a blocking thread it reads the upload through
        // a bridge as the chunks are stored.
        let upload = tokio_util::io::SyncIoBridge::new(upload);
        let cutter = tokio::task::spawn_blocking(move || {
            let mut chunker = Chunker::new(upload);
            let mut read = 0;
            for chunk in chunker.by_ref() {
                let chunk = chunk.map_err(|e| FeedError::Upload {
                    read,
                    cause: e.to_string(),
                })?;
                read += u64::from(chunk.chunk.size);
                if read > MAX_PACKAGE_BYTES {
                    return Err(FeedError::TooLarge);
                }
                if tx.blocking_send(chunk).is_err() {
                    break;
                }
            }
            Ok(chunker.finish())
        });
        let mut chunks = Vec::new();
        let mut stats = PushStats::default();
        while let Some(chunk) = rx.recv().await {
            if store == Store::Chunks && self.put(&chunk).await? {
                stats.new_chunks += 1;
                stats.new_bytes += u64::from(chunk.chunk.size);
            }
            chunks.push(chunk.chunk);
        }
        stats.chunks = chunks.len();
        let (size, sha256) = cutter.await.map_err(|e| FeedError::Upload {
            read: 0,
            cause: format!("the chunker stopped: {e}"),
        })??;
        let manifest = Manifest {
            id,
            version,
            size,
            sha256,
            chunks,
        };
        let digest = match store {
            Store::Chunks => self.put_manifest(&manifest).await?,
            Store::Nothing => {
                (encode_manifest(&manifest).map_err(|e| FeedError::Store {
                    chunk: manifest.sha256,
                    cause: e.to_string(),
                })?)
                .1
            }
        };
        Ok((manifest, digest, stats))
    }
}

/// A chunk's name (its SHA-256 in hex) or a manifest's (`manifest-` and its digest).
fn is_feed_object(name: &str) -> bool {
    let digest = name.strip_prefix("manifest-").unwrap_or(name);
    digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Sweeps the feed each time one is asked for, until `stop`: with the feed to itself, reads
/// the versions in it from the log and deletes what none of them needs. A sweep that fails
/// is tried again at the next request (and at the next start).
pub async fn sweeper(feed: Feed, log: crate::log::EventLog, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = feed.sweep.notified() => {}
            () = stop.cancelled() => return,
        }
        let _alone = feed.turns.write().await;
        let log = log.clone();
        let keep = tokio::task::spawn_blocking(move || {
            let docs: Vec<crate::domain::package::PackageDoc> =
                log.docs(crate::log::Proj::Packages)?;
            let known = !docs.is_empty();
            Ok::<_, crate::log::LogError>((crate::domain::package::feed_objects(&docs), known))
        })
        .await;
        let swept = match keep {
            Ok(Ok((keep, known))) => feed.sweep(&keep, known).await,
            Ok(Err(e)) => Err(FeedError::Sweep(e.to_string())),
            Err(e) => Err(FeedError::Sweep(e.to_string())),
        };
        match swept {
            Ok(s) if s.objects > 0 => {
                tracing::info!(
                    objects = s.objects,
                    bytes = s.bytes,
                    "package feed swept: objects no version needs deleted"
                );
            }
            Ok(_) => tracing::debug!("package feed swept: nothing to delete"),
            Err(e) => tracing::warn!(error = %e, "package feed not swept"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_chunk_and_manifest_names_are_the_feeds() {
        let hex = "ab".repeat(32);
        assert!(super::is_feed_object(&hex));
        assert!(super::is_feed_object(&format!("manifest-{hex}")));
        assert!(!super::is_feed_object("notes.txt"));
        assert!(!super::is_feed_object(&format!("x{hex}")));
        assert!(!super::is_feed_object(&"zz".repeat(32)));
    }
}
