//! The event feed: every record of the log, once durable, published in log order to the
//! JetStream stream `SHOAL_EVENTS` (limits retention) on `shoal.events.<kind>.<id>.<type>`,
//! for integrators to follow, filter and resume from any point.
//!
//! A message is a **frame**: consecutive records of the log that share one subject (one
//! stream and one event type), at most [`FRAME`] of them, as JSON lines (a frame of one record
//! is that record's JSON). The records are as `GET /api/events` shows them (sensitive values
//! masked, token hashes left out). `Shoal-Seq` is the first record's log sequence (and the
//! message id), `Shoal-Seq-Last` the last's. A busy planner's log has long runs of one subject
//! (a deployment's tasks planned, dispatched, started, finished), so a frame carries about ten
//! records on a saturated installation and one on a quiet one: the broker stores a tenth of
//! the messages and the lag stays that of one record.
//!
//! Each frame is published expecting the stream's last sequence to be the frame before it
//! (`Nats-Expected-Last-Sequence`), so the stream holds no gap, no repeat and nothing out of
//! order. The log is the outbox: at start and after any failure the publisher reads the
//! stream's last frame and goes on after its last record, so a planner killed between a
//! publish and its confirmation, or a broker restarted under it, leaves nothing out and sends
//! nothing twice. Where the stream's retention has dropped every frame, the position the
//! publisher noted in the log at each confirmation and at a stop (`EventLog::feed_position`)
//! says where it stood (only frames stored after the last note, which a killed planner did
//! not make, are published again then: integrators skip records by sequence); a stream that
//! never held one (new, or made again) gets the whole log.
//!
//! A record larger than the broker's largest message (a package of hundreds of thousands of
//! chunks) is a frame of its own, published with its `data` left out and the
//! `Shoal-Truncated` header; an integrator reads it whole from
//! `GET /api/events?after=<seq - 1>&limit=1`.

use crate::broker::{self, EventsRetention};
use crate::log::{EventLog, LogError};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::RawMessageErrorKind;
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

/// The header with the log sequence of the frame's first record (also its message id).
pub const SEQ_HEADER: &str = "Shoal-Seq";
/// The header with the log sequence of the frame's last record.
pub const SEQ_LAST_HEADER: &str = "Shoal-Seq-Last";
/// The header with the frame's event type.
pub const TYPE_HEADER: &str = "Shoal-Event-Type";
/// The header with the frame's stream (`deployment/<id>`, ...).
pub const STREAM_HEADER: &str = "Shoal-Stream";
/// The header on a record published without its `data` (too large): its encoded size.
pub const TRUNCATED_HEADER: &str = "Shoal-Truncated";
/// A frame's content type: JSON lines, one record a line.
pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// Most records read from the log and published in one round.
const BATCH: usize = 1024;
/// Most records in one frame.
pub const FRAME: usize = 256;
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

/// Where the feed stands: the stream's sequence of a frame and the log sequence of the
/// frame's last record (both 0 before the first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct At {
    pub stream: u64,
    pub log: u64,
}

/// A frame's confirmation on its way: where the feed stands once it is stored, its last
/// record's time, and the broker's answer.
type Pending = futures::future::BoxFuture<'static, (At, Timestamp, Result<PublishAck, String>)>;

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

/// Publishes every durable record after `at`, keeping up to [`WINDOW`] records unconfirmed,
/// until a failure (returned) or `stop` (`None`).
///
/// Only the last frame of each round asks the broker for an answer; the others are sent
/// without one. That is as exact as answering each: every frame expects the stream's last
/// sequence to be the one before it, so the broker stores nothing after a frame it did not
/// store, and the answer to a round's last frame confirms the whole round (the broker takes
/// one connection's messages in order). A round whose last frame is not stored (its answer
/// is an error, or none comes) sends the publisher back to where the stream stands.
async fn publish_from(p: &mut Publisher, at: At, stop: &CancellationToken) -> Option<FeedError> {
    let (mut sent, mut confirmed) = (at, at);
    p.metrics.feed_at(at.log);
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    loop {
        let durable = *p.durable.borrow_and_update();
        if sent.log < durable && sent.log - confirmed.log < WINDOW / 2 {
            let room = WINDOW - (sent.log - confirmed.log);
            let round = tokio::select! {
                () = stop.cancelled() => return p.note_answers(pending).await,
                r = p.send(sent, durable, room, sent == at) => r,
            };
            match round {
                Ok((now_at, asked)) => {
                    sent = now_at;
                    for (at, time, ack) in asked {
                        pending.push_back(Box::pin(async move {
                            (at, time, ack.await.map_err(|e| e.to_string()))
                        }));
                    }
                }
                Err(e) => return Some(e),
            }
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => return p.note_answers(pending).await,
            Some((at, time, ack)) = pending.next(), if !pending.is_empty() => {
                if let Err(e) = stored(at, ack) {
                    return Some(e);
                }
                confirmed = at;
                p.metrics.feed_confirmed(at.log, time);
                if let Err(e) = p.log.set_feed_position(at.stream, at.log) {
                    return Some(e.into());
                }
            }
            changed = p.durable.changed(), if sent.log >= durable => if changed.is_err() { return None },
        }
    }
}

