//! The attack suite of issue 13: one test per attack, each failing if its defence broke.

#[path = "attacks/secrets.rs"]
mod secrets;
