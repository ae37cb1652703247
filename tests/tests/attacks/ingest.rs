//! Attacks on what the planner ingests, with real processes: an attacker publishes with a raw
//! NATS client on subjects an identity may write (a worker's own results and heartbeat
//! subjects), and the planner must believe the subject, not the message — and a flood of bad
//! messages must not grow its log beyond the bound in `docs/security/ingest.md`.

use serde_json::{Value, json};
use shoal_e2e::{Cluster, WAIT};
use shoal_shared::messages::{Heartbeat, WIRE_SCHEMA_VERSION, WorkerBody, WorkerMessage};
use shoal_shared::{DeploymentId, EventId, Outcome, PoolName, TaskId, Timestamp, WorkerName};
use std::path::Path;
use std::time::Duration;

/// Refusals per subject and minute recorded in full (`FULL_PER_MINUTE` in
/// `services/planner/src/rejections/budget.rs`).
const FULL_PER_MINUTE: usize = 20;
/// The most the planner's data dir may grow, flushed, for 20,000 bad heartbeats and 20,000
/// bad results (the stated bound: a few dozen records; without the budget it grew by tens
/// of megabytes).
const MAX_DIR_GROWTH: u64 = 4 << 20;

/// A client of the broker connected as an identity that may publish `subject` (the worker
/// whose subject it is). Until the broker has users, anyone may; with per-worker identities
/// this is where the test takes that worker's credentials.
async fn attacker_for(c: &Cluster, subject: &str) -> anyhow::Result<async_nats::Client> {
    use shoal_shared::subjects::{Subjects, WorkerSubject};
    match Subjects::default().parse_worker_subject(subject) {
        // The broker lets only that worker's identity publish there: the attacker holds it.
        Ok(
            WorkerSubject::Results(owner)
            | WorkerSubject::Heartbeat(owner)
            | WorkerSubject::DrainState(owner),
        ) => {
            shoal_cli::local::trust::worker_client(
                &c.nats.url(),
                owner.worker.as_str(),
                owner.pool.as_str(),
            )
            .await
        }
        // No worker may publish there; a worker can still make the broker store a message
        // under it (a fetch's reply subject is not permission-checked), as the admin does here.
        Err(_) => c.nats.connect().await,
    }
}

fn pool(s: &str) -> PoolName {
    PoolName::parse(s).expect("valid")
}

fn worker(s: &str) -> WorkerName {
    WorkerName::parse(s).expect("valid")
}

/// A cluster with workers `(name, pool)` online and a task running a long script in `pool`:
/// the cluster, the deployment id and the running task.
async fn running_task(
    workers: &[(&str, &str)],
    task_pool: &str,
) -> anyhow::Result<(Cluster, String, Value)> {
    let mut c = Cluster::start(&["--no-builtin-worker"]).await?;
    for p in ["eu-west", "us-east"] {
        c.pool(p, "local").await?;
    }
    c.target("t1", "prod", &["web"], None).await?;
    for (name, p) in workers {
        c.worker(name, p, "local", &[])?;
    }
    let names: Vec<&str> = workers.iter().map(|(n, _)| *n).collect();
    c.wait_online(&names).await?;
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "long", "roles": ["web"], "pool": task_pool,
             "action": {"type": "script", "script": "sleep 120"}}]}))
        .await?;
    let task = c
        .wait_for("the task running", WAIT, || async {
            let t = c.task(&id, "long").await?;
            Ok((t["state"] == "running").then_some(t))
        })
        .await?;
    Ok((c, id, task))
}

