//! What the planner does because of facts in its log, decided without doing it: tell workers
//! to stop tasks, submit commands later (retries, deadlines, the end of a cancellation's
//! grace), publish health checks, tell workers to drain or resume, create (and, for a removed
//! pool, delete) pools' queue consumers and keep targets on the health schedule. Also the messages the planner sends
//! for a task or a check, built from the state.
//!
//! Pure: the caller passes the time (`now`) and carries the effects out (`crate::effects`)
//! once the events that caused them are durable.

use super::decide::CANCEL_GRACE_SECS;
use super::{Command, State};
use shoal_shared::events::Event;
use shoal_shared::messages::{CheckMessage, PackageSpec, TaskMessage, WIRE_SCHEMA_VERSION};
use shoal_shared::{
    Action, DeploymentId, DeploymentState, PoolName, Target, TargetName, TaskId, TaskState,
    Timestamp, WorkerName,
};

/// Something to do once a batch of the log is durable.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Tell workers to stop these tasks, and take queued messages off the queue.
    Cancel(Vec<Stop>),
    /// Submit a command at a time.
    Schedule { at: Timestamp, cmd: Command },
    /// Publish a health check to its pool's queue (retried until stored or past its
    /// deadline).
    PublishCheck(CheckMessage),
    /// Tell a worker to drain (take no new tasks) or resume.
    Control {
        worker: WorkerName,
        pool: PoolName,
        drain: bool,
    },
    /// Create the durable queue consumer of a pool, or bring it to the planner's settings.
    EnsureConsumer(PoolName),
    /// Delete the queue consumer of a removed pool: the broker keeps a consumer, and its
    /// state, until it is deleted, and a worker of the pool must not find it.
    RemoveConsumer(PoolName),
    /// Check a target on schedule this often, or (`None`: it has no probe) no longer.
    ScheduleHealth {
        target: TargetName,
        every: Option<CheckEvery>,
    },
    /// Delete from the package feed every object no version in it needs (the chunks only a
    /// removed version used, and those of a push that never recorded its version).
    SweepFeed,
}

/// How often a target is checked on schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckEvery {
    /// The planner's `--health-interval-secs`.
    PlannerInterval,
    /// The target's own `health_interval_secs`.
    Secs(u64),
}

/// One task to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    pub task: TaskId,
    /// The task's pool: its cancellation goes to that pool's workers only, signed for it.
    pub pool: PoolName,
    /// Its attempts up to this one (`u32::MAX`: all) are cancelled.
    pub upto: u32,
    /// The queued message of a task that never started: stream sequence and attempt (its
    /// message id is checked before the message is deleted).
    pub queued: Option<(u64, u32)>,
}

/// What an event, just applied to `state` at `now`, asks the planner to do once it is
/// durable; pushed onto `out` (the writer calls this for every event, mostly for nothing).
pub fn effects_of(state: &State, event: &Event, now: Timestamp, out: &mut Vec<Effect>) {
    match event {
        Event::PoolRegistered { pool, .. } => out.push(Effect::EnsureConsumer(pool.clone())),
        Event::PoolRemoved { pool } => out.push(Effect::RemoveConsumer(pool.clone())),
        Event::TargetRegistered { target } | Event::TargetUpdated { target } => {
            out.push(schedule_health(target));
        }
        Event::TargetRemoved { target } => out.push(Effect::ScheduleHealth {
            target: target.clone(),
            every: None,
        }),
        Event::TaskFinished { task, attempt, .. } => out.extend(retry(state, *task, *attempt)),
        Event::DeploymentCancelRequested { deployment, .. } => {
            out.extend(cancel_effects(state, *deployment, Some(now)));
        }
        Event::DeploymentFinished {
            deployment,
            state: DeploymentState::Failed,
            ..
        } => out.extend(cancel_effects(state, *deployment, None)),
        Event::TaskDispatched {
            task,
            attempt,
            stream_seq,
            ..
        } => out.extend(remove_stored_after_cancel(
            state,
            *task,
            *attempt,
            *stream_seq,
        )),
        Event::TaskStarted {
            deployment,
            task,
            attempt,
            ..
        } => out.extend(stop_unneeded_run(state, *deployment, *task, *attempt)),
        Event::HealthCheckPlanned { target, .. } => {
            out.extend(check_effects(state, target).into_iter().flatten())
        }
        Event::PackageRemoved { .. } => out.push(Effect::SweepFeed),
        Event::WorkerDrainRequested { worker, pool } | Event::WorkerResumed { worker, pool } => {
            out.push(Effect::Control {
                worker: worker.clone(),
                pool: pool.clone(),
                drain: matches!(event, Event::WorkerDrainRequested { .. }),
            });
        }
        _ => {}
    }
}

