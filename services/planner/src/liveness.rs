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
    /// When the planner received it (its own clock, so worker clock skew does not matter).
    pub last_seen: Timestamp,
}

impl Live {
    /// Whether the worker counts as online at `now`.
    pub fn online(&self, now: Timestamp) -> bool {
        now.millis_since(self.last_seen) <= MISSED_BEATS * self.interval_ms.max(100) + 250
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

    /// Every worker seen since start.
    pub fn snapshot(&self) -> HashMap<WorkerName, Live> {
        self.inner.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Online workers per pool.
    pub fn online_per_pool(&self, now: Timestamp) -> HashMap<PoolName, usize> {
        let mut out = HashMap::new();
        // A draining worker takes nothing: it does not count for its pool.
        for live in self
            .snapshot()
            .values()
            .filter(|l| l.online(now) && !l.draining)
        {
            *out.entry(live.pool.clone()).or_insert(0) += 1;
        }
        out
    }
}
