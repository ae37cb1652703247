//! Pulling the pool's queue: a slot is taken before a message is requested, so a busy worker
//! leaves tasks to its peers and a task's ack-wait clock never starts in a local buffer.

use crate::WorkerConfig;
use crate::control::Runtime;
use crate::execute;
use crate::report::Reporter;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use shoal_runtime::telemetry::{TRACEPARENT, child_span, traceparent};
use shoal_shared::codec;
use shoal_shared::messages::{
    CheckMessage, KIND_HEADER, KIND_HEALTH_CHECK, TaskMessage, WIRE_SCHEMA_VERSION, WorkerBody,
};
use shoal_shared::signed::{Binding, Kind};
use shoal_shared::{Outcome, Timestamp};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::Instrument as _;

/// How long one pull request waits for work. Short, because a pull request cannot be taken
/// back: nats-server 2.9 with accounts (every secured broker) keeps delivering into a dropped
/// request until it expires, and each such delivery is lost and counts against the
/// attempt's deliveries (a drained worker's dropped pull used up a queued task's three).
/// One request a second per idle worker is the price.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// How often the queue's ack wait is read again, to fit progress acks to it.
const REFIT_EVERY: Duration = Duration::from_secs(30);
/// How long past a pull request's expiry a worker that stops pulling stays subscribed to it.
const HAND_BACK_MARGIN: Duration = Duration::from_millis(250);
/// How long tasks stopped at the drain deadline may take to hand their messages back.
const HAND_BACK_GRACE: Duration = Duration::from_secs(5);
/// Pulls and runs tasks until shutdown, then waits for running tasks up to the drain
/// deadline and hands back the rest. While the planner has the worker draining
/// (maintenance), it pulls nothing and does the same without exiting.
pub async fn run(
    config: &WorkerConfig,
    js: jetstream::Context,
    reporter: Reporter,
    runtime: Runtime,
    slots: Arc<Semaphore>,
    running: Arc<AtomicU32>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    // Fired only after a drain deadline: running tasks are stopped and handed back.
    let mut kill = CancellationToken::new();
    let config = Arc::new(config.clone());
    let mut draining = runtime.watch_draining();
    'outer: while !shutdown.is_cancelled() {
        let Some(mut consumer) = find_consumer(&config, &js, &runtime, &shutdown).await else {
            break;
        };
        let mut fitted = tokio::time::Instant::now();
        loop {
            // The planner may restart with another ack wait: follow it.
            if fitted.elapsed() > REFIT_EVERY {
                fitted = tokio::time::Instant::now();
                // A request to a gone broker waits out its timeout: stop rather than wait.
                match shutdown.run_until_cancelled(consumer.info()).await {
                    Some(Ok(info)) => runtime.fit_progress_to(&config, info.config.ack_wait),
                    Some(Err(_)) => {}
                    None => break 'outer,
                }
            }
            let paused = *draining.borrow_and_update();
            if paused {
                if !pause(&config, &mut draining, &tracker, &mut kill, &shutdown).await {
                    break 'outer;
                }
                continue;
            }
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => break 'outer,
                _ = draining.changed() => continue,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break 'outer },
            };
            let mut permits = vec![first];
            while let Ok(p) = slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            let pull_ends = tokio::time::Instant::now() + PULL_EXPIRES + HAND_BACK_MARGIN;
            let batch = consumer
                .batch()
                .max_messages(permits.len())
                .expires(PULL_EXPIRES)
                .messages();
            // Sending the request waits when a long disconnect filled the client's queue.
            let Some(batch) = shutdown.run_until_cancelled(batch).await else {
                break 'outer;
            };
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
                    biased;
                    () = shutdown.cancelled() => {
                        hand_back(&mut batch, pull_ends).await;
                        break 'outer;
                    }
                    true = async { draining.wait_for(|d| *d).await.is_ok() } => {
                        hand_back(&mut batch, pull_ends).await;
                        break;
                    }
                    m = batch.next() => m,
                };
                match next {
                    None => break,
                    Some(Ok(msg)) => {
                        let Some(permit) = permits.pop() else {
                            // More than asked for: hand it back at once.
                            let _ = msg.ack_with(AckKind::Nak(None)).await;
                            continue;
                        };
                        let slot = (permit, Busy::new(&running));
                        tracker.spawn(handle(
                            msg,
                            config.clone(),
                            reporter.clone(),
                            runtime.clone(),
                            slot,
                            kill.clone(),
                        ));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, pool = %config.pool, "pull interrupted; checking the queue again");
                        drop(permits);
                        sleep_or_shutdown(Duration::from_millis(500), &shutdown).await;
                        continue 'outer;
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
        // Stopped tasks hand their messages back; with the broker gone that can wait
        // forever, and the broker redelivers what is not handed back anyway.
        if tokio::time::timeout(HAND_BACK_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = tracker.len(),
                "stopped tasks could not hand their messages back (is the broker reachable?); the broker gives them to another worker after their ack wait"
            );
        }
    }
}

