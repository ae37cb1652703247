//! Webhooks (admin): `POST /api/webhooks` makes one and answers its signing secret, shown
//! this once; `GET /api/webhooks` lists them (how far deliveries got, whether paused);
//! `POST /api/webhooks/{name}/resume` starts a paused one again from the record it gave up
//! on; `DELETE /api/webhooks/{name}` removes one. Deliveries: `crate::webhooks`.

use super::auth::Caller;
use super::{ApiError, AppState, JsonBody};
use crate::domain::Command;
use crate::domain::state::WebhookDoc;
use crate::domain::webhook::NewWebhook;
use crate::log::Proj;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use shoal_shared::TokenName;
use shoal_shared::api::{CreatedWebhook, ErrorBody, WebhookView};
use shoal_shared::secret::SecretString;

/// `POST /api/webhooks`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhookBody {
    name: TokenName,
    /// Where deliveries are POSTed: an http:// or https:// URL.
    url: String,
    /// Event types it wants; empty: every type.
    #[serde(default)]
    types: Vec<String>,
    /// Projects whose deployments' records it wants; empty: every project.
    #[serde(default)]
    projects: Vec<String>,
    /// Environments whose deployments' records it wants; empty: every environment.
    #[serde(default)]
    environments: Vec<String>,
    /// Deliver the records after this sequence (default: from now on).
    after: Option<u64>,
}

fn view(w: &WebhookDoc) -> WebhookView {
    WebhookView {
        name: w.name.clone(),
        url: w.url.clone(),
        types: w.types.clone(),
        projects: w.projects.clone(),
        environments: w.environments.clone(),
        delivered_through: w.delivered_through,
        paused: w.paused.clone(),
        failing: w.failing,
        created_at: w.created_at,
    }
}

/// `POST /api/webhooks`: a new webhook, with the secret its deliveries are signed with.
#[utoipa::path(
    post,
    path = "/api/webhooks",
    tag = "webhooks",
    operation_id = "create_webhook",
    request_body = NewWebhookBody,
    responses(
        (status = 201, description = "The webhook and its signing secret, shown this once.",
         body = CreatedWebhook),
        (status = 400, description = "An invalid body, URL or event type (the message names \
            the field).", body = ErrorBody),
        (status = 409, description = "The name is taken, or there are as many webhooks as \
            there may be.", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB.", body = ErrorBody),
    ),
)]
pub(super) async fn create(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(b): JsonBody<NewWebhookBody>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    let (secret, _) = super::auth::new_token();
    let secret = format!(
        "whsec_{}",
        secret.trim_start_matches(shoal_shared::auth::TOKEN_PREFIX)
    );
    let sealed = app
        .master_key
        .seal(
            &format!("webhook/{}", b.name),
            "secret",
            &SecretString::new(secret.clone()),
        )
        .map_err(|e| ApiError::internal("sealing a webhook's secret", &e))?;
    let after = b.after.unwrap_or(*app.durable.borrow());
    let w = NewWebhook {
        name: b.name.clone(),
        url: b.url,
        types: b.types,
        projects: b.projects,
        environments: b.environments,
        secret: sealed,
        after,
    };
    app.writer
        .execute_as(caller.actor(), Command::CreateWebhook(w))
        .await?;
    let doc = find(&app, b.name).await?;
    let webhook = view(&doc);
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook { webhook, secret }),
    ))
}

/// `GET /api/webhooks`: every webhook, how far its deliveries got and whether it is paused.
#[utoipa::path(
    get,
    path = "/api/webhooks",
    tag = "webhooks",
    operation_id = "list_webhooks",
    responses((status = 200, description = "Every webhook.", body = Vec<WebhookView>)),
)]
pub(super) async fn list(State(app): State<AppState>) -> Result<Json<Vec<WebhookView>>, ApiError> {
    let docs: Vec<WebhookDoc> = app.read(|log| Ok(log.docs(Proj::Webhooks)?)).await?;
    Ok(Json(docs.iter().map(view).collect()))
}

/// `POST /api/webhooks/{name}/resume`: a paused webhook goes on from the record it gave up
/// on.
#[utoipa::path(
    post,
    path = "/api/webhooks/{name}/resume",
    tag = "webhooks",
    operation_id = "resume_webhook",
    params(("name" = TokenName, Path, description = "The webhook.")),
    responses(
        (status = 200, description = "The webhook.", body = WebhookView),
        (status = 400, description = "A name that is not one.", body = ErrorBody),
        (status = 404, description = "No such webhook.", body = ErrorBody),
    ),
)]
pub(super) async fn resume(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let name = parse(&name)?;
    app.writer
        .execute_as(caller.actor(), Command::ResumeWebhook(name.clone()))
        .await?;
    Ok(Json(view(&find(&app, name).await?)))
}

/// `DELETE /api/webhooks/{name}`.
#[utoipa::path(
    delete,
    path = "/api/webhooks/{name}",
    tag = "webhooks",
    operation_id = "remove_webhook",
    params(("name" = TokenName, Path, description = "The webhook.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 400, description = "A name that is not one.", body = ErrorBody),
        (status = 404, description = "No such webhook.", body = ErrorBody),
    ),
)]
pub(super) async fn remove(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = parse(&name)?;
    app.writer
        .execute_as(caller.actor(), Command::RemoveWebhook(name))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn parse(name: &str) -> Result<TokenName, ApiError> {
    TokenName::parse(name).map_err(|e| ApiError::bad_request(format!("name: {e}")))
}

async fn find(app: &AppState, name: TokenName) -> Result<WebhookDoc, ApiError> {
    let key = name.to_string();
    app.read(move |log| Ok(log.doc(Proj::Webhooks, key.as_bytes())?))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown webhook \"{name}\"")))
}
