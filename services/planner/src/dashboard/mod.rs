//! The web dashboard, served by the planner on the API's port: server-rendered pages of
//! deployments (one as its steps × targets grid, with a task's output), pools and workers,
//! targets and their health, and a deployment's audit trail with its chain verified.
//!
//! The pages read what the API answers: each read is a request sent through the API's own
//! router as the page's caller ([`Ctx::get`]), so a page shows nothing its viewer could not
//! read with `curl`, in the same JSON, checked by the same table. A browser logs in with a
//! token ([`login`]) and then carries the session cookie of `api::session`; a little
//! hand-written JavaScript (`assets/dashboard.js`, no build step) follows the API's event
//! stream and reloads the parts of a page an event changes ([`Live`]), appends a followed
//! task's output as it arrives, and sends the few changing requests (cancel, drain, resume)
//! to the API with the session's CSRF token. Who may see which button is the caller's role;
//! the API refuses the request anyway when it is too low.

mod audit;
mod deployments;
pub mod html;
mod login;
mod targets;
mod workers;

use crate::api::AppState;
use crate::api::auth::{Caller, FromNats};
use crate::api::session;
use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use html::{Markup, html, markup};
use serde::de::DeserializeOwned;
use shoal_shared::Timestamp;
use shoal_shared::api::ErrorBody;
use shoal_shared::auth::Role;
use std::sync::LazyLock;
use tower::ServiceExt as _;

/// The dashboard's routes (each is in `api::auth::DASHBOARD`: pages need `viewer`; the
/// login, logout and static files are public).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(deployments::list))
        .route("/deployments/{id}", get(deployments::show))
        .route("/deployments/{id}/audit", get(audit::show))
        .route("/workers", get(workers::show))
        .route("/targets", get(targets::list))
        .route("/targets/{name}", get(targets::show))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/assets/{file}", get(asset))
}

/// Largest API answer a page reads (a page of a task's log is at most about 4 MiB).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// What every page handler has: the planner, who asks, and their session.
pub struct Ctx {
    app: AppState,
    caller: Caller,
    /// The CSRF token of the session the page was asked with (none with a bearer token: the
    /// page then has no working buttons).
    csrf: Option<String>,
    /// A renewed session cookie to send back.
    renewed: Option<HeaderValue>,
    now: Timestamp,
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &AppState,
    ) -> Result<Ctx, Response> {
        let caller = Caller::from_request_parts(parts, app)
            .await
            .map_err(IntoResponse::into_response)?;
        let now = Timestamp::now();
        let session = if parts.headers.contains_key(header::AUTHORIZATION) {
            None
        } else {
            session::cookie(&parts.headers)
                .and_then(|value| session::open(&app.master_key, value, now).ok())
        };
        let csrf = session
            .as_ref()
            .map(|s| session::csrf_token(&app.master_key, s));
        let renewed = session
            .filter(|s| s.due_for_renewal(now))
            .map(|s| session::set_cookie(&session::renew(&app.master_key, &s, now)));
        Ok(Ctx {
            app: app.clone(),
            caller,
            csrf,
            renewed,
            now,
        })
    }
}

/// Why a page could not be shown: the API's status and message.
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError {
            status,
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::NOT_FOUND, message)
    }

    /// A failure of the planner: logged once (by the API's error), its id shown.
    fn internal(
        what: &str,
        cause: &dyn std::fmt::Display,
    ) -> impl std::future::Future<Output = PageError> + Send + use<> {
        PageError::of_api(crate::api::ApiError::internal(what, cause))
    }

    /// The status and message of an error of the API.
    async fn of_api(e: crate::api::ApiError) -> PageError {
        let response = e.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), MAX_ANSWER)
            .await
            .unwrap_or_default();
        PageError::new(status, error_message(&bytes))
    }
}

/// The message of an API's error answer.
fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(bytes)
        .map_or_else(|_| String::from_utf8_lossy(bytes).into_owned(), |b| b.error)
}

impl Ctx {
    /// Whether the caller's role allows what `needed` may do (which buttons to show).
    fn may(&self, needed: Role) -> bool {
        self.caller.role.allows(needed)
    }

