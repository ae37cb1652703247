//! The pure core of the planner: projection state and how events change it (`state`),
//! commands and the events they produce (`decide`), and how a deployment advances once
//! its facts change (`react`). No I/O: everything here is tested without NATS or sled.

pub mod decide;
pub mod react;
pub mod state;

pub use decide::{Command, Rejection};
pub use state::{Changes, DocKey, State};
