//! Result ingestion: reads worker reports from the results stream (one report per message,
//! or a batch of them with header `Shoal-Kind: report-batch`), appends them to the log in
//! order (de-duplicated by event id) and acknowledges each message only after all of its
//! reports are flushed.
//! Heartbeats (core NATS) update the in-memory liveness view.
//!
//! The subject a message arrived on is who sent it (the broker lets a worker publish only on
//! its own `shoal.results.<pool>.<worker>` and `shoal.heartbeat.<pool>.<worker>`, though it
//! does not check reply subjects, so anything can land in the results stream): a message on
//! a subject that is not a worker's own results (or heartbeat) subject, a report or heartbeat
//! that claims another pool or worker, and anything undecodable is refused; so is a report
//! the core refuses (a task of another pool, an attempt never planned). Every refusal goes to
//! the [`Recorder`], which records the first few per subject and minute and counts the rest,
//! and the message is acknowledged, so it never blocks the queue.

use crate::domain::report::{claim, impersonation};
use crate::domain::worker::heartbeat_refusal;
use crate::domain::{Command, Rejection};
use crate::liveness::Liveness;
use crate::log::writer::{Appended, WriterHandle};
use crate::rejections::budget::Verdict;
use crate::rejections::{Answer, Recorder, Refused, Why};
use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use shoal_runtime::telemetry::child_span;
use shoal_shared::EventId;
use shoal_shared::codec;
use shoal_shared::messages::{Heartbeat, KIND_HEADER, WorkerBody, WorkerMessage, decode_results};
use shoal_shared::subjects::{Subjects, WorkerSubject};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Messages being appended at once (each a report or a batch of them).
const MAX_IN_FLIGHT: usize = 4096;
/// Bytes of a message kept with a refusal of one of its reports.
const HEAD_BYTES: usize = crate::domain::decide::HEAD_BYTES;

/// What became of one report or refusal of a message, once the writer answers.
enum Outcome {
    /// A report handed to the core; if it refuses it, the refusal is recorded as `refused`
    /// with the core's reason.
    Report(oneshot::Receiver<Result<Appended, Rejection>>, Refused),
    /// A refusal recorded in full.
    Recorded(Answer),
}

/// A result message with what became of its reports, whose answers arrive once their
/// batches are durable.
type Pending = (Vec<Outcome>, jetstream::Message);

/// Consumes the results stream until shutdown.
pub async fn results(
    js: jetstream::Context,
    subjects: Subjects,
    writer: WriterHandle,
    recorder: Recorder,
    shutdown: CancellationToken,
) {
    let (ack_tx, ack_rx) = mpsc::channel::<Pending>(MAX_IN_FLIGHT);
    let acker = tokio::spawn(ack_in_order(ack_rx, recorder.clone()));
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
            let Some(outcomes) = submit(&msg, &subjects, &writer, &recorder).await else {
                return;
            };
            if ack_tx.send((outcomes, msg)).await.is_err() {
                return;
            }
        }
    }
    drop(ack_tx);
    let _ = acker.await;
}

/// Hands a result message's reports to the writer in order (so a batch's reports enter the
/// log as the worker sent them) and its refusals to the recorder. `None`: the writer is gone.
async fn submit(
    msg: &jetstream::Message,
    subjects: &Subjects,
    writer: &WriterHandle,
    recorder: &Recorder,
) -> Option<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for item in read(msg, subjects) {
        match item {
            Err(refused) => outcomes.extend(recorder.refuse(refused).await.map(Outcome::Recorded)),
            // A flood of bad task messages makes every worker report one `Rejected` each:
            // those are bounded like the planner's own refusals.
            Ok((report, _))
                if is_rejected(&report) && recorder.note(&msg.subject) == Verdict::Count => {}
            Ok((report, context)) => {
                // The run's trace, when the worker exports one: the decide span joins it.
                let span = child_span("ingest", report.trace_parent.as_deref());
                let cmd = Command::WorkerReport(report);
                let reply = writer.submit(cmd).instrument(span).await.ok()?;
                outcomes.push(Outcome::Report(reply, context));
            }
        }
    }
    Some(outcomes)
}

fn is_rejected(report: &WorkerMessage) -> bool {
    matches!(report.body, WorkerBody::Rejected { .. })
}

