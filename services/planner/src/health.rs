//! The health-check schedule: every target with a probe is checked every interval (its own
//! `health_interval_secs`, else the planner's), at a random offset so a thousand targets do
//! not fire at once. The schedule lives in memory; the checks themselves, their routing and
//! their results are facts in the log.

use crate::domain::Command;
use crate::domain::state::TargetDoc;
use crate::log::writer::WriterHandle;
use crate::log::{EventLog, Proj};
use rand::Rng;
use shoal_shared::events::CheckTrigger;
use shoal_shared::{TargetName, Timestamp};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the schedule looks for due checks.
const TICK: Duration = Duration::from_secs(1);

/// Submits scheduled checks until shutdown. Does nothing when `interval` is zero.
pub async fn schedule(
    log: EventLog,
    writer: WriterHandle,
    interval: Duration,
    deadline: Duration,
    shutdown: CancellationToken,
) {
    if interval.is_zero() {
        tracing::info!(
            "scheduled health checks are off; targets are checked on request and by health_check steps"
        );
        return;
    }
    let mut due: HashMap<TargetName, Timestamp> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let targets: Vec<TargetDoc> = match log.docs(Proj::Targets) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read targets for the health schedule");
                continue;
            }
        };
        let now = Timestamp::now();
        for doc in targets {
            if doc.target.probe().is_none() {
                continue;
            }
            let every = doc
                .target
                .health_interval_secs
                .map_or(interval, Duration::from_secs);
            let next = due
                .entry(doc.target.name.clone())
                .or_insert_with(|| now.plus_millis(jitter(every, 0.0, 1.0)));
            if now < *next {
                continue;
            }
            *next = now.plus_millis(jitter(every, 0.9, 1.1));
            let cmd = Command::CheckTarget {
                check: shoal_shared::CheckId::new(),
                target: doc.target.name.clone(),
                trigger: CheckTrigger::Scheduled,
                at: now,
                deadline_secs: deadline.as_secs(),
            };
            if let Err(e) = writer.submit(cmd).await {
                tracing::warn!(error = %e, "health schedule stopped: the log takes no writes");
                return;
            }
        }
    }
}

/// A random share (between `low` and `high`) of `every`, in ms.
fn jitter(every: Duration, low: f64, high: f64) -> u64 {
    let ms = every.as_millis() as f64;
    let share = if high > low {
        rand::rng().random_range(low..high)
    } else {
        low
    };
    (ms * share) as u64
}
