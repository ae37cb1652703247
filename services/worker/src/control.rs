//! What the planner tells a running worker: cancellations (`shoal.cancel.<pool>.<task>`,
//! watched by every worker of the pool) and maintenance drain/resume (`shoal.control.<pool>.<worker>`). Both come on
//! core NATS and may be lost; the planner sends cancellations more than once and compares the
//! drain state with every heartbeat, and a worker remembers recent cancellations so a task
//! cancelled while queued never starts here. Each is acted on only when the planner signed
//! it for this worker's pool (and, for instructions, this worker); others are ignored and
//! logged (`trust`).

use crate::WorkerConfig;
use crate::trust::RefusalLog;
use futures::StreamExt;
use shoal_shared::messages::WorkerControl;
use shoal_shared::signed::{Binding, Kind, Refusal};
use shoal_shared::subjects::parse_cancel_payload;
use shoal_shared::{TaskId, codec};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a cancellation is remembered for tasks that arrive later.
const REMEMBER: Duration = Duration::from_secs(15 * 60);
/// How many attempts a worker remembers having started, to refuse a copy of one.
const STARTED_REMEMBERED: usize = 65_536;

/// State shared by the pull loop, running tasks, heartbeats and the control listener.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

/// Attempts started on this worker: a set, and the order to forget them in.
type Started = (
    std::collections::HashSet<(TaskId, u32)>,
    std::collections::VecDeque<(TaskId, u32)>,
);

/// One run on this worker: task, attempt, delivery.
pub type RunKey = (TaskId, u32, u32);

#[derive(Debug)]
struct Inner {
    running: Mutex<HashMap<RunKey, CancellationToken>>,
    /// Attempts (task, attempt) this worker started, oldest first out.
    started: Mutex<Started>,
    /// Cancelled tasks: every attempt up to the number, and when it was heard.
    cancelled: Mutex<HashMap<TaskId, (u32, Instant)>>,
    draining: watch::Sender<bool>,
    /// How often a running task's message is kept alive, in ms.
    progress_ms: AtomicU64,
    /// Whether the pool's queue consumer is seen (set by the pull loop, sent in heartbeats).
    readiness: crate::readiness::Readiness,
}

impl Runtime {
    /// A runtime for a worker that is not draining.
    pub fn new(config: &WorkerConfig) -> Runtime {
        Runtime {
            inner: Arc::new(Inner {
                running: Mutex::default(),
                started: Mutex::default(),
                cancelled: Mutex::default(),
                draining: watch::Sender::new(false),
                progress_ms: AtomicU64::new(millis(config.progress_interval)),
                readiness: crate::readiness::Readiness::default(),
            }),
        }
    }

    /// Registers a run that starts; its token fires when it is cancelled. `None` when its
    /// attempt was cancelled before it started.
    pub fn start(&self, run: RunKey) -> Option<CancellationToken> {
        if self.was_cancelled(run.0, run.1) {
            return None;
        }
        let token = CancellationToken::new();
        if let Ok(mut running) = self.inner.running.lock() {
            running.insert(run, token.clone());
        }
        Some(token)
    }

    /// Records that this worker starts an attempt; `false` when it started it before. A
    /// first delivery (`delivery == 1`) of an attempt this worker already started is not the
    /// broker handing it back (that counts deliveries up) but a second copy on the queue —
    /// a replay of a genuine signed message — and is refused by the caller.
    pub fn first_start(&self, task: TaskId, attempt: u32) -> bool {
        let Ok(mut started) = self.inner.started.lock() else {
            return true;
        };
        let (seen, order) = &mut *started;
        if !seen.insert((task, attempt)) {
            return false;
        }
        order.push_back((task, attempt));
        if order.len() > STARTED_REMEMBERED
            && let Some(old) = order.pop_front()
        {
            seen.remove(&old);
        }
        true
    }

    /// Forgets a run that ended.
    pub fn finish(&self, run: RunKey) {
        if let Ok(mut running) = self.inner.running.lock() {
            running.remove(&run);
        }
    }

    /// Whether the planner cancelled this attempt of the task recently.
    pub fn was_cancelled(&self, task: TaskId, attempt: u32) -> bool {
        self.inner
            .cancelled
            .lock()
            .is_ok_and(|c| c.get(&task).is_some_and(|(upto, _)| attempt <= *upto))
    }

    /// Records a cancellation of the task's attempts up to `upto` and stops those that run
    /// here.
    pub fn cancel(&self, task: TaskId, upto: u32) {
        let now = Instant::now();
        if let Ok(mut cancelled) = self.inner.cancelled.lock() {
            cancelled.retain(|_, (_, at)| now.duration_since(*at) < REMEMBER);
            let entry = cancelled.entry(task).or_insert((upto, now));
            *entry = (entry.0.max(upto), now);
        }
        let tokens: Vec<CancellationToken> = self
            .inner
            .running
            .lock()
            .map(|r| {
                r.iter()
                    .filter(|((t, attempt, _), _)| *t == task && *attempt <= upto)
                    .map(|(_, token)| token.clone())
                    .collect()
            })
            .unwrap_or_default();
        for token in tokens {
            tracing::info!(task.id = %task, "cancelled by the planner; stopping it");
            token.cancel();
        }
    }

    /// Whether the worker sees its pool's queue consumer, and why not.
    pub fn readiness(&self) -> &crate::readiness::Readiness {
        &self.inner.readiness
    }

    /// Whether the worker is draining (takes no new tasks).
    pub fn draining(&self) -> bool {
        *self.inner.draining.borrow()
    }

    /// Starts or ends a maintenance drain.
    pub fn set_draining(&self, drain: bool) {
        self.inner.draining.send_if_modified(|d| {
            let changed = *d != drain;
            *d = drain;
            changed
        });
    }

