//! `POST /api/pools`, `GET /api/pools`, `DELETE /api/pools/{name}`.

use super::auth::Caller;
use super::{ApiError, AppState, JsonBody};
use crate::domain::Command;
use crate::domain::state::{PoolDoc, WorkerDoc};
use crate::log::Proj;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use shoal_shared::api::{CreatePool, ErrorBody, PoolView, SetPoolKey};
use shoal_shared::{Pool, PoolName, Timestamp, WorkerName};

/// `POST /api/pools`: registers a pool (with its sealing key, if given); its queue consumer
/// is created by the effect of the registration, once it is durable.
#[utoipa::path(
    post,
    path = "/api/pools",
    tag = "pools",
    operation_id = "create_pool",
    request_body = CreatePool,
    params(super::openapi::IdempotencyKey),
    responses(
        (status = 201, description = "The pool (the same key again: the pool as it is now).",
         body = PoolView, headers(("Idempotent-Replayed" = String,
            description = "`true` when this is the key's first answer again"))),
        (status = 400, description = "An invalid body.", body = ErrorBody),
        (status = 404, description = "The pool went before its key was set.", body = ErrorBody),
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
    let req: CreatePool = super::parse_body(&body)?;
    let pool = Pool {
        name: req.name.clone(),
        region: req.region,
        description: req.description,
    };
    // Its queue consumer is created by the effect of the registration, once it is durable.
    let cmd = super::idempotency::once(key, Command::RegisterPool(pool));
    let replayed =
        super::idempotency::replayed(app.writer.execute_as(caller.actor(), cmd).await)?.is_some();
    if let Some(key) = req.sealing_key.filter(|_| !replayed) {
        let pool = req.name.clone();
        app.writer
            .execute_as(caller.actor(), Command::SetPoolKey { pool, key })
            .await?;
    }
    let name = req.name;
    let doc: PoolDoc = app
        .read(move |log| {
            log.doc(Proj::Pools, name.as_str().as_bytes())?
                .ok_or_else(|| ApiError::not_found("pool vanished"))
        })
        .await?;
    // The same key again: the pool as it is now.
    Ok(super::idempotency::created(replayed, view(&app, doc)))
}

/// `GET /api/pools`: every pool with its workers online.
#[utoipa::path(
    get,
    path = "/api/pools",
    tag = "pools",
    operation_id = "list_pools",
    responses((status = 200, description = "Every pool.", body = Vec<PoolView>)),
)]
pub(super) async fn list(State(app): State<AppState>) -> Result<Json<Vec<PoolView>>, ApiError> {
    let docs: Vec<PoolDoc> = app.read(|log| Ok(log.docs(Proj::Pools)?)).await?;
    Ok(Json(docs.into_iter().map(|d| view(&app, d)).collect()))
}

/// `DELETE /api/pools/{name}`: 204 once the removal is durable (its queue consumer is
/// deleted by the effect of it); 409 naming what still uses the pool.
#[utoipa::path(
    delete,
    path = "/api/pools/{name}",
    tag = "pools",
    operation_id = "remove_pool",
    params(("name" = PoolName, Path, description = "The pool.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 404, description = "No such pool.", body = ErrorBody),
        (status = 409, description = "The pool is in use (the message says by what).",
         body = ErrorBody),
    ),
)]
pub(super) async fn remove(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = PoolName::parse(name).map_err(|e| ApiError::not_found(e.to_string()))?;
    let online = online_workers(&app, &name).await?;
    app.writer
        .execute_as(caller.actor(), Command::RemovePool { name, online })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The pool's workers online now (draining ones too): heartbeating, and not left since.
async fn online_workers(app: &AppState, pool: &PoolName) -> Result<Vec<WorkerName>, ApiError> {
    let docs: Vec<WorkerDoc> = app.read(|log| Ok(log.docs(Proj::Workers)?)).await?;
    let live = app.liveness.snapshot();
    let now = Timestamp::now();
    let mut online: Vec<WorkerName> = live
        .iter()
        .filter(|(_, l)| &l.pool == pool && l.online(now))
        .filter(|(w, l)| {
            !docs
                .iter()
                .any(|d| &d.name == *w && d.left_at.is_some_and(|left| left >= l.last_seen))
        })
        .map(|(w, _)| w.clone())
        .collect();
    online.sort();
    Ok(online)
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
        sealing_key: d.sealing_key,
    }
}

/// `PUT /api/pools/{name}/key`: sets or rotates the public key the pool's sensitive
/// variables are sealed to; answers the pool.
#[utoipa::path(
    put,
    path = "/api/pools/{name}/key",
    tag = "pools",
    operation_id = "set_pool_key",
    params(("name" = PoolName, Path, description = "The pool.")),
    request_body = SetPoolKey,
    responses(
        (status = 200, description = "The pool with its new key.", body = PoolView),
        (status = 400, description = "An invalid body.", body = ErrorBody),
        (status = 404, description = "No such pool.", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB.", body = ErrorBody),
    ),
)]
pub(super) async fn set_key(
    State(app): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<SetPoolKey>,
) -> Result<Json<PoolView>, ApiError> {
    let pool = PoolName::parse(name).map_err(|e| ApiError::not_found(e.to_string()))?;
    app.writer
        .execute(Command::SetPoolKey {
            pool: pool.clone(),
            key: req.key,
        })
        .await?;
    let doc: PoolDoc = app
        .read(move |log| {
            log.doc(Proj::Pools, pool.as_str().as_bytes())?
                .ok_or_else(|| ApiError::not_found("pool vanished"))
        })
        .await?;
    Ok(Json(view(&app, doc)))
}
