//! Common types of shoal, shared by the planner, the workers and the CLI.
//!
//! Nothing in this crate does I/O: it owns identifiers, validated names, the domain model,
//! the parse of a submitted deployment (`step`), the events of the log, the messages on the
//! wire, subject names, the MessagePack codec, the pure pool-resolution rule and the signatures on
//! planner messages (keys in memory; key files are read by `shoal-runtime`).
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod codec;
pub mod domain;
pub mod events;
pub mod health;
pub mod hex;
pub mod ids;
pub mod messages;
pub mod names;
pub mod package;
pub mod resolve;
pub mod secret;
pub mod signed;
pub mod step;
pub mod subjects;
pub mod time;
pub mod webhook;

pub use domain::*;
pub use health::{HealthCheck, HealthState, UnhealthyTargets};
pub use ids::*;
pub use names::*;
pub use resolve::{PoolRule, resolve_pool};
pub use time::Timestamp;

/// The deepest cause of an error ("Connection refused" rather than "error sending request"):
/// what a person can act on.
pub fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