/// A forged `succeeded` for `task`, claiming `(claimed_pool, claimed_worker)`.
fn forged_success(
    deployment: &str,
    task: &Value,
    claimed_pool: &str,
    claimed_worker: &str,
) -> anyhow::Result<Vec<u8>> {
    let msg = WorkerMessage {
        trace_parent: None,
        schema_version: WIRE_SCHEMA_VERSION,
        event_id: EventId::new(),
        worker: worker(claimed_worker),
        pool: pool(claimed_pool),
        sent_at: Timestamp::now(),
        body: WorkerBody::TaskFinished {
            deployment: DeploymentId::parse(deployment)?,
            task: TaskId::parse(task["id"].as_str().unwrap_or_default())?,
            attempt: u32::try_from(task["attempt"].as_u64().unwrap_or(1))?,
            delivery: u32::try_from(task["delivery"].as_u64().unwrap_or(1))?,
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            reason: None,
        },
    };
    Ok(shoal_shared::codec::encode(&msg)?)
}

/// Waits for a `MessageRejected` on `subject` whose reason contains `why`, and returns it.
async fn refusal(c: &Cluster, subject: &str, why: &str) -> anyhow::Result<Value> {
    c.wait_for(&format!("a refusal on {subject}"), WAIT, || async {
        Ok(c.events(Some("rejected")).await?.into_iter().find(|e| {
            e["type"] == "MessageRejected"
                && e["data"]["subject"] == subject
                && e["data"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains(why))
        }))
    })
    .await
}

/// Publishes `bytes` to the results stream on `subject` and waits for the broker to store it.
async fn publish_result(c: &Cluster, subject: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
    let client = attacker_for(c, subject).await?;
    let js = async_nats::jetstream::new(client);
    tokio::time::timeout(WAIT, async {
        js.publish(subject.to_owned(), bytes.into()).await?.await
    })
    .await??;
    Ok(())
}

