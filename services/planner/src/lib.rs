//! shoal-planner: accepts deployments, decides which pool runs every task, dispatches them
//! through JetStream, ingests what workers report, and records every fact in a sled event
//! log from which all state is derived.
//!
//! Layout, in the order data flows: `api` (HTTP) → `log::writer` (the single writer, using the
//! pure `domain`) → `dispatch` (outbox → `shoal.tasks.<pool>`) → workers → `ingest` (results
//! and heartbeats) → `log::writer`. `broker` sets up JetStream; `replay` rebuilds and
//! verifies projections offline. This file is the composition root: [`Planner::build`] sets
//! the parts up, [`Planner::run`] runs them until stopped and shuts them down in order.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod broker;
pub mod commands;
pub mod dashboard;
pub mod dispatch;
pub mod domain;
pub mod effects;
pub mod event_feed;
pub mod health;
pub mod ingest;
pub mod liveness;
pub mod log;
pub mod metrics;
pub mod packages;
pub mod presence;
pub mod rejections;
pub mod replay;
pub mod secrets;
pub mod signing;
pub mod starting;
pub mod webhooks;

use crate::domain::Command;
use crate::domain::effects::Effect;
use crate::domain::state::WorkerDoc;
use crate::liveness::Liveness;
use crate::log::handover::{self, TaskReceiver};
use crate::log::writer::{Writer, WriterFailed, WriterHandle, WriterTask};
use crate::log::{EventLog, Proj};
use anyhow::Context as _;
use sha2::Digest as _;
use shoal_shared::signed::TrustedKeys;
use shoal_shared::subjects::{BUILTIN_WORKER_NAME, Subjects};
use shoal_shared::{PoolName, WorkerName};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Task messages the writer hands to the dispatcher that may wait in the channel; beyond
/// that the dispatcher pages them from the outbox. As many as it keeps in flight.
const TASK_MESSAGES: usize = 4096;
/// Batches of effects that may wait for the effects runner; beyond that they are derived
/// from the state again once it catches up.
const EFFECT_BATCHES: usize = 1024;

/// How long a stopping planner waits for HTTP answers under way (event streams end at once).
const SERVE_GRACE: Duration = Duration::from_secs(10);

/// How long a stopping planner waits for its NATS connection to drain.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

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
    /// The master key file that seals sensitive variables; `None`:
    /// `<data_dir>/keys/master.key` (made at first start).
    pub master_key: Option<PathBuf>,
    /// The planner's NATS credentials and TLS settings.
    pub nats_auth: shoal_runtime::nats_auth::NatsAuth,
    /// The built-in worker's own nkey seed: it then connects as its own identity (named
    /// [`BUILTIN_WORKER_NAME`]), not as the planner's.
    pub builtin_worker_nkey: Option<PathBuf>,
    /// Signs every message workers act on (tasks, checks, cancellations, instructions).
    pub signer: signing::Signer,
    /// Versions of each package the feed keeps, newest first, besides those an unfinished
    /// deployment deploys; 0: every one.
    pub package_retention: u32,
    /// How long, and up to what size, the event feed's stream keeps events.
    pub events: broker::EventsRetention,
    /// How often the planner signs its log's head (when it moved).
    pub audit_sign_interval: std::time::Duration,
    /// Publish the log to the event feed (`SHOAL_EVENTS`).
    pub event_feed: bool,
    /// How webhook deliveries are retried before a webhook is paused.
    pub webhook_retry: webhooks::RetryPolicy,
    /// How many servers keep each stream (`auto`: 1 on a single server, 3 on a cluster).
    pub stream_replicas: broker::StreamReplicas,
}

