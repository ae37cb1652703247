//! Scenario 9: what the event feed costs and how far it lags. The no-op throughput run
//! (scenario 2) with the feed on (the default) and off (`--no-event-feed`), alternating
//! which goes first each round; and under the offered load of scenario 4, the feed's lag:
//! from a record's time in the log to an integrator holding it (a core subscription on
//! `shoal.events.>`, which sees each record as JetStream stores it).

use crate::offered;
use crate::stats::{Latency, median, round};
use crate::system::Layout;
use crate::throughput;
use futures::StreamExt as _;
use serde::Serialize;
use shoal_shared::api::EventView;
use std::sync::{Arc, Mutex};

/// Listens to the feed: each record's time in the log and when it arrived (ms).
pub struct Lag {
    seen: Arc<Mutex<Vec<(i64, f64)>>>,
    task: tokio::task::JoinHandle<()>,
    _client: async_nats::Client,
}

impl Lag {
    /// Subscribes to the whole feed on `url`.
    ///
    /// # Errors
    /// The broker is unreachable.
    pub async fn start(url: &str) -> anyhow::Result<Lag> {
        let client = shoal_cli::local::trust::admin_options(url)?
            .subscription_capacity(1 << 20)
            .connect(url)
            .await?;
        let mut sub = client.subscribe("shoal.events.>").await?;
        client.flush().await?;
        let seen: Arc<Mutex<Vec<(i64, f64)>>> = Arc::default();
        let s = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                #[expect(clippy::cast_precision_loss, reason = "a measurement")]
                let now_ms = shoal_shared::Timestamp::now_micros() as f64 / 1000.0;
                // A frame: its records as JSON lines.
                let times = msg
                    .payload
                    .split(|b| *b == b'\n')
                    .filter_map(|line| serde_json::from_slice::<EventView>(line).ok())
                    .map(|v| (v.time.millis(), now_ms));
                if let Ok(mut seen) = s.lock() {
                    seen.extend(times);
                }
            }
        });
        Ok(Lag {
            seen,
            task,
            _client: client,
        })
    }

    /// The lag of the records logged from `from_ms` on.
    pub fn latency(self, from_ms: i64) -> Latency {
        self.task.abort();
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        #[expect(clippy::cast_precision_loss, reason = "a measurement")]
        let lags = seen
            .into_iter()
            .filter(|(t, _)| *t >= from_ms)
            .map(|(t, at)| (at - t as f64).max(0.0))
            .collect();
        Latency::of(lags)
    }
}

/// Sizes of the scenario.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Params {
    pub rounds: usize,
    pub noop_tasks: usize,
    pub offered_rate_per_s: u32,
    pub offered_seconds: f64,
    pub offered_warmup_seconds: f64,
}

/// What the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub params: Params,
    pub on_tasks_per_s: Vec<f64>,
    pub off_tasks_per_s: Vec<f64>,
    /// Feed on, counting until the feed held the whole log (not only until the last task
    /// finished): the throughput the feed really costs.
    pub on_with_feed_done_tasks_per_s: Vec<f64>,
    pub on_cpu_us_per_task: Vec<f64>,
    pub off_cpu_us_per_task: Vec<f64>,
    pub on_cpu_us_per_task_by_part: Vec<crate::system::CpuByPart>,
    pub off_cpu_us_per_task_by_part: Vec<crate::system::CpuByPart>,
    /// Records per feed message (frame) at the end of each on run.
    pub records_per_frame: Vec<f64>,
    /// How long after the last task finished the feed held the whole log, each on run (ms).
    pub feed_behind_ms: Vec<f64>,
    /// Feed on as a fraction of feed off, per round, and the median of those.
    pub throughput_ratio_by_round: Vec<f64>,
    pub throughput_ratio: f64,
    /// On (until the feed was done) as a fraction of off, per round, and their median.
    pub with_feed_done_ratio_by_round: Vec<f64>,
    pub with_feed_done_ratio: f64,
    pub cpu_ratio_by_round: Vec<f64>,
    pub cpu_ratio: f64,
    /// The feed's lag under the offered load, each round.
    pub lag: Vec<Latency>,
    pub lag_p50_ms_median: f64,
    pub lag_p99_ms_median: f64,
    pub schedule_to_start_p50_ms: Vec<f64>,
}

