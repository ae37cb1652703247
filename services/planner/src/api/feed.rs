//! `PUT /api/feed/consumers/{name}`: makes (or moves) integrator `name`'s durable pull
//! consumer of the event feed, `feed-<name>`, so that it delivers the records after `after`
//! (a log sequence) from the frame that holds the next one (the integrator skips those of
//! its records up to `after`), on `filter` if given (a subject of the feed, e.g.
//! `shoal.events.deployment.>`). Integrators' NATS identities may read
//! through their own consumer but not make one: a consumer they made could deliver the feed
//! onto any subject. Admin only; recorded as `FeedConsumerSet`.

use super::auth::Caller;
use super::{ApiError, AppState, JsonBody};
use crate::domain::Command;
use async_nats::jetstream::consumer;
use async_nats::jetstream::stream::ConsumerErrorKind;
use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use shoal_shared::api::{ErrorBody, FeedConsumerView};

/// `PUT /api/feed/consumers/{name}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    /// Deliver the records after this sequence (default 0: from the first).
    #[serde(default)]
    after: u64,
    /// A subject of the feed (e.g. `shoal.events.deployment.>`); none: all of it.
    filter: Option<String>,
}

/// How long a delivered record may go unacked before it is delivered again.
const ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

#[utoipa::path(
    put,
    path = "/api/feed/consumers/{name}",
    tag = "events",
    operation_id = "set_feed_consumer",
    params(("name" = String, Path, description = "The integrator (a name: a-z, 0-9, '-', '_').")),
    request_body = ConsumerSpec,
    responses(
        (status = 200, description = "The consumer, made or moved.", body = FeedConsumerView),
        (status = 400, description = "An invalid name, body, filter or sequence (the message \
            names the field).", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB.", body = ErrorBody),
        (status = 503, description = "The broker did not make the consumer.", body = ErrorBody),
    ),
)]
pub(super) async fn set_consumer(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(spec): JsonBody<ConsumerSpec>,
) -> Result<Json<FeedConsumerView>, ApiError> {
    shoal_shared::names::check_name("integrator", &name)
        .map_err(|e| ApiError::bad_request(format!("name: {e}")))?;
    let all = app.subjects.events_all();
    let root = all.trim_end_matches('>');
    if let Some(f) = &spec.filter
        && !(f == &all || f.starts_with(root) && !f.contains(' '))
    {
        return Err(ApiError::bad_request(format!(
            "filter: \"{f}\" is not a subject of the event feed (they start with {root}, e.g. {root}deployment.>)"
        )));
    }
    let head = *app.durable.borrow();
    if spec.after > head {
        return Err(ApiError::bad_request(format!(
            "after: the log's durable records end at {head}"
        )));
    }
    let consumer = shoal_trust::permissions::feed_consumer(&name);
    let unavailable = |e: &dyn std::fmt::Display| {
        ApiError::unavailable(format!("the broker did not make the consumer: {e}"))
    };
    let mut stream = app
        .js
        .get_stream(app.subjects.events_stream())
        .await
        .map_err(|e| unavailable(&e))?;
    let start_sequence = crate::event_feed::start_after(&mut stream, spec.after)
        .await
        .map_err(|e| unavailable(&e))?;
    // Moving a consumer's start means making it again.
    if let Err(e) = stream.delete_consumer(&consumer).await {
        let gone = matches!(e.kind(), ConsumerErrorKind::JetStream(j)
            if j.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND);
        if !gone {
            return Err(unavailable(&e));
        }
    }
    let config = consumer::pull::Config {
        durable_name: Some(consumer.clone()),
        description: Some(format!("event feed of integrator {name}")),
        deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence },
        filter_subject: spec.filter.clone().unwrap_or_default(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: 10_000,
        ..Default::default()
    };
    stream
        .create_consumer(config)
        .await
        .map_err(|e| unavailable(&e))?;
    let cmd = Command::RecordFeedConsumer {
        integrator: name.clone(),
        consumer: consumer.clone(),
        after: spec.after,
        filter: spec.filter.clone(),
    };
    app.writer.execute_as(caller.actor(), cmd).await?;
    Ok(Json(FeedConsumerView {
        integrator: name,
        stream: app.subjects.events_stream(),
        consumer,
        after: spec.after,
        filter: spec.filter,
    }))
}
