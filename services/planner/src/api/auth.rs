//! Who may call which endpoint. Every request but `GET /healthz` (and the dashboard's login
//! and static files) needs `Authorization: Bearer <token>`; the token is hashed (SHA-256)
//! and looked up by its hash in the token projection, so no token is ever compared byte by
//! byte, stored or logged.
//! [`ENDPOINTS`] is the one table of what each endpoint needs: [`guard`] reads it for every
//! request, and a route missing from it needs `admin` (closed by default).
//!
//! The dashboard's pages authenticate with the `shoal_session` cookie a login with a token
//! sets instead ([`super::session`]): the same token, looked up the same way; a request that
//! changes something with the cookie also needs its CSRF token (403 without). A request with
//! an `Authorization` header is checked by it alone, cookie or not.
//!
//! Order of the checks: authentication (401), then the role (403), then the body's media
//! type (415). An anonymous caller learns nothing about an endpoint but that it wants a
//! token; a browser page cannot send a bearer token across origins without a preflight,
//! which gets a 401 and no `Access-Control-Allow-*` header (no CORS at all), so the 415 on a
//! `text/plain` body is a second wall behind the token.

use super::session::Session;
use super::{ApiError, AppState};
use crate::domain::Command;
use crate::domain::session::SessionDoc;
use crate::domain::token::TokenDoc;
use crate::log::writer::WriterHandle;
use crate::log::{EventLog, Proj};
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use shoal_shared::auth::{ADMIN_TOKEN_FILE, Actor, Role, TOKEN_PREFIX};
use shoal_shared::{Timestamp, TokenName};
use std::path::{Path, PathBuf};

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Nothing: `GET /healthz` (answers `ok`), the OpenAPI document, and the dashboard's
    /// login, logout and static files; none tells anything of the installation.
    Public,
    /// A token of at least this role.
    Role(Role),
}

/// One endpoint of the router: its method, its route pattern, what it needs, and the media
/// type of its body.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub body: &'static str,
}

/// The media type of every body but an upload's.
pub const JSON: &str = "application/json";
/// The media type of an upload (a package file): like JSON, not one a web page may send
/// across origins without a preflight.
pub const OCTETS: &str = "application/octet-stream";
/// The media type of the dashboard's login and logout forms (public endpoints, which check
/// what they are sent themselves).
pub const FORM: &str = "application/x-www-form-urlencoded";

const fn ep(method: Method, path: &'static str, role: Role) -> Endpoint {
    Endpoint {
        method,
        path,
        access: Access::Role(role),
        body: JSON,
    }
}

const fn upload(method: Method, path: &'static str, role: Role) -> Endpoint {
    Endpoint {
        method,
        path,
        access: Access::Role(role),
        body: OCTETS,
    }
}

/// A page of the dashboard: read with a session (or a token) of at least `viewer`.
const fn page(path: &'static str) -> Endpoint {
    ep(Method::GET, path, Viewer)
}

/// What needs no token: the dashboard's login, logout and static files.
const fn public(method: Method, path: &'static str, body: &'static str) -> Endpoint {
    Endpoint {
        method,
        path,
        access: Access::Public,
        body,
    }
}

use Role::{Admin, Deployer, Viewer};

