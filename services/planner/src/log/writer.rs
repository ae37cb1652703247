//! The single writer of the log. Commands arrive on a bounded channel; the writer takes as
//! many as are waiting (group commit), turns each into events against the in-memory state,
//! lets deployments advance, writes the whole batch in one sled transaction, flushes once,
//! and only then hands new task attempts to the dispatcher and effects to their runner, and
//! answers every command of the batch.
//!
//! The writer runs on an OS thread of its own ([`THREAD_NAME`]): sled's writes and the reads
//! that bring finished deployments back from disk block, and must not hold up a worker of
//! the async runtime that serves HTTP and the broker. The thread polls the writer's loop with
//! a current-thread runtime of its own (channels and sled's flush are futures), so the
//! pipelining stays: the next batch is decided and written while the last one's flush is on
//! its way.

use super::handover::{EffectSender, OutboxPage, TaskSender};
use super::{BatchWrite, EventLog, Head, LogError, Record, doc_write, record_hash, row_write};
use crate::domain::effects::{self, Effect};
use crate::domain::{self, Changes, Command, EventSink, NewEvent, Rejection, State};
use shoal_runtime::telemetry::{child_span, traceparent};
use shoal_shared::auth::Actor;
use shoal_shared::codec;
use shoal_shared::events::{Envelope, Event};
use shoal_shared::messages::TaskMessage;
use shoal_shared::{DeploymentId, EventId, PoolName, TaskId, TaskState, Timestamp};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};

/// Most commands taken into one transaction.
pub const MAX_BATCH: usize = 512;

/// The name of the writer's thread (as `top -H` and a debugger show it).
pub const THREAD_NAME: &str = "shoal-writer";

/// What a command appended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Appended {
    /// Sequence numbers of the appended events (empty: nothing to do, or a duplicate).
    pub seqs: Vec<u64>,
    /// The command was a fact already in the log.
    pub duplicate: bool,
}

/// Why a command was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The writer stopped (the planner is shutting down or the log failed).
    #[error("the event log is not accepting writes: {0}")]
    Unavailable(String),
}

/// Why the writer ended before every handle was dropped.
#[derive(Debug, thiserror::Error)]
pub enum WriterFailed {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("event log writer panicked: {0}")]
    Panicked(String),
}

#[expect(
    clippy::large_enum_variant,
    reason = "nearly every request is a command: boxing it would allocate per command to shrink the rare outbox-page request"
)]
enum Request {
    Command {
        cmd: Command,
        /// Who asked (an API token); `None`: the reporting worker, else the planner.
        actor: Option<Actor>,
        reply: Option<oneshot::Sender<Result<Appended, Rejection>>>,
        /// The trace context of the caller's span, when traces are exported.
        trace: Option<String>,
    },
    /// The dispatcher asks for owed task messages (see [`super::handover`]).
    OutboxPage {
        limit: usize,
        reply: oneshot::Sender<OutboxPage>,
    },
}

/// Sends commands to the writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Request>,
    memory: Arc<InMemory>,
}

/// What the writer holds in memory, as of its last durable batch (for `GET /api/status` and
/// for tests that the writer's memory stays bounded).
#[derive(Debug, Default)]
pub struct InMemory {
    pub deployments: AtomicUsize,
    pub tasks: AtomicUsize,
    pub log_seq: AtomicU64,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Command { cmd, actor, .. } => f
                .debug_struct("Command")
                .field("cmd", cmd)
                .field("actor", actor)
                .finish(),
            Request::OutboxPage { limit, .. } => {
                f.debug_struct("OutboxPage").field("limit", limit).finish()
            }
        }
    }
}

impl WriterHandle {
    /// Deployments and tasks the writer holds in memory, and the log's last sequence.
    pub fn in_memory(&self) -> (usize, usize, u64) {
        (
            self.memory.deployments.load(Ordering::Relaxed),
            self.memory.tasks.load(Ordering::Relaxed),
            self.memory.log_seq.load(Ordering::Relaxed),
        )
    }

    /// Executes a command and waits until its events are durable.
    ///
    /// # Errors
    /// The command was rejected, or the writer is gone.
    pub async fn execute(&self, cmd: Command) -> Result<Appended, WriteError> {
        self.execute_as(None, cmd).await
    }

