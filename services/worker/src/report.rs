//! Reporting facts to the planner on `shoal.results.<pool>.<worker>` (JetStream, so nothing
//! is lost while the planner is down). Each fact has its own event id, which the planner's
//! log uses to drop duplicates.
//!
//! One publisher task per worker sends them, one message in flight at a time: the reports
//! handed in while a message is on its way go out together as the next one (a
//! [`WorkerBatch`](shoal_shared::messages::WorkerBatch)), so a busy worker costs the broker one publish and one store per batch
//! instead of per report, and a quiet one sends each report at once, with no wait added. A
//! lone report goes as a plain [`WorkerMessage`], as before batching. A message is retried
//! (with the same message id, so the broker de-duplicates it) until the broker has stored it;
//! only then are its senders answered.

use crate::WorkerConfig;
use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::{HeaderMap, Subject};
use shoal_shared::messages::{
    KIND_HEADER, KIND_REPORT_BATCH, WIRE_SCHEMA_VERSION, WorkerBody, WorkerMessage,
    batch_message_id, encode_batch,
};
use shoal_shared::{EventId, PoolName, Timestamp, WorkerName, codec};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Reports in one message at most.
const MAX_BATCH_REPORTS: usize = 256;
/// Encoded reports in one message at most: well under the broker's default 1 MiB payload
/// limit. A single report larger than this goes alone, as it would without batching.
const MAX_BATCH_BYTES: usize = 512 * 1024;
/// Reports waiting for the publisher; a sender waits when it is full.
const QUEUE: usize = 1024;
/// How long a message holding a final report is still retried once shutdown began.
const FINAL_GRACE: Duration = Duration::from_secs(10);

/// Publishes worker facts. Cheap to clone; the publisher stops when the last clone is gone.
#[derive(Clone)]
pub struct Reporter {
    inner: Arc<Inner>,
}

struct Inner {
    queue: mpsc::Sender<Queued>,
    subject: String,
    worker: WorkerName,
    pool: PoolName,
}

/// A report waiting for the publisher.
struct Queued {
    msg: WorkerMessage,
    /// `msg` encoded: its size decides the batches, and a lone report is sent as it is.
    bytes: bytes::Bytes,
    /// Retried for a grace period after shutdown began (see [`Reporter::send_final`]).
    final_message: bool,
    /// Told whether the broker stored it.
    stored: oneshot::Sender<bool>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("subject", &self.inner.subject)
            .finish()
    }
}

impl Reporter {
    /// A reporter for one worker; starts its publisher task (call it inside a tokio runtime).
    pub fn new(
        js: jetstream::Context,
        config: &WorkerConfig,
        shutdown: CancellationToken,
    ) -> Reporter {
        let subject = config.subjects.results(&config.pool, &config.name);
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(publisher(js, Subject::from(subject.as_str()), rx, shutdown));
        Reporter {
            inner: Arc::new(Inner {
                queue,
                subject,
                worker: config.name.clone(),
                pool: config.pool.clone(),
            }),
        }
    }

    /// Sends a fact and waits until the broker stored it, retrying through disconnects.
    /// Gives up only at shutdown (after a last grace period), returning `false`.
    pub async fn send(&self, body: WorkerBody) -> bool {
        self.publish(body, false).await
    }

    /// Like [`Reporter::send`], but tries for a short while even after shutdown began.
    pub async fn send_final(&self, body: WorkerBody) -> bool {
        self.publish(body, true).await
    }

    async fn publish(&self, body: WorkerBody, final_message: bool) -> bool {
        match self.hand_in(body, final_message).await {
            // An error here means the publisher is gone (the runtime is shutting down).
            Some(answer) => answer.await.unwrap_or(false),
            None => false,
        }
    }

    /// Queues a report for the publisher; the answer says whether the broker stored it.
    /// `None`: it cannot be sent at all.
    async fn hand_in(
        &self,
        body: WorkerBody,
        final_message: bool,
    ) -> Option<oneshot::Receiver<bool>> {
        let msg = WorkerMessage {
            // The run's span when it reports about a task: the planner's ingest joins it.
            trace_parent: shoal_runtime::telemetry::traceparent(&tracing::Span::current()),
            schema_version: WIRE_SCHEMA_VERSION,
            event_id: EventId::new(),
            worker: self.inner.worker.clone(),
            pool: self.inner.pool.clone(),
            sent_at: Timestamp::now(),
            body,
        };
        let bytes: bytes::Bytes = match codec::encode(&msg) {
            Ok(b) => b.into(),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a worker report");
                return None;
            }
        };
        let (stored, answer) = oneshot::channel();
        let queued = Queued {
            msg,
            bytes,
            final_message,
            stored,
        };
        if self.inner.queue.send(queued).await.is_err() {
            tracing::warn!("worker report not sent: the publisher has stopped");
            return None;
        }
        Some(answer)
    }
}