/// Every endpoint and what it needs. Reading is `viewer`; starting and stopping work
/// (deployments, on-demand health checks, which run a probe on a worker) is `deployer`;
/// changing what exists (pools, targets, workers' maintenance, tokens) is `admin`. Pushing a
/// package is `deployer` (it is what a build pipeline does before it deploys); removing one
/// is `admin`.
pub const ENDPOINTS: &[Endpoint] = &[
    ep(Method::GET, "/api/pools", Viewer),
    ep(Method::POST, "/api/pools", Admin),
    ep(Method::DELETE, "/api/pools/{name}", Admin),
    ep(Method::GET, "/api/targets", Viewer),
    ep(Method::POST, "/api/targets", Admin),
    ep(Method::GET, "/api/targets/{name}", Viewer),
    ep(Method::PUT, "/api/targets/{name}", Admin),
    ep(Method::DELETE, "/api/targets/{name}", Admin),
    ep(Method::GET, "/api/targets/{name}/health", Viewer),
    ep(Method::POST, "/api/targets/{name}/health-check", Deployer),
    ep(Method::GET, "/api/deployments", Viewer),
    ep(Method::POST, "/api/deployments", Deployer),
    ep(Method::GET, "/api/deployments/{id}", Viewer),
    ep(Method::POST, "/api/deployments/{id}/cancel", Deployer),
    ep(
        Method::GET,
        "/api/deployments/{id}/tasks/{task}/log",
        Viewer,
    ),
    ep(Method::GET, "/api/workers", Viewer),
    ep(Method::POST, "/api/workers/{name}/drain", Admin),
    ep(Method::POST, "/api/workers/{name}/resume", Admin),
    ep(Method::GET, "/api/events", Viewer),
    ep(Method::GET, "/api/events/stream", Viewer),
    ep(Method::GET, "/api/audit/export", Admin),
    ep(Method::PUT, "/api/feed/consumers/{name}", Admin),
    ep(Method::PUT, "/api/pools/{name}/key", Admin),
    ep(Method::GET, "/api/webhooks", Admin),
    ep(Method::POST, "/api/webhooks", Admin),
    ep(Method::DELETE, "/api/webhooks/{name}", Admin),
    ep(Method::POST, "/api/webhooks/{name}/resume", Admin),
    ep(Method::GET, "/api/tasks/{id}", Viewer),
    ep(Method::GET, "/api/status", Viewer),
    ep(Method::GET, "/metrics", Viewer),
    ep(Method::GET, "/api/packages", Viewer),
    ep(Method::GET, "/api/packages/{id}", Viewer),
    ep(Method::GET, "/api/packages/{id}/{version}", Viewer),
    upload(Method::PUT, "/api/packages/{id}/{version}", Deployer),
    ep(Method::DELETE, "/api/packages/{id}/{version}", Admin),
    ep(Method::GET, "/api/tokens", Admin),
    ep(Method::POST, "/api/tokens", Admin),
    ep(Method::DELETE, "/api/tokens/{name}", Admin),
    Endpoint {
        method: Method::GET,
        path: "/healthz",
        access: Access::Public,
        body: JSON,
    },
    // The OpenAPI document (`super::openapi`): what the API is, to anyone who can reach it.
    public(Method::GET, "/api/openapi.json", JSON),
];

/// The dashboard's endpoints (`crate::dashboard`), which the guard reads after
/// [`ENDPOINTS`]: its pages read what the API's GETs read; its login, logout and static
/// files need no token (the forms check what they are sent themselves).
pub const DASHBOARD: &[Endpoint] = &[
    page("/"),
    page("/deployments/{id}"),
    page("/deployments/{id}/audit"),
    page("/workers"),
    page("/targets"),
    page("/targets/{name}"),
    public(Method::GET, "/login", JSON),
    public(Method::POST, "/login", FORM),
    public(Method::POST, "/logout", FORM),
    public(Method::GET, "/assets/{file}", JSON),
];

/// What a request to `path` (a route pattern, `None`: no route) with `method` needs. A
/// method the table does not list for the route needs `admin` (an admin then gets the
/// router's 405); no route at all needs any token (and gets the 404).
pub fn access(method: &Method, path: Option<&str>) -> Access {
    let Some(path) = path else {
        return Access::Role(Viewer);
    };
    endpoint(method, path).map_or(Access::Role(Admin), |e| e.access)
}

/// The table's entry of a request.
fn endpoint(method: &Method, path: &str) -> Option<&'static Endpoint> {
    // HEAD is answered by the GET handler.
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    ENDPOINTS
        .iter()
        .chain(DASHBOARD)
        .find(|e| e.method == *method && e.path == path)
}

/// The token a request was made with, once checked; handlers take it to record who acted.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: TokenName,
    pub role: Role,
    /// An integrator's command over NATS (`commands`), not a token's request.
    pub integrator: bool,
}

