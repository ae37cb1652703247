//! What a worker reported, as the event the log records: the `WorkerReport` command. A
//! report the planner cannot take (a newer schema version, an unknown task or target) is
//! recorded as `MessageRejected` with why, under the report's own id.

use super::decide::{NewEvent, rejected};
use super::state::State;
use shoal_shared::events::Event;
use shoal_shared::messages::{WIRE_SCHEMA_VERSION, WorkerBody, WorkerMessage};

/// `WorkerReport`: the event recording a worker's report.
pub(super) fn report(state: &State, msg: &WorkerMessage) -> NewEvent {
    let event = match refusal(state, msg) {
        Some(reason) => {
            let subject = format!("results.{}.{}", msg.pool, msg.worker);
            rejected(&subject, &reason, &[])
        }
        None => fact(msg),
    };
    NewEvent {
        id: msg.event_id,
        event,
    }
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
        WorkerBody::HealthChecked { target, .. } if !state.targets.contains_key(target) => Some(
            format!("worker \"{worker}\" reported a health check of unknown target \"{target}\""),
        ),
        WorkerBody::TaskStarted {
            deployment, task, ..
        }
        | WorkerBody::TaskOutput {
            deployment, task, ..
        }
        | WorkerBody::TaskFinished {
            deployment, task, ..
        } if state
            .tasks
            .get(task)
            .is_none_or(|t| t.deployment != *deployment) =>
        {
            Some(format!(
                "worker \"{worker}\" reported on unknown task {task} of deployment {deployment}"
            ))
        }
        _ => None,
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
            subject: subject.clone(),
            reason: format!("worker \"{worker}\" rejected it: {reason}"),
            size: *size,
            head: head.clone(),
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
        | WorkerBody::TaskFinished { .. } => task_fact(msg),
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
        // Every other report is `fact`'s; listed, not `_`, so a new kind must be placed.
        WorkerBody::Joined { .. }
        | WorkerBody::Left { .. }
        | WorkerBody::Rejected { .. }
        | WorkerBody::HealthChecked { .. } => fact(msg),
    }
}
