//! Heartbeats on core NATS: liveness and load, never facts that must not be lost.

use crate::WorkerConfig;
use shoal_shared::messages::{Heartbeat, WIRE_SCHEMA_VERSION};
use shoal_shared::{Timestamp, codec};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio_util::sync::CancellationToken;

/// Publishes a heartbeat every interval until shutdown.
pub async fn run(
    client: async_nats::Client,
    config: WorkerConfig,
    running: Arc<AtomicU32>,
    runtime: crate::control::Runtime,
    shutdown: CancellationToken,
) {
    let subject = config.subjects.heartbeat(&config.pool, &config.name);
    let mut tick = tokio::time::interval(config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let free_disk_mb = free_disk_mb(&config.work_dir);
        let warnings = match free_disk_mb {
            Some(free) if free < config.min_free_disk_mb => vec![format!(
                "only {free} MiB free in {} (warning below {} MiB)",
                config.work_dir.display(),
                config.min_free_disk_mb
            )],
            Some(_) => vec![],
            None => vec![format!(
                "cannot read the free space of {}",
                config.work_dir.display()
            )],
        };
        let (ready, not_ready_reason) = runtime.readiness().get();
        let beat = Heartbeat {
            schema_version: WIRE_SCHEMA_VERSION,
            worker: config.name.clone(),
            pool: config.pool.clone(),
            region: config.region.clone(),
            slots: config.slots,
            busy: running.load(Ordering::Relaxed),
            interval_ms: u64::try_from(config.heartbeat_interval.as_millis()).unwrap_or(u64::MAX),
            sent_at: Timestamp::now(),
            draining: runtime.draining(),
            free_disk_mb,
            warnings,
            ready,
            not_ready_reason,
        };
        match codec::encode(&beat) {
            Ok(bytes) => {
                if let Err(e) = client.publish(subject.clone(), bytes.into()).await {
                    tracing::debug!(error = %e, "heartbeat not sent");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode heartbeat"),
        }
    }
}

/// Free space available to the worker in `dir`, in MiB.
fn free_disk_mb(dir: &std::path::Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let bytes = st.blocks_available().saturating_mul(st.fragment_size());
    Some(bytes / (1024 * 1024))
}