/// A maintenance drain: pulls nothing until resumed; running tasks finish, and those still
/// running at the drain deadline are stopped and handed back. Returns `false` at shutdown.
async fn pause(
    config: &WorkerConfig,
    draining: &mut tokio::sync::watch::Receiver<bool>,
    tracker: &TaskTracker,
    kill: &mut CancellationToken,
    shutdown: &CancellationToken,
) -> bool {
    tracing::info!(pool = %config.pool, running = tracker.len(), "draining: taking no new tasks until resumed");
    let deadline = tokio::time::sleep(config.drain_timeout);
    tokio::pin!(deadline);
    let mut deadline_passed = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return false,
            changed = draining.changed() => {
                if changed.is_err() {
                    return false;
                }
                let still = *draining.borrow_and_update();
                if !still {
                    tracing::info!(pool = %config.pool, "resumed: taking tasks again");
                    return true;
                }
            }
            () = &mut deadline, if !deadline_passed => {
                deadline_passed = true;
                if !tracker.is_empty() {
                    tracing::warn!(
                        drain_timeout_s = config.drain_timeout.as_secs(),
                        running = tracker.len(),
                        "running tasks did not finish before the drain deadline; stopping them and handing them back"
                    );
                    kill.cancel();
                    *kill = CancellationToken::new();
                }
            }
        }
    }
}

/// When the worker stops pulling (shutdown, drain), the current pull request must end while
/// the worker is still subscribed to it. A hub that takes leaf nodes delivers into a pull
/// request for two seconds after it was made even once its client is gone, and redelivers
/// each lost message into it at once: a dropped request of `n` messages uses up to `n` of a
/// task's deliveries within milliseconds, and three fail its attempt (nats-server 2.9.10,
/// measured; docs/ARCHITECTURE.md). So this stays until the request is over (the broker
/// ends it at its expiry) and hands back what still arrives, delayed past the request's
/// end so the broker does not give it to the same request again.
async fn hand_back(batch: &mut jetstream::consumer::pull::Batch, until: tokio::time::Instant) {
    let delay = until.saturating_duration_since(tokio::time::Instant::now());
    let drain = async {
        while let Some(Ok(msg)) = batch.next().await {
            let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
        }
    };
    // Bounded as a whole: a hand-back stuck behind a full send queue waits no longer.
    let _ = tokio::time::timeout_at(until, drain).await;
}

/// Looks up the pool's queue consumer until found (ready) or shutdown. While it cannot, the
/// worker is not ready and says why (see [`not_ready`]).
async fn find_consumer(
    config: &WorkerConfig,
    js: &jetstream::Context,
    runtime: &Runtime,
    shutdown: &CancellationToken,
) -> Option<PullConsumer> {
    let stream_name = config.subjects.tasks_stream();
    let consumer_name = config.subjects.pool_consumer(&config.pool);
    loop {
        if shutdown.is_cancelled() {
            return None;
        }
        let lookup = shoal_runtime::nats::pull_consumer(js, &stream_name, &consumer_name);
        let found = shutdown.run_until_cancelled(lookup).await?;
        match found {
            Ok(c) => {
                let ack_wait = c.cached_info().config.ack_wait;
                runtime.fit_progress_to(config, ack_wait);
                let was_not_ready = runtime.readiness().ready();
                tracing::info!(
                    pool = %config.pool,
                    ack_wait_ms = ack_wait.as_millis(),
                    progress_ms = runtime.progress_interval().as_millis(),
                    "pulling from the pool's queue{}",
                    if was_not_ready { "; the worker is ready now" } else { "" }
                );
                return Some(c);
            }
            Err(e) => {
                not_ready(config, js, runtime, &e);
                sleep_or_shutdown(Duration::from_secs(1), shutdown).await;
            }
        }
    }
}

