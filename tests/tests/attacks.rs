//! Attack suite: one file per defence (see each file).

#[path = "attacks/nats.rs"]
mod nats;
