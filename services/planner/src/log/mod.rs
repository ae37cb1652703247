//! The event log in sled: one tree of records keyed by big-endian sequence number, each a
//! MessagePack [`Envelope`] chained by SHA-256 to the previous record; an index of event ids
//! for de-duplication; and the projection trees, written in the same transaction as the
//! records they derive from.
//!
//! Only the [`writer`] appends. Readers (the HTTP API, replay) read committed trees.

pub mod writer;

use crate::domain::state::{DeploymentDoc, PoolDoc, Row, TargetDoc, TaskDoc, WorkerDoc};
use crate::domain::{DocKey, State};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use shoal_shared::codec::{self, CodecError};
use shoal_shared::events::{Envelope, Event};
use shoal_shared::{OutputLine, TaskId};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use std::path::Path;

/// Why the log could not be read or written. All of these are infrastructure failures: the
/// planner stops rather than answer from a log it cannot trust.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("event log storage failed: {0}")]
    Sled(sled::Error),
    #[error("event log record could not be decoded: {0}")]
    Codec(CodecError),
    #[error("event log is inconsistent: {0}")]
    Corrupt(String),
}

// Conversions by hand: the messages already include the cause, so it is not also a `source`
// (an error chain would print it twice).
impl From<sled::Error> for LogError {
    fn from(e: sled::Error) -> Self {
        LogError::Sled(e)
    }
}

impl From<CodecError> for LogError {
    fn from(e: CodecError) -> Self {
        LogError::Codec(e)
    }
}

impl From<TransactionError<LogError>> for LogError {
    fn from(e: TransactionError<LogError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => LogError::Sled(e),
        }
    }
}

/// The projection trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proj {
    Pools,
    Targets,
    Deployments,
    Tasks,
    Workers,
    Outbox,
    Output,
    Streams,
}

impl Proj {
    /// Every projection tree.
    pub const ALL: [Proj; 8] = [
        Proj::Pools,
        Proj::Targets,
        Proj::Deployments,
        Proj::Tasks,
        Proj::Workers,
        Proj::Outbox,
        Proj::Output,
        Proj::Streams,
    ];

    /// The tree's name without prefix.
    pub fn name(self) -> &'static str {
        match self {
            Proj::Pools => "pools",
            Proj::Targets => "targets",
            Proj::Deployments => "deployments",
            Proj::Tasks => "tasks",
            Proj::Workers => "workers",
            Proj::Outbox => "outbox",
            Proj::Output => "output",
            Proj::Streams => "streams",
        }
    }
}

/// One set of projection trees (live ones, or fresh ones that replay rebuilds).
#[derive(Debug, Clone)]
pub struct ProjTrees {
    trees: Vec<sled::Tree>,
}

impl ProjTrees {
    fn open(db: &sled::Db, prefix: &str) -> Result<ProjTrees, LogError> {
        let trees = Proj::ALL
            .iter()
            .map(|p| db.open_tree(format!("{prefix}.{}", p.name())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ProjTrees { trees })
    }

    /// The tree of one projection.
    pub fn tree(&self, p: Proj) -> &sled::Tree {
        &self.trees[Proj::ALL.iter().position(|q| *q == p).unwrap_or(0)]
    }
}

/// One write to a projection tree: the tree, the key, and the value (`None`: remove).
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
            let mut key = outbox_key(task, *attempt);
            key.extend_from_slice(&delivery.to_be_bytes());
            key.extend_from_slice(&line_no.to_be_bytes());
            (Proj::Output, key, codec::encode(line)?)
        }
        Row::StreamIndex { stream, seq } => (Proj::Streams, stream_key(stream, *seq), Vec::new()),
    })
}

fn outbox_key(task: &TaskId, attempt: u32) -> Vec<u8> {
    let mut key = task.as_bytes().to_vec();
    key.extend_from_slice(&attempt.to_be_bytes());
    key
}

