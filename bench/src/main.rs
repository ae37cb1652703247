//! `shoal-bench`: measures shoal against a raw JetStream loop on the same broker, and its
//! event log and memory. Every scenario starts its own nats-server on a free port with a
//! temp store dir (scenario 10 also a 3-node cluster of them) and real `shoal-planner` /
//! `shoal-worker` processes; results are printed as a table and written as JSON. See
//! `docs/BENCHMARKS.md`.
#![forbid(unsafe_code)]

mod cluster;
mod eventlog;
mod feed;
mod machine;
mod offered;
mod packages;
mod raw;
mod signing;
mod stats;
mod system;
mod throughput;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL};
use serde_json::{Value, json};
use shoal_cli::local::Nats;
use stats::{Latency, median, round};
use std::path::PathBuf;
use system::Layout;

/// The planner's allocator: the event-log scenario runs the planner's writer and replay in
/// this process, and must measure them as the planner runs them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Benchmarks of shoal: dispatch throughput and latency against raw JetStream, the event
/// log, replay, and memory.
#[derive(Debug, Parser)]
#[command(name = "shoal-bench", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Every scenario, in order.
    All(Opts),
    /// 1. The raw JetStream loop (the floor).
    Raw(Opts),
    /// 2. shoal end to end with no-op steps (runs the raw loop too, for the ratio).
    Noop(Opts),
    /// 3. shoal end to end with script steps (`bash`, script `true`).
    Script(Opts),
    /// 4. Schedule-to-start under a fixed offered load.
    Offered(Opts),
    /// 5. Event-log append and replay throughput, planner memory.
    Log(Opts),
    /// 6. Tasks/s over 1, 10 and 100 pools and 1, 4 and 16 workers.
    Scale(Opts),
    /// 7. What signing costs: no-op throughput and schedule-to-start, signing on and off.
    Signing(Opts),
    /// 8. One package to 20 targets through 2 workers, next to the push model and to a
    ///    whole-file download per task.
    Packages(Opts),
    /// 9. What the event feed costs (no-op throughput, feed on and off) and its lag under
    ///    the offered load.
    Feed(Opts),
    /// 10. What a 3-node JetStream cluster (every stream R3) costs next to a single server:
    ///     no-op throughput and schedule-to-start under the offered load, on both.
    Cluster(Opts),
}

#[derive(Debug, Clone, clap::Args)]
struct Opts {
    /// Small sizes: a smoke test that finishes in seconds (figures are not meaningful).
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Tasks of the no-op run (and messages of the raw loop).
    #[arg(long)]
    tasks: Option<usize>,
    /// Workers of the raw loop and the no-op and script runs.
    #[arg(long)]
    workers: Option<usize>,
    /// Pools of the raw loop and the no-op and script runs.
    #[arg(long)]
    pools: Option<usize>,
    /// Slots per worker (messages in hand per raw consumer).
    #[arg(long)]
    slots: Option<u32>,
    /// Offered load, tasks per second.
    #[arg(long)]
    rate: Option<u32>,
    /// Events appended by the event-log scenario.
    #[arg(long)]
    events: Option<u64>,
    /// Offered load: also write every measured task's times as CSV to FILE.1 (one-task
    /// deployments) and FILE.10, for a look at where the tail comes from.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Rounds of the signing scenario (each runs both sides).
    #[arg(long)]
    rounds: Option<usize>,
    /// Size of the packages scenario's package, in MiB.
    #[arg(long)]
    package_mb: Option<usize>,
}

/// Sizes of one run.
struct Sizes {
    tasks: usize,
    script_tasks: usize,
    layout: Layout,
    rate: u32,
    offered_seconds: f64,
    warmup_seconds: f64,
    offered_layout: Layout,
    events: u64,
    scale_tasks: usize,
    scale: Vec<(usize, usize)>,
    /// No-op tasks of each side of scenario 10.
    cluster_tasks: usize,
}

