//! `POST /api/tokens`, `GET /api/tokens`, `DELETE /api/tokens/{name}` (admin). A new token
//! is in the answer once; the log and the projection keep only its hash, and the list shows
//! neither.

use super::auth::{Caller, new_token};
use super::{ApiError, AppState, JsonBody};
use crate::domain::Command;
use crate::domain::token::TokenDoc;
use crate::log::Proj;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use shoal_shared::TokenName;
use shoal_shared::api::{CreatedToken, ErrorBody, NewToken, TokenView};
use shoal_shared::auth::Actor;

/// `POST /api/tokens`: a new token, in the answer this once.
#[utoipa::path(
    post,
    path = "/api/tokens",
    tag = "tokens",
    operation_id = "create_token",
    request_body = NewToken,
    responses(
        (status = 201, description = "The token, shown this once.", body = CreatedToken),
        (status = 400, description = "An invalid body (the message names the field).",
         body = ErrorBody),
        (status = 409, description = "The name is taken.", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB.", body = ErrorBody),
    ),
)]
pub(super) async fn create(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let (token, hash) = new_token();
    let created_by = caller
        .actor()
        .unwrap_or_else(|| Actor::Token(caller.name.clone()));
    app.writer
        .execute_as(
            caller.actor(),
            Command::CreateToken {
                name: req.name.clone(),
                role: req.role,
                hash,
                created_by,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            name: req.name,
            role: req.role,
            token,
        }),
    ))
}

/// `GET /api/tokens`: every token's name, role and maker (never the token nor its hash).
#[utoipa::path(
    get,
    path = "/api/tokens",
    tag = "tokens",
    operation_id = "list_tokens",
    responses((status = 200, description = "Every token, by name.", body = Vec<TokenView>)),
)]
pub(super) async fn list(State(app): State<AppState>) -> Result<Json<Vec<TokenView>>, ApiError> {
    let docs: Vec<TokenDoc> = app.read(|log| Ok(log.docs(Proj::Tokens)?)).await?;
    let mut views: Vec<TokenView> = docs
        .into_iter()
        .map(|d| TokenView {
            name: d.name,
            role: d.role,
            created_at: d.created_at,
            created_by: d.created_by,
        })
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(views))
}

/// 204 once the revocation is durable: from then on the token gets 401.
#[utoipa::path(
    delete,
    path = "/api/tokens/{name}",
    tag = "tokens",
    operation_id = "revoke_token",
    params(("name" = TokenName, Path, description = "The token.")),
    responses(
        (status = 204, description = "Revoked."),
        (status = 404, description = "No such token (the message names the known ones).",
         body = ErrorBody),
        (status = 409, description = "It is the last admin token.", body = ErrorBody),
    ),
)]
pub(super) async fn revoke(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = TokenName::parse(name).map_err(|e| ApiError::not_found(e.to_string()))?;
    app.writer
        .execute_as(caller.actor(), Command::RevokeToken(name))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
