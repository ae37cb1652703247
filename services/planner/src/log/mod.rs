//! The event log in sled, in one tree so that a batch is one atomic `apply_batch` (sled's
//! multi-tree transactions read every key before writing it, which cost the writer most of
//! its time). Keys start with a one-byte space:
//!
//! | space | key | value |
//! |---|---|---|
//! | `e` | sequence of the chunk's first record | a chunk: records, each a MessagePack [`Envelope`] chained by SHA-256 to the previous record, framed by a 4-byte length |
//! | `s` | stream, 0, the chunk's first sequence | sequences (8 bytes each) of that stream's records in the chunk |
//! | `i` | event id of a fact reported from outside | its sequence (de-duplication) |
//! | `m` | `head`, `checkpoint` | the chain's end; the sequence the projections are up to date with, kept only while replay rewrites them (else the head) |
//! | `p` | projection tag, document key | the projection document or row |
//!
//! A batch's records are cut into chunks of about [`CHUNK_BYTES`], so the log costs a few
//! sled keys per hundred events rather than three per event, and a replay reads it in large
//! sequential values. Projections are written in the same `apply_batch` as the records they
//! derive from.
//!
//! Only the [`writer`] appends, on a thread of its own; [`handover`] is how it hands task
//! messages and effects on without waiting for their consumers. Readers (the HTTP API,
//! replay) read committed keys. sled's types stay inside this module.

pub mod handover;
pub mod writer;

use crate::domain::state::{
    DeploymentDoc, IdempotencyDoc, PackageDoc, PoolDoc, Row, SessionDoc, TargetDoc, TaskDoc,
    TokenDoc, WebhookDoc, WorkerDoc,
};
use crate::domain::{DocKey, State};
use serde::de::DeserializeOwned;
use shoal_shared::api::LogCursor;
use shoal_shared::codec::{self, CodecError};
use shoal_shared::events::{Envelope, Event};
use shoal_shared::{DeploymentId, EventId, OutputLine, TaskId};
use std::collections::BTreeMap;
use std::ops::{Bound, Range};
use std::path::Path;

/// Why the log could not be read or written. All of these are infrastructure failures: the
/// planner stops rather than answer from a log it cannot trust. Each keeps the error it came
/// from.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Another process, most likely a running planner, holds the log's lock: stop it first.
    /// `pid`: the process that holds it, as it wrote in [`holder_file`] (sled's own lock
    /// file names nobody).
    #[error("another process{} holds the event log, most likely a planner: {cause}", pid.map_or(String::new(), |p| format!(" (pid {p})")))]
    Locked {
        pid: Option<u32>,
        cause: StorageError,
    },
    #[error("event log storage failed: {0}")]
    Sled(StorageError),
    #[error("event log record could not be decoded: {0}")]
    Codec(CodecError),
    #[error("event log is inconsistent: {0}")]
    Corrupt(String),
}

// Conversions by hand: the messages already include the cause, so it is not also a `source`
// (an error chain would print it twice); the cause stays in the variant.
impl From<sled::Error> for LogError {
    fn from(e: sled::Error) -> Self {
        if is_lock_error(&e) {
            LogError::Locked {
                pid: None,
                cause: StorageError(e),
            }
        } else {
            LogError::Sled(StorageError(e))
        }
    }
}

/// A failure of the storage engine. Opaque, so that sled's types stay inside `log/` and the
/// engine can change without touching the rest of the planner; its text is sled's.
#[derive(Debug)]
pub struct StorageError(sled::Error);

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A value read from the log (a chunk, a key or a document), shared with the storage engine's
/// cache rather than copied: replay reads the whole log through these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored(sled::IVec);

impl std::ops::Deref for Stored {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Stored {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The file next to the log dir `dir` (`DATA_DIR/log.pid`) where the process that opened the
/// log writes its pid, so that a second one refused the lock can name it.
pub fn holder_file(dir: &Path) -> std::path::PathBuf {
    dir.with_extension("pid")
}

/// sled says that another process holds the database's lock only in the text of an `Io`
/// error of kind `Other` (`third_party/sled/src/config.rs`): this is the one place that reads
/// it, so that callers match on [`LogError::Locked`].
fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io)
        if io.kind() == std::io::ErrorKind::Other
            && io.to_string().starts_with("could not acquire lock"))
}

impl From<CodecError> for LogError {
    fn from(e: CodecError) -> Self {
        LogError::Codec(e)
    }
}

/// Records of a batch are cut into chunks of about this many bytes. Small enough that a sled
/// leaf of chunks stays below sled's blob threshold (128 KiB), large enough that the log
/// costs few keys.
pub const CHUNK_BYTES: usize = 8 * 1024;

const CHUNKS: u8 = b'e';
const STREAMS: u8 = b's';
const FACTS: u8 = b'i';
const PROJ: u8 = b'p';

// The `m` space.
const HEAD_KEY: &[u8] = b"mhead";
const CHECKPOINT_KEY: &[u8] = b"mcheckpoint";
/// Where the event feed stands: its stream's sequence and the log's (`event_feed`).
const FEED_KEY: &[u8] = b"mfeed";