/// A planner that is set up but not yet serving: its log is open and the writer runs on it,
/// the broker's streams exist, and the outbox is queued for the dispatcher. [`Planner::run`]
/// starts the services and serves HTTP until the planner is stopped.
///
/// Its cancellation tokens form one tree, so that a failed log stops everything with one
/// call while an orderly stop goes phase by phase:
///
/// ```text
/// stop          the planner's root: cancelled at once when the writer failed
/// ├── services  ingestion, dispatch, effects, health checks, pool-consumer retries;
/// │             cancelled (third) once the built-in worker is done
/// └── intake    taking work: cancelled (second) once the API has stopped
///     ├── http    the API: cancelled (first) by the `shutdown` token given to `run`;
///     │           graceful, so requests in flight are answered
///     └── worker  the built-in worker: finishes or hands back its tasks
/// ```
///
/// The signal token is not the root: the services must outlive it until the built-in
/// worker's reports are in.
pub struct Planner {
    parts: Parts,
    listener: tokio::net::TcpListener,
    writer_task: WriterTask,
    queues: Queues,
}

/// What the phases of a running planner share.
struct Parts {
    config: PlannerConfig,
    log: EventLog,
    master_key: std::sync::Arc<shoal_runtime::secrets::MasterKey>,
    /// The default pool's secret key, for the built-in worker.
    pool_key: shoal_runtime::secrets::PoolSecretKey,
    client: async_nats::Client,
    feed: packages::Feed,
    /// Shared by every API state: room for package uploads at once.
    uploads: std::sync::Arc<tokio::sync::Semaphore>,
    js: async_nats::jetstream::Context,
    handle: WriterHandle,
    liveness: Liveness,
    /// The log's last durable sequence.
    durable: watch::Receiver<u64>,
    metrics: metrics::Metrics,
    stop: CancellationToken,
    services: CancellationToken,
    /// Every task the planner starts, so that shutdown can wait for them.
    tasks: TaskTracker,
}

/// What the writer hands the services: task messages to publish and effects to carry out.
struct Queues {
    dispatch_rx: TaskReceiver,
    effects_rx: mpsc::Receiver<Vec<Effect>>,
}

/// Runs the planner until `shutdown` is cancelled, serving HTTP on `listener`: [`Planner::build`]
/// then [`Planner::run`].
///
/// # Errors
/// As [`Planner::build`] and [`Planner::run`].
pub async fn run(
    config: PlannerConfig,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    Planner::build(config, listener, &shutdown)
        .await?
        .run(shutdown)
        .await
}

