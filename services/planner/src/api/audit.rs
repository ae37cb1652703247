//! `GET /api/audit/export?deployment=&from=&to=`: an export of the log anyone can verify
//! offline (`shoal audit verify`), as JSON lines streamed while they are read: the records
//! `from..=to` as stored, then the planner's signature of the last one's hash. With a
//! deployment, the range runs from its first record to its last and its records are the ones
//! in scope (the records between stay: the chain needs them). Admin only: the records hold
//! the token hashes and sealed values the other endpoints leave out.

use super::{ApiError, AppState};
use crate::audit::{Range, export};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shoal_shared::DeploymentId;
use shoal_shared::api::ErrorBody;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Only this deployment: its records in scope, from its first to its last.
    deployment: Option<DeploymentId>,
    /// The first sequence (default 1).
    from: Option<u64>,
    /// The last sequence (default: the log's last durable one).
    to: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/api/audit/export",
    tag = "events",
    operation_id = "export_audit",
    params(ExportQuery),
    responses(
        (status = 200, description = "JSON lines: the records as stored, then the planner's \
            signature of the last one's hash (docs/WIRE.md, \"Audit exports\").",
         body = String, content_type = "application/x-ndjson"),
        (status = 400, description = "An unknown or invalid parameter, or an empty range.",
         body = ErrorBody),
        (status = 404, description = "No such deployment in the log.", body = ErrorBody),
        (status = 409, description = "This planner signs nothing (--insecure-no-signing).",
         body = ErrorBody),
    ),
)]
pub(super) async fn export_log(
    State(app): State<AppState>,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "{}; parameters: deployment (an id), from, to (sequence numbers)",
            e.body_text()
        ))
    })?;
    if app.signer.key().is_none() {
        return Err(ApiError::conflict(
            "this planner signs nothing (--insecure-no-signing): an export could not be verified",
        ));
    }
    let durable = *app.durable.borrow();
    let range = range(&app, &q, durable).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    let (log, signer) = (app.log.clone(), app.signer.clone());
    tokio::task::spawn_blocking(move || {
        let Some(key) = signer.key() else { return };
        if let Err(e) = export(&log, key, &range, &tx) {
            tracing::error!(error = %e, "an audit export failed midway; the client gets it without its signed head");
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(line), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

/// The range a query asks for, within the log's durable records.
async fn range(app: &AppState, q: &ExportQuery, durable: u64) -> Result<Range, ApiError> {
    let (mut from, mut to) = (q.from.unwrap_or(1).max(1), q.to.unwrap_or(durable));
    let scope = q.deployment.map(|d| format!("deployment/{d}"));
    if let (Some(id), Some(stream)) = (q.deployment, scope.clone()) {
        let bounds = app.read(move |log| Ok(log.stream_bounds(&stream)?)).await?;
        let Some((first, last)) = bounds else {
            return Err(ApiError::not_found(format!(
                "no deployment {id} in the log"
            )));
        };
        from = from.max(first);
        to = to.min(last);
    }
    to = to.min(durable);
    if from > to {
        return Err(ApiError::bad_request(format!(
            "from {from} is after to {to} (the log's durable records end at {durable})"
        )));
    }
    Ok(Range {
        from,
        to,
        scope,
        deployment: q.deployment,
    })
}