impl Caller {
    /// An integrator sending a command over NATS with `role`.
    pub fn integrator(name: TokenName, role: Role) -> Caller {
        Caller {
            name,
            role,
            integrator: true,
        }
    }

    /// The actor to record in the events the request causes.
    pub fn actor(&self) -> Option<Actor> {
        Some(if self.integrator {
            Actor::Integrator(self.name.clone())
        } else {
            Actor::Token(self.name.clone())
        })
    }
}

/// Marks a request the planner made itself, whose [`Caller`] it set: from a command over
/// NATS (`commands`, the caller from the command's subject), or a dashboard page's read
/// (`dashboard`, the caller the page was asked by). No HTTP request can carry it: extensions
/// are never read from the wire.
#[derive(Debug, Clone, Copy)]
pub struct FromNats;

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Caller, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::internal(
                "finding the request's token",
                &"no caller: route not guarded",
            )
        })
    }
}

/// The middleware in front of every route: authentication, role, media type.
pub(super) async fn guard(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let Access::Role(needed) = access(req.method(), path) else {
        return next.run(req).await;
    };
    let from_nats = req
        .extensions()
        .get::<FromNats>()
        .and_then(|_| req.extensions().get::<Caller>().cloned());
    let caller = match from_nats {
        Some(c) => c,
        None => match authenticate(&app, req.method(), req.headers()).await {
            Ok(c) => c,
            Err(e) => {
                return super::session::to_login(req.method(), req.uri(), req.headers())
                    .unwrap_or_else(|| e.into_response());
            }
        },
    };
    if !caller.role.allows(needed) {
        return ApiError::forbidden(format!(
            "this endpoint needs role {needed}; {} \"{}\" has {}",
            if caller.integrator {
                "integrator"
            } else {
                "token"
            },
            caller.name,
            caller.role
        ))
        .into_response();
    }
    let body = path
        .and_then(|p| endpoint(req.method(), p))
        .map_or(JSON, |e| e.body);
    if let Err(e) = body_of_type(req.method(), req.headers(), body) {
        return e.into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// The caller of a request, from its bearer token, else from its session cookie (which
/// must carry its CSRF token to change anything).
async fn authenticate(
    app: &AppState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    if !headers.contains_key(header::AUTHORIZATION)
        && let Some(cookie) = super::session::cookie(headers)
    {
        let session = open_session(app, cookie).await?;
        let caller = caller_of(app, session.token_hash.clone()).await?;
        super::session::check_intent(&app.master_key, &session, method, headers)?;
        return Ok(caller);
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "this endpoint needs a token: send \"Authorization: Bearer <token>\" (the CLI reads SHOAL_TOKEN or --token; the planner wrote its first admin token to admin.token in its data dir)",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be \"Bearer <token>\"")
        })?;
    caller_of(app, hash_token(token)).await
}

/// A request's dashboard session: a cookie this planner made, not expired, of a session
/// still open in the log (not ended by a logout).
///
/// # Errors
/// 401 saying to log in again.
pub async fn open_session(app: &AppState, cookie: &str) -> Result<Session, ApiError> {
    let now = Timestamp::now();
    let session = super::session::open(&app.master_key, cookie, now)?;
    if !session_doc(app, &session.id)
        .await?
        .is_some_and(|d| d.open_at(now))
    {
        return Err(ApiError::unauthorized(
            "the dashboard session has ended (logged out): log in again at /login",
        ));
    }
    Ok(session)
}

/// The log's record of the dashboard session `id`, while it is within its day.
///
/// # Errors
/// The log could not be read.
pub async fn session_doc(app: &AppState, id: &str) -> Result<Option<SessionDoc>, ApiError> {
    let id = id.to_owned();
    app.read(move |log| Ok(log.doc(Proj::Sessions, id.as_bytes())?))
        .await
}

