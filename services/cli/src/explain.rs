//! `shoal audit explain TASK`: why a task ran where it did, told from the log's events alone
//! (never from the projections): who asked for the deployment, the routing rule and pool
//! recorded when it was planned, the target's health as the log had it then, and every
//! attempt and run with its worker and outcome.

use super::{Output, show};
use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;
use shoal_cli::client::ApiClient;
use shoal_cli::exit::Refused;

/// What the events say about one task.
#[derive(Debug, Serialize)]
struct Explanation {
    task: String,
    deployment: String,
    project: Value,
    environment: Value,
    /// Who asked for the deployment (`token:<name>`, …) and when.
    requested_by: Value,
    requested_at: Value,
    step: Value,
    target: Value,
    pool: Value,
    rule: Value,
    /// The rule in words.
    why: String,
    /// The target's health as the log had it when the task was first planned.
    health_when_planned: Value,
    attempts: Vec<Attempt>,
}

#[derive(Debug, Default, Serialize)]
struct Attempt {
    attempt: u64,
    planned_seq: u64,
    pool: Value,
    dispatched: bool,
    runs: Vec<Value>,
    cancelled: Option<Value>,
}

pub(super) async fn run(api: &ApiClient, out: Output, task: &str) -> anyhow::Result<()> {
    let found = api.get(&format!("/api/tasks/{task}")).await?;
    let deployment = found["deployment"]
        .as_str()
        .context("no deployment in the answer")?;
    let task = found["id"].as_str().unwrap_or(task).to_owned();
    let types =
        "DeploymentCreated,TaskPlanned,TaskDispatched,TaskStarted,TaskFinished,TaskCancelled";
    let events = all(api, &format!("deployment/{deployment}"), types).await?;
    let e = explain(&task, deployment, &events)?;
    let e = with_health(api, e).await?;
    show(out, &e, render)
}

/// Every record of `stream` of these types, page after page.
async fn all(api: &ApiClient, stream: &str, types: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = api
            .get(&format!(
                "/api/events?stream={stream}&type={types}&after={after}&limit=10000"
            ))
            .await?;
        let page = page.as_array().cloned().unwrap_or_default();
        let Some(last) = page.last().and_then(|e| e["seq"].as_u64()) else {
            return Ok(out);
        };
        after = last;
        out.extend(page);
    }
}

fn is(e: &Value, kind: &str, task: &str) -> bool {
    e["type"] == kind && e["data"]["task"] == task
}

