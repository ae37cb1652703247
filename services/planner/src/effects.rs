//! Carries out what the planner decided to do because of facts in its log, once they are
//! durable (the decisions are `domain::effects`): tell workers to stop cancelled tasks (and
//! take their queued messages off the queue), submit commands later (retries after their
//! backoff, deadlines, the end of a cancellation's grace), publish health checks, tell a
//! worker to drain or resume, create pools' queue consumers (and delete a removed pool's),
//! and keep the health schedule.
//! The writer sends effects after each flush; after a restart they are derived again from
//! the projections, so none is lost with the process.

use crate::broker;
use crate::domain::Command;
use crate::domain::effects::{Effect, Stop};
use crate::health;
use crate::liveness::Liveness;
use crate::log::writer::WriterHandle;
use crate::signing::Signer;
use futures::StreamExt;
use shoal_shared::messages::{
    CheckMessage, KIND_HEADER, KIND_HEALTH_CHECK, WIRE_SCHEMA_VERSION, WorkerControl,
};
use shoal_shared::signed::Kind;
use shoal_shared::subjects::{Subjects, cancel_payload};
use shoal_shared::{PoolName, Timestamp, WorkerName, codec};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::time::DelayQueue;

/// Cancellations travel on core NATS, which may drop them while a worker reconnects: each
/// is sent again after these delays.
const CANCEL_RESENDS: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(8)];

/// What effects are carried out with.
pub struct Runner {
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub subjects: Subjects,
    /// Where commands due later are submitted.
    pub writer: WriterHandle,
    /// Holds the drain state wanted of each worker.
    pub liveness: Liveness,
    /// The ack wait every pool's queue consumer gets.
    pub task_ack_wait: Duration,
    /// When each target is checked next.
    pub health: health::Schedule,
    /// Where broker I/O runs, so that shutdown waits for it (or cuts it short).
    pub tasks: TaskTracker,
    /// Signs cancellations, checks and instructions as they go out.
    pub signer: Signer,
    /// The package feed, swept when a version leaves it.
    pub feed: crate::packages::Feed,
}

enum Due {
    Submit(Box<Command>),
    Resend(Vec<Stop>),
}

/// Carries out effects until shutdown.
pub async fn run(
    mut runner: Runner,
    mut rx: mpsc::Receiver<Vec<Effect>>,
    shutdown: CancellationToken,
) {
    let mut due: DelayQueue<Due> = DelayQueue::new();
    let mut held = Vec::new().into_iter();
    loop {
        let cmd = tokio::select! {
            () = shutdown.cancelled() => return,
            effect = next_effect(&mut rx, &mut held) => match effect {
                None => return,
                Some(effect) => {
                    runner.carry_out(effect, &mut due, &shutdown).await;
                    continue;
                }
            },
            Some(expired) = due.next(), if !due.is_empty() => match expired.into_inner() {
                Due::Submit(cmd) => *cmd,
                Due::Resend(stops) => {
                    let (client, subjects) = (runner.client.clone(), runner.subjects.clone());
                    let signer = runner.signer.clone();
                    runner.spawn_io(&shutdown, async move {
                        publish_cancels(&client, &subjects, &signer, &stops).await;
                    });
                    continue;
                }
            },
            cmd = runner.health.next() => cmd,
        };
        let submitted = tokio::select! {
            submitted = runner.writer.submit(cmd) => submitted,
            () = shutdown.cancelled() => return,
        };
        if let Err(e) = submitted {
            tracing::warn!(error = %e, "scheduled command not submitted; the planner is stopping");
            return;
        }
    }
}

