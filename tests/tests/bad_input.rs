//! Every bad request gets a 4xx naming the problem and, where it helps, the known values;
//! every bad message on the wire is rejected, recorded with its reason, and never blocks.

use shoal_e2e::serde_json::{Value, json};
use shoal_e2e::{Cluster, WAIT, assert_api_error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_a_reason() -> anyhow::Result<()> {
    let c = Cluster::start(&["--no-builtin-worker"]).await?;
    let api = &c.api;
    c.pool("eu-west", "eu").await?;
    c.target("web-1", "prod", &["web"], Some("eu-west")).await?;

    // Pools.
    assert_api_error(
        api.post("/api/pools", &json!({"name": "eu-west"})).await,
        409,
        &["already exists"],
    );
    assert_api_error(
        api.post("/api/pools", &json!({"name": "EU West"})).await,
        400,
        &["name", "pool name \"EU West\" contains"],
    );
    assert_api_error(
        api.post("/api/pools", &json!({"name": "a.b"})).await,
        400,
        &["contains '.'"],
    );
    assert_api_error(
        api.post("/api/pools", &json!({"nam": "x"})).await,
        400,
        &["unknown field `nam`"],
    );
    assert_api_error(
        api.post_raw("/api/pools", "{\"name\": ").await,
        400,
        &["malformed JSON"],
    );

    // Targets.
    let target = |name: &str, kind: &str, pool: Option<&str>| json!({"name": name, "kind": kind, "environment": "prod", "roles": ["web"], "default_pool": pool});
    assert_api_error(
        api.post("/api/targets", &target("web-1", "ssh", None))
            .await,
        409,
        &["target \"web-1\" already exists"],
    );
    assert_api_error(
        api.post("/api/targets", &target("web-2", "ssh", Some("eu-wset")))
            .await,
        400,
        &[
            "default_pool",
            "unknown pool \"eu-wset\"",
            "known: default, eu-west",
        ],
    );
    assert_api_error(
        api.post("/api/targets", &target("web-2", "mainframe", None))
            .await,
        400,
        &["kind", "mainframe", "azure-web-app"],
    );
    assert_api_error(
        api.post("/api/targets", &json!({"name": "web-2", "kind": "ssh"}))
            .await,
        400,
        &["environment"],
    );
    assert_api_error(
        api.put("/api/targets/nope", &json!({"default_pool": null}))
            .await,
        404,
        &["unknown target \"nope\"", "web-1"],
    );
    assert_api_error(
        api.put("/api/targets/web-1", &json!({"default_pool": "mars"}))
            .await,
        400,
        &["unknown pool \"mars\""],
    );
    assert_api_error(api.get("/api/targets/nope").await, 404, &["unknown target"]);

    // Deployments.
    let step =
        json!({"name": "s", "roles": ["web"], "action": {"type": "script", "script": "true"}});
    let deployment = |env: &str, steps: serde_json::Value| json!({"project": "p", "environment": env, "steps": steps});
    assert_api_error(
        api.post("/api/deployments", &deployment("qa", json!([step])))
            .await,
        400,
        &["environment", "unknown environment \"qa\"", "known: prod"],
    );
    let mut bad = step.clone();
    bad["pool"] = json!("eu-wset");
    assert_api_error(
        api.post("/api/deployments", &deployment("prod", json!([bad])))
            .await,
        400,
        &[
            "steps[0].pool",
            "unknown pool \"eu-wset\"",
            "known: default, eu-west",
        ],
    );
    let mut bad = step.clone();
    bad["roles"] = json!(["db"]);
    bad["name"] = json!("s2");
    assert_api_error(
        api.post("/api/deployments", &deployment("prod", json!([step, bad])))
            .await,
        400,
        &[
            "steps[1].roles",
            "no target in environment \"prod\"",
            "[db]",
            "roles there: web",
        ],
    );
    assert_api_error(
        api.post("/api/deployments", &deployment("prod", json!([step, step])))
            .await,
        400,
        &["steps[1].name", "duplicate step name"],
    );
    assert_api_error(
        api.post("/api/deployments", &deployment("prod", json!([])))
            .await,
        400,
        &["steps", "at least one step"],
    );
    let mut bad = step.clone();
    bad["action"] = json!({"type": "teleport"});
    assert_api_error(
        api.post("/api/deployments", &deployment("prod", json!([bad])))
            .await,
        400,
        &["steps[0].action", "teleport"],
    );
    let mut bad = step.clone();
    bad["poool"] = json!("eu-west");
    assert_api_error(
        api.post("/api/deployments", &deployment("prod", json!([bad])))
            .await,
        400,
        &["steps[0]", "unknown field `poool`"],
    );
    let mut bad = step.clone();
    bad["variables"] = json!({"1X": "y"});
    assert_api_error(
        api.post("/api/deployments", &deployment("prod", json!([bad])))
            .await,
        400,
        &["steps[0].variables", "\"1X\""],
    );
    let mut bad = step.clone();
    bad["timeout_secs"] = json!(0);
    assert_api_error(
        api.post("/api/deployments", &deployment("prod", json!([bad])))
            .await,
        400,
        &["steps[0].timeout_secs"],
    );
    let mut bad = step.clone();
    bad["action"]["script"] = json!("#".repeat(300 * 1024));
    assert_api_error(
        api.post("/api/deployments", &deployment("prod", json!([bad])))
            .await,
        400,
        &["steps[0]", "the limit is 262144"],
    );
    let mut huge = step.clone();
    huge["action"]["script"] = json!("#".repeat(2 * 1024 * 1024));
    // The planner answers 413 without reading the rest of the body and closes that
    // connection; a client of its own keeps the closed connection out of the shared pool.
    let once = shoal_cli::client::ApiClient::new(api.base()).with_token_file(c.admin_token_file());
    assert_api_error(
        once.post("/api/deployments", &deployment("prod", json!([huge])))
            .await,
        413,
        &["larger than the limit"],
    );
    assert_api_error(
        api.post_raw("/api/deployments", "not json").await,
        400,
        &["malformed JSON"],
    );
    assert_api_error(
        api.get("/api/deployments/not-a-uuid").await,
        400,
        &["not a deployment id"],
    );
    assert_api_error(
        api.get("/api/deployments/01a21e5c-0e05-731f-ae1c-566ed3017702")
            .await,
        404,
        &["unknown deployment"],
    );
    assert_api_error(api.get("/api/events?limit=0").await, 400, &["limit"]);
    assert_api_error(
        api.get("/api/events?after=minus-one").await,
        400,
        &["after"],
    );
    assert_api_error(
        api.get("/api/nothing-here").await,
        404,
        &["no such endpoint"],
    );

    // Nothing refused reached the log.
    let events = api.get("/api/events?limit=1000").await?;
    let types: Vec<&str> = events
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["type"].as_str())
        .collect();
    // (The first start's admin token is the planner's own.)
    assert_eq!(
        types,
        [
            "PoolRegistered",
            "PoolKeySet",
            "TokenCreated",
            "PoolRegistered",
            "TargetRegistered"
        ],
        "{types:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_on_the_wire_are_rejected_recorded_and_never_redelivered() -> anyhow::Result<()>
{
    use shoal_shared::messages::{
        KIND_HEADER, KIND_REPORT_BATCH, TaskMessage, WorkerBatch, WorkerBody, WorkerMessage,
    };
    use shoal_shared::{Action, DeploymentId, EventId, PoolName, TaskId, Timestamp, WorkerName};

    let mut c = Cluster::start(&["--no-builtin-worker"]).await?;
    c.target("t1", "prod", &["web"], None).await?;
    c.worker("w1", "default", "local", &[])?;
    c.wait_online(&["w1"]).await?;
    let client = c.nats.connect().await?;
    let js = async_nats::jetstream::new(client.clone());
    let pool = |p: &str| PoolName::parse(p).expect("valid");
    let task = |schema_version: u16, pool: PoolName| TaskMessage {
        trace_parent: None,
        schema_version,
        deployment: DeploymentId::new(),
        task: TaskId::new(),
        attempt: 1,
        step_index: 0,
        step_name: "s".into(),
        target: None,
        endpoint: None,
        pool,
        action: Action::Noop,
        variables: Default::default(),
        timeout_secs: None,
        planned_at: Timestamp::now(),
        max_deliveries: 3,
        probe: None,
        planned_at_us: 0,
        sensitive_variables: Default::default(),
        package: None,
    };
    let valid = shoal_shared::codec::encode(&task(1, pool("default")))?;
    let to_tasks: Vec<(Vec<u8>, Option<TaskMessage>)> = vec![
        (b"\xc1 not messagepack".to_vec(), None),
        (valid[..valid.len() / 2].to_vec(), None),
        (vec![], Some(task(99, pool("default")))),
        (vec![], Some(task(1, pool("eu-west")))),
    ];
    for (bytes, decodable) in to_tasks {
        // What decodes is signed with the planner's key, as the planner would (for the
        // worker's pool): the checks after the signature's are what is tested here.
        let (bytes, headers) = match decodable {
            None => (bytes, async_nats::HeaderMap::new()),
            Some(t) => {
                let bytes = shoal_shared::codec::encode(&t)?;
                let binding = shoal_shared::signed::Binding {
                    kind: shoal_shared::signed::Kind::Task,
                    pool: pool("default"),
                    id: t.task.to_string(),
                    attempt: Some(t.attempt),
                };
                let headers = c.planner_signature(&binding, &bytes)?;
                (bytes, headers)
            }
        };
        js.publish_with_headers("shoal.tasks.default", headers, bytes.into())
            .await?
            .await?;
    }
    let report = |schema_version: u16| WorkerMessage {
        trace_parent: None,
        schema_version,
        event_id: EventId::new(),
        worker: WorkerName::parse("w1").expect("valid"),
        pool: pool("default"),
        sent_at: Timestamp::now(),
        body: WorkerBody::TaskFinished {
            deployment: DeploymentId::new(),
            task: TaskId::new(),
            attempt: 1,
            delivery: 1,
            outcome: shoal_shared::Outcome::Succeeded,
            exit_code: Some(0),
            reason: None,
        },
    };
    let to_results: Vec<Vec<u8>> = vec![
        b"garbage".to_vec(),
        shoal_shared::codec::encode(&report(1))?,
        shoal_shared::codec::encode(&report(99))?,
    ];
    for bytes in to_results {
        js.publish("shoal.results.default.w1", bytes.into())
            .await?
            .await?;
    }
    // Batches of reports: unreadable, of an unknown schema, of an unknown kind, and a
    // readable one whose two reports are each refused on their own.
    let batch = |schema_version: u16, reports: Vec<WorkerMessage>| {
        shoal_shared::codec::encode(&WorkerBatch {
            schema_version,
            reports,
        })
    };
    let to_batches: Vec<(&str, Vec<u8>)> = vec![
        (KIND_REPORT_BATCH, b"\x92garbage".to_vec()),
        (KIND_REPORT_BATCH, batch(99, vec![report(1)])?),
        ("report-zip", batch(1, vec![report(1)])?),
        (KIND_REPORT_BATCH, batch(1, vec![report(1), report(99)])?),
    ];
    for (kind, bytes) in to_batches {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(KIND_HEADER, kind);
        js.publish_with_headers("shoal.results.default.w1", headers, bytes.into())
            .await?
            .await?;
    }
    client
        .publish("shoal.heartbeat.default.w1", "not a heartbeat".into())
        .await?;
    client.flush().await?;

    let rejected = c
        .wait_for("fifteen rejections in the log", WAIT, || async {
            let events = c.events(None).await?;
            let r: Vec<Value> = events
                .into_iter()
                .filter(|e| e["type"] == "MessageRejected")
                .map(|e| e["data"].clone())
                .collect();
            Ok((r.len() >= 15).then_some(r))
        })
        .await?;
    // Four on the task subject (the two that decode also end their task, here an unknown
    // one: two more), three on the results subject, one heartbeat; then three batches
    // refused whole and the two reports of the readable one.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let again = c.events(None).await?;
    assert_eq!(
        again
            .iter()
            .filter(|e| e["type"] == "MessageRejected")
            .count(),
        15,
        "nothing is redelivered and rejected again"
    );
    assert_eq!(rejected.len(), 15, "{rejected:#?}");
    let reasons: Vec<String> = rejected
        .iter()
        .map(|r| format!("{} {}", r["subject"], r["reason"]))
        .collect();
    for expected in [
        "shoal.tasks.default",
        "unknown schema version 99",
        "is for pool \\\"eu-west\\\"",
        "reported on unknown task",
        "shoal.results.default.w1",
        "shoal.heartbeat.default.w1",
        "malformed worker report batch",
        "report batch has unknown schema version 99",
        "unknown message kind \\\"report-zip\\\"",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no rejection mentions {expected}: {reasons:#?}"
        );
    }
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("unknown schema version 99"))
            .count(),
        4,
        "{reasons:#?}"
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("reported on unknown task"))
            .count(),
        // the two ended tasks, the single report, the first report of the batch
        4,
        "{reasons:#?}"
    );
    // Terminated, not redelivered: the queue is empty and nothing is pending.
    c.wait_for("an empty task queue", WAIT, || async {
        let mut stream = js.get_stream("SHOAL_TASKS").await?;
        Ok((stream.info().await?.state.messages == 0).then_some(()))
    })
    .await?;
    // And the worker and planner go on serving.
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod",
                        "steps": [{"name": "after", "roles": ["web"], "action": {"type": "noop"}}]}))
        .await?;
    assert_eq!(c.finished(&id, WAIT).await?["state"], "succeeded");
    Ok(())
}