/// The task is still running on its own worker a moment after the forgery was refused: the
/// refusal and the task's state were decided in the same ordered log.
async fn assert_still_running(c: &Cluster, deployment: &str, before: &Value) -> anyhow::Result<()> {
    let now = c.task(deployment, "long").await?;
    assert_eq!(now["state"], "running", "{now:#}");
    assert_eq!(now["worker"], before["worker"], "{now:#}");
    let d = c.api.get(&format!("/api/deployments/{deployment}")).await?;
    assert_eq!(d["state"], "running", "{d:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_on_worker_xs_subject_claiming_worker_y_is_rejected_and_does_not_finish_ys_task()
-> anyhow::Result<()> {
    let (c, id, task) = running_task(&[("wx", "default"), ("wy", "default")], "default").await?;
    let runner = task["worker"].as_str().unwrap_or_default().to_owned();
    let other = if runner == "wx" { "wy" } else { "wx" };
    let subject = format!("shoal.results.default.{other}");
    // The attacker holds `other`'s identity and speaks for the worker running the task.
    publish_result(
        &c,
        &subject,
        forged_success(&id, &task, "default", &runner)?,
    )
    .await?;
    let r = refusal(&c, &subject, "a worker may speak only for itself").await?;
    assert_eq!(
        r["data"]["claimed"],
        format!("pool \"default\", worker \"{runner}\""),
        "{r:#}"
    );
    assert_still_running(&c, &id, &task).await?;
    assert!(
        !c.events(None)
            .await?
            .iter()
            .any(|e| e["type"] == "TaskFinished"),
        "a forged outcome reached the log"
    );
    c.api
        .post(&format!("/api/deployments/{id}/cancel"), &json!({}))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_on_pool_as_subject_about_a_task_of_pool_b_is_rejected() -> anyhow::Result<()> {
    let (c, id, task) = running_task(&[("wa", "eu-west"), ("wb", "us-east")], "us-east").await?;
    assert_eq!(task["worker"], "wb");
    // Worker `wa` of eu-west speaks for itself, about a task of us-east.
    let forged = forged_success(&id, &task, "eu-west", "wa")?;
    refused_while_running(
        &c,
        "shoal.results.eu-west.wa",
        forged,
        "which is pool \"us-east\"'s",
        (&id, &task),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_on_worker_xs_subject_claiming_worker_y_does_not_bring_y_online()
-> anyhow::Result<()> {
    let mut c = Cluster::start(&["--no-builtin-worker"]).await?;
    c.worker("wx", "default", "local", &[])?;
    c.wait_online(&["wx"]).await?;
    let subject = "shoal.heartbeat.default.wx";
    let attacker = attacker_for(&c, subject).await?;
    let beat = |name: &str| Heartbeat {
        schema_version: WIRE_SCHEMA_VERSION,
        worker: worker(name),
        pool: pool("default"),
        region: None,
        slots: 64,
        busy: 0,
        interval_ms: 60_000,
        sent_at: Timestamp::now(),
        draining: false,
        free_disk_mb: None,
        warnings: vec![],
        ready: Some(true),
        not_ready_reason: None,
    };
    let forged = shoal_shared::codec::encode(&beat("ghost"))?;
    tokio::time::timeout(WAIT, async {
        attacker.publish(subject, forged.into()).await?;
        attacker.flush().await?;
        anyhow::Ok(())
    })
    .await??;
    let r = refusal(&c, subject, "a worker may speak only for itself").await?;
    assert_eq!(r["data"]["claimed"], "pool \"default\", worker \"ghost\"");
    let workers = c.api.get("/api/workers").await?;
    let names: Vec<&str> = workers
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert!(!names.contains(&"ghost"), "{workers:#}");
    assert!(names.contains(&"wx"), "{workers:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_stored_in_the_results_stream_on_a_subject_that_is_no_workers_results_subject_is_refused()
-> anyhow::Result<()> {
    let (c, id, task) = running_task(&[("wx", "default")], "default").await?;
    // What a JetStream reply subject can make the broker store: any subject of the stream.
    let forged = forged_success(&id, &task, "default", "wx")?;
    let why = "only reports belong in the results stream";
    refused_while_running(
        &c,
        "shoal.results.default.wx.extra",
        forged,
        why,
        (&id, &task),
    )
    .await
}

/// Publishes `forged` on `subject` of the results stream, checks that the planner recorded
/// its refusal saying `why` and that the running task is untouched, then cancels it.
async fn refused_while_running(
    c: &Cluster,
    subject: &str,
    forged: Vec<u8>,
    why: &str,
    (id, task): (&str, &Value),
) -> anyhow::Result<()> {
    publish_result(c, subject, forged).await?;
    refusal(c, subject, why).await?;
    assert_still_running(c, id, task).await?;
    c.api
        .post(&format!("/api/deployments/{id}/cancel"), &json!({}))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_state_question_on_the_subject_of_a_worker_of_another_pool_is_refused_unanswered()
-> anyhow::Result<()> {
    let mut c = Cluster::start(&["--no-builtin-worker"]).await?;
    c.pool("eu-west", "local").await?;
    c.worker("wx", "default", "local", &[])?;
    c.wait_online(&["wx"]).await?;
    // `wx` is of pool default: a question naming it under eu-west is not from it.
    // No identity may publish there (the broker binds wx to pool default), so this is the
    // planner's second line of defence: asked by an identity that may (the admin).
    let subject = "shoal.drain-state.eu-west.wx";
    let admin = c.nats.connect().await?;
    let asked = tokio::time::timeout(
        Duration::from_secs(2),
        admin.request(subject, bytes::Bytes::new()),
    )
    .await;
    assert!(
        !matches!(asked, Ok(Ok(_))),
        "the planner answered: {asked:?}"
    );
    refusal(&c, subject, "is in pool \"default\"").await?;
    // Its own question is answered.
    let own = "shoal.drain-state.default.wx";
    let attacker = attacker_for(&c, own).await?;
    let answer = tokio::time::timeout(WAIT, attacker.request(own, bytes::Bytes::new())).await??;
    assert!(!answer.payload.is_empty());
    Ok(())
}

/// Bytes of every file under `dir`.
fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// The refusal events of the log: those recorded in full, and the counts of the rest per
/// subject.
async fn refusals(c: &Cluster) -> anyhow::Result<(Vec<Value>, Vec<Value>)> {
    let events = c.events(Some("rejected")).await?;
    let of = |t: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["type"] == t)
            .map(|e| e["data"].clone())
            .collect()
    };
    Ok((of("MessageRejected"), of("RejectionsCounted")))
}

/// Publishes 20,000 malformed results (stored by the broker) and 20,000 malformed heartbeats.
async fn flood(c: &Cluster, results: &str, heartbeats: &str) -> anyhow::Result<()> {
    let client = attacker_for(c, results).await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut acks = Vec::new();
    for i in 0..20_000u32 {
        let bytes = [b"\xc1 not a report ".as_slice(), &i.to_be_bytes()].concat();
        acks.push(js.publish(results.to_owned(), bytes.into()).await?);
        if acks.len() == 1_000 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    let beats = attacker_for(c, heartbeats).await?;
    for i in 0..20_000u32 {
        let bytes = [b"\xc1 not a heartbeat ".as_slice(), &i.to_be_bytes()].concat();
        beats.publish(heartbeats.to_owned(), bytes.into()).await?;
    }
    beats.flush().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_malformed_heartbeats_and_results_grow_the_log_within_the_stated_bound()
-> anyhow::Result<()> {
    let mut c = Cluster::start(&["--no-builtin-worker"]).await?;
    c.target("t1", "prod", &["web"], None).await?;
    c.worker("w1", "default", "local", &[])?;
    c.wait_online(&["w1"]).await?;
    let (recorded_before, _) = refusals(&c).await?;
    c.stop_planner().await?;
    let size_before = dir_size(&c.data_dir())?;
    c.start_planner().await?;
    c.wait_online(&["w1"]).await?;

    let (results, heartbeats) = ("shoal.results.default.w1", "shoal.heartbeat.default.w1");
    tokio::time::timeout(Duration::from_secs(120), flood(&c, results, heartbeats)).await??;

    // Every stored result was taken (refused and acknowledged), and the planner still serves.
    let js = async_nats::jetstream::new(c.nats.connect().await?);
    c.wait_for("the results stream drained", WAIT, || async {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
            .get_stream("SHOAL_RESULTS")
            .await?
            .get_consumer("planner")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let info = consumer.info().await?;
        Ok((info.num_pending == 0 && info.num_ack_pending == 0).then_some(()))
    })
    .await?;
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "s", "roles": ["web"], "action": {"type": "noop"}}]}))
        .await?;
    let d = c.finished(&id, WAIT).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");

    // Stopping flushes the log, and records the counts of the minutes still open.
    c.stop_planner().await?;
    let growth = dir_size(&c.data_dir())?.saturating_sub(size_before);
    c.start_planner().await?;
    let (recorded, counted) = refusals(&c).await?;
    let recorded = recorded.len() - recorded_before.len();
    // Two subjects; the flood may straddle a minute's end: two windows each.
    let bound = 2 * 2 * FULL_PER_MINUTE;
    assert!(
        recorded <= bound,
        "{recorded} refusals recorded in full (bound {bound})"
    );
    assert!(
        counted.len() <= 2 * 2,
        "{} counts: {counted:#?}",
        counted.len()
    );
    let count_of = |subject: &str| -> u64 {
        counted
            .iter()
            .filter(|s| s["subject"] == subject)
            .filter_map(|s| s["count"].as_u64())
            .sum()
    };
    eprintln!(
        "flood: data dir grew by {growth} bytes; {recorded} refusals recorded in full, counted: results {}, heartbeats {}",
        count_of(results),
        count_of(heartbeats)
    );
    let full = u64::try_from(FULL_PER_MINUTE)?;
    assert!(
        count_of(results) >= 20_000 - 2 * full && count_of(results) <= 20_000 - full,
        "results counted: {}",
        count_of(results)
    );
    assert!(
        count_of(heartbeats) > 0 && count_of(heartbeats) <= 20_000 - full,
        "heartbeats counted: {}",
        count_of(heartbeats)
    );
    assert!(
        growth <= MAX_DIR_GROWTH,
        "the data dir grew by {growth} bytes (bound {MAX_DIR_GROWTH})"
    );
    Ok(())
}