impl Runner {
    /// Runs broker I/O on a task of its own, so a broker that is down does not hold up
    /// retries, deadlines, instructions and the health schedule; tracked, and cut short at
    /// shutdown (what matters of it is derived again from the log at the next start).
    fn spawn_io(
        &self,
        shutdown: &CancellationToken,
        io: impl Future<Output = ()> + Send + 'static,
    ) {
        let shutdown = shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = io => {}
                () = shutdown.cancelled() => {}
            }
        });
    }

    /// Starts one effect: broker I/O goes to tasks of its own, so a broker that is down does
    /// not hold up retries, deadlines and instructions.
    async fn carry_out(
        &mut self,
        effect: Effect,
        due: &mut DelayQueue<Due>,
        shutdown: &CancellationToken,
    ) {
        match effect {
            Effect::Cancel(stops) => {
                for after in CANCEL_RESENDS {
                    due.insert(Due::Resend(stops.clone()), after);
                }
                let (client, js) = (self.client.clone(), self.js.clone());
                let (subjects, signer) = (self.subjects.clone(), self.signer.clone());
                self.spawn_io(shutdown, async move {
                    publish_cancels(&client, &subjects, &signer, &stops).await;
                    remove_queued(&js, &subjects, &stops).await;
                });
            }
            Effect::Schedule { at, cmd } => {
                let wait = at.millis_since(Timestamp::now());
                due.insert(Due::Submit(Box::new(cmd)), Duration::from_millis(wait));
            }
            Effect::PublishCheck(check) => {
                let (js, subjects) = (self.js.clone(), self.subjects.clone());
                let signer = self.signer.clone();
                self.spawn_io(
                    shutdown,
                    publish_check(js, subjects, signer, check, shutdown.clone()),
                );
            }
            Effect::Control {
                worker,
                pool,
                drain,
            } => {
                self.liveness.want_draining(&worker, drain);
                let (client, subjects) = (self.client.clone(), self.subjects.clone());
                let signer = self.signer.clone();
                self.spawn_io(shutdown, async move {
                    send_control(&client, &subjects, &signer, &worker, &pool, drain).await;
                });
            }
            Effect::EnsureConsumer(pool) => {
                self.spawn_io(
                    shutdown,
                    broker::ensure_pool_consumer_retrying(
                        self.js.clone(),
                        self.subjects.clone(),
                        pool,
                        self.task_ack_wait,
                        shutdown.clone(),
                    ),
                );
            }
            Effect::RemoveConsumer(pool) => {
                self.spawn_io(
                    shutdown,
                    broker::remove_pool_consumer_retrying(
                        self.js.clone(),
                        self.subjects.clone(),
                        pool,
                        shutdown.clone(),
                    ),
                );
            }
            Effect::ScheduleHealth { target, every } => self.health.set(target, every),
            Effect::SweepFeed => self.feed.sweep_soon(),
        }
    }
}

/// The next effect: of the batch in hand, or of the next batch the writer handed on.
/// Cancel-safe.
async fn next_effect(
    rx: &mut mpsc::Receiver<Vec<Effect>>,
    held: &mut std::vec::IntoIter<Effect>,
) -> Option<Effect> {
    loop {
        if let Some(effect) = held.next() {
            return Some(effect);
        }
        *held = rx.recv().await?.into_iter();
    }
}

