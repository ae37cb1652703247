//! shoal-planner: accepts deployments, decides which pool runs every task, dispatches them
//! through JetStream, ingests what workers report, and records every fact in a sled event
//! log from which all state is derived.
//!
//! Layout, in the order data flows: `api` (HTTP) → `log::writer` (the single writer, using the
//! pure `domain`) → `dispatch` (outbox → `shoal.tasks.<pool>`) → workers → `ingest` (results
//! and heartbeats) → `log::writer`. `broker` sets up JetStream; `replay` rebuilds and
//! verifies projections offline.
#![forbid(unsafe_code)]

pub mod api;
pub mod broker;
pub mod dispatch;
pub mod domain;
pub mod effects;
pub mod health;
pub mod ingest;
pub mod liveness;
pub mod log;
pub mod replay;

use crate::domain::Command;
use crate::domain::state::WorkerDoc;
use crate::log::handover;
use crate::log::writer::{Writer, WriterFailed};
use crate::log::{EventLog, Proj};
use anyhow::Context as _;
use sha2::Digest as _;
use shoal_shared::subjects::Subjects;
use shoal_shared::{PoolName, WorkerName};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Task messages the writer hands to the dispatcher that may wait in the channel; beyond
/// that the dispatcher pages them from the outbox. As many as it keeps in flight.
const TASK_MESSAGES: usize = 4096;
/// Batches of effects that may wait for the effects runner; beyond that they are derived
/// from the state again once it catches up.
const EFFECT_BATCHES: usize = 1024;

/// How a planner runs.
#[derive(Debug, Clone)]
pub struct PlannerConfig {
    pub nats_url: String,
    pub data_dir: PathBuf,
    pub default_pool: PoolName,
    /// Run a worker of the default pool inside the planner.
    pub builtin_worker: bool,
    pub builtin_slots: u32,
    pub subjects: Subjects,
    /// How long a task message may go without a progress ack before redelivery.
    pub task_ack_wait: Duration,
    /// Default time between scheduled health checks of a target; zero: none scheduled.
    pub health_interval: Duration,
    /// How long a check may wait for a worker of its pool (plus its probe's timeout) before
    /// the target is `unavailable`.
    pub health_deadline: Duration,
}

