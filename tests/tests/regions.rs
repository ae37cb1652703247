//! Regions as the design has them: a hub with JetStream (domain `hub`), and a leaf node per
//! region that connects outbound to the hub; workers connect only to their region's leaf
//! node and reach the hub's streams through it.

use shoal_e2e::serde_json::json;
use shoal_e2e::{Cluster, Nats, WAIT, free_port, tempdir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_behind_region_leaf_nodes_run_their_pools_tasks() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let leaf_port = free_port()?;
    let hub = Nats::start_with_config(
        dir.path(),
        "hub",
        &format!("jetstream {{ store_dir: \"{{dir}}\", domain: hub }}\nleafnodes {{ listen: \"127.0.0.1:{leaf_port}\" }}\n"),
    )
    .await?;
    let leaf = |region: &str| {
        let dir = dir.path().to_path_buf();
        let region = region.to_owned();
        async move {
            Nats::start_with_config(
                &dir,
                &format!("leaf-{region}"),
                &format!("leafnodes {{ remotes: [ {{ url: \"nats-leaf://127.0.0.1:{leaf_port}\" }} ] }}\n"),
            )
            .await
        }
    };
    let eu = leaf("eu").await?;
    let us = leaf("us").await?;
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
