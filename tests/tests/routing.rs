//! Every routing rule sends tasks to the right pool, and only that pool's workers run them.

use shoal_e2e::serde_json::json;
use shoal_e2e::{Cluster, WAIT, tasks};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_routes_to_its_pool_and_only_that_pools_workers_run_it() -> anyhow::Result<()> {
    let mut c = Cluster::start(&[]).await?;
    c.pool("eu-west", "eu").await?;
    c.pool("us-east", "us").await?;
    c.worker("eu-west-a", "eu-west", "eu", &[])?;
    c.worker("eu-west-b", "eu-west", "eu", &["--slots", "2"])?;
    c.worker("us-east-a", "us-east", "us", &[])?;
    let workers = c
        .wait_online(&["eu-west-a", "eu-west-b", "us-east-a"])
        .await?;
    let builtin = workers
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["pool"] == "default"))
        .and_then(|w| w["name"].as_str())
        .expect("the built-in worker serves the default pool")
        .to_owned();
    assert!(builtin.starts_with("builtin-"), "{builtin}");
    for i in 0..8 {
        c.target(&format!("eu-{i}"), "prod", &["web"], Some("eu-west"))
            .await?;
        c.target(&format!("us-{i}"), "prod", &["web"], Some("us-east"))
            .await?;
    }
    c.target("plain", "prod", &["web"], None).await?;
    c.target("elsewhere", "staging", &["web"], Some("us-east"))
        .await?;

    let script =
        "echo \"$SHOAL_POOL|$SHOAL_WORKER|$SHOAL_TARGET|$SHOAL_REGION|$SHOAL_STEP|$GREETING\"";
    let id = c
        .deploy(&json!({
            "project": "shop", "environment": "prod",
            "steps": [
                {"name": "by-target", "roles": ["web"], "variables": {"GREETING": "hi"},
                 "action": {"type": "script", "script": script}},
                {"name": "by-step", "roles": ["web"], "pool": "us-east", "variables": {"GREETING": "hi"},
                 "action": {"type": "script", "script": script}},
                {"name": "no-target", "variables": {"GREETING": "hi"}, "action": {"type": "script", "script": script}},
            ]
        }))
        .await?;
    let d = c.finished(&id, WAIT).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    let all = tasks(&d);
    assert_eq!(
        all.len(),
        17 + 17 + 1,
        "staging target must not be included"
    );
    let pool_of_worker = |w: &str| match w {
        "eu-west-a" | "eu-west-b" => "eu-west",
        "us-east-a" => "us-east",
        w if w == builtin => "default",
        other => panic!("unknown worker {other}"),
    };
    for (step, t) in &all {
        let target = t["target"].as_str().unwrap_or("");
        let (pool, rule) = match (step.as_str(), target) {
            ("by-target", t) if t.starts_with("eu-") => ("eu-west", "target_default"),
            ("by-target", t) if t.starts_with("us-") => ("us-east", "target_default"),
            ("by-target", "plain") => ("default", "global_default"),
            ("by-step", _) => ("us-east", "step"),
            ("no-target", "") => ("default", "global_default"),
            other => panic!("unexpected task {other:?}"),
        };
        assert_eq!(t["pool"], pool, "{step} {target}");
        assert_eq!(t["pool_rule"], rule, "{step} {target}");
        assert_eq!(t["state"], "succeeded");
        let worker = t["worker"].as_str().expect("worker recorded");
        assert_eq!(
            pool_of_worker(worker),
            pool,
            "task of pool {pool} ran on {worker}"
        );
        // The script saw where it ran.
        let line = c.output(&id, t).await?[0].clone();
        let region = match pool {
            "eu-west" => "eu",
            "us-east" => "us",
            _ => "",
        };
        assert_eq!(line, format!("{pool}|{worker}|{target}|{region}|{step}|hi"));
    }
    // Both eu-west workers share the pool's queue.
    let eu_workers: std::collections::BTreeSet<&str> = all
        .iter()
        .filter(|(_, t)| t["pool"] == "eu-west")
        .filter_map(|(_, t)| t["worker"].as_str())
        .collect();
    assert!(!eu_workers.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_pool_tasks_wait_for_an_external_worker_when_the_builtin_one_is_off()
-> anyhow::Result<()> {
    let mut c = Cluster::start(&["--no-builtin-worker"]).await?;
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "only", "action": {"type": "script", "script": "echo ran"}}]}))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(id.contains("unknown environment"), "no targets yet: {id}");
    c.target("t1", "prod", &["web"], None).await?;
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "only", "action": {"type": "script", "script": "echo ran"}}]}))
        .await?;
    // Accepted, visible in the queue with the reason it waits.
    let waiting = c
        .wait_for("task to be dispatched", WAIT, || async {
            let d = c.api.get(&format!("/api/deployments/{id}")).await?;
            let t = &d["steps"][0]["tasks"][0];
            Ok((t["state"] == "dispatched").then(|| t.clone()))
        })
        .await?;
    assert_eq!(waiting["waiting"], "waiting for a worker in pool default");
    assert_eq!(waiting["pool_rule"], "global_default");
    let workers = c.api.get("/api/workers").await?;
    assert_eq!(
        workers.as_array().map(Vec::len),
        Some(0),
        "no built-in worker: {workers}"
    );
    // Still waiting a moment later: nobody runs it.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let d = c.api.get(&format!("/api/deployments/{id}")).await?;
    assert_eq!(d["steps"][0]["tasks"][0]["state"], "dispatched");

    c.worker("late-default", "default", "eu", &[])?;
    let d = c.finished(&id, WAIT).await?;
    assert_eq!(d["state"], "succeeded");
    assert_eq!(d["steps"][0]["tasks"][0]["worker"], "late-default");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_targets_default_pool_routes_its_next_deployment_there() -> anyhow::Result<()> {
    let mut c = Cluster::start(&[]).await?;
    c.pool("eu-west", "eu").await?;
    c.pool("us-east", "us").await?;
    c.worker("eu-1", "eu-west", "eu", &[])?;
    c.worker("us-1", "us-east", "us", &[])?;
    c.wait_online(&["eu-1", "us-1"]).await?;
    c.target("app", "prod", &["web"], Some("eu-west")).await?;
    let body = json!({"project": "p", "environment": "prod", "steps": [
        {"name": "s", "roles": ["web"], "action": {"type": "script", "script": "true"}}]});
    let first = c.finished(&c.deploy(&body).await?, WAIT).await?;
    assert_eq!(first["steps"][0]["tasks"][0]["worker"], "eu-1");
    let t = c
        .api
        .put("/api/targets/app", &json!({"default_pool": "us-east"}))
        .await?;
    assert_eq!(t["default_pool"], "us-east");
    let second = c.finished(&c.deploy(&body).await?, WAIT).await?;
    assert_eq!(second["steps"][0]["tasks"][0]["worker"], "us-1");
    assert_eq!(
        second["steps"][0]["tasks"][0]["pool_rule"],
        "target_default"
    );
    let t = c
        .api
        .put("/api/targets/app", &json!({"default_pool": null}))
        .await?;
    assert!(t["default_pool"].is_null());
    let third = c.finished(&c.deploy(&body).await?, WAIT).await?;
    assert_eq!(third["steps"][0]["tasks"][0]["pool"], "default");
    assert_eq!(third["steps"][0]["tasks"][0]["pool_rule"], "global_default");
    Ok(())
}
