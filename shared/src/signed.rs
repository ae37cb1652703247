//! Ed25519 signatures on what the planner tells workers: tasks, health checks, cancellations,
//! drain/resume instructions and drain-state answers. A worker acts on nothing whose
//! signature it cannot verify against its trusted keys (NATS does not check reply subjects,
//! so a subject alone never proves who sent a message; see docs/security/signing.md).
//!
//! The signature travels in one header, [`SIGNATURE_HEADER`], beside an unchanged payload;
//! its compact form is in [`header`]. What is signed is a leaf over the message's canonical
//! claims ([`canonical_claims`]: key, times, kind, pool, id, attempt) and its payload's
//! SHA-256; messages signed together (the dispatcher's batch) form a Merkle tree ([`tree`])
//! whose root one Ed25519 signature covers, and the header carries the path from the leaf to
//! that root (empty for a message signed alone). The verifier rebuilds the claims from the
//! header and from what it expects (kind and id are not sent), so what is verified is
//! exactly what it acts on. It remembers the roots it verified, so the other messages of a
//! batch cost a few SHA-256s, not an Ed25519 verification each.
//!
//! Only the pure part lives here (keys in memory, sign, verify); reading and writing key
//! files is `shoal_runtime::keys`.

use crate::names::PoolName;
use crate::time::Timestamp;
use header::Header;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use tree::Hash;

mod header;
mod tree;

/// The NATS header that carries a message's signature.
pub const SIGNATURE_HEADER: &str = "Shoal-Signature";
/// How far a signer's clock may be ahead of (or an expiry behind) the verifier's.
pub const MAX_CLOCK_SKEW_MS: u64 = 2 * 60 * 1000;
/// What the Ed25519 signature covers: this, then the batch's Merkle root.
const ROOT_CONTEXT: &[u8] = b"shoal-signature-v2 root\n";
/// Roots a verifier remembers having verified.
const VERIFIED_ROOTS: usize = 4096;
/// What an audit head signature covers: this, the record's sequence (8 bytes, big-endian)
/// and the SHA-256 of its stored bytes.
const HEAD_CONTEXT: &[u8] = b"shoal-audit-head-v1\n";
/// First line of a signing key file.
const KEY_FILE_TAG: &str = "shoal-signing-key v1 ed25519";
/// v2: the compact header of `header.rs` (v1 carried hex claims; never released).
const VERSION: &str = "v2";

/// What a signed message is; a signature for one kind is refused as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An attempt of a task on `shoal.tasks.<pool>`; id: the task, with its attempt.
    Task,
    /// A health check on `shoal.tasks.<pool>`; id: the check.
    HealthCheck,
    /// A cancellation; id: the task, attempt: the last attempt cancelled.
    Cancel,
    /// A drain/resume instruction on `shoal.control.<pool>.<worker>`; id: the worker.
    Control,
    /// The planner's answer to a starting worker's drain-state question; id: the worker.
    DrainState,
}

impl Kind {
    /// The token in the signature header.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Task => "task",
            Kind::HealthCheck => "health-check",
            Kind::Cancel => "cancel",
            Kind::Control => "control",
            Kind::DrainState => "drain-state",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a signature is bound to besides the payload: the signer says it, the verifier
/// expects it (from the subject, its own pool and the decoded payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub kind: Kind,
    pub pool: PoolName,
    /// The task, check or worker, as text.
    pub id: String,
    /// The attempt, for a task (and the last attempt a cancellation stops).
    pub attempt: Option<u32>,
}

