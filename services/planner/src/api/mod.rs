//! The HTTP API (JSON). Writes go through the log writer and are answered after their events
//! are durable; reads come from the committed projection trees, on tokio's blocking threads
//! ([`AppState::read`]) so a slow disk never stalls the runtime. The bodies are the types of
//! [`shoal_shared::api`], which the CLI reads. Errors are
//! `{"error": "<what is wrong and what to do>"}` with 400, 401 (no valid token), 403 (the
//! token's role is too low), 404, 409, 415 (a body that is not JSON, or for an upload not
//! `application/octet-stream`); a failure of the
//! planner itself is a 500 whose cause goes to the planner's log under an id the answer
//! names. Who may call what is [`auth`]'s table; no CORS header is ever sent.

mod audit;
pub mod auth;
mod deployments;
pub mod events;
mod feed;
pub mod idempotency;
mod packages;
pub use packages::MAX_UPLOADS;
mod pools;
mod targets;
mod tokens;
mod webhooks;
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
use shoal_shared::api::{ErrorBody, StatusView};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub writer: WriterHandle,
    pub log: EventLog,
    pub liveness: Liveness,
    pub default_pool: PoolName,
    /// Seconds a health check may wait for a worker before the target is `unavailable`.
    pub health_deadline_secs: u64,
    /// Seals sensitive variables before a deployment is recorded.
    pub master_key: std::sync::Arc<shoal_runtime::secrets::MasterKey>,
    /// The package feed's chunks on the broker.
    pub feed: crate::packages::Feed,
    /// Room for package uploads at once ([`MAX_UPLOADS`]).
    pub uploads: std::sync::Arc<tokio::sync::Semaphore>,
    /// Versions of each package the feed keeps (`--package-retention`); 0: every one.
    pub package_retention: u32,
    /// The log's last durable sequence (event streams follow it).
    pub durable: tokio::sync::watch::Receiver<u64>,
    /// The broker, for the event feed's consumers.
    pub js: async_nats::jetstream::Context,
    pub subjects: shoal_shared::subjects::Subjects,
    /// Signs audit exports' heads.
    pub signer: crate::signing::Signer,
    /// Cancelled when the planner stops: endless answers (event streams) end then.
    pub closing: tokio_util::sync::CancellationToken,
}

impl AppState {
    /// Runs a read of the log on tokio's blocking threads: sled reads block, and one that
    /// waits for the disk must not hold a runtime thread that other requests (and the
    /// writer's answers) need.
    ///
    /// # Errors
    /// What `read` answers; a read that panicked is an internal error.
    pub async fn read<T, F>(&self, read: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&EventLog) -> Result<T, ApiError> + Send + 'static,
    {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || read(&log))
            .await
            .map_err(|e| ApiError::internal("a read of the event log", &e))?
    }
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/pools", get(pools::list).post(pools::create))
        .route("/api/pools/{name}", axum::routing::delete(pools::remove))
        .route("/api/pools/{name}/key", axum::routing::put(pools::set_key))
        .route("/api/targets", get(targets::list).post(targets::create))
        .route(
            "/api/targets/{name}",
            get(targets::show)
                .put(targets::update)
                .delete(targets::remove),
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
        .route("/api/tasks/{id}", get(deployments::task_ref))
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
        .route("/api/events/stream", get(events::follow))
        .route("/api/audit/export", get(audit::export_log))
        .route(
            "/api/feed/consumers/{name}",
            axum::routing::put(feed::set_consumer),
        )
        .route("/api/status", get(status))
        .route("/api/packages", get(packages::list))
        .route("/api/packages/{id}", get(packages::show))
        .route(
            "/api/packages/{id}/{version}",
            get(packages::version)
                .put(packages::push)
                .delete(packages::remove),
        )
        .route("/api/webhooks", get(webhooks::list).post(webhooks::create))
        .route(
            "/api/webhooks/{name}",
            axum::routing::delete(webhooks::remove),
        )
        .route(
            "/api/webhooks/{name}/resume",
            axum::routing::post(webhooks::resume),
        )
        .route("/api/tokens", get(tokens::list).post(tokens::create))
        .route("/api/tokens/{name}", axum::routing::delete(tokens::revoke))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async {
            ApiError::not_found("no such endpoint; see the API reference in README.md")
        })
        // Layers added after the routes and the fallback wrap them all (routing first, so
        // the guard sees the matched route).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
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

    /// 401: no valid token (answered with `WWW-Authenticate: Bearer`).
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
        }
    }

    /// 403: the token is valid but its role does not allow this.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            message: message.into(),
        }
    }

    /// 409: the request conflicts with how the planner runs or what it holds.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            message: message.into(),
        }
    }

    /// 503: something the request needs (the broker) is not answering now.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
        }
    }

    /// 415: the body is not of the endpoint's media type.
    pub fn unsupported_media_type(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: message.into(),
        }
    }
}

impl ApiError {
    /// 500: the planner failed. The cause is logged here, once, under a fresh id; the
    /// client gets only the id, since storage errors can name paths and internals that are
    /// none of its business.
    pub fn internal(what: &str, cause: &dyn std::fmt::Display) -> ApiError {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let id = &id[..12];
        tracing::error!(error.id = id, error = %cause, "{what} failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("internal error {id}; see the planner's log"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
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
            WriteError::Rejected(r @ Rejection::Replayed(_)) => ApiError {
                status: StatusCode::CONFLICT,
                message: r.to_string(),
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
        ApiError::internal("a read of the event log", &e)
    }
}

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A JSON request body, parsed with [`parse_body`]; every failure is a JSON error answer.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let RawBody(body) = RawBody::from_request(req, state).await?;
        parse_body(&body).map(JsonBody)
    }
}

/// A request body as bytes (for a handler that also fingerprints it), read with the same
/// limit and errors as [`JsonBody`].
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        axum::body::Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| ApiError {
                status: e.status(),
                message: if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    format!("request body is larger than the limit of {MAX_BODY_BYTES} bytes")
                } else {
                    format!("cannot read the request body: {}", e.body_text())
                },
            })
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

/// What the planner holds: the log's last sequence, and the unfinished deployments and their
/// tasks the writer keeps in memory (finished ones stay on disk).
async fn status(
    axum::extract::State(app): axum::extract::State<AppState>,
) -> axum::Json<StatusView> {
    let (deployments, tasks, seq) = app.writer.in_memory();
    axum::Json(StatusView {
        log_seq: seq,
        deployments_in_memory: deployments,
        tasks_in_memory: tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(e: ApiError) -> (StatusCode, ErrorBody) {
        let response = e.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(ErrorBody {
            error: String::from_utf8_lossy(&bytes).into_owned(),
        });
        (status, body)
    }

    #[tokio::test]
    async fn a_storage_failure_is_a_500_naming_only_an_id() {
        let e = LogError::Corrupt("chunk at /var/lib/shoal/log/db is truncated".into());
        let (status, body) = body_of(ApiError::from(e)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            body.error.starts_with("internal error ")
                && body.error.ends_with("; see the planner's log"),
            "{}",
            body.error
        );
        assert!(
            !body.error.contains("/var/lib") && !body.error.contains("truncated"),
            "{}",
            body.error
        );
        let (_, again) = body_of(ApiError::from(LogError::Corrupt("x".into()))).await;
        assert_ne!(body.error, again.error, "each failure has its own id");
    }

    #[tokio::test]
    async fn a_rejection_keeps_its_message_and_status() {
        let e = WriteError::Rejected(Rejection::NotFound("unknown pool \"x\"".into()));
        let (status, body) = body_of(ApiError::from(e)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body.error, "unknown pool \"x\"");
    }
}
