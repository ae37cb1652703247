//! shoal-worker: joins exactly one pool, connects outbound only to NATS, pulls that pool's
//! tasks only while it has a free slot, runs them, and reports every fact to the planner.
//!
//! The same code runs as the `shoal-worker` binary and as the planner's built-in worker.
#![forbid(unsafe_code)]

pub mod control;
pub mod execute;
pub mod heartbeat;
pub mod packages;
pub mod pull;
pub mod readiness;
pub mod report;
pub mod trust;

pub use trust::Trust;

use shoal_shared::subjects::Subjects;
use shoal_shared::{PoolName, RegionName, WorkerName};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a stopping worker waits for the broker to take what it sent last.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub name: WorkerName,
    pub pool: PoolName,
    pub region: Option<RegionName>,
    /// Tasks run at once.
    pub slots: u32,
    /// Per-task directories are made under `<work_dir>/tasks`.
    pub work_dir: PathBuf,
    pub subjects: Subjects,
    /// How often the worker says it is alive.
    pub heartbeat_interval: Duration,
    /// How often a running task's message is kept alive at most; the worker makes it three
    /// times per ack wait of its pool's queue when that is shorter.
    pub progress_interval: Duration,
    /// How long running tasks may finish after shutdown begins before they are stopped and
    /// handed back to the pool.
    pub drain_timeout: Duration,
    /// JetStream domain of the hub, when the worker connects through a leaf node.
    pub js_domain: Option<String>,
    /// Free disk (MiB) in the work dir below which the worker warns in its heartbeats, and
    /// which fetching a package never goes below.
    pub min_free_disk_mb: u64,
    /// Most bytes the package cache (`<work_dir>/packages/chunks`) holds.
    pub package_cache_bytes: u64,
    /// Most bytes one package may unpack to: an archive that would go past it (a zip bomb)
    /// fails its task.
    pub package_unpack_bytes: u64,
    /// The pool's secret keys that open sensitive variables (more than one during a key
    /// rotation). A task with a value none of them opens is refused.
    pub pool_keys: Vec<shoal_runtime::secrets::PoolSecretKey>,
    /// Whose signatures the worker accepts; by default none, so nothing runs until the
    /// planner's public key is given.
    pub trust: Trust,
    /// The package feed and this worker's chunk cache (`<work_dir>/packages`), set when the
    /// worker starts.
    pub packages: Option<packages::Acquirer>,
}

impl WorkerConfig {
    /// A configuration with the defaults for everything but the identity.
    pub fn new(name: WorkerName, pool: PoolName, work_dir: PathBuf) -> WorkerConfig {
        WorkerConfig {
            name,
            pool,
            region: None,
            slots: 4,
            work_dir,
            subjects: Subjects::default(),
            heartbeat_interval: Duration::from_secs(2),
            progress_interval: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            js_domain: None,
            min_free_disk_mb: 1024,
            package_cache_bytes: 10 * 1024 * 1024 * 1024,
            package_unpack_bytes: execute::MAX_UNPACKED,
            pool_keys: Vec::new(),
            trust: Trust::default(),
            packages: None,
        }
    }
}

/// Runs a worker on an already connected client until `shutdown` is cancelled; then it stops
/// pulling, lets running tasks finish, says it left, and returns.
///
/// # Errors
/// The work directory cannot be created.
pub async fn run(
    config: WorkerConfig,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut config = config;
    std::fs::create_dir_all(config.work_dir.join("tasks")).map_err(|e| {
        anyhow::anyhow!("cannot create work dir {}: {e}", config.work_dir.display())
    })?;
    // Scripts run inside their task directory: every path handed to them must be absolute.
    config.work_dir = std::fs::canonicalize(&config.work_dir).map_err(|e| {
        anyhow::anyhow!("cannot resolve work dir {}: {e}", config.work_dir.display())
    })?;
    let js = match &config.js_domain {
        Some(domain) => async_nats::jetstream::with_domain(client.clone(), domain),
        None => async_nats::jetstream::new(client.clone()),
    };
    let cache = config.work_dir.join("packages").join("chunks");
    let bucket = config.subjects.packages_bucket();
    config.packages = Some(
        packages::Acquirer::new(
            &js,
            &bucket,
            cache,
            config.package_cache_bytes,
            config.min_free_disk_mb * 1024 * 1024,
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the package cache: {e}"))?,
    );
    let reporter = report::Reporter::new(js.clone(), &config, shutdown.clone());
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(config.slots as usize));
    tracing::info!(
        worker = %config.name, pool = %config.pool, slots = config.slots,
        "worker joining its pool"
    );
    reporter
        .send(shoal_shared::messages::WorkerBody::Joined {
            region: config.region.clone(),
            slots: config.slots,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
        .await;
    let running = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let runtime = control::Runtime::new(&config);
    let listener = tokio::spawn(control::listen(
        client.clone(),
        config.clone(),
        runtime.clone(),
        shutdown.clone(),
    ));
    // Up to 2 s without a planner: not worth holding up a stop.
    let _ = shutdown
        .run_until_cancelled(control::ask_drain_state(&client, &config, &runtime))
        .await;
    let beats = tokio::spawn(heartbeat::run(
        client.clone(),
        config.clone(),
        running.clone(),
        runtime.clone(),
        shutdown.clone(),
    ));
    pull::run(
        &config,
        js,
        reporter.clone(),
        runtime,
        slots,
        running,
        shutdown,
    )
    .await;
    beats.abort();
    listener.abort();
    reporter
        .send_final(shoal_shared::messages::WorkerBody::Left {
            reason: "shut down".to_owned(),
        })
        .await;
    // A flush waits for the broker: with none there it would never end.
    if client.connection_state() == async_nats::connection::State::Connected {
        match tokio::time::timeout(FLUSH_WAIT, client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not flush the connection on shutdown"),
            Err(_) => {
                tracing::warn!("the connection was not flushed within {FLUSH_WAIT:?} of shutdown")
            }
        }
    }
    config.trust.log_counts();
    tracing::info!(worker = %config.name, "worker stopped");
    Ok(())
}