    /// Watches the drain state.
    pub fn watch_draining(&self) -> watch::Receiver<bool> {
        self.inner.draining.subscribe()
    }

    /// How often running tasks' messages are kept alive.
    pub fn progress_interval(&self) -> Duration {
        Duration::from_millis(self.inner.progress_ms.load(Ordering::Relaxed))
    }

    /// Keeps messages alive often enough for the queue's ack wait: three progress acks per
    /// ack wait, never less often than configured.
    pub fn fit_progress_to(&self, config: &WorkerConfig, ack_wait: Duration) {
        let every = config
            .progress_interval
            .min(ack_wait / 3)
            .max(Duration::from_millis(100));
        self.inner
            .progress_ms
            .store(millis(every), Ordering::Relaxed);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Listens for cancellations and instructions until shutdown.
pub async fn listen(
    client: async_nats::Client,
    config: WorkerConfig,
    runtime: Runtime,
    shutdown: CancellationToken,
) {
    let cancel_subject = config.subjects.cancel_pool(&config.pool);
    let control_subject = config.subjects.control(&config.pool, &config.name);
    let refusals = RefusalLog::default();
    let (mut cancels, mut controls) = match (
        client.subscribe(cancel_subject.clone()).await,
        client.subscribe(control_subject.clone()).await,
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot subscribe to cancellations and instructions; cancelled tasks will run to their end here");
            return;
        }
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            Some(msg) = cancels.next() => on_cancel(&msg, &config, &runtime, &refusals),
            Some(msg) = controls.next() => {
                if msg.subject.as_str() != control_subject {
                    continue;
                }
                match codec::decode::<WorkerControl>("worker control", &msg.payload) {
                    Ok(c) if c.worker == config.name => {
                        let binding = to_me(&config, Kind::Control);
                        if let Err(why) = config.trust.verify(msg.headers.as_ref(), &binding, &msg.payload) {
                            refusals.refused("an instruction", &msg.subject, &why);
                            continue;
                        }
                        if c.drain != runtime.draining() {
                            tracing::info!(drain = c.drain, "{}", if c.drain { "draining on request: taking no new tasks" } else { "resuming on request: taking tasks again" });
                        }
                        runtime.set_draining(c.drain);
                    }
                    Ok(c) => tracing::warn!(to = %c.worker, "ignoring an instruction for another worker"),
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed instruction"),
                }
            }
            else => return,
        }
    }
}

/// Acts on a cancellation the planner signed for a task of this worker's pool. Workers hear
/// every pool's cancellations (`shoal.cancel.<task>`): one signed for another pool is not
/// for this worker and is dropped quietly; anything else that does not verify is logged.
fn on_cancel(
    msg: &async_nats::Message,
    config: &WorkerConfig,
    runtime: &Runtime,
    refusals: &RefusalLog,
) {
    let id = msg.subject.rsplit('.').next().unwrap_or_default();
    let (Ok(id), Some(upto)) = (id.parse::<uuid::Uuid>(), parse_cancel_payload(&msg.payload))
    else {
        tracing::warn!(subject = %msg.subject, "ignoring a malformed cancellation");
        return;
    };
    let binding = Binding {
        kind: Kind::Cancel,
        pool: config.pool.clone(),
        id: id.to_string(),
        attempt: Some(upto),
    };
    match config
        .trust
        .verify(msg.headers.as_ref(), &binding, &msg.payload)
    {
        Ok(()) => runtime.cancel(TaskId(id), upto),
        Err(Refusal::WrongPool { .. }) => {}
        Err(why) => refusals.refused("a cancellation", &msg.subject, &why),
    }
}

/// What a message to this worker alone is bound to.
fn to_me(config: &WorkerConfig, kind: Kind) -> Binding {
    Binding {
        kind,
        pool: config.pool.clone(),
        id: config.name.to_string(),
        attempt: None,
    }
}

/// Asks the planner whether this worker is to stay drained, so a worker restarted during
/// maintenance does not take tasks before the planner could tell it. Without an answer
/// (the planner is down) it starts undrained; the next heartbeat corrects it.
pub async fn ask_drain_state(
    client: &async_nats::Client,
    config: &WorkerConfig,
    runtime: &Runtime,
) {
    let subject = config.subjects.drain_state(&config.pool, &config.name);
    let asked = tokio::time::timeout(
        Duration::from_secs(2),
        client.request(subject, bytes::Bytes::new()),
    )
    .await;
    match asked {
        Ok(Ok(reply)) => match codec::decode::<WorkerControl>("worker control", &reply.payload) {
            Ok(c) if c.worker == config.name => {
                let binding = to_me(config, Kind::DrainState);
                if let Err(why) =
                    config
                        .trust
                        .verify(reply.headers.as_ref(), &binding, &reply.payload)
                {
                    tracing::warn!(reason = %why, "ignoring a drain-state answer whose signature does not verify; starting undrained");
                    return;
                }
                if c.drain {
                    tracing::info!(
                        "the planner has this worker drained: taking no tasks until resumed"
                    );
                }
                runtime.set_draining(c.drain);
            }
            Ok(_) => {
                tracing::warn!("the planner answered about another worker; starting undrained")
            }
            Err(e) => {
                tracing::warn!(error = %e, "malformed drain state from the planner; starting undrained")
            }
        },
        Ok(Err(e)) => {
            tracing::info!(error = %e, "no drain state from the planner (is it running?); starting undrained")
        }
        Err(_) => tracing::info!(
            "the planner did not say whether to stay drained within 2 s; starting undrained"
        ),
    }
}
