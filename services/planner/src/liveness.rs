//! Worker liveness from heartbeats, kept in memory: heartbeats are frequent and carry no fact
//! worth an event. A worker is online while its last heartbeat is younger than three
//! heartbeat intervals.

use shoal_shared::messages::Heartbeat;
use shoal_shared::{PoolName, RegionName, Timestamp, WorkerName};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Heartbeats missed before a worker counts as offline.
pub const MISSED_BEATS: u64 = 3;

/// The last heartbeat of a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub pool: PoolName,
    pub region: Option<RegionName>,
    pub slots: u32,
    pub busy: u32,
    pub interval_ms: u64,
    /// The worker says it is draining.
    pub draining: bool,
    pub free_disk_mb: Option<u64>,
    /// What the worker finds wrong with itself.
    pub warnings: Vec<String>,
    /// Whether the worker sees its pool's queue consumer; `None`: not known (its first lookup
    /// has not ended, or a worker older than readiness), counted as ready.
    pub ready: Option<bool>,
    /// Why the worker is not ready.
    pub not_ready_reason: Option<String>,
    /// When the planner received it (its own clock, so worker clock skew does not matter).
    pub last_seen: Timestamp,
}

impl Live {
    /// Whether the worker counts as online at `now`.
    pub fn online(&self, now: Timestamp) -> bool {
        now.millis_since(self.last_seen) <= MISSED_BEATS * self.interval_ms.max(100) + 250
    }

    /// Whether the worker can take its pool's tasks as far as it knows: only a worker that
    /// says it cannot see its pool's queue consumer is not ready.
    pub fn ready(&self) -> bool {
        self.ready != Some(false)
    }
}

/// Shared view of worker liveness. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    inner: Arc<Mutex<HashMap<WorkerName, Live>>>,
    /// The drain state the log wants for each worker that has one.
    wanted: Arc<Mutex<HashMap<WorkerName, bool>>>,
}

impl Liveness {
    /// Records a heartbeat. Returns the drain state to send the worker when its own differs
    /// from the one the log wants.
    pub fn beat(&self, hb: Heartbeat) -> Option<bool> {
        let wanted = self.wanted_draining(&hb.worker);
        let resend = (wanted != hb.draining).then_some(wanted);
        let live = Live {
            pool: hb.pool,
            region: hb.region,
            slots: hb.slots,
            busy: hb.busy,
            interval_ms: hb.interval_ms,
            draining: hb.draining,
            free_disk_mb: hb.free_disk_mb,
            warnings: hb.warnings,
            ready: hb.ready,
            not_ready_reason: hb.not_ready_reason,
            last_seen: Timestamp::now(),
        };
        if let Ok(mut map) = self.inner.lock() {
            map.insert(hb.worker, live);
        }
        resend
    }

    /// The drain state the log wants for a worker.
    pub fn wanted_draining(&self, worker: &WorkerName) -> bool {
        self.wanted
            .lock()
            .ok()
            .and_then(|w| w.get(worker).copied())
            .unwrap_or(false)
    }

    /// Sets the drain state the log wants for a worker.
    pub fn want_draining(&self, worker: &WorkerName, drain: bool) {
        if let Ok(mut w) = self.wanted.lock() {
            w.insert(worker.clone(), drain);
        }
    }

    /// The pool a worker's last heartbeat came from, if it sent one since start.
    pub fn pool_of(&self, worker: &WorkerName) -> Option<PoolName> {
        self.inner
            .lock()
            .ok()
            .and_then(|m| m.get(worker).map(|l| l.pool.clone()))
    }

    /// Every worker seen since start.
    pub fn snapshot(&self) -> HashMap<WorkerName, Live> {
        self.inner.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Online workers per pool.
    pub fn online_per_pool(&self, now: Timestamp) -> HashMap<PoolName, usize> {
        self.load_per_pool(now)
            .into_iter()
            .map(|(pool, load)| (pool, load.workers))
            .collect()
    }

    /// What the online workers of every pool can take now, from their last heartbeats.
    pub fn load_per_pool(&self, now: Timestamp) -> HashMap<PoolName, PoolLoad> {
        let mut out: HashMap<PoolName, PoolLoad> = HashMap::new();
        // A draining worker, or one that cannot see its pool's queue, takes nothing: it does
        // not count for its pool.
        for live in self
            .snapshot()
            .into_values()
            .filter(|l| l.online(now) && !l.draining && l.ready())
        {
            let load = out.entry(live.pool).or_default();
            load.workers += 1;
            load.slots = load.slots.saturating_add(live.slots);
            load.busy = load.busy.saturating_add(live.busy);
        }
        out
    }
}

/// What the online workers of a pool (draining and not-ready ones excepted) can take now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolLoad {
    pub workers: usize,
    pub slots: u32,
    pub busy: u32,
}

/// A heartbeat of `worker` in pool `eu-west` (2 s interval), for tests.
#[cfg(test)]
pub(crate) fn beat(worker: &str, ready: Option<bool>) -> Heartbeat {
    use shoal_shared::messages::WIRE_SCHEMA_VERSION;
    Heartbeat {
        schema_version: WIRE_SCHEMA_VERSION,
        worker: WorkerName::parse(worker).expect("valid"),
        pool: PoolName::parse("eu-west").expect("valid"),
        region: None,
        slots: 1,
        busy: 0,
        interval_ms: 2000,
        sent_at: Timestamp::now(),
        draining: false,
        free_disk_mb: None,
        warnings: vec![],
        ready,
        not_ready_reason: (ready == Some(false)).then(|| "no consumer".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_is_not_ready_does_not_count_for_its_pool() {
        let l = Liveness::default();
        l.beat(beat("w1", Some(false)));
        l.beat(beat("w2", None));
        l.beat(beat("w3", Some(true)));
        let pool = PoolName::parse("eu-west").expect("valid");
        assert_eq!(l.online_per_pool(Timestamp::now()).get(&pool), Some(&2));
        let w1 = WorkerName::parse("w1").expect("valid");
        let live = l.snapshot().remove(&w1).expect("seen");
        assert!(!live.ready());
        assert_eq!(live.not_ready_reason.as_deref(), Some("no consumer"));
    }
}
