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
use serde_json::{Value, json};
use shoal_shared::TokenName;
use shoal_shared::secret::SecretString;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWebhookBody {
    name: TokenName,
    url: String,
    #[serde(default)]
    types: Vec<String>,
    #[serde(default)]
    projects: Vec<String>,
    #[serde(default)]
    environments: Vec<String>,
    /// Deliver the records after this sequence (default: from now on).
    after: Option<u64>,
}

fn view(w: &WebhookDoc) -> Value {
    json!({
        "name": w.name, "url": w.url, "types": w.types, "projects": w.projects,
        "environments": w.environments, "delivered_through": w.delivered_through,
        "paused": w.paused, "failing": w.failing, "created_at": w.created_at,
    })
}

pub(super) async fn create(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(b): JsonBody<NewWebhookBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
    let mut v = view(&doc);
    v["secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(v)))
}

pub(super) async fn list(State(app): State<AppState>) -> Result<Json<Vec<Value>>, ApiError> {
    let docs: Vec<WebhookDoc> = app.read(|log| Ok(log.docs(Proj::Webhooks)?)).await?;
    Ok(Json(docs.iter().map(view).collect()))
}

pub(super) async fn resume(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = parse(&name)?;
    app.writer
        .execute_as(caller.actor(), Command::ResumeWebhook(name.clone()))
        .await?;
    Ok(Json(view(&find(&app, name).await?)))
}

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