/// The projections, each a key space of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proj {
    Pools,
    Targets,
    Deployments,
    Tasks,
    Workers,
    Outbox,
    Output,
    /// API tokens by their hash.
    Tokens,
    Packages,
    /// Idempotency keys of deployment requests.
    Idempotency,
    Webhooks,
    /// Dashboard sessions within their day (open or ended), by id.
    Sessions,
}

impl Proj {
    /// Every projection.
    pub const ALL: [Proj; 12] = [
        Proj::Pools,
        Proj::Targets,
        Proj::Deployments,
        Proj::Tasks,
        Proj::Workers,
        Proj::Outbox,
        Proj::Output,
        Proj::Tokens,
        Proj::Packages,
        Proj::Idempotency,
        Proj::Webhooks,
        Proj::Sessions,
    ];

    /// The projection's name.
    pub fn name(self) -> &'static str {
        match self {
            Proj::Pools => "pools",
            Proj::Targets => "targets",
            Proj::Deployments => "deployments",
            Proj::Tasks => "tasks",
            Proj::Workers => "workers",
            Proj::Outbox => "outbox",
            Proj::Output => "output",
            Proj::Tokens => "tokens",
            Proj::Packages => "packages",
            Proj::Idempotency => "idempotency",
            Proj::Webhooks => "webhooks",
            Proj::Sessions => "sessions",
        }
    }

    fn tag(self) -> u8 {
        match self {
            Proj::Pools => b'P',
            Proj::Targets => b'T',
            Proj::Deployments => b'D',
            Proj::Tasks => b'K',
            Proj::Workers => b'W',
            Proj::Outbox => b'O',
            Proj::Output => b'L',
            Proj::Tokens => b'X',
            Proj::Packages => b'G',
            Proj::Idempotency => b'Y',
            Proj::Webhooks => b'H',
            Proj::Sessions => b'S',
        }
    }

    fn of_tag(tag: u8) -> Option<Proj> {
        Proj::ALL.into_iter().find(|p| p.tag() == tag)
    }

    /// The prefix of the projection's keys in the tree.
    fn prefix(self) -> [u8; 2] {
        [PROJ, self.tag()]
    }

    /// A document's key in the tree.
    pub fn key(self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(key.len() + 2);
        k.extend_from_slice(&self.prefix());
        k.extend_from_slice(key);
        k
    }
}

/// One write to a projection: the projection, the document's key, and the value (`None`:
/// remove).
pub type ProjWrite = (Proj, Vec<u8>, Option<Vec<u8>>);

/// Where a document lives, and its encoding (`None`: removed).
pub fn doc_write(state: &State, key: &DocKey) -> Result<ProjWrite, LogError> {
    fn enc<T: serde::Serialize>(v: Option<&T>) -> Result<Option<Vec<u8>>, LogError> {
        Ok(v.map(codec::encode).transpose()?)
    }
    Ok(match key {
        DocKey::Pool(n) => (Proj::Pools, n.as_str().into(), enc(state.pools.get(n))?),
        DocKey::Target(n) => (Proj::Targets, n.as_str().into(), enc(state.targets.get(n))?),
        DocKey::Deployment(id) => (
            Proj::Deployments,
            id.as_bytes().to_vec(),
            enc(state.deployments.get(id))?,
        ),
        DocKey::Task(id) => (
            Proj::Tasks,
            id.as_bytes().to_vec(),
            enc(state.tasks.get(id))?,
        ),
        DocKey::Worker(n) => (Proj::Workers, n.as_str().into(), enc(state.workers.get(n))?),
        DocKey::Outbox(task, attempt) => (
            Proj::Outbox,
            outbox_key(task, *attempt),
            state.outbox.contains(&(*task, *attempt)).then(Vec::new),
        ),
        DocKey::Token(hash) => (
            Proj::Tokens,
            hash.as_bytes().into(),
            enc(state.tokens.get(hash))?,
        ),
        DocKey::Package(id, version) => (
            Proj::Packages,
            package_key(id, version),
            enc(state.packages.get(&(id.clone(), version.clone())))?,
        ),
        DocKey::Webhook(name) => (
            Proj::Webhooks,
            name.as_str().into(),
            enc(state.webhooks.get(name))?,
        ),
        DocKey::Session(id) => (
            Proj::Sessions,
            id.as_bytes().into(),
            enc(state.sessions.get(id))?,
        ),
        DocKey::Idempotency(key) => (
            Proj::Idempotency,
            key.as_bytes().to_vec(),
            enc(state.idempotency.get(key))?,
        ),
    })
}

/// Where a row lives and its encoding.
pub fn row_write(row: &Row) -> Result<(Proj, Vec<u8>, Vec<u8>), LogError> {
    Ok(match row {
        Row::Output {
            task,
            attempt,
            delivery,
            line_no,
            line,
        } => {
            let at = LogCursor {
                attempt: *attempt,
                run: *delivery,
                line: *line_no,
            };
            (Proj::Output, output_key(task, at), codec::encode(line)?)
        }
    })
}

