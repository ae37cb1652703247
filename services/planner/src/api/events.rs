//! `GET /api/events?stream=&after=&limit=`: the audit trail, read from the log itself.

use super::{ApiError, AppState};
use crate::log::decode_event;
use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use shoal_shared::api::EventView;
use shoal_shared::events::Envelope;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    stream: Option<String>,
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

pub(super) async fn list(
    State(app): State<AppState>,
    query: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<EventView>>, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "{}; parameters: stream, after (a sequence number), limit (1-{MAX_LIMIT})",
            e.body_text()
        ))
    })?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and {MAX_LIMIT}"
        )));
    }
    // Decoding up to MAX_LIMIT events is work too: it stays on the blocking thread.
    let views = app
        .read(move |log| {
            let records = match &q.stream {
                Some(stream) if !stream.is_empty() => log.read_stream(stream, q.after, limit)?,
                _ => log.read(q.after, limit)?,
            };
            Ok(records.into_iter().map(view).collect())
        })
        .await?;
    Ok(Json(views))
}

/// The API view of a record: the event's fields under `data`.
pub fn view(env: Envelope) -> EventView {
    let data = match decode_event(&env) {
        Ok(event) => match serde_json::to_value(&event) {
            Ok(serde_json::Value::Object(mut m)) if m.len() == 1 => {
                let mut data = m.remove(&env.event_type).unwrap_or(serde_json::Value::Null);
                // A token's hash stays in the log (replay rebuilds the token store from it)
                // but is shown to no one: the API says which token, never what it hashes to.
                if let Some(fields) = data.as_object_mut() {
                    fields.remove("hash");
                }
                data
            }
            Ok(other) => other,
            Err(e) => serde_json::json!({ "undisplayable": e.to_string() }),
        },
        Err(e) => serde_json::json!({ "undecodable": e.to_string() }),
    };
    EventView {
        seq: env.seq,
        event_id: env.event_id,
        time: env.time,
        stream: env.stream,
        event_type: env.event_type,
        schema_version: env.schema_version,
        correlation_id: env.correlation_id,
        causation_id: env.causation_id,
        data,
        prev_hash: env.prev_hash.iter().map(|b| format!("{b:02x}")).collect(),
        actor: env.actor,
    }
}
