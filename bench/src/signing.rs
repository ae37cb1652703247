//! Scenario 7: what message signing costs. The no-op throughput run (scenario 2) and the
//! one-task offered-load run (scenario 4) are made with signing on (the default: the planner
//! signs every task, workers verify it) and off (`--insecure-no-signing` on the planner,
//! `--insecure-accept-unsigned` on the workers) in the same process, alternating which goes
//! first each round so that a machine that warms up or gets busier does not favour one side.
//! Also the bare cost of one signature and one verification of a no-op task message.

use crate::offered;
use crate::stats::{median, round};
use crate::system::Layout;
use crate::throughput;
use serde::Serialize;
use shoal_planner::signing::SIGN_GROUP;
use shoal_shared::messages::{TaskMessage, WIRE_SCHEMA_VERSION};
use shoal_shared::signed::{Binding, Kind, SigningKey, TrustedKeys};
use shoal_shared::{Action, DeploymentId, PoolName, TaskId, Timestamp, codec};
use std::time::Instant;

/// Sizes of the scenario.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Params {
    pub rounds: usize,
    pub noop_tasks: usize,
    pub pools: usize,
    pub workers: usize,
    pub slots_per_worker: u32,
    pub offered_rate_per_s: u32,
    pub offered_seconds: f64,
    pub offered_warmup_seconds: f64,
    pub offered_workers: usize,
}

/// One side's figures: the median over the rounds of each.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Side {
    pub noop_tasks_per_s: Vec<f64>,
    pub noop_tasks_per_s_median: f64,
    /// CPU time of broker, planner and workers per no-op task, µs (see `throughput`).
    pub noop_cpu_us_per_task: Vec<f64>,
    pub noop_cpu_us_per_task_median: f64,
    /// CPU µs per no-op task of broker, planner and workers, each round.
    pub noop_cpu_us_per_task_by_part: Vec<crate::system::CpuByPart>,
    pub noop_cpu_us_per_task_by_part_median: crate::system::CpuByPart,
    /// Ed25519 verifications by the workers per no-op task, each round.
    pub noop_signatures_per_task: Vec<Option<f64>>,
    pub schedule_to_start_p50_ms: Vec<f64>,
    pub schedule_to_start_p99_ms: Vec<f64>,
    pub schedule_to_start_p50_ms_median: f64,
    pub schedule_to_start_p99_ms_median: f64,
    /// The offered load's schedule-to-start split where the observer sees the task on the
    /// broker: planned → queued and queued → started, p50 of each round.
    pub planned_to_queued_p50_ms: Vec<f64>,
    pub queued_to_started_p50_ms: Vec<f64>,
    /// CPU of broker, planner and workers per task of the offered load (one-task
    /// deployments, measured from the first submission to the last report taken), µs, each
    /// round.
    pub offered_cpu_us_per_task: Vec<f64>,
    /// Ed25519 verifications by the workers per task of the offered load, each round.
    pub offered_signatures_per_task: Vec<Option<f64>>,
}

/// Signed as a multiple of unsigned, per round (the two sides of a round run one after the
/// other), and the median of those: a VM that is slower for a minute moves both sides of a
/// round, where it moves only one side's median.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Paired {
    pub noop_tasks_per_s: Vec<f64>,
    pub noop_cpu_us_per_task: Vec<f64>,
    pub schedule_to_start_p50: Vec<f64>,
    pub schedule_to_start_p99: Vec<f64>,
    pub offered_cpu_us_per_task: Vec<f64>,
    pub noop_tasks_per_s_median: f64,
    pub noop_cpu_us_per_task_median: f64,
    pub schedule_to_start_p50_median: f64,
    pub schedule_to_start_p99_median: f64,
    pub offered_cpu_us_per_task_median: f64,
}

impl Paired {
    fn of(signed: &Side, unsigned: &Side) -> Paired {
        let per_round = |s: &[f64], u: &[f64]| -> Vec<f64> {
            s.iter().zip(u).map(|(s, u)| ratio(*s, *u)).collect()
        };
        let mut p = Paired {
            noop_tasks_per_s: per_round(&signed.noop_tasks_per_s, &unsigned.noop_tasks_per_s),
            noop_cpu_us_per_task: per_round(
                &signed.noop_cpu_us_per_task,
                &unsigned.noop_cpu_us_per_task,
            ),
            schedule_to_start_p50: per_round(
                &signed.schedule_to_start_p50_ms,
                &unsigned.schedule_to_start_p50_ms,
            ),
            schedule_to_start_p99: per_round(
                &signed.schedule_to_start_p99_ms,
                &unsigned.schedule_to_start_p99_ms,
            ),
            offered_cpu_us_per_task: per_round(
                &signed.offered_cpu_us_per_task,
                &unsigned.offered_cpu_us_per_task,
            ),
            ..Paired::default()
        };
        p.offered_cpu_us_per_task_median = median(&p.offered_cpu_us_per_task);
        p.noop_tasks_per_s_median = median(&p.noop_tasks_per_s);
        p.noop_cpu_us_per_task_median = median(&p.noop_cpu_us_per_task);
        p.schedule_to_start_p50_median = median(&p.schedule_to_start_p50);
        p.schedule_to_start_p99_median = median(&p.schedule_to_start_p99);
        p
    }
}