/// The key of an output line (without its projection prefix): task, attempt, run (the
/// delivery), line number, so a task's lines sort in order.
fn output_key(task: &TaskId, at: LogCursor) -> Vec<u8> {
    let mut key = outbox_key(task, at.attempt);
    key.extend_from_slice(&at.run.to_be_bytes());
    key.extend_from_slice(&at.line.to_be_bytes());
    key
}

/// Where an output line's key (after the task) puts it; the error names a key of another
/// shape.
fn output_cursor(rest: &[u8]) -> Result<LogCursor, LogError> {
    let bad = || LogError::Corrupt(format!("output key of {} bytes", rest.len() + 16));
    if rest.len() != 16 {
        return Err(bad());
    }
    let number = |at: usize| <[u8; 4]>::try_from(&rest[at..at + 4]).map_or(0, u32::from_be_bytes);
    Ok(LogCursor {
        attempt: number(0),
        run: number(4),
        line: be_u64(&rest[8..], "output line number")?,
    })
}

/// A package version's key in its projection: `<id>/<version>`.
pub fn package_key(id: &shoal_shared::PackageId, version: &semver::Version) -> Vec<u8> {
    format!("{id}/{version}").into_bytes()
}

/// An outbox entry's key in its projection: the task id, then the attempt (big-endian).
pub fn outbox_key(task: &TaskId, attempt: u32) -> Vec<u8> {
    let mut key = task.as_bytes().to_vec();
    key.extend_from_slice(&attempt.to_be_bytes());
    key
}

fn chunk_key(first: u64) -> [u8; 9] {
    let mut k = [CHUNKS; 9];
    k[1..].copy_from_slice(&first.to_be_bytes());
    k
}

fn stream_prefix(stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 10);
    key.push(STREAMS);
    key.extend_from_slice(stream.as_bytes());
    key.push(0);
    key
}

fn stream_key(stream: &str, chunk: u64) -> Vec<u8> {
    let mut key = stream_prefix(stream);
    key.extend_from_slice(&chunk.to_be_bytes());
    key
}

fn fact_key(id: &EventId) -> [u8; 17] {
    let mut k = [FACTS; 17];
    k[1..].copy_from_slice(id.as_bytes());
    k
}

fn be_u64(bytes: &[u8], what: &str) -> Result<u64, LogError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| LogError::Corrupt(format!("{what} has {} bytes, want 8", bytes.len())))
}

/// SHA-256 of a stored record.
pub fn record_hash(bytes: &[u8]) -> [u8; 32] {
    // The one definition the chain and an offline audit agree on.
    shoal_shared::audit::record_hash(bytes)
}

/// The end of the chain: last sequence number and the hash of its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// One encoded record of a batch.
#[derive(Debug)]
pub struct Record {
    pub seq: u64,
    pub bytes: Vec<u8>,
    pub stream: String,
    /// The id of a fact reported from outside (a worker report, a rejected message), kept
    /// for de-duplication; `None` for facts the planner decided itself.
    pub fact: Option<EventId>,
}

/// Everything one batch writes, atomically.
#[derive(Debug, Default)]
pub struct BatchWrite {
    pub records: Vec<Record>,
    pub proj: Vec<ProjWrite>,
    pub head: Head,
}

/// How consecutive records of the given sizes are cut into chunks: each chunk is closed once
/// it holds [`CHUNK_BYTES`] or more.
pub fn cut_chunks(sizes: impl IntoIterator<Item = usize>) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes, mut n) = (0, 0, 0);
    for size in sizes {
        bytes += size + 4;
        n += 1;
        if bytes >= CHUNK_BYTES {
            out.push(start..n);
            start = n;
            bytes = 0;
        }
    }
    if start < n {
        out.push(start..n);
    }
    out
}

/// A chunk's value: its records, each after its length (4 bytes, big-endian).
pub fn encode_chunk<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let len = u32::try_from(r.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// The records of a chunk's value.
///
/// # Errors
/// The value is not a well-framed chunk.
pub fn chunk_records(value: &[u8]) -> Result<Vec<&[u8]>, LogError> {
    let mut out = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(LogError::Corrupt(
                "chunk ends inside a record length".into(),
            ));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if tail.len() < len {
            return Err(LogError::Corrupt(format!(
                "chunk record of {len} bytes, only {} left",
                tail.len()
            )));
        }
        out.push(&tail[..len]);
        rest = &tail[len..];
    }
    Ok(out)
}

/// Adds consecutive records to a batch: cut into chunks, each with its stream index rows,
/// and the ids of the facts among them.
fn put_records(b: &mut sled::Batch, records: &[Record]) {
    for range in cut_chunks(records.iter().map(|r| r.bytes.len())) {
        let chunk = &records[range];
        let first = chunk[0].seq;
        b.insert(
            &chunk_key(first),
            encode_chunk(chunk.iter().map(|r| r.bytes.as_slice())),
        );
        for (k, v) in stream_rows(first, chunk.iter().map(|r| (r.seq, r.stream.as_str()))) {
            b.insert(k, v);
        }
        for r in chunk {
            if let Some(id) = &r.fact {
                b.insert(&fact_key(id), &r.seq.to_be_bytes());
            }
        }
    }
}

