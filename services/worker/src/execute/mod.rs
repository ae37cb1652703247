//! Step executors: what a worker does with a task's action.

mod output;
mod package;
pub mod probe;
mod script;
mod secrets;
mod unpack;

use crate::WorkerConfig;
use crate::report::Reporter;
use shoal_shared::messages::{TaskMessage, WorkerBody};
use shoal_shared::{Action, CheckId, HealthState, Outcome};
use tokio_util::sync::CancellationToken;

pub use output::OutputSink;
pub use unpack::MAX_UNPACKED;

/// What can end a running task early.
#[derive(Debug, Clone, Default)]
pub struct Stops {
    /// The worker stops (drain deadline passed): hand the task back.
    pub kill: CancellationToken,
    /// The planner cancelled the task: its outcome is `cancelled`.
    pub cancel: CancellationToken,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskResult {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// The worker stopped the attempt (drain deadline passed): hand the task back instead of
    /// reporting an outcome.
    pub interrupted: bool,
}

impl TaskResult {
    fn failed(reason: String) -> TaskResult {
        TaskResult {
            outcome: Outcome::Failed,
            exit_code: None,
            reason: Some(reason),
            interrupted: false,
        }
    }
}

/// Runs a task's action to its end, or until one of `stops` fires.
pub async fn run(
    task: &TaskMessage,
    delivery: u32,
    config: &WorkerConfig,
    reporter: &Reporter,
    stops: &Stops,
) -> TaskResult {
    // A value this worker cannot open refuses the task before anything of it runs.
    let opened = match secrets::Opened::open(task, &config.pool_keys) {
        Ok(o) => o,
        Err(reason) => {
            tracing::warn!(task.id = %task.task, pool = %task.pool, "{reason}");
            return TaskResult::failed(reason);
        }
    };
    match &task.action {
        Action::Noop if stops.cancel.is_cancelled() => TaskResult {
            outcome: Outcome::Cancelled,
            exit_code: None,
            reason: Some("cancelled".to_owned()),
            interrupted: false,
        },
        Action::Noop => TaskResult {
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            reason: None,
            interrupted: false,
        },
        Action::HealthCheck => health_step(task, config, reporter, stops).await,
        Action::Script { script, shell } => {
            let run = script::Run::of(task, delivery, script, shell.as_deref(), &opened);
            run_script(run, config, reporter, stops).await
        }
        Action::DeployPackage { script, shell, .. } => {
            let (Some(spec), Some(acquirer)) = (&task.package, &config.packages) else {
                return TaskResult::failed(
                    "the task names no package version to deploy (or this worker has no package cache)"
                        .to_owned(),
                );
            };
            let run = script::Run {
                package: Some(package::Package {
                    spec,
                    acquirer,
                    reporter,
                    unpack_limit: config.package_unpack_bytes,
                }),
                ..script::Run::of(task, delivery, script, shell.as_deref(), &opened)
            };
            run_script(run, config, reporter, stops).await
        }
    }
}

/// Runs a script step with its output collected (and masked).
async fn run_script(
    run: script::Run<'_>,
    config: &WorkerConfig,
    reporter: &Reporter,
    stops: &Stops,
) -> TaskResult {
    let sink = OutputSink::spawn(
        run.task,
        run.delivery,
        reporter.clone(),
        run.secrets.masker(),
    );
    let result = script::run(run, config, &sink, stops).await;
    sink.finish().await;
    result
}

/// A `health_check` step: probes the task's target, reports the result as the target's
/// health, and succeeds unless the target is unhealthy.
async fn health_step(
    task: &TaskMessage,
    config: &WorkerConfig,
    reporter: &Reporter,
    stops: &Stops,
) -> TaskResult {
    let (Some(probe), Some(target)) = (&task.probe, &task.target) else {
        return TaskResult::failed("the task carries no target or probe to check".to_owned());
    };
    let found = tokio::select! {
        found = probe::run(probe, target.as_str(), task.endpoint.as_deref(), config) => found,
        () = stops.cancel.cancelled() => return TaskResult {
            outcome: Outcome::Cancelled,
            exit_code: None,
            reason: Some("cancelled: its probe was stopped".to_owned()),
            interrupted: false,
        },
        () = stops.kill.cancelled() => return TaskResult {
            outcome: Outcome::Cancelled,
            exit_code: None,
            reason: Some("the worker stopped before the check ended".to_owned()),
            interrupted: true,
        },
    };
    reporter
        .send(WorkerBody::HealthChecked {
            check: CheckId::new(),
            target: target.clone(),
            task: Some(task.task),
            state: found.state,
            reason: found.reason.clone(),
            duration_ms: found.duration_ms,
        })
        .await;
    match found.state {
        HealthState::Healthy | HealthState::HealthyWithWarnings => TaskResult {
            outcome: Outcome::Succeeded,
            exit_code: None,
            reason: found.reason,
            interrupted: false,
        },
        _ => TaskResult::failed(format!(
            "target \"{target}\" is unhealthy: {}",
            found
                .reason
                .unwrap_or_else(|| "its probe failed".to_owned())
        )),
    }
}