/// Acks messages in submission order, each after all its reports and refusals are durable.
async fn ack_in_order(mut pending: mpsc::Receiver<Pending>, recorder: Recorder) {
    while let Some((outcomes, msg)) = pending.recv().await {
        for outcome in outcomes {
            let answer = match outcome {
                Outcome::Recorded(answer) => answer,
                Outcome::Report(reply, mut refused) => match reply.await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(rejection)) => {
                        refused.reason = rejection.to_string();
                        match recorder.refuse(refused).await {
                            Some(answer) => answer,
                            None => continue,
                        }
                    }
                    Err(_) => return,
                },
            };
            if answer.await.is_err() {
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

/// The reports a result message carries, each with how to record it if the core refuses
/// it, or the refusal of the message (on a subject that is not a worker's results subject, or
/// unreadable) or of a report (claiming another pool or worker).
fn read(
    msg: &jetstream::Message,
    subjects: &Subjects,
) -> Vec<Result<(WorkerMessage, Refused), Refused>> {
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    let refused = |reason: String, why: Why, claimed: Option<String>, id: EventId| Refused {
        id,
        subject: msg.subject.to_string(),
        claimed,
        reason,
        why,
        bytes: msg.payload[..msg.payload.len().min(HEAD_BYTES)].to_vec(),
    };
    let whole = |reason: String, why: Why| {
        vec![Err(refused(
            reason,
            why,
            None,
            stable_id(&subjects.results_stream(), seq),
        ))]
    };
    let from = match subjects.parse_worker_subject(&msg.subject) {
        Ok(WorkerSubject::Results(owner)) => owner,
        Ok(_) => {
            return whole(
                format!(
                    "\"{}\" is not a results subject; only reports belong in the results stream",
                    msg.subject
                ),
                Why::Subject,
            );
        }
        Err(e) => {
            return whole(
                format!("{e}; only reports belong in the results stream"),
                Why::Subject,
            );
        }
    };
    let kind = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(KIND_HEADER))
        .map(|v| v.as_str());
    match decode_results(kind, &msg.payload) {
        Ok(reports) => reports
            .into_iter()
            .map(|r| {
                let claimed = Some(claim(&r.pool, &r.worker));
                match impersonation(&from, &r.pool, &r.worker) {
                    Some(why) => Err(refused(why, Why::Impersonation, claimed, r.event_id)),
                    None => {
                        let context = refused(String::new(), Why::Rejected, claimed, r.event_id);
                        Ok((r, context))
                    }
                }
            })
            .collect(),
        Err(e) => whole(e.to_string(), Why::Undecodable),
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
    recorder: Recorder,
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
        match heartbeat_of(&msg, &subjects) {
            Ok(beat) => {
                let (worker, pool) = (beat.worker.clone(), beat.pool.clone());
                if let Some(drain) = liveness.beat(beat) {
                    crate::effects::send_control(
                        &client, &subjects, &signer, &worker, &pool, drain,
                    )
                    .await;
                }
            }
            // Not waited for: a heartbeat is no fact, and a flood must not slow the next.
            Err(refused) => drop(recorder.refuse(refused).await),
        }
    }
}

/// The heartbeat a message carries, when it arrived on the heartbeat subject of the worker it
/// names; else its refusal.
fn heartbeat_of(msg: &async_nats::Message, subjects: &Subjects) -> Result<Heartbeat, Refused> {
    let refused = |reason: String, why: Why, claimed: Option<String>| Refused {
        id: EventId::new(),
        subject: msg.subject.to_string(),
        claimed,
        reason,
        why,
        bytes: msg.payload[..msg.payload.len().min(HEAD_BYTES)].to_vec(),
    };
    let from = match subjects.parse_worker_subject(&msg.subject) {
        Ok(WorkerSubject::Heartbeat(owner)) => owner,
        Ok(_) => {
            return Err(refused(
                format!("\"{}\" is not a heartbeat subject", msg.subject),
                Why::Subject,
                None,
            ));
        }
        Err(e) => return Err(refused(e.to_string(), Why::Subject, None)),
    };
    let beat = codec::decode::<Heartbeat>("heartbeat", &msg.payload)
        .map_err(|e| refused(e.to_string(), Why::Undecodable, None))?;
    match heartbeat_refusal(&from, &beat.pool, &beat.worker) {
        Some(why) => Err(refused(
            why,
            Why::Impersonation,
            Some(claim(&beat.pool, &beat.worker)),
        )),
        None => Ok(beat),
    }
}

async fn sleep_or(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = shutdown.cancelled() => {}
    }
}
