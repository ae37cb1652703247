//! The chunk cache's bookkeeping: what it holds (each chunk's size and when it was last
//! used), what running acquisitions hold, and what to evict. The cache stays under its size
//! limit, least recently used first, never evicting a chunk an acquisition holds; and a fetch
//! that would leave less free disk than the worker's threshold is refused before it starts,
//! after evicting what may go, so a task fails with the reason instead of mid-download.

use shoal_shared::package::Sha256;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What the cache holds.
#[derive(Debug)]
pub struct Index {
    dir: PathBuf,
    chunks: HashMap<Sha256, Entry>,
    total: u64,
    /// Bytes the cache may hold.
    limit: u64,
    /// Free bytes on the cache's disk below which nothing more is fetched.
    min_free: u64,
    tick: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    used: u64,
    holds: u32,
}

impl Index {
    /// Reads what `dir` holds: every chunk file is checked against its name (a chunk that
    /// does not match, a temporary file a crash left, or anything else is removed).
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn load(dir: &Path, limit: u64, min_free: u64) -> std::io::Result<Index> {
        let mut found: Vec<(std::time::SystemTime, Sha256, u64)> = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let sha = Sha256::parse(&name).ok();
            let good = sha.filter(|sha| std::fs::read(&path).is_ok_and(|b| Sha256::of(&b) == *sha));
            match good {
                Some(sha) => {
                    let m = e.metadata()?;
                    let used = m.modified().unwrap_or(std::time::UNIX_EPOCH);
                    found.push((used, sha, m.len()));
                }
                None => {
                    tracing::warn!(file = %path.display(), "removing a file from the package cache that is not a whole chunk");
                    std::fs::remove_file(&path)?;
                }
            }
        }
        found.sort();
        let mut index = Index {
            dir: dir.to_path_buf(),
            chunks: HashMap::new(),
            total: 0,
            limit,
            min_free,
            tick: 0,
        };
        for (_, sha, size) in found {
            index.added(sha, size);
        }
        Ok(index)
    }

    /// Chunks and bytes held.
    pub fn usage(&self) -> (usize, u64) {
        (self.chunks.len(), self.total)
    }

    /// Whether the cache has `sha` (and marks it used).
    pub fn has(&mut self, sha: &Sha256) -> bool {
        self.tick += 1;
        match self.chunks.get_mut(sha) {
            Some(e) => {
                e.used = self.tick;
                true
            }
            None => false,
        }
    }

    /// Whether the cache has `sha`; if so it is marked used and held (see [`Index::hold`]).
    pub fn has_and_hold(&mut self, sha: &Sha256) -> bool {
        let has = self.has(sha);
        if has {
            self.hold(std::slice::from_ref(sha));
        }
        has
    }

    /// Holds chunks for an acquisition: none of them is evicted until released.
    pub fn hold(&mut self, chunks: &[Sha256]) {
        for sha in chunks {
            if let Some(e) = self.chunks.get_mut(sha) {
                e.holds += 1;
            }
        }
    }

    /// Releases what [`Index::hold`] held (and chunks added while held).
    pub fn release(&mut self, chunks: &[Sha256]) {
        for sha in chunks {
            if let Some(e) = self.chunks.get_mut(sha) {
                e.holds = e.holds.saturating_sub(1);
            }
        }
        self.evict_over_limit();
    }

    /// Records a chunk written to the cache, held by the acquisition that wrote it.
    pub fn added_held(&mut self, sha: Sha256, size: u64) {
        self.added(sha, size);
        if let Some(e) = self.chunks.get_mut(&sha) {
            e.holds += 1;
        }
    }

    fn added(&mut self, sha: Sha256, size: u64) {
        self.tick += 1;
        if self
            .chunks
            .insert(
                sha,
                Entry {
                    size,
                    used: self.tick,
                    holds: 0,
                },
            )
            .is_none()
        {
            self.total += size;
        }
    }

    /// Forgets a chunk found bad on disk.
    pub fn dropped(&mut self, sha: &Sha256) {
        if let Some(e) = self.chunks.remove(sha) {
            self.total -= e.size;
        }
    }

    /// Makes room for `bytes` about to be fetched: evicts least recently used chunks nobody
    /// holds while the disk would be left with less than the threshold free.
    ///
    /// # Errors
    /// Not enough can be freed: the fetch must not start.
    pub fn room_for(
        &mut self,
        bytes: u64,
        free_now: impl Fn() -> Option<u64>,
    ) -> Result<(), String> {
        loop {
            let Some(free) = free_now() else {
                return Ok(());
            };
            if free >= bytes.saturating_add(self.min_free) {
                return Ok(());
            }
            if !self.evict_one() {
                return Err(format!(
                    "not enough disk for the package: {bytes} bytes to fetch, {free} free, and {} must stay free (--min-free-disk-mb); nothing more in the package cache may be evicted",
                    self.min_free
                ));
            }
        }
    }

    fn evict_over_limit(&mut self) {
        while self.total > self.limit && self.evict_one() {}
    }

    /// Evicts the least recently used chunk nobody holds; whether there was one.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .chunks
            .iter()
            .filter(|(_, e)| e.holds == 0)
            .min_by_key(|(_, e)| e.used)
            .map(|(sha, _)| *sha);
        let Some(sha) = victim else {
            return false;
        };
        let path = self.dir.join(sha.to_hex());
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %path.display(), error = %e, "cannot evict a chunk from the package cache");
            return false;
        }
        self.dropped(&sha);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(dir: &Path, content: &[u8]) -> Sha256 {
        let sha = Sha256::of(content);
        std::fs::write(dir.join(sha.to_hex()), content).expect("writes");
        sha
    }

    #[test]
    fn the_cache_keeps_under_its_limit_evicting_the_least_recently_used_unheld_chunk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut index = Index::load(dir.path(), 25, 0).expect("loads");
        let a = chunk(dir.path(), &[1; 10]);
        index.added_held(a, 10);
        let b = chunk(dir.path(), &[2; 10]);
        index.added_held(b, 10);
        index.release(&[a, b]);
        assert!(index.has(&a), "a used after b");
        let c = chunk(dir.path(), &[3; 10]);
        index.added_held(c, 10);
        index.hold(&[a]);
        index.release(&[c]);
        assert_eq!(
            index.usage(),
            (2, 20),
            "b went: least recently used and not held"
        );
        assert!(!dir.path().join(b.to_hex()).exists());
        // Everything held: over the limit rather than evict what a task uses.
        let d = chunk(dir.path(), &[4; 10]);
        index.added_held(d, 10);
        index.hold(&[c]);
        index.release(&[]);
        assert_eq!(index.usage(), (3, 30));
    }

    #[test]
    fn a_fetch_that_would_leave_too_little_disk_free_is_refused_after_evicting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut index = Index::load(dir.path(), 1000, 100).expect("loads");
        let a = chunk(dir.path(), &[1; 50]);
        index.added_held(a, 50);
        index.release(&[a]);
        // The disk: 120 bytes free besides what the cache holds.
        let free = || Some(120 + 50 - dir_bytes(dir.path()));
        assert!(index.room_for(60, free).is_ok(), "evicting a frees 50");
        assert_eq!(index.usage(), (0, 0));
        let b = chunk(dir.path(), &[2; 50]);
        index.added_held(b, 50);
        let err = index.room_for(60, free).expect_err("b is held");
        assert!(err.contains("--min-free-disk-mb"), "{err}");
        assert!(dir.path().join(b.to_hex()).exists(), "a held chunk stays");
    }

    fn dir_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .expect("reads")
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    #[test]
    fn a_chunk_that_does_not_match_its_name_is_removed_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = chunk(dir.path(), b"good");
        let bad = Sha256::of(b"other");
        std::fs::write(dir.path().join(bad.to_hex()), b"not other").expect("writes");
        std::fs::write(dir.path().join("x.part"), b"half").expect("writes");
        let mut index = Index::load(dir.path(), 1000, 0).expect("loads");
        assert!(index.has(&good));
        assert!(!index.has(&bad));
        assert_eq!(std::fs::read_dir(dir.path()).expect("reads").count(), 1);
    }
}
