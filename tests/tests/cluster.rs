//! The hub as a 3-node JetStream cluster of local processes (no container engine needed):
//! the planner, given every node, keeps its streams R3 and says so; a deployment over two
//! pools loses nothing while the node leading the task stream is killed, and the node,
//! started again, gets its copy back; a server with a certificate of the bundle's CA joins
//! the cluster as a route only with the cluster's password.

use shoal_cli::local::NatsCluster;
use shoal_e2e::serde_json::{Value, json};
use shoal_e2e::{Cluster, WAIT, checks, tempdir};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const STREAMS: [&str; 4] = [
    "SHOAL_TASKS",
    "SHOAL_RESULTS",
    "SHOAL_EVENTS",
    "OBJ_SHOAL_PACKAGES",
];

/// Each stream's replicas and leader, asked of the broker.
async fn placements(c: &Cluster) -> anyhow::Result<Vec<(String, usize, Option<String>)>> {
    let js = async_nats::jetstream::new(c.nats.connect().await?);
    let mut out = Vec::new();
    for name in STREAMS {
        let mut stream = js
            .get_stream(name)
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let info = stream.info().await?;
        out.push((
            name.to_owned(),
            info.config.num_replicas,
            info.cluster.as_ref().and_then(|c| c.leader.clone()),
        ));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_streams_are_r3_and_a_lost_leader_loses_nothing() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let hub = NatsCluster::start(dir.path(), 3).await?;
    let url = hub.url();
    let mut c = Cluster::start_on_cluster(
        dir,
        hub,
        &["--no-builtin-worker", "--task-ack-wait-secs", "2"],
    )
    .await?;
    let log = c.planner.as_ref().map(|p| p.output()).unwrap_or_default();
    assert!(
        log.contains("JetStream streams R3: server \"hub-"),
        "the planner does not say it keeps its streams on 3 servers:\n{log}"
    );
    for (pool, prefix) in [("eu-west", "e"), ("us-east", "u")] {
        c.pool(pool, "eu").await?;
        // A worker's first pull made before its pool's R3 consumer has a leader is never
        // answered (the client gives it up after 5 s): start the worker once it has one.
        c.wait_for("the pool's consumer led", WAIT, || async {
            let js = async_nats::jetstream::new(c.nats.connect().await?);
            let stream = js
                .get_stream("SHOAL_TASKS")
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
                .get_consumer(pool)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let info = consumer.info().await?;
            Ok(info
                .cluster
                .as_ref()
                .and_then(|c| c.leader.as_ref())
                .map(|_| ()))
        })
        .await?;
        for i in 0..6 {
            c.target(&format!("{prefix}t{i}"), "prod", &["web"], Some(pool))
                .await?;
        }
        // Workers are given every node too: the one they are on may be the one lost.
        c.worker_via(&url, &format!("{prefix}1"), pool, "eu", &["--slots", "2"])?;
    }
    c.wait_online(&["e1", "u1"]).await?;
    let kept = c
        .wait_for("every stream made", WAIT, || async {
            Ok(placements(&c).await.ok())
        })
        .await?;
    for (name, replicas, _) in &kept {
        assert_eq!(*replicas, 3, "{name}: {kept:?}");
    }

    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "one", "roles": ["web"], "max_attempts": 5,
             "action": {"type": "script", "script": "sleep 0.3"}},
            {"name": "two", "roles": ["web"], "max_attempts": 5,
             "action": {"type": "script", "script": "sleep 0.3"}}]}))
        .await?;
    let leader = kept
        .iter()
        .find(|(n, _, _)| n == "SHOAL_TASKS")
        .and_then(|(_, _, l)| l.clone())
        .ok_or_else(|| anyhow::anyhow!("no leader of SHOAL_TASKS: {kept:?}"))?;
    c.wait_for("a task running", WAIT, || async {
        let d = c.api.get(&format!("/api/deployments/{id}")).await?;
        Ok(shoal_e2e::tasks(&d)
            .iter()
            .any(|(_, t)| t["state"] == "running")
            .then_some(()))
    })
    .await?;
    // hub-1 is `nats`, hub-2 and hub-3 the other nodes.
    let node = match leader.as_str() {
        "hub-1" => &mut c.nats,
        "hub-2" => &mut c.hub_nodes[0],
        _ => &mut c.hub_nodes[1],
    };
    node.kill().await?;
    let d = c.finished(&id, Duration::from_secs(90)).await?;
    let pools = [("eu-west", "e"), ("us-east", "u")];
    let ran = checks::deployment_ran_once(&c.api, &d, &pools).await?;
    assert_eq!(ran.tasks, 24);

    let node = match leader.as_str() {
        "hub-1" => &mut c.nats,
        "hub-2" => &mut c.hub_nodes[0],
        _ => &mut c.hub_nodes[1],
    };
    node.restart().await?;
    // Back: every stream R3 with a leader again (from any node's view).
    c.wait_for("every stream led again", WAIT, || async {
        let p = placements(&c).await?;
        Ok(
            (p.len() == STREAMS.len() && p.iter().all(|(_, r, l)| *r == 3 && l.is_some()))
                .then_some(()),
        )
    })
    .await?;
    checks::no_event_twice(&c.api).await?;
    c.stop_planner().await?;
    let (ok, out) = c.replay()?;
    assert!(ok, "replay failed:\n{out}");
    Ok(())
}