    /// [`WriterHandle::execute`], recording `actor` (the API token of the request) as who
    /// caused every event the command leads to.
    ///
    /// # Errors
    /// The command was rejected, or the writer is gone.
    pub async fn execute_as(
        &self,
        actor: Option<Actor>,
        cmd: Command,
    ) -> Result<Appended, WriteError> {
        let rx = self.submit_as(actor, cmd).await?;
        rx.await
            .map_err(|_| WriteError::Unavailable("writer stopped before answering".into()))?
            .map_err(WriteError::Rejected)
    }

    /// Queues a command in order and returns where its answer will arrive, so a caller can
    /// keep many commands in flight while preserving their order.
    ///
    /// # Errors
    /// The writer is gone.
    pub async fn submit(
        &self,
        cmd: Command,
    ) -> Result<oneshot::Receiver<Result<Appended, Rejection>>, WriteError> {
        self.submit_as(None, cmd).await
    }

    /// [`WriterHandle::submit`] on behalf of `actor`.
    ///
    /// # Errors
    /// The writer is gone.
    pub async fn submit_as(
        &self,
        actor: Option<Actor>,
        cmd: Command,
    ) -> Result<oneshot::Receiver<Result<Appended, Rejection>>, WriteError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Command {
                cmd,
                actor,
                reply: Some(tx),
                trace: traceparent(&tracing::Span::current()),
            })
            .await
            .map_err(|_| WriteError::Unavailable("writer stopped".into()))?;
        Ok(rx)
    }

    /// Asks for up to `limit` owed task messages; answered after the flush of the batch that
    /// takes the request. `asking` runs once the request is sure to reach the writer and
    /// before it can be taken, with no wait in between (the dispatcher clears its "owed"
    /// flag there: cleared any later, it could swallow a signal the answer does not cover).
    pub(crate) async fn outbox_page(
        &self,
        limit: usize,
        asking: impl FnOnce(),
    ) -> Result<oneshot::Receiver<OutboxPage>, WriteError> {
        let permit = self
            .tx
            .reserve()
            .await
            .map_err(|_| WriteError::Unavailable("writer stopped".into()))?;
        asking();
        let (reply, rx) = oneshot::channel();
        permit.send(Request::OutboxPage { limit, reply });
        Ok(rx)
    }
}

/// The writer's thread, awaitable: ready when the writer ended, with why it ended if that was
/// not because every handle was dropped. The thread is joined then.
#[derive(Debug)]
pub struct WriterTask {
    ended: oneshot::Receiver<Result<(), WriterFailed>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Future for WriterTask {
    type Output = Result<(), WriterFailed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let ended = std::task::ready!(Pin::new(&mut self.ended).poll(cx));
        if let Some(thread) = self.thread.take() {
            // Sending what was just received is the thread's last act: joining only waits
            // for it to return.
            let _ = thread.join();
        }
        Poll::Ready(ended.unwrap_or_else(|_| {
            Err(WriterFailed::Panicked(
                "its thread ended without a word".into(),
            ))
        }))
    }
}

/// The writer task's state.
pub struct Writer {
    log: EventLog,
    state: State,
    head: Head,
    default_pool: PoolName,
    tasks: TaskSender,
    effects: EffectSender,
    /// Keep finished deployments in memory (only for tests that compare both ways).
    keep_finished: bool,
    memory: Arc<InMemory>,
    metrics: crate::metrics::Metrics,
    /// The trace context of each deployment created by a traced request while this process
    /// runs: its task messages carry it to the workers (not kept across restarts).
    traces: HashMap<DeploymentId, String>,
}

/// A flush on its way to disk and the batches it makes durable.
type Flushing = (Flush, Done);

/// A flush of the log, polled by the writer itself (no task of its own to wake).
type Flush = std::pin::Pin<Box<dyn Future<Output = Result<(), LogError>> + Send>>;

/// An answer, sent once its batch is durable.
enum Reply {
    Command(
        Option<oneshot::Sender<Result<Appended, Rejection>>>,
        Result<Appended, Rejection>,
    ),
    Page(oneshot::Sender<OutboxPage>, Vec<TaskMessage>),
}

