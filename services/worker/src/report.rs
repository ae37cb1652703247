//! Reporting facts to the planner on `shoal.results.<pool>.<worker>` (JetStream, so nothing
//! is lost while the planner is down). Each fact has its own event id, used as the JetStream
//! message id and by the planner's log to drop duplicates; a publish is retried until the
//! broker has stored it.

use crate::WorkerConfig;
use async_nats::jetstream::{self, context::PublishErrorKind};
use shoal_shared::messages::{WIRE_SCHEMA_VERSION, WorkerBody, WorkerMessage};
use shoal_shared::{EventId, PoolName, Timestamp, WorkerName, codec};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Publishes worker facts. Cheap to clone.
#[derive(Clone)]
pub struct Reporter {
    inner: Arc<Inner>,
}

struct Inner {
    js: jetstream::Context,
    subject: String,
    worker: WorkerName,
    pool: PoolName,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("subject", &self.inner.subject)
            .finish()
    }
}

impl Reporter {
    /// A reporter for one worker.
    pub fn new(
        js: jetstream::Context,
        config: &WorkerConfig,
        shutdown: CancellationToken,
    ) -> Reporter {
        Reporter {
            inner: Arc::new(Inner {
                subject: config.subjects.results(&config.pool, &config.name),
                js,
                worker: config.name.clone(),
                pool: config.pool.clone(),
                shutdown,
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
        let msg = WorkerMessage {
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
                return false;
            }
        };
        let id = msg.event_id.to_string();
        let mut backoff = Duration::from_millis(50);
        let give_up_at = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let publish = jetstream::message::PublishMessage::build()
                .payload(bytes.clone())
                .message_id(&id);
            let result = match self
                .inner
                .js
                .send_publish(self.inner.subject.clone(), publish)
                .await
            {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match result {
                Ok(_) => return true,
                Err(e) => {
                    let stopping = self.inner.shutdown.is_cancelled();
                    if stopping && (!final_message || tokio::time::Instant::now() > give_up_at) {
                        tracing::warn!(error = %e, "worker report not stored before shutdown");
                        return false;
                    }
                    if e.kind() == PublishErrorKind::MaxPayloadExceeded {
                        tracing::error!(error = %e, "worker report too large for the broker; dropped");
                        return false;
                    }
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "worker report not stored yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}
