//! What the writer hands on: task messages to the dispatcher as soon as their batch is
//! written, to be published once it is durable, and effects to the effects runner once it is
//! durable, over bounded channels on which the writer never waits.
//! Both consumers submit commands to the writer (confirmations, scheduled commands), so a
//! writer waiting for room could wait forever. What does not fit is not lost, because it can
//! be found again in the writer's state:
//!
//! - **Task messages.** A message that does not fit belongs to an attempt in the durable
//!   outbox (projection `O`: planned, not confirmed by the broker). The writer notes the
//!   attempt as *owed* (its key, not the message) and tells the dispatcher, which, whenever it
//!   has room, asks the writer for a page of owed attempts and gets their messages, built from
//!   the state, after the flush of the batch that answers. While it owes any, the writer owes
//!   every later attempt too, and the dispatcher takes what waits in the channel before it asks
//!   for a page, so the oldest go first. An attempt is
//!   handed over exactly once either way; publishing one twice would still be harmless (the
//!   broker drops a message id `<task>/<attempt>` it already has, and `MarkDispatched` only
//!   acts on an attempt still in the outbox).
//! - **Effects** travel as one batch per durable batch. A batch that does not fit is dropped
//!   and a *resync* is due: once the channel has room, the writer sends every effect
//!   derivable from its state (`Writer::pending_effects`: retries waiting for their backoff,
//!   pending health checks, cancellations with their grace, pools' consumers, the health
//!   schedule; and every worker's drain state). The stop instructions of dropped batches for
//!   runs nobody needs (a stale attempt, the other tasks of a failed deployment, the queued
//!   message of a task cancelled before it started) cannot be derived: the writer keeps their
//!   stops (a few bytes each) and sends them with the resync. The runner carries out each
//!   effect idempotently (commands it submits are no-ops when no longer due, checks and
//!   cancellations carry ids), so a repeat is harmless. The resync is handed over before the
//!   live effects of batches joined to its own, so the newest still win.
//!
//! A task message is handed over when its batch is *written*, with the batch's sequence, and
//! the dispatcher publishes it only once the writer says that sequence is durable
//! ([`TaskReceiver::durable`]): sealing, encoding and signing it happen while the batch's
//! flush is on its way to disk instead of after it (the sign is on the path of every
//! one-task deployment). A message whose batch never becomes durable is never published.
//!
//! The owed attempts take a few bytes each and are bounded by the outbox, which the writer
//! holds in memory anyway; the messages themselves (scripts, variables) are never queued
//! beyond the channel's capacity.

use super::writer::WriterHandle;
use crate::domain::effects::{Effect, Stop};
use shoal_shared::TaskId;
use shoal_shared::messages::TaskMessage;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc, oneshot, watch};

/// Most owed task messages the dispatcher asks for at once.
pub const TASK_PAGE: usize = 1024;

/// Tells the dispatcher that the writer owes it task messages.
#[derive(Debug, Default)]
struct Owed {
    flag: AtomicBool,
    notify: Notify,
}

/// An attempt whose message the dispatcher has not been given, and when it was planned (µs
/// since the epoch) if known.
pub(super) type OwedAttempt = (TaskId, u32, Option<i64>);

/// A page of owed task messages.
#[derive(Debug)]
pub struct OutboxPage {
    pub messages: Vec<TaskMessage>,
    /// The writer owes more (ask again).
    pub more: bool,
}

/// A channel of task messages from the writer to the dispatcher, holding at most `capacity`
/// messages; beyond that the writer owes them (see the module's text).
pub fn task_channel(capacity: usize) -> (TaskSender, TaskReceiver) {
    let (tx, rx) = mpsc::channel(capacity);
    let signal = Arc::new(Owed::default());
    let (durable_tx, durable_rx) = watch::channel(0);
    (
        TaskSender {
            tx,
            signal: signal.clone(),
            owed: VecDeque::new(),
            durable: durable_tx,
        },
        TaskReceiver {
            rx,
            signal,
            page: VecDeque::new(),
            asked: None,
            more: false,
            durable: durable_rx,
            newest: 0,
        },
    )
}

/// The writer's end of the task channel.
#[derive(Debug)]
pub struct TaskSender {
    /// Each message with the log sequence that must be durable before it is published.
    tx: mpsc::Sender<(u64, TaskMessage)>,
    signal: Arc<Owed>,
    /// Oldest first.
    owed: VecDeque<OwedAttempt>,
    /// The log's last durable sequence.
    durable: watch::Sender<u64>,
}

