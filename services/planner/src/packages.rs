//! The package feed at the planner's I/O edge: chunks in a JetStream object store (the
//! bucket [`Subjects::packages_bucket`], replicated like any stream when the broker is a
//! cluster, reached by regional workers through their leaf node), each an object named by
//! its SHA-256. A push cuts the upload into content-defined chunks as it streams in (the
//! file is never held in memory: a chunk at a time), stores each chunk the bucket lacks, and
//! only then is the version recorded in the log (`Command::RecordPackage`), so a version in
//! the log always has its chunks.

use async_nats::jetstream::{self, object_store};
use shoal_shared::PackageId;
use shoal_shared::package::{
    Chunk, Chunker, MAX_CHUNK, Manifest, Sha256, chunk_object, encode_manifest, manifest_object,
};
use shoal_shared::subjects::Subjects;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

/// Largest package the feed takes (bytes).
pub const MAX_PACKAGE_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Largest message of an object in the feed: a whole chunk.
const OBJECT_MESSAGE: usize = MAX_CHUNK as usize;

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

/// The feed's bucket.
#[derive(Clone)]
pub struct Feed {
    store: object_store::ObjectStore,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Feed")
    }
}

impl Feed {
    /// Opens the bucket, creating it if missing.
    ///
    /// # Errors
    /// The broker refused or did not answer.
    pub async fn open(js: &jetstream::Context, subjects: &Subjects) -> Result<Feed, FeedError> {
        let bucket = subjects.packages_bucket();
        let store = match js.get_object_store(&bucket).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: bucket.clone(),
                    description: Some("shoal package feed: chunks by SHA-256".into()),
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| FeedError::Open {
                    bucket: bucket.clone(),
                    cause: e.to_string(),
                })?,
        };
        Ok(Feed { store })
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
