//! Pulling the pool's queue: a slot is taken before a message is requested, so a busy worker
//! leaves tasks to its peers and a task's ack-wait clock never starts in a local buffer.

use crate::WorkerConfig;
use crate::execute;
use crate::report::Reporter;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use shoal_shared::codec;
use shoal_shared::messages::{TaskMessage, WIRE_SCHEMA_VERSION, WorkerBody};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long one pull request waits for work.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Pulls and runs tasks until shutdown, then waits for running tasks.
pub async fn run(
    config: &WorkerConfig,
    js: jetstream::Context,
    reporter: Reporter,
    slots: Arc<Semaphore>,
    running: Arc<AtomicU32>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    // Fired only after the drain deadline: running tasks are stopped and handed back.
    let kill = CancellationToken::new();
    let config = Arc::new(config.clone());
    'outer: while !shutdown.is_cancelled() {
        let Some(consumer) = find_consumer(&config, &js, &shutdown).await else {
            break;
        };
        loop {
            let first = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break 'outer },
                () = shutdown.cancelled() => break 'outer,
            };
            let mut permits = vec![first];
            while let Ok(p) = slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            let batch = consumer
                .batch()
                .max_messages(permits.len())
                .expires(PULL_EXPIRES)
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, pool = %config.pool, "pull request failed; checking the queue again");
                    drop(permits);
                    sleep_or_shutdown(Duration::from_secs(1), &shutdown).await;
                    continue 'outer;
                }
            };
            loop {
                let next = tokio::select! {
                    m = batch.next() => m,
                    () = shutdown.cancelled() => None,
                };
                match next {
                    None => break,
                    Some(Ok(msg)) => {
                        let Some(permit) = permits.pop() else {
                            // The server sent more than asked; hand it back at once.
                            let _ = msg.ack_with(AckKind::Nak(None)).await;
                            continue;
                        };
                        tracker.spawn(handle(
                            msg,
                            config.clone(),
                            reporter.clone(),
                            (permit, Busy::new(&running)),
                            kill.clone(),
                        ));
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "pull batch ended with an error");
                        break;
                    }
                }
            }
        }
    }
    tracker.close();
    if tokio::time::timeout(config.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_timeout_s = config.drain_timeout.as_secs(),
            "running tasks did not finish before the drain deadline; stopping them and handing them back"
        );
        kill.cancel();
        tracker.wait().await;
    }
}

async fn find_consumer(
    config: &WorkerConfig,
    js: &jetstream::Context,
    shutdown: &CancellationToken,
) -> Option<PullConsumer> {
    let stream_name = config.subjects.tasks_stream();
    let consumer_name = config.subjects.pool_consumer(&config.pool);
    let mut warned = false;
    loop {
        if shutdown.is_cancelled() {
            return None;
        }
        let found = match js.get_stream(&stream_name).await {
            Ok(stream) => stream
                .get_consumer::<jetstream::consumer::pull::Config>(&consumer_name)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match found {
            Ok(c) => {
                tracing::info!(pool = %config.pool, "pulling from the pool's queue");
                return Some(c);
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(
                        pool = %config.pool, error = %e,
                        "pool \"{}\" has no queue yet; is the planner running, and is the pool registered (`shoal pool add {}`)? retrying",
                        config.pool, config.pool
                    );
                    warned = true;
                }
                sleep_or_shutdown(Duration::from_secs(1), shutdown).await;
            }
        }
    }
}

async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = shutdown.cancelled() => {}
    }
}

/// Decodes a task message and checks it is for this worker's pool and a schema it reads.
fn accept(msg: &jetstream::Message, config: &WorkerConfig) -> Result<TaskMessage, String> {
    let task: TaskMessage =
        codec::decode("task message", &msg.payload).map_err(|e| e.to_string())?;
    if task.schema_version > WIRE_SCHEMA_VERSION {
        return Err(format!(
            "task {} has schema version {}; this worker reads up to {WIRE_SCHEMA_VERSION}: upgrade the worker",
            task.task, task.schema_version
        ));
    }
    if task.pool != config.pool {
        return Err(format!(
            "task {} is for pool \"{}\" but this worker serves \"{}\"",
            task.task, task.pool, config.pool
        ));
    }
    Ok(task)
}

/// Runs one task message: report started, keep the message alive while running, report
/// finished, and acknowledge only once the result is stored.
async fn handle(
    msg: jetstream::Message,
    config: Arc<WorkerConfig>,
    reporter: Reporter,
    _slot: (OwnedSemaphorePermit, Busy),
    kill: CancellationToken,
) {
    let task = match accept(&msg, &config) {
        Ok(task) => task,
        Err(reason) => {
            tracing::error!(subject = %msg.subject, reason = %reason, "rejecting a task message");
            let head = msg.payload[..msg.payload.len().min(256)].to_vec();
            reporter
                .send(WorkerBody::Rejected {
                    subject: msg.subject.to_string(),
                    reason,
                    head,
                    size: msg.payload.len() as u64,
                })
                .await;
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    let span = tracing::info_span!("task", task.id = %task.task, attempt = task.attempt, step = %task.step_name);
    let _ = span.enter();
    if !reporter
        .send(WorkerBody::TaskStarted {
            deployment: task.deployment,
            task: task.task,
            attempt: task.attempt,
        })
        .await
    {
        let _ = msg.ack_with(AckKind::Nak(None)).await;
        return;
    }
    let keepalive = {
        let msg_acker = msg.clone();
        let every = config.progress_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = msg_acker.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "progress ack not sent");
                }
            }
        })
    };
    let result = execute::run(&task, &config, &reporter, &kill).await;
    keepalive.abort();
    if result.interrupted {
        let _ = msg.ack_with(AckKind::Nak(None)).await;
        return;
    }
    let stored = reporter
        .send(WorkerBody::TaskFinished {
            deployment: task.deployment,
            task: task.task,
            attempt: task.attempt,
            outcome: result.outcome,
            exit_code: result.exit_code,
            reason: result.reason,
        })
        .await;
    if stored {
        if let Err(e) = msg.double_ack().await {
            tracing::warn!(error = %e, task.id = %task.task, "task acknowledgement not confirmed; the broker may redeliver it");
        }
    } else {
        let _ = msg.ack_with(AckKind::Nak(None)).await;
    }
}

/// Counts a running task for heartbeats while it lives.
struct Busy(Arc<AtomicU32>);

impl Busy {
    fn new(running: &Arc<AtomicU32>) -> Busy {
        running.fetch_add(1, Ordering::Relaxed);
        Busy(running.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