/// The caller whose token has the SHA-256 `hash` (hex).
///
/// # Errors
/// 401: no such token (never made, or revoked).
pub async fn caller_of(app: &AppState, hash: String) -> Result<Caller, ApiError> {
    let doc: Option<TokenDoc> = app
        .read(move |log| Ok(log.doc(Proj::Tokens, hash.as_bytes())?))
        .await?;
    let doc = doc.ok_or_else(|| {
        ApiError::unauthorized(
            "the token is not valid (unknown or revoked); ask an admin for one (`shoal token create`)",
        )
    })?;
    Ok(Caller {
        name: doc.name,
        role: doc.role,
        integrator: false,
    })
}

/// 415 for a request that sends a body (or says it does) that is not of the endpoint's
/// media type (JSON but for uploads): a web page can send `text/plain` anywhere without a
/// preflight.
fn body_of_type(method: &Method, headers: &HeaderMap, wanted: &str) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD) {
        return Ok(());
    }
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|n| n > 0);
    match headers.get(header::CONTENT_TYPE) {
        Some(v) => {
            let text = v.to_str().unwrap_or("(not text)");
            let essence = text.split(';').next().unwrap_or("").trim();
            if essence.eq_ignore_ascii_case(wanted) {
                Ok(())
            } else {
                Err(ApiError::unsupported_media_type(format!(
                    "this endpoint's body must be {wanted}: send \"Content-Type: {wanted}\" (got {text:?})"
                )))
            }
        }
        None if has_body => Err(ApiError::unsupported_media_type(format!(
            "this endpoint's body must be {wanted}: send \"Content-Type: {wanted}\" (got none)"
        ))),
        None => Ok(()),
    }
}

/// What a request was made with, for an event stream to check at every page that it
/// still opens the API: the SHA-256 (hex) of its bearer token, else of the token its
/// session cookie was opened with, and then the session's id.
pub fn credential(app: &AppState, headers: &HeaderMap) -> Option<(String, Option<String>)> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let (_, token) = value.to_str().ok()?.split_once(' ')?;
        return Some((hash_token(token.trim()), None));
    }
    let cookie = super::session::cookie(headers)?;
    super::session::open(&app.master_key, cookie, Timestamp::now())
        .ok()
        .map(|s| (s.token_hash, Some(s.id)))
}

/// SHA-256 of a token, lowercase hex: how a token is stored and looked up. A token has 256
/// random bits, so a fast hash suffices (no password stretching needed).
pub fn hash_token(token: &str) -> String {
    shoal_shared::hex::encode(&Sha256::digest(token.as_bytes()))
}

/// A new token (`shoal_` and 256 random bits in hex) and its hash.
pub fn new_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("{TOKEN_PREFIX}{}", shoal_shared::hex::encode(&bytes));
    let hash = hash_token(&token);
    (token, hash)
}

/// Where the first admin token is written: `<data_dir>/admin.token`.
pub fn admin_token_file(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_TOKEN_FILE)
}

/// At the first start (no token in the log), makes the admin token `admin`, writes it to
/// [`admin_token_file`] (mode 0600) and logs the file's path, never the token. The file is
/// written before the event: a crash in between leaves a file whose token the next start
/// replaces, never a token nobody has.
///
/// # Errors
/// The log cannot be read or written, or the file cannot be written.
pub async fn bootstrap(
    writer: &WriterHandle,
    log: &EventLog,
    data_dir: &Path,
) -> anyhow::Result<()> {
    let file = admin_token_file(data_dir);
    if !log.docs::<TokenDoc>(Proj::Tokens)?.is_empty() {
        if file.exists() {
            tracing::info!(
                file = %file.display(),
                "the first admin token is still in this file; delete it once you have made your own admin token"
            );
        }
        return Ok(());
    }
    let (token, hash) = new_token();
    write_secret(&file, &token)?;
    let appended = writer.execute(Command::BootstrapAdmin { hash }).await?;
    if appended.seqs.is_empty() {
        // Tokens appeared meanwhile (cannot happen before the API serves): keep no stray one.
        let _ = std::fs::remove_file(&file);
        return Ok(());
    }
    tracing::warn!(
        file = %file.display(),
        "made the first admin token (name \"admin\") and wrote it to this file, readable by this user only; use it (SHOAL_TOKEN) to make your own tokens, then revoke \"admin\" and delete the file"
    );
    Ok(())
}

