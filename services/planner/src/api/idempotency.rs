//! The `Idempotency-Key` header of the create endpoints: what it is checked for and what it
//! becomes (a key scoped to the caller, with the SHA-256 of the request's body).

use super::ApiError;
use super::auth::Caller;
use crate::domain::Command;
use shoal_shared::events::IdempotencyKey;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The answer's header when it is the first answer again.
pub const REPLAYED: &str = "idempotent-replayed";
/// Longest key.
const MAX_KEY: usize = 255;

/// `cmd`, once per idempotency key when the request has one.
pub fn once(key: Option<IdempotencyKey>, cmd: Command) -> Command {
    match key {
        Some(key) => Command::Once {
            key,
            now: shoal_shared::Timestamp::now(),
            inner: Box::new(cmd),
        },
        None => cmd,
    }
}

/// The idempotency key of a request, if it sent one: scoped to the caller, with a
/// fingerprint of `body` (an HMAC under the master key: the body may hold sensitive values
/// in clear, and the fingerprint is recorded where viewers read it).
///
/// # Errors
/// A key that is empty, too long or not printable ASCII.
pub fn key_of(
    headers: &axum::http::HeaderMap,
    caller: &Caller,
    body: &[u8],
    master_key: &shoal_runtime::secrets::MasterKey,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Idempotency-Key: must be 1 to {MAX_KEY} printable ASCII characters without spaces (e.g. a UUID)"
            ))
        })?;
    let who = caller
        .actor()
        .map_or_else(|| "anyone".to_owned(), |a| a.to_string());
    Ok(Some(IdempotencyKey {
        key: format!("{who}/{key}"),
        request: master_key.fingerprint("idempotent request", body),
    }))
}

/// What a keyed create's command came to: `None` when it made something now, the stream of
/// what the key's first request made when it is a replay; other refusals are errors.
///
/// # Errors
/// The command was refused otherwise.
pub fn replayed(
    result: Result<crate::log::writer::Appended, crate::log::writer::WriteError>,
) -> Result<Option<String>, ApiError> {
    match result {
        Ok(_) => Ok(None),
        Err(crate::log::writer::WriteError::Rejected(crate::domain::Rejection::Replayed(made))) => {
            Ok(Some(made))
        }
        Err(e) => Err(e.into()),
    }
}

/// The 201 answer of a create: `body`, marked `Idempotent-Replayed: true` when it is the
/// key's first answer again.
pub fn created<T: serde::Serialize>(replayed: bool, body: T) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let answer = (axum::http::StatusCode::CREATED, axum::Json(body));
    if replayed {
        (answer.0, [(REPLAYED, "true")], answer.1).into_response()
    } else {
        answer.into_response()
    }
}
