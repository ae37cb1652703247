//! What a worker reported, as the event the log records: the `WorkerReport` command.
//!
//! The subject a report arrived on is its sender's identity (the broker lets a worker
//! publish only on its own `shoal.results.<pool>.<worker>`): [`impersonation`] refuses a
//! report that claims another pool or worker before it becomes a command. A report the
//! planner then cannot take (a newer schema version, an unknown task or target, a task of
//! another pool or an attempt never planned, a check not sent to the sender's pool) is refused
//! with why; the edge records the refusal (bounded per subject and minute) under the report's
//! own id.

use super::decide::{NewEvent, Rejection};
use super::state::State;
use super::task::TaskDoc;
use shoal_shared::events::Event;
use shoal_shared::messages::{WIRE_SCHEMA_VERSION, WorkerBody, WorkerMessage};
use shoal_shared::subjects::SubjectOwner;
use shoal_shared::{CheckId, DeploymentId, Outcome, PoolName, TargetName, TaskId, WorkerName};

/// `WorkerReport`: the event recording a worker's report.
///
/// # Errors
/// [`Rejection::Invalid`] saying why the planner cannot take the report.
pub(super) fn report(state: &State, msg: &WorkerMessage) -> Result<NewEvent, Rejection> {
    if let Some(reason) = refusal(state, msg) {
        return Err(Rejection::Invalid(reason));
    }
    Ok(NewEvent {
        id: msg.event_id,
        event: fact(msg),
    })
}

/// Why a message that arrived on `from`'s own subject is refused because it claims to be
/// from another pool or worker, if it does.
pub fn impersonation(from: &SubjectOwner, pool: &PoolName, worker: &WorkerName) -> Option<String> {
    (from.pool != *pool || from.worker != *worker).then(|| {
        format!(
            "the message claims pool \"{pool}\", worker \"{worker}\" but arrived on the subject of {from}; a worker may speak only for itself"
        )
    })
}

/// What a message claims to be from, as recorded with a refusal.
pub fn claim(pool: &PoolName, worker: &WorkerName) -> String {
    format!("pool \"{pool}\", worker \"{worker}\"")
}

/// Why the planner cannot take a report, if it cannot.
fn refusal(state: &State, msg: &WorkerMessage) -> Option<String> {
    let worker = &msg.worker;
    if msg.schema_version > WIRE_SCHEMA_VERSION {
        return Some(format!(
            "unknown schema version {} from worker \"{worker}\" (this planner reads up to {WIRE_SCHEMA_VERSION}); upgrade the planner",
            msg.schema_version
        ));
    }
    match &msg.body {
        WorkerBody::HealthChecked {
            check,
            target,
            task,
            ..
        } => health_refusal(state, msg, *check, target, *task),
        WorkerBody::TaskStarted {
            deployment,
            task,
            attempt,
            ..
        }
        | WorkerBody::TaskOutput {
            deployment,
            task,
            attempt,
            ..
        }
        | WorkerBody::TaskFinished {
            deployment,
            task,
            attempt,
            ..
        }
        | WorkerBody::PackageAcquired {
            deployment,
            task,
            attempt,
            ..
        } => task_refusal(state, msg, *deployment, *task, *attempt),
        WorkerBody::Joined { .. } | WorkerBody::Left { .. } | WorkerBody::Rejected { .. } => None,
    }
}

/// Why a report about a task is refused: the task is unknown, of another pool than the
/// sender's, or the attempt was never planned.
fn task_refusal(
    state: &State,
    msg: &WorkerMessage,
    deployment: DeploymentId,
    task: TaskId,
    attempt: u32,
) -> Option<String> {
    let (worker, pool) = (&msg.worker, &msg.pool);
    let Some(t) = state
        .tasks
        .get(&task)
        .filter(|t| t.deployment == deployment)
    else {
        return Some(format!(
            "worker \"{worker}\" reported on unknown task {task} of deployment {deployment}"
        ));
    };
    if t.pool != *pool {
        return Some(format!(
            "worker \"{worker}\" of pool \"{pool}\" reported on task {task}, which is pool \"{}\"'s; a worker may report only on its own pool's tasks",
            t.pool
        ));
    }
    if attempt == 0 || attempt > t.attempt {
        return Some(format!(
            "worker \"{worker}\" reported on attempt {attempt} of task {task}, which was never planned (the current attempt is {})",
            t.attempt
        ));
    }
    run_refusal(t, msg, task, attempt)
}

/// Why a report that speaks for a run (its output, or an end other than "not run") is
/// refused: another worker started that run. Only runs of this attempt at the report's
/// delivery or a later one count: an earlier delivery's worker (one that died) does not own
/// the later run. A run whose start has not been read yet is not refused: a report may
/// overtake its own run's start (a planner killed after taking the start but before
/// recording it sees it redelivered only after the ack wait, while the end arrives at once),
/// and a worker of the pool could pull the message and report it started anyway.
fn run_refusal(t: &TaskDoc, msg: &WorkerMessage, task: TaskId, attempt: u32) -> Option<String> {
    let delivery = match &msg.body {
        WorkerBody::TaskOutput { delivery, .. } => *delivery,
        // A worker ends an attempt it never started only as not run (refused, given up,
        // cancelled before it started): never as a success or a timeout.
        WorkerBody::TaskFinished {
            delivery, outcome, ..
        } if !matches!(outcome, Outcome::Failed | Outcome::Cancelled) => *delivery,
        _ => return None,
    };
    let worker = &msg.worker;
    let mut starters = t
        .attempts
        .iter()
        .filter(|r| r.attempt == attempt && r.delivery >= delivery)
        .filter_map(|r| r.worker.as_ref());
    if starters.clone().any(|w| w == worker) {
        return None;
    }
    let other = starters.next()?;
    Some(format!(
        "worker \"{worker}\" reported on a run of attempt {attempt} of task {task} it never started (worker \"{other}\" did); a worker speaks only for its own runs"
    ))
}

