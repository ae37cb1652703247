//! Idempotency keys of deployment requests: a client that sends a request again with the
//! same key (a retry after a timeout, a message redelivered) gets the deployment its first
//! request made, and a key used for another request is refused. Keys are scoped to who sent
//! them (an API token, an integrator) and kept for [`KEEP_MS`]; the key rides in the
//! `DeploymentCreated` it led to, so replay rebuilds them.

use super::decide::Rejection;
use super::state::{Changes, DocKey, State};
use serde::{Deserialize, Serialize};
use shoal_shared::events::IdempotencyKey;
use shoal_shared::{DeploymentId, Timestamp};

/// How long a key is remembered: a retry comes within minutes, a day covers a client's
/// retry queue (Stripe keeps them as long).
pub const KEEP_MS: u64 = 24 * 3600 * 1000;

/// A key and what its first request made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyDoc {
    /// `<who>/<key>`.
    pub key: String,
    /// SHA-256 of the first request's body (hex).
    pub request: String,
    pub deployment: DeploymentId,
    pub at: Timestamp,
}

impl State {
    /// Remembers the key of a new deployment.
    pub(super) fn key_used(
        &mut self,
        key: &IdempotencyKey,
        deployment: DeploymentId,
        at: Timestamp,
        changes: &mut Changes,
    ) {
        // Keys past their day go as new ones come (by the record's own time, so replay
        // forgets the same ones).
        let keep = i64::try_from(KEEP_MS).unwrap_or(i64::MAX);
        while let Some((t, old)) = self.idempotency_expiry.first().cloned() {
            if at.millis() - t.millis() <= keep {
                break;
            }
            self.idempotency_expiry.pop_first();
            if self.idempotency.get(&old).is_some_and(|d| d.at == t) {
                self.idempotency.remove(&old);
                changes.docs.insert(DocKey::Idempotency(old));
            }
        }
        let doc = IdempotencyDoc {
            key: key.key.clone(),
            request: key.request.clone(),
            deployment,
            at,
        };
        self.idempotency.insert(key.key.clone(), doc);
        self.idempotency_expiry.insert((at, key.key.clone()));
        changes.docs.insert(DocKey::Idempotency(key.key.clone()));
    }
}

/// What a key says about a request at `now`: `Ok(Some(id))` the same request made
/// deployment `id` already; `Ok(None)` the key is new (or expired); a conflict when it was
/// used for another request.
pub(super) fn check(
    state: &State,
    key: &IdempotencyKey,
    now: Timestamp,
) -> Result<Option<DeploymentId>, Rejection> {
    let Some(doc) = state.idempotency.get(&key.key) else {
        return Ok(None);
    };
    if now.millis_since(doc.at) > KEEP_MS {
        return Ok(None);
    }
    if doc.request != key.request {
        let shown = key.key.split_once('/').map_or(key.key.as_str(), |(_, k)| k);
        return Err(Rejection::Conflict(format!(
            "Idempotency-Key \"{shown}\" was used for another request (it made deployment {}); send a new key for a new request",
            doc.deployment
        )));
    }
    Ok(Some(doc.deployment))
}