async fn get(port: u16, path: &str) -> anyhow::Result<Value> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out)).await??;
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(shoal_e2e::serde_json::from_str(body)?)
}

/// A fourth server with a worker's certificate (the bundle's CA) routes to the cluster: its
/// routes are refused without the cluster's password and taken with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_the_bundle_without_the_cluster_password_makes_no_route()
-> anyhow::Result<()> {
    let dir = tempdir()?;
    let hub = NatsCluster::start(dir.path(), 3).await?;
    let bundle = dir.path().join("nats-trust");
    let t = shoal_trust::load_topology(&bundle)?;
    let node = &t.hub.servers()[0];
    let route_port = node.route_port.unwrap_or_default();
    let password = std::fs::read_to_string(bundle.join("cluster.password"))?;
    // Any identity's certificate: the planner's is as good as a worker's here.
    let files = shoal_trust::IdentityFiles::of(&bundle, &shoal_trust::Identity::Planner);
    let routes_of = |credentials: &str| -> anyhow::Result<(u16, String)> {
        let [monitor] = shoal_e2e::free_ports()?;
        let config = format!(
            "http: \"127.0.0.1:{monitor}\"\ncluster {{\n  name: \"shoal-hub\"\n  listen: \"127.0.0.1:-1\"\n  \
             routes: [\"nats-route://{credentials}127.0.0.1:{route_port}\"]\n  tls {{\n    \
             cert_file: \"{}\"\n    key_file: \"{}\"\n    ca_file: \"{}\"\n    verify: true\n  }}\n}}\n",
            files.cert.display(),
            files.key.display(),
            files.ca.display()
        );
        Ok((monitor, config))
    };
    let (monitor, config) = routes_of("")?;
    let mut rogue = shoal_cli::local::Nats::start_with_config(dir.path(), "rogue", &config).await?;
    // Its route is tried at once and refused; wait a few tries.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let routez = get(monitor, "/routez").await?;
    assert_eq!(
        routez["num_routes"], 0,
        "a route without the password: {routez}"
    );
    rogue.kill().await?;

    let (monitor, config) = routes_of(&format!("route:{}@", password.trim()))?;
    let _member = shoal_cli::local::Nats::start_with_config(dir.path(), "member", &config).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let routez = get(monitor, "/routez").await?;
        if routez["num_routes"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the same server with the password made no route: {routez}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(hub);
    Ok(())
}
