//! Attacks on what workers act on: forged, altered, expired, foreign-key and replayed task
//! messages, and forged cancellations and instructions, published with a raw NATS client
//! onto the subjects a real worker process reads. Each forged task's script would create a
//! marker file; every test asserts the worker refused it, the refusal is an event in
//! `/api/events`, and the marker does not exist.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};
use futures::StreamExt as _;
use shoal_e2e::serde_json::{Value, json};
use shoal_e2e::{Cluster, WAIT};
use shoal_shared::messages::{TaskMessage, WorkerControl};
use shoal_shared::signed::{Binding, Kind, SIGNATURE_HEADER, SigningKey};
use shoal_shared::{Action, DeploymentId, PoolName, TaskId, Timestamp, WorkerName, codec};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A cluster without a built-in worker, with pools `pool-a` and `pool-b`, environment `prod`
/// and the given workers (name, pool) online.
async fn cluster(workers: &[(&str, &str)]) -> anyhow::Result<Cluster> {
    let mut c = Cluster::start(&["--no-builtin-worker"]).await?;
    c.pool("pool-a", "a").await?;
    c.pool("pool-b", "b").await?;
    // Deployments need an environment; their steps here name no role, so run once.
    c.target("t1", "prod", &["web"], None).await?;
    for (name, pool) in workers {
        c.worker(name, pool, "r", &[])?;
    }
    let names: Vec<&str> = workers.iter().map(|(n, _)| *n).collect();
    c.wait_online(&names).await?;
    Ok(c)
}

/// The one way these attacks reach a task subject: as an identity that may write it. Until
/// the broker has users that is anyone; once it has, it is the planner's own credentials
/// (the only identity that may publish tasks), to be passed here.
async fn publish_as_task_writer(
    c: &Cluster,
    subject: &str,
    headers: HeaderMap,
    payload: Vec<u8>,
) -> anyhow::Result<()> {
    // Only the planner's identity may publish tasks: the attacker holds it.
    let client = c.nats.connect().await?;
    let js = jetstream::new(client);
    // A message id of its own, so the broker's de-duplication never drops a copy.
    let msg = PublishMessage::build()
        .payload(payload.into())
        .headers(headers)
        .message_id(format!("forged/{}", uuid_like()));
    tokio::time::timeout(WAIT, async {
        js.send_publish(subject.to_owned(), msg).await?.await
    })
    .await??;
    Ok(())
}

/// Core NATS for cancellations and instructions, as anyone who may publish them.
async fn publish_core(
    c: &Cluster,
    subject: String,
    headers: HeaderMap,
    payload: Vec<u8>,
) -> anyhow::Result<()> {
    let client = c.nats.connect().await?;
    client
        .publish_with_headers(subject, headers, payload.into())
        .await?;
    tokio::time::timeout(WAIT, client.flush()).await??;
    Ok(())
}

fn uuid_like() -> String {
    TaskId::new().to_string()
}

fn pool(s: &str) -> PoolName {
    PoolName::parse(s).expect("valid")
}

/// A task of `pool` whose script creates `marker`.
fn forged_task(pool_name: &str, marker: &Path) -> TaskMessage {
    TaskMessage {
        trace_parent: None,
        schema_version: 1,
        deployment: DeploymentId::new(),
        task: TaskId::new(),
        attempt: 1,
        step_index: 0,
        step_name: "forged".into(),
        target: None,
        endpoint: None,
        pool: pool(pool_name),
        action: Action::Script {
            script: format!("touch {}", marker.display()),
            shell: None,
        },
        variables: Default::default(),
        sensitive_variables: Default::default(),
        package: None,
        timeout_secs: None,
        planned_at: Timestamp::now(),
        max_deliveries: 0,
        probe: None,
        planned_at_us: 0,
    }
}

fn binding_of(task: &TaskMessage) -> Binding {
    Binding {
        kind: Kind::Task,
        pool: task.pool.clone(),
        id: task.task.to_string(),
        attempt: Some(task.attempt),
    }
}

fn signature(value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(SIGNATURE_HEADER, value);
    h
}

