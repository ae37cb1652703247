//! How a deployment advances: from its projected state, the next events that move it on
//! (start it, start a step, plan tasks up to the step's parallelism, finish a step or the
//! deployment). The writer applies them and asks again until nothing is left to do, in the
//! same batch as the fact that caused them.

use super::state::{DeploymentDoc, State, StepDoc, StepProgress, TaskDoc};
use shoal_shared::events::Event;
use shoal_shared::{
    Action, DeploymentId, DeploymentState, HealthState, StepSpec, StepState, TargetName, TaskState,
    UnhealthyTargets,
};

/// The next events for a deployment, or none when it waits for facts from workers.
pub fn next_events(state: &State, id: DeploymentId) -> Vec<Event> {
    let Some(d) = state.deployments.get(&id) else {
        return vec![];
    };
    match d.state {
        DeploymentState::Queued => vec![Event::DeploymentStarted { deployment: id }],
        DeploymentState::Running => running(state, d),
        DeploymentState::Cancelling => cancelling(state, d),
        DeploymentState::Succeeded | DeploymentState::Failed | DeploymentState::Cancelled => vec![],
    }
}

/// The step a running deployment is at, with what the decisions about it read.
struct At<'a> {
    state: &'a State,
    d: &'a DeploymentDoc,
    step: &'a StepDoc,
    index: u32,
    spec: Option<&'a StepSpec>,
}

impl At<'_> {
    /// Whether the step checks its targets' health.
    fn checks(&self) -> bool {
        self.spec.is_some_and(|s| s.action == Action::HealthCheck)
    }

    /// The step's tasks that ended failed or timed out.
    fn failed_tasks(&self) -> impl Iterator<Item = &TaskDoc> {
        self.step
            .tasks
            .iter()
            .filter_map(|t| self.state.tasks.get(t))
            .filter(|t| matches!(t.state, TaskState::Failed | TaskState::TimedOut))
    }
}

/// A running deployment: start its first step not done, or move that step on; finished
/// when every step is done.
fn running(state: &State, d: &DeploymentDoc) -> Vec<Event> {
    let Some(index) = d
        .steps
        .iter()
        .position(|s| matches!(s.state, StepState::Pending | StepState::Running))
    else {
        return vec![Event::DeploymentFinished {
            deployment: d.id,
            state: DeploymentState::Succeeded,
            reason: None,
        }];
    };
    let at = At {
        state,
        d,
        step: &d.steps[index],
        index: u32::try_from(index).unwrap_or(u32::MAX),
        spec: d.spec.steps.get(index),
    };
    if at.step.state == StepState::Pending {
        return start_step(&at);
    }
    match state.progress.get(&(d.id, at.index)) {
        Some(progress) => advance_step(&at, progress),
        None => vec![],
    }
}

/// A step about to start: a health_check step looks for itself; any other step first
/// deals with targets known to be unhealthy, as the deployment's `unhealthy_targets` says.
fn start_step(at: &At) -> Vec<Event> {
    let (id, step) = (at.d.id, at.step);
    let unhealthy = if at.checks() {
        vec![]
    } else {
        unhealthy_targets(at.state, at.d, step)
    };
    if unhealthy.is_empty() {
        return vec![Event::StepStarted {
            deployment: id,
            step: at.index,
        }];
    }
    match at.d.spec.unhealthy_targets {
        UnhealthyTargets::Fail => {
            let list: Vec<String> = unhealthy
                .iter()
                .map(|(t, why)| format!("\"{t}\" ({why})"))
                .collect();
            vec![Event::DeploymentFinished {
                deployment: id,
                state: DeploymentState::Failed,
                reason: Some(format!(
                    "step \"{}\" not started: unhealthy targets: {} (unhealthy_targets: fail)",
                    step.name,
                    list.join(", ")
                )),
            }]
        }
        UnhealthyTargets::Skip => unhealthy
            .into_iter()
            .map(|(target, why)| Event::TargetSkipped {
                deployment: id,
                target,
                reason: format!("unhealthy before step \"{}\": {why}", step.name),
            })
            .collect(),
    }
}

/// A running step: fail it, finish it, or plan its next tasks.
fn advance_step(at: &At, progress: &StepProgress) -> Vec<Event> {
    let step = at.step;
    if at.checks() && progress.failed > 0 {
        return checks_failed(at, progress);
    }
    if progress.failed > 0 {
        let bad = step
            .tasks
            .iter()
            .filter_map(|t| at.state.tasks.get(t))
            .find(|t| t.state.is_terminal() && t.state != TaskState::Succeeded);
        let reason = bad.map_or_else(
            || format!("step \"{}\" failed", step.name),
            |t| failure_reason(&step.name, t),
        );
        return step_failed(at.d.id, at.index, reason);
    }
    if progress.succeeded + progress.skipped == step.tasks.len() {
        let state = if progress.succeeded == 0 && !step.tasks.is_empty() {
            StepState::Skipped
        } else {
            StepState::Succeeded
        };
        return vec![Event::StepFinished {
            deployment: at.d.id,
            step: at.index,
            state,
        }];
    }
    plan_tasks(at, progress)
}