/// Whether the broker's answer to a frame says it stored it where the feed then stands
/// (`at`); if not, why.
fn stored(at: At, ack: Result<PublishAck, String>) -> Result<(), FeedError> {
    match ack {
        Ok(a) if a.sequence == at.stream && !a.duplicate => Ok(()),
        // A duplicate answer names a frame stored before, which need not be this one (frames
        // of one first record differ in length): start again from the stream.
        Ok(a) if a.duplicate => Err(FeedError::Publish(format!(
            "the frame ending with record {} was answered as a duplicate of stream message {}",
            at.log, a.sequence
        ))),
        Ok(a) => Err(FeedError::Publish(format!(
            "the frame ending with record {} was stored as stream message {}, not {}",
            at.log, a.sequence, at.stream
        ))),
        Err(e) => Err(FeedError::Publish(e)),
    }
}

/// How long a stopping publisher waits for the answers on their way.
const STOP_GRACE: Duration = Duration::from_secs(2);

impl Publisher {
    /// At a stop: notes where the feed stands after the frames the broker confirms within
    /// [`STOP_GRACE`], so that a stream whose retention later drops every frame is resumed
    /// from its end.
    async fn note_answers(&self, mut pending: FuturesOrdered<Pending>) -> Option<FeedError> {
        let mut last = None;
        let answers = async {
            while let Some((at, _, ack)) = pending.next().await {
                if stored(at, ack).is_err() {
                    break;
                }
                last = Some(at);
            }
        };
        // Those confirmed before the grace ran out count.
        let _ = tokio::time::timeout(STOP_GRACE, answers).await;
        if let Some(at) = last
            && let Err(e) = self.log.set_feed_position(at.stream, at.log)
        {
            tracing::warn!(error = %e, "event feed: cannot note where the feed stands");
        }
        None
    }

    /// Where the stream stands: its last frame, and the log sequence of that frame's last
    /// record, checked to be this log's.
    async fn resume_point(&self) -> Result<At, FeedError> {
        broker::ensure_events_stream(&self.js, &self.subjects, self.retention).await?;
        let stream = self
            .js
            .get_stream(self.subjects.events_stream())
            .await
            .map_err(|e| FeedError::Stream(e.to_string()))?;
        let state = &stream.cached_info().state;
        let (last, held) = (state.last_sequence, state.messages);
        let head = self.log.head()?.seq;
        let at = if last == 0 {
            At::default()
        } else if held == 0 {
            self.noted_position(last)?
        } else {
            self.last_frame(&stream, last).await?
        };
        if at.log > head {
            return Err(FeedError::Foreign(format!(
                "its last frame ends with record {}, this log with {head}",
                at.log
            )));
        }
        tracing::info!(
            from = at.log + 1,
            log_at = head,
            stream_at = at.stream,
            "event feed: publishing"
        );
        Ok(at)
    }

