//! `POST /api/pools`, `GET /api/pools`.

use super::{ApiError, AppState, JsonBody};
use crate::domain::Command;
use crate::domain::state::PoolDoc;
use crate::log::Proj;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use shoal_shared::api::{CreatePool, PoolView};
use shoal_shared::{Pool, Timestamp};

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
    let name = req.name;
    let doc: PoolDoc = app
        .read(move |log| {
            log.doc(Proj::Pools, name.as_str().as_bytes())?
                .ok_or_else(|| ApiError::not_found("pool vanished"))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(view(&app, doc))))
}

pub(super) async fn list(State(app): State<AppState>) -> Result<Json<Vec<PoolView>>, ApiError> {
    let docs: Vec<PoolDoc> = app.read(|log| Ok(log.docs(Proj::Pools)?)).await?;
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