/// A key id: the first 8 bytes of the SHA-256 of the public key, in hex. Names the key a
/// message was signed with, so several keys can be trusted at once (rotation).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    fn of(public: &[u8]) -> KeyId {
        KeyId(crate::hex::encode(
            &ring::digest::digest(&ring::digest::SHA256, public).as_ref()[..8],
        ))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id's 8 bytes (made from them, so the hex always decodes).
    fn bytes(&self) -> [u8; 8] {
        crate::hex::decode(&self.0)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .unwrap_or_default()
    }

    fn from_bytes(bytes: [u8; 8]) -> KeyId {
        KeyId(crate::hex::encode(&bytes))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a key or a key file could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the system's random number generator failed; cannot make a key")]
    Random,
    #[error(
        "not a shoal signing key (expected a first line \"{KEY_FILE_TAG}\" and a hex seed); make one with `shoal-planner keygen --out FILE`"
    )]
    NotASigningKey,
    #[error(
        "line {line} of the trusted keys is not \"ed25519 <key id> <64 hex digits>\" ({why}); copy the lines of the planner's .pub file"
    )]
    BadPublicKey { line: usize, why: &'static str },
    #[error(
        "the trusted keys hold no key; add the planner's public key (the line of its .pub file)"
    )]
    NoTrustedKey,
}

/// The planner's private key. Never printed: its `Debug` shows only the key id.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    seed: [u8; 32],
    id: KeyId,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.id)
    }
}

impl SigningKey {
    /// A new random key.
    ///
    /// # Errors
    /// The system's random number generator failed.
    pub fn generate() -> Result<SigningKey, KeyError> {
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| KeyError::Random)?;
        SigningKey::from_seed(seed)
    }

    /// The key of a 32-byte seed.
    ///
    /// # Errors
    /// Never for 32 bytes; kept fallible because ring's constructor is.
    pub fn from_seed(seed: [u8; 32]) -> Result<SigningKey, KeyError> {
        let pair =
            Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| KeyError::NotASigningKey)?;
        let id = KeyId::of(pair.public_key().as_ref());
        Ok(SigningKey { pair, seed, id })
    }

    /// Reads a key file's text (see [`SigningKey::to_file_text`]).
    ///
    /// # Errors
    /// Not a signing key file.
    pub fn parse(text: &str) -> Result<SigningKey, KeyError> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some(KEY_FILE_TAG) {
            return Err(KeyError::NotASigningKey);
        }
        let seed = lines
            .next()
            .and_then(crate::hex::decode)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or(KeyError::NotASigningKey)?;
        SigningKey::from_seed(seed)
    }

    /// The key file's text: a tag line and the hex seed. Secret: write it with mode 0600.
    pub fn to_file_text(&self) -> String {
        format!("{KEY_FILE_TAG}\n{}\n", crate::hex::encode(&self.seed))
    }

    /// The key id.
    pub fn key_id(&self) -> &KeyId {
        &self.id
    }

    /// The public half, to trust on workers.
    pub fn public(&self) -> PublicKey {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey {
            id: self.id.clone(),
            bytes,
        }
    }

    /// Signs `payload` bound to `binding`, valid from `now` for `ttl_ms`; returns the value
    /// of the [`SIGNATURE_HEADER`].
    pub fn sign(&self, binding: &Binding, payload: &[u8], now: Timestamp, ttl_ms: u64) -> String {
        self.sign_batch(&[(binding, payload)], now, ttl_ms)
            .pop()
            .unwrap_or_default()
    }

    /// Signs messages together with one Ed25519 signature (over the Merkle root of their
    /// leaves); each is bound to its own binding and payload, and verifies on its own. The
    /// header values, in the order given.
    pub fn sign_batch(
        &self,
        messages: &[(&Binding, &[u8])],
        now: Timestamp,
        ttl_ms: u64,
    ) -> Vec<String> {
        if messages.len() > header::MAX_BATCH {
            return messages
                .chunks(header::MAX_BATCH)
                .flat_map(|part| self.sign_batch(part, now, ttl_ms))
                .collect();
        }
        let (issued_at, expires_at) = (now.millis(), now.plus_millis(ttl_ms).millis());
        let leaves: Vec<Hash> = messages
            .iter()
            .map(|(binding, payload)| {
                tree::leaf(
                    &canonical_claims(&self.id, issued_at, expires_at, binding),
                    payload,
                )
            })
            .collect();
        let (root, paths) = tree::build(&leaves);
        let sig = self.pair.sign(&root_message(&root)).as_ref().to_vec();
        let key_id = self.id.bytes();
        messages
            .iter()
            .zip(paths)
            .map(|((binding, _), path)| {
                Header {
                    key_id,
                    issued_at,
                    expires_at,
                    pool: binding.pool.to_string(),
                    attempt: binding.attempt,
                    path,
                    sig: sig.clone(),
                }
                .encode()
            })
            .collect()
    }
}

