//! Whom a worker believes: every task, health check, cancellation, instruction and
//! drain-state answer is verified against the planner's public keys (`--trusted-keys`)
//! before the worker acts on it (`shoal_shared::signed`). Refused tasks are terminated and
//! reported; refused cancellations and instructions are ignored and logged, at most once per
//! [`QUIET_FOR`] with a count, so a flood of forgeries cannot flood the log.

use async_nats::HeaderMap;
use shoal_shared::Timestamp;
use shoal_shared::signed::{Binding, Refusal, SIGNATURE_HEADER, TrustedKeys};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// After one logged refusal of a cancellation or instruction, further ones are counted for
/// this long and logged as one line.
pub const QUIET_FOR: Duration = Duration::from_secs(10);

/// What the worker accepts from the planner.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Messages signed by one of these keys; with no key, nothing.
    Keys(Arc<TrustedKeys>),
    /// INSECURE (`--insecure-accept-unsigned`): anything, signed or not.
    InsecureAcceptUnsigned,
}

impl Default for Trust {
    /// Trusts no key: every message is refused until keys are given.
    fn default() -> Trust {
        Trust::Keys(Arc::new(TrustedKeys::default()))
    }
}

impl Trust {
    /// Trusts these keys.
    pub fn keys(keys: TrustedKeys) -> Trust {
        Trust::Keys(Arc::new(keys))
    }

    /// Checks a message's signature against the trusted keys and what the worker expects it
    /// to be bound to.
    ///
    /// # Errors
    /// Why the message must not be acted on.
    pub fn verify(
        &self,
        headers: Option<&HeaderMap>,
        expected: &Binding,
        payload: &[u8],
    ) -> Result<(), Refusal> {
        match self {
            Trust::InsecureAcceptUnsigned => Ok(()),
            Trust::Keys(keys) => {
                let header = headers
                    .and_then(|h| h.get(SIGNATURE_HEADER))
                    .map(|v| v.as_str());
                keys.verify(header, expected, payload, Timestamp::now())
                    .map(|_| ())
            }
        }
    }

    /// Logs how many messages were verified with how many signature checks (what a batch
    /// root saves: one Ed25519 verification per root, not per message).
    pub fn log_counts(&self) {
        if let Trust::Keys(keys) = self {
            let c = keys.counts();
            tracing::info!(
                messages = c.messages,
                signatures = c.signatures,
                "verified {} messages with {} signature checks",
                c.messages,
                c.signatures
            );
        }
    }
}

/// Logs refused cancellations and instructions: the first at once, then one line per
/// [`QUIET_FOR`] with how many more there were.
#[derive(Debug, Default)]
pub struct RefusalLog {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RefusalLog {
    /// Records a refusal of `what` ("a cancellation", "an instruction") on `subject`.
    pub fn refused(&self, what: &str, subject: &str, why: &Refusal) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let (last, suppressed) = &mut *state;
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < QUIET_FOR) {
            *suppressed += 1;
            return;
        }
        tracing::warn!(
            subject = %subject, reason = %why, suppressed = *suppressed,
            "ignoring {what} whose signature does not verify (and {} more since the last such line)",
            *suppressed
        );
        *last = Some(now);
        *suppressed = 0;
    }
}
