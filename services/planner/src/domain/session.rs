//! Dashboard sessions: a login with a token opens one (`SessionStarted`), a logout ends it
//! (`SessionEnded`). A session cookie opens the API only while its session is open here,
//! so a logout ends every copy of the cookie, not only the browser's, and the log says who
//! logged in and out, when. Sessions are kept, ended or not, until their longest life is
//! over, and forgotten at the next login, by the records' own times, so replay forgets the
//! same ones; a token logs in at most [`LOGINS_PER_DAY`] times within that life, which bounds
//! what its holder (a viewer too) can write to the log and hold in memory.

use super::decide::{NewEvent, Rejection};
use super::state::{Changes, DocKey, State};
use serde::{Deserialize, Serialize};
use shoal_shared::events::Event;
use shoal_shared::{Timestamp, TokenName};

/// Logins of one token within a session's longest life (a day), ended sessions included.
pub const LOGINS_PER_DAY: usize = 100;

/// A session within its longest life, by its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDoc {
    /// 128 random bits, lowercase hex (the id in its cookie).
    pub id: String,
    /// The token it was opened with.
    pub token: TokenName,
    pub started_at: Timestamp,
    /// When it ends at the latest, however often its pages renew the cookie.
    pub ends_by: Timestamp,
    /// When a logout ended it.
    pub ended_at: Option<Timestamp>,
}

impl SessionDoc {
    /// Whether its cookie opens the API at `now`.
    pub fn open_at(&self, now: Timestamp) -> bool {
        self.ended_at.is_none() && now < self.ends_by
    }
}

impl State {
    /// How a session's events change the state.
    pub(super) fn apply_session(&mut self, at: Timestamp, event: &Event, changes: &mut Changes) {
        match event {
            Event::SessionStarted {
                token,
                session,
                ends_by,
            } => {
                self.forget_sessions_ended_by(at, changes);
                let doc = SessionDoc {
                    id: session.clone(),
                    token: token.clone(),
                    started_at: at,
                    ends_by: *ends_by,
                    ended_at: None,
                };
                self.sessions.insert(session.clone(), doc);
                changes.docs.insert(DocKey::Session(session.clone()));
            }
            Event::SessionEnded { session, .. } => {
                if let Some(s) = self.sessions.get_mut(session) {
                    s.ended_at = Some(at);
                    changes.docs.insert(DocKey::Session(session.clone()));
                }
            }
            _ => {}
        }
    }

    /// Drops the sessions whose longest life was over by `at` (their cookies are refused
    /// by their expiry already).
    fn forget_sessions_ended_by(&mut self, at: Timestamp, changes: &mut Changes) {
        let over: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.ends_by <= at)
            .map(|s| s.id.clone())
            .collect();
        for id in over {
            self.sessions.remove(&id);
            changes.docs.insert(DocKey::Session(id));
        }
    }
}

/// `StartSession`: a session `id` (fresh, 32 hex digits) for the token whose SHA-256 is
/// `token_hash`, logging in at `now` and lasting at most until `ends_by`; refused once the
/// token has logged in [`LOGINS_PER_DAY`] times in sessions not yet over at `now`.
pub(super) fn start(
    state: &State,
    id: &str,
    token_hash: &str,
    (now, ends_by): (Timestamp, Timestamp),
) -> Result<Vec<NewEvent>, Rejection> {
    let Some(token) = state.tokens.get(token_hash) else {
        return Err(Rejection::NotFound(
            "the token is not valid (unknown or revoked)".into(),
        ));
    };
    let recent = state
        .sessions
        .values()
        .filter(|s| s.token == token.name && s.ends_by > now)
        .count();
    if recent >= LOGINS_PER_DAY {
        return Err(Rejection::Conflict(format!(
            "token \"{}\" has logged in {recent} times within a day; log in again later, or use another token",
            token.name
        )));
    }
    if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Rejection::Invalid(
            "session: must be 32 lowercase hex digits".into(),
        ));
    }
    if state.sessions.contains_key(id) {
        return Err(Rejection::Conflict(format!("session {id} exists already")));
    }
    Ok(vec![NewEvent::new(Event::SessionStarted {
        token: token.name.clone(),
        session: id.to_owned(),
        ends_by,
    })])
}