/// The bytes an audit head signature covers.
fn head_message(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut m = HEAD_CONTEXT.to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

/// What an audit export's signature covers: its range, what it was asked for, and the hash
/// of its last record. Another context than a head's, so that a head signed in the log
/// cannot end an export cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportClaims<'a> {
    pub from: u64,
    pub to: u64,
    /// The deployment exported (its id), or none for a range of the log.
    pub deployment: Option<&'a str>,
    /// SHA-256 of record `to` as stored.
    pub hash: &'a [u8; 32],
}

impl ExportClaims<'_> {
    fn message(&self) -> Vec<u8> {
        let mut m = b"shoal-audit-export-v1\n".to_vec();
        m.extend_from_slice(&self.from.to_be_bytes());
        m.extend_from_slice(&self.to.to_be_bytes());
        m.extend_from_slice(self.deployment.unwrap_or("-").as_bytes());
        m.push(b'\n');
        m.extend_from_slice(self.hash);
        m
    }
}

impl SigningKey {
    /// Signs that record `seq` of the log has `hash` (the SHA-256 of its stored bytes): an
    /// audit head, which vouches for every record the hash chain links to it.
    pub fn sign_head(&self, seq: u64, hash: &[u8; 32]) -> Vec<u8> {
        self.pair.sign(&head_message(seq, hash)).as_ref().to_vec()
    }

    /// Signs an audit export: its range, scope and last record's hash.
    pub fn sign_export(&self, claims: &ExportClaims<'_>) -> Vec<u8> {
        self.pair.sign(&claims.message()).as_ref().to_vec()
    }
}

/// The text a message's leaf commits to, with its payload: the signer writes it from the
/// binding it signs, the verifier from the header and the binding it expects.
fn canonical_claims(key: &KeyId, issued_at: i64, expires_at: i64, binding: &Binding) -> String {
    let attempt = attempt_text(binding.attempt);
    format!(
        "shoal-signature-{VERSION};key={key};iat={issued_at};exp={expires_at};kind={};pool={};id={};attempt={attempt}",
        binding.kind, binding.pool, binding.id,
    )
}

/// An attempt as the header and the canonical claims spell it: the number, or `-` for none.
fn attempt_text(attempt: Option<u32>) -> String {
    attempt.map_or_else(|| "-".to_owned(), |a| a.to_string())
}

/// A public key and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    id: KeyId,
    bytes: [u8; 32],
}

impl PublicKey {
    /// The key id.
    pub fn key_id(&self) -> &KeyId {
        &self.id
    }

    /// The key as one line of a trusted keys file: `ed25519 <key id> <hex>`.
    pub fn to_line(&self) -> String {
        format!("ed25519 {} {}", self.id, crate::hex::encode(&self.bytes))
    }
}

/// The public keys a worker accepts signatures of, by key id (more than one during a key
/// rotation), and the batch roots it has verified. Clones share the roots. Each key is kept
/// decompressed (ed25519-dalek's `VerifyingKey`): a verification then skips the point
/// decompression ring makes every time, a fifth of its cost.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, ed25519_dalek::VerifyingKey>,
    verified: Arc<Mutex<VerifiedRoots>>,
}

