//! The event feed: every record of the log, once durable, published in log order to the
//! JetStream stream `SHOAL_EVENTS` (limits retention) on `shoal.events.<kind>.<id>.<type>`,
//! for integrators to follow, filter and resume from any point.
//!
//! Each message is the record as `GET /api/events` shows it (JSON, sensitive values masked,
//! token hashes left out), with the log sequence in the `Shoal-Seq` header and as its message
//! id. **The stream sequence is the log sequence**: each record is published expecting the
//! stream's last sequence to be the one before it (`Nats-Expected-Last-Sequence`), so an
//! integrator resumes after record N by asking for stream sequence N + 1, and the stream can
//! hold no gap, no repeat and nothing out of order. The log is the outbox: at start and after
//! any failure the publisher goes on after the stream's last sequence, so a planner killed
//! between a publish and its confirmation, or a broker restarted under it, leaves nothing
//! out and sends nothing twice (a publish whose confirmation was lost is answered as a
//! duplicate of its message id). The stream's last sequence stays when its retention drops
//! old records; a stream that never held one (new, or made again) gets the whole log.
//!
//! A record larger than the broker's largest message (a package of hundreds of thousands of
//! chunks) is published with its `data` left out and the `Shoal-Truncated` header; an
//! integrator reads it whole from `GET /api/events?after=<seq - 1>&limit=1`.

use crate::broker::{self, EventsRetention};
use crate::log::{EventLog, LogError};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::{HeaderMap, header};
use futures::StreamExt as _;
use futures::stream::FuturesOrdered;
use shoal_shared::Timestamp;
use shoal_shared::api::EventView;
use shoal_shared::events::Envelope;
use shoal_shared::subjects::Subjects;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The header with the record's log sequence.
pub const SEQ_HEADER: &str = "Shoal-Seq";
/// The header with the record's event type.
pub const TYPE_HEADER: &str = "Shoal-Event-Type";
/// The header with the record's stream (`deployment/<id>`, ...).
pub const STREAM_HEADER: &str = "Shoal-Stream";
/// The header on a record published without its `data` (too large): its encoded size.
pub const TRUNCATED_HEADER: &str = "Shoal-Truncated";

/// Most records read from the log and published in one round.
const BATCH: usize = 1024;
/// Room kept below the broker's largest message for headers and the subject.
const HEADROOM: usize = 4096;
/// The first and the longest wait after a failure.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

/// Why a round of publishing stopped.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("{0}")]
    Log(#[from] LogError),
    #[error("the event feed's stream: {0}")]
    Broker(#[from] broker::BrokerError),
    #[error("cannot read the event feed's stream: {0}")]
    Stream(String),
    #[error("the broker did not store an event: {0}")]
    Publish(String),
    #[error(
        "the stream holds another log's records ({0}); this planner publishes nothing to it: delete the stream SHOAL_EVENTS if this log is the one to publish, or give this planner its own --subject-prefix"
    )]
    Foreign(String),
    #[error("cannot encode record {seq} for the event feed: {cause}")]
    Encode { seq: u64, cause: serde_json::Error },
}

/// What the publisher needs.
pub struct Publisher {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub log: EventLog,
    pub retention: EventsRetention,
    /// The log's last durable sequence.
    pub durable: watch::Receiver<u64>,
    /// The feed's published sequence and lag go there.
    pub metrics: crate::metrics::Metrics,
}

/// Records published and not yet confirmed by the stream, at most: the publisher reads and
/// sends the next records while the broker stores the last ones.
const WINDOW: u64 = 4096;

/// A round's confirmation on its way: its last record's sequence and time, and the broker's
/// answer.
type Pending = futures::future::BoxFuture<'static, (u64, Timestamp, Result<PublishAck, String>)>;

