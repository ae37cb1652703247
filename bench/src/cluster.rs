//! Scenario 10: what a 3-node JetStream cluster costs next to a single server, in the same
//! run. Each round runs, on a single nats-server (every stream R1) and on three nodes of a
//! cluster on this machine (every stream R3, the workers spread over the nodes), in an order
//! that alternates by round: the no-op throughput run (scenario 2) and the offered load of
//! one-task deployments (scenario 4). Every acknowledged publish in a cluster waits until two
//! of the three nodes hold it: that is the price of losing nothing with a node.

use crate::offered::{self, Load};
use crate::stats::{Latency, median, round};
use crate::system::{Broker, Layout};
use crate::throughput;
use serde::Serialize;

/// Nodes of the cluster.
pub const NODES: usize = 3;

/// Sizes of the scenario.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Params {
    pub rounds: usize,
    pub nodes: usize,
    pub noop_tasks: usize,
    pub offered_rate_per_s: u32,
    pub offered_seconds: f64,
    pub offered_warmup_seconds: f64,
}

/// One broker's figures, one entry per round.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Side {
    pub noop_tasks_per_s: Vec<f64>,
    pub noop_cpu_us_per_task: Vec<f64>,
    /// The broker's part of that CPU (the sum of the nodes' on a cluster).
    pub noop_broker_cpu_us_per_task: Vec<f64>,
    pub noop_schedule_to_start: Vec<Latency>,
    pub offered_schedule_to_start: Vec<Latency>,
    pub offered_planned_to_queued: Vec<Latency>,
}

impl Side {
    fn median_tasks_per_s(&self) -> f64 {
        median(&self.noop_tasks_per_s)
    }
    fn median_offered(&self, p: impl Fn(&Latency) -> f64) -> f64 {
        let xs: Vec<f64> = self.offered_schedule_to_start.iter().map(p).collect();
        median(&xs)
    }
}

/// What the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub params: Params,
    pub single: Side,
    pub cluster: Side,
    /// Cluster ÷ single, the medians over rounds.
    pub throughput_ratio: f64,
    pub cpu_per_task_ratio: f64,
    pub schedule_to_start_p50_ms: [f64; 2],
    pub schedule_to_start_p99_ms: [f64; 2],
    pub planned_to_queued_p50_ms: [f64; 2],
}

/// Runs both brokers `params.rounds` times.
///
/// # Errors
/// A run failed (a part did not come up, or not every task succeeded).
pub async fn run(
    layout: Layout,
    offered_layout: Layout,
    params: Params,
) -> anyhow::Result<Outcome> {
    let mut single = Side::default();
    let mut cluster = Side::default();
    let load = Load {
        rate: params.offered_rate_per_s,
        seconds: params.offered_seconds,
        warmup: params.offered_warmup_seconds,
        per_deployment: 1,
    };
    for r in 0..params.rounds {
        for clustered in throughput::sides(r) {
            let (broker, side, name) = if clustered {
                (Broker::Cluster(params.nodes), &mut cluster, "R3 cluster")
            } else {
                (Broker::Single, &mut single, "single server")
            };
            eprintln!("[10] round {}: {name}, no-op run …", r + 1);
            let o = throughput::noop_on(broker, layout, params.noop_tasks).await?;
            side.noop_tasks_per_s.push(round(o.tasks_per_s));
            side.noop_cpu_us_per_task.push(o.cpu_us_per_task);
            side.noop_broker_cpu_us_per_task
                .push(o.cpu_us_per_task_by_part.broker);
            side.noop_schedule_to_start.push(o.schedule_to_start);
            eprintln!("[10] round {}: {name}, offered load …", r + 1);
            let o = offered::run_on(broker, offered_layout, load, None).await?;
            side.offered_schedule_to_start.push(o.schedule_to_start);
            side.offered_planned_to_queued.push(o.planned_to_queued);
        }
    }
    let both = |f: &dyn Fn(&Side) -> f64| [round(f(&single)), round(f(&cluster))];
    let s2s_p50 = both(&|s| s.median_offered(|l| l.p50_ms));
    let s2s_p99 = both(&|s| s.median_offered(|l| l.p99_ms));
    let queued_p50 = both(&|s| {
        let xs: Vec<f64> = s
            .offered_planned_to_queued
            .iter()
            .map(|l| l.p50_ms)
            .collect();
        median(&xs)
    });
    Ok(Outcome {
        params,
        throughput_ratio: round(cluster.median_tasks_per_s() / single.median_tasks_per_s()),
        cpu_per_task_ratio: round(
            median(&cluster.noop_cpu_us_per_task) / median(&single.noop_cpu_us_per_task),
        ),
        schedule_to_start_p50_ms: s2s_p50,
        schedule_to_start_p99_ms: s2s_p99,
        planned_to_queued_p50_ms: queued_p50,
        single,
        cluster,
    })
}
