//! Workers: the worker document, how joins, departures and drains change it, and the
//! `DrainWorker` command (maintenance: stop taking tasks, or take them again), and whether a
//! heartbeat or a drain-state question comes from the worker it names.

use super::decide::{NewEvent, Rejection, join};
use super::state::{Changes, DocKey, State};
use serde::{Deserialize, Serialize};
use shoal_shared::events::Event;
use shoal_shared::subjects::SubjectOwner;
use shoal_shared::{PoolName, RegionName, Timestamp, WorkerName};

/// A worker that has joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerDoc {
    pub name: WorkerName,
    pub pool: PoolName,
    pub region: Option<RegionName>,
    pub slots: u32,
    pub version: String,
    pub joined_at: Timestamp,
    pub left_at: Option<Timestamp>,
    pub left_reason: Option<String>,
    /// Asked to take no new tasks until resumed (maintenance); survives restarts.
    #[serde(default)]
    pub draining: bool,
    /// The planner stopped hearing the worker's heartbeats (`WorkerWentOffline`) and has not
    /// heard them again (`WorkerCameOnline`) nor seen it join since. Left out of the
    /// document when false, so documents written before it keep their bytes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub offline: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl WorkerDoc {
    /// Whether the log has the worker as online: joined, not left, not gone silent.
    pub fn online(&self) -> bool {
        self.left_at.is_none() && !self.offline
    }
}

impl State {
    /// How a worker's events change the state.
    pub(super) fn apply_worker(&mut self, event: &Event, changes: &mut Changes) {
        match event {
            Event::WorkerJoined {
                worker,
                pool,
                region,
                slots,
                version,
                at,
            } => {
                let doc = WorkerDoc {
                    name: worker.clone(),
                    pool: pool.clone(),
                    region: region.clone(),
                    slots: *slots,
                    version: version.clone(),
                    joined_at: *at,
                    left_at: None,
                    left_reason: None,
                    // A drain outlives the worker's restarts.
                    draining: self.workers.get(worker).is_some_and(|w| w.draining),
                    offline: false,
                };
                self.workers.insert(worker.clone(), doc);
                changes.docs.insert(DocKey::Worker(worker.clone()));
            }
            Event::WorkerLeft {
                worker, reason, at, ..
            } => {
                if let Some(w) = self.workers.get_mut(worker) {
                    w.left_at = Some(*at);
                    w.left_reason = Some(reason.clone());
                    changes.docs.insert(DocKey::Worker(worker.clone()));
                }
            }
            Event::WorkerDrainRequested { worker, .. } | Event::WorkerResumed { worker, .. } => {
                if let Some(w) = self.workers.get_mut(worker) {
                    w.draining = matches!(event, Event::WorkerDrainRequested { .. });
                    changes.docs.insert(DocKey::Worker(worker.clone()));
                }
            }
            Event::WorkerWentOffline { worker, .. } | Event::WorkerCameOnline { worker, .. } => {
                if let Some(w) = self.workers.get_mut(worker) {
                    w.offline = matches!(event, Event::WorkerWentOffline { .. });
                    changes.docs.insert(DocKey::Worker(worker.clone()));
                }
            }
            _ => {}
        }
    }
}

/// `WorkerPresence`: records that the planner stopped or started hearing a worker's
/// heartbeats; nothing when the log says so already, or for a worker that never joined or
/// has left (its departure said it all).
pub(super) fn presence(
    state: &State,
    worker: &WorkerName,
    online: bool,
    last_seen: Option<Timestamp>,
) -> Vec<NewEvent> {
    let Some(w) = state.workers.get(worker) else {
        return vec![];
    };
    if w.online() == online || w.left_at.is_some() {
        return vec![];
    }
    let (worker, pool) = (worker.clone(), w.pool.clone());
    vec![NewEvent::new(if online {
        Event::WorkerCameOnline { worker, pool }
    } else {
        Event::WorkerWentOffline {
            worker,
            pool,
            last_seen,
        }
    })]
}

/// `DrainWorker`: asks a worker to stop taking tasks, or to take them again; nothing when
/// it already does what is asked.
pub(super) fn drain(
    state: &State,
    worker: &WorkerName,
    drain: bool,
) -> Result<Vec<NewEvent>, Rejection> {
    let Some(w) = state.workers.get(worker) else {
        return Err(Rejection::NotFound(format!(
            "unknown worker \"{worker}\" (known: {})",
            join(state.workers.keys())
        )));
    };
    let (worker, pool) = (worker.clone(), w.pool.clone());
    Ok(if w.draining == drain {
        vec![]
    } else if drain {
        vec![NewEvent::new(Event::WorkerDrainRequested { worker, pool })]
    } else {
        vec![NewEvent::new(Event::WorkerResumed { worker, pool })]
    })
}

/// Why a heartbeat is refused: it claims another pool or worker than the subject it arrived
/// on (`shoal.heartbeat.<pool>.<worker>`, which only that worker may publish on).
pub fn heartbeat_refusal(
    from: &SubjectOwner,
    pool: &PoolName,
    worker: &WorkerName,
) -> Option<String> {
    super::report::impersonation(from, pool, worker)
}

/// Why a starting worker's drain-state question is refused: its subject names a worker the
/// planner knows (from its heartbeats) in another pool, so the asker is not that worker.
pub fn drain_state_refusal(from: &SubjectOwner, known_pool: Option<&PoolName>) -> Option<String> {
    known_pool.filter(|p| **p != from.pool).map(|p| {
        format!(
            "a drain-state question arrived on the subject of {from}, but worker \"{}\" is in pool \"{p}\"",
            from.worker
        )
    })
}
