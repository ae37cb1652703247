//! Connecting to NATS: outbound only, reconnecting forever, every connection event logged
//! (permission denials reach the client only as server errors).

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