/// Records why the pool's queue consumer cannot be seen, for heartbeats, and logs it when
/// the reason changes and as a reminder every [`crate::readiness::REMIND_EVERY`].
fn not_ready(
    config: &WorkerConfig,
    js: &jetstream::Context,
    runtime: &Runtime,
    error: &shoal_runtime::nats::ConsumerLookupError,
) {
    let at = crate::readiness::Where {
        pool: config.pool.clone(),
        stream: config.subjects.tasks_stream(),
        js_domain: config.js_domain.clone(),
        server_has_jetstream: js.client().server_info().jetstream,
    };
    let reason = crate::readiness::reason(&crate::readiness::Blocked::of(error), &at);
    if runtime
        .readiness()
        .not_ready(reason.clone(), std::time::Instant::now())
    {
        tracing::warn!(pool = %config.pool, broker_error = %error, "not ready: {reason}; retrying");
    }
}

async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = shutdown.cancelled() => {}
    }
}

/// Decodes a task message, verifies that the planner signed it for this pool, task and
/// attempt (before anything about the task is reported: a forgery must not make this worker
/// speak about a real task), and checks it is for this worker's pool and a schema it reads.
/// A refused message can never be run here: it is terminated and reported, never
/// redelivered forever.
fn accept(msg: &jetstream::Message, config: &WorkerConfig) -> Result<TaskMessage, Refusal> {
    let expected_subject = config.subjects.tasks(&config.pool);
    if msg.subject.as_str() != expected_subject {
        return Err(Refusal::Unreadable(format!(
            "arrived on \"{}\", not this pool's task subject \"{expected_subject}\"",
            msg.subject
        )));
    }
    let task: TaskMessage = codec::decode("task message", &msg.payload)
        .map_err(|e| Refusal::Unreadable(e.to_string()))?;
    let binding = Binding {
        kind: Kind::Task,
        pool: config.pool.clone(),
        id: task.task.to_string(),
        attempt: Some(task.attempt),
    };
    match config
        .trust
        .verify(msg.headers.as_ref(), &binding, &msg.payload)
    {
        Ok(()) => {}
        Err(why) if why.is_authentic() => {
            let reason = format!("task {} not run: {why}", task.task);
            return Err(Refusal::Unrunnable(Box::new(task), reason));
        }
        Err(why) => {
            return Err(Refusal::Unreadable(format!(
                "task {} attempt {} refused, not run: {why}",
                task.task, task.attempt
            )));
        }
    }
    if task.schema_version > WIRE_SCHEMA_VERSION {
        let reason = format!(
            "task {} has unknown schema version {} (this worker reads up to {WIRE_SCHEMA_VERSION}); upgrade the workers of pool \"{}\"",
            task.task, task.schema_version, config.pool
        );
        return Err(Refusal::Unrunnable(Box::new(task), reason));
    }
    if task.pool != config.pool {
        let reason = format!(
            "task {} is for pool \"{}\" but this worker serves \"{}\"",
            task.task, task.pool, config.pool
        );
        return Err(Refusal::Unrunnable(Box::new(task), reason));
    }
    Ok(task)
}

/// Why a task message is not run.
enum Refusal {
    /// Not a task message at all, or not one the planner signed for this pool.
    Unreadable(String),
    /// A task, but not one this worker can run: it ends failed, so it does not hang.
    Unrunnable(Box<TaskMessage>, String),
}