    /// `GET path` of the API as the page's caller: the answer's JSON as `T`.
    ///
    /// # Errors
    /// The API's error answer (status and message), or an answer that is not a `T`.
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, PageError> {
        let mut request = match Request::get(path).body(Body::empty()) {
            Ok(r) => r,
            Err(e) => return Err(PageError::internal("building a read of the API", &e).await),
        };
        // The guard takes the caller as it is (it was checked when the page was asked for)
        // and checks its role against the endpoint's, like any request's.
        request.extensions_mut().insert(self.caller.clone());
        request.extensions_mut().insert(FromNats);
        let response = match crate::api::router(self.app.clone()).oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = response.status();
        let bytes = match axum::body::to_bytes(response.into_body(), MAX_ANSWER).await {
            Ok(b) => b,
            Err(e) => return Err(PageError::internal("reading an answer of the API", &e).await),
        };
        if !status.is_success() {
            return Err(PageError::new(status, error_message(&bytes)));
        }
        match serde_json::from_slice(&bytes) {
            Ok(v) => Ok(v),
            Err(e) => {
                let what = format!("reading the answer of GET {path}");
                Err(PageError::internal(&what, &e).await)
            }
        }
    }

    /// The whole page.
    fn page(&self, page: Page) -> Response {
        let mut out = Markup::new();
        let nav = [
            (Nav::Deployments, "/", "Deployments"),
            (Nav::Workers, "/workers", "Pools and workers"),
            (Nav::Targets, "/targets", "Targets"),
        ];
        let mut links = Markup::new();
        for (which, href, text) in nav {
            let current = if which == page.nav {
                markup!(" aria-current=\"page\"")
            } else {
                Markup::new()
            };
            html!(links, "<a href=\"{}\"{}>{}</a>", href, current, text);
        }
        let logout = self.csrf.as_ref().map_or_else(Markup::new, |t| {
            markup!(
                "<form method=\"post\" action=\"/logout\" class=\"logout\"><input type=\"hidden\" name=\"{}\" value=\"{}\"><button type=\"submit\">Log out</button></form>",
                session::CSRF_FIELD,
                t
            )
        });
        out.push(&head(&page.title, self.csrf.as_deref()));
        html!(
            out,
            "<body{}><a class=\"skip\" href=\"#main\">Skip to content</a><header class=\"top\"><a class=\"brand\" href=\"/\">shoal</a><nav aria-label=\"Pages\">{}</nav><div class=\"who\"><span class=\"live-status\" id=\"live-status\" role=\"status\" data-state=\"{}\">{}</span><span class=\"caller\">{} <b>{}</b> ({})</span>{}</div></header>",
            page.live.attributes(),
            links,
            if page.live.is_on() {
                "connecting"
            } else {
                "static"
            },
            if page.live.is_on() {
                "connecting…"
            } else {
                ""
            },
            if self.caller.integrator {
                "integrator"
            } else {
                "token"
            },
            self.caller.name,
            self.caller.role,
            logout
        );
        html!(
            out,
            "<main id=\"main\" tabindex=\"-1\">{}</main><div class=\"toast\" id=\"toast\" role=\"alert\" hidden></div></body></html>\n",
            page.body
        );
        self.respond(StatusCode::OK, out)
    }

    /// One part of a page, for the script to put in place.
    fn part(&self, part: Markup) -> Response {
        self.respond(StatusCode::OK, part)
    }

    /// A page saying what went wrong.
    fn error(&self, e: PageError, nav: Nav) -> Response {
        let body = markup!(
            "<h1>{} {}</h1><p class=\"error\">{}</p><p><a href=\"/\">Back to the deployments</a></p>",
            e.status.as_u16(),
            e.status.canonical_reason().unwrap_or(""),
            e.message
        );
        let mut response = self.page(Page {
            title: format!("{}", e.status.as_u16()),
            nav,
            live: Live::off(),
            body,
        });
        *response.status_mut() = e.status;
        response
    }

    fn respond(&self, status: StatusCode, body: Markup) -> Response {
        respond(status, body, self.renewed.clone())
    }
}

/// An HTML answer, with a session cookie to set if any.
fn respond(status: StatusCode, body: Markup, cookie: Option<HeaderValue>) -> Response {
    let mut response = (status, body.into_string()).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(h);
    if let Some(cookie) = cookie {
        h.insert(header::SET_COOKIE, cookie);
    }
    response
}