impl Planner {
    /// Opens the log, connects to the broker and sets up its streams (waiting for JetStream
    /// until `shutdown`), starts the writer, and queues what the log says is still to do.
    /// Meanwhile `listener` answers every request with 503 and what start-up waits for
    /// ([`starting`]).
    ///
    /// # Errors
    /// The data dir cannot be opened, the log is inconsistent, the broker refuses the set-up,
    /// or `shutdown` came before NATS and JetStream were ready.
    pub async fn build(
        config: PlannerConfig,
        listener: tokio::net::TcpListener,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Planner> {
        let (status, status_rx) =
            watch::channel(format!("connecting to NATS at {}", config.nats_url));
        let starting = starting::serve(listener, status_rx);
        let set_up = Planner::set_up(config, shutdown, &status).await;
        // The port is handed back (or closed) whether or not start-up succeeded.
        let listener = starting.finish().await;
        let (parts, writer_task, queues) = set_up?;
        Ok(Planner {
            parts,
            listener: listener?,
            writer_task,
            queues,
        })
    }

    /// [`Planner::build`] but for the HTTP port; `status` hears what it waits for.
    async fn set_up(
        config: PlannerConfig,
        shutdown: &CancellationToken,
        status: &watch::Sender<String>,
    ) -> anyhow::Result<(Parts, WriterTask, Queues)> {
        let log = EventLog::open(&config.data_dir.join("log")).with_context(|| {
            format!("cannot open the event log in {}", config.data_dir.display())
        })?;
        let master_key =
            secrets::open_master_key(&config.data_dir, config.master_key.as_deref(), &log)?;
        let pool_key = secrets::default_pool_key(&config.data_dir, &config.default_pool)?;
        let (client, js) = connect_broker(&config, shutdown, status).await?;
        let feed = packages::Feed::open(&js, &config.subjects).await?;
        status.send_replace("reading the event log".to_owned());
        let stop = CancellationToken::new();
        let services = stop.child_token();
        let tasks = TaskTracker::new();

        // Bounded both: what does not fit the writer finds again in its state (`log::handover`).
        let (dispatch_tx, dispatch_rx) = handover::task_channel(TASK_MESSAGES);
        let (effects_tx, effects_rx) = mpsc::channel(EFFECT_BATCHES);
        let mut writer = Writer::open(
            log.clone(),
            config.default_pool.clone(),
            dispatch_tx,
            effects_tx.clone(),
        )?;
        let metrics = metrics::Metrics::new();
        writer.set_metrics(metrics.clone());
        let backlog = writer.republish_outbox();
        let durable = writer.watch_durable();
        // The channel is empty, so the first batch fits: pools' consumers, the health
        // schedule, retries and cancellations still due.
        let _ = effects_tx.try_send(writer.pending_effects());
        drop(effects_tx);
        let (handle, writer_task) = writer
            .spawn(4096)
            .context("cannot start the event log writer's thread")?;
        handle.execute(Command::EnsureDefaultPool).await?;
        register_default_pool_key(&config, &log, &handle, &pool_key).await?;
        api::auth::bootstrap(&handle, &log, &config.data_dir).await?;
        if backlog > 0 {
            tracing::info!(
                tasks = backlog,
                "re-publishing task attempts planned before the last stop"
            );
        }
        let liveness = wanted_drains(&log)?;
        let parts = Parts {
            config,
            log,
            master_key: std::sync::Arc::new(master_key),
            pool_key,
            client,
            js,
            feed,
            uploads: std::sync::Arc::new(tokio::sync::Semaphore::new(api::MAX_UPLOADS)),
            handle,
            liveness,
            durable,
            metrics,
            stop,
            services,
            tasks,
        };
        let queues = Queues {
            dispatch_rx,
            effects_rx,
        };
        Ok((parts, writer_task, queues))
    }

    /// Starts the services and the built-in worker and serves HTTP until `shutdown` is
    /// cancelled; then stops taking work, lets the built-in worker finish or hand back its
    /// tasks, stops the services, lets the writer flush and end, and drains the connection.
    ///
    /// # Errors
    /// The HTTP server or the event log writer failed.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Planner {
            parts: p,
            listener,
            mut writer_task,
            queues,
        } = self;
        let intake = p.stop.child_token();
        // One budget of recorded refusals for every subject the planner reads.
        let recorder = rejections::Recorder::new(p.handle.clone(), p.metrics.clone());
        p.spawn_services(queues, recorder.clone());
        let builtin = start_builtin_worker(
            &p.config,
            &p.pool_key,
            &p.js,
            &p.tasks,
            &shutdown,
            intake.child_token(),
        );
        let app = p.app_state(shutdown.clone());
        p.tasks.spawn(commands::serve(
            p.client.clone(),
            p.config.subjects.clone(),
            api::router(app.clone()),
            recorder,
            intake.child_token(),
        ));
        // The writer ends once every handle is gone: the services' and the API's are.
        drop(p.handle);
        warn_if_exposed(listener.local_addr()?);
        tracing::info!(addr = %listener.local_addr()?, data_dir = %p.config.data_dir.display(), nats.url = %p.config.nats_url, "planner ready");
        let stopping = shutdown.clone();
        let server = axum::serve(listener, api::router(app))
            .with_graceful_shutdown(stop_on(shutdown, intake.child_token()));
        // A client that never reads (an event stream) must not hold the stop up: the
        // connections still open SERVE_GRACE after the stop are dropped.
        let grace = async {
            stopping.cancelled().await;
            tokio::time::sleep(SERVE_GRACE).await;
        };
        tokio::select! {
            served = server => served.context("HTTP server failed")?,
            () = grace => tracing::warn!("HTTP connections still open {SERVE_GRACE:?} after the stop are closed"),
            // The writer only ends early when the log failed: stop rather than serve stale state.
            ended = &mut writer_task => {
                p.stop.cancel();
                match ended {
                    Err(WriterFailed::Log(e)) => anyhow::bail!("event log writer failed: {e}"),
                    Err(e) => anyhow::bail!("{e}"),
                    Ok(()) => anyhow::bail!("event log writer stopped unexpectedly"),
                }
            }
        }