    /// Where the feed stands when retention has dropped every frame, the last being `last`:
    /// the position noted at the last confirmation. Frames stored after it (a crash came
    /// between their confirmation and the note) are gone with the others; their records are
    /// published again, and integrators that read them skip them by sequence. With no
    /// position noted, nothing of this log was ever confirmed to it by a planner that keeps
    /// notes: a stream of records from before frames, which held record N as message N.
    fn noted_position(&self, last: u64) -> Result<At, FeedError> {
        match self.log.feed_position()? {
            Some((stream, log)) if stream <= last => {
                if stream < last {
                    tracing::warn!(
                        noted = stream,
                        last,
                        from = log + 1,
                        "event feed: the stream's retention dropped every frame, and the last ones after the position this planner noted; their records are published again"
                    );
                }
                Ok(At { stream: last, log })
            }
            Some((stream, _)) => Err(FeedError::Foreign(format!(
                "it ends at frame {last}, this log noted frame {stream} as published"
            ))),
            None => Ok(At {
                stream: last,
                log: last,
            }),
        }
    }

    /// Where the stream's last frame (`last`) leaves the feed, checking that its last record
    /// is this log's (same event id).
    async fn last_frame(
        &self,
        stream: &jetstream::stream::Stream,
        last: u64,
    ) -> Result<At, FeedError> {
        let msg = stream
            .get_raw_message(last)
            .await
            .map_err(|e| FeedError::Stream(format!("cannot read its last frame ({last}): {e}")))?;
        let log = frame_last_seq(&msg.headers).ok_or_else(|| {
            FeedError::Foreign(format!(
                "its last frame ({last}) has no {SEQ_HEADER} header"
            ))
        })?;
        let theirs = msg
            .payload
            .split(|b| *b == b'\n')
            .next_back()
            .and_then(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
            .and_then(|v| v["event_id"].as_str().map(str::to_owned));
        let reader = self.log.clone();
        let ours = tokio::task::spawn_blocking(move || reader.read(log.saturating_sub(1), 1))
            .await
            .map_err(|e| FeedError::Stream(format!("reading the log failed: {e}")))??
            .pop()
            .filter(|env| env.seq == log)
            .map(|env| env.event_id.to_string());
        if theirs.is_some() && theirs == ours {
            return Ok(At { stream: last, log });
        }
        Err(FeedError::Foreign(format!(
            "its record {log} is event {}, this log's is {}",
            theirs.as_deref().unwrap_or("unreadable"),
            ours.as_deref().unwrap_or("missing")
        )))
    }

    /// Reads the durable records after `at` (up to `durable`, at most `room` and [`BATCH`])
    /// and sends them as frames. The last frame asks for the broker's answer, and so does the
    /// first when `probe` (the first round after a start or a failure: a frame the broker
    /// refuses for a cause of its own, such as its limits, is refused first and says why,
    /// where every later one would only say that the sequence does not follow). Where the
    /// feed stands after them, and for each frame that asked: where the feed stands once it
    /// is stored, its last record's time and the answer to come.
    async fn send(
        &self,
        at: At,
        durable: u64,
        room: u64,
        probe: bool,
    ) -> Result<(At, Vec<(At, Timestamp, PublishAckFuture)>), FeedError> {
        let log = self.log.clone();
        let limit = usize::try_from(room).unwrap_or(BATCH).min(BATCH);
        let mut records = tokio::task::spawn_blocking(move || log.read(at.log, limit))
            .await
            .map_err(|e| FeedError::Stream(format!("reading the log failed: {e}")))??;
        records.retain(|r| r.seq <= durable);
        let max = self
            .client
            .server_info()
            .max_payload
            .saturating_sub(HEADROOM);
        let frames = frames(records, max)?;
        let last = frames.len().saturating_sub(1);
        let (mut now_at, mut asked) = (at, Vec::new());
        for (i, frame) in frames.into_iter().enumerate() {
            let subject = self.subjects.event(&frame.stream, &frame.event_type);
            let headers = frame.headers(now_at.stream);
            now_at = At {
                stream: now_at.stream + 1,
                log: frame.last,
            };
            if i == last || (probe && i == 0) {
                let msg = PublishMessage::build()
                    .payload(frame.body.into())
                    .headers(headers);
                let ack = self
                    .js
                    .send_publish(subject, msg)
                    .await
                    .map_err(|e| FeedError::Publish(e.to_string()))?;
                asked.push((now_at, frame.time, ack));
            } else {
                self.client
                    .publish_with_headers(subject, headers, frame.body.into())
                    .await
                    .map_err(|e| FeedError::Publish(e.to_string()))?;
            }
        }
        Ok((now_at, asked))
    }
}

/// The stream sequence of the first frame holding a record after log sequence `after` (the
/// stream's next when it holds none yet): where a consumer that is to deliver the records
/// after `after` starts. Frames hold increasing sequences, so this is a binary search of
/// direct reads.
///
/// # Errors
/// The stream's state or one of its frames cannot be read.
pub async fn start_after(
    stream: &mut jetstream::stream::Stream,
    after: u64,
) -> Result<u64, String> {
    let state = &stream.info().await.map_err(|e| e.to_string())?.state;
    let (mut lo, mut hi, messages) = (
        state.first_sequence.max(1),
        state.last_sequence + 1,
        state.messages,
    );
    if after == 0 || messages == 0 {
        return Ok(if messages == 0 { hi } else { lo });
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let last = match stream.get_raw_message(mid).await {
            Ok(msg) => frame_last_seq(&msg.headers)
                .ok_or_else(|| format!("the feed's message {mid} has no {SEQ_HEADER} header"))?,
            // Dropped by retention since the stream's state was read: an old frame.
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => 0,
            Err(e) => return Err(format!("cannot read the feed's message {mid}: {e}")),
        };
        if last > after {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}

/// The log sequence of a frame's last record: `Shoal-Seq-Last`, or `Shoal-Seq` on a message
/// of one record without it.
pub fn frame_last_seq(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(SEQ_LAST_HEADER)
        .or_else(|| headers.get(SEQ_HEADER))
        .and_then(|v| v.as_str().parse().ok())
}

/// Consecutive records of one subject, published as one message.
#[derive(Debug)]
struct Frame {
    stream: String,
    event_type: String,
    first: u64,
    last: u64,
    records: usize,
    /// The last record's time.
    time: Timestamp,
    /// The records' JSON, a line each.
    body: Vec<u8>,
    /// The encoded size of the one record whose `data` was left out.
    truncated: Option<usize>,
}

impl Frame {
    /// Whether the next record, of this stream and type and `len` bytes, joins this frame.
    fn takes(&self, env: &Envelope, len: usize, max: usize) -> bool {
        self.truncated.is_none()
            && self.records < FRAME
            && self.body.len() + 1 + len <= max
            && self.stream == env.stream
            && self.event_type == env.event_type
    }

    /// Its message id: the log sequence of its record, or `<first>-<last>` (the same first
    /// record may start a longer frame after a resume: a different message).
    fn message_id(&self) -> String {
        if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{}-{}", self.first, self.last)
        }
    }

    /// Its headers, published after stream message `prev`.
    fn headers(&self, prev: u64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(SEQ_HEADER, self.first.to_string().as_str());
        headers.insert(SEQ_LAST_HEADER, self.last.to_string().as_str());
        headers.insert(TYPE_HEADER, self.event_type.as_str());
        headers.insert(STREAM_HEADER, self.stream.as_str());
        headers.insert("Content-Type", CONTENT_TYPE);
        headers.insert(header::NATS_MESSAGE_ID, self.message_id().as_str());
        headers.insert(
            header::NATS_EXPECTED_LAST_SEQUENCE,
            prev.to_string().as_str(),
        );
        if let Some(size) = self.truncated {
            headers.insert(TRUNCATED_HEADER, size.to_string().as_str());
        }
        headers
    }
}

/// The records as frames: each run of one subject cut at [`FRAME`] records and at `max`
/// bytes; a record of more than `max` bytes alone, without its `data`.
fn frames(records: Vec<Envelope>, max: usize) -> Result<Vec<Frame>, FeedError> {
    let mut out: Vec<Frame> = Vec::new();
    for env in records {
        let seq = env.seq;
        let mut body =
            EventView::json_of(&env).map_err(|cause| FeedError::Encode { seq, cause })?;
        let mut truncated = None;
        if body.len() > max {
            truncated = Some(body.len());
            let mut view = EventView::of(env.clone());
            view.data = serde_json::json!({ "truncated": body.len() });
            body = serde_json::to_vec(&view).map_err(|cause| FeedError::Encode { seq, cause })?;
        }
        match out.last_mut() {
            Some(f) if truncated.is_none() && f.takes(&env, body.len(), max) => {
                f.body.push(b'\n');
                f.body.extend_from_slice(&body);
                f.last = seq;
                f.records += 1;
                f.time = env.time;
            }
            _ => out.push(Frame {
                stream: env.stream,
                event_type: env.event_type,
                first: seq,
                last: seq,
                records: 1,
                time: env.time,
                body,
                truncated,
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_shared::EventId;
    use shoal_shared::events::Event;
    use shoal_shared::{PoolName, codec};

    /// Record `seq`: pool `pool` registered, with a description of `len` bytes.
    fn record(seq: u64, pool: &str, len: usize) -> Envelope {
        let event = Event::PoolRegistered {
            pool: PoolName::parse(pool).expect("valid"),
            region: None,
            description: Some("d".repeat(len)),
        };
        Envelope {
            seq,
            event_id: EventId::new(),
            time: Timestamp(i64::try_from(seq).expect("small")),
            stream: event.stream(),
            event_type: event.event_type().into(),
            schema_version: 1,
            correlation_id: None,
            causation_id: None,
            payload: codec::encode(&event).expect("encodes"),
            prev_hash: vec![0; 32],
            actor: None,
        }
    }

    fn spans(frames: &[Frame]) -> Vec<(u64, u64)> {
        frames.iter().map(|f| (f.first, f.last)).collect()
    }

    #[test]
    fn a_run_of_one_subject_is_one_frame_of_json_lines_in_log_order() {
        let records = vec![
            record(1, "eu", 1),
            record(2, "eu", 1),
            record(3, "us", 1),
            record(4, "eu", 1),
        ];
        let frames = frames(records, 1 << 20).expect("frames");
        assert_eq!(spans(&frames), [(1, 2), (3, 3), (4, 4)]);
        let lines: Vec<serde_json::Value> = frames[0]
            .body
            .split(|b| *b == b'\n')
            .map(|l| serde_json::from_slice(l).expect("a JSON record a line"))
            .collect();
        assert_eq!(
            lines.iter().map(|v| v["seq"].as_u64()).collect::<Vec<_>>(),
            [Some(1), Some(2)]
        );
        assert_eq!(frames[0].time, Timestamp(2));
        // A frame of one record is that record's JSON.
        let one: serde_json::Value = serde_json::from_slice(&frames[1].body).expect("JSON");
        assert_eq!(one["seq"], 3);
        let h = frames[0].headers(7);
        assert_eq!(h.get(SEQ_HEADER).map(|v| v.as_str()), Some("1"));
        assert_eq!(frame_last_seq(&h), Some(2));
        // The message id names the range: a longer frame from the same first record (after
        // a resume) is another message, not a duplicate.
        assert_eq!(
            h.get(header::NATS_MESSAGE_ID).map(|v| v.as_str()),
            Some("1-2")
        );
        let single = frames[1].headers(8);
        assert_eq!(
            single.get(header::NATS_MESSAGE_ID).map(|v| v.as_str()),
            Some("3")
        );
        assert_eq!(
            h.get(header::NATS_EXPECTED_LAST_SEQUENCE)
                .map(|v| v.as_str()),
            Some("7")
        );
    }

    #[test]
    fn frames_are_cut_at_their_record_count_and_size() {
        let many = (1..=u64::try_from(FRAME).expect("small") + 1)
            .map(|s| record(s, "eu", 1))
            .collect();
        assert_eq!(spans(&frames(many, 1 << 20).expect("frames")).len(), 2);
        let one_len = EventView::json_of(&record(1, "eu", 100))
            .expect("json")
            .len();
        let three = (1..=3).map(|s| record(s, "eu", 100)).collect();
        let cut = frames(three, 2 * one_len + 1).expect("frames");
        assert_eq!(spans(&cut), [(1, 2), (3, 3)]);
        assert!(cut.iter().all(|f| f.body.len() <= 2 * one_len + 1));
    }

    #[test]
    fn a_record_over_the_limit_is_a_frame_of_its_own_without_its_data() {
        let records = vec![
            record(1, "eu", 10),
            record(2, "eu", 5000),
            record(3, "eu", 10),
        ];
        let frames = frames(records, 2000).expect("frames");
        assert_eq!(spans(&frames), [(1, 1), (2, 2), (3, 3)]);
        assert!(frames[1].truncated.is_some_and(|n| n > 5000));
        let view: serde_json::Value = serde_json::from_slice(&frames[1].body).expect("JSON");
        assert!(view["data"]["truncated"].is_number());
        assert!(frames[1].headers(1).get(TRUNCATED_HEADER).is_some());
    }
}
