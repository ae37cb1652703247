//! Webhook deliveries: every webhook gets the records it wants, in log order, one at a time,
//! each POSTed as the API shows it (JSON) and signed like Stripe's:
//! `Shoal-Webhook-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//! A receiver checks the HMAC and that `t` is recent. A delivery answered with anything but
//! 2xx (or not at all) is tried again after a backoff that doubles; every attempt is a fact
//! in the log (`WebhookDelivered`, `WebhookAttemptFailed`), and after [`RetryPolicy::attempts`]
//! the webhook gives up and is paused (`WebhookPaused`) until someone resumes it, then goes on
//! from the record it gave up on: nothing is skipped. A delivery may come twice (the planner
//! stopped between the answer and its record): receivers use `Shoal-Seq` to drop a repeat.

use crate::domain::Command;
use crate::domain::state::{DeploymentDoc, WebhookDoc};
use crate::domain::webhook::Attempt;
use crate::log::writer::WriterHandle;
use crate::log::{EventLog, LogError, Proj};
use shoal_runtime::secrets::MasterKey;
use shoal_shared::TokenName;
use shoal_shared::api::EventView;
use shoal_shared::events::Envelope;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use shoal_shared::webhook::{SIGNATURE_HEADER, signature};
/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Most records looked at per round while looking for the next wanted one.
const SCAN: usize = 10_000;

/// How deliveries are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts of one record before the webhook is paused.
    pub attempts: u32,
    /// The first wait; it doubles, up to `max`.
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 10,
            base: Duration::from_secs(1),
            max: Duration::from_secs(10 * 60),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `n` (1-based).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// What deliveries need.
#[derive(Clone)]
pub struct Deliverer {
    pub log: EventLog,
    pub writer: WriterHandle,
    pub master_key: Arc<MasterKey>,
    pub durable: watch::Receiver<u64>,
    pub policy: RetryPolicy,
    pub http: reqwest::Client,
}

/// Runs a delivery task per webhook (started as webhooks appear) until `stop`.
pub async fn run(d: Deliverer, stop: CancellationToken) {
    let mut running: HashSet<TokenName> = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let names: Vec<TokenName> = match d.log.docs::<WebhookDoc>(Proj::Webhooks) {
            Ok(docs) => docs.into_iter().map(|w| w.name).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the webhooks");
                continue;
            }
        };
        running.retain(|n| names.contains(n));
        for name in names {
            if running.insert(name.clone()) {
                tasks.spawn(deliver_all(d.clone(), name, stop.clone()));
            }
        }
    }
    tasks.close();
    tasks.wait().await;
}

/// Delivers what one webhook wants until it is removed or `stop`.
async fn deliver_all(mut d: Deliverer, name: TokenName, stop: CancellationToken) {
    // Records looked at and not wanted, beyond what the log says was delivered.
    let mut scanned = 0;
    while !stop.is_cancelled() {
        let doc = match d
            .log
            .doc::<WebhookDoc>(Proj::Webhooks, name.as_str().as_bytes())
        {
            Ok(Some(doc)) => doc,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(webhook = %name, error = %e, "cannot read the webhook");
                pause(&stop, Duration::from_secs(1)).await;
                continue;
            }
        };
        let from = doc.delivered_through.max(scanned);
        let durable = *d.durable.borrow_and_update();
        if doc.paused.is_some() || from >= durable {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = d.durable.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let (log, wanted) = (d.log.clone(), doc.clone());
        let found = tokio::task::spawn_blocking(move || next(&log, &wanted, from, durable)).await;
        match found {
            Ok(Ok((Some(env), looked))) => {
                let seq = env.seq;
                // Up to the record before it, nothing is wanted; the record itself counts as
                // done only once delivered (a paused webhook resumes with it).
                scanned = looked.saturating_sub(1).max(from);
                if deliver(&d, &doc, env, &stop).await {
                    scanned = seq;
                }
            }
            Ok(Ok((None, to))) => scanned = to,
            Ok(Err(e)) => {
                tracing::warn!(webhook = %name, error = %e, "cannot read the log for a webhook");
                pause(&stop, Duration::from_secs(1)).await;
            }
            Err(e) => tracing::warn!(webhook = %name, error = %e, "a webhook's read failed"),
        }
    }
}

async fn pause(stop: &CancellationToken, d: Duration) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(d) => {}
    }
}

