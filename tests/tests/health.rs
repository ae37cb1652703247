//! Health checks run on a worker of the target's pool (its default pool, else the global
//! default), never on the planner; their results, routing and history are in the log;
//! deployments fail or skip unhealthy targets as asked; and the schedule checks every target
//! with a probe on its own, stops when the probe goes, and goes on after a restart.

use serde_json::{Value, json};
use shoal_e2e::{Cluster, WAIT, tasks};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A stand-in for a cloud management endpoint: answers every HTTP request with 200 until
/// stopped; also serves as a plain TCP listener.
struct Endpoint {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Endpoint {
    fn start() -> anyhow::Result<Endpoint> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut buf = [0u8; 1024];
                        let _ = conn.read(&mut buf);
                        let _ = conn.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            // The listener closes here: connections are refused from now on.
        });
        Ok(Endpoint { port, stop })
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wait until the port refuses connections.
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

const PLANNER: &[&str] = &[
    "--no-builtin-worker",
    "--health-interval-secs",
    "0",
    "--health-deadline-secs",
    "2",
];

async fn add_target(c: &Cluster, body: Value) -> anyhow::Result<()> {
    let mut body = body;
    body["kind"] = json!("azure-web-app");
    body["environment"] = json!("prod");
    if body.get("roles").is_none() {
        body["roles"] = json!(["web"]);
    }
    c.api.post("/api/targets", &body).await?;
    Ok(())
}

