//! Dashboard sessions: a login with a token opens one (`SessionStarted`), a logout ends it
//! (`SessionEnded`). A session cookie opens the API only while its session is open here,
//! so a logout ends every copy of the cookie, not only the browser's, and the log says who
//! logged in and out, when. Sessions past their longest life are forgotten at the next
//! login, by the records' own times, so replay forgets the same ones.

use super::decide::{NewEvent, Rejection};
use super::state::{Changes, DocKey, State};
use serde::{Deserialize, Serialize};
use shoal_shared::events::Event;
use shoal_shared::{Timestamp, TokenName};

/// An open session, by its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDoc {
    /// 128 random bits, lowercase hex (the id in its cookie).
    pub id: String,
    /// The token it was opened with.
    pub token: TokenName,
    pub started_at: Timestamp,
    /// When it ends at the latest, however often its pages renew the cookie.
    pub ends_by: Timestamp,
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
                };
                self.sessions.insert(session.clone(), doc);
                changes.docs.insert(DocKey::Session(session.clone()));
            }
            Event::SessionEnded { session, .. } => {
                self.sessions.remove(session);
                changes.docs.insert(DocKey::Session(session.clone()));
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
/// `token_hash`, lasting at most until `ends_by`.
pub(super) fn start(
    state: &State,
    id: &str,
    token_hash: &str,
    ends_by: Timestamp,
) -> Result<Vec<NewEvent>, Rejection> {
    let Some(token) = state.tokens.get(token_hash) else {
        return Err(Rejection::NotFound(
            "the token is not valid (unknown or revoked)".into(),
        ));
    };
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

/// `EndSession`: a logout. A session no longer open (ended, or forgotten) needs nothing.
pub(super) fn end(state: &State, id: &str) -> Vec<NewEvent> {
    state.sessions.get(id).map_or_else(Vec::new, |s| {
        vec![NewEvent::new(Event::SessionEnded {
            token: s.token.clone(),
            session: id.to_owned(),
        })]
    })
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

    #[test]
    fn a_session_opens_for_a_known_token_and_ends_once() {
        let mut s = state();
        assert!(matches!(
            start(&s, ID, "cd", Timestamp(100)),
            Err(Rejection::NotFound(_))
        ));
        assert!(matches!(
            start(&s, "not-hex", HASH, Timestamp(100)),
            Err(Rejection::Invalid(_))
        ));
        let started = start(&s, ID, HASH, Timestamp(100)).unwrap_or_else(|e| panic!("{e}"));
        apply(&mut s, 10, started);
        assert_eq!(s.sessions[ID].token.as_str(), "ci");
        assert!(matches!(
            start(&s, ID, HASH, Timestamp(100)),
            Err(Rejection::Conflict(_))
        ));
        let ended = end(&s, ID);
        assert_eq!(ended.len(), 1);
        let changes = apply(&mut s, 20, ended);
        assert!(s.sessions.is_empty());
        assert!(changes.docs.contains(&DocKey::Session(ID.into())));
        assert!(end(&s, ID).is_empty(), "a second logout records nothing");
    }

    #[test]
    fn sessions_past_their_longest_life_are_forgotten_at_the_next_login() {
        let mut s = state();
        let old = start(&s, ID, HASH, Timestamp(100)).unwrap_or_else(|e| panic!("{e}"));
        apply(&mut s, 10, old);
        let other = "f".repeat(32);
        let new = start(&s, &other, HASH, Timestamp(500)).unwrap_or_else(|e| panic!("{e}"));
        let changes = apply(&mut s, 100, new);
        assert_eq!(s.sessions.keys().collect::<Vec<_>>(), [&other]);
        assert!(changes.docs.contains(&DocKey::Session(ID.into())));
    }
}
