//! `GET /api/workers`: workers that joined (from the log) with their liveness (heartbeats).

use super::{ApiError, AppState};
use crate::domain::state::WorkerDoc;
use crate::log::Proj;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use shoal_shared::{PoolName, RegionName, Timestamp, WorkerName};

/// A worker as the API shows it.
#[derive(Serialize)]
pub struct WorkerView {
    name: WorkerName,
    pool: PoolName,
    region: Option<RegionName>,
    slots: u32,
    busy_slots: u32,
    status: &'static str,
    last_seen: Option<Timestamp>,
    joined_at: Timestamp,
    left_at: Option<Timestamp>,
    version: String,
}

pub(super) async fn list(State(app): State<AppState>) -> Result<Json<Vec<WorkerView>>, ApiError> {
    let docs: Vec<WorkerDoc> = app.log.docs(Proj::Workers)?;
    let live = app.liveness.snapshot();
    let now = Timestamp::now();
    let views = docs
        .into_iter()
        .map(|d| {
            let l = live.get(&d.name);
            let left = match (d.left_at, l) {
                (Some(left), Some(l)) => left >= l.last_seen,
                (Some(_), None) => true,
                _ => false,
            };
            let online = !left && l.is_some_and(|l| l.online(now));
            WorkerView {
                slots: l.map_or(d.slots, |l| l.slots),
                busy_slots: if online { l.map_or(0, |l| l.busy) } else { 0 },
                status: if online { "online" } else { "offline" },
                // Heartbeats are not kept across planner restarts: until the next one, the
                // last recorded fact about the worker stands in.
                last_seen: l.map(|l| l.last_seen).or(d.left_at).or(Some(d.joined_at)),
                region: d.region,
                pool: d.pool,
                name: d.name,
                joined_at: d.joined_at,
                left_at: d.left_at,
                version: d.version,
            }
        })
        .collect();
    Ok(Json(views))
}
