//! The pure core of the planner: projection state and how events change it (`state`),
//! commands and the events they produce (`decide`), and how a deployment advances once
//! its facts change (`react`). `state` and `decide` only dispatch; each aggregate has a
//! module holding its documents, how its events change them, and how its commands become
//! events: `pool`, `target` (with its health checks), `deployment` (with its steps), `task`
//! (with its attempts and runs), `worker`, `token` (API tokens, by hash),
//! `package` (versions in the package feed), `audit` (signatures of the log's head); `report` turns a worker's report into a fact; `effects`
//! says what the planner must do once an event is durable.
//! No I/O and no clock: everything here is tested without NATS or sled.

pub mod audit;
pub mod decide;
pub mod deployment;
pub mod effects;
pub mod idempotency;
pub mod package;
pub mod pool;
pub mod react;
pub mod report;
pub mod session;
pub mod state;
pub mod target;
pub mod task;
pub mod token;
pub mod webhook;
pub mod worker;

pub use decide::{Command, NewEvent, Rejection};
pub use state::{Changes, DocKey, State};

use shoal_shared::events::Event;
use shoal_shared::{DeploymentId, EventId, PoolName};
use std::collections::BTreeSet;

/// Where a command's events go: the log writer, or a test's list. `append` must apply the
/// event to the state it returns from `state`.
pub trait EventSink {
    type Error;
    /// The state after every event appended so far.
    fn state(&self) -> &State;
    /// Appends and applies one event; `cause` is the event that led to it.
    ///
    /// # Errors
    /// Whatever the sink cannot do (storage, for the writer).
    fn append(&mut self, event: NewEvent, cause: Option<EventId>) -> Result<u64, Self::Error>;
}

/// Carries out a command: decides its events, appends them, and lets every deployment they
/// touch advance as far as it can. Returns the sequence numbers appended, or the rejection.
///
/// # Errors
/// The sink's own failure.
pub fn handle<S: EventSink>(
    sink: &mut S,
    default_pool: &PoolName,
    cmd: &Command,
) -> Result<Result<Vec<u64>, Rejection>, S::Error> {
    let events = match decide::decide(sink.state(), default_pool, cmd) {
        Ok(events) => events,
        Err(rejection) => return Ok(Err(rejection)),
    };
    let mut seqs = Vec::new();
    let mut touched = BTreeSet::new();
    for e in events {
        let cause = e.id;
        if let Some(d) = advances(&e.event) {
            touched.insert(d);
        }
        let health = target::health_before(sink.state(), &e.event);
        seqs.push(sink.append(e, None)?);
        if let Some(changed) = health.and_then(|h| target::health_changed(sink.state(), h)) {
            seqs.push(sink.append(NewEvent::new(changed), Some(cause))?);
        }
        for d in std::mem::take(&mut touched) {
            loop {
                let next = react::next_events(sink.state(), d);
                if next.is_empty() {
                    break;
                }
                for event in next {
                    seqs.push(sink.append(NewEvent::new(event), Some(cause))?);
                }
            }
        }
    }
    Ok(Ok(seqs))
}

/// The deployment whose progress an event can change: only these make the core look for
/// the next events, so output and dispatch confirmations cost no scan of the step.
fn advances(event: &Event) -> Option<DeploymentId> {
    match event {
        Event::DeploymentCreated { deployment, .. }
        | Event::TaskFinished { deployment, .. }
        | Event::TaskCancelled { deployment, .. }
        | Event::DeploymentCancelRequested { deployment, .. } => Some(*deployment),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
