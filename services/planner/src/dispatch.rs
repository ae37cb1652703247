//! The outbox dispatcher: publishes planned task attempts to `shoal.tasks.<pool>` with the
//! message id `<task>/<attempt>` (so a re-publish after a crash is de-duplicated by the
//! broker), and records `TaskDispatched` once the broker has stored each one. Many publishes
//! are in flight at once; failures are retried with backoff, nothing is dropped. Attempts
//! come from the writer's bounded task channel and, when that overflowed (the broker was
//! slow or down), from pages of the durable outbox (`log::handover`), taken only while there
//! is room for more publishes in flight. Attempts arrive as soon as the writer has written
//! them and are sealed, encoded and signed while its flush is in flight, then published once
//! the writer says they are durable. Each publish, a retry too, is signed anew (`signing`).

use crate::domain::Command;
use crate::log::handover::TaskReceiver;
use crate::log::writer::WriterHandle;
use crate::secrets::Sealer;
use crate::signing::Signer;
use async_nats::jetstream::{self, message::PublishMessage};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use shoal_runtime::telemetry::{TRACEPARENT, child_span, traceparent};
use shoal_shared::codec;
use shoal_shared::messages::TaskMessage;
use shoal_shared::subjects::Subjects;
use shoal_shared::{PoolName, TaskId};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Most publishes awaiting the broker's ack at once.
const MAX_IN_FLIGHT: usize = 4096;
/// Most attempts taken together to be signed (what is ready at once, up to this): the signer
/// splits them by pool into groups of at most [`crate::signing::SIGN_GROUP`], each under one
/// Ed25519 signature, so four busy pools still get full groups.
const SIGN_BATCH: usize = 256;
/// How long shutdown waits for the broker to confirm publishes in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The first and the longest wait before publishing again what the broker did not store.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Runs until the channel closes or shutdown.
pub async fn run(
    js: jetstream::Context,
    subjects: Subjects,
    writer: WriterHandle,
    mut tasks: TaskReceiver,
    sealer: Sealer,
    signer: Signer,
    shutdown: CancellationToken,
) {
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Published>> = FuturesUnordered::new();
    let mut retry = Retry::default();
    loop {
        // Messages waiting for a retry count against the limit too: while the broker is down,
        // what is not in hand stays in the durable outbox, not in memory.
        let room = in_flight.len() + retry.tasks.len() < MAX_IN_FLIGHT;
        let batch: Vec<TaskMessage> = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                match done {
                    Ok((task, seq)) => {
                        retry.succeeded();
                        confirm(&writer, task, seq).await;
                    }
                    Err((task, e)) => {
                        tracing::warn!(error = %e, task.id = %task.task, pool = %task.pool, "task not stored by the broker yet; will retry");
                        retry.failed(task);
                    }
                }
                continue;
            }
            () = retry.due() => retry.take(),
            msg = tasks.recv(&writer), if room => match msg {
                Some(m) => {
                    let held = in_flight.len() + retry.tasks.len();
                    let mut batch = vec![m];
                    while batch.len() < SIGN_BATCH && held + batch.len() < MAX_IN_FLIGHT {
                        match tasks.try_next() {
                            Some(m) => batch.push(m),
                            None => break,
                        }
                    }
                    batch
                }
                None => break,
            },
        };
        tracing::debug!(
            attempts = batch.len(),
            "publishing attempts signed together"
        );
        let signed = encode_and_sign(batch, &sealer, &signer);
        // Signed while the writer's flush was on its way; published once it is durable.
        if !tasks.durable().await {
            break;
        }
        for (task, encoded) in signed {
            in_flight.push(Box::pin(send(
                js.clone(),
                subjects.tasks(&task.pool),
                task,
                encoded,
            )));
        }
    }
    // Confirm what the broker already has, so a later restart need not publish it again.
    let drain = async {
        while let Some(done) = in_flight.next().await {
            if let Ok((task, seq)) = done {
                confirm(&writer, task, seq).await;
            }
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!(
            "some task publishes were not confirmed before shutdown; they are published again at start"
        );
    }
}