impl Sizes {
    fn of(o: &Opts) -> Sizes {
        let layout = Layout {
            pools: o.pools.unwrap_or(4),
            workers: o.workers.unwrap_or(4),
            slots: o.slots.unwrap_or(64),
            signing: true,
            feed: true,
        };
        if o.quick {
            Sizes {
                tasks: o.tasks.unwrap_or(400),
                script_tasks: 20,
                layout: Layout {
                    pools: o.pools.unwrap_or(2),
                    workers: o.workers.unwrap_or(2),
                    slots: o.slots.unwrap_or(16),
                    signing: true,
                    feed: true,
                },
                rate: o.rate.unwrap_or(200),
                offered_seconds: 1.0,
                warmup_seconds: 0.2,
                offered_layout: Layout {
                    pools: 1,
                    workers: 1,
                    slots: 16,
                    signing: true,
                    feed: true,
                },
                events: o.events.unwrap_or(8_000),
                scale_tasks: 100,
                scale: vec![(1, 1), (2, 2)],
                cluster_tasks: o.tasks.unwrap_or(400),
            }
        } else {
            Sizes {
                tasks: o.tasks.unwrap_or(100_000),
                script_tasks: 2_000,
                layout,
                rate: o.rate.unwrap_or(1_000),
                offered_seconds: 10.0,
                warmup_seconds: 1.0,
                offered_layout: Layout {
                    pools: 1,
                    workers: 4,
                    slots: 16,
                    signing: true,
                    feed: true,
                },
                events: o.events.unwrap_or(1_000_000),
                scale_tasks: 20_000,
                scale: vec![(1, 1), (1, 4), (1, 16), (10, 16), (100, 100)],
                cluster_tasks: o.tasks.unwrap_or(20_000),
            }
        }
    }
}

/// The results of one run: JSON fields and table rows.
#[derive(Default)]
struct Results {
    json: serde_json::Map<String, Value>,
    rows: Vec<[String; 3]>,
    raw_rate: Option<f64>,
}

impl Results {
    fn set(&mut self, key: &str, v: impl serde::Serialize) {
        self.json.insert(
            key.to_owned(),
            serde_json::to_value(v).unwrap_or(Value::Null),
        );
    }

    fn row(&mut self, scenario: &str, params: String, figures: String) {
        self.rows.push([scenario.to_owned(), params, figures]);
    }
}

