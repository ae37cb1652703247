//! Scenario 5: the event log. Appends go through the planner's real writer (group commit,
//! one sled transaction and one flush per batch, answers only after the flush) with the event
//! mix of real tasks — deployments of 1,000 no-op tasks, and for every task the dispatch
//! confirmation and the worker's started and finished reports, as the dispatcher and ingestion
//! submit them, but without the broker. Then the log is replayed (hash chain verified, every
//! projection rebuilt and compared byte for byte), and a real `shoal-planner` process is
//! started on it to read its resident memory.

use crate::stats::{per_second, us_to_ms};
use crate::system::{Layout, Shoal, over_targets};
use anyhow::{Context as _, ensure};
use serde::Serialize;
use serde_json::json;
use shoal_planner::domain::Command;
use shoal_planner::log::EventLog;
use shoal_planner::log::handover::task_channel;
use shoal_planner::log::writer::Writer;
use shoal_shared::messages::{WIRE_SCHEMA_VERSION, WorkerBody, WorkerMessage};
use shoal_shared::{
    DeploymentId, DeploymentSpec, EnvironmentName, EventId, Outcome as TaskOutcome, PoolName,
    RoleName, Target, TargetKind, TargetName, Timestamp, WorkerName,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// Parameters of the event-log run.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub events: u64,
    pub tasks: usize,
    pub tasks_per_deployment: usize,
}

/// What it measured.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub params: Params,
    pub append_events_per_s: f64,
    pub append_seconds: f64,
    pub replay_events_per_s: f64,
    pub replay_seconds: f64,
    /// Reading the log alone: every record read, its hash chained, its event decoded and
    /// applied to an in-memory state (no projection written or compared).
    pub fold_events_per_s: f64,
    pub planner_rss_mib: Option<f64>,
    pub log_disk_mib: f64,
}

const TARGETS: usize = 1000;
/// Events of one task: planned, dispatched, started, finished.
const EVENTS_PER_TASK: usize = 4;

