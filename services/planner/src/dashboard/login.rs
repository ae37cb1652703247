//! `GET|POST /login` and `POST /logout`: a browser logs in with an API token (checked as a
//! bearer token is) and gets the session cookie of `api::session`, its session recorded in
//! the log; logging out ends the session in the log (every copy of the cookie) and in the
//! browser. Both forms are refused when the browser says they come from another site.

use super::html::{Markup, html, markup};
use super::{head, respond};
use crate::api::AppState;
use crate::api::auth::{caller_of, hash_token, session_doc};
use crate::api::session;
use crate::domain::{Command, Rejection};
use crate::log::writer::WriteError;
use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use shoal_shared::Timestamp;
use shoal_shared::auth::Actor;

#[derive(Debug, Deserialize, Default)]
pub(super) struct NextQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// `GET /login`.
pub(super) async fn form(query: super::QueryOf<NextQuery>) -> Response {
    let next = super::or_default(query).next;
    login_page(StatusCode::OK, safe_next(next.as_deref()), None)
}

/// `POST /login`: the token in a form; 303 to the page asked for, with the session cookie.
pub(super) async fn submit(
    State(app): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return login_page(
            StatusCode::BAD_REQUEST,
            "/",
            Some("send the form of this page: a token in the field \"token\""),
        );
    };
    let next = safe_next(form.next.as_deref());
    if !session::same_origin(&headers) {
        return login_page(
            StatusCode::FORBIDDEN,
            next,
            Some("this login came from another site's page; log in here"),
        );
    }
    let token = form.token.trim();
    if token.is_empty() {
        return login_page(StatusCode::UNAUTHORIZED, next, Some("enter a token"));
    }
    let hash = hash_token(token);
    match caller_of(&app, hash.clone()).await {
        Ok(caller) => {
            let now = Timestamp::now();
            let s = session::new_session(&hash, now);
            let start = Command::StartSession {
                id: s.id.clone(),
                token_hash: hash,
                now,
                ends_by: s.ends_by(),
            };
            if let Err(e) = app.writer.execute_as(caller.actor(), start).await {
                return login_refused(next, &e);
            }
            tracing::info!(token.name = %caller.name, role = %caller.role, "dashboard login");
            let value = session::renew(&app.master_key, &s, now);
            let mut response = Redirect::to(next).into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, session::set_cookie(&value));
            response
        }
        Err(_) => login_page(
            StatusCode::UNAUTHORIZED,
            next,
            Some(
                "that token is not valid (unknown or revoked); ask an admin for one (shoal token create --name NAME --role viewer)",
            ),
        ),
    }
}

/// `POST /logout`: ends the session in the log, so that no copy of its cookie opens
/// anything any more, and in the browser (with the session's CSRF token, so that no other
/// page can log its viewer out); 303 to the login page.
pub(super) async fn logout(
    State(app): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let csrf = form.map(|Form(f)| f.csrf).unwrap_or_default();
    let current = session::cookie(&headers)
        .and_then(|v| session::open(&app.master_key, v, Timestamp::now()).ok());
    if let Some(s) = &current
        && (!session::same_origin(&headers) || !session::csrf_matches(&app.master_key, s, &csrf))
    {
        return respond(
            StatusCode::FORBIDDEN,
            markup!("<p>This logout did not come from the dashboard's own page.</p>"),
            None,
        );
    }
    if let Some(s) = current {
        // The session's token, also when it was revoked since.
        let doc = session_doc(&app, &s.id).await.unwrap_or_default();
        let actor = doc.map(|d| Actor::Token(d.token));
        if let Err(e) = app
            .writer
            .execute_as(actor, Command::EndSession(s.id))
            .await
        {
            tracing::error!(error = %e, "a dashboard logout could not be recorded");
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                markup!("<p>The planner could not record the logout; go back and try again.</p>"),
                None,
            );
        }
    }
    let mut response = Redirect::to("/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    response
}

/// The login page for a login the log did not take: refused (the token revoked meanwhile:
/// 401; too many logins: 429), or the planner could not write (503).
fn login_refused(next: &str, e: &WriteError) -> Response {
    let status = match e {
        WriteError::Rejected(Rejection::NotFound(_)) => StatusCode::UNAUTHORIZED,
        WriteError::Rejected(_) => StatusCode::TOO_MANY_REQUESTS,
        WriteError::Unavailable(_) => {
            tracing::error!(error = %e, "a dashboard login could not be recorded");
            return login_page(
                StatusCode::SERVICE_UNAVAILABLE,
                next,
                Some("the planner could not record the login; try again"),
            );
        }
    };
    login_page(status, next, Some(&e.to_string()))
}

/// Where to go after the login: a path of this planner only (`/…`, never `//host` nor
/// `/\host`, which browsers read as another site).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && !n.starts_with("/login")
                && !n.chars().any(char::is_control) =>
        {
            n
        }
        _ => "/",
    }
}

fn login_page(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let mut out = head("Log in", None);
    let error = error.map_or_else(Markup::new, |e| {
        markup!(
            "<p class=\"error\" role=\"alert\" id=\"login-error\">{}</p>",
            e
        )
    });
    html!(
        out,
        "<body class=\"login-page\"><main id=\"main\" class=\"login\"><h1><span class=\"brand\">shoal</span> dashboard</h1>{}<form method=\"post\" action=\"/login\"><label for=\"token\">API token</label><input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" spellcheck=\"false\" required autofocus><input type=\"hidden\" name=\"next\" value=\"{}\"><button type=\"submit\">Log in</button></form><p class=\"hint\">Any API token: a <b>viewer</b> reads everything, a <b>deployer</b> can also cancel deployments, an <b>admin</b> can also drain and resume workers. <code>shoal token create --name NAME --role viewer</code> makes one; the planner's first admin token is in <code>admin.token</code> in its data dir.</p><p class=\"hint\">The browser keeps a session cookie (HttpOnly, SameSite=Strict), not the token.</p></main></body></html>\n",
        error,
        next
    );
    respond(status, out, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_path_of_this_planner_is_where_a_login_goes() {
        assert_eq!(
            safe_next(Some("/deployments/x?task=y")),
            "/deployments/x?task=y"
        );
        for bad in [
            "https://evil.example",
            "//evil.example",
            "/\\evil.example",
            "/login?next=/",
            "evil",
            "/a\nb",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