/// The stream index rows of one chunk: for every stream, the sequences of its records.
pub fn stream_rows<'a>(
    first: u64,
    records: impl IntoIterator<Item = (u64, &'a str)>,
) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut rows: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (seq, stream) in records {
        rows.entry(stream_key(stream, first))
            .or_default()
            .extend_from_slice(&seq.to_be_bytes());
    }
    rows
}

/// The event log and its projections in one sled tree.
#[derive(Debug, Clone)]
pub struct EventLog {
    db: sled::Db,
    tree: sled::Tree,
}

const TREE: &str = "shoal";

impl EventLog {
    /// Opens (or creates) the log under `dir`. A log in the earlier layout (one sled tree per
    /// kind of record) is moved into this one first, records unchanged.
    ///
    /// # Errors
    /// The directory cannot be opened by sled (missing permissions, another process holds
    /// it), or an earlier log cannot be moved.
    pub fn open(dir: &Path) -> Result<EventLog, LogError> {
        let holder = holder_file(dir);
        let db = match sled::Config::new()
            .path(dir)
            .cache_capacity(32 * 1024 * 1024)
            .open()
            .map_err(LogError::from)
        {
            Ok(db) => db,
            Err(LogError::Locked { cause, .. }) => {
                let pid = std::fs::read_to_string(&holder)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                return Err(LogError::Locked { pid, cause });
            }
            Err(e) => return Err(e),
        };
        // Read only while the lock is refused, so it names the process holding the lock.
        if let Err(e) = std::fs::write(&holder, format!("{}\n", std::process::id())) {
            tracing::warn!(error = %e, file = %holder.display(), "cannot record this process as the event log's holder; a second planner on this data dir will not learn its pid");
        }
        let tree = db.open_tree(TREE)?;
        let log = EventLog { db, tree };
        migrate::from_trees(&log)?;
        // Logs written before the checkpoint record was kept only while replay runs carry
        // one equal to the head.
        let head = log.head()?.seq;
        if let Some(v) = log.tree.get(CHECKPOINT_KEY)?
            && be_u64(&v, "checkpoint record")? == head
        {
            log.set_checkpoint(head)?;
        }
        Ok(log)
    }