        // Shutdown: stop taking work, let the built-in worker finish, stop ingesting, then let
        // the writer flush and end, and drain the connection.
        tracing::info!("planner shutting down");
        intake.cancel();
        if let Some(w) = builtin
            && let Ok(Err(e)) = w.await
        {
            tracing::error!(error = %format!("{e:#}"), "the built-in worker failed");
        }
        p.services.cancel();
        p.tasks.close();
        p.tasks.wait().await;
        match writer_task.await {
            Ok(()) => {}
            Err(WriterFailed::Log(e)) => tracing::error!(error = %e, "event log writer failed"),
            Err(e) => tracing::error!(error = %e, "event log writer ended"),
        }
        p.log.flush().await?;
        // Draining waits for the broker: with none there it would never end.
        if tokio::time::timeout(DRAIN_WAIT, p.client.drain())
            .await
            .is_err()
        {
            tracing::warn!("the NATS connection was not drained within {DRAIN_WAIT:?}");
        }
        tracing::info!("planner stopped");
        Ok(())
    }
}

impl Parts {
    /// Starts, on the tracker, what runs beside the API until the services are stopped:
    /// effects, drain-state answers, dispatch, scheduled health checks, and ingestion of
    /// results and heartbeats.
    fn spawn_services(&self, queues: Queues, recorder: rejections::Recorder) {
        let Queues {
            dispatch_rx,
            effects_rx,
        } = queues;
        let (client, js, subjects) = (&self.client, &self.js, &self.config.subjects);
        let (handle, liveness, stop_services) = (&self.handle, &self.liveness, &self.services);
        let tasks = &self.tasks;
        tasks.spawn(recorder.clone().summarise(stop_services.clone()));
        tasks.spawn(effects::answer_drain_state(
            client.clone(),
            subjects.clone(),
            liveness.clone(),
            recorder.clone(),
            self.config.signer.clone(),
            stop_services.clone(),
        ));
        let runner = effects::Runner {
            client: client.clone(),
            js: js.clone(),
            subjects: subjects.clone(),
            writer: handle.clone(),
            liveness: liveness.clone(),
            task_ack_wait: self.config.task_ack_wait,
            health: health::Schedule::new(self.config.health_interval, self.config.health_deadline),
            tasks: tasks.clone(),
            signer: self.config.signer.clone(),
            feed: self.feed.clone(),
        };
        tasks.spawn(packages::sweeper(
            self.feed.clone(),
            self.log.clone(),
            stop_services.clone(),
        ));
        tasks.spawn(effects::run(runner, effects_rx, stop_services.clone()));
        let publisher = event_feed::Publisher {
            client: client.clone(),
            js: js.clone(),
            subjects: subjects.clone(),
            log: self.log.clone(),
            retention: self.config.events,
            durable: self.durable.clone(),
            metrics: self.metrics.clone(),
        };
        if self.config.event_feed {
            tasks.spawn(event_feed::run(publisher, stop_services.clone()));
        } else {
            tracing::warn!(
                "the event feed is off (--no-event-feed): integrators following SHOAL_EVENTS get nothing"
            );
        }
        tasks.spawn(audit::sign_heads(
            self.log.clone(),
            handle.clone(),
            self.config.signer.clone(),
            self.durable.clone(),
            self.config.audit_sign_interval,
            stop_services.clone(),
        ));
        let deliverer = webhooks::Deliverer {
            log: self.log.clone(),
            writer: handle.clone(),
            master_key: self.master_key.clone(),
            durable: self.durable.clone(),
            policy: self.config.webhook_retry,
            http: reqwest::Client::new(),
        };
        tasks.spawn(webhooks::run(deliverer, stop_services.clone()));
        tasks.spawn(presence::record(
            client.clone(),
            liveness.clone(),
            self.log.clone(),
            handle.clone(),
            stop_services.clone(),
        ));
        tasks.spawn(dispatch::run(
            js.clone(),
            subjects.clone(),
            handle.clone(),
            dispatch_rx,
            secrets::Sealer::new(self.master_key.clone(), self.log.clone()),
            self.config.signer.clone(),
            stop_services.clone(),
        ));
        tasks.spawn(ingest::results(
            js.clone(),
            subjects.clone(),
            handle.clone(),
            recorder.clone(),
            stop_services.clone(),
        ));
        tasks.spawn(ingest::heartbeats(
            client.clone(),
            subjects.clone(),
            liveness.clone(),
            recorder,
            self.config.signer.clone(),
            stop_services.clone(),
        ));
    }