/// `a / b` to three places (0 when `b` is 0).
fn ratio(a: f64, b: f64) -> f64 {
    round(if b > 0.0 { a / b } else { 0.0 })
}

/// The bare cost of signing and verifying one no-op task message, in this process.
#[derive(Debug, Clone, Serialize)]
pub struct Micro {
    pub payload_bytes: usize,
    pub sign_us: f64,
    /// One verification by a worker that has not seen the message's root before.
    pub verify_us: f64,
    /// Per message, signing a whole group together (`SIGN_GROUP`, the largest group of one
    /// pool) and verifying each by a worker new to the root: one Ed25519 verification, the
    /// rest of the group from the remembered root.
    pub group_sign_us_per_message: f64,
    pub group_verify_us_per_message: f64,
}

/// What the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub params: Params,
    pub micro: Micro,
    pub signed: Side,
    pub unsigned: Side,
    /// Signed no-op throughput as a fraction of unsigned (1.0: no cost).
    pub throughput_ratio: f64,
    /// Signed CPU per no-op task as a multiple of unsigned (1.0: no cost). On a saturated
    /// machine throughput is CPU per task turned over; this reads the same cost without the
    /// stalls of a shared VM, which move the throughput medians by more than the effect.
    pub cpu_per_task_ratio: f64,
    /// Signed schedule-to-start p50 / p99 as a multiple of unsigned.
    pub schedule_to_start_p50_ratio: f64,
    pub schedule_to_start_p99_ratio: f64,
    /// The same ratios taken per round, and their medians.
    pub paired: Paired,
}

/// Runs both sides `params.rounds` times.
///
/// # Errors
/// A run failed (a part did not come up, or not every task succeeded).
pub async fn run(
    layout: Layout,
    offered_layout: Layout,
    params: Params,
) -> anyhow::Result<Outcome> {
    let micro = micro()?;
    let (mut signed, mut unsigned) = (Side::default(), Side::default());
    for r in 0..params.rounds {
        for signing in throughput::sides(r) {
            let side = if signing { &mut signed } else { &mut unsigned };
            eprintln!(
                "[7] signing {}: round {} of {} …",
                if signing { "on" } else { "off" },
                r + 1,
                params.rounds
            );
            let o = throughput::noop(Layout { signing, ..layout }, params.noop_tasks).await?;
            side.noop_tasks_per_s.push(round(o.tasks_per_s));
            side.noop_cpu_us_per_task.push(o.cpu_us_per_task);
            side.noop_signatures_per_task.push(o.signatures_per_task);
            side.noop_cpu_us_per_task_by_part
                .push(o.cpu_us_per_task_by_part);
            let o = offered::run(
                Layout {
                    signing,
                    ..offered_layout
                },
                params.offered_rate_per_s,
                params.offered_seconds,
                params.offered_warmup_seconds,
                1,
                None,
            )
            .await?;
            side.schedule_to_start_p50_ms
                .push(round(o.schedule_to_start.p50_ms));
            side.schedule_to_start_p99_ms
                .push(round(o.schedule_to_start.p99_ms));
            side.offered_signatures_per_task.push(o.signatures_per_task);
            side.offered_cpu_us_per_task.push(o.cpu_us_per_task);
            side.planned_to_queued_p50_ms
                .push(round(o.planned_to_queued.p50_ms));
            side.queued_to_started_p50_ms
                .push(round(o.queued_to_started.p50_ms));
        }
    }
    for side in [&mut signed, &mut unsigned] {
        side.noop_tasks_per_s_median = median(&side.noop_tasks_per_s);
        side.noop_cpu_us_per_task_median = median(&side.noop_cpu_us_per_task);
        let parts = &side.noop_cpu_us_per_task_by_part;
        let part = |f: fn(&crate::system::CpuByPart) -> f64| {
            median(&parts.iter().map(f).collect::<Vec<_>>())
        };
        side.noop_cpu_us_per_task_by_part_median = crate::system::CpuByPart {
            broker: part(|c| c.broker),
            planner: part(|c| c.planner),
            workers: part(|c| c.workers),
        };
        side.schedule_to_start_p50_ms_median = median(&side.schedule_to_start_p50_ms);
        side.schedule_to_start_p99_ms_median = median(&side.schedule_to_start_p99_ms);
    }
    Ok(Outcome {
        params,
        micro,
        paired: Paired::of(&signed, &unsigned),
        throughput_ratio: ratio(
            signed.noop_tasks_per_s_median,
            unsigned.noop_tasks_per_s_median,
        ),
        cpu_per_task_ratio: ratio(
            signed.noop_cpu_us_per_task_median,
            unsigned.noop_cpu_us_per_task_median,
        ),
        schedule_to_start_p50_ratio: ratio(
            signed.schedule_to_start_p50_ms_median,
            unsigned.schedule_to_start_p50_ms_median,
        ),
        schedule_to_start_p99_ratio: ratio(
            signed.schedule_to_start_p99_ms_median,
            unsigned.schedule_to_start_p99_ms_median,
        ),
        signed,
        unsigned,
    })
}

