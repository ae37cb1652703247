//! Scenario 1, the floor: the same broker doing the minimum a task needs, with no planner and
//! no event log. One publisher puts N task-sized MessagePack messages (real encoded
//! `TaskMessage`s) on a work-queue stream over P pool subjects, keeping up to 4,096 publishes
//! in flight with a message id each (as the planner's dispatcher does); W pull consumers, each
//! on its own connection with S messages in hand at once, decode a message, publish a result
//! message to a second stream and wait for the broker to store it, then ack the task; one
//! consumer consumes and acks the results.

use crate::stats::{Latency, per_second, us_to_ms};
use anyhow::bail;
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use shoal_shared::messages::{TaskMessage, WIRE_SCHEMA_VERSION, WorkerBody, WorkerMessage};
use shoal_shared::{
    Action, DeploymentId, EventId, Outcome, PoolName, TaskId, Timestamp, WorkerName, codec,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Parameters of the raw loop.
#[derive(Debug, Clone, Serialize)]
pub struct RawParams {
    pub messages: usize,
    pub pools: usize,
    pub workers: usize,
    /// Messages each consumer handles at once.
    pub in_flight_per_worker: usize,
    pub publish_in_flight: usize,
    pub task_message_bytes: usize,
}

/// What the raw loop measured.
#[derive(Debug, Clone, Serialize)]
pub struct RawResult {
    pub params: RawParams,
    pub msgs_per_s: f64,
    pub seconds: f64,
    /// Publish → a consumer has the message.
    pub publish_to_receive: Latency,
    /// Publish → its result message consumed.
    pub publish_to_result: Latency,
}

const MAX_PUBLISH_IN_FLIGHT: usize = 4096;

/// Runs the raw loop against the broker at `url`.
///
/// # Errors
/// The broker refused the set-up, or not every message came back within the deadline.
pub async fn run(
    url: &str,
    messages: usize,
    pools: usize,
    workers: usize,
    in_flight: usize,
) -> anyhow::Result<RawResult> {
    let client = shoal_cli::local::trust::admin_client(url).await?;
    let js = jetstream::new(client.clone());
    let tasks = js
        .create_stream(stream::Config {
            name: "RAW_TASKS".into(),
            subjects: vec!["raw.tasks.*".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot create RAW_TASKS: {e}"))?;
    let results = js
        .create_stream(stream::Config {
            name: "RAW_RESULTS".into(),
            subjects: vec!["raw.results.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot create RAW_RESULTS: {e}"))?;
    let pool_names: Vec<PoolName> = (0..pools)
        .map(|p| PoolName::parse(format!("bench-{p}")))
        .collect::<Result<_, _>>()?;
    for pool in &pool_names {
        tasks
            .create_consumer(consumer::pull::Config {
                durable_name: Some(pool.to_string()),
                filter_subject: format!("raw.tasks.{pool}"),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 10_000,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the consumer of {pool}: {e}"))?;
    }
    let results_consumer = results
        .create_consumer(consumer::pull::Config {
            durable_name: Some("planner".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the results consumer: {e}"))?;

    let published: Arc<Vec<AtomicI64>> =
        Arc::new((0..messages).map(|_| AtomicI64::new(0)).collect());
    let received: Arc<Vec<AtomicI64>> =
        Arc::new((0..messages).map(|_| AtomicI64::new(0)).collect());
    let done: Arc<Vec<AtomicI64>> = Arc::new((0..messages).map(|_| AtomicI64::new(0)).collect());
    let done_count = Arc::new(AtomicU64::new(0));

    let mut consumers = Vec::new();
    for w in 0..workers {
        let pool = pool_names[w % pools].clone();
        let worker_client = shoal_cli::local::trust::admin_client(url).await?;
        let wjs = jetstream::new(worker_client);
        let c: jetstream::consumer::PullConsumer = wjs
            .get_stream("RAW_TASKS")
            .await?
            .get_consumer(pool.as_str())
            .await
            .map_err(|e| anyhow::anyhow!("cannot find the consumer of {pool}: {e}"))?;
        let name = WorkerName::parse(format!("raw-{w}"))?;
        let received = received.clone();
        consumers.push(tokio::spawn(consume_tasks(
            c, wjs, pool, name, in_flight, received,
        )));
    }
    let results_task = {
        let done = done.clone();
        let done_count = done_count.clone();
        tokio::spawn(async move {
            let mut msgs = results_consumer
                .stream()
                .max_messages_per_batch(1000)
                .messages()
                .await
                .map_err(|e| anyhow::anyhow!("cannot pull results: {e}"))?;
            while let Some(msg) = msgs.next().await {
                let msg = msg.map_err(|e| anyhow::anyhow!("results pull failed: {e}"))?;
                let now = Timestamp::now_micros();
                let report: WorkerMessage = codec::decode("result", &msg.payload)?;
                if let WorkerBody::TaskFinished { task, .. } = report.body {
                    let i = usize::try_from(task.0.as_u128()).unwrap_or(usize::MAX);
                    if let Some(slot) = done.get(i)
                        && slot
                            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                    {
                        done_count.fetch_add(1, Ordering::Relaxed);
                    }
                }
                msg.ack()
                    .await
                    .map_err(|e| anyhow::anyhow!("result ack failed: {e}"))?;
            }
            anyhow::Ok(())
        })
    };

    let sample = task_message(0, &pool_names[0], 0);
    let task_message_bytes = codec::encode(&sample)?.len();
    let start = Timestamp::now_micros();
    let mut acks: FuturesUnordered<futures::future::BoxFuture<'static, Result<(), String>>> =
        FuturesUnordered::new();
    for i in 0..messages {
        while acks.len() >= MAX_PUBLISH_IN_FLIGHT {
            if let Some(r) = acks.next().await {
                r.map_err(|e| anyhow::anyhow!("publish not stored: {e}"))?;
            }
        }
        let pool = &pool_names[i % pools];
        let now = Timestamp::now_micros();
        published[i].store(now, Ordering::Relaxed);
        let msg = task_message(i, pool, now);
        let bytes = codec::encode(&msg)?;
        let ack = js
            .send_publish(
                format!("raw.tasks.{pool}"),
                PublishMessage::build()
                    .payload(bytes.into())
                    .message_id(msg.message_id()),
            )
            .await
            .map_err(|e| anyhow::anyhow!("publish failed: {e}"))?;
        acks.push(Box::pin(async move {
            ack.await.map(|_| ()).map_err(|e| e.to_string())
        }));
    }
    while let Some(r) = acks.next().await {
        r.map_err(|e| anyhow::anyhow!("publish not stored: {e}"))?;
    }
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(60)
        + Duration::from_millis(messages as u64);
    while done_count.load(Ordering::Relaxed) < messages as u64 {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "raw loop: only {} of {messages} results after the deadline",
                done_count.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let end = done
        .iter()
        .map(|d| d.load(Ordering::Relaxed))
        .max()
        .unwrap_or(start);
    for c in consumers {
        c.abort();
    }
    results_task.abort();
    let mut to_receive = Vec::with_capacity(messages);
    let mut to_result = Vec::with_capacity(messages);
    for i in 0..messages {
        let p = published[i].load(Ordering::Relaxed);
        to_receive.push(us_to_ms(received[i].load(Ordering::Relaxed) - p));
        to_result.push(us_to_ms(done[i].load(Ordering::Relaxed) - p));
    }
    Ok(RawResult {
        params: RawParams {
            messages,
            pools,
            workers,
            in_flight_per_worker: in_flight,
            publish_in_flight: MAX_PUBLISH_IN_FLIGHT,
            task_message_bytes,
        },
        msgs_per_s: per_second(messages as u64, end - start),
        seconds: us_to_ms(end - start) / 1000.0,
        publish_to_receive: Latency::of(to_receive),
        publish_to_result: Latency::of(to_result),
    })
}

/// A task message as the planner would publish it: message `i` of the run, a no-op step.
fn task_message(i: usize, pool: &PoolName, now_us: i64) -> TaskMessage {
    TaskMessage {
        trace_parent: None,
        schema_version: WIRE_SCHEMA_VERSION,
        deployment: DeploymentId(uuid::Uuid::from_u128(u128::MAX)),
        task: TaskId(uuid::Uuid::from_u128(i as u128)),
        attempt: 1,
        step_index: 0,
        step_name: "bench".into(),
        target: None,
        endpoint: Some("https://target.example.invalid".into()),
        pool: pool.clone(),
        action: Action::Noop,
        variables: BTreeMap::from([("RELEASE".to_owned(), "2026.11.27".to_owned())]),
        timeout_secs: Some(300),
        planned_at: Timestamp(now_us / 1000),
        planned_at_us: now_us,
        max_deliveries: 3,
        probe: None,
        sensitive_variables: BTreeMap::new(),
        package: None,
    }
}

/// One raw consumer: up to `in_flight` messages at once; each is decoded, answered with a
/// stored result message, then acked.
async fn consume_tasks(
    c: jetstream::consumer::PullConsumer,
    js: jetstream::Context,
    pool: PoolName,
    worker: WorkerName,
    in_flight: usize,
    received: Arc<Vec<AtomicI64>>,
) -> anyhow::Result<()> {
    let msgs = c
        .stream()
        .max_messages_per_batch(in_flight)
        .messages()
        .await?;
    let subject = format!("raw.results.{pool}.{worker}");
    msgs.for_each_concurrent(in_flight, |msg| {
        let (js, subject, pool, worker, received) = (
            js.clone(),
            subject.clone(),
            pool.clone(),
            worker.clone(),
            received.clone(),
        );
        async move {
            let Ok(msg) = msg else { return };
            let now = Timestamp::now_micros();
            let Ok(task) = codec::decode::<TaskMessage>("task", &msg.payload) else {
                return;
            };
            let i = usize::try_from(task.task.0.as_u128()).unwrap_or(usize::MAX);
            if let Some(slot) = received.get(i) {
                let _ = slot.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
            }
            let report = WorkerMessage {
                trace_parent: None,
                schema_version: WIRE_SCHEMA_VERSION,
                event_id: EventId::new(),
                worker,
                pool,
                sent_at: Timestamp::now(),
                body: WorkerBody::TaskFinished {
                    deployment: task.deployment,
                    task: task.task,
                    attempt: task.attempt,
                    delivery: 1,
                    outcome: Outcome::Succeeded,
                    exit_code: Some(0),
                    reason: None,
                },
            };
            let Ok(bytes) = codec::encode(&report) else {
                return;
            };
            let publish = PublishMessage::build()
                .payload(bytes.into())
                .message_id(report.event_id.to_string());
            let stored = match js.send_publish(subject, publish).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if stored {
                let _ = msg.ack().await;
            }
        }
    })
    .await;
    Ok(())
}
