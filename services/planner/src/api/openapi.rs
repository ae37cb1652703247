//! The API's OpenAPI 3.1 document, served at `GET /api/openapi.json` without a token, for
//! generated clients and API testers. It is made from the handlers' `#[utoipa::path]`
//! attributes and the schemas of [`shoal_shared::api`], the very types the handlers answer
//! with, so a field cannot change in one and not the other. What the guard does in front of
//! every endpoint (a bearer token or 401, a role or 403, a body's media type or 415) is added
//! from the guard's own table ([`auth::access`], [`auth::ENDPOINTS`]) rather than written
//! again on each handler. The tests below hold the document against the router's routes and
//! that table, so an endpoint cannot be added without its documentation.

use super::{ApiError, auth};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use shoal_shared::auth::Role;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

/// The name of the bearer token scheme in the document.
const BEARER: &str = "bearer";

/// The document: every handler the router serves, and what they answer.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "shoal planner API",
        description = "The planner's HTTP API. Every endpoint but `GET /healthz` and \
            `GET /api/openapi.json` needs `Authorization: Bearer <token>`. Errors are \
            `{\"error\": \"<what is wrong and what to do>\"}`. See README.md, \"HTTP API\"."
    ),
    paths(
        super::pools::create,
        super::pools::list,
        super::pools::remove,
        super::pools::set_key,
        super::targets::create,
        super::targets::list,
        super::targets::show,
        super::targets::update,
        super::targets::remove,
        super::targets::health,
        super::targets::check,
        super::deployments::create,
        super::deployments::list,
        super::deployments::show,
        super::deployments::cancel,
        super::deployments::task_log,
        super::deployments::task_ref,
        super::workers::list,
        super::workers::drain,
        super::workers::resume,
        super::events::list,
        super::events::follow,
        super::audit::export_log,
        super::feed::set_consumer,
        super::webhooks::create,
        super::webhooks::list,
        super::webhooks::resume,
        super::webhooks::remove,
        super::tokens::create,
        super::tokens::list,
        super::tokens::revoke,
        super::packages::list,
        super::packages::show,
        super::packages::version,
        super::packages::push,
        super::packages::remove,
        super::status,
        super::metrics,
        super::healthz,
        document,
    ),
    components(schemas(shoal_shared::api::ErrorBody)),
    modifiers(&Guarded),
)]
pub struct ApiDoc;

/// `Idempotency-Key`, on the create endpoints that take one.
#[derive(utoipa::IntoParams)]
#[into_params(names("Idempotency-Key"), parameter_in = Header)]
pub struct IdempotencyKey(
    /// 1 to 255 printable ASCII characters without spaces (e.g. a UUID): the same request
    /// sent again with the same key gets the first answer instead of a second resource;
    /// another request with that key gets 409.
    #[param(min_length = 1, max_length = 255, pattern = "^[!-~]+$")]
    pub Option<String>,
);

/// The path of one version of a package.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PackageVersionPath {
    /// The package.
    pub id: shoal_shared::PackageId,
    /// Its semantic version (e.g. 1.2.3).
    #[param(schema_with = shoal_shared::api::schema::version)]
    pub version: String,
}

/// `GET /api/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "planner",
    operation_id = "openapi",
    security(()),
    responses((status = 200, description = "This document (OpenAPI 3.1).",
        body = serde_json::Value)),
)]
pub(super) async fn document() -> Result<Response, ApiError> {
    let json = ApiDoc::openapi()
        .to_json()
        .map_err(|e| ApiError::internal("writing the OpenAPI document", &e))?;
    Ok(([(header::CONTENT_TYPE, auth::JSON)], json).into_response())
}

/// Adds to every operation what the guard in front of it does.
struct Guarded;

impl Modify for Guarded {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An API token (`shoal token create`; the planner writes its first admin token \
                 to admin.token in its data dir).",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER, SecurityScheme::Http(scheme));
        for (path, item) in &mut doc.paths.paths {
            for (method, operation) in operations_mut(item) {
                guard(operation, &method, path);
            }
        }
    }
}

/// The guard's answers to a request of `method` to `path`, and the token it wants.
fn guard(operation: &mut Operation, method: &Method, path: &str) {
    let auth::Access::Role(role) = auth::access(method, Some(path)) else {
        return;
    };
    operation.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
    let unauthorized = error("No valid token: none, unknown or revoked.").header(
        "WWW-Authenticate",
        HeaderBuilder::new()
            .schema(<String as utoipa::PartialSchema>::schema())
            .description(Some("`Bearer`"))
            .build(),
    );
    add(operation, 401, unauthorized);
    if role > Role::Viewer {
        let below = format!("The token's role is below {role}.");
        add(operation, 403, error(&below));
    }
    add(
        operation,
        500,
        error("The planner failed: the message names an id to look for in its log."),
    );
    if !matches!(*method, Method::GET | Method::HEAD) {
        // As the guard reads it: JSON unless the table says otherwise.
        let wanted = auth::ENDPOINTS
            .iter()
            .find(|e| e.method == method && e.path == path)
            .map_or(auth::JSON, |e| e.body);
        let media = format!("A body, or a Content-Type, that is not {wanted}.");
        add(operation, 415, error(&media));
        add(
            operation,
            503,
            error("The planner is stopping, or the broker is not answering."),
        );
    }
}

/// An answer of `ErrorBody` described as `description`.
fn error(description: &str) -> ResponseBuilder {
    let body = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .build();
    ResponseBuilder::new()
        .description(description)
        .content(auth::JSON, body)
}

/// Adds `answer` as `status` unless the handler documents that status itself.
fn add(operation: &mut Operation, status: u16, answer: ResponseBuilder) {
    operation
        .responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| answer.build().into());
}

/// The operations of a path, with their methods.
fn operations_mut(item: &mut PathItem) -> Vec<(Method, &mut Operation)> {
    [
        (Method::GET, &mut item.get),
        (Method::PUT, &mut item.put),
        (Method::POST, &mut item.post),
        (Method::DELETE, &mut item.delete),
        (Method::PATCH, &mut item.patch),
        (Method::HEAD, &mut item.head),
        (Method::OPTIONS, &mut item.options),
        (Method::TRACE, &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.as_mut().map(|o| (method, o)))
    .collect()
}

#[cfg(test)]
mod tests;
