//! Offline replay: verifies the hash chain of the log, rebuilds every projection and the
//! stream index from the records in memory, and compares them with the stored ones byte for
//! byte (or, with `replace`, writes the rebuilt ones over them).

use crate::domain::{Changes, DocKey, State};
use crate::log::{
    EventLog, Head, LogError, Proj, chunk_records, decode_event, describe_key, doc_write,
    record_hash, row_write, stream_rows,
};
use shoal_shared::codec;
use shoal_shared::events::Envelope;
use std::collections::{BTreeMap, BTreeSet};

/// What replay found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub events: u64,
    pub pools: usize,
    pub targets: usize,
    pub deployments: usize,
    pub tasks: usize,
    pub workers: usize,
    /// Rows per projection, in [`Proj::ALL`] order, then the stream index.
    pub rows: Vec<(&'static str, usize)>,
}

/// Why replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("hash chain broken at sequence {seq}: {what}")]
    Chain { seq: u64, what: String },
    #[error("projection \"{tree}\" differs from the log at key {key}: {what}")]
    Differs {
        tree: &'static str,
        key: String,
        what: String,
    },
}

/// Verifies the chain and rebuilds all projections from the log, comparing them with the live
/// ones. With `replace`, the live projections are replaced by the rebuilt ones instead of
/// compared (repairs projections after a bug or a manual edit).
///
/// # Errors
/// A broken chain, an undecodable record, or (without `replace`) the first difference.
pub fn replay(log: &EventLog, replace: bool) -> Result<ReplayReport, ReplayError> {
    let rebuilt = rebuild(log)?;
    let stored = log.head()?;
    if stored != rebuilt.head {
        return Err(ReplayError::Chain {
            seq: rebuilt.head.seq,
            what: format!(
                "log head says sequence {} but the records end at {}",
                stored.seq, rebuilt.head.seq
            ),
        });
    }
    let mut rows: Vec<(&'static str, usize)> = Proj::ALL.iter().map(|p| (p.name(), 0)).collect();
    rows.push(("streams", 0));
    for k in rebuilt.derived.keys() {
        let (name, _) = describe_key(k);
        let name = if name == "stream index" { "streams" } else { name };
        if let Some(r) = rows.iter_mut().find(|(n, _)| *n == name) {
            r.1 += 1;
        }
    }
    let state = &rebuilt.state;
    let report = ReplayReport {
        events: rebuilt.head.seq,
        pools: state.pools.len(),
        targets: state.targets.len(),
        deployments: state.deployments.len(),
        tasks: state.tasks.len(),
        workers: state.workers.len(),
        rows,
    };
    if replace {
        log.set_checkpoint(0)?;
        log.replace_derived(rebuilt.derived)?;
        log.set_checkpoint(rebuilt.head.seq)?;
    } else {
        compare(log, &rebuilt.derived)?;
    }
    Ok(report)
}

/// The state, chain head and every derived key/value, rebuilt from the records.
struct Rebuilt {
    state: State,
    head: Head,
    derived: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn rebuild(log: &EventLog) -> Result<Rebuilt, ReplayError> {
    let mut state = State::default();
    let mut head = Head::default();
    let mut keys: BTreeSet<DocKey> = BTreeSet::new();
    let mut derived = BTreeMap::new();
    let mut changes = Changes::default();
    let mut streams: Vec<(u64, String)> = Vec::new();
    for chunk in log.chunks() {
        let (first, value) = chunk?;
        streams.clear();
        for bytes in chunk_records(&value)? {
            let seq = head.seq + 1;
            let env: Envelope = codec::decode("log record", bytes).map_err(LogError::from)?;
            if env.seq != seq {
                return Err(ReplayError::Chain {
                    seq,
                    what: format!("found sequence {} instead", env.seq),
                });
            }
            if env.prev_hash != head.hash {
                return Err(ReplayError::Chain {
                    seq,
                    what: "previous-record hash does not match: a record was changed, removed or inserted".into(),
                });
            }
            let event = decode_event(&env).map_err(LogError::from)?;
            if event.event_type() != env.event_type {
                return Err(ReplayError::Chain {
                    seq,
                    what: format!(
                        "envelope says {} but payload is {}",
                        env.event_type,
                        event.event_type()
                    ),
                });
            }
            state.apply(&env, &event, &mut changes);
            for row in changes.rows.drain(..) {
                let (p, k, v) = row_write(&row)?;
                derived.insert(p.key(&k), v);
            }
            // Not `append`: it merges both whole sets, every record.
            keys.extend(std::mem::take(&mut changes.docs));
            streams.push((seq, env.stream));
            head = Head {
                seq,
                hash: record_hash(bytes),
            };
        }
        if streams.first().is_some_and(|(seq, _)| *seq != first) {
            return Err(ReplayError::Chain {
                seq: first,
                what: format!(
                    "chunk keyed {first} starts with sequence {}",
                    streams[0].0
                ),
            });
        }
        derived.extend(stream_rows(
            first,
            streams.iter().map(|(seq, s)| (*seq, s.as_str())),
        ));
    }
    for key in &keys {
        let (p, k, v) = doc_write(&state, key)?;
        if let Some(v) = v {
            derived.insert(p.key(&k), v);
        }
    }
    Ok(Rebuilt {
        state,
        head,
        derived,
    })
}

/// Walks the stored derived keys and the rebuilt ones side by side, in key order.
fn compare(log: &EventLog, rebuilt: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<(), ReplayError> {
    let mut live = log.derived();
    let mut ours = rebuilt.iter();
    let (mut a, mut b) = (live.next().transpose()?, ours.next());
    loop {
        match (&a, b) {
            (None, None) => return Ok(()),
            (Some((k, _)), None) => {
                return Err(differs(k, "present live, missing from the log"));
            }
            (None, Some((k, _))) => return Err(differs(k, "derived from the log, missing live")),
            (Some((ka, va)), Some((kb, vb))) => {
                if ka.as_ref() < kb.as_slice() {
                    return Err(differs(ka, "present live, missing from the log"));
                }
                if ka.as_ref() > kb.as_slice() {
                    return Err(differs(kb, "derived from the log, missing live"));
                }
                if va.as_ref() != vb.as_slice() {
                    return Err(differs(ka, "live value differs from the rebuilt one"));
                }
                a = live.next().transpose()?;
                b = ours.next();
            }
        }
    }
}

fn differs(key: &[u8], what: &str) -> ReplayError {
    let (tree, key) = describe_key(key);
    ReplayError::Differs {
        tree,
        key,
        what: what.to_owned(),
    }
}
