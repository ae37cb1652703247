//! The planner's Prometheus metrics, served at `/metrics` (OpenMetrics text, a viewer token).
//!
//! Three kinds of figure, each measured where it happens and nowhere else:
//! - **from the log's writer**, as records are appended: tasks finished by pool and outcome,
//!   schedule-to-start and run time per pool, and, from each document it changes, tasks by
//!   state and pool and targets by health; the writer also times each batch's write and
//!   flush;
//! - **from the edges**: messages refused by reason (the rejection recorder), the event
//!   feed's published sequence and lag (its publisher);
//! - **at scrape time**: workers and pools from the last heartbeats (workers open no port:
//!   their figures ride their heartbeats) and each pool's queue depth from its consumer.

use crate::domain::{DocKey, State};
use crate::liveness::Live;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use shoal_shared::{PoolName, TargetName, TaskId, TaskState, Timestamp, WorkerName};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Labels of a pool's figures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

/// Labels of task counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub pool: String,
    pub state: &'static str,
}

/// Labels of one worker's figures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub pool: String,
    pub worker: String,
    pub region: String,
}

/// Labels of a count by state (targets' health).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

/// Labels of refused messages.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

type Histograms = Family<PoolLabel, Histogram, fn() -> Histogram>;

/// Every figure. Cheap to clone (each metric is shared).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    tasks: Family<TaskLabels, Gauge>,
    finished: Family<TaskLabels, Counter>,
    schedule_to_start: Histograms,
    run_time: Histograms,
    targets: Family<StateLabel, Gauge>,
    log_write: Histogram,
    log_flush: Histogram,
    log_seq: Gauge,
    feed_seq: Gauge,
    feed_lag_records: Gauge,
    feed_lag: Histogram,
    refused: Family<ReasonLabel, Counter>,
    queue_pending: Family<PoolLabel, Gauge>,
    queue_unacked: Family<PoolLabel, Gauge>,
    pool_workers: Family<PoolLabel, Gauge>,
    pool_slots: Family<PoolLabel, Gauge>,
    pool_busy: Family<PoolLabel, Gauge>,
    worker_up: Family<WorkerLabels, Gauge>,
    worker_slots: Family<WorkerLabels, Gauge>,
    worker_busy: Family<WorkerLabels, Gauge>,
    worker_draining: Family<WorkerLabels, Gauge>,
    worker_free_disk: Family<WorkerLabels, Gauge>,
    worker_seen: Family<WorkerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Where each task not yet ended and each target is counted.
    seen: Arc<Mutex<Seen>>,
    /// Serialises scrapes: each refreshes the scrape-time figures before it encodes.
    scraping: Arc<Mutex<()>>,
}

/// Seconds, from 1 ms to about an hour (22 buckets).
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 22))
}

