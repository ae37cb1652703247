//! Worker pools: the pool document, how `PoolRegistered` and `PoolRemoved` change it, and
//! the commands that register pools (the global default pool at start, others on request)
//! and remove one no longer in use.

use super::decide::{NewEvent, Rejection, join};
use super::state::{Changes, DocKey, State};
use serde::{Deserialize, Serialize};
use shoal_shared::events::Event;
use shoal_shared::secret::PoolKey;
use shoal_shared::{DeploymentId, Pool, PoolName, RegionName, TargetName, Timestamp, WorkerName};
use std::collections::BTreeSet;

/// A registered pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolDoc {
    pub name: PoolName,
    pub region: Option<RegionName>,
    pub description: Option<String>,
    pub registered_at: Timestamp,
    /// The public key sensitive variables are sealed to for this pool's workers.
    #[serde(default)]
    pub sealing_key: Option<PoolKey>,
}

impl State {
    /// How a pool's events change the state.
    pub(super) fn apply_pool(&mut self, at: Timestamp, event: &Event, changes: &mut Changes) {
        match event {
            Event::PoolRegistered {
                pool,
                region,
                description,
            } => {
                let doc = PoolDoc {
                    name: pool.clone(),
                    region: region.clone(),
                    description: description.clone(),
                    registered_at: at,
                    sealing_key: None,
                };
                self.pools.insert(pool.clone(), doc);
                changes.docs.insert(DocKey::Pool(pool.clone()));
            }
            Event::PoolKeySet { pool, key } => {
                if let Some(doc) = self.pools.get_mut(pool) {
                    doc.sealing_key = Some(key.clone());
                    changes.docs.insert(DocKey::Pool(pool.clone()));
                }
            }
            Event::PoolRemoved { pool } => {
                // The writer deletes the document of a key the state no longer holds.
                self.pools.remove(pool);
                changes.docs.insert(DocKey::Pool(pool.clone()));
            }
            _ => {}
        }
    }

    /// The registered pools, for messages (`default, eu-west`, or `none`).
    pub(super) fn known_pools(&self) -> String {
        join(self.pools.keys())
    }
}

/// `EnsureDefaultPool`: registers the global default pool if the log does not have it yet.
pub(super) fn ensure_default(state: &State, default_pool: &PoolName) -> Vec<NewEvent> {
    if state.pools.contains_key(default_pool) {
        return vec![];
    }
    vec![NewEvent::new(Event::PoolRegistered {
        pool: default_pool.clone(),
        region: None,
        description: Some("global default pool".to_owned()),
    })]
}

/// `SetPoolKey`: the public key a pool's sensitive variables are sealed to from now on
/// (also a rotation); nothing when it already has it.
pub(super) fn set_key(
    state: &State,
    pool: &PoolName,
    key: &PoolKey,
) -> Result<Vec<NewEvent>, Rejection> {
    let Some(doc) = state.pools.get(pool) else {
        return Err(Rejection::NotFound(format!(
            "unknown pool \"{pool}\" (known: {})",
            state.known_pools()
        )));
    };
    if doc.sealing_key.as_ref() == Some(key) {
        return Ok(vec![]);
    }
    Ok(vec![NewEvent::new(Event::PoolKeySet {
        pool: pool.clone(),
        key: key.clone(),
    })])
}

/// `RegisterPool`: a new pool; a name already taken is refused.
pub(super) fn register(state: &State, pool: &Pool) -> Result<Vec<NewEvent>, Rejection> {
    if state.pools.contains_key(&pool.name) {
        return Err(Rejection::Conflict(format!(
            "name: pool \"{}\" already exists (known: {})",
            pool.name,
            state.known_pools()
        )));
    }
    Ok(vec![NewEvent::new(Event::PoolRegistered {
        pool: pool.name.clone(),
        region: pool.region.clone(),
        description: pool.description.clone(),
    })])
}

/// `RemovePool`: removes a pool nothing uses. Refused, naming what uses it, while it is the
/// global default pool, a target's default pool, the pool of a task of an unfinished
/// deployment, or has workers online (`online`: the pool's online workers, as the caller's
/// liveness view sees them; heartbeats are not in the log).
pub(super) fn remove(
    state: &State,
    default_pool: &PoolName,
    name: &PoolName,
    online: &[WorkerName],
) -> Result<Vec<NewEvent>, Rejection> {
    if !state.pools.contains_key(name) {
        return Err(Rejection::NotFound(format!(
            "unknown pool \"{name}\" (known: {})",
            state.known_pools()
        )));
    }
    if name == default_pool {
        return Err(Rejection::Conflict(format!(
            "pool \"{name}\" is the global default pool (the planner's --default-pool); it cannot be removed"
        )));
    }
    let uses = PoolUses::of(state, name, online);
    if let Some(uses) = uses.describe() {
        return Err(Rejection::Conflict(format!(
            "pool \"{name}\" is in use: {uses}"
        )));
    }
    Ok(vec![NewEvent::new(Event::PoolRemoved {
        pool: name.clone(),
    })])
}

/// What keeps a pool from being removed.
struct PoolUses<'a> {
    targets: Vec<&'a TargetName>,
    workers: &'a [WorkerName],
    deployments: BTreeSet<DeploymentId>,
}

impl<'a> PoolUses<'a> {
    fn of(state: &'a State, pool: &PoolName, online: &'a [WorkerName]) -> PoolUses<'a> {
        PoolUses {
            targets: state
                .targets
                .values()
                .filter(|t| t.target.default_pool.as_ref() == Some(pool))
                .map(|t| &t.target.name)
                .collect(),
            workers: online,
            deployments: state
                .tasks
                .values()
                .filter(|t| &t.pool == pool && state.active.contains(&t.deployment))
                .map(|t| t.deployment)
                .collect(),
        }
    }

    /// Each use with what frees the pool of it; `None` when nothing uses it.
    fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.targets.is_empty() {
            parts.push(format!(
                "the default pool of targets {} (change it with `shoal target set-pool NAME --clear` or remove them)",
                join(&self.targets)
            ));
        }
        if !self.workers.is_empty() {
            parts.push(format!(
                "workers online: {} (stop them first)",
                join(self.workers)
            ));
        }
        if !self.deployments.is_empty() {
            parts.push(format!(
                "tasks of unfinished deployments {} (wait for them or `shoal cancel ID`)",
                join(&self.deployments)
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}
