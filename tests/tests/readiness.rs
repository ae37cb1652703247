//! A worker that cannot see its pool's queue consumer is online but not ready, and says why
//! with the likely cause: behind a leaf node without `--js-domain`, or its pool not registered.
//! Once it sees the consumer it is ready and takes tasks.

use shoal_e2e::serde_json::{Value, json};
use shoal_e2e::{Cluster, WAIT, start_hub, start_leaf, tempdir};
use std::time::Duration;

/// The worker's entry in `GET /api/workers` once `pred` holds for it.
async fn worker_when(
    c: &Cluster,
    name: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    c.wait_for(what, WAIT, || async {
        let workers = c.api.get("/api/workers").await?;
        Ok(workers
            .as_array()
            .and_then(|ws| ws.iter().find(|w| w["name"] == name && pred(w)))
            .cloned())
    })
    .await
}

/// A worker that has said it is not ready: between its `Joined` and its first heartbeat a
/// worker is listed offline, and not ready either, without having said anything.
fn said_not_ready(w: &Value) -> bool {
    w["ready"] == false && w["health"] != "offline"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_worker_without_the_domain_is_not_ready_and_says_why() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let (hub, leaf_port) = start_hub(dir.path()).await?;
    let leaf = start_leaf(dir.path(), "eu", leaf_port).await?;
    let mut c = Cluster::start_on(dir, hub, &["--no-builtin-worker"]).await?;
    c.pool("eu-west", "eu").await?;
    c.target("shop-eu", "prod", &["web"], Some("eu-west"))
        .await?;
    c.worker_via(&leaf.url(), "eu-1", "eu-west", "eu", &[])?;

    // Online (it heartbeats through the leaf node), but not ready, with the cause.
    let w = worker_when(&c, "eu-1", "eu-1 not ready", said_not_ready).await?;
    assert_eq!(w["status"], "online", "{w:#}");
    assert_eq!(w["health"], "not_ready", "{w:#}");
    let reason = w["not_ready_reason"].as_str().unwrap_or_default();
    for part in [
        "pool \"eu-west\"",
        "leaf node",
        "--js-domain <hub's domain> (e.g. hub)",
    ] {
        assert!(reason.contains(part), "reason {reason:?} lacks {part:?}");
    }
    let pools = c.api.get("/api/pools").await?;
    let eu = pools
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "eu-west"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        eu["workers_online"], 0,
        "a worker that is not ready takes nothing: {eu:#}"
    );
    let (ok, table) = c.cli(&["workers"])?;
    assert!(ok, "{table}");
    assert!(
        table.contains("not_ready") && table.contains("--js-domain"),
        "{table}"
    );

    // Its log says so, once for as long as the reason stays the same (not every retry).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = c.worker_proc("eu-1").output();
    let said: Vec<&str> = log.lines().filter(|l| l.contains("not ready:")).collect();
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains("--js-domain"), "{log}");

    // The same worker with the hub's domain is ready and runs a task.
    c.worker_proc("eu-1")
        .terminate(Duration::from_secs(30))
        .await?;
    c.worker_via(
        &leaf.url(),
        "eu-1",
        "eu-west",
        "eu",
        &["--js-domain", "hub"],
    )?;
    let w = worker_when(&c, "eu-1", "eu-1 ready", |w| {
        w["status"] == "online" && w["ready"] == true
    })
    .await?;
    assert_eq!(w["health"], "healthy", "{w:#}");
    assert_eq!(w["not_ready_reason"], Value::Null, "{w:#}");
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "deploy", "roles": ["web"], "action": {"type": "script", "script": "echo hi"}}]}))
        .await?;
    let d = c.finished(&id, WAIT).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    assert_eq!(d["steps"][0]["tasks"][0]["worker"], "eu-1", "{d:#}");
    drop(leaf);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_an_unregistered_pool_is_not_ready_until_the_pool_is_added()
-> anyhow::Result<()> {
    let mut c = Cluster::start(&["--no-builtin-worker"]).await?;
    c.worker("ap-1", "ap-south", "ap", &[])?;
    let w = worker_when(&c, "ap-1", "ap-1 not ready", said_not_ready).await?;
    assert_eq!(w["health"], "not_ready", "{w:#}");
    assert_eq!(
        w["not_ready_reason"],
        "pool \"ap-south\" has no queue consumer yet; register it with `shoal pool add ap-south`",
        "{w:#}"
    );
    c.pool("ap-south", "ap").await?;
    let w = worker_when(&c, "ap-1", "ap-1 ready", |w| w["ready"] == true).await?;
    assert_eq!(w["health"], "healthy", "{w:#}");
    let log = c.worker_proc("ap-1").output();
    assert!(log.contains("the worker is ready now"), "{log}");
    Ok(())
}
