//! Sensitive variables: the types their values travel in, so that a value in clear cannot
//! reach the log, the wire or an API answer by accident.
//!
//! - [`SecretString`]: a value in clear. It exists only in a request (client → the planner's
//!   API) and inside the worker that opened it. Its `Debug` shows [`MASK`]; it serializes to
//!   human-readable formats only (the JSON a client sends) and MessagePack (log, wire)
//!   refuses it.
//! - [`Sealed`]: a value encrypted (AEAD) either for the planner's master key (in the log and
//!   the planner's state) or for one pool's public key (in a task message). It serializes
//!   as its ciphertext to MessagePack and as [`MASK`] to human-readable formats (every JSON
//!   answer), so an API answer never shows even the ciphertext.
//!
//! The cryptography itself lives at the edges (`shoal_runtime::secrets`); this crate only
//! names what is sealed for whom and what it is bound to ([`binding`]).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// What every sensitive value is shown as.
pub const MASK: &str = "********";

/// A sensitive value in clear. See the module documentation for where it may exist.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a value in clear.
    pub fn new(value: impl Into<String>) -> SecretString {
        SecretString(value.into())
    }

    /// The value in clear: for sealing, for a script's environment, and for masking output.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for SecretString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return Err(serde::ser::Error::custom(
                "a sensitive value in clear must never be encoded for the log or the wire; seal it first",
            ));
        }
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        String::deserialize(d).map(SecretString)
    }
}

/// Who can open a [`Sealed`] value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SealedFor {
    /// The planner, with its master key (at rest in the log).
    Planner,
    /// The workers of one pool, with the pool's secret key (in a task message).
    Pool,
}

/// A sensitive value, encrypted. Opaque to everything but the edges that hold the keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Whose key opens it.
    pub to: SealedFor,
    /// [`SealedFor::Planner`]: the master key's id; [`SealedFor::Pool`]: the pool's public
    /// key it was sealed to (so a worker holding several keys during a rotation picks the
    /// right one).
    pub key: String,
    /// [`SealedFor::Pool`]: the one-time public key it was sealed with; empty otherwise.
    pub from: String,
    /// Nonce and ciphertext (with its tag).
    pub data: Vec<u8>,
}

impl Sealed {
    /// What a masked value (`"********"` in JSON) reads back as: opens nowhere.
    pub fn masked() -> Sealed {
        Sealed {
            to: SealedFor::Planner,
            key: String::new(),
            from: String::new(),
            data: Vec::new(),
        }
    }

    /// Bytes it adds to a task message, for the step size limit.
    pub fn len(&self) -> usize {
        self.key.len() + self.from.len() + self.data.len()
    }

    /// Whether it holds no ciphertext ([`Sealed::masked`]).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({:?} {}, {MASK})", self.to, self.key)
    }
}

/// How [`Sealed`] is written in MessagePack. Field names are fixed by existing logs.
#[derive(Serialize, Deserialize)]
struct SealedRepr {
    to: SealedFor,
    key: String,
    #[serde(default)]
    from: String,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

impl Serialize for Sealed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return s.serialize_str(MASK);
        }
        SealedRepr {
            to: self.to,
            key: self.key.clone(),
            from: self.from.clone(),
            data: self.data.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Sealed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sealed, D::Error> {
        if d.is_human_readable() {
            let shown = String::deserialize(d)?;
            if shown != MASK {
                return Err(D::Error::custom(
                    "a sealed value is shown as \"********\"; values in clear go in a request's sensitive_variables",
                ));
            }
            return Ok(Sealed::masked());
        }
        let r = SealedRepr::deserialize(d)?;
        Ok(Sealed {
            to: r.to,
            key: r.key,
            from: r.from,
            data: r.data,
        })
    }
}

/// What a sealed value is bound to (the AEAD's associated data, or the prefix of what is
/// sealed for a pool): moving a ciphertext to another deployment, step, task or variable
/// makes it fail to open.
pub fn binding(scope: &str, name: &str) -> Vec<u8> {
    format!("shoal-sensitive-v1\0{scope}\0{name}\0").into_bytes()
}

/// A pool's public key for sealing (an nkeys curve key: `X` and 55 more base32 letters).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PoolKey(String);

impl PoolKey {
    /// Checks the form of a public curve key (the edge checks its checksum when it seals).
    ///
    /// # Errors
    /// Anything that is not `X` followed by 55 base32 letters.
    pub fn parse(s: impl Into<String>) -> Result<PoolKey, String> {
        let s = s.into();
        let ok = s.len() == 56
            && s.starts_with('X')
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b));
        if ok {
            Ok(PoolKey(s))
        } else {
            Err(format!(
                "\"{s}\" is not a pool public key (56 characters starting with X, as written by `shoal-planner pool-keygen`)"
            ))
        }
    }

    /// The key as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PoolKey {
    type Error = String;
    fn try_from(s: String) -> Result<PoolKey, String> {
        PoolKey::parse(s)
    }
}

impl From<PoolKey> for String {
    fn from(k: PoolKey) -> String {
        k.0
    }
}

impl fmt::Display for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn sealed() -> Sealed {
        Sealed {
            to: SealedFor::Pool,
            key: "XKEY".into(),
            from: "XFROM".into(),
            data: vec![1, 2, 3],
        }
    }

    #[test]
    fn a_value_in_clear_cannot_be_encoded_for_the_log_or_the_wire() {
        let clear = SecretString::new("hunter2");
        assert!(codec::encode(&clear).is_err());
        assert_eq!(format!("{clear:?}"), MASK);
        assert_eq!(serde_json::to_string(&clear).expect("json"), "\"hunter2\"");
    }

    #[test]
    fn a_sealed_value_round_trips_in_messagepack_and_is_masked_in_json() {
        let s = sealed();
        let bytes = codec::encode(&s).expect("encodes");
        assert_eq!(
            codec::decode::<Sealed>("sealed", &bytes).expect("decodes"),
            s
        );
        let json = serde_json::to_string(&s).expect("json");
        assert_eq!(json, "\"********\"");
        assert_eq!(
            serde_json::from_str::<Sealed>(&json).expect("reads"),
            Sealed::masked()
        );
        assert!(!format!("{s:?}").contains("[1, 2, 3]"));
    }

    #[test]
    fn pool_keys_are_checked_for_their_form() {
        let good = format!("X{}", "A".repeat(55));
        assert!(PoolKey::parse(good).is_ok());
        assert!(PoolKey::parse("XABC").is_err());
        assert!(PoolKey::parse(format!("U{}", "A".repeat(55))).is_err());
    }
}
