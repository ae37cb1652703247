//! Regions as the design has them: a hub with JetStream (domain `hub`), and a leaf node per
//! region that connects outbound to the hub; workers connect only to their region's leaf
//! node and reach the hub's streams through it.

use shoal_e2e::serde_json::json;
use shoal_e2e::{Cluster, WAIT, start_hub, start_leaf, tempdir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_behind_region_leaf_nodes_run_their_pools_tasks() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let (hub, leaf_port) = start_hub(dir.path()).await?;
    let eu = start_leaf(dir.path(), "eu", leaf_port).await?;
    let us = start_leaf(dir.path(), "us", leaf_port).await?;
    let mut c = Cluster::start_on(dir, hub, &["--no-builtin-worker"]).await?;
    c.pool("eu-west", "eu").await?;
    c.pool("us-east", "us").await?;
    c.worker_via(&eu.url(), "eu-1", "eu-west", "eu", &["--js-domain", "hub"])?;
    c.worker_via(&us.url(), "us-1", "us-east", "us", &["--js-domain", "hub"])?;
    c.wait_online(&["eu-1", "us-1"]).await?;
    c.target("shop-eu", "prod", &["web"], Some("eu-west"))
        .await?;
    c.target("shop-us", "prod", &["web"], Some("us-east"))
        .await?;
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "deploy", "roles": ["web"], "action": {"type": "script", "script": "echo $SHOAL_REGION"}}]}))
        .await?;
    let d = c.finished(&id, WAIT).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    for t in d["steps"][0]["tasks"].as_array().into_iter().flatten() {
        let expected = if t["target"] == "shop-eu" {
            "eu-1"
        } else {
            "us-1"
        };
        assert_eq!(t["worker"], expected, "{t:#}");
    }
    drop((eu, us));
    Ok(())
}