    /// What the API's handlers work with.
    fn app_state(&self, closing: CancellationToken) -> api::AppState {
        api::AppState {
            writer: self.handle.clone(),
            log: self.log.clone(),
            liveness: self.liveness.clone(),
            default_pool: self.config.default_pool.clone(),
            health_deadline_secs: self.config.health_deadline.as_secs(),
            master_key: self.master_key.clone(),
            feed: self.feed.clone(),
            uploads: self.uploads.clone(),
            package_retention: self.config.package_retention,
            durable: self.durable.clone(),
            signer: self.config.signer.clone(),
            js: self.js.clone(),
            subjects: self.config.subjects.clone(),
            metrics: self.metrics.clone(),
            closing,
        }
    }
}

/// Says loudly, at every start, that the API listens beyond this machine: it is plain HTTP,
/// so tokens cross the network in clear unless a TLS proxy is in front.
fn warn_if_exposed(addr: std::net::SocketAddr) {
    if !addr.ip().is_loopback() {
        tracing::warn!(
            addr = %addr,
            "THE HTTP API LISTENS ON A NON-LOOPBACK ADDRESS: anyone who reaches {addr} can try tokens, and the API is plain HTTP, so tokens cross the network in clear; put a TLS-terminating proxy in front, or keep --http-addr on 127.0.0.1 (the default)"
        );
    }
}

/// Resolves once `shutdown` is cancelled (and then cancels `phase`), or once `phase` is.
async fn stop_on(shutdown: CancellationToken, phase: CancellationToken) {
    tokio::select! {
        () = shutdown.cancelled() => phase.cancel(),
        () = phase.cancelled() => {}
    }
}

/// Registers the default pool's key from the data dir when the pool has none, or, with the
/// built-in worker on, when it has another (the built-in worker must open what it pulls).
async fn register_default_pool_key(
    config: &PlannerConfig,
    log: &EventLog,
    handle: &WriterHandle,
    key: &shoal_runtime::secrets::PoolSecretKey,
) -> anyhow::Result<()> {
    let pool = &config.default_pool;
    let doc: Option<crate::domain::state::PoolDoc> =
        log.doc(Proj::Pools, pool.as_str().as_bytes())?;
    let registered = doc.and_then(|d| d.sealing_key);
    let replace = registered.is_none()
        || (config.builtin_worker && registered.as_ref() != Some(key.public()));
    if replace {
        let key = key.public().clone();
        handle
            .execute(Command::SetPoolKey {
                pool: pool.clone(),
                key,
            })
            .await?;
    }
    Ok(())
}

/// The liveness view, knowing from the log which workers were told to drain.
fn wanted_drains(log: &EventLog) -> anyhow::Result<Liveness> {
    let liveness = Liveness::default();
    for w in log.docs::<WorkerDoc>(Proj::Workers)? {
        if w.draining {
            liveness.want_draining(&w.name, true);
        }
    }
    Ok(liveness)
}

