//! The `shoal` command's library: a client of the planner's HTTP API and a follower of its
//! event stream, what the command line shares with its tests (exit codes, short ids, colour,
//! checked arguments), and the launcher of a local installation (nats-server, planner,
//! workers as child processes) that `shoal demo` and the end-to-end tests share.
#![forbid(unsafe_code)]

pub mod client;
pub mod colour;
pub mod exit;
pub mod follow;
pub mod ids;
pub mod input;
pub mod local;
