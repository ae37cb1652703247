//! Signing at the planner's I/O edge: every task, health check, cancellation, instruction and
//! drain-state answer the planner publishes carries a [`SIGNATURE_HEADER`] made here, just
//! before it goes out (a re-published attempt is signed anew). The pure core never sees a
//! key or a clock; it decides what to send, and this signs what is sent.

use async_nats::HeaderMap;
use shoal_shared::signed::{Binding, Kind, SIGNATURE_HEADER, SigningKey};
use shoal_shared::{PoolName, TaskId, Timestamp, WorkerName};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a cancellation, instruction or drain-state answer stays valid: they are acted on
/// at once or not at all.
pub const SHORT_TTL: Duration = Duration::from_secs(5 * 60);

/// Most attempts of one pool under one signature: the signature's (and a worker's
/// verification's) share is at least a sixty-fourth, and a message's path to the root is at
/// most six hashes (it travels in the header). Measured with `shoal-bench signing`: groups
/// of 16 left the workers one Ed25519 verification per 12.5 no-op tasks, about as much CPU as
/// all of the rest of signing together.
pub const SIGN_GROUP: usize = 64;

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

    /// Headers of task attempts' messages (pool, task, attempt, payload) published together,
    /// in their order: one Ed25519 signature for each group of up to [`SIGN_GROUP`] messages of
    /// one pool, each verifiable on its own. Per pool, because a pool's workers verify each
    /// root they see once (a root shared with other pools costs each pool a verification for
    /// fewer of its own messages) and carry only their own pool's siblings in the path.
    pub fn tasks(&self, messages: &[(&PoolName, TaskId, u32, &[u8])]) -> Vec<HeaderMap> {
        let mut headers: Vec<HeaderMap> = messages.iter().map(|_| HeaderMap::new()).collect();
        let Some(key) = self.key.as_ref() else {
            return headers;
        };
        let mut by_pool: BTreeMap<&PoolName, Vec<usize>> = BTreeMap::new();
        for (i, (pool, ..)) in messages.iter().enumerate() {
            by_pool.entry(*pool).or_default().push(i);
        }
        let ttl_ms = u64::try_from(self.task_ttl.as_millis()).unwrap_or(u64::MAX);
        let now = Timestamp::now();
        for indices in by_pool.values().flat_map(|all| all.chunks(SIGN_GROUP)) {
            let bindings: Vec<Binding> = indices
                .iter()
                .map(|&i| {
                    let (pool, task, attempt, _) = messages[i];
                    Binding {
                        kind: Kind::Task,
                        pool: pool.clone(),
                        id: task.to_string(),
                        attempt: Some(attempt),
                    }
                })
                .collect();
            let batch: Vec<(&Binding, &[u8])> = bindings
                .iter()
                .zip(indices)
                .map(|(b, &i)| (b, messages[i].3))
                .collect();
            for (&i, value) in indices.iter().zip(key.sign_batch(&batch, now, ttl_ms)) {
                headers[i].insert(SIGNATURE_HEADER, value.as_str());
            }
        }
        headers
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

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_shared::signed::TrustedKeys;

    #[test]
    fn attempts_of_several_pools_are_signed_per_pool_and_each_verifies_alone() {
        let key = SigningKey::from_seed([3; 32]).expect("key");
        let trusted = TrustedKeys::of([key.public()]);
        let signer = Signer::new(key, Duration::from_secs(3600));
        let pools: Vec<PoolName> = ["eu", "us", "eu", "eu", "us"]
            .iter()
            .map(|p| PoolName::parse(*p).expect("pool"))
            .collect();
        let tasks: Vec<TaskId> = pools.iter().map(|_| TaskId::new()).collect();
        let payloads: Vec<Vec<u8>> = (0..pools.len())
            .map(|i| vec![u8::try_from(i).unwrap_or(0); 8])
            .collect();
        let messages: Vec<(&PoolName, TaskId, u32, &[u8])> = pools
            .iter()
            .zip(&tasks)
            .zip(&payloads)
            .map(|((p, t), b)| (p, *t, 1, b.as_slice()))
            .collect();
        let signatures = verify_each(&trusted, &messages, &signer.tasks(&messages));
        // One signature per pool: eu's three share one, us's two another.
        assert_eq!(signatures.len(), 2, "{signatures:?}");
    }

    #[test]
    fn a_pools_attempts_beyond_one_group_take_a_second_signature_and_each_still_verifies() {
        let key = SigningKey::from_seed([4; 32]).expect("key");
        let trusted = TrustedKeys::of([key.public()]);
        let signer = Signer::new(key, Duration::from_secs(3600));
        let pool = PoolName::parse("eu").expect("pool");
        let tasks: Vec<TaskId> = (0..=SIGN_GROUP).map(|_| TaskId::new()).collect();
        let messages: Vec<(&PoolName, TaskId, u32, &[u8])> = tasks
            .iter()
            .map(|t| (&pool, *t, 2, &b"payload"[..]))
            .collect();
        let signatures = verify_each(&trusted, &messages, &signer.tasks(&messages));
        assert_eq!(signatures.len(), 2, "{signatures:?}");
        // One verification covered a whole group: the first group's root, then the second's.
        assert_eq!(trusted.counts().signatures, 2);
        assert_eq!(trusted.counts().messages, SIGN_GROUP as u64 + 1);
    }

    /// Verifies each message against its own binding (as its worker would) and returns the
    /// distinct (pool, signature) pairs.
    fn verify_each(
        trusted: &TrustedKeys,
        messages: &[(&PoolName, TaskId, u32, &[u8])],
        headers: &[HeaderMap],
    ) -> std::collections::BTreeSet<(String, String)> {
        let mut signatures = std::collections::BTreeSet::new();
        for ((pool, task, attempt, payload), h) in messages.iter().zip(headers) {
            let value = h.get(SIGNATURE_HEADER).expect("signed").as_str();
            let binding = Binding {
                kind: Kind::Task,
                pool: (*pool).clone(),
                id: task.to_string(),
                attempt: Some(*attempt),
            };
            let verified = trusted.verify(Some(value), &binding, payload, Timestamp::now());
            assert!(verified.is_ok(), "{value}: {verified:?}");
            let sig = value.rsplit_once(";s=").expect("sig").1.to_owned();
            signatures.insert((pool.to_string(), sig));
        }
        signatures
    }
}