/// Starts (on the tracker) the worker of the default pool that runs inside the planner,
/// unless it is switched off; it stops taking work when `stop` is cancelled. It connects
/// beside the API, not before it: a broker that stalls now must not leave the planner's port
/// bound and unanswered.
fn start_builtin_worker(
    config: &PlannerConfig,
    pool_key: &shoal_runtime::secrets::PoolSecretKey,
    js: &async_nats::jetstream::Context,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
    stop: CancellationToken,
) -> Option<tokio::task::JoinHandle<anyhow::Result<()>>> {
    if !config.builtin_worker {
        tracing::info!(pool = %config.default_pool, "built-in worker disabled; default-pool tasks wait for an external worker");
        return None;
    }
    let (config, js, shutdown) = (config.clone(), js.clone(), shutdown.clone());
    let pool_key = pool_key.clone();
    Some(
        tasks.spawn(
            async move { run_builtin_worker(&config, pool_key, &js, &shutdown, stop).await },
        ),
    )
}

/// Makes the default pool's consumer, connects the built-in worker and runs it until `stop`.
async fn run_builtin_worker(
    config: &PlannerConfig,
    pool_key: shoal_runtime::secrets::PoolSecretKey,
    js: &async_nats::jetstream::Context,
    shutdown: &CancellationToken,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    // The pool's queue consumer is an effect of its registration, carried out beside this;
    // made here first too, so the worker finds it at once rather than a lookup later (the
    // effect then finds it made, and keeps retrying if this failed).
    let consumer = broker::ensure_pool_consumer(
        js,
        &config.subjects,
        &config.default_pool,
        config.task_ack_wait,
    );
    match shutdown.run_until_cancelled(consumer).await {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            tracing::debug!(error = %e, pool = %config.default_pool, "default pool's consumer not made yet; its effect retries");
        }
        None => return Ok(()),
    }
    let (name, auth) = builtin_worker_identity(config);
    let mut wc = shoal_worker::WorkerConfig::new(
        name.clone(),
        config.default_pool.clone(),
        config.data_dir.join("builtin-worker"),
    );
    wc.slots = config.builtin_slots;
    wc.pool_keys = vec![pool_key];
    wc.subjects = config.subjects.clone();
    // The built-in worker trusts its own planner's key, like any worker given its .pub.
    wc.trust = match config.signer.key() {
        Some(key) => shoal_worker::Trust::keys(TrustedKeys::of([key.public()])),
        None => shoal_worker::Trust::InsecureAcceptUnsigned,
    };
    let wclient = shoal_runtime::nats::connect_as(
        &config.nats_url,
        name.as_str(),
        &auth,
        Some(
            config
                .subjects
                .worker_inbox_prefix(&config.default_pool, &name),
        ),
        shutdown,
        |_| {},
    )
    .await;
    let wclient = match wclient {
        Ok(c) => c,
        Err(shoal_runtime::nats::ConnectError::Stopped { .. }) => return Ok(()),
        Err(e) => {
            tracing::error!(error = %e, "the built-in worker cannot connect");
            return Err(e.into());
        }
    };
    tracing::info!(worker = %name, pool = %config.default_pool, "starting the built-in worker");
    shoal_worker::run(wc, wclient, stop).await
}

/// The built-in worker's name and credentials: with its own nkey, the name the trust bundle
/// binds to it ([`BUILTIN_WORKER_NAME`]) and the planner's TLS settings with that nkey;
/// without, [`builtin_worker_name`] and the planner's own credentials.
fn builtin_worker_identity(
    config: &PlannerConfig,
) -> (WorkerName, shoal_runtime::nats_auth::NatsAuth) {
    let mut auth = config.nats_auth.clone();
    match &config.builtin_worker_nkey {
        Some(nkey) => {
            auth.nkey = Some(nkey.clone());
            let name = WorkerName::parse(BUILTIN_WORKER_NAME)
                .unwrap_or_else(|_| builtin_worker_name(&config.data_dir));
            (name, auth)
        }
        None => {
            if auth.nkey.is_some() {
                tracing::warn!(
                    "the built-in worker connects with the planner's own (admin) NATS identity; \
                     give it one of its own with --builtin-worker-nkey (SHOAL_BUILTIN_WORKER_NKEY)"
                );
            }
            (builtin_worker_name(&config.data_dir), auth)
        }
    }
}

