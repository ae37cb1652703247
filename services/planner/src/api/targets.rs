//! `POST /api/targets`, `GET /api/targets`, `GET|PUT|DELETE /api/targets/{name}`, and health:
//! `GET /api/targets/{name}/health` (history), `POST /api/targets/{name}/health-check`.

use super::auth::Caller;
use super::{ApiError, AppState, JsonBody};
use crate::domain::Command;
use crate::domain::decide::TargetUpdate;
use crate::domain::state::{HealthRecord, TargetDoc};
use crate::log::{EventLog, Proj};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use shoal_shared::api::{
    CheckingView, CreateTarget, ErrorBody, HealthHistory, HealthRecordView, HealthView, TargetView,
    UpdateTarget,
};
use shoal_shared::events::CheckTrigger;
use shoal_shared::{CheckId, RoleName, Target, TargetName, Timestamp};

fn view(doc: TargetDoc) -> TargetView {
    let h = doc.health.clone();
    TargetView {
        probe: doc.target.probe(),
        health: HealthView {
            state: doc.health_state(),
            reason: h.as_ref().and_then(|h| h.reason.clone()),
            checked_at: h.as_ref().map(|h| h.checked_at),
            worker: h.as_ref().and_then(|h| h.worker.clone()),
            pool: h.as_ref().map(|h| h.pool.clone()),
            rule: h.as_ref().and_then(|h| h.rule),
            duration_ms: h.as_ref().and_then(|h| h.duration_ms),
            check: h.as_ref().map(|h| h.check),
            checking: doc.pending_check.as_ref().map(|p| CheckingView {
                check: p.check,
                pool: p.pool.clone(),
                rule: Some(p.rule),
                deadline_at: Some(p.deadline_at),
            }),
        },
        target: doc.target,
        registered_at: doc.registered_at,
        updated_at: doc.updated_at,
    }
}

/// `POST /api/targets`: registers a target.
#[utoipa::path(
    post,
    path = "/api/targets",
    tag = "targets",
    operation_id = "create_target",
    request_body = CreateTarget,
    params(super::openapi::IdempotencyKey),
    responses(
        (status = 201, description = "The target (the same key again: the target as it is now).",
         body = TargetView, headers(("Idempotent-Replayed" = String,
            description = "`true` when this is the key's first answer again"))),
        (status = 400, description = "An invalid body, an unknown pool or an invalid health \
            check (the message names the field).", body = ErrorBody),
        (status = 409, description = "The name is taken, or the idempotency key was used for \
            another request.", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB.", body = ErrorBody),
    ),
)]
pub(super) async fn create(
    State(app): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    super::RawBody(body): super::RawBody,
) -> Result<axum::response::Response, ApiError> {
    let key = super::idempotency::key_of(&headers, &caller, &body, &app.master_key)?;
    let req: CreateTarget = super::parse_body(&body)?;
    let name = req.name.clone();
    let target = Target {
        name: req.name,
        kind: req.kind,
        environment: req.environment,
        roles: dedup(req.roles),
        endpoint: req.endpoint,
        default_pool: req.default_pool,
        health_check: req.health_check,
        health_interval_secs: req.health_interval_secs,
    };
    let cmd = super::idempotency::once(key, Command::RegisterTarget(target));
    let replayed = super::idempotency::replayed(app.writer.execute_as(caller.actor(), cmd).await)?;
    // The same key again: the target as it is now.
    let target = view(load(&app, name).await?);
    Ok(super::idempotency::created(replayed.is_some(), target))
}

/// `PUT /api/targets/{name}`: changes the fields the body has (`null` clears an optional
/// one).
#[utoipa::path(
    put,
    path = "/api/targets/{name}",
    tag = "targets",
    operation_id = "update_target",
    params(("name" = TargetName, Path, description = "The target.")),
    request_body = UpdateTarget,
    responses(
        (status = 200, description = "The target as it is now.", body = TargetView),
        (status = 400, description = "An invalid body, an unknown pool or an invalid health \
            check (the message names the field).", body = ErrorBody),
        (status = 404, description = "No such target.", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB.", body = ErrorBody),
    ),
)]
pub(super) async fn update(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<UpdateTarget>,
) -> Result<Json<TargetView>, ApiError> {
    let name = TargetName::parse(name).map_err(|e| ApiError::not_found(e.to_string()))?;
    let update = TargetUpdate {
        kind: req.kind,
        environment: req.environment,
        roles: req.roles.map(dedup),
        endpoint: req.endpoint,
        default_pool: req.default_pool,
        health_check: req.health_check,
        health_interval_secs: req.health_interval_secs,
    };
    app.writer
        .execute_as(
            caller.actor(),
            Command::UpdateTarget {
                name: name.clone(),
                update,
            },
        )
        .await?;
    Ok(Json(view(load(&app, name).await?)))
}