/// Publishes a check with message id `check/<id>`, so a copy published again after a
/// restart is dropped by the broker. Gives up at its deadline: the planner then calls the
/// target unavailable.
async fn publish_check(
    js: async_nats::jetstream::Context,
    subjects: Subjects,
    signer: Signer,
    check: CheckMessage,
    shutdown: CancellationToken,
) {
    let bytes: bytes::Bytes = match codec::encode(&check) {
        Ok(b) => b.into(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a health check");
            return;
        }
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(KIND_HEADER, KIND_HEALTH_CHECK);
    let id = check.check.to_string();
    signer.check(&mut headers, &check.pool, &id, check.deadline_at, &bytes);
    let mut backoff = Duration::from_millis(100);
    while Timestamp::now() < check.deadline_at && !shutdown.is_cancelled() {
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .payload(bytes.clone())
            .headers(headers.clone())
            .message_id(check.message_id());
        let stored = match js.send_publish(subjects.tasks(&check.pool), msg).await {
            Ok(ack) => ack.await.map(|a| a.sequence),
            Err(e) => Err(e),
        };
        match stored {
            Ok(seq) => {
                // A pool without workers would collect a check per interval forever: what
                // no worker took by the deadline is taken off the queue.
                let wait = check.deadline_at.millis_since(Timestamp::now());
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    () = shutdown.cancelled() => return,
                }
                remove_if_still_queued(&js, &subjects, seq, &check.message_id()).await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, target = %check.target, "health check not stored by the broker yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn publish_cancels(
    client: &async_nats::Client,
    subjects: &Subjects,
    signer: &Signer,
    stops: &[Stop],
) {
    for stop in stops {
        let upto = (stop.upto != u32::MAX).then_some(stop.upto);
        let payload = cancel_payload(upto);
        let headers = signer.cancel(&stop.pool, stop.task, stop.upto, payload.as_bytes());
        if let Err(e) = client
            .publish_with_headers(
                subjects.cancel(&stop.pool, &stop.task),
                headers,
                payload.into(),
            )
            .await
        {
            tracing::warn!(error = %e, task.id = %stop.task, "cancellation not sent; it is sent again shortly");
        }
    }
}

/// Removes the queued messages of cancelled tasks that never started, after checking that
/// the sequence still holds that task's message (a stream made anew numbers from 1 again).
/// A message a worker already took is gone or about to be (its worker is told to stop).
async fn remove_queued(js: &async_nats::jetstream::Context, subjects: &Subjects, stops: &[Stop]) {
    for stop in stops {
        let Some((seq, attempt)) = stop.queued else {
            continue;
        };
        let expected = format!("{}/{attempt}", stop.task);
        if remove_if_still_queued(js, subjects, seq, &expected).await {
            tracing::debug!(task.id = %stop.task, seq, "removed a cancelled task from its queue");
        } else {
            tracing::debug!(task.id = %stop.task, seq, "cancelled task no longer queued");
        }
    }
}

/// Deletes the message at `seq` of the task stream if it is still the one with `msg_id`
/// (a stream made anew numbers from 1 again).
async fn remove_if_still_queued(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    seq: u64,
    msg_id: &str,
) -> bool {
    let Ok(stream) = js.get_stream(subjects.tasks_stream()).await else {
        return false;
    };
    let holds_it = match stream.get_raw_message(seq).await {
        Ok(m) => m
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .is_some_and(|id| id.as_str() == msg_id),
        Err(_) => false,
    };
    holds_it && stream.delete_message(seq).await.is_ok()
}

/// Answers workers that ask, as they start, whether they are to stay drained. A question
/// on a subject that is not a worker's drain-state subject, or naming a worker the planner
/// knows in another pool, is refused (recorded within the rejection budget) and not answered.
pub async fn answer_drain_state(
    client: async_nats::Client,
    subjects: Subjects,
    liveness: Liveness,
    recorder: crate::rejections::Recorder,
    signer: Signer,
    shutdown: CancellationToken,
) {
    let mut sub = match client.subscribe(subjects.drain_state_all()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot answer drain-state questions; restarted workers take tasks until their first heartbeat");
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            () = shutdown.cancelled() => return,
            m = sub.next() => match m { Some(m) => m, None => return },
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let (worker, pool) = match drain_state_asker(&msg.subject, &subjects, &liveness) {
            Ok(owner) => (owner.worker, owner.pool),
            Err(reason) => {
                let refused = crate::rejections::Refused {
                    id: shoal_shared::EventId::new(),
                    subject: msg.subject.to_string(),
                    claimed: None,
                    reason,
                    why: crate::rejections::Why::Subject,
                    bytes: Vec::new(),
                };
                drop(recorder.refuse(refused).await);
                continue;
            }
        };
        let answer = WorkerControl {
            schema_version: WIRE_SCHEMA_VERSION,
            drain: liveness.wanted_draining(&worker),
            worker,
        };
        let Ok(bytes) = codec::encode(&answer) else {
            continue;
        };
        let headers = signer.to_worker(Kind::DrainState, &pool, &answer.worker, &bytes);
        if let Err(e) = client
            .publish_with_headers(reply, headers, bytes.into())
            .await
        {
            tracing::debug!(error = %e, "drain-state answer not sent");
        }
    }
}

/// The worker a drain-state question is from: the one its subject names, unless the planner
/// knows that worker in another pool. Else why it is refused.
fn drain_state_asker(
    subject: &str,
    subjects: &Subjects,
    liveness: &Liveness,
) -> Result<shoal_shared::subjects::SubjectOwner, String> {
    use shoal_shared::subjects::WorkerSubject;
    let owner = match subjects.parse_worker_subject(subject) {
        Ok(WorkerSubject::DrainState(owner)) => owner,
        Ok(_) => return Err(format!("\"{subject}\" is not a drain-state subject")),
        Err(e) => return Err(e.to_string()),
    };
    let known = liveness.pool_of(&owner.worker);
    match crate::domain::worker::drain_state_refusal(&owner, known.as_ref()) {
        Some(why) => Err(why),
        None => Ok(owner),
    }
}

/// Sends a worker its wanted drain state.
pub async fn send_control(
    client: &async_nats::Client,
    subjects: &Subjects,
    signer: &Signer,
    worker: &WorkerName,
    pool: &PoolName,
    drain: bool,
) {
    let msg = WorkerControl {
        schema_version: WIRE_SCHEMA_VERSION,
        worker: worker.clone(),
        drain,
    };
    match codec::encode(&msg) {
        Ok(bytes) => {
            let headers = signer.to_worker(Kind::Control, pool, worker, &bytes);
            if let Err(e) = client
                .publish_with_headers(subjects.control(pool, worker), headers, bytes.into())
                .await
            {
                tracing::warn!(error = %e, worker = %worker, "instruction not sent; it is sent again at the worker's next heartbeat");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot encode an instruction"),
    }
}
