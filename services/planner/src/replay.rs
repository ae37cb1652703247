//! Offline replay: verifies the hash chain of the log, rebuilds every projection and the
//! stream index from the records in memory, and compares them with the stored ones byte for
//! byte (or, with `replace`, writes the rebuilt ones over them).

use crate::domain::{Changes, State};
use crate::log::{
    EventLog, Head, LogError, Proj, STREAM_INDEX, Stored, chunk_records, decode_event,
    describe_key, key_space, outbox_key, package_key, record_hash, row_write, stream_rows,
};
use shoal_shared::codec;
use shoal_shared::events::Envelope;

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
    rows.push((STREAM_INDEX, 0));
    let mut count = |key: &[u8]| {
        let name = key_space(key);
        if let Some(r) = rows.iter_mut().find(|(n, _)| *n == name) {
            r.1 += 1;
        }
    };
    if replace {
        let mut all = Vec::new();
        for kv in expected(&rebuilt) {
            let kv = kv?;
            count(&kv.0);
            all.push(kv);
        }
        log.set_checkpoint(0)?;
        log.replace_derived(all)?;
        log.set_checkpoint(rebuilt.head.seq)?;
    } else {
        compare(log, expected(&rebuilt), &mut count)?;
    }
    let state = &rebuilt.state;
    Ok(ReplayReport {
        events: rebuilt.head.seq,
        pools: state.pools.len(),
        targets: state.targets.len(),
        deployments: state.deployments.len(),
        tasks: state.tasks.len(),
        workers: state.workers.len(),
        rows,
    })
}

/// The state and chain head rebuilt from the records, with the rows written once (task
/// output, the stream index), sorted by key.
struct Rebuilt {
    state: State,
    head: Head,
    rows: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One chunk's records, the chain verified and the envelopes decoded.
struct Decoded {
    first: u64,
    records: Vec<Envelope>,
}

/// Reads the chunks, verifies the chain and decodes every envelope, sending each chunk on;
/// runs on its own thread beside [`rebuild`], which decodes and applies the events.
/// Returns the chain's end.
fn verify(log: &EventLog, out: &std::sync::mpsc::SyncSender<Result<Decoded, ReplayError>>) -> Head {
    let mut head = Head::default();
    let chunk_of = |first: u64, value: &[u8], head: &mut Head| -> Result<Decoded, ReplayError> {
        let mut records = Vec::new();
        for bytes in chunk_records(value)? {
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
            *head = Head {
                seq,
                hash: record_hash(bytes),
            };
            records.push(env);
        }
        if records.first().is_some_and(|env| env.seq != first) {
            return Err(ReplayError::Chain {
                seq: first,
                what: format!(
                    "chunk keyed {first} starts with sequence {}",
                    records[0].seq
                ),
            });
        }
        Ok(Decoded { first, records })
    };
    for chunk in log.chunks() {
        let decoded = chunk
            .map_err(ReplayError::from)
            .and_then(|(first, value)| chunk_of(first, &value, &mut head));
        let failed = decoded.is_err();
        if out.send(decoded).is_err() || failed {
            break;
        }
    }
    head
}

fn rebuild(log: &EventLog) -> Result<Rebuilt, ReplayError> {
    let mut state = State::default();
    let mut rows = Vec::new();
    let mut changes = Changes::default();
    // Reading and verifying the chain (hashes, envelopes) take about as long as decoding and
    // applying the events: one thread each.
    let (tx, rx) = std::sync::mpsc::sync_channel(256);
    let head = std::thread::scope(|scope| -> Result<Head, ReplayError> {
        let verifier = scope.spawn(move || verify(log, &tx));
        for decoded in rx {
            let Decoded { first, records } = decoded?;
            let mut streams = Vec::with_capacity(records.len());
            for env in records {
                let event = decode_event(&env).map_err(LogError::from)?;
                if event.event_type() != env.event_type {
                    return Err(ReplayError::Chain {
                        seq: env.seq,
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
                    rows.push((p.key(&k), v));
                }
                // Every document in the rebuilt state is compared at the end.
                changes.docs.clear();
                streams.push((env.seq, env.stream));
            }
            rows.extend(stream_rows(
                first,
                streams.iter().map(|(seq, s)| (*seq, s.as_str())),
            ));
        }
        verifier
            .join()
            .map_err(|_| LogError::Corrupt("the verifying thread panicked".into()).into())
    })?;
    // A row written again (a repeated output line) replaces the earlier one, as in the
    // tree: sort stably and keep the last of equal keys.
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows.reverse();
    rows.dedup_by(|later, earlier| later.0 == earlier.0);
    rows.reverse();
    Ok(Rebuilt { state, head, rows })
}

type Pair = (Vec<u8>, Vec<u8>);
type Kv = Result<Pair, LogError>;

/// Every derived key and value the rebuilt state implies, in the tree's key order: each
/// projection's documents come from the state's ordered maps (their keys sort as their
/// encodings do), encoded one at a time rather than held. [`compare`] checks the order.
fn expected(r: &Rebuilt) -> impl Iterator<Item = Kv> + '_ {
    fn docs<'a, K: 'a, V: serde::Serialize + 'a>(
        p: Proj,
        map: impl Iterator<Item = (&'a K, &'a V)> + 'a,
        key: impl Fn(&K) -> Vec<u8> + 'a,
    ) -> Box<dyn Iterator<Item = Kv> + 'a> {
        Box::new(map.map(move |(k, v)| Ok((p.key(&key(k)), codec::encode(v)?))))
    }
    let s = &r.state;
    let output = Proj::Output.key(b"");
    let split = r
        .rows
        .partition_point(|(k, _)| k.as_slice() < output.as_slice());
    let rows = |range: std::ops::Range<usize>| -> Box<dyn Iterator<Item = Kv> + '_> {
        Box::new(
            r.rows[range]
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.clone()))),
        )
    };
    let outbox =
        Box::new(s.outbox.iter().map(|(task, attempt)| {
            Ok((Proj::Outbox.key(&outbox_key(task, *attempt)), Vec::new()))
        }));
    let output_end = split + r.rows[split..].partition_point(|(k, _)| k.starts_with(&output));
    // Package versions are ordered by id, then semantic version, but keyed `<id>/<version>`
    // (`a-b/` sorts before `a/`, `1.10.0` before `1.9.0`): sorted by key here.
    let mut packages: Vec<_> = s
        .packages
        .iter()
        .map(|((id, version), doc)| (Proj::Packages.key(&package_key(id, version)), doc))
        .collect();
    packages.sort_by(|a, b| a.0.cmp(&b.0));
    let packages = Box::new(
        packages
            .into_iter()
            .map(|(k, doc)| Ok((k, codec::encode(doc)?))),
    );
    // Projection tags in byte order: D, G, H, K, L, O, P, S, T, W, X, Y; then the stream
    // index (`s`).
    let parts: Vec<Box<dyn Iterator<Item = Kv> + '_>> = vec![
        rows(0..split),
        docs(Proj::Deployments, s.deployments.iter(), |id| {
            id.as_bytes().to_vec()
        }),
        packages,
        docs(Proj::Webhooks, s.webhooks.iter(), |n| n.as_str().into()),
        docs(Proj::Tasks, s.tasks.iter(), |id| id.as_bytes().to_vec()),
        rows(split..output_end),
        outbox,
        docs(Proj::Pools, s.pools.iter(), |n| n.as_str().into()),
        docs(Proj::Sessions, s.sessions.iter(), |id| id.as_bytes().into()),
        docs(Proj::Targets, s.targets.iter(), |n| n.as_str().into()),
        docs(Proj::Workers, s.workers.iter(), |n| n.as_str().into()),
        docs(Proj::Tokens, s.tokens.iter(), |h| h.as_bytes().into()),
        docs(Proj::Idempotency, s.idempotency.iter(), |k| {
            k.as_bytes().into()
        }),
        rows(output_end..r.rows.len()),
    ];
    parts.into_iter().flatten()
}