    /// The last record's sequence number and hash (zero for an empty log).
    ///
    /// # Errors
    /// Storage failure or a malformed head record.
    pub fn head(&self) -> Result<Head, LogError> {
        match self.tree.get(HEAD_KEY)? {
            None => Ok(Head::default()),
            Some(v) if v.len() == 40 => {
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&v[8..]);
                Ok(Head {
                    seq: be_u64(&v[..8], "head record")?,
                    hash,
                })
            }
            Some(v) => Err(LogError::Corrupt(format!(
                "head record has {} bytes, want 40",
                v.len()
            ))),
        }
    }

    /// The sequence number projections are up to date with. Every batch writes its records
    /// and projection changes atomically, so that is the head, unless a checkpoint record
    /// says otherwise: replay leaves one while it rewrites the projections.
    ///
    /// # Errors
    /// Storage failure.
    pub fn checkpoint(&self) -> Result<u64, LogError> {
        match self.tree.get(CHECKPOINT_KEY)? {
            None => Ok(self.head()?.seq),
            Some(v) => be_u64(&v, "checkpoint record"),
        }
    }

    /// Sets the checkpoint and flushes: replay marks projections as not up to date (0) while
    /// it rewrites them, so a crash in between is noticed at the next start. Setting it to
    /// the head removes the record.
    ///
    /// # Errors
    /// Storage failure.
    pub fn set_checkpoint(&self, seq: u64) -> Result<(), LogError> {
        if seq == self.head()?.seq {
            self.tree.remove(CHECKPOINT_KEY)?;
        } else {
            self.tree.insert(CHECKPOINT_KEY, &seq.to_be_bytes())?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// The event feed's last confirmed frame, as [`EventLog::set_feed_position`] left it:
    /// its stream sequence and the log sequence of its last record.
    ///
    /// # Errors
    /// Storage failure, or a value that is not two sequences.
    pub fn feed_position(&self) -> Result<Option<(u64, u64)>, LogError> {
        let Some(v) = self.tree.get(FEED_KEY)? else {
            return Ok(None);
        };
        let (stream, log) = v.split_at(v.len().min(8));
        Ok(Some((
            be_u64(stream, "feed position")?,
            be_u64(log, "feed position")?,
        )))
    }

    /// Notes where the event feed stands. Not flushed here: sled writes it within half a
    /// second (a position lost to a crash is one the stream itself still tells, unless its
    /// retention drops every frame before the planner is back).
    ///
    /// # Errors
    /// Storage failure.
    pub fn set_feed_position(&self, stream: u64, log: u64) -> Result<(), LogError> {
        let mut v = stream.to_be_bytes().to_vec();
        v.extend_from_slice(&log.to_be_bytes());
        self.tree.insert(FEED_KEY, v)?;
        Ok(())
    }

    /// Whether a fact with this id is already in the log.
    ///
    /// # Errors
    /// Storage failure.
    pub fn contains_event(&self, id: &EventId) -> Result<bool, LogError> {
        Ok(self.tree.contains_key(fact_key(id))?)
    }

    /// Writes a batch atomically: records in chunks, their stream index, fact ids,
    /// projection changes and the head. Not durable until [`EventLog::flush`].
    ///
    /// # Errors
    /// Storage failure; nothing of the batch is written then.
    pub fn write(&self, batch: &BatchWrite) -> Result<(), LogError> {
        let mut b = sled::Batch::default();
        put_records(&mut b, &batch.records);
        let mut head = batch.head.seq.to_be_bytes().to_vec();
        head.extend_from_slice(&batch.head.hash);
        b.insert(HEAD_KEY, head);
        for (p, key, value) in &batch.proj {
            let key = p.key(key);
            match value {
                Some(v) => b.insert(key, v.as_slice()),
                None => b.remove(key),
            }
        }
        self.tree.apply_batch(b)?;
        Ok(())
    }

    /// Makes everything written so far durable.
    ///
    /// # Errors
    /// Storage failure.
    pub async fn flush(&self) -> Result<(), LogError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Reads what the writer keeps in memory (after a restart): pools, targets, workers, the
    /// outbox, and deployments not yet finished with their tasks. Finished deployments stay
    /// on disk; [`EventLog::deployment`] brings one back when a late report names it.
    ///
    /// # Errors
    /// Storage failure or undecodable documents.
    pub fn load_state(&self) -> Result<State, LogError> {
        let mut state = State::default();
        for p in self.docs::<PoolDoc>(Proj::Pools)? {
            state.pools.insert(p.name.clone(), p);
        }
        for t in self.docs::<TargetDoc>(Proj::Targets)? {
            state.targets.insert(t.target.name.clone(), t);
        }
        for w in self.docs::<WorkerDoc>(Proj::Workers)? {
            state.workers.insert(w.name.clone(), w);
        }
        for t in self.docs::<TokenDoc>(Proj::Tokens)? {
            state.tokens.insert(t.hash.clone(), t);
        }
        for s in self.docs::<SessionDoc>(Proj::Sessions)? {
            state.sessions.insert(s.id.clone(), s);
        }
        for p in self.docs::<PackageDoc>(Proj::Packages)? {
            let key = (p.manifest.id.clone(), p.manifest.version.clone());
            state.packages.insert(key, p);
        }
        for w in self.docs::<WebhookDoc>(Proj::Webhooks)? {
            state.webhooks.insert(w.name.clone(), w);
        }
        for k in self.docs::<IdempotencyDoc>(Proj::Idempotency)? {
            state.idempotency_expiry.insert((k.at, k.key.clone()));
            state.idempotency.insert(k.key.clone(), k);
        }
        for d in self.docs::<DeploymentDoc>(Proj::Deployments)? {
            if !d.state.is_terminal() {
                for t in self.tasks_of(&d)? {
                    state.tasks.insert(t.id, t);
                }
                state.active.insert(d.id);
                state.deployments.insert(d.id, d);
            }
        }
        for k in self.tree.scan_prefix(Proj::Outbox.prefix()).keys() {
            let k = k?;
            let k = &k[2..];
            if k.len() != 20 {
                return Err(LogError::Corrupt(format!(
                    "outbox key of {} bytes",
                    k.len()
                )));
            }
            let mut id = [0u8; 16];
            id.copy_from_slice(&k[..16]);
            let mut attempt = [0u8; 4];
            attempt.copy_from_slice(&k[16..]);
            state.outbox.insert((
                TaskId(uuid::Uuid::from_bytes(id)),
                u32::from_be_bytes(attempt),
            ));
        }
        state.recount();
        Ok(state)
    }

    /// A deployment's document and its tasks' documents, as last committed.
    ///
    /// # Errors
    /// Storage failure or undecodable documents.
    pub fn deployment(
        &self,
        id: &DeploymentId,
    ) -> Result<Option<(DeploymentDoc, Vec<TaskDoc>)>, LogError> {
        let Some(d) = self.doc::<DeploymentDoc>(Proj::Deployments, id.as_bytes())? else {
            return Ok(None);
        };
        let tasks = self.tasks_of(&d)?;
        Ok(Some((d, tasks)))
    }

    fn tasks_of(&self, d: &DeploymentDoc) -> Result<Vec<TaskDoc>, LogError> {
        let mut out = Vec::new();
        for id in d.steps.iter().flat_map(|s| &s.tasks) {
            if let Some(t) = self.doc::<TaskDoc>(Proj::Tasks, id.as_bytes())? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// The chunk holding sequence `seq` (the last chunk starting at or before it).
    fn chunk_at(&self, seq: u64) -> Result<Option<(u64, sled::IVec)>, LogError> {
        match self.tree.range(chunk_key(0)..=chunk_key(seq)).next_back() {
            Some(kv) => {
                let (k, v) = kv?;
                Ok(Some((be_u64(&k[1..], "chunk key")?, v)))
            }
            None => Ok(None),
        }
    }

    /// Records with sequence numbers after `after`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// Storage failure or undecodable records.
    pub fn read(&self, after: u64, limit: usize) -> Result<Vec<Envelope>, LogError> {
        self.read_with(after, limit, |env, _| env)
    }

    /// Records after `after` as stored (the bytes the chain hashes), oldest first, at most
    /// `limit`, each with its sequence.
    ///
    /// # Errors
    /// Storage failure or undecodable records.
    pub fn read_raw(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        self.read_with(after, limit, |env, bytes| (env.seq, bytes.to_vec()))
    }

    /// Up to `limit` records after `after`, oldest first, each as `map` makes it of the
    /// record and its stored bytes.
    fn read_with<T>(
        &self,
        after: u64,
        limit: usize,
        map: impl Fn(Envelope, &[u8]) -> T,
    ) -> Result<Vec<T>, LogError> {
        let start = match self.chunk_at(after.saturating_add(1))? {
            Some((first, _)) => first,
            None => 0,
        };
        let mut out = Vec::new();
        for kv in self.tree.range(chunk_key(start)..=chunk_key(u64::MAX)) {
            let (_, v) = kv?;
            for r in chunk_records(&v)? {
                if out.len() >= limit {
                    return Ok(out);
                }
                let env: Envelope = codec::decode("log record", r)?;
                if env.seq > after {
                    out.push(map(env, r));
                }
            }
        }
        Ok(out)
    }

    /// The first and last sequence of a stream's records, if it has any.
    ///
    /// # Errors
    /// Storage failure or a malformed index row.
    pub fn stream_bounds(&self, stream: &str) -> Result<Option<(u64, u64)>, LogError> {
        if stream.contains('\0') {
            return Ok(None);
        }
        let prefix = stream_prefix(stream);
        let seqs = |v: &[u8]| -> Result<Vec<u64>, LogError> {
            v.chunks(8)
                .map(|s| be_u64(s, "stream index entry"))
                .collect()
        };
        let Some(first) = self.tree.scan_prefix(&prefix).next() else {
            return Ok(None);
        };
        let Some(last) = self.tree.scan_prefix(&prefix).next_back() else {
            return Ok(None);
        };
        let (first, last) = (seqs(&first?.1)?, seqs(&last?.1)?);
        Ok(first.first().copied().zip(last.last().copied()))
    }

    /// Records of one stream after `after`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// Storage failure or undecodable records.
    pub fn read_stream(
        &self,
        stream: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, LogError> {
        if stream.contains('\0') {
            // No stream is named so; the byte would match other streams' index keys.
            return Ok(Vec::new());
        }
        let prefix = stream_prefix(stream);
        let from = stream_key(stream, after.saturating_add(1));
        // The row of the chunk that may hold `after + 1` starts before it.
        let start = match self.tree.range(prefix.clone()..from.clone()).next_back() {
            Some(kv) => kv?.0.to_vec(),
            None => from,
        };
        let mut out = Vec::new();
        for kv in self.tree.range(start..) {
            let (k, seqs) = kv?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let first = be_u64(&k[prefix.len()..], "stream index key")?;
            let wanted: Vec<u64> = seqs
                .chunks(8)
                .map(|s| be_u64(s, "stream index entry"))
                .collect::<Result<_, _>>()?;
            if wanted.last().is_none_or(|last| *last <= after) {
                continue;
            }
            let Some(chunk) = self.tree.get(chunk_key(first))? else {
                return Err(LogError::Corrupt(format!(
                    "stream {stream} names chunk {first}, which is missing"
                )));
            };
            for r in chunk_records(&chunk)? {
                let env: Envelope = codec::decode("log record", r)?;
                if env.seq > after && wanted.contains(&env.seq) && out.len() < limit {
                    out.push(env);
                }
            }
        }
        Ok(out)
    }

    /// The output of a task, every run, in order: (attempt, delivery, line).
    ///
    /// # Errors
    /// Storage failure or undecodable rows.
    pub fn task_output(&self, task: &TaskId) -> Result<Vec<(u32, u32, OutputLine)>, LogError> {
        self.tree
            .scan_prefix(Proj::Output.key(task.as_bytes()))
            .map(|kv| {
                let (k, v) = kv?;
                let at = output_cursor(k.get(18..).unwrap_or_default())?;
                Ok((at.attempt, at.run, codec::decode("output line", &v)?))
            })
            .collect()
    }

    /// One page of a task's output: up to `limit` lines after the cursor `after` (from the
    /// first line when `None`), in order, each with its own cursor, and whether more lines
    /// follow. Reads only that page: a range scan from the cursor's key. A page also ends
    /// once it holds about 4 MiB of stored lines, so that long lines (up to 64 KiB each)
    /// cannot make one page of a few hundred MiB.
    ///
    /// # Errors
    /// Storage failure or undecodable rows.
    pub fn task_output_page(
        &self,
        task: &TaskId,
        after: Option<LogCursor>,
        limit: usize,
    ) -> Result<(Vec<(LogCursor, OutputLine)>, bool), LogError> {
        let prefix = Proj::Output.key(task.as_bytes());
        let start = match after {
            Some(c) => Bound::Excluded(Proj::Output.key(&output_key(task, c))),
            None => Bound::Included(prefix.clone()),
        };
        const PAGE_BYTES: usize = 4 * 1024 * 1024;
        let mut lines = Vec::with_capacity(limit.min(1024));
        let mut bytes = 0;
        // One row past the page says whether there is more.
        for kv in self
            .tree
            .range((start, Bound::Unbounded))
            .take(limit.saturating_add(1))
        {
            let (k, v) = kv?;
            let Some(rest) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            if lines.len() == limit || bytes >= PAGE_BYTES {
                return Ok((lines, true));
            }
            bytes += v.len();
            lines.push((output_cursor(rest)?, codec::decode("output line", &v)?));
        }
        Ok((lines, false))
    }

    /// Reads one projection document.
    ///
    /// # Errors
    /// Storage failure or an undecodable document.
    pub fn doc<T: DeserializeOwned>(&self, p: Proj, key: &[u8]) -> Result<Option<T>, LogError> {
        self.tree
            .get(p.key(key))?
            .map(|v| Ok(codec::decode(p.name(), &v)?))
            .transpose()
    }

    /// Reads every document of a projection, in key order.
    ///
    /// # Errors
    /// Storage failure or an undecodable document.
    pub fn docs<T: DeserializeOwned>(&self, p: Proj) -> Result<Vec<T>, LogError> {
        self.tree
            .scan_prefix(p.prefix())
            .values()
            .map(|v| Ok(codec::decode(p.name(), &v?)?))
            .collect()
    }

    /// Reads the last `limit` documents of a projection, last key first.
    ///
    /// # Errors
    /// Storage failure or an undecodable document.
    pub fn docs_rev<T: DeserializeOwned>(&self, p: Proj, limit: usize) -> Result<Vec<T>, LogError> {
        self.tree
            .scan_prefix(p.prefix())
            .values()
            .rev()
            .take(limit)
            .map(|v| Ok(codec::decode(p.name(), &v?)?))
            .collect()
    }

    /// Number of records in the log.
    ///
    /// # Errors
    /// Storage failure.
    pub fn len(&self) -> Result<u64, LogError> {
        Ok(self.head()?.seq)
    }

    /// Whether the log holds no record.
    ///
    /// # Errors
    /// Storage failure.
    pub fn is_empty(&self) -> Result<bool, LogError> {
        Ok(self.len()? == 0)
    }

    /// The chunks of the log, oldest first: (first sequence, value).
    pub fn chunks(&self) -> impl Iterator<Item = Result<(u64, Stored), LogError>> + '_ {
        self.tree
            .range(chunk_key(0)..=chunk_key(u64::MAX))
            .map(|kv| {
                let (k, v) = kv?;
                Ok((be_u64(&k[1..], "chunk key")?, Stored(v)))
            })
    }

    /// Iterates over every record: (stored bytes, decoded envelope), oldest first.
    pub fn records(&self) -> impl Iterator<Item = Result<(Vec<u8>, Envelope), LogError>> + '_ {
        self.chunks().flat_map(|chunk| {
            let decoded: Vec<Result<(Vec<u8>, Envelope), LogError>> = match chunk {
                Err(e) => vec![Err(e)],
                Ok((_, v)) => match chunk_records(&v) {
                    Err(e) => vec![Err(e)],
                    Ok(records) => records
                        .into_iter()
                        .map(|r| Ok((r.to_vec(), codec::decode("log record", r)?)))
                        .collect(),
                },
            };
            decoded
        })
    }

    /// Everything derived from the records (the stream index and the projections), in key
    /// order, for replay to compare: (key, value).
    pub fn derived(&self) -> impl Iterator<Item = Result<(Stored, Stored), LogError>> + '_ {
        self.tree
            .range([PROJ].as_slice()..[PROJ + 1].as_slice())
            .chain(
                self.tree
                    .range([STREAMS].as_slice()..[STREAMS + 1].as_slice()),
            )
            .map(|kv| {
                let (k, v) = kv?;
                Ok((Stored(k), Stored(v)))
            })
    }

    /// Replaces everything derived from the records (replay's repair), in batches; the
    /// caller has set the checkpoint to 0 first.
    ///
    /// # Errors
    /// Storage failure.
    pub fn replace_derived(
        &self,
        rows: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<(), LogError> {
        for space in [PROJ, STREAMS] {
            let mut b = sled::Batch::default();
            for k in self
                .tree
                .range([space].as_slice()..[space + 1].as_slice())
                .keys()
            {
                b.remove(k?);
            }
            self.tree.apply_batch(b)?;
        }
        let mut b = sled::Batch::default();
        let mut n = 0usize;
        for (k, v) in rows {
            b.insert(k, v);
            n += 1;
            if n.is_multiple_of(10_000) {
                self.tree.apply_batch(std::mem::take(&mut b))?;
            }
        }
        self.tree.apply_batch(b)?;
        self.db.flush()?;
        Ok(())
    }
}

/// The name of the projection (or index) a derived key belongs to: a projection's name, or
/// [`STREAM_INDEX`].
pub fn key_space(key: &[u8]) -> &'static str {
    match key {
        [PROJ, tag, ..] => Proj::of_tag(*tag).map_or("unknown projection", Proj::name),
        [STREAMS, ..] => STREAM_INDEX,
        _ => "unknown",
    }
}

/// The name of the stream index among the derived key spaces.
pub const STREAM_INDEX: &str = "streams";

/// Names a key of the tree for a person: the projection (or index) and the key inside it.
pub fn describe_key(key: &[u8]) -> (&'static str, String) {
    let rest = match key {
        [PROJ, _, rest @ ..] | [STREAMS, rest @ ..] => rest,
        _ => key,
    };
    let shown = match std::str::from_utf8(rest) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => rest.iter().map(|b| format!("{b:02x}")).collect(),
    };
    (key_space(key), shown)
}

