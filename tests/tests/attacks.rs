//! The attack suite: one test per attack on shoal's trust boundaries, each with real
//! processes, each failing if its defence broke.

#[path = "attacks/api.rs"]
mod api;
#[path = "attacks/ingest.rs"]
mod ingest;
#[path = "attacks/nats.rs"]
mod nats;
#[path = "attacks/secrets.rs"]
mod secrets;
#[path = "attacks/signing.rs"]
mod signing;
