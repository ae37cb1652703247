//! The dashboard's browser session: what a login with a token puts in the `shoal_session`
//! cookie, how a request carrying it is checked, and the CSRF token every changing request
//! made with it must carry.
//!
//! The cookie holds no token: it is `v1.<session id>.<expires>.<token hash>.<mac>`, the MAC
//! an HMAC under a key derived from the master key (so sessions survive restarts of the
//! planner and no one without the key can make one). Each request looks the token hash up
//! like a bearer token's, so revoking the token ends its sessions at once. A session lasts
//! [`LIFETIME`] from the last page the browser loaded (pages renew it once half of it has
//! passed: a new expiry, the same session id, so the CSRF token of open pages stays valid).
//!
//! The cookie is `HttpOnly` (no script reads it) and `SameSite=Strict` (no other site's page
//! sends it). Since another port of the same host is the same *site*, a request that changes
//! something with the cookie must also carry `X-CSRF-Token`: an HMAC of the session's id
//! that only the planner's own pages embed; and if it says where it comes from (`Origin`),
//! that must be the planner itself.

use super::ApiError;
use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use shoal_runtime::secrets::MasterKey;
use shoal_shared::Timestamp;

/// The cookie's name.
pub const COOKIE: &str = "shoal_session";
/// The header a changing request made with the cookie carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The form field the dashboard's own forms (logout) carry it in.
pub const CSRF_FIELD: &str = "csrf";
/// How long a session lasts after the last page its browser loaded.
pub const LIFETIME: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// How long a session lasts at most after its login, however often it is renewed (an open
/// wall screen, or a copied cookie, logs in again at least this often).
pub const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

const VERSION: &str = "v2";
const MAC_PURPOSE: &str = "dashboard session v2";
const CSRF_PURPOSE: &str = "dashboard csrf v1";

/// A checked session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Random, made at the login: what the CSRF token is bound to.
    pub id: String,
    /// The SHA-256 of the token it was opened with (hex): how the token is looked up.
    pub token_hash: String,
    /// When it ends, in seconds since the epoch.
    pub expires: u64,
    /// When its login was, in seconds since the epoch: it ends [`MAX_AGE`] after.
    pub born: u64,
}

impl Session {
    /// When it ends at the latest: [`MAX_AGE`] after its login.
    pub fn ends_by(&self) -> Timestamp {
        let secs = self.born.saturating_add(MAX_AGE.as_secs());
        Timestamp(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
    }

    /// Whether half of its lifetime has passed at `now` (pages then give a new cookie).
    pub fn due_for_renewal(&self, now: Timestamp) -> bool {
        self.expires.saturating_sub(secs(now)) < LIFETIME.as_secs() / 2
    }
}

fn secs(t: Timestamp) -> u64 {
    u64::try_from(t.millis() / 1000).unwrap_or(0)
}

/// A new session for the token whose hash is `token_hash`, logged in at `now` (its cookie:
/// [`renew`]).
pub fn new_session(token_hash: &str, now: Timestamp) -> Session {
    use rand::RngCore as _;
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    Session {
        id: shoal_shared::hex::encode(&id),
        token_hash: token_hash.to_owned(),
        expires: 0,
        born: secs(now),
    }
}

/// The cookie value of `session` lasting [`LIFETIME`] from `now`.
pub fn renew(key: &MasterKey, session: &Session, now: Timestamp) -> String {
    let expires = (secs(now) + LIFETIME.as_secs()).min(session.born + MAX_AGE.as_secs());
    let signed = format!(
        "{}.{}.{expires}.{}",
        session.id, session.born, session.token_hash
    );
    let mac = key.fingerprint(MAC_PURPOSE, signed.as_bytes());
    format!("{VERSION}.{signed}.{mac}")
}

/// Checks a cookie's value: made by this planner's key and not expired at `now`.
///
/// # Errors
/// 401 saying to log in again.
pub fn open(key: &MasterKey, value: &str, now: Timestamp) -> Result<Session, ApiError> {
    let again = |why: &str| {
        ApiError::unauthorized(format!(
            "the dashboard session {why}: log in again at /login"
        ))
    };
    let mut parts = value.split('.');
    let (Some(VERSION), Some(id), Some(born), Some(expires), Some(hash), Some(mac), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(again("cookie is not one this planner makes"));
    };
    let signed = format!("{id}.{born}.{expires}.{hash}");
    let wanted = key.fingerprint(MAC_PURPOSE, signed.as_bytes());
    if !same(mac, &wanted) {
        return Err(again("cookie is not one this planner makes"));
    }
    let (Ok(expires), Ok(born)) = (expires.parse::<u64>(), born.parse::<u64>()) else {
        return Err(again("cookie is not one this planner makes"));
    };
    if expires <= secs(now) || born + MAX_AGE.as_secs() <= secs(now) {
        return Err(again("has ended"));
    }
    Ok(Session {
        id: id.to_owned(),
        token_hash: hash.to_owned(),
        expires,
        born,
    })
}

/// The CSRF token of `session`: the same for every renewal of it.
pub fn csrf_token(key: &MasterKey, session: &Session) -> String {
    let bound = format!("{}.{}", session.id, session.token_hash);
    key.fingerprint(CSRF_PURPOSE, bound.as_bytes())
}

/// Whether `given` is the CSRF token of `session`.
pub fn csrf_matches(key: &MasterKey, session: &Session, given: &str) -> bool {
    same(given, &csrf_token(key, session))
}

/// The session cookie's value in a request, if it sent one.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    let mut ours = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim());
    let first = ours.next().filter(|v| !v.is_empty());
    // Two of them: another page of this host (cookies are not kept apart by port) set one
    // with a longer path to be sent first. Neither is taken.
    if ours.next().is_some() {
        return None;
    }
    first
}

