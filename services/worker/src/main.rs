//! `shoal-worker`: joins one pool and runs its tasks. Opens no port.

use clap::Parser;
use shoal_shared::subjects::Subjects;
use shoal_shared::{PoolName, RegionName, WorkerName};
use shoal_worker::WorkerConfig;
use std::path::PathBuf;
use std::time::Duration;

/// Runs shoal deployment steps for one worker pool.
#[derive(Debug, Parser)]
#[command(name = "shoal-worker", version)]
struct Args {
    /// NATS server to connect to (outbound only).
    #[arg(long, env = "SHOAL_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[command(flatten)]
    nats_auth: shoal_runtime::nats_auth::NatsAuth,
    /// The pool this worker serves.
    #[arg(long, env = "SHOAL_POOL", default_value = "default")]
    pool: PoolName,
    /// The region the worker is in (informational).
    #[arg(long, env = "SHOAL_REGION")]
    region: Option<RegionName>,
    /// Unique worker name; defaults to the host name plus a short random suffix.
    #[arg(long, env = "SHOAL_WORKER_NAME")]
    name: Option<WorkerName>,
    /// Tasks run at once.
    #[arg(long, env = "SHOAL_SLOTS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    slots: u32,
    /// Directory for per-task working directories.
    #[arg(long, env = "SHOAL_WORK_DIR", default_value = "./shoal-work")]
    work_dir: PathBuf,
    /// Subject prefix of the installation.
    #[arg(long, env = "SHOAL_SUBJECT_PREFIX", default_value = "shoal")]
    subject_prefix: String,
    /// Seconds between heartbeats.
    #[arg(long, env = "SHOAL_HEARTBEAT_SECS", default_value_t = 2)]
    heartbeat_secs: u64,
    /// Seconds running tasks may take to finish on SIGTERM before they are handed back.
    #[arg(long, env = "SHOAL_DRAIN_TIMEOUT", default_value_t = 30)]
    drain_timeout: u64,
    /// JetStream domain of the hub, when connecting through a leaf node.
    #[arg(long, env = "SHOAL_JS_DOMAIN")]
    js_domain: Option<String>,
    /// Below this much free disk (MiB) in the work dir the worker reports itself
    /// `healthy_with_warnings`.
    #[arg(long, env = "SHOAL_MIN_FREE_DISK_MB", default_value_t = 1024)]
    min_free_disk_mb: u64,
    /// The pool's secret key file(s) (`shoal-planner pool-keygen`), comma-separated: two
    /// during a key rotation. Without one, tasks with sensitive variables are refused.
    #[arg(long, env = "SHOAL_POOL_KEY", value_delimiter = ',')]
    pool_key: Vec<std::path::PathBuf>,
}

fn main() {
    shoal_runtime::telemetry::init();
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new();
    let result = runtime
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(args)));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let subjects = Subjects::new(&args.subject_prefix)?;
    let name = args.name.unwrap_or_else(|| {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        WorkerName::from_host(&host, &suffix[..6])
    });
    let mut config = WorkerConfig::new(name.clone(), args.pool.clone(), args.work_dir);
    config.region = args.region;
    config.slots = args.slots;
    config.heartbeat_interval = Duration::from_secs(args.heartbeat_secs.max(1));
    config.drain_timeout = Duration::from_secs(args.drain_timeout);
    config.js_domain = args.js_domain;
    config.min_free_disk_mb = args.min_free_disk_mb;
    config.subjects = subjects.clone();
    for path in &args.pool_key {
        config
            .pool_keys
            .push(shoal_runtime::secrets::PoolSecretKey::load(path)?);
    }
    // Listening before connecting: a worker that cannot reach NATS must still stop.
    let shutdown = shoal_runtime::signal::shutdown_on_signals();
    let client = shoal_runtime::nats::connect_as(
        &args.nats_url,
        name.as_str(),
        &args.nats_auth,
        Some(subjects.worker_inbox_prefix(&args.pool, &name)),
        &shutdown,
        |_| {},
    )
    .await;
    let client = match client {
        Ok(c) => c,
        Err(e @ shoal_runtime::nats::ConnectError::Stopped { .. }) => {
            tracing::info!(worker = %name, "{e}; worker stopped");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    shoal_worker::run(config, client, shutdown).await
}