/// `EndSession`: a logout. A session ended already, or forgotten, needs nothing.
pub(super) fn end(state: &State, id: &str) -> Vec<NewEvent> {
    match state.sessions.get(id) {
        Some(s) if s.ended_at.is_none() => vec![NewEvent::new(Event::SessionEnded {
            token: s.token.clone(),
            session: id.to_owned(),
        })],
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::state::TokenDoc;
    use shoal_shared::auth::{Actor, Role};

    const HASH: &str = "ab";
    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn state() -> State {
        let mut s = State::default();
        let name = TokenName::parse("ci").unwrap_or_else(|e| panic!("{e}"));
        s.tokens.insert(
            HASH.into(),
            TokenDoc {
                name,
                role: Role::Viewer,
                hash: HASH.into(),
                created_at: Timestamp(1),
                created_by: Actor::Planner,
            },
        );
        s
    }

    fn apply(s: &mut State, at: i64, events: Vec<NewEvent>) -> Changes {
        let mut changes = Changes::default();
        for e in events {
            s.apply_session(Timestamp(at), &e.event, &mut changes);
        }
        changes
    }

    /// Logging in at `now`, for a day.
    fn day(now: i64) -> (Timestamp, Timestamp) {
        (Timestamp(now), Timestamp(now + 100))
    }

    #[test]
    fn a_session_opens_for_a_known_token_and_ends_once() {
        let mut s = state();
        assert!(matches!(
            start(&s, ID, "cd", day(10)),
            Err(Rejection::NotFound(_))
        ));
        assert!(matches!(
            start(&s, "not-hex", HASH, day(10)),
            Err(Rejection::Invalid(_))
        ));
        let started = start(&s, ID, HASH, day(10)).unwrap_or_else(|e| panic!("{e}"));
        apply(&mut s, 10, started);
        assert_eq!(s.sessions[ID].token.as_str(), "ci");
        assert!(s.sessions[ID].open_at(Timestamp(50)));
        assert!(
            !s.sessions[ID].open_at(Timestamp(110)),
            "past its longest life"
        );
        assert!(matches!(
            start(&s, ID, HASH, day(10)),
            Err(Rejection::Conflict(_))
        ));
        let ended = end(&s, ID);
        assert_eq!(ended.len(), 1);
        let changes = apply(&mut s, 20, ended);
        assert!(!s.sessions[ID].open_at(Timestamp(50)));
        assert_eq!(s.sessions[ID].ended_at, Some(Timestamp(20)));
        assert!(changes.docs.contains(&DocKey::Session(ID.into())));
        assert!(end(&s, ID).is_empty(), "a second logout records nothing");
    }

    #[test]
    fn sessions_past_their_longest_life_are_forgotten_at_the_next_login() {
        let mut s = state();
        let old = start(&s, ID, HASH, day(10)).unwrap_or_else(|e| panic!("{e}"));
        apply(&mut s, 10, old);
        let other = "f".repeat(32);
        let new = start(&s, &other, HASH, day(110)).unwrap_or_else(|e| panic!("{e}"));
        let changes = apply(&mut s, 110, new);
        assert_eq!(s.sessions.keys().collect::<Vec<_>>(), [&other]);
        assert!(changes.docs.contains(&DocKey::Session(ID.into())));
    }

    #[test]
    fn a_token_logs_in_a_bounded_number_of_times_a_day_logouts_included() {
        let mut s = state();
        for i in 0..LOGINS_PER_DAY {
            let id = format!("{i:032x}");
            let started = start(&s, &id, HASH, day(10)).unwrap_or_else(|e| panic!("{e}"));
            apply(&mut s, 10, started);
            let ended = end(&s, &id);
            apply(&mut s, 10, ended);
        }
        let over = start(&s, &"e".repeat(32), HASH, day(50));
        assert!(
            matches!(&over, Err(Rejection::Conflict(m)) if m.contains("logged in 100 times")),
            "{over:?}"
        );
        // Once those sessions' day is over, the token logs in again.
        assert!(start(&s, &"e".repeat(32), HASH, day(110)).is_ok());
    }
}
