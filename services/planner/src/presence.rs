//! Records in the log when a worker goes offline and when it comes back
//! (`WorkerWentOffline`, `WorkerCameOnline`), so integrators following the event feed learn
//! it: heartbeats stay in memory ([`Liveness`]), their transitions become facts.
//!
//! Every second the recorder compares each worker the log knows (and has not seen leave)
//! with its heartbeats, and asks the core to record a difference; the core records only a
//! change of what the log says (`domain::worker::presence`), so asking twice costs nothing.
//! Offline is decided with care, since a wrong one is a false fact in an audit trail:
//!
//! - not while the planner's own NATS connection is down, nor for [`QUIET`] after it is back
//!   (heartbeats could not arrive: the planner, not the worker, was away);
//! - not for a worker that joined less than [`QUIET`] ago (its first heartbeat follows its
//!   join by up to a few seconds);
//! - a worker never heard since the planner started only once [`QUIET`] has passed since
//!   the start.

use crate::domain::Command;
use crate::domain::state::WorkerDoc;
use crate::liveness::Liveness;
use crate::log::writer::WriterHandle;
use crate::log::{EventLog, Proj};
use shoal_shared::{Timestamp, WorkerName};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often heartbeats are compared with the log.
const EVERY: Duration = Duration::from_secs(1);

/// How long after a start, a reconnection or a join a silent worker is not called offline:
/// long enough for a worker with the default heartbeat (2 s) to have been heard.
pub const QUIET: Duration = Duration::from_secs(10);

/// Records workers' presence changes until `stop`.
pub async fn record(
    client: async_nats::Client,
    liveness: Liveness,
    log: EventLog,
    writer: WriterHandle,
    stop: CancellationToken,
) {
    let mut quiet_until = Instant::now() + QUIET;
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if client.connection_state() != async_nats::connection::State::Connected {
            quiet_until = Instant::now() + QUIET;
            continue;
        }
        let docs = match log.docs::<WorkerDoc>(Proj::Workers) {
            Ok(docs) => docs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the workers the log knows; presence not recorded this round");
                continue;
            }
        };
        let quiet = Instant::now() < quiet_until;
        for (worker, online, last_seen) in changes(&liveness, &docs, quiet) {
            let cmd = Command::WorkerPresence {
                worker: worker.clone(),
                online,
                last_seen,
            };
            if let Err(e) = writer.execute(cmd).await {
                tracing::warn!(worker = %worker, error = %e, "cannot record a worker's presence");
            }
        }
    }
}

/// The workers whose heartbeats say otherwise than the log: each with whether it is online
/// now and when it was last heard. `quiet`: no one is called offline.
fn changes(
    liveness: &Liveness,
    docs: &[WorkerDoc],
    quiet: bool,
) -> Vec<(WorkerName, bool, Option<Timestamp>)> {
    let now = Timestamp::now();
    let live = liveness.snapshot();
    let quiet_ms = u64::try_from(QUIET.as_millis()).unwrap_or(u64::MAX);
    let mut out = Vec::new();
    for doc in docs.iter().filter(|d| d.left_at.is_none()) {
        let heard = live.get(&doc.name);
        let online_now = heard.map(|l| l.online(now));
        if online_now == Some(true) && !doc.online() {
            out.push((doc.name.clone(), true, heard.map(|l| l.last_seen)));
        }
        let silent = match online_now {
            Some(online) => !online,
            // Never heard since the start: only after the start's quiet.
            None => !quiet,
        };
        let just_joined = now.millis_since(doc.joined_at) < quiet_ms;
        if doc.online() && silent && !quiet && !just_joined {
            out.push((doc.name.clone(), false, heard.map(|l| l.last_seen)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_shared::{PoolName, WorkerName};

    fn doc(name: &str, joined_ago_ms: i64) -> WorkerDoc {
        WorkerDoc {
            name: WorkerName::parse(name).expect("valid"),
            pool: PoolName::parse("eu-west").expect("valid"),
            region: None,
            slots: 1,
            version: "0".into(),
            joined_at: Timestamp(Timestamp::now().millis() - joined_ago_ms),
            left_at: None,
            left_reason: None,
            draining: false,
            offline: false,
        }
    }

    fn beat(l: &Liveness, name: &str) {
        l.beat(crate::liveness::beat(name, None));
    }

    #[test]
    fn silence_is_offline_only_outside_the_quiet_and_not_right_after_a_join() {
        let l = Liveness::default();
        beat(&l, "heard");
        let docs = [
            doc("heard", 60_000),
            doc("silent", 60_000),
            doc("new", 1_000),
        ];
        let names = |c: Vec<(WorkerName, bool, Option<Timestamp>)>| -> Vec<(String, bool)> {
            c.into_iter().map(|(w, o, _)| (w.to_string(), o)).collect()
        };
        assert_eq!(names(changes(&l, &docs, true)), []);
        assert_eq!(
            names(changes(&l, &docs, false)),
            [("silent".to_owned(), false)]
        );
        // Recorded offline, then heard: back online, even during a quiet.
        let mut back = doc("heard", 60_000);
        back.offline = true;
        assert_eq!(
            names(changes(&l, &[back], true)),
            [("heard".to_owned(), true)]
        );
        // A worker that left is never called either.
        let mut left = doc("silent", 60_000);
        left.left_at = Some(Timestamp::now());
        assert_eq!(names(changes(&l, &[left], false)), []);
    }
}
