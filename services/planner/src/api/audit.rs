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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    deployment: Option<DeploymentId>,
    from: Option<u64>,
    to: Option<u64>,
}

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
