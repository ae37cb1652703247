//! Command-line values checked as they are parsed (clap value parsers), so a malformed one is
//! a usage error that says what is accepted, before anything is sent.

use crate::ids;
use shoal_shared::{PoolName, TargetName, WorkerName};

/// The planner's base URL from `--api`/`SHOAL_API`: `HOST:PORT` means `http://HOST:PORT`.
///
/// # Errors
/// Another scheme than `http://`; the message says why and what to give.
pub fn api_url(given: &str) -> Result<String, String> {
    let given = given.trim().trim_end_matches('/');
    if given.is_empty() {
        return Err("give the planner's address, e.g. http://127.0.0.1:8080".to_owned());
    }
    let Some((scheme, rest)) = given.split_once("://") else {
        return Ok(format!("http://{given}"));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" if !rest.is_empty() => Ok(format!("http://{rest}")),
        "http" => Err("http:// needs a host, e.g. http://127.0.0.1:8080".to_owned()),
        "https" => Err(format!(
            "the planner serves plain HTTP and this CLI speaks no TLS: give http://{rest}, \
             or put a tunnel in front of an https:// address"
        )),
        other => Err(format!(
            "\"{other}://\" is not a scheme the planner serves: give http://HOST:PORT \
             (or HOST:PORT, which means the same)"
        )),
    }
}

/// The streams `events --stream` takes, for messages.
pub const STREAM_FORMS: &str = "deployment/ID (an id or its first characters), target/NAME, \
                                pool/NAME, worker/NAME, token/NAME, rejected";

/// A stream of the event log, as `events --stream` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stream {
    /// `deployment/ID`, the id perhaps a prefix still to resolve.
    Deployment(String),
    /// Any other stream, spelled as the planner stores it.
    Other(String),
}

/// Parses `events --stream`.
///
/// # Errors
/// Not one of [`STREAM_FORMS`]; the message lists them.
pub fn stream(given: &str) -> Result<Stream, String> {
    let bad = |why: String| format!("{why}; the streams are {STREAM_FORMS}");
    if given == "rejected" {
        return Ok(Stream::Other(given.to_owned()));
    }
    let Some((kind, rest)) = given.split_once('/') else {
        return Err(bad(format!("\"{given}\" is not a stream")));
    };
    let named = |r: Result<(), String>| {
        r.map(|()| Stream::Other(given.to_owned()))
            .map_err(|e| bad(format!("{kind}/: {e}")))
    };
    match kind {
        "deployment" => ids::check_shape("deployment", rest)
            .map(|()| Stream::Deployment(rest.to_owned()))
            .map_err(|e| bad(e.to_string())),
        "target" => named(TargetName::parse(rest).map(drop).map_err(|e| e.to_string())),
        "pool" => named(PoolName::parse(rest).map(drop).map_err(|e| e.to_string())),
        "worker" => named(WorkerName::parse(rest).map(drop).map_err(|e| e.to_string())),
        "token" => named(
            shoal_shared::TokenName::parse(rest)
                .map(drop)
                .map_err(|e| e.to_string()),
        ),
        _ => Err(bad(format!("\"{kind}/\" is not a kind of stream"))),
    }
}

/// A `--var`: `KEY=VALUE` or `STEP.KEY=VALUE`, with a key that is not empty. Checked while the
/// command line is parsed, so a malformed one is a usage error.
///
/// # Errors
/// No `=`, or nothing before it.
pub fn var(given: &str) -> Result<String, String> {
    match given.split_once('=') {
        Some((name, _)) if !name.is_empty() && !name.ends_with('.') => Ok(given.to_owned()),
        _ => Err("expected KEY=VALUE or STEP.KEY=VALUE".to_owned()),
    }
}