fn lat(l: &Latency) -> String {
    format!(
        "p50 {:.3} / p99 {:.3} / max {:.3} ms",
        l.p50_ms, l.p99_ms, l.max_ms
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (which, opts) = match &cli.scenario {
        Scenario::All(o) => ("all", o),
        Scenario::Raw(o) => ("raw", o),
        Scenario::Noop(o) => ("noop", o),
        Scenario::Script(o) => ("script", o),
        Scenario::Offered(o) => ("offered", o),
        Scenario::Log(o) => ("log", o),
        Scenario::Scale(o) => ("scale", o),
        Scenario::Signing(o) => ("signing", o),
        Scenario::Packages(o) => ("packages", o),
        Scenario::Feed(o) => ("feed", o),
        Scenario::Cluster(o) => ("cluster", o),
    };
    let sizes = Sizes::of(opts);
    let machine = machine::Machine::detect();
    eprintln!(
        "shoal-bench {which}{} on {} cores ({}), {}",
        if opts.quick { " --quick" } else { "" },
        machine.cores,
        machine.cpu_model,
        machine.nats_server
    );
    let mut r = Results::default();
    r.set("machine", &machine);
    r.set("quick", opts.quick);
    r.set("scenario", which);
    let run_all = which == "all";
    let mut expected = 0usize;
    let mut succeeded = 0usize;

    if run_all || which == "raw" || which == "noop" {
        eprintln!("[1] raw JetStream loop …");
        let dir = tempfile::Builder::new()
            .prefix("shoal-bench-raw-")
            .tempdir()?;
        let mut nats = Nats::start(dir.path()).await?;
        let l = sizes.layout;
        let raw = raw::run(
            &nats.url(),
            sizes.tasks,
            l.pools,
            l.workers,
            l.slots as usize,
        )
        .await
        .context("raw loop")?;
        nats.stop().await?;
        r.set("raw_loop_msgs_per_s", round(raw.msgs_per_s));
        r.raw_rate = Some(raw.msgs_per_s);
        r.row(
            "1 raw JetStream loop",
            format!(
                "{} msgs of {} B, {} pools, {} consumers × {} in hand",
                raw.params.messages,
                raw.params.task_message_bytes,
                raw.params.pools,
                raw.params.workers,
                raw.params.in_flight_per_worker
            ),
            format!(
                "{:.0} msgs/s\npublish→consumer {}\npublish→result consumed {}",
                raw.msgs_per_s,
                lat(&raw.publish_to_receive),
                lat(&raw.publish_to_result)
            ),
        );
        r.set("raw_loop", &raw);
    }
    if run_all || which == "noop" {
        eprintln!("[2] shoal end to end, no-op steps …");
        let o = throughput::run(sizes.layout, sizes.tasks, json!({"type": "noop"}))
            .await
            .context("no-op scenario")?;
        expected += o.params.tasks;
        succeeded += o.tasks_succeeded;
        r.set("noop_tasks_per_s", round(o.tasks_per_s));
        let ratio = r.raw_rate.map(|raw| round(o.tasks_per_s / raw));
        r.set("noop_ratio_to_raw", ratio);
        r.set("planner_rss_mb_after_100k_tasks", o.planner_rss_mib);
        r.row(
            "2 shoal, no-op steps",
            throughput_params(&o.params),
            format!(
                "{:.0} tasks/s ({} of raw)\nschedule-to-start {}\nend-to-end (log) {}\nplanner RSS {} MiB",
                o.tasks_per_s,
                ratio.map_or_else(|| "-".into(), |x| format!("{:.0}%", x * 100.0)),
                lat(&o.schedule_to_start),
                lat(&o.end_to_end),
                o.planner_rss_mib.unwrap_or(0.0)
            ),
        );
        r.set("noop", &o);
    }
    if run_all || which == "script" {
        eprintln!("[3] shoal end to end, script steps …");
        let o = throughput::run(
            sizes.layout,
            sizes.script_tasks,
            json!({"type": "script", "script": "true", "shell": "bash"}),
        )
        .await
        .context("script scenario")?;
        expected += o.params.tasks;
        succeeded += o.tasks_succeeded;
        r.set("script_tasks_per_s", round(o.tasks_per_s));
        r.row(
            "3 shoal, script steps",
            throughput_params(&o.params),
            format!(
                "{:.0} tasks/s\nschedule-to-start {}\nend-to-end (log) {}",
                o.tasks_per_s,
                lat(&o.schedule_to_start),
                lat(&o.end_to_end)
            ),
        );
        r.set("script", &o);
    }
    if run_all || which == "offered" {
        eprintln!("[4] latency under offered load …");
        // One-task deployments (the harshest shape, and the required JSON fields), then the
        // same task rate in deployments of 10 tasks: what a submission's shape costs.
        for per_deployment in [1, 10] {
            let o = offered::run(
                sizes.offered_layout,
                sizes.rate,
                sizes.offered_seconds,
                sizes.warmup_seconds,
                per_deployment,
                opts.trace.as_deref(),
            )
            .await
            .with_context(|| {
                format!("offered-load scenario, deployments of {per_deployment} tasks")
            })?;
            expected += o.tasks;
            succeeded += o.tasks;
            let load = if per_deployment == 1 {
                format!("{}/s", o.params.rate_per_s)
            } else {
                format!(
                    "{}/s tasks as {}/s deployments of {per_deployment} targets",
                    o.params.rate_per_s,
                    o.params.rate_per_s / per_deployment
                )
            };
            let shape = if per_deployment == 1 {
                ", one-task deployments over HTTP"
            } else {
                ""
            };
            r.row(
                "4 offered load",
                format!(
                    "{load} for {} s (+{} s warm-up){shape}, {} pool, {} workers × {} slots",
                    o.params.seconds,
                    o.params.warmup_seconds,
                    o.params.pools,
                    o.params.workers,
                    o.params.slots_per_worker
                ),
                format!(
                    "submitted at {:.0} tasks/s, {} tasks measured\nschedule-to-start {}\n  planned → on the broker {}\n  on the broker → started {}\nend-to-end (log) {}",
                    o.achieved_submit_rate_per_s,
                    o.measured_tasks,
                    lat(&o.schedule_to_start),
                    lat(&o.planned_to_queued),
                    lat(&o.queued_to_started),
                    lat(&o.end_to_end)
                ),
            );
            if per_deployment == 1 {
                r.set(
                    "schedule_to_start_p50_ms",
                    round(o.schedule_to_start.p50_ms),
                );
                r.set(
                    "schedule_to_start_p99_ms",
                    round(o.schedule_to_start.p99_ms),
                );
                r.set("offered_load", &o);
            } else {
                r.set("offered_load_in_deployments_of_10", &o);
            }
        }
    }
    if run_all || which == "log" {
        eprintln!("[5] event log …");
        let o = eventlog::run(sizes.events)
            .await
            .context("event-log scenario")?;
        r.set("append_events_per_s", round(o.append_events_per_s));
        r.set("replay_events_per_s", round(o.replay_events_per_s));
        r.set("planner_rss_mb_after_1m_events", o.planner_rss_mib);
        r.row(
            "5 event log",
            format!(
                "{} events ({} no-op tasks in deployments of {}), group commit, flush per batch",
                o.params.events, o.params.tasks, o.params.tasks_per_deployment
            ),
            format!(
                "append {:.0} events/s\nreplay {:.0} events/s ({:.1} s)\nread+verify+apply only {:.0} events/s\nplanner RSS on this log {} MiB\nlog on disk {} MiB",
                o.append_events_per_s,
                o.replay_events_per_s,
                o.replay_seconds,
                o.fold_events_per_s,
                o.planner_rss_mib.unwrap_or(0.0),
                o.log_disk_mib
            ),
        );
        r.set("event_log", &o);
    }
    if run_all || which == "scale" {
        let mut runs = Vec::new();
        for (pools, workers) in &sizes.scale {
            eprintln!("[6] scale: {pools} pools, {workers} workers …");
            let layout = Layout {
                pools: *pools,
                workers: *workers,
                slots: sizes.layout.slots,
                signing: true,
                feed: true,
            };
            let o = throughput::run(layout, sizes.scale_tasks, json!({"type": "noop"}))
                .await
                .with_context(|| format!("scale scenario ({pools} pools, {workers} workers)"))?;
            expected += o.params.tasks;
            succeeded += o.tasks_succeeded;
            r.row(
                "6 scale",
                throughput_params(&o.params),
                format!(
                    "{:.0} tasks/s\nschedule-to-start {}",
                    o.tasks_per_s,
                    lat(&o.schedule_to_start)
                ),
            );
            runs.push(o);
        }
        r.set(
            "scale_tasks_per_s",
            runs.iter()
                .map(|o| {
                    json!({"pools": o.params.pools, "workers": o.params.workers,
                           "tasks_per_s": round(o.tasks_per_s)})
                })
                .collect::<Vec<_>>(),
        );
        r.set("scale", &runs);
    }
    if run_all || which == "signing" {
        let o = signing_scenario(opts, &sizes).await?;
        r.row(
            "7 signing on / off",
            format!(
                "{} rounds, each: {} no-op tasks ({} pools, {} workers × {} slots), then {}/s one-task deployments for {} s",
                o.params.rounds,
                o.params.noop_tasks,
                o.params.pools,
                o.params.workers,
                o.params.slots_per_worker,
                o.params.offered_rate_per_s,
                o.params.offered_seconds
            ),
            format!(
                "no-op: {:.0} tasks/s signed, {:.0} unsigned ({:.1}% cost; paired by round {:.1}%)
CPU per no-op task (broker, planner, workers): {:.0} µs signed, {:.0} unsigned ({:.1}% cost; paired by round {:.1}%)
  by part, broker / planner / workers: {:.0} / {:.0} / {:.0} µs signed, {:.0} / {:.0} / {:.0} unsigned
Ed25519 verifications per task by the workers, each round: no-op {}, offered {}
schedule-to-start p50 {:.3} vs {:.3} ms, p99 {:.3} vs {:.3} ms (paired by round: p50 {:+.1}%, p99 {:+.1}%)
CPU per one-task deployment (offered load), paired by round: {:+.1}%
one signature {:.1} µs, one verification of a root not seen before {:.1} µs ({} B message); in groups of {}: {:.1} / {:.1} µs a message",
                o.signed.noop_tasks_per_s_median,
                o.unsigned.noop_tasks_per_s_median,
                (1.0 - o.throughput_ratio) * 100.0,
                (1.0 - o.paired.noop_tasks_per_s_median) * 100.0,
                o.signed.noop_cpu_us_per_task_median,
                o.unsigned.noop_cpu_us_per_task_median,
                (o.cpu_per_task_ratio - 1.0) * 100.0,
                (o.paired.noop_cpu_us_per_task_median - 1.0) * 100.0,
                o.signed.noop_cpu_us_per_task_by_part_median.broker,
                o.signed.noop_cpu_us_per_task_by_part_median.planner,
                o.signed.noop_cpu_us_per_task_by_part_median.workers,
                o.unsigned.noop_cpu_us_per_task_by_part_median.broker,
                o.unsigned.noop_cpu_us_per_task_by_part_median.planner,
                o.unsigned.noop_cpu_us_per_task_by_part_median.workers,
                known(&o.signed.noop_signatures_per_task),
                known(&o.signed.offered_signatures_per_task),
                o.signed.schedule_to_start_p50_ms_median,
                o.unsigned.schedule_to_start_p50_ms_median,
                o.signed.schedule_to_start_p99_ms_median,
                o.unsigned.schedule_to_start_p99_ms_median,
                (o.paired.schedule_to_start_p50_median - 1.0) * 100.0,
                (o.paired.schedule_to_start_p99_median - 1.0) * 100.0,
                (o.paired.offered_cpu_us_per_task_median - 1.0) * 100.0,
                o.micro.sign_us,
                o.micro.verify_us,
                o.micro.payload_bytes,
                shoal_planner::signing::SIGN_GROUP,
                o.micro.group_sign_us_per_message,
                o.micro.group_verify_us_per_message
            ),
        );
        r.set("signing_throughput_ratio", o.throughput_ratio);
        r.set("signing_cpu_per_task_ratio", o.cpu_per_task_ratio);
        r.set(
            "signing_paired_throughput_ratio",
            o.paired.noop_tasks_per_s_median,
        );
        r.set(
            "signing_paired_cpu_per_task_ratio",
            o.paired.noop_cpu_us_per_task_median,
        );
        r.set("signing", &o);
    }
    if run_all || which == "packages" {
        let mb = opts.package_mb.unwrap_or(if opts.quick { 2 } else { 50 });
        eprintln!("[8] packages: {mb} MiB to 20 targets …");
        let o = packages::run(mb * 1024 * 1024)
            .await
            .context("packages scenario")?;
        packages_row(&mut r, &o);
        r.set("packages", &o);
    }
    if run_all || which == "feed" {
        let params = feed::Params {
            rounds: opts.rounds.unwrap_or(if opts.quick { 1 } else { 3 }),
            noop_tasks: sizes.tasks,
            offered_rate_per_s: sizes.rate,
            offered_seconds: sizes.offered_seconds,
            offered_warmup_seconds: sizes.warmup_seconds,
        };
        let o = feed::run(sizes.layout, sizes.offered_layout, params)
            .await
            .context("feed scenario")?;
        r.row(
            "9 event feed",
            format!(
                "{} no-op tasks, feed on and off, {} rounds; {}/s one-task deployments for {} s",
                o.params.noop_tasks,
                o.params.rounds,
                o.params.offered_rate_per_s,
                o.params.offered_seconds
            ),
            format!(
                "no-op throughput, feed on / off by round: {:?} (median {:.3}, cost {:.1}%)\n  counting until the feed held the whole log: {:?} (median {:.3}, cost {:.1}%; the feed was done {:?} ms after the last task)\nCPU per no-op task, on / off by round: {:?} (median {:.3})\n  by part, broker / planner / workers (medians): {} µs on, {} µs off\nrecords per feed message (frame), by round: {:?}\nlag (record's time → integrator holds it) p50 {:.1} ms, p99 {:.1} ms (medians over rounds)",
                o.throughput_ratio_by_round,
                o.throughput_ratio,
                (1.0 - o.throughput_ratio) * 100.0,
                o.with_feed_done_ratio_by_round,
                o.with_feed_done_ratio,
                (1.0 - o.with_feed_done_ratio) * 100.0,
                o.feed_behind_ms,
                o.cpu_ratio_by_round,
                o.cpu_ratio,
                parts_median(&o.on_cpu_us_per_task_by_part),
                parts_median(&o.off_cpu_us_per_task_by_part),
                o.records_per_frame,
                o.lag_p50_ms_median,
                o.lag_p99_ms_median
            ),
        );
        r.set("feed_throughput_ratio", o.throughput_ratio);
        r.set("feed_with_feed_done_ratio", o.with_feed_done_ratio);
        r.set("feed_lag_p50_ms", o.lag_p50_ms_median);
        r.set("feed_lag_p99_ms", o.lag_p99_ms_median);
        r.set("feed", &o);
    }
    if run_all || which == "cluster" {
        let params = cluster::Params {
            rounds: opts.rounds.unwrap_or(if opts.quick { 1 } else { 2 }),
            nodes: cluster::NODES,
            noop_tasks: sizes.cluster_tasks,
            // Three nodes on this 2-core machine saturate at scenario 4's 1,000/s (one round
            // measured 5 s of queueing): 300/s compares latency, not saturation.
            offered_rate_per_s: opts
                .rate
                .unwrap_or(if opts.quick { sizes.rate } else { 300 }),
            offered_seconds: sizes.offered_seconds,
            offered_warmup_seconds: sizes.warmup_seconds,
        };
        let o = cluster::run(sizes.layout, sizes.offered_layout, params)
            .await
            .context("cluster scenario")?;
        let per_round = |xs: &[f64]| {
            xs.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        r.row(
            "10 R3 cluster / single server",
            format!(
                "{} rounds, each on both: {} no-op tasks ({} pools, {} workers × {} slots), then {}/s one-task deployments for {} s; a cluster of {} nodes on this machine",
                o.params.rounds,
                o.params.noop_tasks,
                sizes.layout.pools,
                sizes.layout.workers,
                sizes.layout.slots,
                o.params.offered_rate_per_s,
                o.params.offered_seconds,
                o.params.nodes
            ),
            format!(
                "no-op: {} tasks/s R3, {} single by round ({:.1}% cost)
CPU per no-op task: {} µs R3, {} single (broker {} / {})
schedule-to-start p50 {:.3} vs {:.3} ms, p99 {:.3} vs {:.3} ms
  planned → on the broker p50 {:.3} vs {:.3} ms",
                per_round(&o.cluster.noop_tasks_per_s),
                per_round(&o.single.noop_tasks_per_s),
                (1.0 - o.throughput_ratio) * 100.0,
                per_round(&o.cluster.noop_cpu_us_per_task),
                per_round(&o.single.noop_cpu_us_per_task),
                per_round(&o.cluster.noop_broker_cpu_us_per_task),
                per_round(&o.single.noop_broker_cpu_us_per_task),
                o.schedule_to_start_p50_ms[1],
                o.schedule_to_start_p50_ms[0],
                o.schedule_to_start_p99_ms[1],
                o.schedule_to_start_p99_ms[0],
                o.planned_to_queued_p50_ms[1],
                o.planned_to_queued_p50_ms[0],
            ),
        );
        r.set("cluster_throughput_ratio", o.throughput_ratio);
        r.set("cluster_cpu_per_task_ratio", o.cpu_per_task_ratio);
        r.set(
            "cluster_schedule_to_start_p50_ms",
            o.schedule_to_start_p50_ms,
        );
        r.set(
            "cluster_schedule_to_start_p99_ms",
            o.schedule_to_start_p99_ms,
        );
        r.set("cluster", &o);
    }
    r.set("tasks_expected", expected);
    r.set("tasks_finished", succeeded);
    r.set("all_tasks_finished", expected == succeeded);

    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL)
        .set_header(vec!["scenario", "parameters", "result"]);
    for row in &r.rows {
        table.add_row(row.to_vec());
    }
    println!("{table}");
    let text = serde_json::to_string_pretty(&Value::Object(r.json))?;
    if let Some(path) = &opts.json {
        std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    anyhow::ensure!(
        expected == succeeded,
        "only {succeeded} of {expected} tasks finished"
    );
    Ok(())
}

/// Figures of each round, `?` for one not known.
fn known(figures: &[Option<f64>]) -> String {
    let each: Vec<String> = figures
        .iter()
        .map(|f| f.map_or_else(|| "?".to_owned(), |f| f.to_string()))
        .collect();
    each.join(" / ")
}

async fn signing_scenario(opts: &Opts, sizes: &Sizes) -> anyhow::Result<signing::Outcome> {
    let params = signing::Params {
        rounds: opts.rounds.unwrap_or(if opts.quick { 1 } else { 3 }),
        noop_tasks: sizes.tasks,
        pools: sizes.layout.pools,
        workers: sizes.layout.workers,
        slots_per_worker: sizes.layout.slots,
        offered_rate_per_s: sizes.rate,
        offered_seconds: sizes.offered_seconds,
        offered_warmup_seconds: sizes.warmup_seconds,
        offered_workers: sizes.offered_layout.workers,
    };
    signing::run(sizes.layout, sizes.offered_layout, params)
        .await
        .context("signing scenario")
}

fn throughput_params(p: &throughput::Params) -> String {
    format!(
        "{} tasks ({} deployments × {} targets), {} pools, {} workers × {} slots",
        p.tasks, p.deployments, p.targets, p.pools, p.workers, p.slots_per_worker
    )
}

fn packages_row(r: &mut Results, o: &packages::Outcome) {
    let size = o.params.package_bytes as f64;
    let each = |m: &packages::Moved| {
        format!(
            "{:.2} s, {:.1} MiB from the centre ({:.2} × the package)",
            m.seconds,
            m.bytes_from_centre as f64 / 1048576.0,
            m.bytes_from_centre as f64 / size
        )
    };
    r.set(
        "packages_bytes_ratio_to_push_model",
        round(o.shoal_first.bytes_from_centre as f64 / o.push_model.bytes_from_centre as f64),
    );
    r.set(
        "packages_time_ratio_to_whole_download",
        round(o.shoal_first.seconds / o.whole_download.seconds),
    );
    r.row(
        "8 packages",
        format!(
            "{:.1} MiB package to {} targets through {} workers × {} slots",
            size / 1048576.0,
            o.params.targets,
            o.params.workers,
            o.params.slots_per_worker
        ),
        format!(
            "shoal, first: {}\nshoal, again: {}\nshoal, next version (1 % changed): {}\npush model: {}\nwhole download per task: {}",
            each(&o.shoal_first),
            each(&o.shoal_again),
            each(&o.shoal_next_version),
            each(&o.push_model),
            each(&o.whole_download)
        ),
    );
}

/// The median of each part of CPU per task, as `broker / planner / workers`.
fn parts_median(parts: &[system::CpuByPart]) -> String {
    let of = |f: fn(&system::CpuByPart) -> f64| median(&parts.iter().map(f).collect::<Vec<_>>());
    format!(
        "{:.0} / {:.0} / {:.0}",
        of(|p| p.broker),
        of(|p| p.planner),
        of(|p| p.workers)
    )
}
