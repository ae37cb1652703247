//! Validated names of pools, workers, targets, environments, roles, regions, packages and API
//! tokens.
//!
//! Every name is a single, safe NATS subject token (lowercase letters, digits, `-` and `_`,
//! 1 to 63 characters), so it can be put into a subject or a consumer name without escaping.
//! Names are parsed once at the edge; after that the type guarantees them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest allowed name.
pub const MAX_NAME_LEN: usize = 63;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} name is empty; use 1-{MAX_NAME_LEN} of a-z, 0-9, '-' and '_'")]
    Empty { kind: &'static str },
    #[error("{kind} name {value:?} is {len} characters long; the limit is {MAX_NAME_LEN}")]
    TooLong {
        kind: &'static str,
        value: String,
        len: usize,
    },
    #[error(
        "{kind} name {value:?} contains {ch:?}; use only lowercase letters a-z, digits, '-' and '_'"
    )]
    BadChar {
        kind: &'static str,
        value: String,
        ch: char,
    },
}

/// Checks that `value` is a safe subject token; `kind` names the thing in the error.
///
/// # Errors
/// Empty, longer than [`MAX_NAME_LEN`], or containing anything but `a-z0-9-_`.
pub fn check_name(kind: &'static str, value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { kind });
    }
    let len = value.chars().count();
    if len > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            value: value.to_owned(),
            len,
        });
    }
    if let Some(ch) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(NameError::BadChar {
            kind,
            value: value.to_owned(),
            ch,
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// What this name names, as used in error messages.
            pub const KIND: &'static str = $kind;

            /// Parses a name.
            ///
            /// # Errors
            /// See [`check_name`].
            pub fn parse(value: impl Into<String>) -> Result<Self, NameError> {
                let value = value.into();
                check_name($kind, &value)?;
                Ok(Self(value))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, NameError> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A worker pool, e.g. `eu-west`.
    PoolName,
    "pool"
);
name_type!(
    /// A worker, unique across pools.
    WorkerName,
    "worker"
);
name_type!(
    /// A deployment target.
    TargetName,
    "target"
);
name_type!(
    /// An environment, e.g. `production`.
    EnvironmentName,
    "environment"
);
name_type!(
    /// A role (tag) of targets, e.g. `web`.
    RoleName,
    "role"
);
name_type!(
    /// A region, e.g. `eu`.
    RegionName,
    "region"
);
name_type!(
    /// The id of a package in the feed, e.g. `web`.
    PackageId,
    "package"
);
name_type!(
    /// The name of an API token, e.g. `ci`; recorded as the actor of what it does.
    TokenName,
    "token"
);

impl WorkerName {
    /// Builds a worker name from a host name plus a random suffix, replacing characters that
    /// are not allowed and shortening it so the result is always valid.
    pub fn from_host(host: &str, suffix: &str) -> WorkerName {
        let mut base: String = host
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let room = MAX_NAME_LEN - suffix.len().min(16) - 1;
        base.truncate(room);
        if base.is_empty() {
            base.push_str("worker");
        }
        let suffix: String = suffix
            .chars()
            .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            .take(16)
            .collect();
        WorkerName(format!("{base}-{suffix}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_takes_the_width_it_is_formatted_with() {
        let pool = PoolName::parse("eu-west").expect("pool");
        assert_eq!(format!("[{pool:<9}]"), "[eu-west  ]");
        assert_eq!(format!("[{pool}]"), "[eu-west]");
    }

    #[test]
    fn accepts_safe_tokens() {
        for ok in ["eu-west", "a", "us_east_2", "0", &"x".repeat(63)] {
            assert!(PoolName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_unsafe_tokens_with_the_reason() {
        let e = PoolName::parse("eu.west").expect_err("refused");
        assert_eq!(
            e.to_string(),
            "pool name \"eu.west\" contains '.'; use only lowercase letters a-z, digits, '-' and '_'"
        );
        assert!(matches!(PoolName::parse(""), Err(NameError::Empty { .. })));
        assert!(matches!(
            PoolName::parse("x".repeat(64)),
            Err(NameError::TooLong { len: 64, .. })
        ));
        for bad in ["EU", "a b", "a*", "a>", "ü", "a/b"] {
            assert!(PoolName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn worker_names_from_any_host_are_valid() {
        for host in ["My.Host.Example.COM", "", &"h".repeat(200), "node_1"] {
            let w = WorkerName::from_host(host, "a1b2c3");
            assert!(WorkerName::parse(w.as_str()).is_ok(), "{w}");
        }
    }
}
