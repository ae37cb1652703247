//! API tokens: the token document, how `TokenCreated` and `TokenRevoked` change it, and the
//! commands that make and revoke tokens. Only a token's SHA-256 (hex) is ever here: the
//! token is made at the edge (`api::auth`), shown once, and looked up by its hash.

use super::decide::{NewEvent, Rejection, join};
use super::state::{Changes, DocKey, State};
use serde::{Deserialize, Serialize};
use shoal_shared::auth::{Actor, Role};
use shoal_shared::events::Event;
use shoal_shared::{Timestamp, TokenName};

/// The name of the admin token the planner makes at its first start.
pub const BOOTSTRAP_NAME: &str = "admin";

/// A token that opens the API, keyed by its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenDoc {
    pub name: TokenName,
    pub role: Role,
    /// SHA-256 of the token, lowercase hex.
    pub hash: String,
    pub created_at: Timestamp,
    pub created_by: Actor,
}

impl State {
    /// How a token's events change the state.
    pub(super) fn apply_token(&mut self, at: Timestamp, event: &Event, changes: &mut Changes) {
        match event {
            Event::TokenCreated {
                name,
                role,
                hash,
                created_by,
            } => {
                let doc = TokenDoc {
                    name: name.clone(),
                    role: *role,
                    hash: hash.clone(),
                    created_at: at,
                    created_by: created_by.clone(),
                };
                self.tokens.insert(hash.clone(), doc);
                changes.docs.insert(DocKey::Token(hash.clone()));
            }
            Event::TokenRevoked { hash, .. } => {
                self.tokens.remove(hash);
                changes.docs.insert(DocKey::Token(hash.clone()));
            }
            _ => {}
        }
    }

    /// The token of a name.
    pub fn token_named(&self, name: &TokenName) -> Option<&TokenDoc> {
        self.tokens.values().find(|t| &t.name == name)
    }
}

/// `CreateToken`: a new token of a free name, given as the hash of its value.
pub(super) fn create(
    state: &State,
    name: &TokenName,
    role: Role,
    hash: &str,
    created_by: &Actor,
) -> Result<Vec<NewEvent>, Rejection> {
    if !is_sha256_hex(hash) {
        return Err(Rejection::Invalid(
            "hash: must be a SHA-256 in lowercase hex (64 characters)".into(),
        ));
    }
    if state.token_named(name).is_some() {
        return Err(Rejection::Conflict(format!(
            "token \"{name}\" already exists; revoke it first (`shoal token revoke {name}`) or pick another name"
        )));
    }
    if state.tokens.contains_key(hash) {
        return Err(Rejection::Conflict(
            "a token with this hash exists already; make a new token".into(),
        ));
    }
    Ok(vec![NewEvent::new(Event::TokenCreated {
        name: name.clone(),
        role,
        hash: hash.to_owned(),
        created_by: created_by.clone(),
    })])
}

/// `BootstrapAdmin`: the planner's first admin token, only while there is no token at all
/// (so a restart never makes a second one).
pub(super) fn bootstrap(state: &State, hash: &str) -> Result<Vec<NewEvent>, Rejection> {
    if !state.tokens.is_empty() {
        return Ok(vec![]);
    }
    let name = TokenName::parse(BOOTSTRAP_NAME).map_err(|e| Rejection::Invalid(e.to_string()))?;
    create(state, &name, Role::Admin, hash, &Actor::Planner)
}