/// Makes an admin token named `name` in the log of a stopped planner and returns it: the way
/// back in when every admin token is lost (whoever can write the data dir can do anything
/// anyway). The event's actor is `planner`.
///
/// # Errors
/// The log cannot be opened (e.g. the planner runs) or written, or the name is taken.
pub async fn issue_offline(log: EventLog, name: TokenName) -> anyhow::Result<String> {
    use crate::log::handover::task_channel;
    use crate::log::writer::Writer;
    // Nothing is dispatched or carried out: the planner picks it up at its next start.
    let (tasks, _task_rx) = task_channel(16);
    let (effects, _effect_rx) = tokio::sync::mpsc::channel(16);
    let default = shoal_shared::PoolName::parse("default")?;
    let writer = Writer::open(log.clone(), default, tasks, effects)?;
    let (handle, ended) = writer.spawn(16)?;
    let (token, hash) = new_token();
    let made = handle
        .execute(Command::CreateToken {
            name,
            role: Role::Admin,
            hash,
            created_by: Actor::Planner,
        })
        .await;
    drop(handle);
    ended.await?;
    log.flush().await?;
    made?;
    Ok(token)
}

/// Writes `text` to `file` readable and writable by its owner only, replacing it whole
/// (written beside and renamed, as the trust bundle's secrets are).
fn write_secret(file: &Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data dir {}", dir.display()))?;
    shoal_trust::files::write_secret(file, &format!("{text}\n"))
        .with_context(|| format!("cannot write the admin token to {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_prefixed_long_and_never_the_same() {
        let (a, ha) = new_token();
        let (b, hb) = new_token();
        assert!(a.starts_with("shoal_") && a.len() == 6 + 64, "{a}");
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert_eq!(hash_token(&a), ha);
        assert_eq!(ha.len(), 64);
    }

    #[test]
    fn an_unlisted_method_needs_admin_and_no_route_needs_any_token() {
        assert_eq!(
            access(&Method::GET, Some("/api/deployments")),
            Access::Role(Viewer)
        );
        assert_eq!(
            access(&Method::HEAD, Some("/api/deployments")),
            Access::Role(Viewer)
        );
        assert_eq!(
            access(&Method::OPTIONS, Some("/api/deployments")),
            Access::Role(Admin)
        );
        assert_eq!(access(&Method::GET, None), Access::Role(Viewer));
        assert_eq!(access(&Method::GET, Some("/healthz")), Access::Public);
    }

    #[test]
    fn only_bodies_of_the_endpoints_type_pass() {
        let with = |ct: Option<&str>, len: &str| {
            let mut h = HeaderMap::new();
            if let Some(ct) = ct {
                h.insert(
                    header::CONTENT_TYPE,
                    ct.parse().unwrap_or_else(|_| panic!()),
                );
            }
            h.insert(
                header::CONTENT_LENGTH,
                len.parse().unwrap_or_else(|_| panic!()),
            );
            body_of_type(&Method::POST, &h, JSON)
        };
        assert!(with(Some("application/json"), "2").is_ok());
        assert!(with(Some("Application/JSON; charset=utf-8"), "2").is_ok());
        assert!(with(None, "0").is_ok());
        assert!(with(Some("text/plain"), "2").is_err());
        assert!(with(Some("application/x-www-form-urlencoded"), "0").is_err());
        assert!(with(None, "2").is_err());
        let upload = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONTENT_TYPE,
                ct.parse().unwrap_or_else(|_| panic!()),
            );
            body_of_type(&Method::PUT, &h, OCTETS)
        };
        assert!(upload("application/octet-stream").is_ok());
        assert!(upload("application/json").is_err());
        assert!(upload("text/plain").is_err());
        assert_eq!(
            endpoint(&Method::PUT, "/api/packages/{id}/{version}").map(|e| e.body),
            Some(OCTETS)
        );
    }
}
