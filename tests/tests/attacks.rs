//! Attacks on shoal's trust boundaries, one test per attack, each against real processes.

#[path = "attacks/api.rs"]
mod api;
