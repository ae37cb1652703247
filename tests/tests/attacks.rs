//! The attack suite: one test per attack on a trust boundary, each against real processes and
//! failing if its defence broke. One module per part of the defence.

#[path = "attacks/signing.rs"]
mod signing;