/// Runs both sides `params.rounds` times, and the offered load with the feed on each round.
///
/// # Errors
/// A run failed (a part did not come up, or not every task succeeded).
pub async fn run(
    layout: Layout,
    offered_layout: Layout,
    params: Params,
) -> anyhow::Result<Outcome> {
    let mut o = Outcome {
        params,
        on_tasks_per_s: vec![],
        off_tasks_per_s: vec![],
        on_with_feed_done_tasks_per_s: vec![],
        on_cpu_us_per_task: vec![],
        off_cpu_us_per_task: vec![],
        on_cpu_us_per_task_by_part: vec![],
        off_cpu_us_per_task_by_part: vec![],
        records_per_frame: vec![],
        feed_behind_ms: vec![],
        throughput_ratio_by_round: vec![],
        throughput_ratio: 0.0,
        with_feed_done_ratio_by_round: vec![],
        with_feed_done_ratio: 0.0,
        cpu_ratio_by_round: vec![],
        cpu_ratio: 0.0,
        lag: vec![],
        lag_p50_ms_median: 0.0,
        lag_p99_ms_median: 0.0,
        schedule_to_start_p50_ms: vec![],
    };
    for r in 0..params.rounds {
        for feed in throughput::sides(r) {
            eprintln!(
                "[9] event feed {}: round {} of {} …",
                if feed { "on" } else { "off" },
                r + 1,
                params.rounds
            );
            let t = throughput::noop(Layout { feed, ..layout }, params.noop_tasks).await?;
            let (rate, cpu, part) = if feed {
                let behind = t.feed_behind_ms.unwrap_or(0.0);
                #[expect(clippy::cast_precision_loss, reason = "a rate")]
                let done = t.params.tasks as f64 / (t.seconds + behind / 1000.0).max(1e-6);
                o.on_with_feed_done_tasks_per_s.push(round(done));
                o.records_per_frame
                    .push(t.feed_records_per_frame.unwrap_or(0.0));
                o.feed_behind_ms.push(round(behind));
                (
                    &mut o.on_tasks_per_s,
                    &mut o.on_cpu_us_per_task,
                    &mut o.on_cpu_us_per_task_by_part,
                )
            } else {
                (
                    &mut o.off_tasks_per_s,
                    &mut o.off_cpu_us_per_task,
                    &mut o.off_cpu_us_per_task_by_part,
                )
            };
            rate.push(round(t.tasks_per_s));
            cpu.push(t.cpu_us_per_task);
            part.push(t.cpu_us_per_task_by_part);
        }
        let l = offered::run(
            Layout {
                feed: true,
                ..offered_layout
            },
            params.offered_rate_per_s,
            params.offered_seconds,
            params.offered_warmup_seconds,
            1,
            None,
        )
        .await?;
        o.schedule_to_start_p50_ms
            .push(round(l.schedule_to_start.p50_ms));
        o.lag.push(l.feed_lag.unwrap_or_default());
    }
    let ratios = |a: &[f64], b: &[f64]| -> Vec<f64> {
        a.iter()
            .zip(b)
            .map(|(a, b)| round(if *b > 0.0 { a / b } else { 0.0 }))
            .collect()
    };
    o.throughput_ratio_by_round = ratios(&o.on_tasks_per_s, &o.off_tasks_per_s);
    o.throughput_ratio = median(&o.throughput_ratio_by_round);
    o.with_feed_done_ratio_by_round = ratios(&o.on_with_feed_done_tasks_per_s, &o.off_tasks_per_s);
    o.with_feed_done_ratio = median(&o.with_feed_done_ratio_by_round);
    o.cpu_ratio_by_round = ratios(&o.on_cpu_us_per_task, &o.off_cpu_us_per_task);
    o.cpu_ratio = median(&o.cpu_ratio_by_round);
    o.lag_p50_ms_median = round(median(&o.lag.iter().map(|l| l.p50_ms).collect::<Vec<_>>()));
    o.lag_p99_ms_median = round(median(&o.lag.iter().map(|l| l.p99_ms).collect::<Vec<_>>()));
    Ok(o)
}
