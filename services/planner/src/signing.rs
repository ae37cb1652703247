//! Signing at the planner's I/O edge: every task, health check, cancellation, instruction and
//! drain-state answer the planner publishes carries a [`SIGNATURE_HEADER`] made here, just
//! before it goes out (a re-published attempt is signed anew). The pure core never sees a
//! key or a clock; it decides what to send, and this signs what is sent.

use async_nats::HeaderMap;
use shoal_shared::signed::{Binding, Kind, SIGNATURE_HEADER, SigningKey};
use shoal_shared::{PoolName, TaskId, Timestamp, WorkerName};
use std::sync::Arc;
use std::time::Duration;

/// How long a cancellation, instruction or drain-state answer stays valid: they are acted on
/// at once or not at all.
pub const SHORT_TTL: Duration = Duration::from_secs(5 * 60);

/// Signs what the planner sends. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Signer {
    key: Option<Arc<SigningKey>>,
    task_ttl: Duration,
}

impl Signer {
    /// Signs with `key`; task messages stay valid for `task_ttl` (they may wait in their
    /// pool's queue for a worker that long).
    pub fn new(key: SigningKey, task_ttl: Duration) -> Signer {
        Signer {
            key: Some(Arc::new(key)),
            task_ttl,
        }
    }

    /// Signs nothing (`--insecure-no-signing`): only workers that accept unsigned messages
    /// act on what this planner sends.
    pub fn insecure_none() -> Signer {
        Signer {
            key: None,
            task_ttl: Duration::ZERO,
        }
    }

    /// How long the broker must remember a task message's id so that a copy of it (a
    /// worker can have JetStream deliver a genuine task onto its pool's task subject, where
    /// the stream stores it again) is dropped as a duplicate for as long as its signature is
    /// valid: the task signature's lifetime plus the clock skew a worker allows.
    pub fn replay_window(&self) -> Duration {
        let skew = Duration::from_millis(shoal_shared::signed::MAX_CLOCK_SKEW_MS);
        (self.task_ttl + skew).max(crate::broker::DUPLICATE_WINDOW)
    }

    /// The key, if signing.
    pub fn key(&self) -> Option<&SigningKey> {
        self.key.as_deref()
    }

    /// Headers of task attempts' messages (pool, task, attempt, payload) published together:
    /// one Ed25519 signature for all of them, each verifiable on its own.
    pub fn tasks(&self, messages: &[(&PoolName, TaskId, u32, &[u8])]) -> Vec<HeaderMap> {
        let Some(key) = self.key.as_ref() else {
            return messages.iter().map(|_| HeaderMap::new()).collect();
        };
        let bindings: Vec<Binding> = messages
            .iter()
            .map(|(pool, task, attempt, _)| Binding {
                kind: Kind::Task,
                pool: (*pool).clone(),
                id: task.to_string(),
                attempt: Some(*attempt),
            })
            .collect();
        let batch: Vec<(&Binding, &[u8])> = bindings
            .iter()
            .zip(messages)
            .map(|(b, m)| (b, m.3))
            .collect();
        let ttl_ms = u64::try_from(self.task_ttl.as_millis()).unwrap_or(u64::MAX);
        key.sign_batch(&batch, Timestamp::now(), ttl_ms)
            .into_iter()
            .map(|value| {
                let mut headers = HeaderMap::new();
                headers.insert(SIGNATURE_HEADER, value.as_str());
                headers
            })
            .collect()
    }

    /// Adds the signature of a health check that is of no use after `deadline`.
    pub fn check(
        &self,
        headers: &mut HeaderMap,
        pool: &PoolName,
        check: &str,
        deadline: Timestamp,
        payload: &[u8],
    ) {
        let binding = Binding {
            kind: Kind::HealthCheck,
            pool: pool.clone(),
            id: check.to_owned(),
            attempt: None,
        };
        let ttl = Duration::from_millis(deadline.millis_since(Timestamp::now())) + SHORT_TTL;
        if let Some(value) = self.sign(&binding, payload, ttl) {
            headers.insert(SIGNATURE_HEADER, value.as_str());
        }
    }

    /// Headers of a cancellation of `task`'s attempts up to `upto` (`u32::MAX`: all).
    pub fn cancel(&self, pool: &PoolName, task: TaskId, upto: u32, payload: &[u8]) -> HeaderMap {
        let binding = Binding {
            kind: Kind::Cancel,
            pool: pool.clone(),
            id: task.to_string(),
            attempt: Some(upto),
        };
        self.headers(&binding, payload, SHORT_TTL)
    }

    /// Headers of an instruction (`Kind::Control`) or a drain-state answer
    /// (`Kind::DrainState`) to one worker.
    pub fn to_worker(
        &self,
        kind: Kind,
        pool: &PoolName,
        worker: &WorkerName,
        payload: &[u8],
    ) -> HeaderMap {
        let binding = Binding {
            kind,
            pool: pool.clone(),
            id: worker.to_string(),
            attempt: None,
        };
        self.headers(&binding, payload, SHORT_TTL)
    }

    fn headers(&self, binding: &Binding, payload: &[u8], ttl: Duration) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = self.sign(binding, payload, ttl) {
            headers.insert(SIGNATURE_HEADER, value.as_str());
        }
        headers
    }

    fn sign(&self, binding: &Binding, payload: &[u8], ttl: Duration) -> Option<String> {
        let key = self.key.as_ref()?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Some(key.sign(binding, payload, Timestamp::now(), ttl_ms))
    }
}