/// A health_check step found unhealthy targets: leave them out (`skip`), or once its other
/// checks ended, fail naming every one (`fail`).
fn checks_failed(at: &At, progress: &StepProgress) -> Vec<Event> {
    let (id, step) = (at.d.id, at.step);
    if at.d.spec.unhealthy_targets == UnhealthyTargets::Skip {
        let found: Vec<Event> = at
            .failed_tasks()
            .filter_map(|t| {
                let target = t.target.clone()?;
                (!at.d.skipped_targets.contains_key(&target)).then(|| Event::TargetSkipped {
                    deployment: id,
                    target,
                    reason: t
                        .reason
                        .clone()
                        .unwrap_or_else(|| "its health check failed".to_owned()),
                })
            })
            .collect();
        if !found.is_empty() {
            return found;
        }
    }
    // Let the step's other checks end, to name every unhealthy target.
    if progress.active > 0 {
        return vec![];
    }
    let unhealthy: Vec<String> = at
        .failed_tasks()
        .map(|t| {
            let name = t.target.as_ref().map_or("-", |n| n.as_str());
            let why = t.reason.as_deref().unwrap_or("its check failed");
            format!("\"{name}\" ({why})")
        })
        .collect();
    let reason = format!(
        "step \"{}\" found unhealthy targets: {} (unhealthy_targets: fail)",
        step.name,
        unhealthy.join(", ")
    );
    step_failed(id, at.index, reason)
}

/// Plans the step's next pending tasks, in list order, up to its `max_parallel`.
fn plan_tasks(at: &At, progress: &StepProgress) -> Vec<Event> {
    let tasks = &at.step.tasks;
    let limit = at
        .spec
        .and_then(|s| s.max_parallel)
        .map_or(usize::MAX, |m| m as usize);
    tasks[progress.next.min(tasks.len())..]
        .iter()
        .filter_map(|t| at.state.tasks.get(t))
        .filter(|t| t.state == TaskState::Pending)
        .take(limit.saturating_sub(progress.active))
        .map(|t| Event::TaskPlanned {
            deployment: at.d.id,
            task: t.id,
            attempt: t.attempt + 1,
            pool: t.pool.clone(),
            rule: t.pool_rule,
        })
        .collect()
}

/// A deployment being cancelled: finished once no task of the running step is still
/// running on a worker.
fn cancelling(state: &State, d: &DeploymentDoc) -> Vec<Event> {
    let busy = d.steps.iter().enumerate().any(|(index, s)| {
        s.state == StepState::Running
            && state
                .progress
                .get(&(d.id, u32::try_from(index).unwrap_or(u32::MAX)))
                .is_some_and(|p| p.active > 0)
    });
    if busy {
        return vec![];
    }
    vec![Event::DeploymentFinished {
        deployment: d.id,
        state: DeploymentState::Cancelled,
        reason: d.reason.clone(),
    }]
}

/// Targets of a step's tasks not yet run that are known to be unhealthy (and not already
/// skipped), with the reason of their last check.
fn unhealthy_targets(
    state: &State,
    d: &DeploymentDoc,
    step: &StepDoc,
) -> Vec<(TargetName, String)> {
    let mut out: Vec<(TargetName, String)> = Vec::new();
    for t in step.tasks.iter().filter_map(|t| state.tasks.get(t)) {
        let Some(name) = &t.target else { continue };
        if t.state != TaskState::Pending
            || d.skipped_targets.contains_key(name)
            || out.iter().any(|(n, _)| n == name)
        {
            continue;
        }
        if let Some(doc) = state.targets.get(name)
            && doc.health_state() == HealthState::Unhealthy
        {
            let why = doc
                .health
                .as_ref()
                .and_then(|h| h.reason.clone())
                .unwrap_or_else(|| "its last health check failed".to_owned());
            out.push((name.clone(), why));
        }
    }
    out
}

/// A step failed, and with it the deployment.
fn step_failed(deployment: DeploymentId, step: u32, reason: String) -> Vec<Event> {
    vec![
        Event::StepFinished {
            deployment,
            step,
            state: StepState::Failed,
        },
        Event::DeploymentFinished {
            deployment,
            state: DeploymentState::Failed,
            reason: Some(reason),
        },
    ]
}

fn failure_reason(step: &str, task: &TaskDoc) -> String {
    let on = task
        .target
        .as_ref()
        .map_or_else(String::new, |t| format!(" on target \"{t}\""));
    let how = match (task.state, task.exit_code) {
        (TaskState::TimedOut, _) => "timed out".to_owned(),
        (TaskState::Cancelled, _) => "was cancelled".to_owned(),
        (_, Some(code)) => format!("failed with exit code {code}"),
        (_, None) => "failed".to_owned(),
    };
    let why = task
        .reason
        .as_ref()
        .map_or_else(String::new, |r| format!(": {r}"));
    format!("step \"{step}\" failed: task {}{on} {how}{why}", task.id)
}
