//! Result ingestion: reads worker reports from the results stream (one report per message,
//! or a batch of them with header `Shoal-Kind: report-batch`), appends them to the log in
//! order (de-duplicated by event id) and acknowledges each message only after all of its
//! reports are flushed.
//! Heartbeats (core NATS) update the in-memory liveness view. Anything undecodable is
//! recorded as `MessageRejected` and acknowledged, so it never blocks the queue.

use crate::domain::{Command, Rejection};
use crate::liveness::Liveness;
use crate::log::writer::{Appended, WriterHandle};
use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use shoal_shared::EventId;
use shoal_shared::codec;
use shoal_shared::messages::{Heartbeat, KIND_HEADER, decode_results};
use shoal_shared::subjects::Subjects;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Messages being appended at once (each a report or a batch of them).
const MAX_IN_FLIGHT: usize = 4096;

/// A result message with the writer's answers to its commands (one per report), which
/// arrive once the commands' batches are durable.
type Pending = (
    Vec<oneshot::Receiver<Result<Appended, Rejection>>>,
    jetstream::Message,
);

/// Consumes the results stream until shutdown.
pub async fn results(
    js: jetstream::Context,
    subjects: Subjects,
    writer: WriterHandle,
    shutdown: CancellationToken,
) {
    let (ack_tx, ack_rx) = mpsc::channel::<Pending>(MAX_IN_FLIGHT);
    let acker = tokio::spawn(ack_in_order(ack_rx));
    while !shutdown.is_cancelled() {
        let Some(mut messages) = open_messages(&js, &subjects, &shutdown).await else {
            continue;
        };
        loop {
            let next = tokio::select! {
                m = messages.next() => m,
                () = shutdown.cancelled() => None,
            };
            let msg = match next {
                None => break,
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "results pull interrupted; resuming");
                    break;
                }
            };
            // In order, so a batch's reports enter the log as the worker sent them.
            let mut replies = Vec::new();
            for cmd in commands_of(&msg, &subjects) {
                match writer.submit(cmd).await {
                    Ok(reply) => replies.push(reply),
                    Err(_) => return,
                }
            }
            if ack_tx.send((replies, msg)).await.is_err() {
                return;
            }
        }
    }
    drop(ack_tx);
    let _ = acker.await;
}

/// Acks messages in submission order, each after all its commands' batches are durable.
async fn ack_in_order(mut pending: mpsc::Receiver<Pending>) {
    while let Some((replies, msg)) = pending.recv().await {
        for reply in replies {
            if reply.await.is_err() {
                // The writer stopped before the report was durable: leave the message
                // unacknowledged, to be redelivered.
                return;
            }
        }
        if let Err(e) = msg.ack().await {
            tracing::debug!(error = %e, "result ack not sent; it will be redelivered and de-duplicated");
        }
    }
}

/// Binds the planner's results consumer and starts pulling; on failure, waits a second (or
/// until shutdown) and answers `None` so the caller tries again.
async fn open_messages(
    js: &jetstream::Context,
    subjects: &Subjects,
    shutdown: &CancellationToken,
) -> Option<pull::Stream> {
    // A request to a gone broker waits out its timeout: stop rather than wait.
    let (stream, consumer) = (subjects.results_stream(), subjects.results_consumer());
    let consumer = shoal_runtime::nats::pull_consumer(js, &stream, &consumer);
    let consumer = shutdown.run_until_cancelled(consumer).await?;
    let consumer = match consumer {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "results consumer unavailable; retrying");
            sleep_or(shutdown, Duration::from_secs(1)).await;
            return None;
        }
    };
    let messages = consumer
        .stream()
        .max_messages_per_batch(1000)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages();
    match shutdown.run_until_cancelled(messages).await? {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(error = %e, "cannot pull results; retrying");
            sleep_or(shutdown, Duration::from_secs(1)).await;
            None
        }
    }
}

/// The commands a result message carries: its reports, or the record of a message that
/// could not be read.
fn commands_of(msg: &jetstream::Message, subjects: &Subjects) -> Vec<Command> {
    let kind = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(KIND_HEADER))
        .map(|v| v.as_str());
    match decode_results(kind, &msg.payload) {
        Ok(reports) => reports.into_iter().map(Command::WorkerReport).collect(),
        Err(e) => {
            let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
            tracing::warn!(error = %e, subject = %msg.subject, "rejecting a malformed worker report");
            vec![Command::RejectMessage {
                id: stable_id(&subjects.results_stream(), seq),
                subject: msg.subject.to_string(),
                reason: e.to_string(),
                bytes: msg.payload.to_vec(),
            }]
        }
    }
}

/// The id of a rejected message: derived from its place in the stream, so a redelivery is
/// recognised as the same fact.
fn stable_id(stream: &str, seq: u64) -> EventId {
    let digest = Sha256::digest(format!("{stream}/{seq}"));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    EventId(uuid::Builder::from_custom_bytes(bytes).into_uuid())
}

/// Listens to heartbeats until shutdown.
pub async fn heartbeats(
    client: async_nats::Client,
    subjects: Subjects,
    liveness: Liveness,
    writer: WriterHandle,
    signer: crate::signing::Signer,
    shutdown: CancellationToken,
) {
    let mut sub = match client.subscribe(subjects.heartbeat_all()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to heartbeats; workers will show offline");
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            m = sub.next() => match m { Some(m) => m, None => return },
            () = shutdown.cancelled() => return,
        };
        match codec::decode::<Heartbeat>("heartbeat", &msg.payload) {
            Ok(beat) => {
                let (worker, pool) = (beat.worker.clone(), beat.pool.clone());
                if let Some(drain) = liveness.beat(beat) {
                    crate::effects::send_control(
                        &client, &subjects, &signer, &worker, &pool, drain,
                    )
                    .await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, subject = %msg.subject, "rejecting a malformed heartbeat");
                let _ = writer
                    .submit(Command::RejectMessage {
                        id: EventId::new(),
                        subject: msg.subject.to_string(),
                        reason: e.to_string(),
                        bytes: msg.payload.to_vec(),
                    })
                    .await;
            }
        }
    }
}

async fn sleep_or(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = shutdown.cancelled() => {}
    }
}