/// Seconds, from 10 ms to about 6 hours (22 buckets): a task's run.
fn run_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 22))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every figure, registered under `shoal_`.
    #[must_use]
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("shoal");
        let m = Metrics {
            registry: Arc::default(),
            tasks: Family::default(),
            finished: Family::default(),
            schedule_to_start: Family::new_with_constructor(seconds),
            run_time: Family::new_with_constructor(run_seconds),
            targets: Family::default(),
            log_write: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            log_flush: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            log_seq: Gauge::default(),
            feed_seq: Gauge::default(),
            feed_lag_records: Gauge::default(),
            feed_lag: seconds(),
            refused: Family::default(),
            queue_pending: Family::default(),
            queue_unacked: Family::default(),
            pool_workers: Family::default(),
            pool_slots: Family::default(),
            pool_busy: Family::default(),
            worker_up: Family::default(),
            worker_slots: Family::default(),
            worker_busy: Family::default(),
            worker_draining: Family::default(),
            worker_free_disk: Family::default(),
            worker_seen: Family::default(),
            seen: Arc::default(),
            scraping: Arc::default(),
        };
        m.register(&mut r);
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "tasks",
            "Tasks not yet ended, by pool and state",
            self.tasks.clone(),
        );
        r.register(
            "tasks_finished",
            "Tasks ended, by pool and final state",
            self.finished.clone(),
        );
        r.register(
            "task_schedule_to_start_seconds",
            "From a task's attempt planned to its run started on a worker, by pool",
            self.schedule_to_start.clone(),
        );
        r.register(
            "task_run_seconds",
            "From a task's run started to its end, by pool",
            self.run_time.clone(),
        );
        r.register("targets", "Targets by health state", self.targets.clone());
        r.register(
            "log_append_seconds",
            "Writing one batch of records and projections to the log (before its flush)",
            self.log_write.clone(),
        );
        r.register(
            "log_flush_seconds",
            "Flushing written batches of the log to disk",
            self.log_flush.clone(),
        );
        r.register(
            "log_sequence",
            "The log's last durable record",
            self.log_seq.clone(),
        );
        r.register(
            "feed_published_sequence",
            "The last record the event feed's stream confirmed",
            self.feed_seq.clone(),
        );
        r.register(
            "feed_lag_records",
            "Durable records not yet confirmed by the event feed's stream",
            self.feed_lag_records.clone(),
        );
        r.register(
            "feed_lag_seconds",
            "From a record's time to the feed's stream confirming it",
            self.feed_lag.clone(),
        );
        r.register(
            "refused_messages",
            "Messages refused (recorded in full or counted), by reason",
            self.refused.clone(),
        );
        r.register(
            "pool_queue_pending",
            "Tasks in a pool's queue not yet delivered to a worker",
            self.queue_pending.clone(),
        );
        r.register(
            "pool_queue_unacked",
            "Tasks delivered to a pool's workers and not yet acknowledged",
            self.queue_unacked.clone(),
        );
        r.register(
            "pool_workers_online",
            "Online workers of a pool that take tasks (not draining, ready)",
            self.pool_workers.clone(),
        );
        r.register(
            "pool_slots",
            "Task slots of a pool's online workers",
            self.pool_slots.clone(),
        );
        r.register(
            "pool_busy_slots",
            "Busy task slots of a pool's online workers",
            self.pool_busy.clone(),
        );
        r.register(
            "worker_up",
            "1 while a worker's heartbeats arrive, else 0",
            self.worker_up.clone(),
        );
        r.register(
            "worker_slots",
            "A worker's task slots (its last heartbeat)",
            self.worker_slots.clone(),
        );
        r.register(
            "worker_busy_slots",
            "A worker's busy task slots (its last heartbeat)",
            self.worker_busy.clone(),
        );
        r.register(
            "worker_draining",
            "1 while a worker is draining",
            self.worker_draining.clone(),
        );
        r.register(
            "worker_free_disk_bytes",
            "Free space where a worker runs tasks",
            self.worker_free_disk.clone(),
        );
        r.register(
            "worker_last_seen_seconds",
            "Seconds since a worker's last heartbeat",
            self.worker_seen.clone(),
        );
    }
}

/// Seconds from `from` to `to` (ms resolution), never negative.
#[expect(clippy::cast_precision_loss, reason = "durations of a histogram")]
fn secs(from: Timestamp, to: Timestamp) -> f64 {
    to.millis_since(from) as f64 / 1000.0
}

/// A state's name as the API spells it (`retry_scheduled`).
fn label_of<T: serde::Serialize + std::fmt::Debug>(s: &T) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{s:?}"))
}

/// A task state's name as the API spells it, without allocating (the writer counts every
/// change).
fn state_name(s: TaskState) -> &'static str {
    match s {
        TaskState::Pending => "pending",
        TaskState::Planned => "planned",
        TaskState::Dispatched => "dispatched",
        TaskState::Running => "running",
        TaskState::RetryScheduled => "retry_scheduled",
        TaskState::Succeeded => "succeeded",
        TaskState::Failed => "failed",
        TaskState::TimedOut => "timed_out",
        TaskState::Cancelled => "cancelled",
        TaskState::Skipped => "skipped",
        TaskState::Lost => "lost",
    }
}

/// Where each task not yet ended and each target is counted, so that a change moves it from
/// one count to the other.
#[derive(Debug, Default)]
struct Seen {
    tasks: HashMap<TaskId, TaskLabels>,
    targets: HashMap<TargetName, StateLabel>,
}

fn pool_label(pool: &PoolName) -> PoolLabel {
    PoolLabel {
        pool: pool.to_string(),
    }
}

/// Whether a task in this state has not ended.
fn active(s: TaskState) -> bool {
    matches!(
        s,
        TaskState::Pending
            | TaskState::Planned
            | TaskState::Dispatched
            | TaskState::Running
            | TaskState::RetryScheduled
    )
}