/// The effects still due when the planner starts at `now` with `state`: every pool's queue
/// consumer, every target's place on the health schedule, retries waiting for their backoff,
/// checks waiting for an answer, cancellations whose tasks may still run (told again,
/// with a fresh grace period), and a sweep of the package feed (a push cut off by a stop
/// may have left chunks no version names).
pub fn pending_effects(state: &State, now: Timestamp) -> Vec<Effect> {
    let mut out: Vec<Effect> = state
        .pools
        .keys()
        .map(|p| Effect::EnsureConsumer(p.clone()))
        .collect();
    out.push(Effect::SweepFeed);
    out.extend(state.targets.values().map(|d| schedule_health(&d.target)));
    for t in state.tasks.values() {
        out.extend(retry(state, t.id, t.attempt));
    }
    for name in state.targets.keys() {
        out.extend(check_effects(state, name).into_iter().flatten());
    }
    for id in &state.active {
        if state
            .deployments
            .get(id)
            .is_some_and(|d| d.state == DeploymentState::Cancelling)
        {
            out.extend(cancel_effects(state, *id, Some(now)));
        }
    }
    out
}

/// The message of a planned attempt; `planned_at_us` is known only in the batch that
/// planned it (after a restart the log's millisecond time stands in).
pub fn task_message(
    state: &State,
    task: &TaskId,
    attempt: u32,
    planned_at_us: Option<i64>,
) -> Option<TaskMessage> {
    let t = state.tasks.get(task)?;
    let (action, step) = state.task_action(t)?;
    let planned_at = t.planned_at.unwrap_or_default();
    Some(TaskMessage {
        trace_parent: None,
        schema_version: WIRE_SCHEMA_VERSION,
        deployment: t.deployment,
        task: t.id,
        attempt,
        step_index: t.step,
        step_name: t.step_name.clone(),
        target: t.target.clone(),
        endpoint: t.endpoint.clone(),
        pool: t.pool.clone(),
        action: action.clone(),
        variables: step.variables.clone(),
        timeout_secs: step.timeout_secs,
        planned_at,
        max_deliveries: step.max_attempts(),
        probe: match action {
            Action::HealthCheck => t
                .target
                .as_ref()
                .and_then(|n| state.targets.get(n))
                .and_then(|d| d.target.probe()),
            _ => None,
        },
        planned_at_us: planned_at_us.unwrap_or_else(|| planned_at.millis() * 1000),
        // Sealed for the master key, as the log holds them: the dispatcher re-seals them for
        // the pool's workers (the core holds no keys).
        sensitive_variables: step.sensitive_variables.clone(),
        package: package_of(state, t),
    })
}

/// What the worker needs to acquire the package a task's step deploys.
fn package_of(state: &State, t: &super::task::TaskDoc) -> Option<PackageSpec> {
    let step = state
        .deployments
        .get(&t.deployment)?
        .steps
        .get(t.step as usize)?;
    let p = step.package.as_ref()?;
    // The bytes the version was resolved to, or no package (the worker then fails the task).
    let doc = (state.packages.get(&(p.id.clone(), p.version.clone())))
        .filter(|d| d.manifest.sha256 == p.sha256)?;
    Some(PackageSpec {
        id: p.id.clone(),
        version: p.version.clone(),
        size: doc.manifest.size,
        sha256: doc.manifest.sha256,
        manifest_sha256: doc.manifest_sha256,
    })
}

/// The message of a target's planned check, not yet answered.
pub fn check_message(state: &State, target: &TargetName) -> Option<CheckMessage> {
    let doc = state.targets.get(target)?;
    let p = doc.pending_check.as_ref()?;
    Some(CheckMessage {
        schema_version: WIRE_SCHEMA_VERSION,
        check: p.check,
        target: doc.target.name.clone(),
        pool: p.pool.clone(),
        endpoint: doc.target.endpoint.clone(),
        probe: p.probe.clone(),
        planned_at: p.planned_at,
        deadline_at: p.deadline_at,
    })
}