/// The built-in worker's name: the host plus a digest of the data dir, stable across restarts
/// (one planner per data dir), so a restart does not leave the previous incarnation listed as
/// an offline worker.
fn builtin_worker_name(data_dir: &std::path::Path) -> WorkerName {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = sha2::Sha256::digest(dir.display().to_string().as_bytes());
    let suffix: String = digest.iter().take(3).map(|b| format!("{b:02x}")).collect();
    WorkerName::from_host(&format!("builtin-{host}"), &suffix)
}

/// Connects the planner to NATS and sets up JetStream, telling `status` what it waits for.
async fn connect_broker(
    config: &PlannerConfig,
    shutdown: &CancellationToken,
    status: &watch::Sender<String>,
) -> anyhow::Result<(async_nats::Client, async_nats::jetstream::Context)> {
    let url = &config.nats_url;
    let auth = &config.nats_auth;
    let client =
        shoal_runtime::nats::connect_as(url, "shoal-planner", auth, None, shutdown, |problem| {
            status.send_replace(problem.to_owned());
        })
        .await?;
    status.send_replace(format!("connected to NATS at {url}; setting up JetStream"));
    let js = async_nats::jetstream::new(client.clone());
    ensure_broker(&client, &js, config, shutdown, status).await?;
    Ok((client, js))
}

/// Creates the streams, retrying until they exist or `shutdown`; each new problem is logged
/// and told to `status`.
async fn ensure_broker(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    config: &PlannerConfig,
    shutdown: &CancellationToken,
    status: &watch::Sender<String>,
) -> anyhow::Result<()> {
    let mut said = String::new();
    loop {
        let (replicas, why) = config.stream_replicas.resolve(&client.server_info());
        // A request to a gone broker waits out its timeout: stop rather than wait.
        let Some(result) = shutdown
            .run_until_cancelled(broker::ensure_streams_replicated(
                js,
                &config.subjects,
                config.signer.replay_window(),
                replicas,
            ))
            .await
        else {
            anyhow::bail!("stopped before JetStream was ready ({said})");
        };
        let e = match result {
            Ok(placements) => {
                let kept: Vec<String> = placements.iter().map(ToString::to_string).collect();
                tracing::info!(
                    stream.replicas = replicas,
                    "JetStream streams {why}: {}",
                    kept.join("; ")
                );
                return Ok(());
            }
            Err(e) => e,
        };
        let mut problem = broker_problem(client, &config.nats_url, &e);
        if replicas > 1 && e.kind() == broker::BrokerFailure::Refused {
            problem.push_str(&format!(
                " (the streams were asked for {replicas} replicas: {why}; a broker with fewer \
                 JetStream servers needs --stream-replicas with at most their number)"
            ));
        }
        if problem != said {
            tracing::warn!(error = %e, "{problem}; retrying");
            status.send_replace(problem.clone());
            said = problem;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shutdown.cancelled() => anyhow::bail!("stopped before JetStream was ready ({said})"),
        }
    }
}

/// Why JetStream cannot be set up, told apart: the connection is gone, the server has no
/// JetStream, JetStream does not answer, or it refuses.
fn broker_problem(client: &async_nats::Client, url: &str, e: &broker::BrokerError) -> String {
    let info = client.server_info();
    if client.connection_state() != async_nats::connection::State::Connected {
        format!("lost the connection to NATS at {url} while setting up JetStream")
    } else if !info.jetstream {
        format!(
            "connected to NATS at {url} (server \"{}\"), but JetStream is not enabled there (start nats-server with -js)",
            info.server_name
        )
    } else {
        match e.kind() {
            broker::BrokerFailure::Unavailable => {
                format!("JetStream at {url} does not answer: {e}")
            }
            broker::BrokerFailure::Refused => format!(
                "the broker at {url} refused the JetStream set-up: {e} (an operator may have to act)"
            ),
        }
    }
}
