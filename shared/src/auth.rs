//! Who may use the HTTP API and who did what: the [`Role`] a bearer token carries, and the
//! [`Actor`] recorded in every event a command causes (a token's name, a worker, or the
//! planner itself). Pure types; the tokens themselves are made and checked by the planner.

use crate::names::{TokenName, WorkerName};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a token may do. Each role may do everything the one before it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    Default,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read everything the API shows.
    #[default]
    Viewer,
    /// And start and cancel deployments.
    Deployer,
    /// And manage pools, targets, workers and tokens.
    Admin,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Deployer, Role::Admin];

    /// The role's name as the API and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }

    /// Whether a token of this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (known: viewer, deployer, admin)"))
    }
}

/// Who caused an event: written `token:<name>`, `worker:<name>` or `planner`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Actor {
    /// A request to the API made with the named token.
    Token(TokenName),
    /// A report of a worker (results, joins, health checks).
    Worker(WorkerName),
    /// The planner on its own (start-up, timers, retries, deadlines).
    Planner,
    /// A command over NATS from an integrator's identity (its name in the trust bundle).
    Integrator(TokenName),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Token(n) => write!(f, "token:{n}"),
            Actor::Worker(n) => write!(f, "worker:{n}"),
            Actor::Planner => f.write_str("planner"),
            Actor::Integrator(n) => write!(f, "integrator:{n}"),
        }
    }
}

impl From<Actor> for String {
    fn from(a: Actor) -> String {
        a.to_string()
    }
}

impl TryFrom<String> for Actor {
    type Error = String;
    fn try_from(s: String) -> Result<Actor, String> {
        if s == "planner" {
            return Ok(Actor::Planner);
        }
        let bad = |e: crate::names::NameError| e.to_string();
        match s.split_once(':') {
            Some(("token", n)) => TokenName::parse(n).map(Actor::Token).map_err(bad),
            Some(("worker", n)) => WorkerName::parse(n).map(Actor::Worker).map_err(bad),
            Some(("integrator", n)) => TokenName::parse(n).map(Actor::Integrator).map_err(bad),
            _ => Err(format!(
                "actor {s:?} is none of token:<name>, worker:<name>, integrator:<name>, planner"
            )),
        }
    }
}

/// The file in the planner's data dir holding the admin token it made at its first start.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The prefix of every token, so a token is recognisable where it leaks (logs, commits,
/// secret scanners).
pub const TOKEN_PREFIX: &str = "shoal_";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actor_reads_back_as_written() {
        for a in [
            Actor::Planner,
            Actor::Token(TokenName::parse("ci").unwrap_or_else(|e| panic!("{e}"))),
            Actor::Worker(WorkerName::parse("eu-west-1").unwrap_or_else(|e| panic!("{e}"))),
            Actor::Integrator(TokenName::parse("ci").unwrap_or_else(|e| panic!("{e}"))),
        ] {
            assert_eq!(Actor::try_from(a.to_string()), Ok(a));
        }
        assert!(Actor::try_from("root".to_owned()).is_err());
    }

    #[test]
    fn each_role_allows_the_ones_below_it_only() {
        assert!(Role::Admin.allows(Role::Deployer));
        assert!(Role::Deployer.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Deployer));
        assert!(!Role::Deployer.allows(Role::Admin));
        assert_eq!("deployer".parse::<Role>(), Ok(Role::Deployer));
    }
}
