//! `POST /api/pools`, `GET /api/pools`.

use super::{ApiError, AppState, JsonBody};
use crate::domain::Command;
use crate::domain::state::PoolDoc;
use crate::log::Proj;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use shoal_shared::{Pool, PoolName, RegionName, Timestamp};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreatePool {
    name: PoolName,
    #[serde(default)]
    region: Option<RegionName>,
    #[serde(default)]
    description: Option<String>,
}

/// A pool as the API shows it.
#[derive(Serialize)]
pub struct PoolView {
    name: PoolName,
    region: Option<RegionName>,
    description: Option<String>,
    registered_at: Timestamp,
    is_default: bool,
    workers_online: usize,
}

pub(super) async fn create(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<CreatePool>,
) -> Result<(StatusCode, Json<PoolView>), ApiError> {
    let pool = Pool {
        name: req.name.clone(),
        region: req.region,
        description: req.description,
    };
    // Its queue consumer is created by the effect of the registration, once it is durable.
    app.writer.execute(Command::RegisterPool(pool)).await?;
    let doc: PoolDoc = app
        .log
        .doc(Proj::Pools, req.name.as_str().as_bytes())?
        .ok_or_else(|| ApiError::not_found("pool vanished"))?;
    Ok((StatusCode::CREATED, Json(view(&app, doc))))
}

pub(super) async fn list(State(app): State<AppState>) -> Result<Json<Vec<PoolView>>, ApiError> {
    let docs: Vec<PoolDoc> = app.log.docs(Proj::Pools)?;
    Ok(Json(docs.into_iter().map(|d| view(&app, d)).collect()))
}

fn view(app: &AppState, d: PoolDoc) -> PoolView {
    let online = app.liveness.online_per_pool(Timestamp::now());
    PoolView {
        workers_online: online.get(&d.name).copied().unwrap_or(0),
        is_default: d.name == app.default_pool,
        name: d.name,
        region: d.region,
        description: d.description,
        registered_at: d.registered_at,
    }
}
