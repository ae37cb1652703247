//! Records in the log when a worker goes offline and when it comes back
//! (`WorkerWentOffline`, `WorkerCameOnline`), so integrators following the event feed learn
//! it: heartbeats stay in memory ([`Liveness`]), their transitions become facts.
//!
//! Every second the recorder compares what it last told the writer about each worker with
//! what the heartbeats say now; the core records a change only when the log says otherwise
//! (`domain::worker::presence`), so telling it twice, or after a restart, costs nothing.
//! A worker the log has as online that sends no heartbeat after a start is told offline once
//! [`SILENT_AFTER_START`] has passed: long enough for every worker with the default heartbeat
//! (2 s) to have been heard.

use crate::domain::Command;
use crate::domain::state::WorkerDoc;
use crate::liveness::Liveness;
use crate::log::writer::WriterHandle;
use crate::log::{EventLog, Proj};
use shoal_shared::{Timestamp, WorkerName};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often heartbeats are compared with the log.
const EVERY: Duration = Duration::from_secs(1);

/// How long after a start a worker the log knows may stay silent before it is offline.
pub const SILENT_AFTER_START: Duration = Duration::from_secs(10);

/// Records workers' presence changes until `stop`.
pub async fn record(
    liveness: Liveness,
    log: EventLog,
    writer: WriterHandle,
    stop: CancellationToken,
) {
    let started = tokio::time::Instant::now();
    let mut told: HashMap<WorkerName, bool> = HashMap::new();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let silent = started.elapsed() >= SILENT_AFTER_START;
        let seen = match observe(&liveness, &log, silent) {
            Ok(seen) => seen,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the workers the log knows; presence not recorded this round");
                continue;
            }
        };
        for (worker, online, last_seen) in seen {
            if told.get(&worker) == Some(&online) {
                continue;
            }
            let cmd = Command::WorkerPresence {
                worker: worker.clone(),
                online,
                last_seen,
            };
            match writer.execute(cmd).await {
                Ok(_) => {
                    told.insert(worker, online);
                }
                Err(e) => {
                    tracing::warn!(worker = %worker, error = %e, "cannot record a worker's presence")
                }
            }
        }
    }
}

/// Every worker's presence now: those heard since the start by their heartbeats, and (once
/// `silent` is due) the workers the log has as online that have not been heard at all.
fn observe(
    liveness: &Liveness,
    log: &EventLog,
    silent: bool,
) -> Result<Vec<(WorkerName, bool, Option<Timestamp>)>, crate::log::LogError> {
    let now = Timestamp::now();
    let live = liveness.snapshot();
    let mut out: Vec<_> = live
        .iter()
        .map(|(w, l)| (w.clone(), l.online(now), Some(l.last_seen)))
        .collect();
    if silent {
        for doc in log.docs::<WorkerDoc>(Proj::Workers)? {
            if doc.online && doc.left_at.is_none() && !live.contains_key(&doc.name) {
                out.push((doc.name, false, None));
            }
        }
    }
    Ok(out)
}
