//! Stopping without a broker: when nats-server dies under a running installation, a worker
//! with a task in hand and the planner (with its built-in worker) still stop on SIGTERM
//! within their drain deadlines, and their logs name the broker they lost.

use nix::sys::signal::Signal;
use serde_json::json;
use shoal_e2e::{Cluster, WAIT};
use std::time::Duration;

/// The external worker's drain deadline.
const DRAIN_SECS: u64 = 3;
/// What a process may take beyond its deadline to exit.
const MARGIN: Duration = Duration::from_secs(2);
/// How long a worker lets the tasks it stopped at the drain deadline hand their messages back
/// (`HAND_BACK_GRACE` in `services/worker/src/pull.rs`): it covers the SIGKILL of a script
/// that ignores SIGTERM, 5 s after it.
const HAND_BACK: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_mid_task_and_the_planner_stop_on_sigterm_after_the_broker_died()
-> anyhow::Result<()> {
    let mut c = Cluster::start(&[]).await?;
    c.pool("eu-west", "eu").await?;
    c.target("shop-eu", "prod", &["web"], Some("eu-west"))
        .await?;
    let drain = DRAIN_SECS.to_string();
    c.worker("eu-1", "eu-west", "eu", &["--drain-timeout", &drain])?;
    c.wait_online(&["eu-1"]).await?;
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "long", "roles": ["web"], "action": {"type": "script", "script": "sleep 60"}}]}))
        .await?;
    c.wait_for("the task running", WAIT, || async {
        let t = c.task(&id, "long").await?;
        Ok((t["state"] == "running").then_some(t))
    })
    .await?;

    let url = c.nats.url();
    c.nats.kill().await?;
    let lost = format!("lost the connection to NATS at {url}");
    c.worker_proc("eu-1").wait_for_output(&lost, WAIT).await?;
    let planner = c
        .planner
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no planner"))?;
    planner.wait_for_output(&lost, WAIT).await?;

    let worker = c.worker_proc("eu-1");
    worker
        .stops_within(
            Signal::SIGTERM,
            Duration::from_secs(DRAIN_SECS) + HAND_BACK + MARGIN,
        )
        .await?;
    // The built-in worker has no task: the planner has nothing to wait for.
    let mut planner = c
        .planner
        .take()
        .ok_or_else(|| anyhow::anyhow!("no planner"))?;
    planner.stops_within(Signal::SIGTERM, MARGIN).await
}

/// A hub that takes leaf nodes (every shoal hub) delivers into a pull request for two seconds
/// after it was made even when its client has gone, and redelivers each lost message into
/// it at once: a worker that closed its connection with a pull of four open used up a task's
/// three deliveries before any live worker saw it. A stopping worker now stays until its
/// pull is over, so the task published right after the stop runs on its first delivery. Three
/// rounds, because a pull request is open for at most a second of the worker's idle loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_while_waiting_for_work_uses_none_of_the_next_tasks_deliveries()
-> anyhow::Result<()> {
    let mut c = Cluster::start(&["--no-builtin-worker"]).await?;
    c.pool("eu-west", "eu").await?;
    c.target("shop-eu", "prod", &["web"], Some("eu-west"))
        .await?;
    c.worker("eu-0", "eu-west", "eu", &["--slots", "4"])?;
    c.wait_online(&["eu-0"]).await?;
    for round in 1..=3 {
        let (stopping, next) = (format!("eu-{}", round - 1), format!("eu-{round}"));
        // Idle long enough that its pulls come and go; then stop it and deploy at once.
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.worker_proc(&stopping)
            .stops_within(Signal::SIGTERM, MARGIN)
            .await?;
        let id = c
            .deploy(&json!({"project": "p", "environment": "prod", "steps": [
                {"name": "quick", "roles": ["web"], "action": {"type": "script", "script": "echo ran"}}]}))
            .await?;
        c.worker(&next, "eu-west", "eu", &["--slots", "4"])?;
        let d = c.finished(&id, WAIT).await?;
        let task = c.task(&id, "quick").await?;
        assert_eq!(d["state"], "succeeded", "round {round}: {task}");
        assert_eq!(task["delivery"], 1, "round {round}: {task}");
        assert_eq!(task["worker"], next.as_str(), "round {round}: {task}");
    }
    Ok(())
}