/// Signs and verifies a no-op task message many times, as the planner and a worker do.
fn micro() -> anyhow::Result<Micro> {
    const N: u32 = 5_000;
    let key = SigningKey::generate()?;
    let trusted = TrustedKeys::of([key.public()]);
    let pool = PoolName::parse("bench-0")?;
    let task = TaskMessage {
        trace_parent: None,
        schema_version: WIRE_SCHEMA_VERSION,
        deployment: DeploymentId::new(),
        task: TaskId::new(),
        attempt: 1,
        step_index: 0,
        step_name: "bench".into(),
        target: None,
        endpoint: None,
        pool: pool.clone(),
        action: Action::Noop,
        variables: Default::default(),
        sensitive_variables: Default::default(),
        package: None,
        timeout_secs: None,
        planned_at: Timestamp::now(),
        max_deliveries: 3,
        probe: None,
        planned_at_us: Timestamp::now_micros(),
    };
    let payload = codec::encode(&task)?;
    let binding = Binding {
        kind: Kind::Task,
        pool,
        id: task.task.to_string(),
        attempt: Some(1),
    };
    let now = Timestamp::now();
    let started = Instant::now();
    let mut header = String::new();
    for _ in 0..N {
        header = key.sign(&binding, &payload, now, 3_600_000);
    }
    let sign_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(N);
    // A worker that has not seen the message's root: one Ed25519 verification each.
    let started = Instant::now();
    for _ in 0..N {
        trusted
            .clone_keys()
            .verify(Some(&header), &binding, &payload, now)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let verify_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(N);
    let (batch_sign_us, batch_verify_us) = micro_batch(&key, &trusted, &binding, &payload)?;
    Ok(Micro {
        payload_bytes: payload.len(),
        sign_us: round(sign_us),
        verify_us: round(verify_us),
        group_sign_us_per_message: round(batch_sign_us),
        group_verify_us_per_message: round(batch_verify_us),
    })
}

/// Per message: signing a group of [`SIGN_GROUP`] messages together, and verifying each (one
/// Ed25519 verification for the group, the rest from the remembered root).
fn micro_batch(
    key: &SigningKey,
    trusted: &TrustedKeys,
    binding: &Binding,
    payload: &[u8],
) -> anyhow::Result<(f64, f64)> {
    const BATCH: usize = SIGN_GROUP;
    const ROUNDS: u32 = 100;
    let batch: Vec<(&Binding, &[u8])> = (0..BATCH).map(|_| (binding, payload)).collect();
    let now = Timestamp::now();
    let per = f64::from(ROUNDS) * BATCH as f64;
    let started = Instant::now();
    let mut headers = Vec::new();
    for _ in 0..ROUNDS {
        headers = key.sign_batch(&batch, now, 3_600_000);
    }
    let sign_us = started.elapsed().as_secs_f64() * 1e6 / per;
    let started = Instant::now();
    for _ in 0..ROUNDS {
        // Each round a worker that has not seen the root: one Ed25519 verification, then
        // the rest of the group from the remembered root.
        let fresh = trusted.clone_keys();
        for h in &headers {
            fresh
                .verify(Some(h), binding, payload, now)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    Ok((sign_us, started.elapsed().as_secs_f64() * 1e6 / per))
}