/// Runs one task message: keep it alive from the start, report started, run, report
/// finished, and acknowledge only once the result is stored.
async fn handle(
    msg: jetstream::Message,
    config: Arc<WorkerConfig>,
    reporter: Reporter,
    runtime: Runtime,
    _slot: (OwnedSemaphorePermit, Busy),
    kill: CancellationToken,
) {
    let is_check = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(KIND_HEADER))
        .is_some_and(|v| v.as_str() == KIND_HEALTH_CHECK);
    if is_check {
        return check(msg, &config, &reporter, &runtime).await;
    }
    let task = match accept(&msg, &config) {
        Ok(task) => task,
        Err(Refusal::Unreadable(reason)) => return reject(&msg, &reporter, reason).await,
        Err(Refusal::Unrunnable(task, reason)) => {
            let delivery = delivery_of(&msg);
            tracing::error!(subject = %msg.subject, reason = %reason, "refusing a task this worker cannot run");
            reporter
                .send(WorkerBody::Rejected {
                    subject: msg.subject.to_string(),
                    reason: reason.clone(),
                    head: msg.payload[..msg.payload.len().min(256)].to_vec(),
                    size: msg.payload.len() as u64,
                })
                .await;
            end_unrun(&msg, &task, delivery, &reporter, Outcome::Failed, reason).await;
            return;
        }
    };
    let delivery = delivery_of(&msg);
    let span = tracing::info_span!("task", task.id = %task.task, attempt = task.attempt, delivery, step = %task.step_name);
    // The deployment's trace, from the planner's publish: pull covers the checks, run the run.
    let traced = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(TRACEPARENT))
        .map(|v| v.as_str().to_owned());
    let pull = child_span("pull", traced.as_deref());
    let run = child_span("run", traceparent(&pull).as_deref());
    async {
        if task.max_deliveries > 0 && delivery > task.max_deliveries {
            let reason = format!(
                "not run again: this attempt was delivered {} times and no run ended with a result (the workers died, were killed, lost their connection, or handed it back at a drain deadline); the step allows {} (max_attempts)",
                delivery - 1,
                task.max_deliveries
            );
            tracing::warn!(reason = %reason, "giving up on the task");
            end_unrun(&msg, &task, delivery, &reporter, Outcome::Failed, reason).await;
            return;
        }
        if !runtime.first_start(task.task, task.attempt) && delivery == 1 {
            let reason = format!(
                "task {} attempt {} refused, not run: replayed (a second copy of an attempt this worker already started)",
                task.task, task.attempt
            );
            return reject(&msg, &reporter, reason).await;
        }
        let run_id = (task.task, task.attempt, delivery);
        let Some(cancel) = runtime.start(run_id) else {
            tracing::info!("not starting a task the planner cancelled");
            let reason = "cancelled before it started".to_owned();
            end_unrun(&msg, &task, delivery, &reporter, Outcome::Cancelled, reason).await;
            return;
        };
        let stops = execute::Stops { kill, cancel };
        run_task(msg, task, delivery, config, reporter, &runtime, stops)
            .instrument(run)
            .await;
        runtime.finish(run_id);
    }
    // Inside `pull`, so that a report sent before the run (not run: cancelled, replayed, too
    // many deliveries) joins the trace too.
    .instrument(pull)
    .instrument(span)
    .await;
}

/// How many times the broker has delivered the message (1 the first time).
fn delivery_of(msg: &jetstream::Message) -> u32 {
    msg.info()
        .map_or(1, |i| u32::try_from(i.delivered).unwrap_or(u32::MAX))
}

/// Terminates a message that can never run here and reports why.
async fn reject(msg: &jetstream::Message, reporter: &Reporter, reason: String) {
    tracing::error!(subject = %msg.subject, reason = %reason, "rejecting a message of the pool's queue");
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
}