/// What a written batch hands on once it is durable.
struct Done {
    /// Whether it wrote anything (else nothing needs a flush).
    wrote: bool,
    /// The log's last sequence once it is durable.
    seq: u64,
    replies: Vec<Reply>,
    effects: Vec<Effect>,
    evict: BTreeSet<DeploymentId>,
    /// Every effect derivable from the state as of this batch, and the room reserved for it.
    resync: Option<(mpsc::OwnedPermit<Vec<Effect>>, Vec<Effect>)>,
}

impl Done {
    /// Joins a later batch that waits for the same flush.
    fn append(&mut self, mut later: Done) {
        self.wrote |= later.wrote;
        self.seq = later.seq;
        self.replies.append(&mut later.replies);
        self.effects.append(&mut later.effects);
        self.evict.append(&mut later.evict);
        if later.resync.is_some() {
            self.resync = later.resync;
        }
    }
}

/// Changes of one batch not yet written.
#[derive(Default)]
struct Pending {
    write: BatchWrite,
    changes: Changes,
    /// Ids of the facts from outside in this batch.
    ids: HashSet<EventId>,
    /// The fact id of the command being handled.
    fact: Option<EventId>,
    /// Who caused the command being handled.
    actor: Option<Actor>,
    /// Finished deployments brought back from disk for this batch.
    faulted: BTreeSet<DeploymentId>,
    /// Deployments that finished in this batch.
    finished: BTreeSet<DeploymentId>,
    /// Attempts planned in this batch, with when (µs since the epoch) for the task message.
    planned: Vec<(TaskId, u32, i64)>,
    /// The trace context of the command being handled (its `decide` span), if traced.
    trace: Option<String>,
    /// The trace the batch's `commit` span joins: the first traced command's.
    commit_parent: Option<String>,
    effects: Vec<Effect>,
}

impl Writer {
    /// Loads the state from the log and prepares the writer, which will hand task messages
    /// to `tasks` (see [`super::handover::task_channel`]) and batches of effects to
    /// `effects`.
    ///
    /// # Errors
    /// The log cannot be read.
    pub fn open(
        log: EventLog,
        default_pool: PoolName,
        tasks: TaskSender,
        effects: mpsc::Sender<Vec<Effect>>,
    ) -> Result<Writer, LogError> {
        let head = log.head()?;
        let checkpoint = log.checkpoint()?;
        if checkpoint != head.seq {
            return Err(LogError::Corrupt(format!(
                "projections are at {checkpoint} but the log is at {}; run `shoal-planner replay --rebuild`",
                head.seq
            )));
        }
        let state = log.load_state()?;
        // What a start finds in the log is on disk.
        tasks.durable(head.seq);
        Ok(Writer {
            log,
            state,
            head,
            default_pool,
            tasks,
            effects: EffectSender::new(effects),
            keep_finished: false,
            memory: Arc::default(),
            metrics: crate::metrics::Metrics::default(),
            traces: HashMap::new(),
        })
    }

    /// Reports to `metrics` (the planner's `/metrics`) instead of figures of its own.
    pub fn set_metrics(&mut self, metrics: crate::metrics::Metrics) {
        metrics.count_all(&self.state);
        self.metrics = metrics;
    }

    /// Keeps finished deployments in memory instead of reading them back when needed: the
    /// writer as it was before it bounded its memory. Tests run histories both ways and
    /// expect the same decisions.
    #[must_use]
    pub fn keep_finished(mut self, keep: bool) -> Writer {
        self.keep_finished = keep;
        self
    }

    /// Hears the log's last durable sequence: the head at open, then each batch's once its
    /// flush is done.
    pub fn watch_durable(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tasks.watch_durable()
    }

    /// The effects still due after a restart (see [`effects::pending_effects`]).
    pub fn pending_effects(&self) -> Vec<Effect> {
        effects::pending_effects(&self.state, Timestamp::now())
    }

    /// Owes the dispatcher every attempt in the outbox: after a restart their messages went
    /// nowhere. The dispatcher pages through them as soon as it runs (see
    /// [`super::handover`]). Returns how many.
    pub fn republish_outbox(&mut self) -> usize {
        let entries = self.state.outbox.iter().map(|(t, a)| (*t, *a, None));
        self.tasks.owe(entries);
        self.state.outbox.len()
    }

