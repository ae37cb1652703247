//! Hundreds of tasks over two pools and several workers at once: every task ends once, in
//! its pool, and the log replays to the same state.

use shoal_e2e::serde_json::json;
use shoal_e2e::{Cluster, WAIT, tasks};
use std::collections::BTreeMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_tasks_over_two_pools_all_end_once_in_their_pool() -> anyhow::Result<()> {
    let mut c = Cluster::start(&["--no-builtin-worker"]).await?;
    c.pool("eu-west", "eu").await?;
    c.pool("us-east", "us").await?;
    for (name, pool, region) in [
        ("eu-1", "eu-west", "eu"),
        ("eu-2", "eu-west", "eu"),
        ("us-1", "us-east", "us"),
        ("us-2", "us-east", "us"),
    ] {
        c.worker(name, pool, region, &["--slots", "8"])?;
    }
    c.wait_online(&["eu-1", "eu-2", "us-1", "us-2"]).await?;
    for i in 0..150 {
        c.target(&format!("eu-{i}"), "prod", &["web"], Some("eu-west"))
            .await?;
        c.target(&format!("us-{i}"), "prod", &["web"], Some("us-east"))
            .await?;
    }
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "noop", "roles": ["web"], "action": {"type": "noop"}},
            {"name": "script", "roles": ["web"], "max_parallel": 40,
             "action": {"type": "script", "script": "echo $SHOAL_TARGET"}}]}))
        .await?;
    let d = c.finished(&id, WAIT * 3).await?;
    assert_eq!(d["state"], "succeeded", "{}", d["reason"]);
    let all = tasks(&d);
    assert_eq!(all.len(), 600);
    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    for (_, t) in &all {
        assert_eq!(t["state"], "succeeded");
        assert_eq!(
            t["attempts"].as_array().map(Vec::len),
            Some(1),
            "one run each: {t}"
        );
        let worker = t["worker"].as_str().unwrap_or_default().to_owned();
        let pool = t["pool"].as_str().unwrap_or_default();
        assert!(
            worker.starts_with(&pool[..2]),
            "task of {pool} ran on {worker}"
        );
        *per_worker.entry(worker).or_default() += 1;
    }
    assert_eq!(
        per_worker.len(),
        4,
        "every worker took part: {per_worker:?}"
    );
    // Exactly one TaskFinished per task in the log.
    let events = c
        .api
        .get(&format!("/api/events?stream=deployment/{id}&limit=10000"))
        .await?;
    let finished = events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "TaskFinished")
        .count();
    assert_eq!(finished, 600);
    // The finished deployment and its 600 tasks are on disk, no longer in the planner's memory.
    let status = c.api.get("/api/status").await?;
    assert_eq!(status["deployments_in_memory"], 0, "{status}");
    assert_eq!(status["tasks_in_memory"], 0, "{status}");
    assert!(status["log_seq"].as_u64().unwrap_or(0) > 2400, "{status}");
    c.stop_planner().await?;
    let (ok, out) = c.replay()?;
    assert!(ok && out.contains("600 tasks"), "{out}");
    Ok(())
}
