//! shoal-runtime: the process plumbing every shoal service binary needs and none of them
//! owns — logging set-up ([`telemetry`]), shutdown on SIGINT/SIGTERM as one root
//! cancellation token ([`signal`]) and the NATS connection with its event logging
//! ([`nats`]), the keys of sensitive variables ([`secrets`]) and the key files of message
//! signing ([`keys`]). The planner (with its built-in worker) and the worker binary use the
//! same code, so both log, stop and connect alike.
#![forbid(unsafe_code)]

pub mod keys;
pub mod nats;
pub mod nats_auth;
pub mod private_file;
pub mod secrets;
pub mod signal;
pub mod telemetry;