/// Sends what is queued, one message at a time, in the order handed in, until every
/// [`Reporter`] is dropped.
async fn publisher(
    js: jetstream::Context,
    subject: Subject,
    mut rx: mpsc::Receiver<Queued>,
    shutdown: CancellationToken,
) {
    // A report that did not fit in the previous batch opens the next one.
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        let mut size = first.bytes.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_REPORTS && size < MAX_BATCH_BYTES {
            let Ok(next) = rx.try_recv() else { break };
            if size + next.bytes.len() > MAX_BATCH_BYTES {
                carried = Some(next);
                break;
            }
            size += next.bytes.len();
            batch.push(next);
        }
        let stored = if batch.len() == 1 {
            send_alone(&js, &subject, &batch, &shutdown).await
        } else {
            send_batch(&js, &subject, &batch, &shutdown).await
        };
        for (q, stored) in batch.into_iter().zip(stored) {
            // The sender may have stopped waiting (its task was aborted): nothing to tell.
            let _ = q.stored.send(stored);
        }
    }
}

/// Sends each report as its own message, in order: whether each was stored.
async fn send_alone(
    js: &jetstream::Context,
    subject: &Subject,
    reports: &[Queued],
    shutdown: &CancellationToken,
) -> Vec<bool> {
    let mut stored = Vec::with_capacity(reports.len());
    for q in reports {
        let message = Outgoing {
            id: q.msg.event_id.to_string(),
            payload: q.bytes.clone(),
            headers: None,
            reports: 1,
        };
        let sent = publish(js, subject, &message, q.final_message, shutdown).await;
        stored.push(sent == Sent::Stored);
    }
    stored
}

