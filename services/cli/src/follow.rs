//! Following the planner's event log live over `GET /api/events/stream` (Server-Sent Events):
//! record after record, in log order, each once. When the connection drops or the planner
//! stops (it ends every stream on shutdown), the stream is opened again after the last record
//! received (`Last-Event-ID`), after a pause that grows while the planner stays away, for up
//! to [`GIVE_UP`].

use crate::client::{ApiClient, ClientError};
use eventsource_stream::{Event, EventStreamError, Eventsource as _};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use shoal_shared::api::EventView;
use std::time::Duration;
use tokio::time::Instant;

/// How long the planner may stay unreachable (or answer 5xx) before following gives up.
pub const GIVE_UP: Duration = Duration::from_secs(60);

/// The pause before connecting again after a drop; it doubles up to [`LONGEST_PAUSE`] while
/// no record arrives.
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

type Events = BoxStream<'static, Result<Event, EventStreamError<reqwest::Error>>>;

/// A reader of the records one query of the event stream selects, from a sequence on.
pub struct EventFollower {
    api: ApiClient,
    /// `/api/events/stream?…`.
    path: String,
    /// The sequence of the last record received: where a new connection resumes.
    last: Option<u64>,
    /// The open stream, if any.
    events: Option<Events>,
    /// The pause before the next connection; none before the first.
    pause: Option<Duration>,
    /// Since when connecting fails (none once a connection opened).
    failing_since: Option<Instant>,
}

impl EventFollower {
    /// Follows the records `query` selects (`stream=…&type=A,B`, as `GET /api/events` takes
    /// them) after sequence `after` (0: from the log's first record).
    pub fn new(api: &ApiClient, query: &str, after: u64) -> EventFollower {
        EventFollower {
            api: api.clone(),
            path: format!("/api/events/stream?{query}&after={after}"),
            last: None,
            events: None,
            pause: None,
            failing_since: None,
        }
    }

    /// The next record, once the planner holds it durably; waits for it.
    ///
    /// # Errors
    /// The planner refused the stream (a bad query, a revoked token: 4xx), sent a record
    /// this client cannot read, or could not be reached for [`GIVE_UP`].
    pub async fn next(&mut self) -> Result<EventView, ClientError> {
        loop {
            let Some(events) = self.events.as_mut() else {
                self.connect().await?;
                continue;
            };
            match events.next().await {
                Some(Ok(event)) if event.data.is_empty() => {}
                Some(Ok(event)) => return self.record(&event),
                // Dropped, silent too long, or ended by a stopping planner: resume.
                Some(Err(_)) | None => self.events = None,
            }
        }
    }

    /// The record an event carries; from here on the stream resumes after it.
    fn record(&mut self, event: &Event) -> Result<EventView, ClientError> {
        let view: EventView =
            serde_json::from_str(&event.data).map_err(|e| ClientError::Answer {
                request: format!("GET {}", self.path),
                cause: e.to_string(),
            })?;
        self.last = Some(view.seq);
        self.pause = Some(FIRST_PAUSE);
        Ok(view)
    }

    /// Opens the stream (again: after the pause); an error only when it is no use trying
    /// any more.
    async fn connect(&mut self) -> Result<(), ClientError> {
        let pause = match self.pause {
            Some(pause) => {
                tokio::time::sleep(pause).await;
                (pause * 2).min(LONGEST_PAUSE)
            }
            None => FIRST_PAUSE,
        };
        self.pause = Some(pause);
        match self.api.get_event_stream(&self.path, self.last).await {
            Ok(resp) => {
                self.failing_since = None;
                self.events = Some(resp.bytes_stream().eventsource().boxed());
                Ok(())
            }
            Err(e) if passing(&e) => {
                let since = *self.failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= GIVE_UP {
                    Err(e)
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// Whether an error opening the stream may pass: the planner is away, starting or failing,
/// rather than refusing.
fn passing(e: &ClientError) -> bool {
    match e {
        ClientError::Unreachable { .. } => true,
        ClientError::Api { status, .. } => *status >= 500,
        ClientError::Answer { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(status: u16) -> ClientError {
        ClientError::Api {
            status,
            message: String::new(),
        }
    }

    #[test]
    fn a_planner_away_or_starting_is_waited_for_and_a_refusal_is_not() {
        let away = ClientError::Unreachable {
            api: "http://127.0.0.1:1".into(),
            cause: "connection refused".into(),
        };
        assert!(passing(&away));
        assert!(passing(&api_error(503)));
        assert!(!passing(&api_error(401)));
        assert!(!passing(&api_error(400)));
    }

    #[test]
    fn the_first_connection_starts_at_the_sequence_asked() {
        let f = EventFollower::new(&ApiClient::new("http://x"), "stream=deployment/d", 7);
        assert_eq!(f.path, "/api/events/stream?stream=deployment/d&after=7");
        assert_eq!(f.last, None);
    }
}