/// Runs the planner until `shutdown` is cancelled, serving HTTP on `listener`.
///
/// # Errors
/// The data dir cannot be opened, the log is inconsistent, or the broker refuses the set-up.
pub async fn run(
    config: PlannerConfig,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let log = EventLog::open(&config.data_dir.join("log"))
        .with_context(|| format!("cannot open the event log in {}", config.data_dir.display()))?;
    let client = shoal_worker::nats::connect(&config.nats_url, "shoal-planner", None).await?;
    let js = async_nats::jetstream::new(client.clone());
    ensure_broker(&js, &config.subjects, &shutdown).await?;

    // Bounded both: what does not fit the writer finds again in its state (`log::handover`).
    let (dispatch_tx, dispatch_rx) = handover::task_channel(TASK_MESSAGES);
    let (effects_tx, effects_rx) = tokio::sync::mpsc::channel(EFFECT_BATCHES);
    let mut writer = Writer::open(
        log.clone(),
        config.default_pool.clone(),
        dispatch_tx,
        effects_tx.clone(),
    )?;
    let backlog = writer.republish_outbox();
    // The channel is empty, so the first batch fits.
    let _ = effects_tx.try_send(writer.pending_effects());
    drop(effects_tx);
    let (handle, writer_task) = writer
        .spawn(4096)
        .context("cannot start the event log writer's thread")?;
    handle.execute(Command::EnsureDefaultPool).await?;
    let stop_services = CancellationToken::new();
    if backlog > 0 {
        tracing::info!(
            tasks = backlog,
            "re-publishing task attempts planned before the last stop"
        );
    }

    let liveness = liveness::Liveness::default();
    for w in log.docs::<WorkerDoc>(Proj::Workers)? {
        if w.draining {
            liveness.want_draining(&w.name, true);
        }
    }
    let tasks = TaskTracker::new();
    tasks.spawn(effects::answer_drain_state(
        client.clone(),
        config.subjects.clone(),
        liveness.clone(),
        stop_services.clone(),
    ));
    let runner = effects::Runner {
        client: client.clone(),
        js: js.clone(),
        subjects: config.subjects.clone(),
        writer: handle.clone(),
        liveness: liveness.clone(),
        task_ack_wait: config.task_ack_wait,
        health: health::Schedule::new(config.health_interval, config.health_deadline),
    };
    tasks.spawn(effects::run(runner, effects_rx, stop_services.clone()));
    tasks.spawn(dispatch::run(
        js.clone(),
        config.subjects.clone(),
        handle.clone(),
        dispatch_rx,
        stop_services.clone(),
    ));
    tasks.spawn(ingest::results(
        js.clone(),
        config.subjects.clone(),
        handle.clone(),
        stop_services.clone(),
    ));
    tasks.spawn(ingest::heartbeats(
        client.clone(),
        config.subjects.clone(),
        liveness.clone(),
        handle.clone(),
        stop_services.clone(),
    ));

    let worker_stop = CancellationToken::new();
    let builtin = if config.builtin_worker {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        // Stable across restarts (one planner per data dir), so a restart does not leave the
        // previous incarnation listed as an offline worker.
        let dir =
            std::fs::canonicalize(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
        let digest = sha2::Sha256::digest(dir.display().to_string().as_bytes());
        let suffix: String = digest.iter().take(3).map(|b| format!("{b:02x}")).collect();
        let name = WorkerName::from_host(&format!("builtin-{host}"), &suffix);
        let mut wc = shoal_worker::WorkerConfig::new(
            name.clone(),
            config.default_pool.clone(),
            config.data_dir.join("builtin-worker"),
        );
        wc.slots = config.builtin_slots;
        wc.subjects = config.subjects.clone();
        let wclient = shoal_worker::nats::connect(
            &config.nats_url,
            name.as_str(),
            Some(config.subjects.pool_inbox_prefix(&config.default_pool)),
        )
        .await?;
        tracing::info!(worker = %name, pool = %config.default_pool, "starting the built-in worker");
        Some(tokio::spawn(shoal_worker::run(
            wc,
            wclient,
            worker_stop.clone(),
        )))
    } else {
        tracing::info!(pool = %config.default_pool, "built-in worker disabled; default-pool tasks wait for an external worker");
        None
    };

    let app = api::AppState {
        writer: handle.clone(),
        log: log.clone(),
        liveness,
        default_pool: config.default_pool.clone(),
        subjects: config.subjects.clone(),
        health_deadline_secs: config.health_deadline.as_secs(),
        shutdown: stop_services.clone(),
    };
    drop(handle);
    tracing::info!(addr = %listener.local_addr()?, data_dir = %config.data_dir.display(), "planner ready");
    let server = axum::serve(listener, api::router(app))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let mut writer_task = writer_task;
    tokio::select! {
        served = server => served.context("HTTP server failed")?,
        // The writer only ends early when the log failed: stop rather than serve stale state.
        ended = &mut writer_task => {
            shutdown.cancel();
            worker_stop.cancel();
            stop_services.cancel();
            match ended {
                Err(WriterFailed::Log(e)) => anyhow::bail!("event log writer failed: {e}"),
                Err(e) => anyhow::bail!("{e}"),
                Ok(()) => anyhow::bail!("event log writer stopped unexpectedly"),
            }
        }
    }

    // Shutdown: stop taking work, let the built-in worker finish, stop ingesting, then let the
    // writer flush and end, and drain the connection.
    tracing::info!("planner shutting down");
    worker_stop.cancel();
    if let Some(w) = builtin {
        let _ = w.await;
    }
    stop_services.cancel();
    tasks.close();
    tasks.wait().await;
    match writer_task.await {
        Ok(()) => {}
        Err(WriterFailed::Log(e)) => tracing::error!(error = %e, "event log writer failed"),
        Err(e) => tracing::error!(error = %e, "event log writer ended"),
    }
    log.flush().await?;
    let _ = client.drain().await;
    tracing::info!("planner stopped");
    Ok(())
}

async fn ensure_broker(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut warned = false;
    loop {
        match broker::ensure_streams(js, subjects).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "JetStream not ready (is nats-server running with -js?); retrying");
                    warned = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => anyhow::bail!("stopped before JetStream was ready: {e}"),
                }
            }
        }
    }
}