/// The `Set-Cookie` value of a session. No `Secure` attribute: the planner serves plain
/// HTTP (on loopback, or behind a TLS proxy, which should add it).
pub fn set_cookie(value: &str) -> HeaderValue {
    let text = format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        LIFETIME.as_secs()
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| clear_cookie())
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("shoal_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// Checks that a request made with `session` comes from one of the planner's own pages:
/// reading (`GET`, `HEAD`) needs nothing more; anything else needs the session's CSRF token
/// in [`CSRF_HEADER`], and an `Origin`, if sent, that is the planner's.
///
/// # Errors
/// 403 saying what is missing.
pub fn check_intent(
    key: &MasterKey,
    session: &Session,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD) {
        return Ok(());
    }
    if !same_origin(headers) {
        return Err(ApiError::forbidden(
            "a request with the dashboard's session cookie must come from the dashboard's own pages (its Origin is another site)",
        ));
    }
    let given = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if given.is_empty() || !csrf_matches(key, session, given) {
        return Err(ApiError::forbidden(
            "a request that changes something with the dashboard's session cookie needs the session's CSRF token in the X-CSRF-Token header (the dashboard's pages send it; scripts use \"Authorization: Bearer <token>\" instead)",
        ));
    }
    Ok(())
}

/// Whether the request's `Origin`, if it sent one, is the host it was sent to.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = origin.to_str().ok().and_then(|o| o.parse::<Uri>().ok());
    match (origin, host) {
        (Some(o), Some(host)) => {
            o.authority()
                .is_some_and(|a| a.as_str().eq_ignore_ascii_case(host))
                && o.scheme_str().is_some_and(|s| s == "http" || s == "https")
        }
        _ => false,
    }
}

/// Where a browser that asked for a page without a valid session goes: the login page,
/// coming back here after. Only for reading a page (not `/api/…`) from a client that asks
/// for HTML; everyone else gets the 401 as it is.
pub fn to_login(method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
    let page = matches!(*method, Method::GET | Method::HEAD) && !uri.path().starts_with("/api/");
    let html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if !(page && html) {
        return None;
    }
    let next = uri.path_and_query().map_or("/", |p| p.as_str());
    let to = format!("/login?next={}", encode_component(next));
    let mut response = Redirect::to(&to).into_response();
    if cookie(headers).is_some() {
        // An ended or foreign session: the browser forgets it.
        response
            .headers_mut()
            .insert(header::SET_COOKIE, clear_cookie());
    }
    Some(response)
}