/// Waits for the event recording that `worker` rejected a message for a reason containing
/// `because`, then for the task queue to be empty (the message was terminated, not handed
/// back to run later).
async fn refused(c: &Cluster, worker: &str, because: &str) -> anyhow::Result<Value> {
    let event = c
        .wait_for(
            &format!("{worker} rejecting it ({because})"),
            WAIT,
            || async {
                let events = c.events(None).await?;
                Ok(events.into_iter().find(|e| {
                    let reason = e["data"]["reason"].as_str().unwrap_or_default();
                    e["type"] == "MessageRejected"
                        && reason.contains(&format!("worker \"{worker}\" rejected it"))
                        && reason.contains(because)
                }))
            },
        )
        .await?;
    // Only the planner's identity may publish tasks: the attacker holds it.
    let client = c.nats.connect().await?;
    let js = jetstream::new(client);
    c.wait_for("an empty task queue", WAIT, || async {
        let mut stream = js.get_stream("SHOAL_TASKS").await?;
        Ok((stream.info().await?.state.messages == 0).then_some(()))
    })
    .await?;
    Ok(event)
}

fn marker(c: &Cluster) -> PathBuf {
    c.dir.path().join("forged-task-ran")
}

/// Deploys a one-step script into `pool_name` and returns the deployment id and the task
/// message the planner published for it (payload and headers), as a listener on the task
/// subject sees it.
async fn real_task(
    c: &Cluster,
    pool_name: &str,
    script: &str,
) -> anyhow::Result<(String, HeaderMap, Vec<u8>)> {
    let client = c.nats.connect().await?;
    let mut sub = client.subscribe(format!("shoal.tasks.{pool_name}")).await?;
    tokio::time::timeout(WAIT, client.flush()).await??;
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "s", "pool": pool_name, "action": {"type": "script", "script": script}}]}))
        .await?;
    let msg = tokio::time::timeout(WAIT, sub.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no task message seen"))?;
    let headers = msg.headers.unwrap_or_default();
    assert!(
        headers.get(SIGNATURE_HEADER).is_some(),
        "the planner signs what it publishes"
    );
    Ok((id, headers, msg.payload.to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_task_is_refused_recorded_and_never_runs() -> anyhow::Result<()> {
    let c = cluster(&[("wa", "pool-a")]).await?;
    let task = forged_task("pool-a", &marker(&c));
    let payload = codec::encode(&task)?;
    publish_as_task_writer(&c, "shoal.tasks.pool-a", HeaderMap::new(), payload).await?;
    refused(&c, "wa", "unsigned").await?;
    assert!(!marker(&c).exists(), "the unsigned task ran");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_altered_after_signing_is_refused_recorded_and_never_runs() -> anyhow::Result<()> {
    let c = cluster(&[("wa", "pool-a")]).await?;
    let (id, headers, payload) = real_task(&c, "pool-a", "echo the real one").await?;
    let mut task: TaskMessage = codec::decode("task", &payload)?;
    task.action = Action::Script {
        script: format!("touch {}", marker(&c).display()),
        shell: None,
    };
    publish_as_task_writer(&c, "shoal.tasks.pool-a", headers, codec::encode(&task)?).await?;
    let event = refused(&c, "wa", "altered").await?;
    assert!(!marker(&c).exists(), "the altered task ran: {event:#}");
    // The real one, signed as the planner sent it, ran.
    assert_eq!(c.finished(&id, WAIT).await?["state"], "succeeded");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_task_is_refused_recorded_and_never_runs() -> anyhow::Result<()> {
    let c = cluster(&[("wa", "pool-a")]).await?;
    let key = SigningKey::parse(&std::fs::read_to_string(c.signing_key_path()?)?)?;
    let task = forged_task("pool-a", &marker(&c));
    let payload = codec::encode(&task)?;
    let two_days_ago = Timestamp(Timestamp::now().millis() - 2 * 24 * 3_600_000);
    let header = key.sign(&binding_of(&task), &payload, two_days_ago, 3_600_000);
    publish_as_task_writer(&c, "shoal.tasks.pool-a", signature(&header), payload).await?;
    refused(&c, "wa", "signature expired").await?;
    assert!(!marker(&c).exists(), "the expired task ran");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_signed_by_an_unknown_key_is_refused_recorded_and_never_runs() -> anyhow::Result<()>
{
    let c = cluster(&[("wa", "pool-a")]).await?;
    let mallory = SigningKey::generate()?;
    let task = forged_task("pool-a", &marker(&c));
    let payload = codec::encode(&task)?;
    let header = mallory.sign(&binding_of(&task), &payload, Timestamp::now(), 3_600_000);
    publish_as_task_writer(&c, "shoal.tasks.pool-a", signature(&header), payload).await?;
    let event = refused(&c, "wa", "unknown key").await?;
    let reason = event["data"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(mallory.key_id().as_str()), "{reason}");
    assert!(!marker(&c).exists(), "the task of an unknown key ran");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_task_of_one_pool_replayed_into_another_pool_is_refused_and_never_runs()
-> anyhow::Result<()> {
    // Pool A has no worker: its real task waits in its queue, and only the copy can run.
    let c = cluster(&[("wb", "pool-b")]).await?;
    let script = format!("touch {}", marker(&c).display());
    let (_, headers, payload) = real_task(&c, "pool-a", &script).await?;
    publish_as_task_writer(&c, "shoal.tasks.pool-b", headers, payload).await?;
    c.wait_for("wb rejecting the copy", WAIT, || async {
        let events = c.events(None).await?;
        Ok(events.into_iter().find(|e| {
            let reason = e["data"]["reason"].as_str().unwrap_or_default();
            e["type"] == "MessageRejected"
                && reason.contains("worker \"wb\" rejected it")
                && reason.contains("signed for pool \"pool-a\"")
                && reason.contains("replayed into another pool")
        }))
    })
    .await?;
    assert!(!marker(&c).exists(), "pool A's task ran in pool B");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_task_replayed_as_another_attempt_is_refused_and_never_runs() -> anyhow::Result<()> {
    let c = cluster(&[("wa", "pool-a")]).await?;
    // Each run leaves a file named after its attempt: the real one leaves `ran-1`.
    let dir = c.dir.path().display().to_string();
    let script = format!("touch {dir}/ran-$SHOAL_ATTEMPT");
    let (id, headers, payload) = real_task(&c, "pool-a", &script).await?;
    assert_eq!(c.finished(&id, WAIT).await?["state"], "succeeded");
    let mut task: TaskMessage = codec::decode("task", &payload)?;
    task.attempt = 2;
    publish_as_task_writer(&c, "shoal.tasks.pool-a", headers, codec::encode(&task)?).await?;
    refused(&c, "wa", "replayed as another attempt").await?;
    assert!(c.dir.path().join("ran-1").exists(), "the real attempt ran");
    assert!(
        !c.dir.path().join("ran-2").exists(),
        "the replayed attempt ran"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_task_copied_back_onto_its_own_queue_is_refused_by_the_worker_that_ran_it()
-> anyhow::Result<()> {
    let c = cluster(&[("wa", "pool-a")]).await?;
    // Every run appends a line: one line means one run.
    let runs = c.dir.path().join("runs");
    let script = format!("echo ran >> {}", runs.display());
    let (id, headers, payload) = real_task(&c, "pool-a", &script).await?;
    assert_eq!(c.finished(&id, WAIT).await?["state"], "succeeded");
    // The genuine signed message, unchanged, under a new message id (past the broker's
    // de-duplication).
    publish_as_task_writer(&c, "shoal.tasks.pool-a", headers, payload).await?;
    refused(
        &c,
        "wa",
        "replayed (a second copy of an attempt this worker already started)",
    )
    .await?;
    assert_eq!(std::fs::read_to_string(&runs)?.lines().count(), 1);
    Ok(())
}

/// A real task of `pool-a` that runs until `release` exists; returns its deployment and
/// task ids once it runs.
async fn long_task(c: &Cluster, release: &Path) -> anyhow::Result<(String, String)> {
    let started = c.dir.path().join("started");
    let script = format!(
        "touch {}; while [ ! -e {} ]; do sleep 0.1; done",
        started.display(),
        release.display()
    );
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "s", "pool": "pool-a", "action": {"type": "script", "script": script}}]}))
        .await?;
    c.wait_for("the task to run", WAIT, || async {
        Ok(started.exists().then_some(()))
    })
    .await?;
    let task = c.task(&id, "s").await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok((id, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_cancellation_is_ignored_and_the_task_runs_to_its_end() -> anyhow::Result<()> {
    let c = cluster(&[("wa", "pool-a")]).await?;
    let release = c.dir.path().join("release");
    let (id, task) = long_task(&c, &release).await?;
    // Unsigned, and signed by a key no worker trusts.
    let subject = format!("shoal.cancel.pool-a.{task}");
    publish_core(&c, subject.clone(), HeaderMap::new(), vec![]).await?;
    let mallory = SigningKey::generate()?;
    let binding = Binding {
        kind: Kind::Cancel,
        pool: pool("pool-a"),
        id: task.clone(),
        attempt: Some(u32::MAX),
    };
    let header = mallory.sign(&binding, b"", Timestamp::now(), 60_000);
    publish_core(&c, subject, signature(&header), vec![]).await?;
    let wa = c.workers.iter().find(|p| p.name == "wa").expect("started");
    wa.wait_for_output(
        "ignoring a cancellation whose signature does not verify",
        WAIT,
    )
    .await?;
    std::fs::write(&release, "")?;
    let d = c.finished(&id, WAIT).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_drain_instruction_is_ignored_and_the_worker_keeps_taking_tasks()
-> anyhow::Result<()> {
    let c = cluster(&[("wa", "pool-a")]).await?;
    let drain = WorkerControl {
        schema_version: 1,
        worker: WorkerName::parse("wa").expect("valid"),
        drain: true,
    };
    let payload = codec::encode(&drain)?;
    publish_core(
        &c,
        "shoal.control.pool-a.wa".to_owned(),
        HeaderMap::new(),
        payload,
    )
    .await?;
    let wa = c.workers.iter().find(|p| p.name == "wa").expect("started");
    wa.wait_for_output(
        "ignoring an instruction whose signature does not verify",
        WAIT,
    )
    .await?;
    assert!(
        !wa.output().contains("draining on request"),
        "the worker obeyed a forged instruction"
    );
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "s", "pool": "pool-a", "action": {"type": "script", "script": "true"}}]}))
        .await?;
    let d = tokio::time::timeout(Duration::from_secs(120), c.finished(&id, WAIT)).await??;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    let workers = c.api.get("/api/workers").await?;
    let status = workers
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["name"] == "wa"))
        .map(|w| w["status"].clone());
    assert_eq!(status, Some(json!("online")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genuine_task_copied_onto_its_queue_by_a_workers_reply_subject_is_dropped_as_a_duplicate()
-> anyhow::Result<()> {
    // No worker of pool-a yet: the task waits in the queue.
    let c = cluster(&[]).await?;
    c.deploy(&json!({"project": "p", "environment": "prod", "steps": [
        {"name": "s", "pool": "pool-a", "action": {"type": "script", "script": "true"}}]}))
        .await?;
    let admin = jetstream::new(c.nats.connect().await?);
    let messages = || async {
        let mut stream = admin.get_stream("SHOAL_TASKS").await?;
        anyhow::Ok(stream.info().await?.state.messages)
    };
    c.wait_for("the task queued", WAIT, || async {
        Ok((messages().await? == 1).then_some(()))
    })
    .await?;
    // A worker of pool-a asks for its next task with its pool's task subject as the reply:
    // the broker does not check reply subjects and delivers the signed task there, where
    // the stream would store it again as a new message.
    let attacker = shoal_cli::local::trust::worker_client(&c.nats.url(), "wa", "pool-a").await?;
    attacker
        .publish_with_reply(
            "$JS.API.CONSUMER.MSG.NEXT.SHOAL_TASKS.pool-a",
            "shoal.tasks.pool-a",
            r#"{"batch":1,"no_wait":true}"#.into(),
        )
        .await?;
    tokio::time::timeout(WAIT, attacker.flush()).await??;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        messages().await?,
        1,
        "the copy was stored beside the original"
    );
    // It stays a duplicate for as long as its signature is valid (7 days by default), not
    // only the broker's default 2 minutes.
    let window = admin
        .get_stream("SHOAL_TASKS")
        .await?
        .info()
        .await?
        .config
        .duplicate_window;
    assert!(
        window >= Duration::from_secs(7 * 24 * 3600),
        "duplicate window {window:?} is shorter than a task signature's lifetime"
    );
    Ok(())
}
