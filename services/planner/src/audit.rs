//! Audits anyone can verify: the planner signs its log's head with its Ed25519 key at
//! intervals (a `LogHeadSigned` record) and at the end of every export, and writes exports
//! in the format of `shoal_shared::audit` (JSON lines: the records as stored, then the
//! signature of the last one's hash), which `shoal audit verify` checks offline.

use crate::domain::Command;
use crate::log::writer::WriterHandle;
use crate::log::{EventLog, LogError};
use crate::signing::Signer;
use shoal_shared::Timestamp;
use shoal_shared::audit::{FORMAT, Line, SignedHead, record_hash, record_line};
use shoal_shared::signed::{ExportClaims, SigningKey};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Records read from the log at a time for an export.
const READ: usize = 1024;

/// What an export covers: records `from..=to`, those of `scope` (a stream) in scope.
#[derive(Debug, Clone)]
pub struct Range {
    pub from: u64,
    pub to: u64,
    pub scope: Option<String>,
    pub deployment: Option<shoal_shared::DeploymentId>,
}

/// The signed end of an export of `range` whose last record is `seq`, stored as `bytes`.
fn signed_head(key: &SigningKey, range: &Range, seq: u64, bytes: &[u8]) -> SignedHead {
    let hash = record_hash(bytes);
    let deployment = range.deployment.map(|d| d.to_string());
    let claims = ExportClaims {
        from: range.from,
        to: seq,
        deployment: deployment.as_deref(),
        hash: &hash,
    };
    SignedHead {
        seq,
        hash: shoal_shared::hex::encode(&hash),
        key: key.public().to_line(),
        signature: shoal_shared::hex::encode(&key.sign_export(&claims)),
        signed_at: Timestamp::now(),
    }
}

/// Writes an export of `range` as JSON lines into `out`, one line per message, ending with
/// the signed head; runs on a blocking thread (it reads the log). Stops early when the
/// receiver is gone.
///
/// # Errors
/// The log cannot be read.
pub fn export(
    log: &EventLog,
    key: &SigningKey,
    range: &Range,
    out: &mpsc::Sender<String>,
) -> Result<(), LogError> {
    let send = |line: &Line| {
        let text = serde_json::to_string(line).unwrap_or_default() + "\n";
        out.blocking_send(text).is_ok()
    };
    let header = Line::Header {
        format: FORMAT.to_owned(),
        from: range.from,
        to: range.to,
        deployment: range.deployment,
        exported_at: Timestamp::now(),
    };
    if !send(&header) {
        return Ok(());
    }
    let mut after = range.from.saturating_sub(1);
    let mut last: Option<(u64, Vec<u8>)> = None;
    while after < range.to {
        let page = log.read_raw(after, READ)?;
        if page.is_empty() {
            break;
        }
        for (seq, bytes) in page.into_iter().take_while(|(s, _)| *s <= range.to) {
            if !send(&record_line(&bytes, range.scope.as_deref())?) {
                return Ok(());
            }
            after = seq;
            last = Some((seq, bytes));
        }
        if last.as_ref().is_some_and(|(s, _)| *s >= range.to) {
            break;
        }
    }
    if let Some((seq, bytes)) = last {
        send(&Line::Head(signed_head(key, range, seq, &bytes)));
    }
    Ok(())
}

/// Signs the log's durable head every `every` while it moves (nothing new since the last
/// signature: no new one), until `stop`.
pub async fn sign_heads(
    log: EventLog,
    writer: WriterHandle,
    signer: Signer,
    durable: watch::Receiver<u64>,
    every: Duration,
    stop: CancellationToken,
) {
    if signer.key().is_none() {
        tracing::warn!(
            "the log's head is not signed: this planner signs nothing (--insecure-no-signing)"
        );
        return;
    }
    // The first signature one interval after the start: not one per start.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The record of the last signature: signing again is due only after something else.
    let mut signed_at_seq = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let head = *durable.borrow();
        if head == 0 || head == signed_at_seq {
            continue;
        }
        let (l, signer) = (log.clone(), signer.clone());
        let signed = tokio::task::spawn_blocking(move || -> Result<Option<Command>, LogError> {
            let Some(k) = signer.key() else {
                return Ok(None);
            };
            let Some((seq, bytes)) = l.read_raw(head - 1, 1)?.pop() else {
                return Ok(None);
            };
            let hash = record_hash(&bytes);
            Ok(Some(Command::RecordHeadSignature {
                seq,
                hash,
                key_id: k.key_id().to_string(),
                signature: k.sign_head(seq, &hash),
            }))
        })
        .await;
        let cmd = match signed {
            Ok(Ok(Some(cmd))) => cmd,
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the log's head to sign it");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "signing the log's head failed");
                continue;
            }
        };
        match writer.execute(cmd).await {
            Ok(appended) => signed_at_seq = appended.seqs.last().copied().unwrap_or(head),
            Err(e) => tracing::warn!(error = %e, "the log's head signature was not recorded"),
        }
    }
}