fn stream_key(stream: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 9);
    key.extend_from_slice(stream.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// SHA-256 of a stored record.
pub fn record_hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The end of the chain: last sequence number and the hash of its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// Everything one batch writes, in one transaction.
#[derive(Debug, Default)]
pub struct BatchWrite {
    pub records: Vec<(u64, Vec<u8>, shoal_shared::EventId)>,
    pub proj: Vec<ProjWrite>,
    pub head: Head,
}

const HEAD_KEY: &[u8] = b"head";
const CHECKPOINT_KEY: &[u8] = b"checkpoint";

/// The event log and its projections in one sled database.
#[derive(Debug, Clone)]
pub struct EventLog {
    db: sled::Db,
    events: sled::Tree,
    event_ids: sled::Tree,
    meta: sled::Tree,
    live: ProjTrees,
}

impl EventLog {
    /// Opens (or creates) the log under `dir`.
    ///
    /// # Errors
    /// The directory cannot be opened by sled (missing permissions, another process holds it).
    pub fn open(dir: &Path) -> Result<EventLog, LogError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024 * 1024)
            .open()?;
        let events = db.open_tree("log.events")?;
        let event_ids = db.open_tree("log.event_ids")?;
        let meta = db.open_tree("log.meta")?;
        let live = ProjTrees::open(&db, "proj")?;
        Ok(EventLog {
            db,
            events,
            event_ids,
            meta,
            live,
        })
    }

    /// The live projection trees.
    pub fn projections(&self) -> &ProjTrees {
        &self.live
    }

    /// The last record's sequence number and hash (zero for an empty log).
    ///
    /// # Errors
    /// Storage failure or a malformed head record.
    pub fn head(&self) -> Result<Head, LogError> {
        match self.meta.get(HEAD_KEY)? {
            None => Ok(Head::default()),
            Some(v) if v.len() == 40 => {
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&v[..8]);
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&v[8..]);
                Ok(Head {
                    seq: u64::from_be_bytes(seq),
                    hash,
                })
            }
            Some(v) => Err(LogError::Corrupt(format!(
                "head record has {} bytes, want 40",
                v.len()
            ))),
        }
    }

    /// The sequence number projections are up to date with.
    ///
    /// # Errors
    /// Storage failure.
    pub fn checkpoint(&self) -> Result<u64, LogError> {
        match self.meta.get(CHECKPOINT_KEY)? {
            None => Ok(0),
            Some(v) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| {
                    LogError::Corrupt(format!("checkpoint record has {} bytes, want 8", v.len()))
                }),
        }
    }

    /// Sets the checkpoint and flushes: replay marks projections as not up to date (0) while
    /// it rewrites them, so a crash in between is noticed at the next start.
    ///
    /// # Errors
    /// Storage failure.
    pub fn set_checkpoint(&self, seq: u64) -> Result<(), LogError> {
        self.meta.insert(CHECKPOINT_KEY, &seq.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// Whether an event id is already in the log.
    ///
    /// # Errors
    /// Storage failure.
    pub fn contains_event(&self, id: &shoal_shared::EventId) -> Result<bool, LogError> {
        Ok(self.event_ids.contains_key(id.as_bytes())?)
    }

    /// Writes a batch atomically: records, their ids, projection changes, head and checkpoint.
    /// Not durable until [`EventLog::flush`].
    ///
    /// # Errors
    /// Storage failure; nothing of the batch is written then.
    pub fn write(&self, batch: &BatchWrite) -> Result<(), LogError> {
        let mut events = sled::Batch::default();
        let mut ids = sled::Batch::default();
        for (seq, bytes, id) in &batch.records {
            events.insert(&seq.to_be_bytes(), bytes.as_slice());
            ids.insert(id.as_bytes(), &seq.to_be_bytes());
        }
        let mut meta = sled::Batch::default();
        let mut head = batch.head.seq.to_be_bytes().to_vec();
        head.extend_from_slice(&batch.head.hash);
        meta.insert(HEAD_KEY, head);
        meta.insert(CHECKPOINT_KEY, &batch.head.seq.to_be_bytes());
        let mut proj: Vec<sled::Batch> = Proj::ALL.iter().map(|_| sled::Batch::default()).collect();
        for (p, key, value) in &batch.proj {
            let i = Proj::ALL.iter().position(|q| q == p).unwrap_or(0);
            match value {
                Some(v) => proj[i].insert(key.as_slice(), v.as_slice()),
                None => proj[i].remove(key.as_slice()),
            }
        }
        let mut trees: Vec<&sled::Tree> = vec![&self.events, &self.event_ids, &self.meta];
        trees.extend(Proj::ALL.iter().map(|p| self.live.tree(*p)));
        trees.as_slice().transaction(|t| {
            t[0].apply_batch(&events)?;
            t[1].apply_batch(&ids)?;
            t[2].apply_batch(&meta)?;
            for (i, b) in proj.iter().enumerate() {
                t[3 + i].apply_batch(b)?;
            }
            Ok::<(), ConflictableTransactionError<LogError>>(())
        })?;
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

    /// Makes everything written so far durable, blocking.
    ///
    /// # Errors
    /// Storage failure.
    pub fn flush_blocking(&self) -> Result<(), LogError> {
        self.db.flush()?;
        Ok(())
    }

    /// Reads the projections back into memory (after a restart).
    ///
    /// # Errors
    /// Storage failure or undecodable documents.
    pub fn load_state(&self) -> Result<State, LogError> {
        fn all<T: DeserializeOwned>(
            tree: &sled::Tree,
            what: &'static str,
        ) -> Result<Vec<T>, LogError> {
            tree.iter()
                .values()
                .map(|v| Ok(codec::decode(what, &v?)?))
                .collect()
        }
        let mut state = State::default();
        for p in all::<PoolDoc>(self.live.tree(Proj::Pools), "pool document")? {
            state.pools.insert(p.name.clone(), p);
        }
        for t in all::<TargetDoc>(self.live.tree(Proj::Targets), "target document")? {
            state.targets.insert(t.target.name.clone(), t);
        }
        for d in all::<DeploymentDoc>(self.live.tree(Proj::Deployments), "deployment document")? {
            if !d.state.is_terminal() {
                state.active.insert(d.id);
            }
            state.deployments.insert(d.id, d);
        }
        for t in all::<TaskDoc>(self.live.tree(Proj::Tasks), "task document")? {
            state.tasks.insert(t.id, t);
        }
        for w in all::<WorkerDoc>(self.live.tree(Proj::Workers), "worker document")? {
            state.workers.insert(w.name.clone(), w);
        }
        for k in self.live.tree(Proj::Outbox).iter().keys() {
            let k = k?;
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

    /// Records with sequence numbers after `after`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// Storage failure or undecodable records.
    pub fn read(&self, after: u64, limit: usize) -> Result<Vec<Envelope>, LogError> {
        self.events
            .range((after.saturating_add(1)).to_be_bytes()..)
            .values()
            .take(limit)
            .map(|v| Ok(codec::decode("log record", &v?)?))
            .collect()
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
        let mut prefix = stream.as_bytes().to_vec();
        prefix.push(0);
        let start = stream_key(stream, after.saturating_add(1));
        let mut out = Vec::new();
        for k in self.live.tree(Proj::Streams).range(start..) {
            let (k, _) = k?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let seq = &k[prefix.len()..];
            if let Some(v) = self.events.get(seq)? {
                out.push(codec::decode("log record", &v)?);
            }
        }
        Ok(out)
    }

    /// The output of a task, every run, in order: (attempt, delivery, line).
    ///
    /// # Errors
    /// Storage failure or undecodable rows.
    pub fn task_output(&self, task: &TaskId) -> Result<Vec<(u32, u32, OutputLine)>, LogError> {
        self.live
            .tree(Proj::Output)
            .scan_prefix(task.as_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                if k.len() != 32 {
                    return Err(LogError::Corrupt(format!(
                        "output key of {} bytes",
                        k.len()
                    )));
                }
                let number = |at: usize| {
                    let mut b = [0u8; 4];
                    b.copy_from_slice(&k[at..at + 4]);
                    u32::from_be_bytes(b)
                };
                Ok((number(16), number(20), codec::decode("output line", &v)?))
            })
            .collect()
    }

    /// Reads one projection document.
    ///
    /// # Errors
    /// Storage failure or an undecodable document.
    pub fn doc<T: DeserializeOwned>(&self, p: Proj, key: &[u8]) -> Result<Option<T>, LogError> {
        self.live
            .tree(p)
            .get(key)?
            .map(|v| Ok(codec::decode(p.name(), &v)?))
            .transpose()
    }

    /// Reads every document of a projection, in key order.
    ///
    /// # Errors
    /// Storage failure or an undecodable document.
    pub fn docs<T: DeserializeOwned>(&self, p: Proj) -> Result<Vec<T>, LogError> {
        self.live
            .tree(p)
            .iter()
            .values()
            .map(|v| Ok(codec::decode(p.name(), &v?)?))
            .collect()
    }

    /// Number of records in the log.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Iterates over every record: (stored bytes, decoded envelope), oldest first.
    pub fn records(&self) -> impl Iterator<Item = Result<(sled::IVec, Envelope), LogError>> + '_ {
        self.events.iter().values().map(|v| {
            let v = v?;
            let env: Envelope = codec::decode("log record", &v)?;
            Ok((v, env))
        })
    }

    /// Opens a fresh set of projection trees under `prefix`, emptied first.
    ///
    /// # Errors
    /// Storage failure.
    pub fn fresh_projections(&self, prefix: &str) -> Result<ProjTrees, LogError> {
        for p in Proj::ALL {
            self.db.drop_tree(format!("{prefix}.{}", p.name()))?;
        }
        ProjTrees::open(&self.db, prefix)
    }

    /// Drops a set of projection trees made by [`EventLog::fresh_projections`].
    ///
    /// # Errors
    /// Storage failure.
    pub fn drop_projections(&self, prefix: &str) -> Result<(), LogError> {
        for p in Proj::ALL {
            self.db.drop_tree(format!("{prefix}.{}", p.name()))?;
        }
        Ok(())
    }
}

/// Decodes the event inside a record.
///
/// # Errors
/// The payload is not an event this build knows.
pub fn decode_event(env: &Envelope) -> Result<Event, CodecError> {
    codec::decode("event payload", &env.payload)
}
