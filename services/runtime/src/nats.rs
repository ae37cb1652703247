//! Connecting to NATS: outbound only, reconnecting forever, every connection event logged
//! (permission denials reach the client only as server errors); binding a durable pull
//! consumer, with the broker's error kept as it came.

use std::time::Duration;

/// Connects to `url` as `name`. With `inbox_prefix`, replies come on that prefix only, so
/// per-pool permissions can allow a worker exactly its own inboxes.
///
/// # Errors
/// Only for an invalid URL; an unreachable server is retried in the background.
pub async fn connect(
    url: &str,
    name: &str,
    inbox_prefix: Option<String>,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let label = name.to_owned();
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .ping_interval(Duration::from_secs(10))
        .event_callback(move |event| {
            let label = label.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!(client = %label, "connected to NATS")
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!(client = %label, "disconnected from NATS; reconnecting")
                    }
                    async_nats::Event::Draining | async_nats::Event::Closed => {
                        tracing::info!(client = %label, event = %event, "NATS connection closing")
                    }
                    other => {
                        tracing::warn!(client = %label, event = %other, "NATS connection event")
                    }
                }
            }
        });
    if let Some(prefix) = inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    options.connect(url).await
}

/// Why a durable pull consumer could not be bound; the broker's own error, as it said it.
/// Either way the caller retries: the stream or consumer may not be set up yet (the planner
/// creates them), or the broker may be unreachable for now.
#[derive(Debug)]
pub enum ConsumerLookupError {
    /// The stream could not be looked up.
    Stream(async_nats::jetstream::context::GetStreamError),
    /// The stream exists; its consumer could not be looked up (async-nats boxes this error).
    Consumer(Box<dyn std::error::Error + Send + Sync>),
}

// Transparent: it displays as the broker's error and has that error's source.
impl std::fmt::Display for ConsumerLookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsumerLookupError::Stream(e) => e.fmt(f),
            ConsumerLookupError::Consumer(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ConsumerLookupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConsumerLookupError::Stream(e) => e.source(),
            ConsumerLookupError::Consumer(e) => e.source(),
        }
    }
}

/// Binds the durable pull consumer `consumer` of `stream`.
///
/// # Errors
/// The stream or the consumer is missing, or the broker did not answer.
pub async fn pull_consumer(
    js: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
) -> Result<async_nats::jetstream::consumer::PullConsumer, ConsumerLookupError> {
    let stream = js
        .get_stream(stream)
        .await
        .map_err(ConsumerLookupError::Stream)?;
    stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(consumer)
        .await
        .map_err(ConsumerLookupError::Consumer)
}
