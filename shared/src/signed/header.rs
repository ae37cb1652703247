//! The [`super::SIGNATURE_HEADER`] value on the wire, kept small because it travels with
//! every task through JetStream's store and TLS (a no-op task's payload is about 250 bytes):
//!
//! ```text
//! v2;k=<key id>;i=<issued ms>;e=<expires ms>;o=<pool>;a=<attempt|->;p=<path>;s=<signature>
//! ```
//!
//! The key id (8 bytes), the path and the signature are unpadded base64url. The path is one
//! byte of directions (bit `n` set: the sibling at level `n` is on the left) and then the
//! sibling hashes, leaf first; empty for a message signed alone. The pool and attempt are
//! carried so a replay into another pool or attempt is named as one; the kind and id are
//! not: the verifier takes them from what it expects, and the leaf commits to them (see
//! [`super::canonical_claims`]), so a signature moved onto another kind or id fails. Fields
//! are read strictly in this order, each once.

use super::tree::{Hash, Step};
use super::{Refusal, VERSION, attempt_text};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

/// Longest path: a batch of up to 2^8 messages (the planner signs at most 64 together).
const MAX_DEPTH: usize = 8;
/// Most messages under one signature ([`super::SigningKey::sign_batch`] splits more).
pub(super) const MAX_BATCH: usize = 1 << MAX_DEPTH;

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Header {
    pub key_id: [u8; 8],
    pub issued_at: i64,
    pub expires_at: i64,
    pub pool: String,
    pub attempt: Option<u32>,
    pub path: Vec<Step>,
    pub sig: Vec<u8>,
}

impl Header {
    pub fn encode(&self) -> String {
        let attempt = attempt_text(self.attempt);
        format!(
            "{VERSION};k={};i={};e={};o={};a={attempt};p={};s={}",
            B64.encode(self.key_id),
            self.issued_at,
            self.expires_at,
            self.pool,
            encode_path(&self.path),
            B64.encode(&self.sig),
        )
    }

    pub fn parse(text: &str) -> Result<Header, Refusal> {
        let bad = |what: &str| Refusal::Malformed(format!("bad or missing {what}"));
        let mut fields = text.split(';');
        if fields.next() != Some(VERSION) {
            return Err(Refusal::Malformed(format!(
                "unknown signature version (this build reads {VERSION})"
            )));
        }
        let mut next = |name: &'static str| {
            fields
                .next()
                .and_then(|f| f.strip_prefix(name)?.strip_prefix('='))
                .ok_or_else(|| bad(name))
        };
        let key_id = decode_b64(next("k")?)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .ok_or_else(|| bad("k (key id)"))?;
        let issued_at = number(next("i")?).ok_or_else(|| bad("i (issued at)"))?;
        let expires_at = number(next("e")?).ok_or_else(|| bad("e (expires at)"))?;
        let pool = next("o")?.to_owned();
        let attempt = match next("a")? {
            "-" => None,
            n => Some(number(n).ok_or_else(|| bad("a (attempt)"))?),
        };
        let path = parse_path(next("p")?).ok_or_else(|| bad("p (path)"))?;
        let sig = decode_b64(next("s")?).ok_or_else(|| bad("s (signature)"))?;
        if fields.next().is_some() {
            return Err(Refusal::Malformed("unexpected fields".into()));
        }
        Ok(Header {
            key_id,
            issued_at,
            expires_at,
            pool,
            attempt,
            path,
            sig,
        })
    }
}

/// A decimal number in its one spelling (no sign, no leading zero, no `-0`).
fn number<T: std::str::FromStr + ToString>(text: &str) -> Option<T> {
    let n: T = text.parse().ok()?;
    (n.to_string() == text).then_some(n)
}

/// Strict base64url without padding: one spelling per value.
fn decode_b64(text: &str) -> Option<Vec<u8>> {
    let bytes = B64.decode(text).ok()?;
    (B64.encode(&bytes) == text).then_some(bytes)
}

