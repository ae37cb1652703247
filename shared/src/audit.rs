//! Audit exports anyone can verify offline, without the planner.
//!
//! An export is JSON lines: a [`Line::Header`], then every record of a range of the log
//! ([`Line::Record`]: its stored bytes in base64, their SHA-256, and the record as the API
//! shows it), then the planner's signature of the last record's hash ([`Line::Head`]). Each
//! record's stored bytes hold the SHA-256 of the record before it (the hash chain), so the
//! signature of the last hash vouches for every record of the export. [`verify`] checks
//! exactly that, and that what the record shows is what its bytes say; it names the first
//! record that fails. A `LogHeadSigned` record inside the range (the planner signs its head
//! at intervals) is checked too: its signature, and that the record it names has that hash.

use crate::api::EventView;
use crate::events::{Envelope, Event};
use crate::ids::DeploymentId;
use crate::signed::{ExportClaims, TrustedKeys};
use crate::time::Timestamp;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::io::BufRead;

/// The format named in an export's header.
pub const FORMAT: &str = "shoal-audit-export v1";

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Line {
    /// First: what the export holds.
    Header {
        format: String,
        /// The first and last sequence exported.
        from: u64,
        to: u64,
        /// The deployment asked for: the range runs from its first record to its last, and
        /// its records are the ones `in_scope`.
        deployment: Option<DeploymentId>,
        exported_at: Timestamp,
    },
    /// A record of the log.
    Record {
        seq: u64,
        /// SHA-256 of `bytes`, hex.
        hash: String,
        /// The record exactly as stored (a MessagePack envelope), base64.
        bytes: String,
        /// Whether the record is one asked for (all are, unless a deployment was).
        in_scope: bool,
        /// The record as the API shows it.
        event: EventView,
    },
    /// Last: the planner's signature of the last record's hash.
    Head(SignedHead),
}

/// A signature of one record's hash by the planner's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    pub seq: u64,
    /// SHA-256 of the record's stored bytes, hex.
    pub hash: String,
    /// The planner's public key as its `.pub` file holds it: `ed25519 <key id> <hex>`.
    pub key: String,
    /// Ed25519 signature, hex.
    pub signature: String,
    pub signed_at: Timestamp,
}

/// What a verified export holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub first: u64,
    pub last: u64,
    pub records: u64,
    pub in_scope: u64,
    /// The key that signed the last record.
    pub key_id: String,
    /// Whether that key was checked against keys given (else only against the export's
    /// own).
    pub key_trusted: bool,
    /// `LogHeadSigned` records inside the export, each checked.
    pub signatures_inside: u64,
    /// `LogHeadSigned` records by keys not given (an earlier key): not checked.
    pub signatures_unchecked: u64,
}

/// Why an export does not verify: the line, the record if any, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {why}", if *line == 0 { "the export".to_owned() } else { format!("line {line}") }, seq.map_or(String::new(), |s| format!(" (record {s})")))]
pub struct Bad {
    /// 0: the export as a whole.
    pub line: usize,
    pub seq: Option<u64>,
    pub why: String,
}

/// The verification under way.
#[derive(Default)]
struct Walk {
    header: Option<(u64, u64)>,
    /// The deployment the export was asked for.
    deployment: Option<String>,
    /// The last record: sequence and hash.
    last: Option<(u64, [u8; 32])>,
    records: u64,
    in_scope: u64,
    /// Each record's hash, for the signatures inside (a few MB per 100,000 records).
    hashes: Vec<(u64, [u8; 32])>,
    /// `LogHeadSigned` records seen: (seq named, hash, key id, signature).
    inside: Vec<(u64, [u8; 32], String, Vec<u8>)>,
    head: Option<SignedHead>,
}

/// Verifies an export: every record's bytes against its hash and against what it shows,
/// the chain from each record to the next, no record missing, and the signature of the last
/// record's hash — by one of `trusted` if given (the planner's `.pub` file), else by the key
/// the export names (which proves the export is intact, not who made it).
///
/// # Errors
/// The first line that fails, and why.
pub fn verify(input: impl BufRead, trusted: Option<&TrustedKeys>) -> Result<Verified, Bad> {
    let mut walk = Walk::default();
    for (n, text) in input.lines().enumerate() {
        let n = n + 1;
        let text = text.map_err(|e| bad(n, None, format!("cannot be read: {e}")))?;
        if text.trim().is_empty() {
            continue;
        }
        if walk.head.is_some() {
            return Err(bad(n, None, "a line after the signed head".into()));
        }
        let line: Line = serde_json::from_str(&text)
            .map_err(|e| bad(n, None, format!("not a line of an audit export: {e}")))?;
        walk.line(n, line)?;
    }
    walk.finish(trusted)
}

impl Walk {
    fn line(&mut self, n: usize, line: Line) -> Result<(), Bad> {
        match line {
            Line::Header {
                format,
                from,
                to,
                deployment,
                ..
            } => {
                if self.header.is_some() || self.records > 0 {
                    return Err(bad(n, None, "a second header".into()));
                }
                if format != FORMAT {
                    return Err(bad(
                        n,
                        None,
                        format!("format \"{format}\", want \"{FORMAT}\""),
                    ));
                }
                self.header = Some((from, to));
                self.deployment = deployment.map(|d| d.to_string());
            }
            Line::Record {
                seq,
                hash,
                bytes,
                in_scope,
                event,
            } => {
                if self.header.is_none() {
                    return Err(bad(n, Some(seq), "a record before the header".into()));
                }
                let stream = event.stream.clone();
                self.record(n, seq, &hash, &bytes, event)?;
                let scoped = self
                    .deployment
                    .as_ref()
                    .is_none_or(|d| stream == format!("deployment/{d}"));
                if scoped != in_scope {
                    return Err(bad(
                        n,
                        Some(seq),
                        format!(
                            "it says it is {}in scope; its stream says otherwise",
                            if in_scope { "" } else { "not " }
                        ),
                    ));
                }
                self.in_scope += u64::from(in_scope);
            }
            Line::Head(head) => self.head = Some(head),
        }
        Ok(())
    }

