//! How many refusals are written in full: per subject and minute, the first
//! [`FULL_PER_MINUTE`] are recorded as they are, the rest only counted, and once the minute
//! is over one summary carries the count. Pure: time is passed in, nothing is written here.
//!
//! Memory is bounded too: at most [`MAX_SUBJECTS`] subjects are tracked in a minute; refusals
//! on any further subject share one window under [`OVERFLOW`].

use shoal_shared::Timestamp;
use std::collections::HashMap;

/// Refusals per subject and minute recorded in full.
pub const FULL_PER_MINUTE: u32 = 20;
/// Subjects tracked in one minute; more share the [`OVERFLOW`] window.
pub const MAX_SUBJECTS: usize = 256;
/// The window of refusals on subjects past [`MAX_SUBJECTS`].
pub const OVERFLOW: &str = "(other subjects)";

const MINUTE_MS: i64 = 60_000;

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Record it in full.
    Record,
    /// Only count it; the minute's summary carries it.
    Count,
}

/// Refusals only counted on one subject in one minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub subject: String,
    pub count: u64,
    pub first_at: Timestamp,
    pub last_at: Timestamp,
}

/// One subject's refusals in its current minute.
#[derive(Debug, Clone)]
struct Window {
    minute: i64,
    recorded: u32,
    counted: u64,
    first_at: Timestamp,
    last_at: Timestamp,
}

impl Window {
    fn new(minute: i64, at: Timestamp) -> Window {
        Window {
            minute,
            recorded: 0,
            counted: 0,
            first_at: at,
            last_at: at,
        }
    }

    fn summary(&self, subject: &str) -> Option<Summary> {
        (self.counted > 0).then(|| Summary {
            subject: subject.to_owned(),
            count: self.counted,
            first_at: self.first_at,
            last_at: self.last_at,
        })
    }
}

/// The refusals of the current minute, per subject.
#[derive(Debug, Clone)]
pub struct RejectionBudget {
    full_per_minute: u32,
    max_subjects: usize,
    windows: HashMap<String, Window>,
    /// Summaries of windows that ended when their subject was refused again.
    ended: Vec<Summary>,
}

impl Default for RejectionBudget {
    fn default() -> Self {
        RejectionBudget::new(FULL_PER_MINUTE, MAX_SUBJECTS)
    }
}

impl RejectionBudget {
    /// A budget recording `full_per_minute` refusals per subject and minute in full, tracking
    /// at most `max_subjects` subjects.
    pub fn new(full_per_minute: u32, max_subjects: usize) -> RejectionBudget {
        RejectionBudget {
            full_per_minute,
            max_subjects,
            windows: HashMap::new(),
            ended: Vec::new(),
        }
    }

    /// Notes a refusal on `subject` at `now`, and says whether to record it in full.
    pub fn note(&mut self, subject: &str, now: Timestamp) -> Verdict {
        let minute = now.0.div_euclid(MINUTE_MS);
        let key = if self.windows.contains_key(subject) || self.windows.len() < self.max_subjects {
            subject
        } else {
            OVERFLOW
        };
        let window = self
            .windows
            .entry(key.to_owned())
            .or_insert_with(|| Window::new(minute, now));
        if window.minute != minute {
            self.ended.extend(window.summary(key));
            *window = Window::new(minute, now);
        }
        if window.recorded < self.full_per_minute {
            window.recorded += 1;
            return Verdict::Record;
        }
        if window.counted == 0 {
            window.first_at = now;
        }
        window.counted += 1;
        window.last_at = now;
        Verdict::Count
    }

    /// Ends every window of a minute before `now`'s and returns the summaries of those that
    /// counted refusals. `now: None` ends every window (at shutdown).
    pub fn close(&mut self, now: Option<Timestamp>) -> Vec<Summary> {
        let minute = now.map_or(i64::MAX, |t| t.0.div_euclid(MINUTE_MS));
        let mut out = std::mem::take(&mut self.ended);
        let mut done: Vec<String> = self
            .windows
            .iter()
            .filter(|(_, w)| w.minute < minute)
            .map(|(k, _)| k.clone())
            .collect();
        done.sort();
        for key in done {
            if let Some(w) = self.windows.remove(&key) {
                out.extend(w.summary(&key));
            }
        }
        out
    }

    /// Subjects tracked now (for tests of the memory bound).
    pub fn tracked(&self) -> usize {
        self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: i64, second: i64) -> Timestamp {
        Timestamp(minute * MINUTE_MS + second * 1000)
    }

    #[test]
    fn the_first_refusals_of_a_minute_are_recorded_and_the_rest_only_counted() {
        let mut b = RejectionBudget::new(3, 10);
        let verdicts: Vec<_> = (0..5).map(|s| b.note("s.a", at(7, s))).collect();
        use Verdict::*;
        assert_eq!(verdicts, [Record, Record, Record, Count, Count]);
        // Another subject has its own budget.
        assert_eq!(b.note("s.b", at(7, 9)), Record);
        // Nothing is summarised while the minute lasts.
        assert_eq!(b.close(Some(at(7, 59))), []);
        assert_eq!(
            b.close(Some(at(8, 0))),
            [Summary {
                subject: "s.a".into(),
                count: 2,
                first_at: at(7, 3),
                last_at: at(7, 4),
            }]
        );
        assert_eq!(b.tracked(), 0);
    }

    #[test]
    fn a_new_minute_records_in_full_again_and_keeps_the_last_minutes_count() {
        let mut b = RejectionBudget::new(1, 10);
        b.note("s.a", at(1, 0));
        assert_eq!(b.note("s.a", at(1, 1)), Verdict::Count);
        assert_eq!(b.note("s.a", at(2, 0)), Verdict::Record);
        assert_eq!(b.note("s.a", at(2, 1)), Verdict::Count);
        let summaries = b.close(Some(at(3, 0)));
        let counts: Vec<_> = summaries.iter().map(|s| (s.count, s.first_at)).collect();
        assert_eq!(counts, [(1, at(1, 1)), (1, at(2, 1))]);
    }

    #[test]
    fn subjects_past_the_cap_share_one_window_so_memory_stays_bounded() {
        let mut b = RejectionBudget::new(1, 4);
        for i in 0..1000 {
            b.note(&format!("s.{i}"), at(0, 1));
        }
        assert_eq!(b.tracked(), 5, "four subjects and the overflow window");
        let summaries = b.close(None);
        assert_eq!(
            summaries
                .iter()
                .map(|s| (s.subject.as_str(), s.count))
                .collect::<Vec<_>>(),
            [(OVERFLOW, 995)]
        );
    }

    #[test]
    fn a_flood_writes_a_bounded_number_of_records_per_subject_and_minute() {
        let mut b = RejectionBudget::default();
        let recorded = (0..20_000)
            .filter(|i| b.note("shoal.heartbeat.p.w", at(0, i % 60)) == Verdict::Record)
            .count();
        assert_eq!(recorded, FULL_PER_MINUTE as usize);
        let summaries = b.close(None);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].count, 20_000 - u64::from(FULL_PER_MINUTE));
    }
}
