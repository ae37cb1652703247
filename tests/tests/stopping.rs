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