/// Decodes the event inside a record.
///
/// # Errors
/// The payload is not an event this build knows.
pub fn decode_event(env: &Envelope) -> Result<Event, CodecError> {
    codec::decode("event payload", &env.payload)
}

mod migrate {
    //! Moving a log of the earlier layout (trees `log.events`, `log.event_ids`, `log.meta`,
    //! `proj.*`) into the one tree. Records are copied unchanged, so the chain and every
    //! event id stay as they were; the stream index is rebuilt from the records.

    use super::{
        CHECKPOINT_KEY, EventLog, HEAD_KEY, LogError, Proj, Record, fact_key, put_records,
    };
    use shoal_shared::EventId;
    use shoal_shared::codec;
    use shoal_shared::events::Envelope;

    const OLD_EVENTS: &str = "log.events";
    const DONE_KEY: &[u8] = b"mmigrated";

    pub(super) fn from_trees(log: &EventLog) -> Result<(), LogError> {
        let names = log.db.tree_names();
        if !names.iter().any(|n| n.as_ref() == OLD_EVENTS.as_bytes()) {
            return Ok(());
        }
        if log.tree.get(DONE_KEY)?.is_none() {
            // Start over if an earlier attempt was cut short.
            log.tree.clear()?;
            copy(log)?;
            log.tree.insert(DONE_KEY, &[1u8])?;
            log.db.flush()?;
        }
        // Names again: copying opened (so created) every old projection tree.
        for name in log.db.tree_names() {
            if name.starts_with(b"log.") || name.starts_with(b"proj.") {
                log.db.drop_tree(name)?;
            }
        }
        log.db.flush()?;
        tracing::info!("event log moved to the single-tree layout");
        Ok(())
    }

