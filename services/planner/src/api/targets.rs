//! `POST /api/targets`, `GET /api/targets`, `GET|PUT /api/targets/{name}`, and health:
//! `GET /api/targets/{name}/health` (history), `POST /api/targets/{name}/health-check`.

use super::{ApiError, AppState, JsonBody, double_option};
use crate::domain::Command;
use crate::domain::decide::TargetUpdate;
use crate::domain::state::{HealthRecord, TargetDoc};
use crate::log::Proj;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use shoal_shared::events::CheckTrigger;
use shoal_shared::{
    CheckId, EnvironmentName, HealthCheck, HealthState, PoolName, PoolRule, RoleName, Target,
    TargetKind, TargetName, Timestamp, WorkerName,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateTarget {
    name: TargetName,
    kind: TargetKind,
    environment: EnvironmentName,
    #[serde(default)]
    roles: Vec<RoleName>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    default_pool: Option<PoolName>,
    #[serde(default)]
    health_check: Option<HealthCheck>,
    #[serde(default)]
    health_interval_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateTarget {
    #[serde(default)]
    kind: Option<TargetKind>,
    #[serde(default)]
    environment: Option<EnvironmentName>,
    #[serde(default)]
    roles: Option<Vec<RoleName>>,
    #[serde(default, deserialize_with = "double_option")]
    endpoint: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    default_pool: Option<Option<PoolName>>,
    #[serde(default, deserialize_with = "double_option")]
    health_check: Option<Option<HealthCheck>>,
    #[serde(default, deserialize_with = "double_option")]
    health_interval_secs: Option<Option<u64>>,
}

/// A target as the API shows it: its definition, the probe its checks run, and its health.
#[derive(Serialize)]
pub struct TargetView {
    #[serde(flatten)]
    target: Target,
    registered_at: Timestamp,
    updated_at: Timestamp,
    /// The probe checks run: the explicit `health_check`, or the default for the endpoint.
    probe: Option<HealthCheck>,
    health: HealthView,
}

/// A target's health now.
#[derive(Serialize)]
pub struct HealthView {
    state: HealthState,
    reason: Option<String>,
    checked_at: Option<Timestamp>,
    worker: Option<WorkerName>,
    pool: Option<PoolName>,
    rule: Option<PoolRule>,
    duration_ms: Option<u64>,
    check: Option<CheckId>,
    /// A check on its way: its id and pool.
    checking: Option<CheckingView>,
}

#[derive(Serialize)]
pub struct CheckingView {
    check: CheckId,
    pool: PoolName,
    rule: Option<PoolRule>,
    deadline_at: Option<Timestamp>,
}

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

pub(super) async fn create(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<CreateTarget>,
) -> Result<(StatusCode, Json<TargetView>), ApiError> {
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
    app.writer.execute(Command::RegisterTarget(target)).await?;
    Ok((StatusCode::CREATED, Json(view(load(&app, &name)?))))
}

pub(super) async fn update(
    State(app): State<AppState>,
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
        .execute(Command::UpdateTarget {
            name: name.clone(),
            update,
        })
        .await?;
    Ok(Json(view(load(&app, &name)?)))
}

pub(super) async fn list(State(app): State<AppState>) -> Result<Json<Vec<TargetView>>, ApiError> {
    let docs: Vec<TargetDoc> = app.log.docs(Proj::Targets)?;
    Ok(Json(docs.into_iter().map(view).collect()))
}

pub(super) async fn show(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<TargetView>, ApiError> {
    let name = TargetName::parse(name).map_err(|e| ApiError::not_found(e.to_string()))?;
    Ok(Json(view(load(&app, &name)?)))
}

/// A target's health history, oldest first.
#[derive(Serialize)]
pub struct HealthHistory {
    target: TargetName,
    state: HealthState,
    checking: Option<CheckingView>,
    history: Vec<HealthRecord>,
}

pub(super) async fn health(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<HealthHistory>, ApiError> {
    let name = TargetName::parse(name).map_err(|e| ApiError::not_found(e.to_string()))?;
    let doc = load(&app, &name)?;
    let state = doc.health_state();
    let history = doc.health_history.clone();
    Ok(Json(HealthHistory {
        target: name,
        state,
        checking: view(doc).health.checking,
        history,
    }))
}

/// `POST /api/targets/{name}/health-check`: 202 with the check on its way (a new one, or
/// the one already on its way to the target's pool).
pub(super) async fn check(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<CheckingView>), ApiError> {
    let name = TargetName::parse(name).map_err(|e| ApiError::not_found(e.to_string()))?;
    let ours = CheckId::new();
    let appended = app
        .writer
        .execute(Command::CheckTarget {
            check: ours,
            target: name.clone(),
            trigger: CheckTrigger::OnDemand,
            at: Timestamp::now(),
            deadline_secs: app.health_deadline_secs,
        })
        .await?;
    let doc = load(&app, &name)?;
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

fn load(app: &AppState, name: &TargetName) -> Result<TargetDoc, ApiError> {
    app.log
        .doc(Proj::Targets, name.as_str().as_bytes())?
        .ok_or_else(|| {
            let known: Vec<String> = app
                .log
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
        })
}

fn dedup(mut roles: Vec<RoleName>) -> Vec<RoleName> {
    roles.sort();
    roles.dedup();
    roles
}