/// Appends about `events` events, replays them, and measures a planner started on them.
///
/// # Errors
/// The log failed, replay found a difference, or the planner did not come up.
pub async fn run(events: u64) -> anyhow::Result<Outcome> {
    let dir = tempfile::Builder::new().prefix("shoal-bench-").tempdir()?;
    let log_dir = dir.path().join("planner-data").join("log");
    let log = EventLog::open(&log_dir)?;
    let default_pool = PoolName::parse("default")?;
    // As the planner sizes it.
    let (dispatch_tx, mut dispatch_rx) = task_channel(4096);
    // Effects (retries, cancellations, health checks) do not occur in this workload.
    let (effects_tx, _effects_rx) = mpsc::channel(1024);
    let writer = Writer::open(log.clone(), default_pool.clone(), dispatch_tx, effects_tx)?;
    let (handle, writer_task) = writer.spawn(4096)?;
    handle.execute(Command::EnsureDefaultPool).await?;
    let mut registered = Vec::with_capacity(TARGETS);
    for j in 0..TARGETS {
        registered.push(
            handle
                .submit(Command::RegisterTarget(Target {
                    name: TargetName::parse(format!("t{j}"))?,
                    kind: TargetKind::CloudRegion,
                    environment: EnvironmentName::parse("bench")?,
                    roles: vec![RoleName::parse("bench")?],
                    endpoint: None,
                    default_pool: None,
                    health_check: None,
                    health_interval_secs: None,
                }))
                .await?,
        );
    }
    for r in registered {
        r.await.context("writer stopped")??;
    }

    let per_deployment = EVENTS_PER_TASK * TARGETS + 5;
    let deployments = usize::try_from(events)?.div_ceil(per_deployment).max(1);
    let tasks = deployments * TARGETS;
    let done = Arc::new(AtomicUsize::new(0));
    // Stand-ins for the dispatcher and a worker: every planned attempt is confirmed, started
    // and finished; the answers are awaited in order, as ingestion does.
    let (answers_tx, mut answers_rx) = mpsc::channel(16 * 1024);
    let driver = {
        let handle = handle.clone();
        let worker = WorkerName::parse("bench-worker")?;
        tokio::spawn(async move {
            while let Some(task) = dispatch_rx.recv(&handle).await {
                let report = |body| {
                    Command::WorkerReport(WorkerMessage {
                        trace_parent: None,
                        schema_version: WIRE_SCHEMA_VERSION,
                        event_id: EventId::new(),
                        worker: worker.clone(),
                        pool: task.pool.clone(),
                        sent_at: Timestamp::now(),
                        body,
                    })
                };
                let cmds = [
                    Command::MarkDispatched {
                        deployment: task.deployment,
                        task: task.task,
                        attempt: task.attempt,
                        stream_seq: None,
                    },
                    report(WorkerBody::TaskStarted {
                        deployment: task.deployment,
                        task: task.task,
                        attempt: task.attempt,
                        delivery: 1,
                    }),
                    report(WorkerBody::TaskFinished {
                        deployment: task.deployment,
                        task: task.task,
                        attempt: task.attempt,
                        delivery: 1,
                        outcome: TaskOutcome::Succeeded,
                        exit_code: Some(0),
                        reason: None,
                    }),
                ];
                for cmd in cmds {
                    let Ok(rx) = handle.submit(cmd).await else {
                        return;
                    };
                    if answers_tx.send(rx).await.is_err() {
                        return;
                    }
                }
            }
        })
    };
    let awaiter = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut answers = 0usize;
            while let Some(rx) = answers_rx.recv().await {
                if !matches!(rx.await, Ok(Ok(_))) {
                    return;
                }
                answers += 1;
                if answers.is_multiple_of(3) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let spec: DeploymentSpec = serde_json::from_value(over_targets(&json!({"type": "noop"})))?;
    let seq0 = log.head()?.seq;
    let start = Timestamp::now_micros();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    for d in 0..deployments {
        // Two deployments in progress at a time, as a steady stream of work would keep it.
        while done.load(Ordering::Relaxed) < d.saturating_sub(1) * TARGETS {
            ensure!(tokio::time::Instant::now() < deadline, "appending stalled");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        handle
            .execute(Command::CreateDeployment {
                id: DeploymentId::new(),
                spec: spec.clone(),
            })
            .await?;
    }
    while done.load(Ordering::Relaxed) < tasks {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "appending stalled at {} of {tasks} tasks",
            done.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let end = Timestamp::now_micros();
    let appended = log.head()?.seq - seq0;
    driver.abort();
    awaiter.abort();
    drop(handle);
    writer_task.await.context("writer task")?;

    let replay_log = log.clone();
    let replay_start = Timestamp::now_micros();
    let report =
        tokio::task::spawn_blocking(move || shoal_planner::replay::replay(&replay_log, false))
            .await??;
    let replay_end = Timestamp::now_micros();
    ensure!(
        report.tasks == tasks,
        "replay rebuilt {} of {tasks} tasks",
        report.tasks
    );
    let fold_log = log.clone();
    let fold_start = Timestamp::now_micros();
    let folded = tokio::task::spawn_blocking(move || fold(&fold_log)).await??;
    let fold_end = Timestamp::now_micros();
    log.flush().await?;
    drop(log);
    let disk = dir_size(&log_dir);

    // A real planner process on this log: the memory it needs to serve it.
    let shoal = Shoal::start_in(
        dir,
        Layout {
            pools: 0,
            workers: 0,
            slots: 1,
            signing: true,
            feed: true,
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = shoal.planner_rss_mib();
    let facts = shoal.stop().await?;
    ensure!(
        facts.succeeded() == tasks,
        "{} of {tasks} tasks finished in the log",
        facts.succeeded()
    );
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    let log_disk_mib = crate::stats::round(disk as f64 / 1024.0 / 1024.0);
    Ok(Outcome {
        params: Params {
            events: report.events,
            tasks,
            tasks_per_deployment: TARGETS,
        },
        append_events_per_s: per_second(appended, end - start),
        append_seconds: us_to_ms(end - start) / 1000.0,
        replay_events_per_s: per_second(report.events, replay_end - replay_start),
        replay_seconds: us_to_ms(replay_end - replay_start) / 1000.0,
        fold_events_per_s: per_second(folded, fold_end - fold_start),
        planner_rss_mib: rss,
        log_disk_mib,
    })
}

/// Reads every record, checks the hash chain and applies each event to a fresh state.
fn fold(log: &EventLog) -> anyhow::Result<u64> {
    let mut state = shoal_planner::domain::State::default();
    let mut hash = [0u8; 32];
    let mut n = 0;
    for record in log.records() {
        let (bytes, env) = record?;
        ensure!(env.prev_hash == hash, "hash chain broken at {}", env.seq);
        let event = shoal_planner::log::decode_event(&env)?;
        state.apply(&env, &event, &mut shoal_planner::domain::Changes::default());
        hash = shoal_planner::log::record_hash(&bytes);
        n += 1;
    }
    Ok(n)
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