impl Metrics {
    /// Counts every task not yet ended and every target's health in `state`: at the
    /// writer's start, before any change. (Tasks still running of deployments that ended,
    /// which a start does not read back into memory, are counted from their next change.)
    pub fn count_all(&self, state: &State) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in state.tasks.keys() {
            self.task_changed(&mut seen, *id, state);
        }
        for name in state.targets.keys() {
            self.target_changed(&mut seen, name, state);
        }
    }

    /// A document the writer changed: tasks and targets move between the counts.
    pub fn changed(&self, key: &DocKey, state: &State) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match key {
            DocKey::Task(id) => self.task_changed(&mut seen, *id, state),
            DocKey::Target(name) => self.target_changed(&mut seen, name, state),
            _ => {}
        }
    }

    fn task_changed(&self, seen: &mut Seen, id: TaskId, state: &State) {
        let Some(t) = state.tasks.get(&id) else {
            return;
        };
        let now = state_name(t.state);
        let before = seen.tasks.get(&id).cloned();
        if before.as_ref().is_some_and(|b| b.state == now) {
            return;
        }
        if let Some(b) = &before {
            self.tasks.get_or_create(b).dec();
        }
        let labels = TaskLabels {
            pool: t.pool.to_string(),
            state: now,
        };
        if active(t.state) {
            self.tasks.get_or_create(&labels).inc();
            seen.tasks.insert(id, labels.clone());
        } else {
            seen.tasks.remove(&id);
        }
        // Moves of a task counted before (not one read from disk at a start).
        let Some(before) = before else { return };
        let pool = PoolLabel {
            pool: labels.pool.clone(),
        };
        if now == "running"
            && let (Some(planned), Some(started)) = (t.planned_at, t.started_at)
        {
            self.schedule_to_start
                .get_or_create(&pool)
                .observe(secs(planned, started));
        }
        if before.state == "running"
            && let (Some(started), Some(ended)) = (t.started_at, t.finished_at)
        {
            self.run_time
                .get_or_create(&pool)
                .observe(secs(started, ended));
        }
        if !active(t.state) {
            self.finished.get_or_create(&labels).inc();
        }
    }

    fn target_changed(&self, seen: &mut Seen, name: &TargetName, state: &State) {
        let now = state.targets.get(name).map(|t| StateLabel {
            state: t
                .health
                .as_ref()
                .map_or_else(|| "unknown".to_owned(), |h| label_of(&h.state)),
        });
        let before = match &now {
            Some(labels) => seen.targets.insert(name.clone(), labels.clone()),
            None => seen.targets.remove(name),
        };
        if before != now {
            if let Some(b) = before {
                self.targets.get_or_create(&b).dec();
            }
            if let Some(n) = now {
                self.targets.get_or_create(&n).inc();
            }
        }
    }

    /// One batch written to the log in `d`.
    pub fn log_written(&self, d: std::time::Duration) {
        self.log_write.observe(d.as_secs_f64());
    }

    /// One flush of the log in `d`, durable up to `seq`.
    pub fn log_flushed(&self, d: std::time::Duration) {
        self.log_flush.observe(d.as_secs_f64());
    }

    /// The log is durable up to `seq`.
    pub fn log_durable(&self, seq: u64) {
        self.log_seq.set(i64::try_from(seq).unwrap_or(i64::MAX));
    }

    /// The feed's stream holds the log up to `seq` (where its publisher starts).
    pub fn feed_at(&self, seq: u64) {
        self.feed_seq.set(gauge(seq));
    }

    /// The feed's stream confirmed records up to `seq`, the last of them written at `time`.
    pub fn feed_confirmed(&self, seq: u64, time: Timestamp) {
        self.feed_at(seq);
        self.feed_lag.observe(secs(time, Timestamp::now()));
    }

    /// A message was refused for `reason` (a short name, e.g. `impersonation`).
    pub fn refused(&self, reason: &str) {
        let labels = ReasonLabel {
            reason: reason.to_owned(),
        };
        self.refused.get_or_create(&labels).inc();
    }
}

/// A pool's queue as its consumer reports it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Queue {
    /// Not yet delivered to a worker.
    pub pending: u64,
    /// Delivered and not yet acknowledged.
    pub unacked: u64,
}