/// Sends reports as one [`WorkerBatch`](shoal_shared::messages::WorkerBatch): whether each was stored. A batch the broker finds
/// too large (its payload limit is set below [`MAX_BATCH_BYTES`]) is sent report by report.
async fn send_batch(
    js: &jetstream::Context,
    subject: &Subject,
    reports: &[Queued],
    shutdown: &CancellationToken,
) -> Vec<bool> {
    let msgs: Vec<&WorkerMessage> = reports.iter().map(|q| &q.msg).collect();
    let payload = match encode_batch(&msgs) {
        Ok(b) => b.into(),
        Err(e) => {
            tracing::error!(error = %e, reports = reports.len(), "cannot encode a batch of worker reports; sending them one by one");
            return send_alone(js, subject, reports, shutdown).await;
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(KIND_HEADER, KIND_REPORT_BATCH);
    // The first report is in this batch only: its id names the batch on every retry.
    let id = batch_message_id(reports[0].msg.event_id);
    let message = Outgoing {
        id,
        payload,
        headers: Some(headers),
        reports: reports.len(),
    };
    let final_message = reports.iter().any(|q| q.final_message);
    match publish(js, subject, &message, final_message, shutdown).await {
        Sent::Stored => vec![true; reports.len()],
        Sent::GaveUp => vec![false; reports.len()],
        Sent::TooLarge => {
            tracing::warn!(
                reports = reports.len(),
                bytes = message.payload.len(),
                "batch of worker reports larger than the broker accepts; sending them one by one"
            );
            send_alone(js, subject, reports, shutdown).await
        }
    }
}

/// One message on the results subject: a lone report or a batch.
struct Outgoing {
    id: String,
    payload: bytes::Bytes,
    headers: Option<HeaderMap>,
    reports: usize,
}

/// How a publish ended.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Stored,
    /// Shutdown came first.
    GaveUp,
    /// Larger than the broker's payload limit: it will never be stored as it is.
    TooLarge,
}

/// Publishes one message and waits until the broker stored it, retrying with backoff and the
/// same message id. Gives up at shutdown (a message holding a final report after
/// [`FINAL_GRACE`]) and on a message larger than the broker takes.
async fn publish(
    js: &jetstream::Context,
    subject: &Subject,
    message: &Outgoing,
    final_message: bool,
    shutdown: &CancellationToken,
) -> Sent {
    let mut backoff = Duration::from_millis(50);
    let give_up_at = tokio::time::Instant::now() + FINAL_GRACE;
    loop {
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(message.payload.clone())
            .message_id(&message.id);
        if let Some(headers) = &message.headers {
            publish = publish.headers(headers.clone());
        }
        let attempt = async {
            match js.send_publish(subject.clone(), publish).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            }
        };
        let give_up = pointless(js, shutdown, final_message.then_some(give_up_at));
        let result = tokio::select! {
            r = attempt => r,
            () = give_up => {
                tracing::warn!(reports = message.reports, "worker report not stored: the worker is stopping and the broker is unreachable");
                return Sent::GaveUp;
            }
        };
        let e = match result {
            Ok(_) => return Sent::Stored,
            Err(e) => e,
        };
        let stopping = shutdown.is_cancelled();
        if stopping && (!final_message || tokio::time::Instant::now() > give_up_at) {
            tracing::warn!(error = %e, reports = message.reports, "worker report not stored before shutdown");
            return Sent::GaveUp;
        }
        if e.kind() == PublishErrorKind::MaxPayloadExceeded {
            if message.reports == 1 {
                tracing::error!(error = %e, bytes = message.payload.len(), "worker report too large for the broker; dropped");
            }
            return Sent::TooLarge;
        }
        tracing::warn!(error = %e, reports = message.reports, retry_in_ms = backoff.as_millis() as u64, "worker report not stored yet; retrying");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = pointless(js, shutdown, final_message.then_some(give_up_at)) => {
                tracing::warn!(error = %e, reports = message.reports, "worker report not stored before shutdown");
                return Sent::GaveUp;
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Resolves once waiting for the broker is pointless: the worker is stopping and the
/// connection is down (nothing can be stored until it is back, and the stop must not wait
/// for that; JetStream redelivers the unreported task), or a final report's grace is over.
async fn pointless(
    js: &jetstream::Context,
    shutdown: &CancellationToken,
    give_up_at: Option<tokio::time::Instant>,
) {
    shutdown.cancelled().await;
    let client = js.client();
    loop {
        if client.connection_state() != async_nats::connection::State::Connected {
            return;
        }
        if give_up_at.is_some_and(|at| tokio::time::Instant::now() >= at) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::stream;
    use shoal_shared::messages::decode_results;
    use shoal_shared::{PoolName, TaskId};

    /// Reports handed in one after the other, without waiting for the earlier ones, are
    /// stored in that order, across and within batches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reports_are_stored_in_the_order_handed_in() -> anyhow::Result<()> {
        let wait = Duration::from_secs(60);
        let dir = tempfile::tempdir()?;
        let nats = shoal_cli::local::Nats::start(dir.path()).await?;
        let js = jetstream::new(nats.connect().await?);
        let config = WorkerConfig::new(
            WorkerName::parse("w1")?,
            PoolName::parse("default")?,
            dir.path().join("work"),
        );
        let mut results = js
            .create_stream(stream::Config {
                name: config.subjects.results_stream(),
                subjects: vec![config.subjects.results_all()],
                ..Default::default()
            })
            .await?;
        let reporter = Reporter::new(js.clone(), &config, CancellationToken::new());
        let task = TaskId::new();
        let mut answers = Vec::new();
        for n in 0..600 {
            let body = WorkerBody::TaskOutput {
                deployment: shoal_shared::DeploymentId(task.0),
                task,
                attempt: 1,
                delivery: 1,
                first_line: n,
                lines: Vec::new(),
            };
            let answer = reporter.hand_in(body, false).await;
            answers.push(answer.ok_or_else(|| anyhow::anyhow!("not queued"))?);
        }
        for answer in answers {
            assert!(tokio::time::timeout(wait, answer).await??, "stored");
        }
        let last = results.info().await?.state.last_sequence;
        let mut order = Vec::new();
        let mut batches = 0;
        for seq in 1..=last {
            let msg = results.get_raw_message(seq).await?;
            let kind = msg.headers.get(KIND_HEADER).map(|v| v.as_str().to_owned());
            batches += usize::from(kind.is_some());
            for report in decode_results(kind.as_deref(), &msg.payload)? {
                if let WorkerBody::TaskOutput { first_line, .. } = report.body {
                    order.push(first_line);
                }
            }
        }
        assert_eq!(order, (0..600).collect::<Vec<u64>>());
        assert!(
            batches > 0 && (last as usize) < 600,
            "{last} messages, {batches} batches"
        );
        Ok(())
    }
}
