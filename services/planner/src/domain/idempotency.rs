//! Idempotency keys of create requests (`Command::Once`): a client that sends a request again
//! with the same key (a retry after a timeout, a message redelivered) gets what its first
//! request made, and a key used for another request is refused. Keys are scoped to who sent
//! them (an API token, an integrator) and kept for [`KEEP_MS`]; each use is a fact in the log
//! (`IdempotencyKeyUsed`, in the batch of what it made), so replay rebuilds them.

use super::decide::{NewEvent, Rejection};
use super::state::{Changes, DocKey, State};
use serde::{Deserialize, Serialize};
use shoal_shared::Timestamp;
use shoal_shared::events::{Event, IdempotencyKey};

/// How long a key is remembered: a retry comes within minutes, a day covers a client's
/// retry queue (Stripe keeps them as long).
pub const KEEP_MS: u64 = 24 * 3600 * 1000;

/// A key and what its first request made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyDoc {
    /// `<who>/<key>`.
    pub key: String,
    /// The first request's fingerprint.
    pub request: String,
    /// The stream of what it made: `deployment/<id>`, `target/<name>`, `pool/<name>`.
    pub made: String,
    pub at: Timestamp,
}

impl State {
    /// Remembers a key's use, and forgets keys used more than a day before it (by the
    /// records' own times, so replay forgets the same ones).
    pub(super) fn key_used(
        &mut self,
        key: &str,
        request: &str,
        made: &str,
        at: Timestamp,
        changes: &mut Changes,
    ) {
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
            key: key.to_owned(),
            request: request.to_owned(),
            made: made.to_owned(),
            at,
        };
        self.idempotency.insert(key.to_owned(), doc);
        self.idempotency_expiry.insert((at, key.to_owned()));
        changes.docs.insert(DocKey::Idempotency(key.to_owned()));
    }
}

/// `Once`: the events of `inner` and the key's use, unless the key was used at `now`'s day:
/// then [`Rejection::Replayed`] with what the same request made, or a conflict for another
/// request.
pub(super) fn once(
    state: &State,
    key: &IdempotencyKey,
    now: Timestamp,
    inner: impl FnOnce() -> Result<Vec<NewEvent>, Rejection>,
) -> Result<Vec<NewEvent>, Rejection> {
    if let Some(doc) = state.idempotency.get(&key.key)
        && now.millis_since(doc.at) <= KEEP_MS
    {
        if doc.request == key.request {
            return Err(Rejection::Replayed(doc.made.clone()));
        }
        let shown = key.key.split_once('/').map_or(key.key.as_str(), |(_, k)| k);
        return Err(Rejection::Conflict(format!(
            "Idempotency-Key \"{shown}\" was used for another request (it made {}); send a new key for a new request",
            doc.made
        )));
    }
    let mut events = inner()?;
    let Some(made) = events.first().map(|e| e.event.stream()) else {
        // The request changed nothing: nothing to remember.
        return Ok(events);
    };
    events.push(NewEvent::new(Event::IdempotencyKeyUsed {
        key: key.key.clone(),
        request: key.request.clone(),
        made,
    }));
    Ok(events)
}
