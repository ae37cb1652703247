//! Wall-clock timestamps: milliseconds since the Unix epoch.
//!
//! Compact integers in MessagePack, RFC 3339 text in human-readable formats (JSON), so the API
//! shows `2026-11-27T18:43:39.123Z` while the log stores 9 bytes.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can write.
const MAX_RFC3339_MILLIS: i64 = 253_402_300_799_999;

/// Milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Timestamp(i64::try_from(ms).unwrap_or(i64::MAX))
    }

    /// The current time in microseconds since the epoch, for latency measurements finer than
    /// a `Timestamp`.
    pub fn now_micros() -> i64 {
        let us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        i64::try_from(us).unwrap_or(i64::MAX)
    }

    /// Milliseconds since the epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn millis_since(self, earlier: Timestamp) -> u64 {
        u64::try_from(self.0 - earlier.0).unwrap_or(0)
    }

    /// `ms` milliseconds later (saturating).
    pub fn plus_millis(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)))
    }

    /// RFC 3339 text with millisecond precision. Times outside years 1970–9999 (which only
    /// a broken clock produces) are shown clamped rather than failing.
    pub fn to_rfc3339(self) -> String {
        let ms = self.0.clamp(0, MAX_RFC3339_MILLIS);
        let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        humantime::format_rfc3339_millis(t).to_string()
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_rfc3339())
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            let t = humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)?;
            let ms = t
                .duration_since(UNIX_EPOCH)
                .map_err(serde::de::Error::custom)?
                .as_millis();
            Ok(Timestamp(
                i64::try_from(ms).map_err(serde::de::Error::custom)?,
            ))
        } else {
            Ok(Timestamp(i64::deserialize(d)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_timestamp_formats_without_panicking() {
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp(i64::MAX).to_rfc3339(), "9999-12-31T23:59:59.999Z");
        assert_eq!(Timestamp(i64::MIN).to_rfc3339(), "1970-01-01T00:00:00.000Z");
    }
}