impl TaskSender {
    /// Hands over the message of an attempt written up to log sequence `written`, or owes
    /// it.
    pub(super) fn hand_over(&mut self, written: u64, msg: TaskMessage) {
        if self.tx.is_closed() {
            // The dispatcher stopped (shutdown): the outbox keeps the attempt for the next
            // start.
            self.owed.clear();
            return;
        }
        let msg = if self.owed.is_empty() {
            match self.tx.try_send((written, msg)) {
                Ok(()) | Err(TrySendError::Closed(_)) => return,
                Err(TrySendError::Full((_, msg))) => msg,
            }
        } else {
            msg
        };
        self.owe([(msg.task, msg.attempt, Some(msg.planned_at_us))]);
    }

    /// Owes these attempts, after those already owed.
    pub(super) fn owe(&mut self, attempts: impl IntoIterator<Item = OwedAttempt>) {
        let was_empty = self.owed.is_empty();
        self.owed.extend(attempts);
        if was_empty && !self.owed.is_empty() {
            self.signal.flag.store(true, Ordering::Release);
            self.signal.notify.notify_one();
        }
    }

    /// Takes up to `n` owed attempts, oldest first.
    pub(super) fn take_owed(&mut self, n: usize) -> Vec<OwedAttempt> {
        let n = n.min(self.owed.len());
        self.owed.drain(..n).collect()
    }

    /// Whether any attempt is owed.
    pub(super) fn owes(&self) -> bool {
        !self.owed.is_empty()
    }

    /// Hears the log's last durable sequence (the event feed's publisher follows it).
    pub(super) fn watch_durable(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// The log is durable up to `seq`: messages handed over up to it may be published.
    pub(super) fn durable(&self, seq: u64) {
        self.durable.send_if_modified(|d| {
            let newer = seq > *d;
            *d = (*d).max(seq);
            newer
        });
    }
}

/// The dispatcher's end of the task channel.
#[derive(Debug)]
pub struct TaskReceiver {
    rx: mpsc::Receiver<(u64, TaskMessage)>,
    signal: Arc<Owed>,
    /// Messages of the last page not yet taken (at most [`TASK_PAGE`]).
    page: VecDeque<TaskMessage>,
    /// A page asked for and not yet answered.
    asked: Option<oneshot::Receiver<OutboxPage>>,
    /// The last page said the writer owes more.
    more: bool,
    /// The log's last durable sequence, as the writer says.
    durable: watch::Receiver<u64>,
    /// The highest sequence a message taken so far waits for.
    newest: u64,
}

impl TaskReceiver {
    /// The next attempt to publish: handed over, or paged from the outbox if the writer owes
    /// any. `None` once the writer stopped. Cancel-safe: a page asked for is kept until
    /// answered.
    pub async fn recv(&mut self, writer: &WriterHandle) -> Option<TaskMessage> {
        loop {
            if let Some(msg) = self.page.pop_front() {
                return Some(msg);
            }
            // What waits in the channel was handed over before anything was owed: it goes
            // first, so the oldest attempts are published first.
            if self.asked.is_none()
                && let Ok(handed) = self.rx.try_recv()
            {
                return Some(self.took(handed));
            }
            if self.fetch(writer).await? {
                continue;
            }
            tokio::select! {
                biased;
                handed = self.rx.recv() => return handed.map(|h| self.took(h)),
                () = self.signal.notify.notified() => {}
            }
        }
    }

    /// The next attempt already in hand (handed over, or of a page already fetched), without
    /// waiting; `None` when none is. The dispatcher takes what is ready together, to sign it
    /// together.
    pub fn try_next(&mut self) -> Option<TaskMessage> {
        if let Some(msg) = self.page.pop_front() {
            return Some(msg);
        }
        if self.asked.is_none() {
            return self.rx.try_recv().ok().map(|h| self.took(h));
        }
        None
    }

    fn took(&mut self, (written, msg): (u64, TaskMessage)) -> TaskMessage {
        self.newest = self.newest.max(written);
        msg
    }

    /// Waits until every message taken so far is durable (a page's messages are when they
    /// come). `false`: the writer stopped first, and what it had not made durable must not
    /// be published.
    pub async fn durable(&mut self) -> bool {
        let newest = self.newest;
        self.durable.wait_for(|&d| d >= newest).await.is_ok()
    }

    /// Everything handed over or owed so far, once durable, without waiting for more (for
    /// stand-ins of the dispatcher in tests and the benchmark).
    pub async fn ready(&mut self, writer: &WriterHandle) -> Vec<TaskMessage> {
        let mut out: Vec<TaskMessage> = self.page.drain(..).collect();
        loop {
            while let Ok(handed) = self.rx.try_recv() {
                let msg = self.took(handed);
                out.push(msg);
            }
            match self.fetch(writer).await {
                Some(true) => out.extend(self.page.drain(..)),
                Some(false) | None => {
                    self.durable().await;
                    return out;
                }
            }
        }
    }

