//! Offline replay: verifies the hash chain of the log, rebuilds every projection from the log
//! into fresh trees, and compares them with the live ones byte for byte.

use crate::domain::{Changes, DocKey, State};
use crate::log::{
    EventLog, Head, LogError, Proj, ProjTrees, decode_event, doc_write, record_hash, row_write,
};
use std::collections::BTreeSet;

const REBUILD_PREFIX: &str = "rebuild";

/// What replay found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub events: u64,
    pub pools: usize,
    pub targets: usize,
    pub deployments: usize,
    pub tasks: usize,
    pub workers: usize,
    /// Rows per projection tree, in [`Proj::ALL`] order.
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
    let fresh = log.fresh_projections(REBUILD_PREFIX)?;
    let result = rebuild_into(log, &fresh).and_then(|(report, head)| {
        let stored = log.head()?;
        if stored != head {
            return Err(ReplayError::Chain {
                seq: head.seq,
                what: format!(
                    "log head says sequence {} but the records end at {}",
                    stored.seq, head.seq
                ),
            });
        }
        if replace {
            log.set_checkpoint(0)?;
            for p in Proj::ALL {
                let live = log.projections().tree(p);
                live.clear().map_err(LogError::from)?;
                for kv in fresh.tree(p).iter() {
                    let (k, v) = kv.map_err(LogError::from)?;
                    live.insert(k, v).map_err(LogError::from)?;
                }
            }
            log.flush_blocking()?;
            log.set_checkpoint(head.seq)?;
        } else {
            compare(log.projections(), &fresh)?;
        }
        Ok(report)
    });
    log.drop_projections(REBUILD_PREFIX)?;
    result
}

fn rebuild_into(log: &EventLog, out: &ProjTrees) -> Result<(ReplayReport, Head), ReplayError> {
    let mut state = State::default();
    let mut head = Head::default();
    let mut keys: BTreeSet<DocKey> = BTreeSet::new();
    let mut batches: Vec<sled::Batch> = Proj::ALL.iter().map(|_| sled::Batch::default()).collect();
    let mut pending = 0usize;
    for record in log.records() {
        let (bytes, env) = record?;
        let seq = head.seq + 1;
        if env.seq != seq {
            return Err(ReplayError::Chain {
                seq,
                what: format!("found sequence {} instead", env.seq),
            });
        }
        if env.prev_hash != head.hash {
            return Err(ReplayError::Chain {
                seq,
                what:
                    "previous-record hash does not match: a record was changed, removed or inserted"
                        .into(),
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
        let mut changes = Changes::default();
        state.apply(&env, &event, &mut changes);
        keys.extend(changes.docs);
        for row in &changes.rows {
            let (p, k, v) = row_write(row)?;
            batches[index(p)].insert(k, v);
            pending += 1;
        }
        if pending >= 10_000 {
            flush_batches(out, &mut batches)?;
            pending = 0;
        }
        head = Head {
            seq,
            hash: record_hash(&bytes),
        };
    }
    for key in &keys {
        let (p, k, v) = doc_write(&state, key)?;
        if let Some(v) = v {
            batches[index(p)].insert(k, v);
        }
    }
    flush_batches(out, &mut batches)?;
    let report = ReplayReport {
        events: head.seq,
        pools: state.pools.len(),
        targets: state.targets.len(),
        deployments: state.deployments.len(),
        tasks: state.tasks.len(),
        workers: state.workers.len(),
        rows: Proj::ALL
            .iter()
            .map(|p| (p.name(), out.tree(*p).len()))
            .collect(),
    };
    Ok((report, head))
}

fn index(p: Proj) -> usize {
    Proj::ALL.iter().position(|q| *q == p).unwrap_or(0)
}

fn flush_batches(out: &ProjTrees, batches: &mut [sled::Batch]) -> Result<(), LogError> {
    for (p, b) in Proj::ALL.iter().zip(batches.iter_mut()) {
        out.tree(*p).apply_batch(std::mem::take(b))?;
    }
    Ok(())
}

fn compare(live: &ProjTrees, rebuilt: &ProjTrees) -> Result<(), ReplayError> {
    for p in Proj::ALL {
        let mut a = live.tree(p).iter();
        let mut b = rebuilt.tree(p).iter();
        loop {
            match (
                a.next().transpose().map_err(LogError::from)?,
                b.next().transpose().map_err(LogError::from)?,
            ) {
                (None, None) => break,
                (Some((k, _)), None) => {
                    return Err(differs(p, &k, "present live, missing from the log"));
                }
                (None, Some((k, _))) => {
                    return Err(differs(p, &k, "derived from the log, missing live"));
                }
                (Some((ka, va)), Some((kb, vb))) => {
                    if ka != kb {
                        let (k, what) = if ka < kb {
                            (ka, "present live, missing from the log")
                        } else {
                            (kb, "derived from the log, missing live")
                        };
                        return Err(differs(p, &k, what));
                    }
                    if va != vb {
                        return Err(differs(p, &ka, "live value differs from the rebuilt one"));
                    }
                }
            }
        }
    }
    Ok(())
}

fn differs(p: Proj, key: &[u8], what: &str) -> ReplayError {
    let key = match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => key.iter().map(|b| format!("{b:02x}")).collect(),
    };
    ReplayError::Differs {
        tree: p.name(),
        key,
        what: what.to_owned(),
    }
}
