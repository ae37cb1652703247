//! Recording refused messages without letting a flood fill the disk. Ingestion (results,
//! heartbeats, drain-state questions) hands every refusal to one [`Recorder`]; its
//! [`budget::RejectionBudget`] says whether to write it in full (`MessageRejected`, with a
//! bounded head of its bytes) or only count it; once a minute is over, one
//! `RejectionsCounted` per subject carries the count.
//!
//! The bound: with N refused messages per subject and minute, the log grows by at most
//! `min(N, FULL_PER_MINUTE)` records of at most [`MAX_RECORD_BYTES`] and one summary of at
//! most [`MAX_SUMMARY_BYTES`] — whatever N is — on at most `MAX_SUBJECTS + 1` subjects.

pub mod budget;

use crate::domain::{Command, Rejection};
use crate::log::writer::{Appended, WriterHandle};
use budget::{RejectionBudget, Verdict};
use shoal_shared::{EventId, Timestamp};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// The most one `MessageRejected` record takes in the log, encoded with its envelope:
/// subject and claim of at most 256 characters (4 bytes each at worst), a reason of at most
/// 1,024, a head of 256 bytes, and the envelope (ids, hashes, times) under 300 bytes.
pub const MAX_RECORD_BYTES: usize = 4 * 256 + 4 * 256 + 4 * 1024 + 256 + 300;
/// The most one `RejectionsCounted` record takes: a subject of at most 256 characters, a
/// count, two times, and the envelope.
pub const MAX_SUMMARY_BYTES: usize = 4 * 256 + 3 * 9 + 300;

/// How often windows of minutes that ended are summarised.
const SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// A message the planner refused.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The fact's id: a redelivered copy of a recorded refusal is a duplicate.
    pub id: EventId,
    pub subject: String,
    /// Who the message said it was from, when that is part of why it was refused.
    pub claimed: Option<String>,
    pub reason: String,
    /// The kind of reason, for the refused-messages figure.
    pub why: Why,
    pub bytes: Vec<u8>,
}

/// Why a message was refused, in a word: the label of `shoal_refused_messages_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// It came on a subject that is not the one such messages belong on.
    Subject,
    /// It could not be read.
    Undecodable,
    /// It claims a worker or pool that its subject (its sender's identity) is not.
    Impersonation,
    /// The core refused what it reports (another attempt, a task of another pool, ...).
    Rejected,
    /// A command whose answer would go somewhere other than its sender's inbox.
    Reply,
}

impl Why {
    /// Its label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Subject => "subject",
            Why::Undecodable => "undecodable",
            Why::Impersonation => "impersonation",
            Why::Rejected => "rejected",
            Why::Reply => "reply",
        }
    }
}

/// The writer's answer to a recorded refusal.
pub type Answer = oneshot::Receiver<Result<Appended, Rejection>>;

/// Records refusals within the budget. Cheap to clone; every clone shares one budget.
#[derive(Debug, Clone)]
pub struct Recorder {
    budget: Arc<Mutex<RejectionBudget>>,
    writer: WriterHandle,
    metrics: crate::metrics::Metrics,
}

impl Recorder {
    /// A recorder writing through `writer`.
    pub fn new(writer: WriterHandle, metrics: crate::metrics::Metrics) -> Recorder {
        Recorder {
            budget: Arc::default(),
            writer,
            metrics,
        }
    }

    /// Notes a refusal on `subject` now: whether it is to be written in full.
    pub fn note(&self, subject: &str) -> Verdict {
        match self.budget.lock() {
            Ok(mut b) => b.note(subject, Timestamp::now()),
            // A poisoned budget records nothing rather than everything.
            Err(_) => Verdict::Count,
        }
    }

    /// Records a refusal in full, or only counts it. The writer's answer when recorded
    /// (`None`: counted, or the writer is gone).
    pub async fn refuse(&self, refused: Refused) -> Option<Answer> {
        self.metrics.refused(refused.why.as_str());
        if self.note(&refused.subject) == Verdict::Count {
            return None;
        }
        // Logged only when recorded: the log lines of a flood are bounded like its events.
        tracing::warn!(
            subject = %refused.subject,
            claimed = refused.claimed.as_deref().unwrap_or("-"),
            reason = %refused.reason,
            "refusing a message"
        );
        let Refused {
            id,
            subject,
            claimed,
            reason,
            bytes,
            ..
        } = refused;
        let cmd = Command::RejectMessage {
            id,
            subject,
            reason,
            bytes,
            claimed,
        };
        self.writer.submit(cmd).await.ok()
    }

    /// Records the summaries of minutes that ended until `shutdown`, then those of every
    /// window still open.
    pub async fn summarise(self, shutdown: CancellationToken) {
        loop {
            let stop = tokio::select! {
                () = tokio::time::sleep(SUMMARY_EVERY) => false,
                () = shutdown.cancelled() => true,
            };
            let now = (!stop).then(Timestamp::now);
            let summaries = match self.budget.lock() {
                Ok(mut b) => b.close(now),
                Err(_) => return,
            };
            for s in summaries {
                tracing::warn!(subject = %s.subject, count = s.count, "refused more messages than are recorded in full; counted them");
                let cmd = Command::CountRejections {
                    subject: s.subject,
                    count: s.count,
                    first_at: s.first_at,
                    last_at: s.last_at,
                };
                if self.writer.execute(cmd).await.is_err() {
                    return;
                }
            }
            if stop {
                return;
            }
        }
    }
}