    fn copy(log: &EventLog) -> Result<(), LogError> {
        let events = log.db.open_tree(OLD_EVENTS)?;
        let mut pending: Vec<Record> = Vec::new();
        for v in events.iter().values() {
            let v = v?;
            let env: Envelope = codec::decode("log record", &v)?;
            // Fact ids are copied from the old index below.
            pending.push(Record {
                seq: env.seq,
                bytes: v.to_vec(),
                stream: env.stream,
                fact: None,
            });
            if pending.len() >= 4096 {
                write_records(log, &mut pending)?;
            }
        }
        write_records(log, &mut pending)?;
        let ids = log.db.open_tree("log.event_ids")?;
        copy_tree(log, &ids, |k| {
            <[u8; 16]>::try_from(k)
                .ok()
                .map(|id| fact_key(&EventId(uuid::Uuid::from_bytes(id))).to_vec())
        })?;
        for p in Proj::ALL {
            let old = log.db.open_tree(format!("proj.{}", p.name()))?;
            copy_tree(log, &old, |k| Some(p.key(k)))?;
        }
        let meta = log.db.open_tree("log.meta")?;
        for (old, new) in [
            (b"head".as_slice(), HEAD_KEY),
            (b"checkpoint", CHECKPOINT_KEY),
        ] {
            if let Some(v) = meta.get(old)? {
                log.tree.insert(new, v)?;
            }
        }
        Ok(())
    }

    /// Copies a tree's entries under new keys (`None`: skip), a few thousand per batch so
    /// that a large tree (task output) never sits in memory whole.
    fn copy_tree(
        log: &EventLog,
        from: &sled::Tree,
        key: impl Fn(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<(), LogError> {
        let mut b = sled::Batch::default();
        let mut n = 0usize;
        for kv in from.iter() {
            let (k, v) = kv?;
            if let Some(k) = key(&k) {
                b.insert(k, v);
                n += 1;
                if n.is_multiple_of(4096) {
                    log.tree.apply_batch(std::mem::take(&mut b))?;
                }
            }
        }
        log.tree.apply_batch(b)?;
        Ok(())
    }

    fn write_records(log: &EventLog, pending: &mut Vec<Record>) -> Result<(), LogError> {
        let mut b = sled::Batch::default();
        put_records(&mut b, pending);
        log.tree.apply_batch(b)?;
        pending.clear();
        Ok(())
    }
}
