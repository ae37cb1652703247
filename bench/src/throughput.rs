//! Scenarios 2, 3 and 6: N tasks submitted at once (deployments of up to 1,000 targets each,
//! targets spread over the pools) through the real planner and worker processes; measured
//! until the last `TaskFinished` is in the planner's log.

use crate::stats::{Latency, per_second, round, us_to_ms};
use crate::system::{Broker, CpuByPart, Layout, Observer, Shoal, over_targets};
use anyhow::Context as _;
use futures::StreamExt as _;
use serde::Serialize;
use serde_json::Value;
use shoal_shared::Timestamp;
use std::time::Duration;

/// Parameters of a throughput run.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub tasks: usize,
    pub pools: usize,
    pub workers: usize,
    pub slots_per_worker: u32,
    pub targets: usize,
    pub deployments: usize,
    pub action: Value,
}

/// What a throughput run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub params: Params,
    pub tasks_per_s: f64,
    pub seconds: f64,
    /// Planned (the writer's µs stamp in the task message) → the worker's `TaskStarted` seen.
    pub schedule_to_start: Latency,
    /// Planned → finished, both from the planner's log (millisecond resolution).
    pub end_to_end: Latency,
    pub tasks_succeeded: usize,
    pub events_in_log: u64,
    pub planner_rss_mib: Option<f64>,
    /// CPU time of the broker, the planner and the workers (from their start, targets'
    /// registration included) per task, in µs: what the run cost, whatever the VM's stalls.
    pub cpu_us_per_task: f64,
    /// The same, by part.
    pub cpu_us_per_task_by_part: CpuByPart,
    /// Ed25519 verifications the workers made per task (0 unsigned; 1/`SIGN_GROUP` when
    /// every worker gets whole signing groups; none when a worker's log did not say).
    pub signatures_per_task: Option<f64>,
    /// With the event feed on: its records per message (frame) at the end of the run.
    pub feed_records_per_frame: Option<f64>,
    /// With the event feed on: how long after the last task finished the feed held the whole
    /// log (an upper bound: it is polled), in ms. CPU is read after it.
    pub feed_behind_ms: Option<f64>,
}

/// Most targets (so tasks) per deployment.
const MAX_TARGETS: usize = 1000;

/// Runs `tasks` tasks of `action` (rounded up to whole deployments) on a fresh installation.
///
/// # Errors
/// A part did not come up, or not every task succeeded in time.
pub async fn run(layout: Layout, tasks: usize, action: Value) -> anyhow::Result<Outcome> {
    run_on(Broker::Single, layout, tasks, action).await
}

/// [`run`] on the given broker.
///
/// # Errors
/// As [`run`].
pub async fn run_on(
    broker: Broker,
    layout: Layout,
    tasks: usize,
    action: Value,
) -> anyhow::Result<Outcome> {
    let shoal = Shoal::start_on(broker, layout).await?;
    let observer = Observer::start(&shoal.nats_url()).await?;
    let targets = tasks.clamp(layout.pools.max(1), MAX_TARGETS);
    shoal.targets(targets).await?;
    let deployments = tasks.div_ceil(targets);
    let n = deployments * targets;
    let body = over_targets(&action);
    let start = Timestamp::now_micros();
    let ids: Vec<anyhow::Result<String>> = futures::stream::iter(0..deployments)
        .map(|_| Shoal::deploy(&shoal.api, &body))
        .buffered(4)
        .collect()
        .await;
    let ids = ids.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let timeout = Duration::from_secs(120) + Duration::from_millis(5 * n as u64);
    observer.wait_finished(n, timeout).await?;
    shoal.wait_ingested(Duration::from_secs(120)).await?;
    let feed = if layout.feed {
        let (frames, records) = shoal.wait_feed(Duration::from_secs(120)).await?;
        Some(FeedFigures {
            frames,
            records,
            done_us: Timestamp::now_micros(),
        })
    } else {
        None
    };
    let rss = shoal.planner_rss_mib();
    #[expect(clippy::cast_precision_loss, reason = "a measurement")]
    let per_task = |seconds: f64| round(seconds * 1e6 / n as f64);
    let cpu = shoal.cpu_seconds();
    let cpu_us_per_task = per_task(cpu.total());
    let cpu_us_per_task_by_part = cpu.map(per_task);
    let (schedule_to_start, missing) = observer.schedule_to_start_ms(0);
    drop(observer);
    let facts = shoal.stop().await.context("stopping the installation")?;
    facts.ensure_all_succeeded(n, ids.len())?;
    if missing > 0 {
        eprintln!("note: {missing} tasks lack a wire timestamp (observer)");
    }
    let end = facts.last_finished_us();
    Ok(Outcome {
        params: Params {
            tasks: n,
            pools: layout.pools,
            workers: layout.workers,
            slots_per_worker: layout.slots,
            targets,
            deployments,
            action,
        },
        tasks_per_s: per_second(n as u64, end - start),
        seconds: us_to_ms(end - start) / 1000.0,
        schedule_to_start: Latency::of(schedule_to_start),
        end_to_end: Latency::of(facts.end_to_end_ms(0)),
        tasks_succeeded: facts.succeeded(),
        events_in_log: facts.events,
        planner_rss_mib: rss,
        cpu_us_per_task,
        cpu_us_per_task_by_part,
        signatures_per_task: facts.signatures_per_task(n),
        feed_records_per_frame: feed.map(|f| {
            #[expect(clippy::cast_precision_loss, reason = "a ratio")]
            let ratio = f.records as f64 / f.frames.max(1) as f64;
            round(ratio)
        }),
        feed_behind_ms: feed.map(|f| us_to_ms(f.done_us.saturating_sub(end).max(0))),
    })
}

/// The event feed at the end of a run: its frames, the records they hold, and when it was
/// seen to hold the whole log.
#[derive(Debug, Clone, Copy)]
struct FeedFigures {
    frames: u64,
    records: u64,
    done_us: i64,
}

/// Which side of an on/off comparison goes first in round `r`: off first in even rounds, on
/// first in odd ones, so that a machine that warms up or gets busier favours neither.
pub fn sides(r: usize) -> [bool; 2] {
    if r.is_multiple_of(2) {
        [false, true]
    } else {
        [true, false]
    }
}

/// [`run`] with no-op steps, failing unless every task succeeded.
///
/// # Errors
/// As [`run`], or a task did not succeed.
pub async fn noop(layout: Layout, tasks: usize) -> anyhow::Result<Outcome> {
    noop_on(Broker::Single, layout, tasks).await
}

/// [`noop`] on the given broker.
///
/// # Errors
/// As [`run`], or a task did not succeed.
pub async fn noop_on(broker: Broker, layout: Layout, tasks: usize) -> anyhow::Result<Outcome> {
    let o = run_on(broker, layout, tasks, serde_json::json!({"type": "noop"})).await?;
    anyhow::ensure!(
        o.tasks_succeeded == o.params.tasks,
        "only {} of {} no-op tasks succeeded",
        o.tasks_succeeded,
        o.params.tasks
    );
    Ok(o)
}
