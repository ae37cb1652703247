//! The audit trail, read from the log itself:
//!
//! - `GET /api/events?stream=&type=&after=&limit=`: a page of records after a sequence, of
//!   one stream and of some types (`type=TaskFinished,DeploymentFinished`). The answer's
//!   `Shoal-Next-After` header is where the next page starts: the last record the page
//!   looked at (a filtered page looks at no more than [`SCAN`] records).
//! - `GET /api/events/stream?stream=&type=&after=`: the same records as Server-Sent Events
//!   (`id:` the sequence, `event:` the type, `data:` the record as JSON), then every new one
//!   once durable, until the client or the planner goes. A reconnecting client sends
//!   `Last-Event-ID` and resumes after it; without it or `after`, the stream starts at the
//!   log's end.

use super::{ApiError, AppState};
use crate::domain::state::{SessionDoc, TokenDoc};
use crate::log::{EventLog, LogError, Proj};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;
use shoal_shared::Timestamp;
use shoal_shared::api::{ErrorBody, EventView};
use shoal_shared::events::{Envelope, check_types};
use std::collections::VecDeque;
use std::convert::Infallible;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;
/// Most records one filtered page looks at.
pub const SCAN: usize = 100_000;
/// Records read from the log at a time.
const READ: usize = 1024;
/// The header saying where the next page starts.
pub const NEXT_AFTER: &str = "Shoal-Next-After";

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only the records of this stream (e.g. `deployment/<id>`).
    stream: Option<String>,
    /// Only records of these event types, comma-separated (e.g. `TaskFinished,DeploymentFinished`).
    #[serde(rename = "type")]
    types: Option<String>,
    /// The records after this sequence (default: from the first).
    after: Option<u64>,
    /// Most records (default 100, at most 10,000); pages only.
    #[param(minimum = 1, maximum = 10_000)]
    limit: Option<usize>,
}

/// `Last-Event-ID`: where a reconnecting client of the event stream resumes.
#[derive(utoipa::IntoParams)]
#[into_params(names("Last-Event-ID"), parameter_in = Header)]
pub struct LastEventId(
    /// The sequence of the last record received: the stream resumes after it.
    pub Option<u64>,
);

/// Which records a reader wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    stream: Option<String>,
    /// Empty: every type.
    types: Vec<String>,
}

impl Filter {
    /// The filter of a query; an unknown type is refused, naming the known ones.
    fn of(q: &EventQuery) -> Result<Filter, ApiError> {
        let types: Vec<String> = q
            .types
            .iter()
            .flat_map(|t| t.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        check_types(&types).map_err(|e| ApiError::bad_request(format!("type: {e}")))?;
        Ok(Filter {
            stream: q.stream.clone().filter(|s| !s.is_empty()),
            types,
        })
    }

    fn wants(&self, env: &Envelope) -> bool {
        self.types.is_empty() || self.types.contains(&env.event_type)
    }

    /// Up to `limit` wanted records after `after` and no later than `upto`, where the next
    /// page starts (the last sequence looked at; at most [`SCAN`] records are), and whether
    /// every record up to `upto` was looked at.
    pub fn page(
        &self,
        log: &EventLog,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Page, LogError> {
        let mut page = Page {
            records: Vec::new(),
            next_after: after,
            done: false,
        };
        let mut scanned = 0;
        loop {
            let read = match &self.stream {
                Some(stream) => log.read_stream(stream, page.next_after, READ)?,
                None => log.read(page.next_after, READ)?,
            };
            let full = read.len() == READ;
            for env in read {
                if env.seq > upto {
                    page.done = true;
                    return Ok(page);
                }
                page.next_after = env.seq;
                scanned += 1;
                if self.wants(&env) {
                    page.records.push(env);
                    if page.records.len() >= limit {
                        return Ok(page);
                    }
                }
            }
            if !full {
                page.done = true;
                return Ok(page);
            }
            if scanned >= SCAN {
                return Ok(page);
            }
        }
    }
}

/// What [`Filter::page`] found.
#[derive(Debug)]
pub struct Page {
    pub records: Vec<Envelope>,
    /// The last sequence looked at: where the next page starts.
    pub next_after: u64,
    /// Every record up to the page's end was looked at.
    pub done: bool,
}

fn query_error(e: &axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::bad_request(format!(
        "{}; parameters: stream, type (event types, comma-separated), after (a sequence number), limit (1-{MAX_LIMIT})",
        e.body_text()
    ))
}

/// `GET /api/events`: a page of records, oldest first.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "events",
    operation_id = "list_events",
    params(EventQuery),
    responses(
        (status = 200, description = "A page of records, oldest first.", body = Vec<EventView>,
         headers(("Shoal-Next-After" = u64, description = "Where the next page starts: the last \
            sequence the page looked at (a filtered page looks at no more than 100,000)."))),
        (status = 400, description = "An unknown or invalid parameter, or an unknown event \
            type (the message names the known ones).", body = ErrorBody),
    ),
)]
pub(super) async fn list(
    State(app): State<AppState>,
    query: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| query_error(&e))?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and {MAX_LIMIT}"
        )));
    }
    let filter = Filter::of(&q)?;
    let after = q.after.unwrap_or(0);
    // Only durable records: one written and not yet flushed could be taken back by a crash,
    // and the feed, the event stream and audit exports never show it either.
    let durable = *app.durable.borrow();
    // Decoding up to MAX_LIMIT events is work too: it stays on the blocking thread.
    let (views, next) = app
        .read(move |log| {
            let page = filter.page(log, after, durable, limit)?;
            let views: Vec<EventView> = page.records.into_iter().map(EventView::of).collect();
            Ok((views, page.next_after))
        })
        .await?;
    let mut response = Json(views).into_response();
    response
        .headers_mut()
        .insert(NEXT_AFTER, HeaderValue::from(next));
    Ok(response)
}