/// A target's place on the health schedule: only a target with a probe is checked.
fn schedule_health(target: &Target) -> Effect {
    Effect::ScheduleHealth {
        target: target.name.clone(),
        every: target.probe().map(|_| {
            target
                .health_interval_secs
                .map_or(CheckEvery::PlannerInterval, CheckEvery::Secs)
        }),
    }
}

/// Plan the next attempt of a task once its backoff is over, if this attempt waits for one.
fn retry(state: &State, task: TaskId, attempt: u32) -> Option<Effect> {
    let t = state.tasks.get(&task)?;
    if t.state != TaskState::RetryScheduled || t.attempt != attempt {
        return None;
    }
    Some(Effect::Schedule {
        at: t.retry_at?,
        cmd: Command::RetryDue { task, attempt },
    })
}

/// Publish a target's planned check and watch its deadline.
fn check_effects(state: &State, target: &TargetName) -> Option<[Effect; 2]> {
    let check = check_message(state, target)?;
    let deadline = Effect::Schedule {
        at: check.deadline_at,
        cmd: Command::CheckDeadline {
            target: target.clone(),
            check: check.check,
        },
    };
    Some([Effect::PublishCheck(check), deadline])
}

/// A task the broker stored after it was cancelled before it started: take it off the queue.
fn remove_stored_after_cancel(
    state: &State,
    task: TaskId,
    attempt: u32,
    stream_seq: Option<u64>,
) -> Option<Effect> {
    let t = state.tasks.get(&task)?;
    (t.state.is_terminal() && t.started_at.is_none()).then(|| {
        Effect::Cancel(vec![Stop {
            task,
            pool: t.pool.clone(),
            upto: u32::MAX,
            queued: stream_seq.map(|seq| (seq, attempt)),
        }])
    })
}

/// A run the task does not need (it ended, its deployment is stopping, or the run is of an
/// attempt already given up for a retry): stop it.
fn stop_unneeded_run(
    state: &State,
    deployment: DeploymentId,
    task: TaskId,
    attempt: u32,
) -> Option<Effect> {
    let t = state.tasks.get(&task)?;
    let stopping = state
        .deployments
        .get(&deployment)
        .is_some_and(|d| d.state == DeploymentState::Cancelling || d.state.is_terminal());
    let upto = if t.state.is_terminal() || stopping {
        u32::MAX
    } else if attempt < t.attempt || (attempt == t.attempt && t.state == TaskState::RetryScheduled)
    {
        attempt
    } else {
        return None;
    };
    Some(Effect::Cancel(vec![Stop {
        task,
        pool: t.pool.clone(),
        upto,
        queued: None,
    }]))
}

/// Stop every task of a deployment that was handed to the broker and may run or be queued;
/// with `grace_from`, also give up on them [`CANCEL_GRACE_SECS`] after it. Only the messages
/// of tasks that never started are taken off the queue: a running task's message must come
/// back if its worker dies, so that another worker reports it cancelled.
fn cancel_effects(
    state: &State,
    deployment: DeploymentId,
    grace_from: Option<Timestamp>,
) -> Vec<Effect> {
    let Some(d) = state.deployments.get(&deployment) else {
        return vec![];
    };
    let tasks: Vec<Stop> = d
        .steps
        .iter()
        .flat_map(|s| &s.tasks)
        .filter_map(|t| state.tasks.get(t))
        .filter(|t| {
            t.state == TaskState::Running
                || (t.state == TaskState::Cancelled && t.attempt > 0 && t.started_at.is_none())
        })
        .map(|t| Stop {
            task: t.id,
            pool: t.pool.clone(),
            upto: u32::MAX,
            queued: if t.state == TaskState::Running {
                None
            } else {
                t.stream_seq.map(|seq| (seq, t.attempt))
            },
        })
        .collect();
    let mut out = Vec::new();
    if !tasks.is_empty() {
        out.push(Effect::Cancel(tasks));
    }
    if let Some(now) = grace_from {
        out.push(Effect::Schedule {
            at: now.plus_millis(CANCEL_GRACE_SECS * 1000),
            cmd: Command::CancelGraceExpired { deployment },
        });
    }
    out
}

#[cfg(test)]
#[path = "effects_tests.rs"]
mod tests;
