//! The `shoal` command's library: a client of the planner's HTTP API, and the launcher of a
//! local installation (nats-server, planner, workers as child processes) that `shoal demo`
//! and the end-to-end tests share.
#![forbid(unsafe_code)]

pub mod client;
pub mod local;