/// Roots whose signature was verified, with the key and the exact signature bytes (so a
/// changed signature is verified again, and refused), oldest first out.
#[derive(Debug, Default)]
struct VerifiedRoots {
    by_root: HashMap<Hash, (KeyId, Vec<u8>)>,
    order: VecDeque<Hash>,
    counts: VerifyCounts,
}

/// How much verifying a verifier has done: messages whose signature held (whether or not
/// they were then found expired), and how many of them needed an Ed25519 verification (the
/// rest had a root verified before).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VerifyCounts {
    pub messages: u64,
    pub signatures: u64,
}

impl VerifiedRoots {
    fn holds(&self, root: &Hash, key: &KeyId, sig: &[u8]) -> bool {
        self.by_root
            .get(root)
            .is_some_and(|(k, s)| k == key && s == sig)
    }

    fn insert(&mut self, root: Hash, key: KeyId, sig: Vec<u8>) {
        if self.by_root.insert(root, (key, sig)).is_none() {
            self.order.push_back(root);
        }
        while self.order.len() > VERIFIED_ROOTS {
            if let Some(old) = self.order.pop_front() {
                self.by_root.remove(&old);
            }
        }
    }
}

impl TrustedKeys {
    /// Trusts exactly these keys (one that is not a point of the curve can verify nothing,
    /// and is left out: [`TrustedKeys::parse`] refuses it).
    pub fn of(keys: impl IntoIterator<Item = PublicKey>) -> TrustedKeys {
        let valid = keys.into_iter().filter_map(|k| {
            let key = ed25519_dalek::VerifyingKey::from_bytes(&k.bytes).ok()?;
            Some((k.id, key))
        });
        TrustedKeys {
            keys: valid.collect(),
            verified: Arc::default(),
        }
    }

