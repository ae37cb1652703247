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
pub mod openapi;
mod packages;
pub use packages::MAX_UPLOADS;
mod pools;
pub mod session;
mod targets;
mod tokens;
mod trace;
mod webhooks;
mod workers;

use crate::domain::Rejection;
use crate::liveness::Liveness;
use crate::log::writer::{WriteError, WriterHandle};
use crate::log::{EventLog, LogError};
use axum::Router;
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodFilter;
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
    /// The Prometheus figures (`/metrics`).
    pub metrics: crate::metrics::Metrics,
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
    routes()
        .router
        .merge(crate::dashboard::routes())
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
        .layer(axum::middleware::from_fn(trace::request))
        .with_state(state)
}

/// Every route: one method of one pattern each. Each needs its handler in the OpenAPI
/// document ([`openapi::ApiDoc`]) and its entry in the guard's table ([`auth::ENDPOINTS`]);
/// the document's tests hold all three together.
fn routes() -> Routes {
    Routes::default()
        .get("/api/pools", pools::list)
        .post("/api/pools", pools::create)
        .delete("/api/pools/{name}", pools::remove)
        .put("/api/pools/{name}/key", pools::set_key)
        .get("/api/targets", targets::list)
        .post("/api/targets", targets::create)
        .get("/api/targets/{name}", targets::show)
        .put("/api/targets/{name}", targets::update)
        .delete("/api/targets/{name}", targets::remove)
        .get("/api/targets/{name}/health", targets::health)
        .post("/api/targets/{name}/health-check", targets::check)
        .get("/api/deployments", deployments::list)
        .post("/api/deployments", deployments::create)
        .get("/api/deployments/{id}", deployments::show)
        .post("/api/deployments/{id}/cancel", deployments::cancel)
        .get(
            "/api/deployments/{id}/tasks/{task}/log",
            deployments::task_log,
        )
        .get("/api/tasks/{id}", deployments::task_ref)
        .get("/api/workers", workers::list)
        .post("/api/workers/{name}/drain", workers::drain)
        .post("/api/workers/{name}/resume", workers::resume)
        .get("/api/events", events::list)
        .get("/api/events/stream", events::follow)
        .get("/api/audit/export", audit::export_log)
        .put("/api/feed/consumers/{name}", feed::set_consumer)
        .get("/api/status", status)
        .get("/api/packages", packages::list)
        .get("/api/packages/{id}", packages::show)
        .get("/api/packages/{id}/{version}", packages::version)
        .put("/api/packages/{id}/{version}", packages::push)
        .delete("/api/packages/{id}/{version}", packages::remove)
        .get("/api/webhooks", webhooks::list)
        .post("/api/webhooks", webhooks::create)
        .delete("/api/webhooks/{name}", webhooks::remove)
        .post("/api/webhooks/{name}/resume", webhooks::resume)
        .get("/api/tokens", tokens::list)
        .post("/api/tokens", tokens::create)
        .delete("/api/tokens/{name}", tokens::revoke)
        .get("/api/openapi.json", openapi::document)
        .get("/healthz", healthz)
        .get("/metrics", metrics)
}

/// The router being built, and the method and pattern of each route in it: axum's router
/// cannot list its own routes, and the OpenAPI document's tests need them.
#[derive(Default)]
struct Routes {
    router: Router<AppState>,
    listed: Vec<(Method, &'static str)>,
}

impl Routes {
    fn get<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Routes {
        self.add((Method::GET, MethodFilter::GET), path, h)
    }

    fn post<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Routes {
        self.add((Method::POST, MethodFilter::POST), path, h)
    }

    fn put<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Routes {
        self.add((Method::PUT, MethodFilter::PUT), path, h)
    }

    fn delete<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Routes {
        self.add((Method::DELETE, MethodFilter::DELETE), path, h)
    }

    /// Routes `method` requests to `path` to `handler` (a GET route answers HEAD too).
    fn add<H: Handler<T, AppState>, T: 'static>(
        mut self,
        (method, filter): (Method, MethodFilter),
        path: &'static str,
        handler: H,
    ) -> Routes {
        self.listed.push((method, path));
        // Routes of one pattern merge into one method router.
        self.router = self.router.route(path, axum::routing::on(filter, handler));
        self
    }
}

/// `GET /healthz`: `ok` while the planner serves its API (the container health check).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "planner",
    operation_id = "healthz",
    security(()),
    responses((status = 200, description = "`ok`.", body = String, content_type = "text/plain")),
)]
async fn healthz() -> &'static str {
    "ok"
}

/// `GET /metrics`: the Prometheus figures (OpenMetrics text).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "planner",
    operation_id = "metrics",
    responses((status = 200, description = "The planner's figures: tasks, workers, queues, \
        the log, the feed.", body = String, content_type = "application/openmetrics-text")),
)]
async fn metrics(
    axum::extract::State(app): axum::extract::State<AppState>,
) -> Result<Response, ApiError> {
    let pools: Vec<crate::domain::state::PoolDoc> = app
        .read(|log| Ok(log.docs(crate::log::Proj::Pools)?))
        .await?;
    let pools = pools.into_iter().map(|p| p.name).collect();
    let queues = crate::metrics::queues(&app.js, &app.subjects, pools).await;
    let now = shoal_shared::Timestamp::now();
    let text = app.metrics.render(&app.liveness.snapshot(), &queues, now);
    let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(axum::http::header::CONTENT_TYPE, kind)], text).into_response())
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
#[utoipa::path(
    get,
    path = "/api/status",
    tag = "planner",
    operation_id = "status",
    responses((status = 200, description = "What the planner holds.", body = StatusView)),
)]
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
