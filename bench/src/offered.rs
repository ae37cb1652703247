//! Scenario 4: latency under an offered load. One-task deployments are submitted over HTTP at
//! a fixed rate (each request sent on its tick, whether or not earlier ones were answered),
//! after a warm-up at the same rate that is not counted.

use crate::stats::{Latency, per_second, round};
use crate::system::{Broker, Layout, Observer, Shoal, pool};
use anyhow::Context as _;
use serde::Serialize;
use serde_json::json;
use shoal_shared::Timestamp;
use std::time::Duration;

/// Parameters of the offered-load run.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub rate_per_s: u32,
    pub seconds: f64,
    pub warmup_seconds: f64,
    pub pools: usize,
    pub workers: usize,
    pub slots_per_worker: u32,
    /// 1: every task is a deployment of its own (the harshest shape); more: deployments of
    /// that many tasks, submitted at rate / tasks_per_deployment a second.
    pub tasks_per_deployment: u32,
}

/// What it measured (tasks planned after the warm-up).
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub params: Params,
    pub tasks: usize,
    pub measured_tasks: usize,
    pub achieved_submit_rate_per_s: f64,
    pub schedule_to_start: Latency,
    /// The first part of schedule-to-start: planned → the task message on the broker.
    pub planned_to_queued: Latency,
    /// The second part: on the broker → the worker's `TaskStarted` report.
    pub queued_to_started: Latency,
    pub end_to_end: Latency,
    pub planner_rss_mib: Option<f64>,
    /// CPU time of broker, planner and workers per task, in µs, from the first submission
    /// until the last report is taken (warm-up included, start-up not).
    pub cpu_us_per_task: f64,
    /// Ed25519 verifications the workers made per task (all tasks, warm-up included).
    pub signatures_per_task: Option<f64>,
    /// The event feed's lag: a record's time in the log (when it was decided, before its
    /// batch is flushed) → an integrator subscribed to `shoal.events.>` holds it, for the
    /// records of the measured part; none with the feed off.
    pub feed_lag: Option<Latency>,
}

/// Runs the offered load.
///
/// # Errors
/// A part did not come up, a submission failed, or not every task succeeded in time.
pub async fn run(
    layout: Layout,
    rate: u32,
    seconds: f64,
    warmup: f64,
    per_deployment: u32,
    trace: Option<&std::path::Path>,
) -> anyhow::Result<Outcome> {
    let load = Load {
        rate,
        seconds,
        warmup,
        per_deployment,
    };
    run_on(Broker::Single, layout, load, trace).await
}

/// An offered load: `rate` tasks a second for `seconds` after `warmup` seconds, in
/// deployments of `per_deployment` tasks.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub rate: u32,
    pub seconds: f64,
    pub warmup: f64,
    pub per_deployment: u32,
}

/// [`run`] on the given broker.
///
/// # Errors
/// As [`run`].
pub async fn run_on(
    broker: Broker,
    layout: Layout,
    load: Load,
    trace: Option<&std::path::Path>,
) -> anyhow::Result<Outcome> {
    let Load {
        rate,
        seconds,
        warmup,
        per_deployment,
    } = load;
    let shoal = Shoal::start_on(broker, layout).await?;
    let observer = Observer::start(&shoal.nats_url()).await?;
    let lag = if layout.feed {
        Some(crate::feed::Lag::start(&shoal.nats_url()).await?)
    } else {
        None
    };
    let per_deployment = per_deployment.max(1);
    // One task per deployment: a step that names no role (the environment must still exist,
    // so one target is registered). More: a step over that many targets, all in pool 0.
    shoal.targets(per_deployment as usize).await?;
    let body = if per_deployment == 1 {
        json!({"project": "bench", "environment": "bench",
            "steps": [{"name": "bench", "pool": pool(0), "action": {"type": "noop"}}]})
    } else {
        json!({"project": "bench", "environment": "bench",
            "steps": [{"name": "bench", "pool": pool(0), "roles": ["bench"],
                       "action": {"type": "noop"}}]})
    };
    // Deployments per second, so that tasks arrive at `rate` a second.
    let rate_d = (rate / per_deployment).max(1);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "small positive counts"
    )]
    let (total, warm) = (
        (f64::from(rate_d) * (seconds + warmup)).round() as usize,
        (f64::from(rate_d) * warmup).round() as usize,
    );
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate_d)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut submitted = Vec::with_capacity(total);
    let cpu_before = shoal.cpu_seconds().total();
    let start = Timestamp::now_micros();
    let mut measured_from = start;
    for i in 0..total {
        tick.tick().await;
        if i == warm {
            measured_from = Timestamp::now_micros();
        }
        let api = shoal.api.clone();
        let body = body.clone();
        submitted.push(tokio::spawn(
            async move { Shoal::deploy(&api, &body).await },
        ));
    }
    let submit_end = Timestamp::now_micros();
    let deployments = total;
    let total = deployments * per_deployment as usize;
    let mut ids = Vec::with_capacity(total);
    for s in submitted {
        ids.push(s.await.context("submission task")??);
    }
    observer
        .wait_finished(total, Duration::from_secs(120))
        .await?;
    shoal.wait_ingested(Duration::from_secs(120)).await?;
    let rss = shoal.planner_rss_mib();
    #[expect(clippy::cast_precision_loss, reason = "a measurement")]
    let cpu_us_per_task = round((shoal.cpu_seconds().total() - cpu_before) * 1e6 / total as f64);
    let (s2s, missing) = observer.schedule_to_start_ms(measured_from);
    let (to_queue, to_start) = observer.phases_ms(measured_from);
    if let Some(path) = trace {
        let mut path = path.as_os_str().to_owned();
        path.push(format!(".{per_deployment}"));
        observer
            .write_trace(std::path::Path::new(&path), measured_from)
            .context("writing the trace")?;
    }
    drop(observer);
    let feed_lag = lag.map(|l| l.latency(measured_from / 1000));
    let facts = shoal.stop().await?;
    facts.ensure_all_succeeded(total, ids.len())?;
    if missing > 0 {
        eprintln!("note: {missing} tasks lack a wire timestamp (observer)");
    }
    Ok(Outcome {
        params: Params {
            rate_per_s: rate,
            seconds,
            warmup_seconds: warmup,
            pools: layout.pools,
            workers: layout.workers,
            slots_per_worker: layout.slots,
            tasks_per_deployment: per_deployment,
        },
        tasks: total,
        measured_tasks: s2s.len(),
        achieved_submit_rate_per_s: per_second(total as u64, submit_end - start),
        schedule_to_start: Latency::of(s2s),
        planned_to_queued: Latency::of(to_queue),
        queued_to_started: Latency::of(to_start),
        end_to_end: Latency::of(facts.end_to_end_ms(measured_from)),
        planner_rss_mib: rss,
        cpu_us_per_task,
        signatures_per_task: facts.signatures_per_task(total),
        feed_lag,
    })
}
