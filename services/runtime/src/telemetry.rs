//! Logging set-up of the shoal binaries: human-readable lines on stderr, coloured only on a
//! terminal, filtered by `RUST_LOG` (default `info`, NATS client internals at `warn`).

use std::io::IsTerminal;

/// Installs the global tracing subscriber.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
