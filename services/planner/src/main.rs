//! `shoal-planner`: serve (default) or `replay` the event log offline.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use shoal_planner::log::LogError;
use shoal_planner::signing::Signer;
use shoal_planner::{Planner, PlannerConfig};
use shoal_shared::PoolName;
use shoal_shared::subjects::Subjects;
use std::path::PathBuf;

mod nats_config;

/// The shoal planner: routes deployment steps to worker pools and records every fact.
#[derive(Debug, Parser)]
#[command(
    name = "shoal-planner",
    version,
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    serve: Serve,
}

#[derive(Debug, clap::Args)]
struct Serve {
    /// NATS server with JetStream.
    #[arg(long, env = "SHOAL_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[command(flatten)]
    nats_auth: shoal_runtime::nats_auth::NatsAuth,
    /// The built-in worker's own NATS nkey seed (a trust bundle's
    /// `identities/builtin-worker.nk`): it then connects as `builtin-worker` of the default
    /// pool, not with the planner's admin identity.
    #[arg(long, env = "SHOAL_BUILTIN_WORKER_NKEY", value_name = "FILE")]
    builtin_worker_nkey: Option<PathBuf>,
    /// Where the event log lives.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = "./shoal-data")]
    data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, env = "SHOAL_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: String,
    /// The global default pool.
    #[arg(long, env = "SHOAL_DEFAULT_POOL", default_value = "default")]
    default_pool: PoolName,
    /// Do not run a worker of the default pool inside the planner.
    #[arg(long, env = "SHOAL_NO_BUILTIN_WORKER")]
    no_builtin_worker: bool,
    /// Slots of the built-in worker.
    #[arg(long, env = "SHOAL_BUILTIN_SLOTS", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    builtin_slots: u32,
    /// Subject prefix of the installation.
    #[arg(long, env = "SHOAL_SUBJECT_PREFIX", default_value = "shoal")]
    subject_prefix: String,
    /// Seconds a task may go without a progress ack before the broker gives it to another
    /// worker of its pool: how soon a dead worker's task runs again. Workers send progress
    /// acks three times per ack wait.
    #[arg(long, env = "SHOAL_TASK_ACK_WAIT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    task_ack_wait_secs: u64,
    /// Seconds between scheduled health checks of a target that does not set its own
    /// (jittered); 0 schedules none (checks then run only on request and in deployments).
    #[arg(long, env = "SHOAL_HEALTH_INTERVAL_SECS", default_value_t = 60)]
    health_interval_secs: u64,
    /// Seconds a health check may wait for a worker of its pool (plus its probe's timeout)
    /// before the target is called `unavailable`.
    #[arg(long, env = "SHOAL_HEALTH_DEADLINE_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    health_deadline_secs: u64,
    /// Versions of each package the feed keeps (the newest; a version an unfinished
    /// deployment deploys is always kept); 0 keeps every version.
    #[arg(long, env = "SHOAL_PACKAGE_RETENTION", default_value_t = 0)]
    package_retention: u32,
    /// How long the event feed (the JetStream stream SHOAL_EVENTS that integrators follow)
    /// keeps an event, e.g. `30d`, `12h`; `0s`: no age limit. Older events stay in the log:
    /// `GET /api/events` reads them from there, in the same order and with the same ids.
    #[arg(long, env = "SHOAL_EVENTS_MAX_AGE", default_value = "30d", value_parser = humantime::parse_duration)]
    events_max_age: std::time::Duration,
    /// Most MiB the event feed's stream keeps (the oldest events go first); 0: no limit.
    #[arg(long, env = "SHOAL_EVENTS_MAX_MB", default_value_t = 1024)]
    events_max_mb: u64,
    /// Publish no event feed (for benchmarks that measure what it costs, and installations
    /// with no integrator): GET /api/events, its stream and webhooks still serve the log.
    #[arg(long, env = "SHOAL_NO_EVENT_FEED")]
    no_event_feed: bool,
    /// How many JetStream servers keep each stream (tasks, reports, event feed, packages):
    /// `auto` is 1 on a single server and 3 on a cluster (the server names its cluster); a
    /// number from 1 to 5 sets it. The planner logs which at start.
    #[arg(long, env = "SHOAL_STREAM_REPLICAS", default_value = "auto")]
    stream_replicas: shoal_planner::broker::StreamReplicas,
    /// Export traces to this OTLP/HTTP endpoint (e.g. `http://127.0.0.1:4318`): a
    /// deployment's API request, decide, commit, publish and the ingest of its reports, linked
    /// across the broker to the workers' pull and run. `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`
    /// for JSON. Off by default.
    #[arg(long, env = "SHOAL_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// How often the planner signs its log's head with its signing key (a LogHeadSigned
    /// record, when the log moved since the last), e.g. `15m`: what an audit export
    /// checks besides the signature at its end.
    #[arg(long, env = "SHOAL_AUDIT_SIGN_INTERVAL", default_value = "15m", value_parser = positive_duration)]
    audit_sign_interval: std::time::Duration,
    /// Attempts of one webhook delivery before the webhook is paused (until resumed).
    #[arg(long, env = "SHOAL_WEBHOOK_ATTEMPTS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    webhook_attempts: u32,
    /// The wait after a webhook delivery's first failure; it doubles at each failure, up to
    /// 10 minutes.
    #[arg(long, env = "SHOAL_WEBHOOK_RETRY_BASE", default_value = "1s", value_parser = humantime::parse_duration)]
    webhook_retry_base: std::time::Duration,
    /// The master key that seals sensitive variables in the event log (made at first start
    /// when missing and the log holds no sealed value). Default: <data-dir>/keys/master.key.
    /// Back it up: without it the log's sensitive values cannot be used.
    #[arg(long, env = "SHOAL_MASTER_KEY")]
    master_key: Option<PathBuf>,
    /// The Ed25519 key every task, check, cancellation and instruction is signed with;
    /// made at first start (with `<file>.pub` beside it, to give workers as
    /// `--trusted-keys`). Default: `<data dir>/keys/signing.key`.
    #[arg(long, env = "SHOAL_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
    /// How long a task's signature stays valid: a task that waits in its pool's queue longer
    /// (no worker took it) is refused by the worker that finally gets it and ends failed
    /// ("signature expired"); its retries, if any, are signed anew.
    #[arg(long, env = "SHOAL_TASK_SIGNATURE_TTL_SECS", default_value_t = 7 * 24 * 3600,
          value_parser = clap::value_parser!(u64).range(60..))]
    task_signature_ttl_secs: u64,
    /// INSECURE, for benchmarks and development only: sign nothing. Workers then run
    /// whatever anyone who can publish to NATS sends them, and only workers started with
    /// `--insecure-accept-unsigned` take this planner's tasks.
    #[arg(long, env = "SHOAL_INSECURE_NO_SIGNING")]
    insecure_no_signing: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Verify the hash chain and rebuild every projection from the log, offline; exits 0
    /// when the rebuilt projections equal the live ones.
    Replay {
        #[arg(long, env = "SHOAL_DATA_DIR", default_value = "./shoal-data")]
        data_dir: PathBuf,
        /// Replace the live projections by the rebuilt ones instead of comparing.
        #[arg(long)]
        rebuild: bool,
    },
    /// Make an admin API token in a stopped planner's log and print it: the way back in when
    /// every admin token is lost. The planner must be stopped (the log is locked while it runs).
    AdminToken {
        #[arg(long, env = "SHOAL_DATA_DIR", default_value = "./shoal-data")]
        data_dir: PathBuf,
        /// The new token's name (recorded as the actor of what it does).
        #[arg(long)]
        name: shoal_shared::TokenName,
    },
    /// Make a pool's key pair for sealing sensitive variables: writes `<pool>.xkey` (the
    /// secret key, for the pool's workers: `shoal-worker --pool-key`) and `<pool>.xpub` (the
    /// public key, to register: `shoal pool set-key <pool> <pool>.xpub`) into DIR.
    PoolKeygen {
        /// The pool the key is for (names the files).
        #[arg(long)]
        pool: PoolName,
        /// Where to write the two files (made if missing); existing files are never replaced.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the NATS trust bundle of a hub and its regions: nats-server configs with an
    /// nkey identity per planner, built-in worker and worker, permissions, limits, TLS
    /// certificates, and an env file per identity. Running it again keeps every key.
    NatsConfig(Box<nats_config::NatsConfig>),
    /// Make a new signing key at FILE (mode 0600) and its public key at FILE.pub, the line
    /// workers trust (`--trusted-keys`). Never overwrites a key.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
}