/// Task messages the broker did not store, published again after a backoff that doubles
/// (up to 5 s) while publishes keep failing. The timer runs whatever else is in flight, so
/// a retry is never starved by new work.
struct Retry {
    tasks: Vec<TaskMessage>,
    at: Option<tokio::time::Instant>,
    backoff: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            tasks: Vec::new(),
            at: None,
            backoff: RETRY_FIRST,
        }
    }
}

impl Retry {
    fn failed(&mut self, task: TaskMessage) {
        self.tasks.push(task);
        if self.at.is_none() {
            self.at = Some(tokio::time::Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(RETRY_MAX);
        }
    }

    fn succeeded(&mut self) {
        self.backoff = RETRY_FIRST;
    }

    /// Ready when the waiting messages are due; never while none wait. Cancel-safe.
    async fn due(&self) {
        match self.at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    fn take(&mut self) -> Vec<TaskMessage> {
        self.at = None;
        std::mem::take(&mut self.tasks)
    }
}

/// A stored task and where the broker stored it, or the task and why it was not stored.
type Published = Result<(TaskMessage, u64), (TaskMessage, NotStored)>;

/// Why a task message was not stored, as the codec or the broker said it. The dispatcher
/// retries either: a broker that did not take it may later, and dropping a task would lose
/// it.
#[derive(Debug, thiserror::Error)]
enum NotStored {
    #[error(transparent)]
    Encode(#[from] codec::CodecError),
    #[error(transparent)]
    Publish(#[from] jetstream::context::PublishError),
}

/// Seals the attempts' sensitive values for their pools, encodes the attempts and signs them
/// together, now (so each signature's clock starts at its publish; a retry is sealed and
/// signed anew). The message kept for a retry holds the values as the log does (for the
/// master key).
fn encode_and_sign(
    batch: Vec<TaskMessage>,
    sealer: &Sealer,
    signer: &Signer,
) -> Vec<(TaskMessage, Result<PublishMessage, codec::CodecError>)> {
    let encoded: Vec<Result<Vec<u8>, codec::CodecError>> = batch
        .iter()
        .map(|task| {
            let wire = sealer.for_wire(task);
            codec::encode(wire.as_ref().unwrap_or(task))
        })
        .collect();
    let to_sign: Vec<(&PoolName, TaskId, u32, &[u8])> = batch
        .iter()
        .zip(&encoded)
        .filter_map(|(t, e)| Some((&t.pool, t.task, t.attempt, e.as_ref().ok()?.as_slice())))
        .collect();
    let mut headers = signer.tasks(&to_sign).into_iter();
    batch
        .into_iter()
        .zip(encoded)
        .map(|(task, bytes)| {
            let mut header = headers.next().unwrap_or_default();
            // The worker's pull and run join the deployment's trace through this span.
            let span = child_span("publish", task.trace_parent.as_deref());
            if let Some(tp) = traceparent(&span) {
                header.insert(TRACEPARENT, tp.as_str());
            }
            let msg = bytes.map(|bytes| {
                PublishMessage::build()
                    .payload(bytes.into())
                    .headers(header)
                    .message_id(task.message_id())
            });
            (task, msg)
        })
        .collect()
}

async fn send(
    js: jetstream::Context,
    subject: String,
    task: TaskMessage,
    encoded: Result<PublishMessage, codec::CodecError>,
) -> Published {
    let msg = match encoded {
        Ok(m) => m,
        Err(e) => return Err((task, e.into())),
    };
    match js.send_publish(subject, msg).await {
        Ok(ack) => match ack.await {
            Ok(ack) => Ok((task, ack.sequence)),
            Err(e) => Err((task, e.into())),
        },
        Err(e) => Err((task, e.into())),
    }
}

async fn confirm(writer: &WriterHandle, task: TaskMessage, seq: u64) {
    let cmd = Command::MarkDispatched {
        deployment: task.deployment,
        task: task.task,
        attempt: task.attempt,
        stream_seq: Some(seq),
    };
    // Ordered submission is enough: the answer only matters if the log failed, and then the
    // planner stops and the outbox re-publishes on restart.
    if let Err(e) = writer.submit(cmd).await {
        tracing::debug!(error = %e, "dispatch confirmation not recorded");
    }
}