/// `RevokeToken`: the token stops working at once. The last admin token cannot be revoked:
/// nobody could make tokens any more.
pub(super) fn revoke(state: &State, name: &TokenName) -> Result<Vec<NewEvent>, Rejection> {
    let Some(doc) = state.token_named(name) else {
        let known = join(state.tokens.values().map(|t| &t.name));
        return Err(Rejection::NotFound(format!(
            "unknown token \"{name}\" (known: {known})"
        )));
    };
    let admins = state
        .tokens
        .values()
        .filter(|t| t.role == Role::Admin)
        .count();
    if doc.role == Role::Admin && admins == 1 {
        return Err(Rejection::Conflict(format!(
            "token \"{name}\" is the last admin token; create another admin token first (`shoal token create --name NAME --role admin`)"
        )));
    }
    Ok(vec![NewEvent::new(Event::TokenRevoked {
        name: name.clone(),
        hash: doc.hash.clone(),
    })])
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Changes;

    fn name(s: &str) -> TokenName {
        TokenName::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn hash(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    /// Decides a command against `state` and applies what it appended.
    fn when(state: &mut State, events: Result<Vec<NewEvent>, Rejection>) -> Result<(), Rejection> {
        for e in events? {
            state.apply_token(Timestamp(1), &e.event, &mut Changes::default());
        }
        Ok(())
    }

    fn given_tokens(tokens: &[(&str, Role, u8)]) -> State {
        let mut state = State::default();
        for (n, role, h) in tokens {
            let made = create(&state, &name(n), *role, &hash(*h), &Actor::Planner);
            when(&mut state, made).unwrap_or_else(|e| panic!("{e}"));
        }
        state
    }

    #[test]
    fn the_first_start_makes_one_admin_token_and_a_restart_none() {
        let mut state = State::default();
        let made = bootstrap(&state, &hash(1));
        when(&mut state, made).unwrap_or_else(|e| panic!("{e}"));
        let doc = state.token_named(&name("admin")).cloned();
        assert_eq!(
            doc.map(|d| (d.role, d.created_by)),
            Some((Role::Admin, Actor::Planner))
        );
        assert_eq!(bootstrap(&state, &hash(2)), Ok(vec![]));
    }

    #[test]
    fn a_token_name_or_hash_is_taken_once_and_the_hash_must_be_a_sha256() {
        let state = given_tokens(&[("ci", Role::Deployer, 1)]);
        let again = create(&state, &name("ci"), Role::Viewer, &hash(2), &Actor::Planner);
        assert!(matches!(again, Err(Rejection::Conflict(m)) if m.contains("already exists")));
        let same = create(&state, &name("cd"), Role::Viewer, &hash(1), &Actor::Planner);
        assert!(matches!(same, Err(Rejection::Conflict(_))));
        let clear = create(
            &state,
            &name("cd"),
            Role::Viewer,
            "shoal_abc",
            &Actor::Planner,
        );
        assert!(matches!(clear, Err(Rejection::Invalid(m)) if m.contains("SHA-256")));
    }

    #[test]
    fn a_revoked_token_is_gone_and_its_name_free_again() {
        let mut state = given_tokens(&[("admin", Role::Admin, 1), ("ci", Role::Deployer, 2)]);
        let revoked = revoke(&state, &name("ci"));
        when(&mut state, revoked).unwrap_or_else(|e| panic!("{e}"));
        assert!(state.token_named(&name("ci")).is_none());
        assert!(!state.tokens.contains_key(&hash(2)));
        let unknown = revoke(&state, &name("ci"));
        assert!(matches!(unknown, Err(Rejection::NotFound(m)) if m.contains("known: admin")));
        let made = create(&state, &name("ci"), Role::Viewer, &hash(3), &Actor::Planner);
        assert!(made.is_ok());
    }

    #[test]
    fn the_last_admin_token_cannot_be_revoked_but_one_of_two_can() {
        let mut state = given_tokens(&[("admin", Role::Admin, 1)]);
        let last = revoke(&state, &name("admin"));
        assert!(matches!(last, Err(Rejection::Conflict(m)) if m.contains("last admin token")));
        let made = create(&state, &name("ops"), Role::Admin, &hash(2), &Actor::Planner);
        when(&mut state, made).unwrap_or_else(|e| panic!("{e}"));
        assert!(revoke(&state, &name("admin")).is_ok());
    }
}