    /// The messages of up to `limit` owed attempts, oldest first, for the dispatcher. An
    /// attempt a worker already reported on is confirmed in
    /// this batch rather than published again (publishing it could only run it twice), and
    /// one no longer in the outbox was confirmed meanwhile.
    fn owed_messages(
        &mut self,
        limit: usize,
        p: &mut Pending,
    ) -> Result<Vec<TaskMessage>, LogError> {
        let mut out = Vec::new();
        for (task, attempt, planned_at_us) in self.tasks.take_owed(limit) {
            if !self.state.outbox.contains(&(task, attempt)) {
                continue;
            }
            if let Some(d) = self.deployment_of(&task)? {
                self.fault_in(&d, p)?;
            }
            let Some(t) = self.state.tasks.get(&task) else {
                continue;
            };
            if t.attempt == attempt && t.state == TaskState::Planned {
                let msg = effects::task_message(&self.state, &task, attempt, planned_at_us);
                out.extend(msg.map(|mut m| {
                    m.trace_parent = self.traces.get(&m.deployment).cloned();
                    m
                }));
            } else {
                let confirm = Command::MarkDispatched {
                    deployment: t.deployment,
                    task,
                    attempt,
                    stream_seq: None,
                };
                // Cannot be rejected: the attempt is in the outbox.
                let _ = self.handle(&confirm, p)?;
            }
        }
        Ok(out)
    }

    /// Brings a finished deployment and its tasks back from disk when a command names it:
    /// the writer keeps only unfinished deployments in memory.
    fn fault_in(&mut self, id: &DeploymentId, p: &mut Pending) -> Result<(), LogError> {
        if self.state.deployments.contains_key(id) {
            return Ok(());
        }
        if let Some((doc, tasks)) = self.log.deployment(id)? {
            for t in tasks {
                self.state.tasks.insert(t.id, t);
            }
            let unfinished = !doc.state.is_terminal();
            self.state.deployments.insert(*id, doc);
            if unfinished {
                // Cannot happen (unfinished deployments are always in memory); count it
                // anyway rather than plan from wrong numbers.
                self.state.active.insert(*id);
                self.state.recount();
            }
            p.faulted.insert(*id);
        }
        Ok(())
    }

    /// The deployment of a task, in memory or on disk (for a command that names only a task).
    fn deployment_of(&self, task: &TaskId) -> Result<Option<DeploymentId>, LogError> {
        if let Some(t) = self.state.tasks.get(task) {
            return Ok(Some(t.deployment));
        }
        Ok(self
            .log
            .doc::<crate::domain::state::TaskDoc>(super::Proj::Tasks, task.as_bytes())?
            .map(|t| t.deployment))
    }

    /// The deployments a command needs in memory.
    fn faults_of(&mut self, cmd: &Command, p: &mut Pending) -> Result<(), LogError> {
        use shoal_shared::messages::WorkerBody;
        let deployment = match cmd {
            Command::CreateDeployment { id, .. }
            | Command::CancelDeployment { id, .. }
            | Command::CancelGraceExpired { deployment: id }
            | Command::MarkDispatched { deployment: id, .. } => Some(*id),
            Command::RetryDue { task, .. } => self.deployment_of(task)?,
            Command::WorkerReport(m) => match &m.body {
                WorkerBody::TaskStarted { deployment, .. }
                | WorkerBody::TaskOutput { deployment, .. }
                | WorkerBody::TaskFinished { deployment, .. } => Some(*deployment),
                WorkerBody::HealthChecked { task: Some(t), .. } => self.deployment_of(t)?,
                _ => None,
            },
            _ => None,
        };
        if let Some(id) = deployment {
            self.fault_in(&id, p)?;
        }
        Ok(())
    }

    /// Drops a deployment and its tasks from memory if it is finished (its documents are
    /// committed), unless the writer keeps finished ones.
    fn evict_if_finished(&mut self, id: &DeploymentId) {
        if !self.keep_finished
            && self
                .state
                .deployments
                .get(id)
                .is_some_and(|d| d.state.is_terminal())
        {
            self.state.evict(id);
        }
    }