    /// Asks the writer for a page if it owes any, and waits for it. Whether a page came
    /// (`false`: nothing owed); `None`: the writer stopped.
    async fn fetch(&mut self, writer: &WriterHandle) -> Option<bool> {
        if self.asked.is_none() {
            if !self.more && !self.signal.flag.load(Ordering::Acquire) {
                return Some(false);
            }
            // Cleared after the request is sure to be sent and before the writer can take
            // it: the answer says whether more is owed as of its own batch, so a flag set
            // before the clearing is covered by it, and one set after stays set.
            let signal = &self.signal;
            let asked = writer
                .outbox_page(TASK_PAGE, || signal.flag.store(false, Ordering::Release))
                .await
                .ok()?;
            self.more = false;
            self.asked = Some(asked);
        }
        let answer = match self.asked.as_mut() {
            Some(asked) => asked.await,
            None => return Some(false),
        };
        self.asked = None;
        let page = answer.ok()?;
        self.more = page.more;
        self.page.extend(page.messages);
        Some(true)
    }
}

/// The writer's end of the effects channel: one batch of effects per durable batch.
#[derive(Debug)]
pub struct EffectSender {
    tx: mpsc::Sender<Vec<Effect>>,
    /// A batch was dropped: every effect derivable from the state is to be sent again.
    resync: bool,
    /// The stops of dropped batches: runs nobody needs any more (a failed deployment's other
    /// tasks, a stale attempt, a task stored after it was cancelled), which the state cannot
    /// tell again. A few bytes each, at most one per task; sent with the resync.
    dropped_stops: Vec<Stop>,
}

impl EffectSender {
    pub(super) fn new(tx: mpsc::Sender<Vec<Effect>>) -> EffectSender {
        EffectSender {
            tx,
            resync: false,
            dropped_stops: Vec::new(),
        }
    }

    /// The stops dropped since the last resync, if any.
    pub(super) fn take_dropped_stops(&mut self) -> Option<Vec<Stop>> {
        (!self.dropped_stops.is_empty()).then(|| std::mem::take(&mut self.dropped_stops))
    }

    /// Hands a durable batch's effects over, or drops them and makes a resync due.
    pub(super) fn hand_over(&mut self, effects: Vec<Effect>) {
        if effects.is_empty() {
            return;
        }
        if let Err(TrySendError::Full(dropped)) = self.tx.try_send(effects) {
            if !self.resync {
                tracing::warn!(
                    effects = dropped.len(),
                    "the effects runner is behind; effects dropped and sent again from the state once it catches up"
                );
            }
            self.resync = true;
            for effect in dropped {
                if let Effect::Cancel(stops) = effect {
                    self.dropped_stops.extend(stops);
                }
            }
        }
    }

    /// A sender to reserve room for the resync with, if one is due.
    pub(super) fn resync_due(&self) -> Option<mpsc::Sender<Vec<Effect>>> {
        self.resync.then(|| self.tx.clone())
    }

    /// Room for the resync is reserved (or the runner is gone).
    pub(super) fn resync_reserved(&mut self) {
        self.resync = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use shoal_shared::domain::Action;
    use shoal_shared::{DeploymentId, PoolName, Timestamp};
    use std::collections::BTreeMap;

    fn message() -> TaskMessage {
        TaskMessage {
            trace_parent: None,
            schema_version: 1,
            deployment: DeploymentId::new(),
            task: TaskId::new(),
            attempt: 1,
            step_index: 0,
            step_name: "s".into(),
            target: None,
            endpoint: None,
            pool: PoolName::parse("p").expect("valid"),
            action: Action::Noop,
            variables: BTreeMap::new(),
            timeout_secs: None,
            planned_at: Timestamp(0),
            max_deliveries: 0,
            probe: None,
            planned_at_us: 0,
            sensitive_variables: BTreeMap::new(),
            package: None,
        }
    }

    #[test]
    fn a_message_handed_over_when_written_waits_for_its_batch_to_be_durable() {
        let (mut tx, mut rx) = task_channel(4);
        tx.durable(3);
        tx.hand_over(5, message());
        assert!(rx.try_next().is_some(), "handed over before the flush");
        assert_eq!(
            rx.durable().now_or_never(),
            None,
            "log durable up to 3 of 5"
        );
        tx.durable(4);
        assert_eq!(
            rx.durable().now_or_never(),
            None,
            "log durable up to 4 of 5"
        );
        tx.durable(5);
        assert_eq!(rx.durable().now_or_never(), Some(true));
        tx.durable(2);
        assert_eq!(rx.durable().now_or_never(), Some(true), "never goes back");
    }

    #[test]
    fn a_message_whose_batch_never_became_durable_is_not_released() {
        let (mut tx, mut rx) = task_channel(4);
        tx.hand_over(1, message());
        tx.hand_over(2, message());
        tx.durable(1);
        assert!(rx.try_next().is_some() && rx.try_next().is_some());
        drop(tx);
        assert_eq!(rx.durable().now_or_never(), Some(false));
    }
}