/// Publishes the log to the feed until `stop`.
pub async fn run(mut p: Publisher, stop: CancellationToken) {
    let mut delay = BACKOFF.0;
    loop {
        // Where the stream stands: at start and after any failure.
        let resumed = tokio::select! {
            () = stop.cancelled() => return,
            r = p.resume_point() => r,
        };
        let failure = match resumed {
            Ok(at) => {
                delay = BACKOFF.0;
                match publish_from(&mut p, at, &stop).await {
                    Some(e) => e,
                    None => return,
                }
            }
            Err(e) => e,
        };
        tracing::warn!(error = %failure, "event feed: publishing paused; retrying from where the stream stands");
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(BACKOFF.1);
    }
}

/// Publishes every durable record after `at`, keeping up to [`WINDOW`] unconfirmed, until a
/// failure (returned) or `stop` (`None`).
///
/// Only the last record of each round asks the broker for an answer; the others are sent
/// without one. That is as exact as answering each: every record expects the stream's last
/// sequence to be the one before it, so the broker stores nothing after a record it did not
/// store, and the answer to a round's last record confirms the whole round (the broker takes
/// one connection's messages in order). A round whose last record is not stored (its answer
/// is an error, or none comes) sends the publisher back to where the stream stands. Half the
/// messages the broker would send, and the planner read, for the feed are gone.
async fn publish_from(p: &mut Publisher, at: u64, stop: &CancellationToken) -> Option<FeedError> {
    let (mut sent, mut confirmed) = (at, at);
    p.metrics.feed_at(at);
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    loop {
        let durable = *p.durable.borrow_and_update();
        if sent < durable && sent - confirmed < WINDOW / 2 {
            let room = WINDOW - (sent - confirmed);
            let round = tokio::select! {
                () = stop.cancelled() => return None,
                r = p.send(sent, durable, room, sent == at) => r,
            };
            match round {
                Ok(asked) => {
                    for (seq, time, ack) in asked {
                        sent = seq;
                        pending.push_back(Box::pin(async move {
                            (seq, time, ack.await.map_err(|e| e.to_string()))
                        }));
                    }
                }
                Err(e) => return Some(e),
            }
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            Some((seq, time, ack)) = pending.next(), if !pending.is_empty() => match ack {
                Ok(a) if a.sequence == seq => {
                    confirmed = seq;
                    p.metrics.feed_confirmed(seq, time);
                }
                Ok(a) => return Some(FeedError::Publish(format!("record {seq} was stored as {}", a.sequence))),
                Err(e) => return Some(FeedError::Publish(e)),
            },
            changed = p.durable.changed(), if sent >= durable => if changed.is_err() { return None },
        }
    }
}

impl Publisher {
    /// The last record the stream holds: its last sequence, which is the log's.
    async fn resume_point(&self) -> Result<u64, FeedError> {
        broker::ensure_events_stream(&self.js, &self.subjects, self.retention).await?;
        let mut stream = self
            .js
            .get_stream(self.subjects.events_stream())
            .await
            .map_err(|e| FeedError::Stream(e.to_string()))?;
        let at = stream
            .info()
            .await
            .map_err(|e| FeedError::Stream(e.to_string()))?
            .state
            .last_sequence;
        let head = self.log.head()?.seq;
        if at > head {
            return Err(FeedError::Foreign(format!(
                "it holds {at} records, this log {head}"
            )));
        }
        if at > 0 {
            self.same_record(&stream, at).await?;
        }
        tracing::info!(from = at + 1, log_at = head, "event feed: publishing");
        Ok(at)
    }