/// sled allocates and frees a node copy for most writes; under load glibc's allocator took
/// half of the writer's time (consolidating free chunks). See docs/BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // mimalloc asks for transparent huge pages and gives memory back when it is idle for a
    // moment; under load every page it takes back is a fresh 2 MiB page the kernel zeroes
    // (a quarter of a busy planner's CPU in a profile). Small pages: see docs/BENCHMARKS.md.
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("warning: cannot turn transparent huge pages off for the planner: {e}");
    }
    let args = Args::parse();
    let otlp = args
        .command
        .is_none()
        .then_some(args.serve.otlp_endpoint.as_deref());
    let _telemetry = shoal_runtime::telemetry::init("shoal-planner", otlp.flatten());
    let result = match args.command {
        Some(Cmd::Replay { data_dir, rebuild }) => replay(&data_dir, rebuild),
        Some(Cmd::AdminToken { data_dir, name }) => admin_token(&data_dir, name),
        Some(Cmd::PoolKeygen { pool, out }) => pool_keygen(&pool, &out),
        Some(Cmd::NatsConfig(args)) => nats_config::run(*args).map(|summary| println!("{summary}")),
        Some(Cmd::Keygen { out }) => keygen(&out),
        None => serve(args.serve),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn admin_token(
    data_dir: &std::path::Path,
    name: shoal_shared::TokenName,
) -> anyhow::Result<()> {
    let log = open_offline(data_dir)?;
    let token = shoal_planner::api::auth::issue_offline(log, name.clone()).await?;
    println!("{token}");
    eprintln!(
        "admin token \"{name}\" made: this is the only time it is shown; start the planner and use it as SHOAL_TOKEN"
    );
    Ok(())
}

fn pool_keygen(pool: &PoolName, out: &std::path::Path) -> anyhow::Result<()> {
    let key = shoal_runtime::secrets::PoolSecretKey::generate();
    let secret = out.join(format!("{pool}.xkey"));
    let public = out.join(format!("{pool}.xpub"));
    if public.exists() {
        anyhow::bail!(
            "{} exists; pool keys are never overwritten (move it away to make a new pair)",
            public.display()
        );
    }
    key.save(&secret)?;
    shoal_runtime::secrets::write_public(&public, &format!("{}\n", key.public()))?;
    println!(
        "secret key: {} (give it to the workers of pool {pool}: --pool-key / SHOAL_POOL_KEY)",
        secret.display()
    );
    println!("public key: {} = {}", public.display(), key.public());
    println!(
        "register it: shoal pool set-key {pool} {}",
        public.display()
    );
    Ok(())
}

/// Opens a stopped planner's log, saying which process holds it if one does.
fn open_offline(data_dir: &std::path::Path) -> anyhow::Result<shoal_planner::log::EventLog> {
    let dir = data_dir.join("log");
    if !dir.is_dir() {
        anyhow::bail!(
            "no event log in {} (looked for {}); is --data-dir the planner's data dir?",
            data_dir.display(),
            dir.display()
        );
    }
    shoal_planner::log::EventLog::open(&dir).map_err(|e| match e {
        LogError::Locked { pid, .. } => anyhow::anyhow!(
            "the event log in {} is in use by another process{}, most likely a running planner; stop it first (this works offline)",
            data_dir.display(),
            pid.map_or(String::new(), |p| format!(" (pid {p})"))
        ),
        e => anyhow::anyhow!("cannot open the event log in {}: {e}", data_dir.display()),
    })
}

fn replay(data_dir: &std::path::Path, rebuild: bool) -> anyhow::Result<()> {
    let log = open_offline(data_dir)?;
    let started = std::time::Instant::now();
    match shoal_planner::replay::replay(&log, rebuild) {
        Ok(r) => {
            let secs = started.elapsed().as_secs_f64();
            println!("hash chain verified: {} events", r.events);
            println!(
                "projections {}: {} pools, {} targets, {} deployments, {} tasks, {} workers",
                if rebuild {
                    "rebuilt"
                } else {
                    "equal to the log"
                },
                r.pools,
                r.targets,
                r.deployments,
                r.tasks,
                r.workers
            );
            for (tree, rows) in r.rows {
                println!("  {tree:<12} {rows} rows");
            }
            println!(
                "replayed in {secs:.3} s ({:.0} events/s)",
                r.events as f64 / secs.max(1e-9)
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("replay failed: {e}");
            std::process::exit(1);
        }
    }
}

#[tokio::main]
async fn serve(s: Serve) -> anyhow::Result<()> {
    let subjects = Subjects::new(&s.subject_prefix)?;
    // The key exists before the API answers, so whoever waits for the API finds its .pub.
    let signer = signer(&s)?;
    let listener = tokio::net::TcpListener::bind(&s.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", s.http_addr))?;
    let shutdown = shoal_runtime::signal::shutdown_on_signals();
    let config = PlannerConfig {
        nats_url: s.nats_url,
        data_dir: s.data_dir,
        default_pool: s.default_pool,
        builtin_worker: !s.no_builtin_worker,
        builtin_slots: s.builtin_slots,
        subjects,
        task_ack_wait: std::time::Duration::from_secs(s.task_ack_wait_secs),
        health_interval: std::time::Duration::from_secs(s.health_interval_secs),
        health_deadline: std::time::Duration::from_secs(s.health_deadline_secs),
        master_key: s.master_key,
        nats_auth: s.nats_auth,
        builtin_worker_nkey: s.builtin_worker_nkey,
        signer,
        package_retention: s.package_retention,
        events: shoal_planner::broker::EventsRetention {
            max_age: s.events_max_age,
            max_bytes: s.events_max_mb.saturating_mul(1024 * 1024),
        },
        audit_sign_interval: s.audit_sign_interval,
        event_feed: !s.no_event_feed,
        webhook_retry: shoal_planner::webhooks::RetryPolicy {
            attempts: s.webhook_attempts,
            base: s.webhook_retry_base,
            ..Default::default()
        },
        stream_replicas: s.stream_replicas,
    };
    let data_dir = config.data_dir.clone();
    let planner = match Planner::build(config, listener, &shutdown).await {
        Ok(p) => p,
        // Stopped on request while starting: not a failure.
        Err(e) if shutdown.is_cancelled() => {
            tracing::info!("{e:#}; planner stopped");
            return Ok(());
        }
        Err(e) => return Err(locked_by_another(e, &data_dir)),
    };
    planner.run(shutdown).await
}

/// A duration of at least a second (`humantime`: `90s`, `15m`, `1h`).
fn positive_duration(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_secs(1) {
        return Err("must be at least 1s".to_owned());
    }
    Ok(d)
}

fn keygen(out: &std::path::Path) -> anyhow::Result<()> {
    let key = shoal_runtime::keys::generate(out)?;
    let public = shoal_runtime::keys::public_key_path(out);
    println!(
        "signing key {} written to {} (mode 0600; keep it secret)",
        key.key_id(),
        out.display()
    );
    println!(
        "public key written to {}: add its line to every worker's --trusted-keys file",
        public.display()
    );
    Ok(())
}

/// The signer of `--signing-key` (made at first start), or none with a loud warning.
fn signer(s: &Serve) -> anyhow::Result<Signer> {
    if s.insecure_no_signing {
        tracing::warn!(
            "INSECURE: --insecure-no-signing is set; tasks, checks, cancellations and instructions go out unsigned, and workers that accept them run whatever anyone who can publish to NATS sends. Never use this outside benchmarks and development."
        );
        return Ok(Signer::insecure_none());
    }
    let path = s
        .signing_key
        .clone()
        .unwrap_or_else(|| s.data_dir.join("keys").join("signing.key"));
    let (key, made) = shoal_runtime::keys::load_or_generate(&path)?;
    let public = shoal_runtime::keys::public_key_path(&path);
    if made {
        tracing::info!(key.id = %key.key_id(), key.path = %path.display(), public_key.path = %public.display(), "made a new signing key; give workers its public key file as --trusted-keys");
    } else {
        tracing::info!(key.id = %key.key_id(), public_key.path = %public.display(), "signing with the key in {}", path.display());
    }
    Ok(Signer::new(
        key,
        std::time::Duration::from_secs(s.task_signature_ttl_secs),
    ))
}

/// The log's lock refused: say which planner has the data dir instead of sled's I/O error.
fn locked_by_another(e: anyhow::Error, data_dir: &std::path::Path) -> anyhow::Error {
    match e.downcast_ref::<LogError>() {
        Some(LogError::Locked { pid, .. }) => anyhow::anyhow!(
            "another planner is using {} ({}); stop it first, or give this one its own --data-dir",
            data_dir.display(),
            pid.map_or("pid unknown".to_owned(), |p| format!("pid {p}"))
        ),
        _ => e,
    }
}