/// Runs a health check of a target and reports what it found. A check whose deadline has
/// passed is dropped: the planner has called the target unavailable and plans a new one.
async fn check(
    msg: jetstream::Message,
    config: &WorkerConfig,
    reporter: &Reporter,
    runtime: &Runtime,
) {
    let check: CheckMessage = match codec::decode("health check message", &msg.payload) {
        Ok(c) => c,
        Err(e) => return reject(&msg, reporter, e.to_string()).await,
    };
    let binding = Binding {
        kind: Kind::HealthCheck,
        pool: config.pool.clone(),
        id: check.check.to_string(),
        attempt: None,
    };
    let expected_subject = config.subjects.tasks(&config.pool);
    let verified = if msg.subject.as_str() == expected_subject {
        config
            .trust
            .verify(msg.headers.as_ref(), &binding, &msg.payload)
            .map_err(|why| why.to_string())
    } else {
        Err(format!(
            "arrived on \"{}\", not \"{expected_subject}\"",
            msg.subject
        ))
    };
    if let Err(why) = verified {
        let reason = format!("health check {} refused, not run: {why}", check.check);
        return reject(&msg, reporter, reason).await;
    }
    if check.schema_version > WIRE_SCHEMA_VERSION || check.pool != config.pool {
        let reason = format!(
            "health check {} (schema version {}, pool \"{}\") cannot run on this worker (schema version {WIRE_SCHEMA_VERSION}, pool \"{}\")",
            check.check, check.schema_version, check.pool, config.pool
        );
        return reject(&msg, reporter, reason).await;
    }
    let finish_by = Timestamp::now().plus_millis(check.probe.timeout_secs().saturating_mul(1000));
    if finish_by > check.deadline_at {
        tracing::info!(check.id = %check.check, target = %check.target, "dropping a health check that cannot end before its deadline");
        acknowledge(&msg, check.check.0).await;
        return;
    }
    let _keepalive = keepalive(&msg, runtime.progress_interval());
    let found = execute::probe::run(
        &check.probe,
        check.target.as_str(),
        check.endpoint.as_deref(),
        config,
    )
    .await;
    tracing::info!(check.id = %check.check, target = %check.target, state = ?found.state, duration_ms = found.duration_ms, "target checked");
    let stored = reporter
        .send(WorkerBody::HealthChecked {
            check: check.check,
            target: check.target.clone(),
            task: None,
            state: found.state,
            reason: found.reason,
            duration_ms: found.duration_ms,
        })
        .await;
    if stored {
        acknowledge(&msg, check.check.0).await;
    } else {
        let _ = msg.ack_with(AckKind::Nak(None)).await;
    }
}

/// Keeps a held message alive with progress acks until dropped.
fn keepalive(msg: &jetstream::Message, every: Duration) -> AbortOnDropHandle<()> {
    let msg = msg.clone();
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = msg.ack_with(AckKind::Progress).await {
                tracing::debug!(error = %e, "progress ack not sent");
            }
        }
    }))
}

/// Reports the end of an attempt this worker did not run, and takes it off the queue.
async fn end_unrun(
    msg: &jetstream::Message,
    task: &TaskMessage,
    delivery: u32,
    reporter: &Reporter,
    outcome: Outcome,
    reason: String,
) {
    let stored = reporter
        .send(WorkerBody::TaskFinished {
            deployment: task.deployment,
            task: task.task,
            attempt: task.attempt,
            delivery,
            outcome,
            exit_code: None,
            reason: Some(reason),
        })
        .await;
    if stored {
        acknowledge(msg, task.task.0).await;
    } else {
        let _ = msg.ack_with(AckKind::Nak(None)).await;
    }
}

/// Runs an accepted task to its end (see [`handle`]).
async fn run_task(
    msg: jetstream::Message,
    task: TaskMessage,
    delivery: u32,
    config: Arc<WorkerConfig>,
    reporter: Reporter,
    runtime: &Runtime,
    stops: execute::Stops,
) {
    // The message stays alive for as long as this worker holds it, reports included; the
    // keepalive ends with this function, however it ends.
    let _keepalive = keepalive(&msg, runtime.progress_interval());
    let (deployment, task_id, attempt) = (task.deployment, task.task, task.attempt);
    let started = reporter
        .send(WorkerBody::TaskStarted {
            deployment,
            task: task_id,
            attempt,
            delivery,
        })
        .await;
    let result = if started {
        Some(execute::run(&task, delivery, &config, &reporter, &stops).await)
    } else {
        None
    };
    let stored = match result {
        Some(r) if !r.interrupted => {
            reporter
                .send(WorkerBody::TaskFinished {
                    deployment,
                    task: task_id,
                    attempt,
                    delivery,
                    outcome: r.outcome,
                    exit_code: r.exit_code,
                    reason: r.reason,
                })
                .await
        }
        _ => false,
    };
    if stored {
        acknowledge(&msg, task_id.0).await;
    } else {
        let _ = msg.ack_with(AckKind::Nak(None)).await;
    }
}

/// Acknowledges with confirmation, retrying a few times: a lost ack means the task runs again.
async fn acknowledge(msg: &jetstream::Message, task: uuid::Uuid) {
    let mut delay = Duration::from_millis(100);
    for _ in 0..5 {
        match msg.double_ack().await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, task.id = %task, "task acknowledgement not confirmed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    tracing::error!(task.id = %task, "task acknowledgement never confirmed; the broker may deliver it again (its result is stored, a second run is recorded but not counted)");
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
