//! The planner's real answers against the API types of `shoal_shared::api` that the CLI reads
//! them with, and paging through a task log longer than a page.

use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_e2e::serde_json::{Value, json};
use shoal_e2e::{Cluster, WAIT, assert_api_error};
use shoal_shared::api::{
    CheckingView, DeploymentDetail, DeploymentSummary, DrainView, EventView, HealthHistory,
    LOG_PAGE_DEFAULT, PoolView, StatusView, TargetView, TaskLog, WorkerView,
};

/// Reads an answer as `T` and checks that `T` writes it back the same: no field lost,
/// renamed, or turned from `null` into absent.
fn typed<T: DeserializeOwned + Serialize>(what: &str, raw: &Value) -> anyhow::Result<T> {
    let value: T = shoal_e2e::serde_json::from_value(raw.clone())
        .map_err(|e| anyhow::anyhow!("{what} does not parse: {e}\n{raw:#}"))?;
    assert_eq!(
        &shoal_e2e::serde_json::to_value(&value)?,
        raw,
        "{what} does not round-trip"
    );
    Ok(value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_of_the_planner_is_its_api_type() -> anyhow::Result<()> {
    let mut c = Cluster::start(&[]).await?;
    let api = c.api.clone();
    let pool = api
        .post("/api/pools", &json!({"name": "eu-west", "region": "eu"}))
        .await?;
    typed::<PoolView>("a new pool", &pool)?;
    c.worker("eu-1", "eu-west", "eu", &[])?;
    c.wait_online(&["eu-1"]).await?;
    let target = api
        .post(
            "/api/targets",
            &json!({"name": "web-1", "kind": "ssh", "environment": "prod", "roles": ["web"],
                    "default_pool": "eu-west",
                    "health_check": {"type": "script", "script": "echo fine"}}),
        )
        .await?;
    typed::<TargetView>("a new target", &target)?;
    let asked = api
        .post("/api/targets/web-1/health-check", &json!({}))
        .await?;
    typed::<CheckingView>("a check", &asked)?;
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "talk", "roles": ["web"], "action": {"type": "script",
             "script": "echo out; echo err >&2; exit 3"}},
            {"name": "never", "action": {"type": "noop"}}]}))
        .await?;
    c.finished(&id, WAIT).await?;
    let d: DeploymentDetail = typed(
        "a deployment",
        &api.get(&format!("/api/deployments/{id}")).await?,
    )?;
    let task = d.steps[0].tasks[0].id;
    typed::<TaskLog>(
        "a task log",
        &api.get(&format!("/api/deployments/{id}/tasks/{task}/log"))
            .await?,
    )?;
    typed::<Vec<DeploymentSummary>>("deployments", &api.get("/api/deployments").await?)?;
    typed::<Vec<PoolView>>("pools", &api.get("/api/pools").await?)?;
    typed::<Vec<TargetView>>("targets", &api.get("/api/targets").await?)?;
    typed::<TargetView>("a target", &api.get("/api/targets/web-1").await?)?;
    // With the check's result in it.
    let history = c
        .wait_for("the check's result", WAIT, || async {
            let h = api.get("/api/targets/web-1/health").await?;
            Ok((h["history"].as_array().map_or(0, Vec::len) > 0).then_some(h))
        })
        .await?;
    typed::<HealthHistory>("a health history", &history)?;
    typed::<Vec<WorkerView>>("workers", &api.get("/api/workers").await?)?;
    typed::<Vec<EventView>>("events", &api.get("/api/events?limit=10000").await?)?;
    typed::<StatusView>("the status", &api.get("/api/status").await?)?;
    typed::<DrainView>(
        "a drain",
        &api.post("/api/workers/eu-1/drain", &json!({})).await?,
    )?;
    c.stop_planner().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_task_log_comes_in_pages_with_every_line_once() -> anyhow::Result<()> {
    let c = Cluster::start(&[]).await?;
    c.target("t1", "prod", &["web"], None).await?;
    let lines = LOG_PAGE_DEFAULT * 2 + 345;
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "chatty", "action": {"type": "script",
             "script": format!("for i in $(seq 1 {lines}); do echo \"line $i\"; done")}}]}))
        .await?;
    let d = c.finished(&id, WAIT).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    let task = d["steps"][0]["tasks"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let path = format!("/api/deployments/{id}/tasks/{task}/log");

    // Without parameters: the first page, and where to go on.
    let first: TaskLog = c.api.get_as(&path).await?;
    assert_eq!(first.lines.len(), LOG_PAGE_DEFAULT);
    assert!(first.more);
    assert_eq!(
        first.next.map(|n| n.to_string()).as_deref(),
        Some("1.1.999")
    );

    // Pages of 700: every line once, in order.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page: TaskLog = c
            .api
            .get_as(&format!(
                "{path}?limit=700{}",
                after
                    .as_ref()
                    .map_or(String::new(), |a| format!("&after={a}"))
            ))
            .await?;
        pages += 1;
        seen.extend(page.lines.into_iter().map(|l| l.line));
        after = page.next.map(|n| n.to_string());
        if !page.more {
            break;
        }
    }
    assert_eq!(pages, lines.div_ceil(700));
    let expected: Vec<String> = (1..=lines).map(|i| format!("line {i}")).collect();
    assert_eq!(seen, expected);
    // After the last line: nothing yet, and the same cursor to come back with.
    let end: TaskLog = c
        .api
        .get_as(&format!(
            "{path}?after={}",
            after.clone().unwrap_or_default()
        ))
        .await?;
    assert!(end.lines.is_empty() && !end.more);
    assert_eq!(end.next.map(|n| n.to_string()), after);
    // The client's reader pages through it all.
    assert_eq!(c.api.task_log(&id, &task).await?.len(), lines);

    for (query, parts) in [
        ("limit=0", &["limit", "between 1 and 10000"][..]),
        ("limit=10001", &["limit", "between 1 and 10000"]),
        ("limit=many", &["limit", "1-10000"]),
        ("after=yesterday", &["after", "not a log cursor"]),
        ("after=1.1", &["after", "not a log cursor"]),
        ("page=2", &["page", "after", "limit"]),
    ] {
        assert_api_error(c.api.get(&format!("{path}?{query}")).await, 400, parts);
    }
    Ok(())
}