/// `s` percent-encoded for a query parameter's value.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Equality of two texts whose time depends only on their lengths (MACs, CSRF tokens).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        MasterKey::create(&dir.path().join("master.key")).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A new session's cookie value, as a login makes it.
    fn issue(key: &MasterKey, token_hash: &str, now: Timestamp) -> String {
        renew(key, &new_session(token_hash, now), now)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                *name,
                HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        h
    }

    const HASH: &str = "ab12";

    #[test]
    fn a_session_opens_with_its_own_key_until_it_ends() {
        let (k, other) = (key(), key());
        let now = Timestamp(1_800_000_000_000);
        let value = issue(&k, HASH, now);
        let s = open(&k, &value, now).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(s.token_hash, HASH);
        assert!(!s.due_for_renewal(now));
        let later = now.plus_millis(7 * 3600 * 1000);
        assert!(open(&k, &value, later).is_ok_and(|s| s.due_for_renewal(later)));
        let ended = now.plus_millis(12 * 3600 * 1000);
        assert!(open(&k, &value, ended).is_err(), "ended after its lifetime");
        assert!(open(&other, &value, now).is_err(), "another planner's key");
    }

    #[test]
    fn renewing_a_session_never_takes_it_past_a_day_from_its_login() {
        let k = key();
        let login = Timestamp(1_800_000_000_000);
        let mut value = issue(&k, HASH, login);
        for hours in [7, 14, 21] {
            let at = login.plus_millis(hours * 3600 * 1000);
            let s = open(&k, &value, at).unwrap_or_else(|e| panic!("{e:?}"));
            value = renew(&k, &s, at);
        }
        let last = open(&k, &value, login.plus_millis(23 * 3600 * 1000));
        assert!(last.is_ok_and(|s| s.expires == s.born + MAX_AGE.as_secs()));
        assert!(open(&k, &value, login.plus_millis(24 * 3600 * 1000)).is_err());
    }

    #[test]
    fn a_changed_cookie_does_not_open() {
        let k = key();
        let now = Timestamp(1_800_000_000_000);
        let value = issue(&k, HASH, now);
        let parts: Vec<&str> = value.split('.').collect();
        let (id, born, expires, mac) = (parts[1], parts[2], parts[3], parts[5]);
        assert!(open(&k, &format!("v2.{id}.{born}.{expires}.{HASH}.{mac}"), now).is_ok());
        let longer = format!("v2.{id}.{born}.{}.{HASH}.{mac}", u64::MAX);
        let younger = format!("v2.{id}.{}.{expires}.{HASH}.{mac}", u64::MAX / 2);
        let other_token = format!("v2.{id}.{born}.{expires}.cd34.{mac}");
        let other_id = format!("v2.00.{born}.{expires}.{HASH}.{mac}");
        for forged in [
            longer.as_str(),
            younger.as_str(),
            other_token.as_str(),
            other_id.as_str(),
            "",
            "v2",
            "v2.1.2.3.4.5.6",
            HASH,
        ] {
            assert!(open(&k, forged, now).is_err(), "{forged:?} opened");
        }
    }

    #[test]
    fn only_reading_needs_no_csrf_token_and_a_wrong_one_is_refused() {
        let k = key();
        let now = Timestamp::now();
        let s = open(&k, &issue(&k, HASH, now), now).unwrap_or_else(|e| panic!("{e:?}"));
        let token = csrf_token(&k, &s);
        let none = headers(&[]);
        assert!(check_intent(&k, &s, &Method::GET, &none).is_ok());
        assert!(check_intent(&k, &s, &Method::POST, &none).is_err());
        let another = open(&k, &issue(&k, HASH, now), now).unwrap_or_else(|e| panic!("{e:?}"));
        let wrong = headers(&[(CSRF_HEADER, &csrf_token(&k, &another))]);
        assert!(check_intent(&k, &s, &Method::POST, &wrong).is_err());
        // A renewed session keeps its CSRF token (the pages open in the browser hold it).
        let later = now.plus_millis(7 * 3600 * 1000);
        let renewed = open(&k, &renew(&k, &s, later), later).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(csrf_token(&k, &renewed), token);
        let right = headers(&[(CSRF_HEADER, &token), ("host", "127.0.0.1:8080")]);
        assert!(check_intent(&k, &s, &Method::POST, &right).is_ok());
        let from_here = headers(&[
            (CSRF_HEADER, &token),
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert!(check_intent(&k, &s, &Method::DELETE, &from_here).is_ok());
        let from_elsewhere = headers(&[
            (CSRF_HEADER, &token),
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:9999"),
        ]);
        assert!(check_intent(&k, &s, &Method::POST, &from_elsewhere).is_err());
        let opaque = headers(&[(CSRF_HEADER, &token), ("origin", "null")]);
        assert!(check_intent(&k, &s, &Method::POST, &opaque).is_err());
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; shoal_session=v1.x.y.z; b=2")]);
        assert_eq!(cookie(&h), Some("v1.x.y.z"));
        let h = headers(&[("cookie", "a=1"), ("cookie", "shoal_session=v")]);
        assert_eq!(cookie(&h), Some("v"));
        assert_eq!(cookie(&headers(&[("cookie", "shoal_session=")])), None);
        assert_eq!(cookie(&headers(&[])), None);
        // One set by another page of the host, sent first: neither is taken.
        let tossed = headers(&[("cookie", "shoal_session=theirs; shoal_session=ours")]);
        assert_eq!(cookie(&tossed), None);
    }

    #[test]
    fn a_browser_asking_for_a_page_goes_to_the_login_and_comes_back() {
        let html = headers(&[("accept", "text/html,application/xhtml+xml")]);
        let uri: Uri = "/deployments/x?task=y"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let r = to_login(&Method::GET, &uri, &html).unwrap_or_else(|| panic!("no redirect"));
        assert_eq!(
            r.headers().get(header::LOCATION).map(HeaderValue::as_bytes),
            Some(&b"/login?next=/deployments/x%3Ftask%3Dy"[..])
        );
        let api: Uri = "/api/deployments".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(to_login(&Method::GET, &api, &html).is_none());
        assert!(to_login(&Method::GET, &uri, &headers(&[("accept", "*/*")])).is_none());
        assert!(to_login(&Method::POST, &uri, &html).is_none());
    }
}
