//! `GET /api/workers`: workers that joined (from the log) with their liveness (heartbeats);
//! `POST /api/workers/{name}/drain|resume`: maintenance mode.

use super::auth::Caller;
use super::{ApiError, AppState};
use crate::domain::Command;
use crate::domain::state::WorkerDoc;
use crate::liveness::Live;
use crate::log::Proj;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use shoal_shared::api::{DrainView, ErrorBody, WorkerHealth, WorkerStatus, WorkerView};
use shoal_shared::{Timestamp, WorkerName};

/// `GET /api/workers`: every worker that joined, with its liveness.
#[utoipa::path(
    get,
    path = "/api/workers",
    tag = "workers",
    operation_id = "list_workers",
    responses((status = 200, description = "Every worker that joined.", body = Vec<WorkerView>)),
)]
pub(super) async fn list(State(app): State<AppState>) -> Result<Json<Vec<WorkerView>>, ApiError> {
    let docs: Vec<WorkerDoc> = app.read(|log| Ok(log.docs(Proj::Workers)?)).await?;
    let live = app.liveness.snapshot();
    let now = Timestamp::now();
    let views = docs
        .into_iter()
        .map(|d| {
            let l = live.get(&d.name);
            let left = match (d.left_at, l) {
                (Some(left), Some(l)) => left >= l.last_seen,
                (Some(_), None) => true,
                _ => false,
            };
            let online = !left && l.is_some_and(|l| l.online(now));
            // Offline: missed `liveness::MISSED_BEATS` heartbeats in a row.
            let status = match (left, online, l.is_some_and(|l| l.draining)) {
                (true, _, _) => WorkerStatus::Left,
                (false, false, _) => WorkerStatus::Offline,
                (false, true, true) => WorkerStatus::Draining,
                (false, true, false) => WorkerStatus::Online,
            };
            let warnings = l.map(|l| l.warnings.clone()).unwrap_or_default();
            let ready = online && l.is_some_and(Live::ready);
            let health = match (online, ready, warnings.is_empty()) {
                (false, _, _) => WorkerHealth::Offline,
                (true, false, _) => WorkerHealth::NotReady,
                (true, true, true) => WorkerHealth::Healthy,
                (true, true, false) => WorkerHealth::HealthyWithWarnings,
            };
            WorkerView {
                health,
                warnings,
                ready,
                not_ready_reason: l
                    .filter(|l| online && !l.ready())
                    .and_then(|l| l.not_ready_reason.clone()),
                free_disk_mb: l.and_then(|l| l.free_disk_mb),
                slots: l.map_or(d.slots, |l| l.slots),
                busy_slots: if online { l.map_or(0, |l| l.busy) } else { 0 },
                status,
                drain_requested: d.draining,
                // Heartbeats are not kept across planner restarts: until the next one, the
                // last recorded fact about the worker stands in.
                last_seen: l.map(|l| l.last_seen).or(d.left_at).or(Some(d.joined_at)),
                region: d.region,
                pool: d.pool,
                name: d.name,
                joined_at: d.joined_at,
                left_at: d.left_at,
                version: d.version,
            }
        })
        .collect();
    Ok(Json(views))
}

/// `POST /api/workers/{name}/drain`: maintenance mode on.
#[utoipa::path(
    post,
    path = "/api/workers/{name}/drain",
    tag = "workers",
    operation_id = "drain_worker",
    params(("name" = WorkerName, Path, description = "The worker.")),
    responses(
        (status = 202, description = "Recorded; the worker follows within a heartbeat.",
         body = DrainView),
        (status = 400, description = "A name that is not one.", body = ErrorBody),
        (status = 404, description = "No such worker.", body = ErrorBody),
    ),
)]
pub(super) async fn drain(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<DrainView>), ApiError> {
    set_draining(app, &caller, &name, true).await
}

/// `POST /api/workers/{name}/resume`: maintenance mode off.
#[utoipa::path(
    post,
    path = "/api/workers/{name}/resume",
    tag = "workers",
    operation_id = "resume_worker",
    params(("name" = WorkerName, Path, description = "The worker.")),
    responses(
        (status = 202, description = "Recorded; the worker follows within a heartbeat.",
         body = DrainView),
        (status = 400, description = "A name that is not one.", body = ErrorBody),
        (status = 404, description = "No such worker.", body = ErrorBody),
    ),
)]
pub(super) async fn resume(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<DrainView>), ApiError> {
    set_draining(app, &caller, &name, false).await
}

/// Records the wanted state; the worker is told at once, and again at every heartbeat
/// that shows otherwise. 202: the worker follows within a heartbeat.
async fn set_draining(
    app: AppState,
    caller: &Caller,
    name: &str,
    drain: bool,
) -> Result<(StatusCode, Json<DrainView>), ApiError> {
    let worker =
        WorkerName::parse(name).map_err(|e| ApiError::bad_request(format!("name: {e}")))?;
    app.writer
        .execute_as(
            caller.actor(),
            Command::DrainWorker {
                worker: worker.clone(),
                drain,
            },
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(DrainView {
            name: worker,
            drain_requested: drain,
        }),
    ))
}