    /// Starts the writer on its own thread; it runs until every handle is dropped or the log
    /// fails, and the returned [`WriterTask`] says which.
    ///
    /// # Errors
    /// The thread or its runtime cannot be created.
    pub fn spawn(mut self, capacity: usize) -> std::io::Result<(WriterHandle, WriterTask)> {
        let (tx, rx) = mpsc::channel(capacity);
        let memory = Arc::new(InMemory::default());
        self.memory = memory.clone();
        self.count_memory(self.head.seq);
        // Only to poll the loop: no timer or I/O driver is needed.
        let runtime = tokio::runtime::Builder::new_current_thread().build()?;
        let (ended_tx, ended) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    let result = runtime.block_on(self.run(rx));
                    // Everything of the writer (the log's handle among it) is gone before
                    // the caller learns that it ended.
                    drop(runtime);
                    result
                }));
                let _ = ended_tx.send(match result {
                    Ok(ended) => ended.map_err(WriterFailed::Log),
                    Err(panic) => Err(WriterFailed::Panicked(panic_text(panic.as_ref()))),
                });
            })?;
        Ok((
            WriterHandle { tx, memory },
            WriterTask {
                ended,
                thread: Some(thread),
            },
        ))
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Request>) -> Result<(), LogError> {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        // Pipelined group commit: while one flush is on its way to disk, the next commands
        // are decided and written; they wait for a flush that starts after their write.
        // Task messages, effects and answers go out only once their batch is durable, in
        // order.
        let mut flushing: Option<Flushing> = None;
        let mut waiting: Option<Done> = None;
        loop {
            let resync = self.effects.resync_due();
            tokio::select! {
                biased;
                flushed = async {
                    match flushing.as_mut() {
                        Some((flush, _)) => flush.await,
                        None => std::future::pending().await,
                    }
                } => {
                    flushed?;
                    if let Some((_, done)) = flushing.take() {
                        self.release(done);
                    }
                    match waiting.take() {
                        Some(done) if done.wrote => flushing = Some((self.start_flush(), done)),
                        Some(done) => self.release(done),
                        None => {}
                    }
                }
                permit = async {
                    match resync {
                        Some(tx) => tx.reserve_owned().await.ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    self.effects.resync_reserved();
                    let last = waiting.as_mut().or(flushing.as_mut().map(|(_, done)| done));
                    self.resync(permit, last);
                }
                n = rx.recv_many(&mut batch, MAX_BATCH) => {
                    if n == 0 {
                        break;
                    }
                    let done = match self.decide(&mut batch) {
                        Ok(done) => done,
                        Err(e) => {
                            // Batches written before this one may be durable: answer them
                            // before stopping, as a writer without pipelining would have.
                            let _ = self.settle(flushing.take(), waiting.take()).await;
                            return Err(e);
                        }
                    };
                    match (&flushing, waiting.as_mut()) {
                        (None, _) if done.wrote => flushing = Some((self.start_flush(), done)),
                        (None, _) => self.release(done),
                        (Some(_), None) => waiting = Some(done),
                        (Some(_), Some(w)) => w.append(done),
                    }
                }
            }
        }
        self.settle(flushing, waiting).await?;
        tracing::info!(log.seq = self.head.seq, "event log writer stopped");
        Ok(())
    }

    /// Sends every effect derivable from the state into the room reserved for it (`None`:
    /// the runner is gone). The state may be ahead of the disk by the batches written and not
    /// yet flushed (`last` is the latest of them): then the resync goes out with that batch,
    /// once it is durable.
    fn resync(&mut self, permit: Option<mpsc::OwnedPermit<Vec<Effect>>>, last: Option<&mut Done>) {
        let Some(permit) = permit else {
            return;
        };
        let effects = self.resync_effects();
        match last {
            Some(done) => done.resync = Some((permit, effects)),
            None => {
                permit.send(effects);
            }
        }
    }

    /// Every effect derivable from the state: what a resync sends after effects were dropped
    /// (see [`super::handover`]). Drain instructions are not among the pending effects (at
    /// start the planner reads them from the worker documents), so every worker's is added;
    /// and the stops the dropped batches carried, which no state can tell again.
    fn resync_effects(&mut self) -> Vec<Effect> {
        let mut out = self
            .effects
            .take_dropped_stops()
            .map_or_else(Vec::new, |stops| vec![Effect::Cancel(stops)]);
        out.extend(self.pending_effects());
        out.extend(self.state.workers.values().map(|w| Effect::Control {
            worker: w.name.clone(),
            pool: w.pool.clone(),
            drain: w.draining,
        }));
        out
    }

    /// Waits for the flush in flight and answers its batch, then flushes and answers the
    /// batches written since: before stopping, what is durable gets its answers.
    async fn settle(
        &mut self,
        flushing: Option<Flushing>,
        waiting: Option<Done>,
    ) -> Result<(), LogError> {
        if let Some((flush, done)) = flushing {
            flush.await?;
            self.release(done);
        }
        self.log.flush().await?;
        if let Some(done) = waiting {
            self.release(done);
        }
        Ok(())
    }

    fn start_flush(&self) -> Flush {
        let (log, metrics) = (self.log.clone(), self.metrics.clone());
        Box::pin(async move {
            let started = std::time::Instant::now();
            let flushed = log.flush().await;
            metrics.log_flushed(started.elapsed());
            flushed
        })
    }

    /// Decides a batch of commands and writes its events (not yet durable).
    fn decide(&mut self, batch: &mut Vec<Request>) -> Result<Done, LogError> {
        let mut pending = Pending::default();
        let mut replies = Vec::with_capacity(batch.len());
        for req in batch.drain(..) {
            replies.push(match req {
                Request::Command {
                    cmd,
                    actor,
                    reply,
                    trace,
                } => {
                    pending.actor = Some(actor.unwrap_or_else(|| actor_of(&cmd)));
                    let span = child_span("decide", trace.as_deref());
                    let _decide = span.enter();
                    pending.trace = traceparent(&span).or(trace);
                    pending.commit_parent = pending.commit_parent.take().or(pending.trace.clone());
                    Reply::Command(reply, self.handle(&cmd, &mut pending)?)
                }
                Request::OutboxPage { limit, reply } => {
                    pending.actor = Some(Actor::Planner);
                    Reply::Page(reply, self.owed_messages(limit, &mut pending)?)
                }
            });
        }
        let wrote = !pending.write.records.is_empty();
        if wrote {
            let span = child_span("commit", pending.commit_parent.as_deref());
            let _commit = span.enter();
            self.write(&mut pending)?;
        }
        // Handed over now, published once this batch is durable: the dispatcher seals,
        // encodes and signs them while the flush is on its way.
        for (task, attempt, at_us) in &pending.planned {
            if let Some(mut msg) = effects::task_message(&self.state, task, *attempt, Some(*at_us))
            {
                msg.trace_parent = self.traces.get(&msg.deployment).cloned();
                self.tasks.hand_over(self.head.seq, msg);
            }
        }
        Ok(Done {
            wrote,
            seq: self.head.seq,
            replies,
            effects: pending.effects,
            evict: &pending.faulted | &pending.finished,
            resync: None,
        })
    }

    /// Hands on what a durable batch produced.
    fn release(&mut self, done: Done) {
        // Finished deployments leave memory once committed (before the answers go out, so a
        // caller that has its answer sees the memory counted without them).
        for id in &done.evict {
            self.evict_if_finished(id);
            self.traces.remove(id);
        }
        // Task messages (handed over when written) and effects before the answers: a caller
        // that has its answer finds what its command led to already handed on.
        self.count_memory(done.seq);
        // The resync first: it is a snapshot as of a batch no later than any whose effects
        // were joined to this one, and live effects are in order, so the newest still win
        // (a worker resumed after the snapshot must not be told to drain again).
        if let Some((permit, effects)) = done.resync {
            permit.send(effects);
        }
        self.effects.hand_over(done.effects);
        for reply in done.replies {
            match reply {
                Reply::Command(Some(reply), result) => {
                    let _ = reply.send(result);
                }
                Reply::Command(None, _) => {}
                Reply::Page(reply, messages) => {
                    // Whether more is owed as of this batch, its own messages handed on.
                    let more = self.tasks.owes();
                    let _ = reply.send(OutboxPage { messages, more });
                }
            }
        }
    }

    /// Publishes what is held in memory and the last durable sequence (the writer's head may
    /// already be a batch further, written but still being flushed).
    fn count_memory(&self, durable_seq: u64) {
        let m = &self.memory;
        m.deployments
            .store(self.state.deployments.len(), Ordering::Relaxed);
        m.tasks.store(self.state.tasks.len(), Ordering::Relaxed);
        m.log_seq.store(durable_seq, Ordering::Relaxed);
        self.tasks.durable(durable_seq);
        self.metrics.log_durable(durable_seq);
    }

    fn handle(
        &mut self,
        cmd: &Command,
        p: &mut Pending,
    ) -> Result<Result<Appended, Rejection>, LogError> {
        p.fact = cmd.fact_id();
        if let Some(id) = p.fact
            && (p.ids.contains(&id) || self.log.contains_event(&id)?)
        {
            return Ok(Ok(Appended {
                seqs: vec![],
                duplicate: true,
            }));
        }
        self.faults_of(cmd, p)?;
        let default_pool = self.default_pool.clone();
        let mut sink = BatchSink {
            writer: self,
            pending: p,
        };
        Ok(
            domain::handle(&mut sink, &default_pool, cmd)?.map(|seqs| Appended {
                seqs,
                duplicate: false,
            }),
        )
    }

    fn append(
        &mut self,
        e: NewEvent,
        cause: Option<EventId>,
        p: &mut Pending,
    ) -> Result<u64, LogError> {
        let seq = self.head.seq + 1;
        let now = Timestamp::now();
        let env = Envelope {
            seq,
            event_id: e.id,
            time: now,
            stream: e.event.stream(),
            event_type: e.event.event_type().to_owned(),
            schema_version: e.event.schema_version(),
            correlation_id: e.event.deployment().map(|d| d.0),
            causation_id: cause.map(|c| c.0),
            payload: codec::encode(&e.event)?,
            prev_hash: self.head.hash.to_vec(),
            actor: p.actor.clone(),
        };
        let bytes = codec::encode(&env)?;
        self.head = Head {
            seq,
            hash: record_hash(&bytes),
        };
        self.state.apply(&env, &e.event, &mut p.changes);
        if let Event::TaskPlanned { task, attempt, .. } = &e.event {
            p.planned.push((*task, *attempt, Timestamp::now_micros()));
        }
        effects::effects_of(&self.state, &e.event, now, &mut p.effects);
        if let Event::DeploymentFinished { deployment, .. } = &e.event {
            p.finished.insert(*deployment);
        }
        if let (Event::DeploymentCreated { deployment, .. }, Some(trace)) = (&e.event, &p.trace) {
            self.traces.insert(*deployment, trace.clone());
        }
        let fact = (p.fact == Some(e.id)).then_some(e.id);
        if let Some(id) = fact {
            p.ids.insert(id);
        }
        p.write.records.push(Record {
            seq,
            bytes,
            stream: env.stream,
            fact,
        });
        Ok(seq)
    }

    fn write(&mut self, p: &mut Pending) -> Result<(), LogError> {
        let changes = std::mem::take(&mut p.changes);
        for key in &changes.docs {
            self.metrics.changed(key, &self.state);
            p.write.proj.push(doc_write(&self.state, key)?);
        }
        for row in &changes.rows {
            let (proj, k, v) = row_write(row)?;
            p.write.proj.push((proj, k, Some(v)));
        }
        p.write.head = self.head;
        let started = std::time::Instant::now();
        self.log.write(&p.write)?;
        self.metrics.log_written(started.elapsed());
        Ok(())
    }
}

/// The writer seen by the pure core while it handles one command of a batch.
struct BatchSink<'a> {
    writer: &'a mut Writer,
    pending: &'a mut Pending,
}

impl EventSink for BatchSink<'_> {
    type Error = LogError;

    fn state(&self) -> &State {
        &self.writer.state
    }

    fn append(&mut self, event: NewEvent, cause: Option<EventId>) -> Result<u64, LogError> {
        self.writer.append(event, cause, self.pending)
    }
}

/// Who caused a command nobody named: the worker that reported a fact, else the planner
/// (start-up, timers, dispatch confirmations, rejected messages).
fn actor_of(cmd: &Command) -> Actor {
    match cmd {
        Command::WorkerReport(m) => Actor::Worker(m.worker.clone()),
        _ => Actor::Planner,
    }
}

/// The message of a panic, for the log.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}