    /// Checks that the stream's record `at` is this log's record `at` (same event id), unless
    /// the stream no longer holds it.
    async fn same_record(
        &self,
        stream: &jetstream::stream::Stream,
        at: u64,
    ) -> Result<(), FeedError> {
        let Ok(msg) = stream.get_raw_message(at).await else {
            return Ok(());
        };
        let theirs = serde_json::from_slice::<serde_json::Value>(&msg.payload)
            .ok()
            .and_then(|v| v["event_id"].as_str().map(str::to_owned));
        let log = self.log.clone();
        let ours = tokio::task::spawn_blocking(move || log.read(at - 1, 1))
            .await
            .map_err(|e| FeedError::Stream(format!("reading the log failed: {e}")))??
            .pop()
            .map(|env| env.event_id.to_string());
        if theirs.is_some() && theirs == ours {
            return Ok(());
        }
        Err(FeedError::Foreign(format!(
            "its record {at} is event {}, this log's is {}",
            theirs.as_deref().unwrap_or("unreadable"),
            ours.as_deref().unwrap_or("missing")
        )))
    }

    /// Reads the durable records after `from` (up to `durable`, at most `room` and
    /// [`BATCH`]) and sends them. The last asks for the broker's answer, and so does the
    /// first when `probe` (the first round after a start or a failure: a record the broker
    /// refuses for a cause of its own, such as its limits, is refused first and says why,
    /// where every later one would only say that the sequence does not follow). Each record
    /// that asked: its sequence, time and the answer to come.
    async fn send(
        &self,
        from: u64,
        durable: u64,
        room: u64,
        probe: bool,
    ) -> Result<Vec<(u64, Timestamp, PublishAckFuture)>, FeedError> {
        let log = self.log.clone();
        let limit = usize::try_from(room).unwrap_or(BATCH).min(BATCH);
        let mut records = tokio::task::spawn_blocking(move || log.read(from, limit))
            .await
            .map_err(|e| FeedError::Stream(format!("reading the log failed: {e}")))??;
        records.retain(|r| r.seq <= durable);
        let max = self
            .client
            .server_info()
            .max_payload
            .saturating_sub(HEADROOM);
        let last = records.len().saturating_sub(1);
        let mut asked = Vec::new();
        for (i, env) in records.into_iter().enumerate() {
            let time = env.time;
            let (subject, seq, headers, body) = message(&self.subjects, env, max)?;
            if i == last || (probe && i == 0) {
                let msg = PublishMessage::build()
                    .payload(body.into())
                    .headers(headers);
                let ack = self
                    .js
                    .send_publish(subject, msg)
                    .await
                    .map_err(|e| FeedError::Publish(e.to_string()))?;
                asked.push((seq, time, ack));
            } else {
                self.client
                    .publish_with_headers(subject, headers, body.into())
                    .await
                    .map_err(|e| FeedError::Publish(e.to_string()))?;
            }
        }
        Ok(asked)
    }
}

/// The feed message of a record: its subject, its sequence, its headers (with the message
/// id and the stream's expected last sequence) and its body.
fn message(
    subjects: &Subjects,
    env: Envelope,
    max: usize,
) -> Result<(String, u64, HeaderMap, Vec<u8>), FeedError> {
    let (seq, subject) = (env.seq, subjects.event(&env.stream, &env.event_type));
    let mut headers = HeaderMap::new();
    headers.insert(SEQ_HEADER, seq.to_string().as_str());
    headers.insert(TYPE_HEADER, env.event_type.as_str());
    headers.insert(STREAM_HEADER, env.stream.as_str());
    headers.insert("Content-Type", "application/json");
    headers.insert(header::NATS_MESSAGE_ID, seq.to_string().as_str());
    headers.insert(
        header::NATS_EXPECTED_LAST_SEQUENCE,
        seq.saturating_sub(1).to_string().as_str(),
    );
    let mut body = EventView::json_of(&env).map_err(|cause| FeedError::Encode { seq, cause })?;
    if body.len() > max {
        headers.insert(TRUNCATED_HEADER, body.len().to_string().as_str());
        let mut view = EventView::of(env);
        view.data = serde_json::json!({ "truncated": body.len() });
        body = serde_json::to_vec(&view).map_err(|cause| FeedError::Encode { seq, cause })?;
    }
    Ok((subject, seq, headers, body))
}