/// `DELETE /api/targets/{name}`: 204 once the removal is durable (its scheduled checks end
/// with it); 409 naming the unfinished deployments that use it.
#[utoipa::path(
    delete,
    path = "/api/targets/{name}",
    tag = "targets",
    operation_id = "remove_target",
    params(("name" = TargetName, Path, description = "The target.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 404, description = "No such target.", body = ErrorBody),
        (status = 409, description = "Unfinished deployments use it (the message names them).",
         body = ErrorBody),
    ),
)]
pub(super) async fn remove(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = TargetName::parse(name).map_err(|e| ApiError::not_found(e.to_string()))?;
    app.writer
        .execute_as(caller.actor(), Command::RemoveTarget(name))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/targets`: every target with its probe and health.
#[utoipa::path(
    get,
    path = "/api/targets",
    tag = "targets",
    operation_id = "list_targets",
    responses((status = 200, description = "Every target.", body = Vec<TargetView>)),
)]
pub(super) async fn list(State(app): State<AppState>) -> Result<Json<Vec<TargetView>>, ApiError> {
    let docs: Vec<TargetDoc> = app.read(|log| Ok(log.docs(Proj::Targets)?)).await?;
    Ok(Json(docs.into_iter().map(view).collect()))
}

/// `GET /api/targets/{name}`.
#[utoipa::path(
    get,
    path = "/api/targets/{name}",
    tag = "targets",
    operation_id = "show_target",
    params(("name" = TargetName, Path, description = "The target.")),
    responses(
        (status = 200, description = "The target.", body = TargetView),
        (status = 404, description = "No such target (the message names the known ones).",
         body = ErrorBody),
    ),
)]
pub(super) async fn show(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<TargetView>, ApiError> {
    let name = TargetName::parse(name).map_err(|e| ApiError::not_found(e.to_string()))?;
    Ok(Json(view(load(&app, name).await?)))
}

/// `GET /api/targets/{name}/health`: the last results of its checks, oldest first.
#[utoipa::path(
    get,
    path = "/api/targets/{name}/health",
    tag = "targets",
    operation_id = "target_health",
    params(("name" = TargetName, Path, description = "The target.")),
    responses(
        (status = 200, description = "Its health and history.", body = HealthHistory),
        (status = 404, description = "No such target.", body = ErrorBody),
    ),
)]
pub(super) async fn health(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<HealthHistory>, ApiError> {
    let name = TargetName::parse(name).map_err(|e| ApiError::not_found(e.to_string()))?;
    let doc = load(&app, name.clone()).await?;
    let state = doc.health_state();
    let history = doc.health_history.iter().map(record_view).collect();
    Ok(Json(HealthHistory {
        target: name,
        state,
        checking: view(doc).health.checking,
        history,
    }))
}

/// `POST /api/targets/{name}/health-check`: 202 with the check on its way (a new one, or
/// the one already on its way to the target's pool).
#[utoipa::path(
    post,
    path = "/api/targets/{name}/health-check",
    tag = "targets",
    operation_id = "check_target",
    params(("name" = TargetName, Path, description = "The target.")),
    responses(
        (status = 202, description = "The check on its way.", body = CheckingView),
        (status = 404, description = "No such target.", body = ErrorBody),
        (status = 409, description = "The target has no probe (checks are off, or it has no \
            endpoint).", body = ErrorBody),
    ),
)]
pub(super) async fn check(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<CheckingView>), ApiError> {
    let name = TargetName::parse(name).map_err(|e| ApiError::not_found(e.to_string()))?;
    let ours = CheckId::new();
    let appended = app
        .writer
        .execute_as(
            caller.actor(),
            Command::CheckTarget {
                check: ours,
                target: name.clone(),
                trigger: CheckTrigger::OnDemand,
                at: Timestamp::now(),
                deadline_secs: app.health_deadline_secs,
            },
        )
        .await?;
    let doc = load(&app, name).await?;
    let wanted = if appended.seqs.is_empty() {
        doc.pending_check.as_ref().map(|p| p.check)
    } else {
        Some(ours)
    };
    // Still on its way, or (a fast worker) already answered: either way, this check.
    let checking = view(doc.clone())
        .health
        .checking
        .filter(|c| Some(c.check) == wanted);
    let answered = || {
        doc.health_history
            .iter()
            .rev()
            .find(|r| Some(r.check) == wanted)
            .map(|r| CheckingView {
                check: r.check,
                pool: r.pool.clone(),
                rule: r.rule,
                deadline_at: None,
            })
    };
    let found = checking
        .or_else(answered)
        .ok_or_else(|| ApiError::not_found("no check of this target is under way"))?;
    Ok((StatusCode::ACCEPTED, Json(found)))
}

async fn load(app: &AppState, name: TargetName) -> Result<TargetDoc, ApiError> {
    app.read(move |log| {
        log.doc(Proj::Targets, name.as_str().as_bytes())?
            .ok_or_else(|| unknown(log, &name))
    })
    .await
}

/// 404 for an unknown target, naming the known ones.
fn unknown(log: &EventLog, name: &TargetName) -> ApiError {
    let known: Vec<String> = log
        .docs::<TargetDoc>(Proj::Targets)
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.target.name.to_string())
        .collect();
    ApiError::not_found(format!(
        "unknown target \"{name}\" (known: {})",
        if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        }
    ))
}

fn record_view(r: &HealthRecord) -> HealthRecordView {
    HealthRecordView {
        check: r.check,
        state: r.state,
        reason: r.reason.clone(),
        checked_at: r.checked_at,
        worker: r.worker.clone(),
        pool: r.pool.clone(),
        rule: r.rule,
        duration_ms: r.duration_ms,
        task: r.task,
    }
}

fn dedup(mut roles: Vec<RoleName>) -> Vec<RoleName> {
    roles.sort();
    roles.dedup();
    roles
}