    /// Reads a trusted keys file: one `ed25519 <key id> <hex>` line per key (the lines of the
    /// planner's `.pub` files); blank lines and `#` comments are skipped.
    ///
    /// # Errors
    /// A line that is not a public key, a key id that does not match its key, or no key.
    pub fn parse(text: &str) -> Result<TrustedKeys, KeyError> {
        let mut keys = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why| KeyError::BadPublicKey { line: n + 1, why };
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [alg, id, key] = parts[..] else {
                return Err(bad("expected three fields"));
            };
            if alg != "ed25519" {
                return Err(bad("only ed25519 keys are known"));
            }
            let bytes = crate::hex::decode(key)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| bad("the key is not 32 bytes of hex"))?;
            if KeyId::of(&bytes).as_str() != id {
                return Err(bad("the key id does not match the key"));
            }
            if ed25519_dalek::VerifyingKey::from_bytes(&bytes).is_err() {
                return Err(bad("the key is not an Ed25519 public key"));
            }
            keys.insert(KeyId(id.to_owned()), bytes);
        }
        if keys.is_empty() {
            return Err(KeyError::NoTrustedKey);
        }
        Ok(TrustedKeys::of(
            keys.into_iter().map(|(id, bytes)| PublicKey { id, bytes }),
        ))
    }

    /// The same keys with no root remembered (what a newly started worker holds).
    pub fn clone_keys(&self) -> TrustedKeys {
        TrustedKeys {
            keys: self.keys.clone(),
            verified: Arc::default(),
        }
    }

    /// How many messages verified so far, and how many Ed25519 verifications they took.
    pub fn counts(&self) -> VerifyCounts {
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .counts
    }

    /// Checks that `signature` is key `key_id`'s signature of the audit head (`seq`,
    /// `hash`), and that the key is trusted.
    ///
    /// # Errors
    /// The key is not trusted, or the signature is not its signature of that head.
    pub fn verify_head(
        &self,
        key_id: &str,
        seq: u64,
        hash: &[u8; 32],
        signature: &[u8],
    ) -> Result<(), String> {
        self.verify_message(key_id, &head_message(seq, hash), signature)
            .map_err(|e| {
                e.unwrap_or_else(|| {
                    format!("the signature of record {seq}'s hash by key {key_id} does not verify")
                })
            })
    }

    /// Checks that `signature` is trusted key `key_id`'s signature of an export.
    ///
    /// # Errors
    /// The key is not trusted, or the signature is not its signature of these claims.
    pub fn verify_export(
        &self,
        key_id: &str,
        claims: &ExportClaims<'_>,
        signature: &[u8],
    ) -> Result<(), String> {
        self.verify_message(key_id, &claims.message(), signature)
            .map_err(|e| {
                e.unwrap_or_else(|| {
                    format!(
                        "the export's signature by key {key_id} does not verify for records {}..{} of {}",
                        claims.from,
                        claims.to,
                        claims.deployment.map_or("the log".to_owned(), |d| format!("deployment {d}"))
                    )
                })
            })
    }

    /// An Ed25519 signature of `message` by trusted key `key_id`: `Err(Some(why))` when the
    /// key is not trusted or the signature malformed, `Err(None)` when it does not verify.
    fn verify_message(
        &self,
        key_id: &str,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), Option<String>> {
        let key = self.keys.get(&KeyId(key_id.to_owned())).ok_or_else(|| {
            Some(format!(
                "key {key_id} is not trusted (trusted: {})",
                self.key_ids().join(", ")
            ))
        })?;
        let sig = ed25519_dalek::Signature::from_slice(signature)
            .map_err(|_| Some("the signature is not 64 bytes".to_owned()))?;
        key.verify_strict(message, &sig).map_err(|_| None)
    }

    /// Whether `key_id` is trusted.
    pub fn trusts(&self, key_id: &str) -> bool {
        self.keys.contains_key(&KeyId(key_id.to_owned()))
    }

    /// The trusted key ids.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.keys().map(|k| k.0.clone()).collect()
    }

    /// Checks that `header` (the [`SIGNATURE_HEADER`] value, if any) is a valid signature of
    /// `payload` by a trusted key, current at `now`, and bound to `expected`. The time is
    /// checked after the signature, so [`Refusal::Expired`] and [`Refusal::FromTheFuture`]
    /// are about authentic messages ([`Refusal::is_authentic`]).
    ///
    /// # Errors
    /// Why the message must not be acted on ([`Refusal`]).
    pub fn verify(
        &self,
        header: Option<&str>,
        expected: &Binding,
        payload: &[u8],
        now: Timestamp,
    ) -> Result<Claims, Refusal> {
        let header = Header::parse(header.ok_or(Refusal::Unsigned)?)?;
        if header.pool != expected.pool.as_str() {
            return Err(Refusal::WrongPool {
                signed: header.pool,
                arrived_for: expected.pool.to_string(),
            });
        }
        if header.attempt != expected.attempt {
            return Err(Refusal::WrongAttempt {
                signed: header.attempt,
                message: expected.attempt,
            });
        }
        let key_id = KeyId::from_bytes(header.key_id);
        let key = self.keys.get(&key_id).ok_or_else(|| Refusal::UnknownKey {
            key_id: key_id.0.clone(),
            trusted: self.key_ids().join(", "),
        })?;
        let claims = Claims {
            key_id,
            issued_at: Timestamp(header.issued_at),
            expires_at: Timestamp(header.expires_at),
            binding: expected.clone(),
        };
        let text = canonical_claims(
            &claims.key_id,
            header.issued_at,
            header.expires_at,
            expected,
        );
        let root = tree::root_of(tree::leaf(&text, payload), &header.path);
        self.verify_root(key, &claims.key_id, root, header.sig)?;
        // Last: an expired or early message is authentic, so its worker may say so about
        // the task it names (a forgery could make a worker report on someone else's task).
        claims.check_time(now)?;
        Ok(claims)
    }
}