/// The explanation from the deployment's events (health comes after, from the target's).
fn explain(task: &str, deployment: &str, events: &[Value]) -> anyhow::Result<Explanation> {
    let created = events
        .iter()
        .find(|e| e["type"] == "DeploymentCreated")
        .ok_or_else(|| {
            Refused(format!(
                "no DeploymentCreated event for deployment {deployment}"
            ))
        })?;
    let spec = &created["data"]["spec"];
    let (index, planned) = created["data"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .find_map(|(i, s)| {
            let t = s["tasks"].as_array()?.iter().find(|t| t["task"] == task)?;
            Some((i, t.clone()))
        })
        .ok_or_else(|| {
            Refused(format!(
                "task {task} is not planned in deployment {deployment}"
            ))
        })?;
    let mut attempts: Vec<Attempt> = Vec::new();
    for e in events.iter().filter(|e| e["data"]["task"] == task) {
        let n = e["data"]["attempt"].as_u64().unwrap_or(0);
        if is(e, "TaskPlanned", task) {
            attempts.push(Attempt {
                attempt: n,
                planned_seq: e["seq"].as_u64().unwrap_or(0),
                pool: e["data"]["pool"].clone(),
                ..Attempt::default()
            });
        }
        let Some(a) = attempts.iter_mut().find(|a| a.attempt == n) else {
            continue;
        };
        match e["type"].as_str() {
            Some("TaskDispatched") => a.dispatched = true,
            Some("TaskStarted") => a.runs.push(serde_json::json!({
                "delivery": e["data"]["delivery"], "worker": e["data"]["worker"],
                "pool": e["data"]["pool"], "started_at": e["data"]["at"],
            })),
            Some("TaskFinished") => finish(a, e),
            Some("TaskCancelled") => a.cancelled = Some(e["data"]["reason"].clone()),
            _ => {}
        }
    }
    let rule = planned["rule"].clone();
    Ok(Explanation {
        task: task.to_owned(),
        deployment: deployment.to_owned(),
        project: spec["project"].clone(),
        environment: spec["environment"].clone(),
        requested_by: created["actor"].clone(),
        requested_at: created["time"].clone(),
        step: spec["steps"][index]["name"].clone(),
        target: planned["target"].clone(),
        pool: planned["pool"].clone(),
        why: why(&rule, &planned["pool"]),
        rule,
        health_when_planned: Value::Null,
        attempts,
    })
}

/// A run's end, on the run of its delivery (or a run of its own when none started).
fn finish(a: &mut Attempt, e: &Value) {
    let end = serde_json::json!({
        "outcome": e["data"]["outcome"], "exit_code": e["data"]["exit_code"],
        "reason": e["data"]["reason"], "finished_at": e["data"]["at"],
    });
    let delivery = &e["data"]["delivery"];
    match a.runs.iter_mut().rev().find(|r| r["delivery"] == *delivery) {
        Some(Value::Object(run)) => {
            if let Value::Object(end) = end {
                run.extend(end);
            }
        }
        _ => a.runs.push(end),
    }
}

/// The routing rule in words.
fn why(rule: &Value, pool: &Value) -> String {
    let pool = pool.as_str().unwrap_or("?");
    match rule.as_str() {
        Some("step") => format!("the step names pool {pool}"),
        Some("target_default") => {
            format!("the step names no pool; the target's default pool is {pool}")
        }
        Some("global_default") => {
            format!("neither the step nor the target names a pool: the global default pool {pool}")
        }
        _ => format!("pool {pool} (rule {rule})"),
    }
}

/// Adds the target's health as the log had it just before the task was first planned.
async fn with_health(api: &ApiClient, mut e: Explanation) -> anyhow::Result<Explanation> {
    let (Some(target), Some(first)) = (e.target.as_str(), e.attempts.first()) else {
        return Ok(e);
    };
    let types = "TargetHealthChecked,HealthCheckUnavailable";
    let checks = all(api, &format!("target/{target}"), types).await?;
    let before = checks
        .iter()
        .rev()
        .find(|c| c["seq"].as_u64() < Some(first.planned_seq));
    e.health_when_planned = match before {
        Some(c) => serde_json::json!({
            "state": if c["type"] == "HealthCheckUnavailable" { Value::from("unavailable") } else { c["data"]["state"].clone() },
            "reason": c["data"]["reason"], "checked_at": c["time"], "seq": c["seq"],
        }),
        None => serde_json::json!({"state": "unknown", "reason": "never checked before"}),
    };
    Ok(e)
}

fn render(e: &Explanation) {
    let s = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    println!("task {} of deployment {}", e.task, e.deployment);
    println!(
        "  requested by {} at {} ({} / {})",
        s(&e.requested_by),
        s(&e.requested_at),
        s(&e.project),
        s(&e.environment)
    );
    let target = if e.target.is_null() {
        "no target".to_owned()
    } else {
        format!("target {}", s(&e.target))
    };
    println!("  step {}, {target}", s(&e.step));
    println!(
        "  routed to pool {}: {} (rule {})",
        s(&e.pool),
        e.why,
        s(&e.rule)
    );
    if !e.target.is_null() {
        let h = &e.health_when_planned;
        println!(
            "  the target's health when planned: {}{}",
            s(&h["state"]),
            h["reason"]
                .as_str()
                .map_or(String::new(), |r| format!(" ({r})"))
        );
    }
    for a in &e.attempts {
        println!(
            "  attempt {}: planned for pool {} (record {}){}",
            a.attempt,
            s(&a.pool),
            a.planned_seq,
            if a.dispatched {
                ", stored by the broker"
            } else {
                ", never dispatched"
            }
        );
        for r in &a.runs {
            println!(
                "    run {} on worker {}: {}{}",
                s(&r["delivery"]),
                s(&r["worker"]),
                r["outcome"].as_str().unwrap_or("no outcome recorded"),
                r["reason"]
                    .as_str()
                    .map_or(String::new(), |x| format!(" ({x})"))
            );
        }
        if let Some(reason) = &a.cancelled {
            println!("    cancelled: {}", s(reason));
        }
    }
}
