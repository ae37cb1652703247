//! Worker pools: the pool document, how `PoolRegistered` records one, and the commands that
//! register pools (the global default pool at start, others on request).

use super::decide::{NewEvent, Rejection, join};
use super::state::{Changes, DocKey, State};
use serde::{Deserialize, Serialize};
use shoal_shared::events::Event;
use shoal_shared::{Pool, PoolName, RegionName, Timestamp};

/// A registered pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolDoc {
    pub name: PoolName,
    pub region: Option<RegionName>,
    pub description: Option<String>,
    pub registered_at: Timestamp,
}

impl State {
    /// How a pool's events change the state.
    pub(super) fn apply_pool(&mut self, at: Timestamp, event: &Event, changes: &mut Changes) {
        if let Event::PoolRegistered {
            pool,
            region,
            description,
        } = event
        {
            let doc = PoolDoc {
                name: pool.clone(),
                region: region.clone(),
                description: description.clone(),
                registered_at: at,
            };
            self.pools.insert(pool.clone(), doc);
            changes.docs.insert(DocKey::Pool(pool.clone()));
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

/// `RegisterPool`: a new pool; a name already taken is refused.
pub(super) fn register(state: &State, pool: &Pool) -> Result<Vec<NewEvent>, Rejection> {
    if state.pools.contains_key(&pool.name) {
        return Err(Rejection::Invalid(format!(
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
