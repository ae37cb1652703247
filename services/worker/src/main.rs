//! `shoal-worker`: joins one pool and runs its tasks. Opens no port.

use clap::Parser;
use shoal_shared::subjects::Subjects;
use shoal_shared::{PoolName, RegionName, WorkerName};
use shoal_worker::{Trust, WorkerConfig};
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
    /// Export traces of its pulls and runs to this OTLP/HTTP endpoint (e.g.
    /// `http://127.0.0.1:4318`), each linked to the planner's trace of its deployment.
    #[arg(long, env = "SHOAL_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
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
    /// Most the package cache (`<work dir>/packages/chunks`) holds, in MiB; least recently
    /// used chunks no running task holds are evicted beyond it.
    #[arg(long, env = "SHOAL_PACKAGE_CACHE_MB", default_value_t = 10240)]
    package_cache_mb: u64,
    /// Most a package may unpack to, in MiB: an archive that would go past it (a zip bomb)
    /// fails its task, and what it wrote is removed with the task's directory.
    #[arg(long, env = "SHOAL_PACKAGE_UNPACK_MB", default_value_t = 8192)]
    package_unpack_mb: u64,
    /// The pool's secret key file(s) (`shoal-planner pool-keygen`), comma-separated: two
    /// during a key rotation. Without one, tasks with sensitive variables are refused.
    #[arg(long, env = "SHOAL_POOL_KEY", value_delimiter = ',')]
    pool_key: Vec<std::path::PathBuf>,
    /// The planner's public keys (the lines of its `signing.key.pub`; more than one during a
    /// key rotation). Required: the worker runs only tasks signed by one of them.
    #[arg(long, env = "SHOAL_TRUSTED_KEYS")]
    trusted_keys: Option<PathBuf>,
    /// INSECURE, for benchmarks and development only: run messages without verifying their
    /// signatures, so anyone who can publish to NATS can run scripts here.
    #[arg(long, env = "SHOAL_INSECURE_ACCEPT_UNSIGNED")]
    insecure_accept_unsigned: bool,
}

/// A worker allocates for every message it reads, decodes, verifies and reports; glibc's
/// allocator took about a fifth of a busy worker's samples (malloc_consolidate among them).
/// See docs/BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = Args::parse();
    let _telemetry = shoal_runtime::telemetry::init("shoal-worker", args.otlp_endpoint.as_deref());
    let runtime = tokio::runtime::Runtime::new();
    let result = runtime
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(args)));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The keys of `--trusted-keys`, or none with a loud warning; neither is an error that says
/// what to pass.
fn trust(path: Option<&std::path::Path>, insecure: bool) -> anyhow::Result<Trust> {
    match (path, insecure) {
        (Some(path), _) => {
            let keys = shoal_runtime::keys::load_trusted(path)?;
            tracing::info!(trusted_keys = %keys.key_ids().join(", "), "running only tasks signed by these planner keys");
            Ok(Trust::keys(keys))
        }
        (None, true) => {
            tracing::warn!(
                "INSECURE: --insecure-accept-unsigned is set; this worker runs tasks, checks, cancellations and instructions WITHOUT verifying who sent them, so anyone who can publish to NATS can run scripts here. Never use this outside benchmarks and development."
            );
            Ok(Trust::InsecureAcceptUnsigned)
        }
        (None, false) => anyhow::bail!(
            "no trusted keys: pass --trusted-keys FILE (or SHOAL_TRUSTED_KEYS), FILE holding the planner's public key (the line of <planner data dir>/keys/signing.key.pub, or of the .pub that `shoal-planner keygen` wrote); the worker runs only tasks the planner signed"
        ),
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
    config.package_cache_bytes = args.package_cache_mb.saturating_mul(1024 * 1024);
    config.package_unpack_bytes = args.package_unpack_mb.saturating_mul(1024 * 1024);
    config.subjects = subjects.clone();
    for path in &args.pool_key {
        config
            .pool_keys
            .push(shoal_runtime::secrets::PoolSecretKey::load(path)?);
    }
    config.trust = trust(args.trusted_keys.as_deref(), args.insecure_accept_unsigned)?;
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
