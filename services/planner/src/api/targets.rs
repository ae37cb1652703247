//! `POST /api/targets`, `GET /api/targets`, `GET|PUT /api/targets/{name}`.

use super::{ApiError, AppState, JsonBody, double_option};
use crate::domain::Command;
use crate::domain::decide::TargetUpdate;
use crate::domain::state::TargetDoc;
use crate::log::Proj;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use shoal_shared::{EnvironmentName, PoolName, RoleName, Target, TargetKind, TargetName};

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
}

pub(super) async fn create(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<CreateTarget>,
) -> Result<(StatusCode, Json<TargetDoc>), ApiError> {
    let name = req.name.clone();
    let target = Target {
        name: req.name,
        kind: req.kind,
        environment: req.environment,
        roles: dedup(req.roles),
        endpoint: req.endpoint,
        default_pool: req.default_pool,
    };
    app.writer.execute(Command::RegisterTarget(target)).await?;
    Ok((StatusCode::CREATED, Json(load(&app, &name)?)))
}

pub(super) async fn update(
    State(app): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<UpdateTarget>,
) -> Result<Json<TargetDoc>, ApiError> {
    let name = TargetName::parse(name).map_err(|e| ApiError::not_found(e.to_string()))?;
    let update = TargetUpdate {
        kind: req.kind,
        environment: req.environment,
        roles: req.roles.map(dedup),
        endpoint: req.endpoint,
        default_pool: req.default_pool,
    };
    app.writer
        .execute(Command::UpdateTarget {
            name: name.clone(),
            update,
        })
        .await?;
    Ok(Json(load(&app, &name)?))
}

pub(super) async fn list(State(app): State<AppState>) -> Result<Json<Vec<TargetDoc>>, ApiError> {
    Ok(Json(app.log.docs(Proj::Targets)?))
}

pub(super) async fn show(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<TargetDoc>, ApiError> {
    let name = TargetName::parse(name).map_err(|e| ApiError::not_found(e.to_string()))?;
    Ok(Json(load(&app, &name)?))
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