/// Asks for a check and waits for its result in the history.
async fn check(c: &Cluster, name: &str) -> anyhow::Result<Value> {
    let asked = c
        .api
        .post(&format!("/api/targets/{name}/health-check"), &json!({}))
        .await?;
    let id = asked["check"].as_str().unwrap_or_default().to_owned();
    c.wait_for(&format!("the check of {name}"), WAIT, || async {
        let h = c.api.get(&format!("/api/targets/{name}/health")).await?;
        Ok(h["history"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["check"] == id.as_str())
            .cloned())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_run_on_the_targets_pool_and_record_state_reason_worker_and_pool()
-> anyhow::Result<()> {
    let mut c = Cluster::start(PLANNER).await?;
    c.pool("eu-west", "eu").await?;
    c.pool("us-east", "us").await?;
    c.worker("e1", "eu-west", "eu", &[])?;
    // d1 serves the global default pool and warns about its disk (threshold far above it).
    c.worker(
        "d1",
        "default",
        "local",
        &["--min-free-disk-mb", "1000000000"],
    )?;
    c.wait_online(&["e1", "d1"]).await?;
    let http = Endpoint::start()?;
    let tcp = Endpoint::start()?;
    add_target(
        &c,
        json!({"name": "api-eu", "default_pool": "eu-west",
        "health_check": {"type": "http", "url": format!("http://127.0.0.1:{}/health", http.port)}}),
    )
    .await?;
    add_target(
        &c,
        json!({"name": "db", "endpoint": format!("127.0.0.1:{}", tcp.port)}),
    )
    .await?;
    add_target(&c, json!({"name": "cache", "default_pool": "eu-west",
        "health_check": {"type": "script", "script": "echo \"disk 91% on $SHOAL_TARGET\"; exit 2"}}))
    .await?;
    add_target(&c, json!({"name": "lonely", "default_pool": "us-east",
        "health_check": {"type": "tcp", "address": format!("127.0.0.1:{}", tcp.port), "timeout_secs": 1}}))
    .await?;

    // Never checked: unknown.
    let t = c.api.get("/api/targets/api-eu").await?;
    assert_eq!(t["health"]["state"], "unknown");

    // The target's default pool runs its check, through the CLI.
    let (ok, out) = c.cli(&["target", "check", "api-eu", "--wait"])?;
    assert!(ok, "{out}");
    assert!(
        out.contains("api-eu: healthy (worker e1, pool eu-west"),
        "{out}"
    );
    let t = c.api.get("/api/targets/api-eu").await?;
    assert_eq!(t["health"]["state"], "healthy");
    assert_eq!(t["health"]["worker"], "e1");
    assert_eq!(t["health"]["pool"], "eu-west");
    assert_eq!(t["health"]["rule"], "target_default");

    // No default pool: the global default pool, with the default probe of the endpoint.
    let r = check(&c, "db").await?;
    assert_eq!(
        (&r["state"], &r["worker"], &r["pool"], &r["rule"]),
        (
            &json!("healthy"),
            &json!("d1"),
            &json!("default"),
            &json!("global_default")
        ),
        "{r:#}"
    );
    let t = c.api.get("/api/targets/db").await?;
    assert_eq!(t["probe"]["type"], "tcp");

    // The endpoint goes away: unhealthy, saying why.
    tcp.stop();
    let r = check(&c, "db").await?;
    assert_eq!(r["state"], "unhealthy");
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("cannot connect to 127.0.0.1:{}", tcp.port)),
        "{reason}"
    );

    // A script check that exits 2: healthy with warnings, with what it said.
    let r = check(&c, "cache").await?;
    assert_eq!(r["state"], "healthy_with_warnings");
    assert_eq!(r["reason"], "disk 91% on cache");

    // No worker in us-east: unavailable, naming the pool.
    let r = check(&c, "lonely").await?;
    assert_eq!(r["state"], "unavailable");
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("pool \"us-east\""),
        "{r:#}"
    );
    assert!(r["worker"].is_null());
    // Nobody took it: it does not stay queued for a worker that may come much later.
    let js = async_nats::jetstream::new(c.nats.connect().await?);
    c.wait_for("the unanswered check off the queue", WAIT, || async {
        let mut stream = js.get_stream("SHOAL_TASKS").await?;
        Ok((stream.info().await?.state.messages == 0).then_some(()))
    })
    .await?;
    // Moving the target to eu-west moves its next check there at once.
    let (ok, out) = c.cli(&["target", "set-pool", "lonely", "eu-west"])?;
    assert!(ok, "{out}");
    let r = check(&c, "lonely").await?;
    assert_eq!(
        (&r["pool"], &r["worker"]),
        (&json!("eu-west"), &json!("e1"))
    );

    // The history keeps every result in order; a check is a task on the pool's subject.
    let h = c.api.get("/api/targets/db/health").await?;
    let states: Vec<&str> = h["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["state"].as_str())
        .collect();
    assert_eq!(states, ["healthy", "unhealthy"]);
    let events = c.events(Some("target/db")).await?;
    let planned: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "HealthCheckPlanned")
        .collect();
    assert_eq!(planned.len(), 2);
    assert_eq!(planned[0]["data"]["pool"], "default");

    // Worker health: d1 warns about its disk; e1 is healthy.
    let ws = c.api.get("/api/workers").await?;
    let w = |n: &str| {
        ws.as_array()
            .into_iter()
            .flatten()
            .find(|w| w["name"] == n)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(w("e1")["health"], "healthy");
    assert_eq!(w("d1")["health"], "healthy_with_warnings");
    assert!(
        w("d1")["warnings"][0]
            .as_str()
            .unwrap_or_default()
            .contains("MiB free"),
        "{ws:#}"
    );
    assert!(w("e1")["free_disk_mb"].as_u64().is_some());

    // Replay reproduces the health projection exactly.
    let before = c.api.get("/api/targets").await?;
    c.stop_planner().await?;
    let (ok, out) = c.replay()?;
    assert!(ok, "{out}");
    c.start_planner().await?;
    assert_eq!(c.api.get("/api/targets").await?, before);
    http.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_fail_on_or_skip_unhealthy_targets_and_a_health_check_step_rechecks()
-> anyhow::Result<()> {
    let mut c = Cluster::start(PLANNER).await?;
    c.pool("eu-west", "eu").await?;
    c.worker("e1", "eu-west", "eu", &[])?;
    c.wait_online(&["e1"]).await?;
    let up = Endpoint::start()?;
    let flappy = Endpoint::start()?;
    let down = Endpoint::start()?;
    down.stop();
    for (name, port) in [
        ("good", up.port),
        ("bad", down.port),
        ("flappy", flappy.port),
    ] {
        add_target(
            &c,
            json!({"name": name, "default_pool": "eu-west",
            "endpoint": format!("http://127.0.0.1:{port}/")}),
        )
        .await?;
        check(&c, name).await?;
    }
    let step = json!({"name": "deploy", "roles": ["web"],
        "action": {"type": "script", "script": "echo deployed $SHOAL_TARGET"}});

    // fail (the default): stopped before the step, naming the unhealthy target.
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [step]}))
        .await?;
    let d = c.finished(&id, WAIT).await?;
    assert_eq!(d["state"], "failed");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("unhealthy targets: \"bad\"") && !reason.contains("good"),
        "{reason}"
    );
    let events = c.events(Some(&format!("deployment/{id}"))).await?;
    assert!(!events.iter().any(|e| e["type"] == "TaskStarted"));

    // skip: the unhealthy target is left out with a TargetSkipped event; the rest deploy.
    let id = c
        .deploy(
            &json!({"project": "p", "environment": "prod", "unhealthy_targets": "skip",
                        "steps": [step]}),
        )
        .await?;
    let d = c.finished(&id, WAIT).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    let states: Vec<(String, String)> = tasks(&d)
        .into_iter()
        .map(|(_, t)| {
            (
                t["target"].as_str().unwrap_or_default().to_owned(),
                t["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        states.contains(&("bad".into(), "skipped".into())),
        "{states:?}"
    );
    assert!(
        states.contains(&("good".into(), "succeeded".into())),
        "{states:?}"
    );
    let events = c.events(Some(&format!("deployment/{id}"))).await?;
    let skipped: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "TargetSkipped")
        .filter_map(|e| e["data"]["target"].as_str())
        .collect();
    assert_eq!(skipped, ["bad"]);

    // A health_check step re-checks mid-deployment: flappy was healthy, now its endpoint is
    // gone; the step finds out on a worker and skips it for the steps after.
    flappy.stop();
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "unhealthy_targets": "skip",
                        "steps": [{"name": "recheck", "roles": ["web"], "action": {"type": "health_check"}}, step]}))
        .await?;
    let d = c.finished(&id, WAIT).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    let events = c.events(Some(&format!("deployment/{id}"))).await?;
    let skipped: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["type"] == "TargetSkipped")
        .filter_map(|e| Some((e["data"]["target"].as_str()?, e["data"]["reason"].as_str()?)))
        .collect();
    assert!(
        skipped
            .iter()
            .any(|(t, why)| *t == "flappy" && why.contains("cannot connect")),
        "{skipped:?}"
    );
    let deploy_step: Vec<(String, String)> = tasks(&d)
        .into_iter()
        .filter(|(s, _)| s == "deploy")
        .map(|(_, t)| {
            (
                t["target"].as_str().unwrap_or_default().to_owned(),
                t["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        deploy_step.contains(&("flappy".into(), "skipped".into())),
        "{deploy_step:?}"
    );
    assert!(
        deploy_step.contains(&("good".into(), "succeeded".into())),
        "{deploy_step:?}"
    );
    // The step's check is the target's health now, recorded with the worker that ran it.
    let t = c.api.get("/api/targets/flappy").await?;
    assert_eq!(t["health"]["state"], "unhealthy");
    assert_eq!(t["health"]["worker"], "e1");
    up.stop();
    Ok(())
}

/// The planner of the schedule tests: checks every 2 s unless a target says otherwise.
const SCHEDULED: &[&str] = &[
    "--no-builtin-worker",
    "--health-interval-secs",
    "2",
    "--health-deadline-secs",
    "5",
];

/// How long a test waits for checks the schedule makes every second or two.
const SCHEDULE_WAIT: Duration = Duration::from_secs(20);

/// The checks of `target` the schedule planned after log sequence `after`, oldest first,
/// each with the result a worker reported of it (if any yet).
async fn scheduled(
    c: &Cluster,
    target: &str,
    after: u64,
) -> anyhow::Result<Vec<(Value, Option<Value>)>> {
    let events = c.events(Some(&format!("target/{target}"))).await?;
    let ran = |check: &Value| {
        events
            .iter()
            .find(|e| e["type"] == "TargetHealthChecked" && &e["data"]["check"] == check)
            .map(|e| e["data"].clone())
    };
    Ok(events
        .iter()
        .filter(|e| e["type"] == "HealthCheckPlanned" && e["data"]["trigger"] == "scheduled")
        .filter(|e| e["seq"].as_u64().is_some_and(|s| s > after))
        .map(|e| (e["data"].clone(), ran(&e["data"]["check"])))
        .collect())
}

/// Waits until at least `n` checks of `target` scheduled after `after` have been run.
async fn wait_scheduled(
    c: &Cluster,
    target: &str,
    after: u64,
    n: usize,
) -> anyhow::Result<Vec<(Value, Option<Value>)>> {
    c.wait_for(
        &format!("{n} scheduled checks of {target}"),
        SCHEDULE_WAIT,
        || async {
            let checks = scheduled(c, target, after).await?;
            let run = checks.iter().filter(|(_, r)| r.is_some()).count();
            Ok((run >= n).then_some(checks))
        },
    )
    .await
}

/// Asserts every check went to `pool` and every result came from `worker` of it.
fn assert_routed(checks: &[(Value, Option<Value>)], pool: &str, worker: &str) {
    for (planned, ran) in checks {
        assert_eq!(planned["pool"], pool, "{planned:#}");
        if let Some(r) = ran {
            assert_eq!(
                (&r["worker"], &r["pool"]),
                (&json!(worker), &json!(pool)),
                "{r:#}"
            );
        }
    }
}

/// The sequence of the last event of a target's stream of type `ty`.
async fn last_seq(c: &Cluster, target: &str, ty: &str) -> anyhow::Result<u64> {
    let events = c.events(Some(&format!("target/{target}"))).await?;
    events
        .iter()
        .rev()
        .find(|e| e["type"] == ty)
        .and_then(|e| e["seq"].as_u64())
        .ok_or_else(|| anyhow::anyhow!("no {ty} event of {target}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_with_a_probe_are_checked_on_schedule_until_the_probe_goes_and_after_a_restart()
-> anyhow::Result<()> {
    let mut c = Cluster::start(SCHEDULED).await?;
    c.pool("eu-west", "eu").await?;
    c.worker("e1", "eu-west", "eu", &[])?;
    c.worker("d1", "default", "local", &[])?;
    c.wait_online(&["e1", "d1"]).await?;
    let up = Endpoint::start()?;
    let probe =
        json!({"type": "tcp", "address": format!("127.0.0.1:{}", up.port), "timeout_secs": 1});
    // tick: its own interval, on its pool; slowed: the same, until its interval grows;
    // slow: the planner's interval, the default probe of its endpoint, the global default
    // pool; silent: nothing to probe.
    for name in ["tick", "slowed"] {
        add_target(
            &c,
            json!({"name": name, "default_pool": "eu-west", "health_check": probe,
                   "health_interval_secs": 1}),
        )
        .await?;
    }
    add_target(
        &c,
        json!({"name": "slow", "endpoint": format!("http://127.0.0.1:{}/", up.port)}),
    )
    .await?;
    add_target(&c, json!({"name": "silent"})).await?;

    // Nobody asks: the schedule checks each target with a probe on a worker of its pool.
    let tick = wait_scheduled(&c, "tick", 0, 3).await?;
    assert_routed(&tick, "eu-west", "e1");
    let slow = wait_scheduled(&c, "slow", 0, 2).await?;
    assert_routed(&slow, "default", "d1");
    let h = c.api.get("/api/targets/tick/health").await?;
    let history = h["history"].as_array().cloned().unwrap_or_default();
    // A check no worker took in time (a loaded machine) is `unavailable`, with no worker.
    let by_e1 = history
        .iter()
        .filter(|r| r["worker"] == "e1" && r["pool"] == "eu-west" && r["state"] == "healthy")
        .count();
    assert!(by_e1 >= 3, "{h:#}");
    assert!(
        history
            .iter()
            .all(|r| r["worker"].is_null() || r["worker"] == "e1"),
        "{h:#}"
    );

    // tick loses its probe and slowed checks every 30 s from now: tick gets no scheduled
    // check after the change; slowed at most the one already due, and one more if that one
    // fired before the schedule heard of the change (1 s later); slow, meanwhile, goes on.
    // Watched over 4 s, so a schedule still checking slowed every second shows 3 or more.
    c.api
        .put("/api/targets/tick", &json!({"health_check": null}))
        .await?;
    c.api
        .put("/api/targets/slowed", &json!({"health_interval_secs": 30}))
        .await?;
    let tick_changed = last_seq(&c, "tick", "TargetUpdated").await?;
    let slowed_changed = last_seq(&c, "slowed", "TargetUpdated").await?;
    let since = tokio::time::Instant::now();
    c.wait_for("slow checked twice over 4 s", SCHEDULE_WAIT, || async {
        let slow = scheduled(&c, "slow", slowed_changed).await?;
        let run = slow.iter().filter(|(_, r)| r.is_some()).count();
        Ok((run >= 2 && since.elapsed() >= Duration::from_secs(4)).then_some(()))
    })
    .await?;
    let tick = scheduled(&c, "tick", tick_changed).await?;
    assert!(tick.is_empty(), "checked without a probe: {tick:#?}");
    let slowed = scheduled(&c, "slowed", slowed_changed).await?;
    assert!(slowed.len() <= 2, "checked every second still: {slowed:#?}");

    // The schedule is rebuilt from the log after a restart: slow goes on being checked,
    // tick stays unchecked until it gets a probe again.
    let before = c.events(None).await?;
    let stopped = before
        .last()
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or_default();
    c.stop_planner().await?;
    c.start_planner().await?;
    let slow = wait_scheduled(&c, "slow", stopped, 2).await?;
    assert_routed(&slow, "default", "d1");
    let tick = scheduled(&c, "tick", tick_changed).await?;
    assert!(tick.is_empty(), "checked without a probe: {tick:#?}");
    c.api
        .put("/api/targets/tick", &json!({"health_check": probe}))
        .await?;
    let tick = wait_scheduled(&c, "tick", last_seq(&c, "tick", "TargetUpdated").await?, 2).await?;
    assert_routed(&tick, "eu-west", "e1");

    // Never a check of a target without a probe.
    let silent = c.events(Some("target/silent")).await?;
    assert!(
        !silent.iter().any(|e| e["type"] == "HealthCheckPlanned"),
        "{silent:#?}"
    );
    up.stop();
    Ok(())
}