/// A document's start up to its `<body>`: the title, the session's CSRF token for the
/// script, the stylesheet and the script.
fn head(title: &str, csrf: Option<&str>) -> Markup {
    let csrf = csrf.map_or_else(Markup::new, |t| {
        markup!("<meta name=\"csrf-token\" content=\"{}\">", t)
    });
    markup!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{}<title>{} · shoal</title><link rel=\"icon\" href=\"data:,\"><link rel=\"stylesheet\" href=\"/assets/dashboard.css?v={}\"><script src=\"/assets/dashboard.js?v={}\" defer></script></head>",
        csrf,
        title,
        ASSETS_VERSION.as_str(),
        ASSETS_VERSION.as_str()
    )
}

/// The headers every HTML answer carries: nothing but the planner's own scripts and styles
/// runs in its pages, no other site may frame them, and no cache keeps what they show.
fn secure(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// Which item of the navigation a page is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nav {
    Deployments,
    Workers,
    Targets,
}

/// A whole page.
struct Page {
    title: String,
    nav: Nav,
    live: Live,
    body: Markup,
}

/// What keeps a page current: the records of the event stream it follows (a stream, some
/// types) from the log's sequence it was read at, and how often it reloads its live parts
/// anyway (what heartbeats change is in no record). Each part is an element with a
/// `data-live` attribute naming the URL of its fresh content.
struct Live {
    stream: Option<String>,
    types: &'static [&'static str],
    after: u64,
    poll_secs: u32,
}

impl Live {
    fn off() -> Live {
        Live {
            stream: None,
            types: &[],
            after: 0,
            poll_secs: 0,
        }
    }

    fn is_on(&self) -> bool {
        !self.types.is_empty()
    }

    fn attributes(&self) -> Markup {
        if !self.is_on() {
            return Markup::new();
        }
        let stream = self
            .stream
            .as_ref()
            .map_or_else(Markup::new, |s| markup!(" data-stream=\"{}\"", s));
        markup!(
            " data-types=\"{}\" data-after=\"{}\" data-poll=\"{}\"{}",
            self.types.join(","),
            self.after,
            self.poll_secs,
            stream
        )
    }
}

/// The log's last durable sequence: read before a page's data, so that the stream the page
/// follows from there misses nothing the data did not show yet.
fn durable(app: &AppState) -> u64 {
    *app.durable.borrow()
}

/// `text` percent-encoded as one segment of a path of the API (a name or id from a page's
/// URL, which may hold anything).
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A page's query: lenient, since a page's URL is typed and bookmarked (what does not
/// parse is left out).
type QueryOf<T> = Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>;

fn or_default<T: Default>(query: QueryOf<T>) -> T {
    query.map(|axum::extract::Query(q)| q).unwrap_or_default()
}

/// `?part=` of a page: only that part, for the script.
#[derive(Debug, serde::Deserialize, Default)]
struct PartQuery {
    part: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Static files

const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");

/// A digest of the static files: their URLs carry it, so a browser may keep them for good
/// and still gets new ones after an upgrade.
static ASSETS_VERSION: LazyLock<String> = LazyLock::new(|| {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(CSS.as_bytes());
    h.update(JS.as_bytes());
    shoal_shared::hex::encode(&h.finalize()[..6])
});

/// `GET /assets/{file}`: the stylesheet and the script.
async fn asset(Path(file): Path<String>) -> Response {
    let (kind, text) = match file.as_str() {
        "dashboard.css" => ("text/css; charset=utf-8", CSS),
        "dashboard.js" => ("text/javascript; charset=utf-8", JS),
        _ => {
            return crate::api::ApiError::not_found(
                "no such file (the dashboard has dashboard.css and dashboard.js)",
            )
            .into_response();
        }
    };
    let mut response = text.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_page_says_what_it_follows_escaped() {
        let live = Live {
            stream: Some("deployment/\"x\"".to_owned()),
            types: &["TaskStarted", "TaskFinished"],
            after: 42,
            poll_secs: 30,
        };
        assert_eq!(
            live.attributes().into_string(),
            " data-types=\"TaskStarted,TaskFinished\" data-after=\"42\" data-poll=\"30\" data-stream=\"deployment/&quot;x&quot;\""
        );
        assert!(Live::off().attributes().is_empty());
    }
}
