//! Packages: what one version of a package is (its [`Manifest`]: id, semantic version, size,
//! SHA-256 of the whole file, and the content-defined chunks it is made of), how a file is cut
//! into chunks, and the checks a reader makes of what it fetched.
//!
//! Chunks are cut where the content says (FastCDC, 2020 variant), not at fixed offsets, so
//! a change in one place of a file changes only the chunks around it: two versions share
//! every other chunk, and a feed or a cache that holds chunks by hash moves only what
//! changed. The cut points are a pure function of the bytes, so the planner, a worker and a
//! test cut the same file the same way.

use crate::names::PackageId;
use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Read;

/// Smallest chunk, except a file's last.
pub const MIN_CHUNK: u32 = 16 * 1024;
/// The size chunks are cut at on average.
pub const AVG_CHUNK: u32 = 64 * 1024;
/// Largest chunk: a cut is forced here.
pub const MAX_CHUNK: u32 = 256 * 1024;

/// A SHA-256, written as 64 characters of lowercase hex (in MessagePack too, so the log and
/// the API show the same string).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256 {
        Sha256::from_digest(ring::digest::digest(&SHA256, bytes))
    }

    fn from_digest(d: ring::digest::Digest) -> Sha256 {
        let mut out = [0; 32];
        out.copy_from_slice(d.as_ref());
        Sha256(out)
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.0)
    }

    /// Parses 64 characters of lowercase hex.
    ///
    /// # Errors
    /// Anything else, named.
    pub fn parse(s: &str) -> Result<Sha256, String> {
        crate::hex::decode(s)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(Sha256)
            .ok_or_else(|| format!("{s:?} is not a SHA-256 (64 characters of lowercase hex)"))
    }
}

impl TryFrom<String> for Sha256 {
    type Error = String;
    fn try_from(s: String) -> Result<Sha256, String> {
        Sha256::parse(&s)
    }
}

impl From<Sha256> for String {
    fn from(d: Sha256) -> String {
        d.to_hex()
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.to_hex())
    }
}

/// One chunk of a package: its SHA-256 (its name in the feed and in a cache) and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub sha256: Sha256,
    pub size: u32,
}

/// One version of a package, as pushed to the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub id: PackageId,
    pub version: semver::Version,
    /// Bytes of the whole file.
    pub size: u64,
    /// SHA-256 of the whole file.
    pub sha256: Sha256,
    /// The file's chunks, in order.
    pub chunks: Vec<ChunkRef>,
}

impl Manifest {
    /// Checks that the chunks add up to the size (what a manifest from outside must hold
    /// before anyone fetches by it).
    ///
    /// # Errors
    /// Names the mismatch.
    pub fn check(&self) -> Result<(), String> {
        let sum: u64 = self.chunks.iter().map(|c| u64::from(c.size)).sum();
        if sum != self.size {
            return Err(format!(
                "package {} {}: its chunks add up to {sum} bytes, not its size {}",
                self.id, self.version, self.size
            ));
        }
        if let Some(c) = self
            .chunks
            .iter()
            .find(|c| c.size == 0 || c.size > MAX_CHUNK)
        {
            return Err(format!(
                "package {} {}: chunk {} has {} bytes (1 to {MAX_CHUNK})",
                self.id, self.version, c.sha256, c.size
            ));
        }
        Ok(())
    }
}

/// One acquisition of a package version by a worker: what crossed from the feed, what its
/// cache already held, and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acquisition {
    pub id: PackageId,
    pub version: semver::Version,
    pub chunks_fetched: u64,
    pub bytes_fetched: u64,
    pub chunks_cached: u64,
    pub bytes_cached: u64,
    pub duration_ms: u64,
}

/// Acquisitions of a package version by one pool's workers, added up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Acquisitions {
    pub count: u64,
    pub chunks_fetched: u64,
    pub bytes_fetched: u64,
    pub chunks_cached: u64,
    pub bytes_cached: u64,
}

impl Acquisitions {
    /// Adds one acquisition.
    pub fn add(&mut self, a: &Acquisition) {
        self.count += 1;
        self.chunks_fetched += a.chunks_fetched;
        self.bytes_fetched += a.bytes_fetched;
        self.chunks_cached += a.chunks_cached;
        self.bytes_cached += a.bytes_cached;
    }

    /// Bytes the tasks used (each got the whole package).
    pub fn bytes_used(&self) -> u64 {
        self.bytes_fetched + self.bytes_cached
    }
}

/// The name of a chunk's object in the feed: its SHA-256.
pub fn chunk_object(sha: &Sha256) -> String {
    sha.to_hex()
}

/// The name of a manifest's object in the feed, by the SHA-256 of its encoding.
pub fn manifest_object(digest: &Sha256) -> String {
    format!("manifest-{digest}")
}

/// A manifest as stored in the feed (MessagePack, named fields: deterministic) and the
/// SHA-256 of those bytes, which a signed task carries.
///
/// # Errors
/// It cannot be encoded.
pub fn encode_manifest(m: &Manifest) -> Result<(Vec<u8>, Sha256), crate::codec::CodecError> {
    let bytes = crate::codec::encode(m)?;
    let sha = Sha256::of(&bytes);
    Ok((bytes, sha))
}

/// A chunk cut from a file, with its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub chunk: ChunkRef,
    pub data: Vec<u8>,
}

/// Cuts what `reader` yields into content-defined chunks, one at a time (at most
/// [`MAX_CHUNK`] bytes in memory besides the chunk handed out), and hashes the whole as it
/// goes: [`Chunker::finish`] says size and SHA-256 once every chunk was taken.
pub struct Chunker<R: Read> {
    cuts: fastcdc::v2020::StreamCDC<R>,
    whole: Context,
    size: u64,
}

impl<R: Read> fmt::Debug for Chunker<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunker").field("size", &self.size).finish()
    }
}

impl<R: Read> Chunker<R> {
    /// A chunker over `reader`.
    pub fn new(reader: R) -> Chunker<R> {
        Chunker {
            cuts: fastcdc::v2020::StreamCDC::new(reader, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK),
            whole: Context::new(&SHA256),
            size: 0,
        }
    }

    /// Size and SHA-256 of everything chunked so far.
    pub fn finish(self) -> (u64, Sha256) {
        (self.size, Sha256::from_digest(self.whole.finish()))
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Chunk>;

    fn next(&mut self) -> Option<Self::Item> {
        let cut = match self.cuts.next()? {
            Ok(cut) => cut,
            Err(fastcdc::v2020::Error::IoError(e)) => return Some(Err(e)),
            Err(e) => return Some(Err(std::io::Error::other(e.to_string()))),
        };
        self.whole.update(&cut.data);
        self.size += cut.data.len() as u64;
        let size = u32::try_from(cut.data.len()).unwrap_or(u32::MAX);
        Some(Ok(Chunk {
            chunk: ChunkRef {
                sha256: Sha256::of(&cut.data),
                size,
            },
            data: cut.data,
        }))
    }
}

/// Checks that `data` is the chunk `chunk` names.
///
/// # Errors
/// Says what arrived instead.
pub fn verify_chunk(chunk: &ChunkRef, data: &[u8]) -> Result<(), String> {
    let got = Sha256::of(data);
    if got != chunk.sha256 || data.len() != chunk.size as usize {
        return Err(format!(
            "chunk {} ({} bytes) arrived as {got} ({} bytes)",
            chunk.sha256,
            chunk.size,
            data.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
