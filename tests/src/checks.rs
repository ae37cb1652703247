//! The fault suite's checks, for every test that breaks things on purpose (`faults.rs`, the
//! container tests): each task of a deployment ended once, in its own pool, and the
//! deployment succeeded; no event id is in the log twice. Replay and the hash chain are
//! checked by `shoal-planner replay` on the stopped planner's data dir (see
//! [`crate::Cluster::replay`], and the container tests' one-off container).

use anyhow::Context as _;
use serde_json::Value;
use shoal_cli::client::ApiClient;
use std::collections::{BTreeMap, BTreeSet};

/// Every event of the log (or of one stream), oldest first, read page by page.
///
/// # Errors
/// The API refused.
pub async fn events(api: &ApiClient, stream: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let mut out: Vec<Value> = Vec::new();
    let mut after = 0;
    loop {
        let mut path = format!("/api/events?after={after}&limit=10000");
        if let Some(s) = stream {
            path.push_str(&format!("&stream={s}"));
        }
        let page = api.get(&path).await?;
        let page = page.as_array().context("events are a list")?;
        let Some(last) = page.last() else {
            return Ok(out);
        };
        after = last["seq"].as_u64().context("event without seq")?;
        out.extend(page.iter().cloned());
    }
}

/// What [`deployment_ran_once`] found: how many tasks, and how many runs were recorded
/// again (at-least-once repeats: a broker killed before it stored an ack delivers the
/// message again, with the delivery count it had; see README, "Failure semantics").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RanOnce {
    pub tasks: usize,
    pub repeated_runs: usize,
}

/// Checks that deployment `d` (its document, ended) succeeded and that each of its tasks
/// was planned once, dispatched once, started only by workers of its own pool (`pools`:
/// each pool with the prefix of its workers' names), and whose first recorded end of its
/// attempt succeeded.
///
/// # Errors
/// The API refused.
///
/// # Panics
/// A check failed (the message names the task).
pub async fn deployment_ran_once(
    api: &ApiClient,
    d: &Value,
    pools: &[(&str, &str)],
) -> anyhow::Result<RanOnce> {
    let id = d["id"].as_str().context("deployment without id")?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    let all = crate::tasks(d);
    let pool_of: BTreeMap<String, String> = all
        .iter()
        .map(|(_, t)| {
            (
                t["id"].as_str().unwrap_or_default().to_owned(),
                t["pool"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for (_, t) in &all {
        assert_eq!(t["state"], "succeeded", "{t:#}");
    }
    let events = events(api, Some(&format!("deployment/{id}"))).await?;
    let mut planned: BTreeMap<String, usize> = BTreeMap::new();
    let mut dispatched: BTreeMap<String, usize> = BTreeMap::new();
    let mut finishes: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    let mut runs = BTreeSet::new();
    let mut repeats = 0;
    for e in &events {
        let data = &e["data"];
        let task = data["task"].as_str().unwrap_or_default().to_owned();
        match e["type"].as_str() {
            Some("TaskPlanned") => *planned.entry(task).or_default() += 1,
            Some("TaskDispatched") => *dispatched.entry(task).or_default() += 1,
            Some("TaskStarted") => {
                // Only workers of the task's pool ran it.
                let pool = pool_of.get(&task).map(String::as_str).unwrap_or_default();
                let prefix = pools
                    .iter()
                    .find(|(p, _)| *p == pool)
                    .map(|(_, prefix)| *prefix)
                    .unwrap_or_else(|| {
                        panic!("task {task} of pool {pool:?}, not one of {pools:?}")
                    });
                let worker = data["worker"].as_str().unwrap_or_default();
                assert!(
                    worker.starts_with(prefix),
                    "{worker} ran {task} of pool {pool}, whose workers are {prefix}…"
                );
            }
            Some("TaskFinished") => {
                let run = (
                    task.clone(),
                    data["attempt"].as_u64(),
                    data["delivery"].as_u64(),
                );
                if !runs.insert(run) {
                    repeats += 1;
                }
                finishes.entry(task).or_default().push(data);
            }
            _ => {}
        }
    }
    for task in pool_of.keys() {
        assert_eq!(planned.get(task), Some(&1), "task {task} planned once");
        assert_eq!(
            dispatched.get(task),
            Some(&1),
            "task {task} dispatched once"
        );
        // The accepted outcome is the first end of its attempt; it is the task's state.
        let ends = finishes.get(task).map(Vec::as_slice).unwrap_or_default();
        assert!(!ends.is_empty(), "task {task} never ended in the log");
        assert_eq!(ends[0]["outcome"], "succeeded", "task {task}: {ends:?}");
    }
    Ok(RanOnce {
        tasks: pool_of.len(),
        repeated_runs: repeats,
    })
}

/// Checks that no event id is in the whole log twice; the number of events.
///
/// # Errors
/// The API refused.
///
/// # Panics
/// An id is there twice.
pub async fn no_event_twice(api: &ApiClient) -> anyhow::Result<usize> {
    let events = events(api, None).await?;
    let mut ids = BTreeSet::new();
    for e in &events {
        let id = e["event_id"].as_str().unwrap_or_default().to_owned();
        assert!(ids.insert(id.clone()), "event {id} appears twice");
    }
    Ok(events.len())
}