/// The queue of each pool that has a consumer, asked of the broker within 2 s each (a pool
/// the broker does not answer for in time is left out of this scrape).
pub async fn queues(
    js: &async_nats::jetstream::Context,
    subjects: &shoal_shared::subjects::Subjects,
    pools: Vec<PoolName>,
) -> Vec<(PoolName, Queue)> {
    let wait = std::time::Duration::from_secs(2);
    let Ok(Ok(stream)) = tokio::time::timeout(wait, js.get_stream(subjects.tasks_stream())).await
    else {
        return Vec::new();
    };
    let asks = pools.into_iter().map(|pool| {
        let stream = &stream;
        async move {
            let ask = stream.consumer_info(subjects.pool_consumer(&pool));
            let info = tokio::time::timeout(wait, ask).await.ok()?.ok()?;
            let unacked = u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX);
            Some((
                pool,
                Queue {
                    pending: info.num_pending,
                    unacked,
                },
            ))
        }
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Metrics {
    /// Every figure as OpenMetrics text, those of workers and pools refreshed from the last
    /// heartbeats (`workers`) and the pools' `queues`.
    #[must_use]
    pub fn render(
        &self,
        workers: &HashMap<WorkerName, Live>,
        queues: &[(PoolName, Queue)],
        now: Timestamp,
    ) -> String {
        let _scrape = self.scraping.lock();
        self.queue_pending.clear();
        self.queue_unacked.clear();
        for (pool, q) in queues {
            self.queue_pending
                .get_or_create(&pool_label(pool))
                .set(gauge(q.pending));
            self.queue_unacked
                .get_or_create(&pool_label(pool))
                .set(gauge(q.unacked));
        }
        self.set_workers(workers, now);
        // Behind is the log's head less the feed's: true also while the feed is stalled.
        let behind = self
            .log_seq
            .get()
            .saturating_sub(self.feed_seq.get())
            .max(0);
        self.feed_lag_records.set(behind);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }

    fn set_workers(&self, workers: &HashMap<WorkerName, Live>, now: Timestamp) {
        for family in [
            &self.worker_up,
            &self.worker_slots,
            &self.worker_busy,
            &self.worker_draining,
            &self.worker_free_disk,
        ] {
            family.clear();
        }
        self.worker_seen.clear();
        for family in [&self.pool_workers, &self.pool_slots, &self.pool_busy] {
            family.clear();
        }
        // A worker gone for longer than this is no series any more (names of autoscaled
        // workers would otherwise pile up).
        let forgotten = |l: &Live| now.millis_since(l.last_seen) > 10 * 60 * 1000;
        for (name, live) in workers.iter().filter(|(_, l)| !forgotten(l)) {
            let labels = WorkerLabels {
                pool: live.pool.to_string(),
                worker: name.to_string(),
                region: live
                    .region
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            };
            let online = live.online(now);
            self.worker_up.get_or_create(&labels).set(i64::from(online));
            self.worker_slots
                .get_or_create(&labels)
                .set(i64::from(live.slots));
            self.worker_busy
                .get_or_create(&labels)
                .set(i64::from(if online { live.busy } else { 0 }));
            self.worker_draining
                .get_or_create(&labels)
                .set(i64::from(live.draining));
            if let Some(mb) = live.free_disk_mb {
                self.worker_free_disk
                    .get_or_create(&labels)
                    .set(gauge(mb.saturating_mul(1 << 20)));
            }
            self.worker_seen
                .get_or_create(&labels)
                .set(secs(live.last_seen, now));
            let pool = pool_label(&live.pool);
            self.pool_workers.get_or_create(&pool).inc_by(0);
            if online && !live.draining && live.ready() {
                self.pool_workers.get_or_create(&pool).inc();
                self.pool_slots
                    .get_or_create(&pool)
                    .inc_by(i64::from(live.slots));
                self.pool_busy
                    .get_or_create(&pool)
                    .inc_by(i64::from(live.busy));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_state_labels_are_the_apis_names() {
        for s in [
            TaskState::Pending,
            TaskState::Planned,
            TaskState::Dispatched,
            TaskState::Running,
            TaskState::RetryScheduled,
            TaskState::Succeeded,
            TaskState::Failed,
            TaskState::TimedOut,
            TaskState::Cancelled,
            TaskState::Skipped,
            TaskState::Lost,
        ] {
            assert_eq!(state_name(s), label_of(&s));
        }
    }
}