/// The next record after `from` (up to `to`) the webhook wants, and how far it looked.
fn next(
    log: &EventLog,
    w: &WebhookDoc,
    from: u64,
    to: u64,
) -> Result<(Option<Envelope>, u64), LogError> {
    let mut scopes: HashMap<String, Option<(String, String)>> = HashMap::new();
    let mut at = from;
    let mut looked = 0;
    while at < to && looked < SCAN {
        let page = log.read(at, 1024)?;
        if page.is_empty() {
            break;
        }
        for env in page {
            if env.seq > to {
                return Ok((None, at));
            }
            at = env.seq;
            looked += 1;
            let scope = match env.stream.strip_prefix("deployment/") {
                Some(id) => {
                    if !scopes.contains_key(id) {
                        let doc = shoal_shared::DeploymentId::parse(id)
                            .ok()
                            .map(|d| log.doc::<DeploymentDoc>(Proj::Deployments, d.as_bytes()))
                            .transpose()?
                            .flatten()
                            .map(|d| (d.project, d.environment.to_string()));
                        scopes.insert(id.to_owned(), doc);
                    }
                    scopes.get(id).cloned().flatten()
                }
                None => None,
            };
            let scope = scope.as_ref().map(|(p, e)| (p.as_str(), e.as_str()));
            if w.wants(&env.stream, &env.event_type, scope) {
                return Ok((Some(env), at));
            }
        }
    }
    Ok((None, at))
}

/// Delivers one record, retrying, until it is delivered, the webhook gives up, or `stop`;
/// whether it was delivered.
async fn deliver(d: &Deliverer, w: &WebhookDoc, env: Envelope, stop: &CancellationToken) -> bool {
    let secret = match d
        .master_key
        .open(&format!("webhook/{}", w.name), "secret", &w.secret)
    {
        Ok(s) => s,
        Err(e) => {
            let reason = format!("its secret cannot be opened: {e}");
            record(d, w, env.seq, 1, Attempt::GaveUp { reason }).await;
            return false;
        }
    };
    let seq = env.seq;
    let (event_type, event_id) = (env.event_type.clone(), env.event_id.to_string());
    let body = EventView::json_of(&env).unwrap_or_default();
    let mut attempt = w.failing + 1;
    loop {
        let t = shoal_shared::Timestamp::now().millis() / 1000;
        let sent = d
            .http
            .post(&w.url)
            .timeout(TIMEOUT)
            .header("content-type", "application/json")
            .header("Shoal-Webhook", w.name.as_str())
            .header("Shoal-Seq", seq.to_string())
            .header("Shoal-Event-Type", &event_type)
            .header("Shoal-Event-Id", &event_id)
            .header(SIGNATURE_HEADER, signature(secret.expose(), t, &body))
            .body(body.clone())
            .send()
            .await;
        let (status, error) = match sent {
            Ok(r) if r.status().is_success() => {
                let status = r.status().as_u16();
                record(d, w, seq, attempt, Attempt::Delivered { status }).await;
                return true;
            }
            Ok(r) => (
                Some(r.status().as_u16()),
                format!("answered {}", r.status()),
            ),
            Err(e) => (None, shoal_shared::innermost(&e)),
        };
        if attempt >= d.policy.attempts {
            let reason = format!(
                "record {seq} was not delivered after {attempt} attempts (last: {error}); resume the webhook once its receiver is back"
            );
            record(d, w, seq, attempt, Attempt::GaveUp { reason }).await;
            return false;
        }
        let wait = d.policy.delay(attempt);
        let retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let failed = Attempt::Failed {
            status,
            error,
            retry_in_ms,
        };
        record(d, w, seq, attempt, failed).await;
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(wait) => {}
        }
        attempt += 1;
    }
}

async fn record(d: &Deliverer, w: &WebhookDoc, seq: u64, attempt: u32, outcome: Attempt) {
    let cmd = Command::RecordWebhookAttempt {
        name: w.name.clone(),
        seq,
        attempt,
        outcome,
    };
    if let Err(e) = d.writer.execute(cmd).await {
        tracing::warn!(webhook = %w.name, error = %e, "a webhook attempt was not recorded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_limit() {
        let p = RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_millis(500),
        };
        let waits: Vec<u128> = (1..=5).map(|n| p.delay(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
    }
}
