//! The HTTP API (JSON). Writes go through the log writer and are answered after their events
//! are durable; reads come from the committed projection trees. Errors are
//! `{"error": "<what is wrong and what to do>"}` with 400, 404, 409 (500 for failures of the
//! planner itself).

mod deployments;
mod events;
mod pools;
mod targets;
mod workers;

use crate::domain::Rejection;
use crate::liveness::Liveness;
use crate::log::writer::{WriteError, WriterHandle};
use crate::log::{EventLog, LogError};
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::de::DeserializeOwned;
use shoal_shared::PoolName;
use shoal_shared::subjects::Subjects;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub writer: WriterHandle,
    pub log: EventLog,
    pub liveness: Liveness,
    pub default_pool: PoolName,
    pub subjects: Subjects,
    /// Seconds a health check may wait for a worker before the target is `unavailable`.
    pub health_deadline_secs: u64,
    /// Cancelled when the planner stops; ends background work started by handlers.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/pools", get(pools::list).post(pools::create))
        .route("/api/targets", get(targets::list).post(targets::create))
        .route(
            "/api/targets/{name}",
            get(targets::show).put(targets::update),
        )
        .route("/api/targets/{name}/health", get(targets::health))
        .route(
            "/api/targets/{name}/health-check",
            axum::routing::post(targets::check),
        )
        .route(
            "/api/deployments",
            get(deployments::list).post(deployments::create),
        )
        .route("/api/deployments/{id}", get(deployments::show))
        .route(
            "/api/deployments/{id}/cancel",
            axum::routing::post(deployments::cancel),
        )
        .route(
            "/api/deployments/{id}/tasks/{task}/log",
            get(deployments::task_log),
        )
        .route("/api/workers", get(workers::list))
        .route(
            "/api/workers/{name}/drain",
            axum::routing::post(workers::drain),
        )
        .route(
            "/api/workers/{name}/resume",
            axum::routing::post(workers::resume),
        )
        .route("/api/events", get(events::list))
        .route("/api/status", get(status))
        .route("/healthz", get(|| async { "ok" }))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .fallback(|| async {
            ApiError::not_found("no such endpoint; see the API reference in README.md")
        })
        .with_state(state)
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// 400 with a message saying what is wrong.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> ApiError {
        match e {
            WriteError::Rejected(Rejection::Invalid(m)) => ApiError::bad_request(m),
            WriteError::Rejected(Rejection::NotFound(m)) => ApiError::not_found(m),
            WriteError::Rejected(Rejection::Conflict(m)) => ApiError {
                status: StatusCode::CONFLICT,
                message: m,
            },
            WriteError::Unavailable(m) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: m,
            },
        }
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> ApiError {
        tracing::error!(error = %e, "event log read failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: e.to_string(),
        }
    }
}

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A JSON request body, parsed with [`parse_body`]; every failure is a JSON error answer.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let body = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError {
                status: e.status(),
                message: if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    format!("request body is larger than the limit of {MAX_BODY_BYTES} bytes")
                } else {
                    format!("cannot read the request body: {}", e.body_text())
                },
            })?;
        parse_body(&body).map(JsonBody)
    }
}

/// Parses a JSON body, naming the field at fault (serde's unknown-field and invalid-value
/// errors, prefixed with the path of the field).
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::bad_request(format!("malformed JSON: {inner}"));
        }
        // The path names the field; a position in a body the user may not have written (the
        // CLI builds it from TOML) would only mislead.
        let text = inner.to_string();
        let text = text
            .rfind(" at line ")
            .map_or(text.as_str(), |i| &text[..i]);
        if path == "." || path.is_empty() {
            ApiError::bad_request(format!("invalid request body: {text}"))
        } else {
            ApiError::bad_request(format!("{path}: {text}"))
        }
    })
}

/// Deserializes a field that may be absent (`None`), `null` (`Some(None)`) or set.
pub fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

/// What the planner holds: the log's last sequence, and the unfinished deployments and their
/// tasks the writer keeps in memory (finished ones stay on disk).
async fn status(
    axum::extract::State(app): axum::extract::State<AppState>,
) -> axum::Json<serde_json::Value> {
    let (deployments, tasks, seq) = app.writer.in_memory();
    axum::Json(serde_json::json!({
        "log_seq": seq,
        "deployments_in_memory": deployments,
        "tasks_in_memory": tasks,
    }))
}