/// Walks the stored derived keys and the rebuilt ones side by side, in key order. The stored
/// ones are read on a second thread while this one encodes the rebuilt ones.
fn compare(
    log: &EventLog,
    rebuilt: impl Iterator<Item = Kv>,
    count: &mut impl FnMut(&[u8]),
) -> Result<(), ReplayError> {
    type Part = Vec<Result<(Stored, Stored), LogError>>;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Part>(64);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut live = log.derived();
            loop {
                let part: Part = live.by_ref().take(1024).collect();
                if part.is_empty() || tx.send(part).is_err() {
                    return;
                }
            }
        });
        let mut live = rx.into_iter().flatten();
        walk(&mut live, rebuilt, count)
    })
}

fn walk(
    live: &mut impl Iterator<Item = Result<(Stored, Stored), LogError>>,
    mut ours: impl Iterator<Item = Kv>,
    count: &mut impl FnMut(&[u8]),
) -> Result<(), ReplayError> {
    let mut last: Vec<u8> = Vec::new();
    let mut next_ours = |last: &mut Vec<u8>| -> Result<Option<Pair>, ReplayError> {
        let Some(kv) = ours.next().transpose()? else {
            return Ok(None);
        };
        if !last.is_empty() && kv.0 <= *last {
            let (tree, key) = describe_key(&kv.0);
            return Err(LogError::Corrupt(format!(
                "replay rebuilt {tree} {key} out of key order (a bug in replay)"
            ))
            .into());
        }
        last.clone_from(&kv.0);
        Ok(Some(kv))
    };
    let (mut a, mut b) = (live.next().transpose()?, next_ours(&mut last)?);
    loop {
        match (&a, &b) {
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
                count(kb);
                a = live.next().transpose()?;
                b = next_ours(&mut last)?;
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