    fn record(
        &mut self,
        n: usize,
        seq: u64,
        hash: &str,
        bytes: &str,
        event: EventView,
    ) -> Result<(), Bad> {
        let fail = |why: String| bad(n, Some(seq), why);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(bytes)
            .map_err(|e| fail(format!("its bytes are not base64: {e}")))?;
        let actual = sha256(&bytes);
        if crate::hex::encode(&actual) != hash {
            return Err(fail("its hash does not match its bytes".into()));
        }
        let env: Envelope = crate::codec::decode("record", &bytes)
            .map_err(|e| fail(format!("its bytes are not a record: {e}")))?;
        if env.seq != seq {
            return Err(fail(format!("its bytes are record {}", env.seq)));
        }
        if let Some((prev, prev_hash)) = self.last {
            if seq != prev + 1 {
                return Err(fail(format!("record {} is missing", prev + 1)));
            }
            if env.prev_hash != prev_hash {
                return Err(fail(format!(
                    "it does not link to record {prev}: the chain is broken"
                )));
            }
        } else if let Some((from, _)) = self.header
            && seq != from
        {
            return Err(fail(format!("the export says it starts at record {from}")));
        }
        if let Ok(Event::LogHeadSigned {
            seq: named,
            hash,
            key_id,
            signature,
        }) = crate::codec::decode::<Event>("event", &env.payload)
        {
            let hash = hash32(&hash).ok_or_else(|| fail("its signed hash is not hex".into()))?;
            let sig = crate::hex::decode(&signature)
                .ok_or_else(|| fail("its signature is not hex".into()))?;
            self.inside.push((named, hash, key_id, sig));
        }
        if EventView::of(env) != event {
            return Err(fail("what it shows is not what its bytes say".into()));
        }
        self.last = Some((seq, actual));
        self.hashes.push((seq, actual));
        self.records += 1;
        Ok(())
    }

    fn finish(self, trusted: Option<&TrustedKeys>) -> Result<Verified, Bad> {
        let end = |why: String| bad(0, None, why);
        let (from, to) = self
            .header
            .ok_or_else(|| end("no header: not an audit export".into()))?;
        let (last, last_hash) = self.last.ok_or_else(|| end("no record".into()))?;
        if last != to {
            return Err(end(format!(
                "the export says it ends at record {to}, its last record is {last}: cut short?"
            )));
        }
        let head = self
            .head
            .ok_or_else(|| end("no signed head: the export was cut short".into()))?;
        if head.seq != last || hash32(&head.hash) != Some(last_hash) {
            return Err(end(format!(
                "the signed head names record {} with another hash than the export's last record {last}",
                head.seq
            )));
        }
        let given = TrustedKeys::parse(&head.key)
            .map_err(|e| end(format!("the signed head's key: {e}")))?;
        let keys = trusted.unwrap_or(&given);
        let key_id = head.key.split_whitespace().nth(1).unwrap_or_default();
        let sig = crate::hex::decode(&head.signature)
            .ok_or_else(|| end("the signed head's signature is not hex".into()))?;
        let claims = ExportClaims {
            from,
            to,
            deployment: self.deployment.as_deref(),
            hash: &last_hash,
        };
        keys.verify_export(key_id, &claims, &sig)
            .map_err(|e| end(format!("the signed head: {e}")))?;
        let (mut inside, mut unchecked) = (0, 0);
        for (named, hash, signer, sig) in &self.inside {
            let Ok(i) = self.hashes.binary_search_by_key(named, |(s, _)| *s) else {
                continue;
            };
            if self.hashes[i].1 != *hash {
                return Err(bad(
                    0,
                    Some(*named),
                    "a LogHeadSigned record says it had another hash: it was changed after it was signed".into(),
                ));
            }
            if !keys.trusts(signer) {
                unchecked += 1;
                continue;
            }
            keys.verify_head(signer, *named, hash, sig)
                .map_err(|e| bad(0, Some(*named), format!("its LogHeadSigned: {e}")))?;
            inside += 1;
        }
        Ok(Verified {
            first: from,
            last,
            records: self.records,
            in_scope: self.in_scope,
            key_id: key_id.to_owned(),
            key_trusted: trusted.is_some(),
            signatures_inside: inside,
            signatures_unchecked: unchecked,
        })
    }
}

fn bad(line: usize, seq: Option<u64>, why: String) -> Bad {
    Bad { line, seq, why }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn hash32(hex: &str) -> Option<[u8; 32]> {
    crate::hex::decode(hex).and_then(|b| <[u8; 32]>::try_from(b).ok())
}

/// The line of a record as exported; in scope when it is of `scope` (a stream), or when no
/// stream was asked for.
///
/// # Errors
/// The bytes are not a record.
pub fn record_line(bytes: &[u8], scope: Option<&str>) -> Result<Line, crate::codec::CodecError> {
    let env: Envelope = crate::codec::decode("record", bytes)?;
    Ok(Line::Record {
        seq: env.seq,
        hash: crate::hex::encode(&sha256(bytes)),
        bytes: base64::engine::general_purpose::STANDARD.encode(bytes),
        in_scope: scope.is_none_or(|s| s == env.stream),
        event: EventView::of(env),
    })
}

/// The SHA-256 of a record's stored bytes (the chain's hash).
pub fn record_hash(bytes: &[u8]) -> [u8; 32] {
    sha256(bytes)
}

#[cfg(test)]
#[path = "audit_tests.rs"]
mod tests;