/// Why a health result is refused: the target is unknown, or the check was not sent to the
/// sender's pool (a step's check: its task is not of that pool).
fn health_refusal(
    state: &State,
    msg: &WorkerMessage,
    check: CheckId,
    target: &TargetName,
    task: Option<TaskId>,
) -> Option<String> {
    let (worker, pool) = (&msg.worker, &msg.pool);
    let Some(doc) = state.targets.get(target) else {
        return Some(format!(
            "worker \"{worker}\" reported a health check of unknown target \"{target}\""
        ));
    };
    let sent_to = match task {
        Some(task) => state.tasks.get(&task).map(|t| &t.pool),
        None => doc
            .pending_check
            .as_ref()
            .filter(|p| p.check == check)
            .map(|p| &p.pool)
            // A late answer to a check called unavailable: its record names the pool.
            .or_else(|| {
                doc.health_history
                    .iter()
                    .rfind(|r| r.check == check)
                    .map(|r| &r.pool)
            }),
    };
    match sent_to {
        Some(p) if p == pool => None,
        Some(p) => Some(format!(
            "worker \"{worker}\" of pool \"{pool}\" answered check {check} of target \"{target}\", which was sent to pool \"{p}\""
        )),
        None => Some(format!(
            "worker \"{worker}\" answered check {check} of target \"{target}\", which the planner is not waiting for"
        )),
    }
}

/// The fact a report states, once it is known to be about something the planner knows.
fn fact(msg: &WorkerMessage) -> Event {
    let (worker, pool, at) = (msg.worker.clone(), msg.pool.clone(), msg.sent_at);
    match &msg.body {
        WorkerBody::Joined {
            region,
            slots,
            version,
        } => Event::WorkerJoined {
            worker,
            pool,
            region: region.clone(),
            slots: *slots,
            version: version.clone(),
            at,
        },
        WorkerBody::Rejected {
            subject,
            reason,
            head,
            size,
        } => Event::MessageRejected {
            subject: super::decide::bounded_subject(subject),
            reason: format!("worker \"{worker}\" rejected it: {reason}"),
            size: *size,
            head: head[..head.len().min(super::decide::HEAD_BYTES)].to_vec(),
            claimed: None,
        },
        WorkerBody::Left { reason } => Event::WorkerLeft {
            worker,
            pool,
            reason: reason.clone(),
            at,
        },
        WorkerBody::HealthChecked {
            check,
            target,
            task,
            state,
            reason,
            duration_ms,
        } => Event::TargetHealthChecked {
            check: *check,
            target: target.clone(),
            task: *task,
            worker,
            pool,
            state: *state,
            reason: reason.clone(),
            duration_ms: *duration_ms,
            at,
        },
        WorkerBody::TaskStarted { .. }
        | WorkerBody::TaskOutput { .. }
        | WorkerBody::TaskFinished { .. }
        | WorkerBody::PackageAcquired { .. } => task_fact(msg),
    }
}

/// The fact a report about a task states.
fn task_fact(msg: &WorkerMessage) -> Event {
    let (worker, at) = (msg.worker.clone(), msg.sent_at);
    match &msg.body {
        WorkerBody::TaskStarted {
            deployment,
            task,
            attempt,
            delivery,
        } => Event::TaskStarted {
            deployment: *deployment,
            task: *task,
            attempt: *attempt,
            delivery: *delivery,
            worker,
            pool: msg.pool.clone(),
            at,
        },
        WorkerBody::TaskOutput {
            deployment,
            task,
            attempt,
            delivery,
            first_line,
            lines,
        } => Event::TaskOutput {
            deployment: *deployment,
            task: *task,
            attempt: *attempt,
            delivery: *delivery,
            worker,
            first_line: *first_line,
            lines: lines.clone(),
        },
        WorkerBody::TaskFinished {
            deployment,
            task,
            attempt,
            delivery,
            outcome,
            exit_code,
            reason,
        } => Event::TaskFinished {
            deployment: *deployment,
            task: *task,
            attempt: *attempt,
            delivery: *delivery,
            worker,
            outcome: *outcome,
            exit_code: *exit_code,
            reason: reason.clone(),
            at,
        },
        WorkerBody::PackageAcquired {
            deployment,
            task,
            attempt,
            delivery,
            acquired,
        } => Event::PackageAcquired {
            deployment: *deployment,
            task: *task,
            attempt: *attempt,
            delivery: *delivery,
            worker,
            pool: msg.pool.clone(),
            acquired: acquired.clone(),
            at,
        },
        // Every other report is `fact`'s; listed, not `_`, so a new kind must be placed.
        WorkerBody::Joined { .. }
        | WorkerBody::Left { .. }
        | WorkerBody::Rejected { .. }
        | WorkerBody::HealthChecked { .. } => fact(msg),
    }
}