impl TrustedKeys {
    /// Checks the root's signature, or finds it verified before with the same key and bytes.
    fn verify_root(
        &self,
        key: &ed25519_dalek::VerifyingKey,
        key_id: &KeyId,
        root: Hash,
        sig: Vec<u8>,
    ) -> Result<(), Refusal> {
        if let Ok(mut v) = self.verified.lock()
            && v.holds(&root, key_id, &sig)
        {
            v.counts.messages += 1;
            return Ok(());
        }
        let bad = |_| Refusal::BadSignature {
            key_id: key_id.0.clone(),
        };
        let signature = ed25519_dalek::Signature::from_slice(&sig).map_err(bad)?;
        ed25519_dalek::Verifier::verify(key, &root_message(&root), &signature).map_err(bad)?;
        if let Ok(mut v) = self.verified.lock() {
            v.counts.messages += 1;
            v.counts.signatures += 1;
            v.insert(root, key_id.clone(), sig);
        }
        Ok(())
    }
}

/// What a valid signature says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub key_id: KeyId,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub binding: Binding,
}

impl Claims {
    fn check_time(&self, now: Timestamp) -> Result<(), Refusal> {
        if self.issued_at > now.plus_millis(MAX_CLOCK_SKEW_MS) {
            return Err(Refusal::FromTheFuture {
                issued_at: self.issued_at,
                now,
            });
        }
        if now > self.expires_at.plus_millis(MAX_CLOCK_SKEW_MS) {
            return Err(Refusal::Expired {
                expired_at: self.expires_at,
                now,
            });
        }
        Ok(())
    }
}

/// Why a worker refuses to act on a message from the planner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "unsigned: the message has no {SIGNATURE_HEADER} header; only the planner's signed messages are acted on (a planner older than signing, or a forgery)"
    )]
    Unsigned,
    #[error("malformed signature header: {0}")]
    Malformed(String),
    #[error(
        "signed by unknown key {key_id} (trusted: {trusted}); if the planner's key was rotated, add its new .pub line to this worker's --trusted-keys and restart it"
    )]
    UnknownKey { key_id: String, trusted: String },
    #[error(
        "bad signature by key {key_id}: the message was altered after it was signed, or the signature is another message's (another kind, task or worker), or forged"
    )]
    BadSignature { key_id: String },
    #[error(
        "signature expired at {expired_at} (now {now}); a task queued longer than the planner's --task-signature-ttl-secs is refused, deploy again"
    )]
    Expired {
        expired_at: Timestamp,
        now: Timestamp,
    },
    #[error(
        "signature issued at {issued_at}, in the future (now {now}, more than the allowed clock skew); check the clocks of planner and worker"
    )]
    FromTheFuture {
        issued_at: Timestamp,
        now: Timestamp,
    },
    #[error(
        "signed for pool \"{signed}\" but arrived for pool \"{arrived_for}\" (replayed into another pool)"
    )]
    WrongPool { signed: String, arrived_for: String },
    #[error(
        "signed for attempt {} but the message is attempt {} (replayed as another attempt)",
        show(*signed),
        show(*message)
    )]
    WrongAttempt {
        signed: Option<u32>,
        message: Option<u32>,
    },
}

impl Refusal {
    /// Whether the message was signed by a trusted key and is only out of its time: the
    /// worker may then report the task it names as failed, so it does not hang.
    pub fn is_authentic(&self) -> bool {
        matches!(
            self,
            Refusal::Expired { .. } | Refusal::FromTheFuture { .. }
        )
    }
}

fn show(attempt: Option<u32>) -> String {
    attempt.map_or_else(|| "none".to_owned(), |a| a.to_string())
}

/// The bytes the Ed25519 signature covers.
fn root_message(root: &Hash) -> Vec<u8> {
    [ROOT_CONTEXT, root.as_slice()].concat()
}

#[cfg(test)]
#[path = "signed_tests.rs"]
mod tests;