/// `GET /api/events/stream`: the records as Server-Sent Events, then every new one once
/// durable, until the client or the planner goes.
#[utoipa::path(
    get,
    path = "/api/events/stream",
    tag = "events",
    operation_id = "follow_events",
    params(EventQuery, LastEventId),
    responses(
        (status = 200, description = "An endless stream: per record `id:` its sequence, \
            `event:` its type, `data:` the record as `GET /api/events` shows it.",
         body = String, content_type = "text/event-stream"),
        (status = 400, description = "An unknown or invalid parameter (`limit` included: a \
            stream has none), or an invalid Last-Event-ID.", body = ErrorBody),
    ),
)]
pub(super) async fn follow(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(q) = query.map_err(|e| query_error(&e))?;
    if q.limit.is_some() {
        return Err(ApiError::bad_request(
            "limit: a stream has no limit; use GET /api/events for pages",
        ));
    }
    let filter = Filter::of(&q)?;
    let last_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "Last-Event-ID: must be the sequence number of the last event received",
                    )
                })?,
        ),
    };
    let after = match last_id.or(q.after) {
        Some(after) => after,
        None => *app.durable.borrow(),
    };
    // The stream ends once its token is revoked or its session ended (checked at every
    // page it reads).
    let (token, session) = super::auth::credential(&app, &headers).unwrap_or_default();
    let follower = Follower {
        app,
        filter,
        at: after,
        pending: VecDeque::new(),
        token,
        session,
    };
    let stream = futures::stream::unfold(follower, |mut f| async move {
        let next = f.next().await?;
        Some((Ok(next), f))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// One client's place in the log.
struct Follower {
    app: AppState,
    filter: Filter,
    /// The last record looked at.
    at: u64,
    pending: VecDeque<Envelope>,
    /// The SHA-256 of the client's token (hex).
    token: String,
    /// The id of the dashboard session it was opened with, if it was.
    session: Option<String>,
}

impl Follower {
    /// The next wanted record once it is durable; `None` once the planner is stopping, the
    /// client's token is revoked, or the log cannot be read.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if self.app.closing.is_cancelled() {
                return None;
            }
            if let Some(env) = self.pending.pop_front() {
                return Some(sse_event(env));
            }
            let durable = *self.app.durable.borrow();
            if self.at >= durable {
                let mut rx = self.app.durable.clone();
                tokio::select! {
                    () = self.app.closing.cancelled() => return None,
                    changed = rx.wait_for(|d| *d > self.at) => { changed.ok()?; }
                }
                continue;
            }
            let (filter, at) = (self.filter.clone(), self.at);
            let (token, session) = (self.token.clone(), self.session.clone());
            let page = self
                .app
                .read(move |log| {
                    if !still_valid(log, &token, session.as_deref())? {
                        return Err(ApiError::unauthorized(
                            "the token was revoked or the session ended",
                        ));
                    }
                    Ok(filter.page(log, at, durable, READ)?)
                })
                .await;
            match page {
                Ok(page) => {
                    self.pending.extend(page.records);
                    // Done: nothing else up to `durable` is wanted.
                    self.at = if page.done { durable } else { page.next_after };
                }
                Err(_) => return None,
            }
        }
    }
}

/// Whether a stream's credential still opens the API: its token not revoked and its
/// dashboard session, if it has one, neither ended by a logout nor past its longest life.
fn still_valid(log: &EventLog, token: &str, session: Option<&str>) -> Result<bool, LogError> {
    if log
        .doc::<TokenDoc>(Proj::Tokens, token.as_bytes())?
        .is_none()
    {
        return Ok(false);
    }
    let Some(id) = session else {
        return Ok(true);
    };
    let doc: Option<SessionDoc> = log.doc(Proj::Sessions, id.as_bytes())?;
    Ok(doc.is_some_and(|s| s.open_at(Timestamp::now())))
}

/// A record as an event of the stream: the same JSON as the feed's and the pages'.
fn sse_event(env: Envelope) -> SseEvent {
    let event = SseEvent::default()
        .id(env.seq.to_string())
        .event(env.event_type.as_str());
    match EventView::json_of(&env) {
        Ok(json) => event.data(String::from_utf8_lossy(&json)),
        Err(e) => event.data(format!("{{\"undisplayable\": \"{e}\"}}")),
    }
}