fn encode_path(path: &[Step]) -> String {
    if path.is_empty() {
        return String::new();
    }
    let mut bytes = vec![0u8];
    for (level, step) in path.iter().enumerate() {
        let hash = match step {
            Step::Left(h) => {
                bytes[0] |= 1 << level;
                h
            }
            Step::Right(h) => h,
        };
        bytes.extend_from_slice(hash);
    }
    B64.encode(bytes)
}

fn parse_path(text: &str) -> Option<Vec<Step>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    let bytes = decode_b64(text)?;
    let (&directions, hashes) = bytes.split_first()?;
    if hashes.is_empty() || hashes.len() % 32 != 0 || hashes.len() / 32 > MAX_DEPTH {
        return None;
    }
    let depth = hashes.len() / 32;
    // Direction bits past the path's depth must be clear: one spelling per path.
    if depth < 8 && directions >> depth != 0 {
        return None;
    }
    let steps = hashes.chunks_exact(32).enumerate().map(|(level, chunk)| {
        let hash: Hash = chunk.try_into().unwrap_or_default();
        if directions & (1 << level) != 0 {
            Step::Left(hash)
        } else {
            Step::Right(hash)
        }
    });
    Some(steps.collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn step() -> impl Strategy<Value = Step> {
        (any::<bool>(), any::<[u8; 32]>())
            .prop_map(|(left, h)| if left { Step::Left(h) } else { Step::Right(h) })
    }

    fn header() -> impl Strategy<Value = Header> {
        (
            any::<[u8; 8]>(),
            any::<i64>(),
            any::<i64>(),
            "[a-z][a-z0-9-]{0,20}",
            proptest::option::of(any::<u32>()),
            proptest::collection::vec(step(), 0..=MAX_DEPTH),
            proptest::collection::vec(any::<u8>(), 64),
        )
            .prop_map(
                |(key_id, issued_at, expires_at, pool, attempt, path, sig)| Header {
                    key_id,
                    issued_at,
                    expires_at,
                    pool,
                    attempt,
                    path,
                    sig,
                },
            )
    }

    proptest! {
        #[test]
        fn a_header_reads_back_as_written(h in header()) {
            prop_assert_eq!(Header::parse(&h.encode()), Ok(h));
        }
    }

    #[test]
    fn a_task_header_of_a_group_of_sixty_four_is_well_under_the_old_size() {
        let h = Header {
            key_id: [7; 8],
            issued_at: 1_796_052_328_211,
            expires_at: 1_796_657_128_211,
            pool: "default".into(),
            attempt: Some(1),
            path: vec![Step::Left([1; 32]); 6],
            sig: vec![9; 64],
        };
        // Hex claims with the task id, a hex path of four and a hex signature took about 530
        // bytes; a group of 64 has a path of six.
        assert!(h.encode().len() <= 420, "{} bytes", h.encode().len());
    }

    #[test]
    fn other_spellings_of_the_same_values_are_malformed() {
        let h = Header {
            key_id: [7; 8],
            issued_at: 1,
            expires_at: 2,
            pool: "p".into(),
            attempt: None,
            path: vec![Step::Right([1; 32])],
            sig: vec![9; 64],
        };
        let good = h.encode();
        assert!(Header::parse(&good).is_ok());
        for bad in [
            good.replacen(";a=-", ";a=", 1),
            format!("{good}="),
            format!("{good};x=1"),
            good.replacen(";k=", ";key=", 1),
            good.replacen("v2;", "v1;", 1),
            good.replacen(";i=1", ";i=01", 1),
            good.replacen(";e=2", ";e=+2", 1),
        ] {
            assert!(
                matches!(Header::parse(&bad), Err(Refusal::Malformed(_))),
                "{bad}"
            );
        }
        // A direction bit set past the path's depth.
        let mut raw = B64.decode(encode_path(&h.path)).expect("b64");
        raw[0] |= 0b10;
        assert_eq!(parse_path(&B64.encode(raw)), None);
    }
}
