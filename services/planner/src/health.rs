//! The health-check schedule: every target with a probe is checked every interval (its own
//! `health_interval_secs`, else the planner's), the first time at a random point of it so a
//! thousand targets do not fire at once, then every interval ×0.9–1.1. The schedule is a
//! timer queue in memory, told of every target by effects (`Effect::ScheduleHealth`, from
//! registrations, updates and the planner's start); the checks themselves, their routing
//! and their results are facts in the log.

use crate::domain::Command;
use crate::domain::effects::CheckEvery;
use futures::StreamExt;
use rand::Rng;
use shoal_shared::events::CheckTrigger;
use shoal_shared::{CheckId, TargetName, Timestamp};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::time::{DelayQueue, delay_queue};

/// The shortest time between scheduled checks of a target (an interval of zero from an old
/// log must not make the schedule spin).
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The longest: the timer queue refuses (panics on) deadlines more than about 795 days
/// away, and a target may ask for any number of seconds. A check once a year is as good as
/// never for anything longer.
const MAX_INTERVAL: Duration = Duration::from_secs(365 * 86_400);

/// When each scheduled target is checked next.
pub struct Schedule {
    /// The planner's interval; zero: nothing is scheduled.
    interval: Duration,
    /// How long a check may wait for a worker before its target is `unavailable`.
    deadline: Duration,
    due: DelayQueue<TargetName>,
    /// Each scheduled target's timer and interval.
    targets: HashMap<TargetName, (delay_queue::Key, Duration)>,
}

impl Schedule {
    /// An empty schedule; with a zero `interval` it stays empty.
    pub fn new(interval: Duration, deadline: Duration) -> Schedule {
        if interval.is_zero() {
            tracing::info!(
                "scheduled health checks are off; targets are checked on request and by health_check steps"
            );
        }
        Schedule {
            interval,
            deadline,
            due: DelayQueue::new(),
            targets: HashMap::new(),
        }
    }

    /// Checks a target this often from now on, or (`None`) no longer. A target already
    /// scheduled keeps its next check; its new interval counts from then.
    pub fn set(&mut self, target: TargetName, every: Option<CheckEvery>) {
        let every = match every {
            _ if self.interval.is_zero() => None,
            None => None,
            Some(CheckEvery::PlannerInterval) => Some(self.interval),
            Some(CheckEvery::Secs(s)) => Some(Duration::from_secs(s)),
        }
        .map(|d| d.clamp(MIN_INTERVAL, MAX_INTERVAL));
        match (every, self.targets.get_mut(&target)) {
            (None, Some(_)) => {
                if let Some((key, _)) = self.targets.remove(&target) {
                    self.due.remove(&key);
                }
            }
            (None, None) => {}
            (Some(every), Some((_, interval))) => *interval = every,
            (Some(every), None) => {
                let key = self.due.insert(target.clone(), jitter(every, 0.0, 1.0));
                self.targets.insert(target, (key, every));
            }
        }
    }

    /// Waits for the next target due and plans its following check; returns the command
    /// that checks it now. Never ready while nothing is scheduled.
    pub async fn next(&mut self) -> Command {
        loop {
            if self.due.is_empty() {
                std::future::pending::<()>().await;
            }
            let Some(expired) = self.due.next().await else {
                continue;
            };
            let target = expired.into_inner();
            let Some((key, every)) = self.targets.get_mut(&target) else {
                continue;
            };
            *key = self.due.insert(target.clone(), jitter(*every, 0.9, 1.1));
            return Command::CheckTarget {
                check: CheckId::new(),
                target,
                trigger: CheckTrigger::Scheduled,
                at: Timestamp::now(),
                deadline_secs: self.deadline.as_secs(),
            };
        }
    }
}

/// A random share (between `low` and `high`) of `every`.
fn jitter(every: Duration, low: f64, high: f64) -> Duration {
    let share = if high > low {
        rand::rng().random_range(low..high)
    } else {
        low
    };
    every.mul_f64(share)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> TargetName {
        TargetName::parse(s).expect("valid")
    }

    /// A timer queue panics on a deadline beyond about 795 days, which would end the
    /// effects runner that owns the schedule.
    #[tokio::test]
    async fn any_interval_a_target_or_the_planner_asks_for_is_scheduled_without_a_panic() {
        let mut s = Schedule::new(Duration::from_secs(u64::MAX), Duration::from_secs(30));
        s.set(name("web-1"), Some(CheckEvery::Secs(u64::MAX)));
        s.set(name("web-2"), Some(CheckEvery::PlannerInterval));
        s.set(name("web-1"), Some(CheckEvery::Secs(1_000_000_000)));
        assert_eq!(s.targets.len(), 2);
        let none = tokio::time::timeout(Duration::from_millis(50), s.next()).await;
        assert!(none.is_err(), "nothing is due this soon");
    }

    #[tokio::test]
    async fn a_target_with_a_probe_is_checked_within_its_interval_and_again_after_it() {
        let mut s = Schedule::new(Duration::from_secs(60), Duration::from_secs(30));
        s.set(name("web-1"), Some(CheckEvery::Secs(1)));
        let started = tokio::time::Instant::now();
        let wait = Duration::from_secs(10);
        let first = tokio::time::timeout(wait, s.next())
            .await
            .expect("a first check");
        let Command::CheckTarget { target, .. } = first else {
            panic!("expected a check, got {first:?}");
        };
        assert_eq!(target, name("web-1"));
        let after_first = started.elapsed();
        // Timers fire late under load, never early.
        assert!(
            after_first <= Duration::from_secs(3),
            "first check after {after_first:?}"
        );
        tokio::time::timeout(wait, s.next())
            .await
            .expect("a second check");
        let between = started.elapsed() - after_first;
        assert!(
            between >= Duration::from_millis(900) && between <= Duration::from_secs(3),
            "second check {between:?} after the first"
        );
    }

    #[tokio::test]
    async fn a_target_without_a_probe_or_with_the_schedule_off_is_never_checked() {
        let mut s = Schedule::new(Duration::from_secs(1), Duration::from_secs(30));
        s.set(name("web-1"), Some(CheckEvery::PlannerInterval));
        s.set(name("web-1"), None);
        let mut off = Schedule::new(Duration::ZERO, Duration::from_secs(30));
        off.set(name("web-2"), Some(CheckEvery::Secs(1)));
        let waited = tokio::time::timeout(Duration::from_millis(1500), async {
            tokio::select! {
                _ = s.next() => {}
                _ = off.next() => {}
            }
        })
        .await;
        assert!(waited.is_err(), "no check is due");
    }
}
