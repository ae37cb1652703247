//! How a deployment advances: from its projected state, the next events that move it on
//! (start it, start a step, plan tasks up to the step's parallelism, finish a step or the
//! deployment). The writer applies them and asks again until nothing is left to do, in the
//! same batch as the fact that caused them.

use super::state::{DeploymentDoc, State, StepDoc, TaskDoc};
use shoal_shared::events::Event;
use shoal_shared::{
    Action, DeploymentId, DeploymentState, HealthState, StepState, TargetName, TaskState,
    UnhealthyTargets,
};

/// The next events for a deployment, or none when it waits for facts from workers.
pub fn next_events(state: &State, id: DeploymentId) -> Vec<Event> {
    let Some(d) = state.deployments.get(&id) else {
        return vec![];
    };
    match d.state {
        DeploymentState::Queued => vec![Event::DeploymentStarted { deployment: id }],
        DeploymentState::Running => {
            let Some(index) = d
                .steps
                .iter()
                .position(|s| matches!(s.state, StepState::Pending | StepState::Running))
            else {
                return vec![Event::DeploymentFinished {
                    deployment: id,
                    state: DeploymentState::Succeeded,
                    reason: None,
                }];
            };
            let step = &d.steps[index];
            let step_no = u32::try_from(index).unwrap_or(u32::MAX);
            let spec = d.spec.steps.get(index);
            let checks = spec.is_some_and(|s| s.action == Action::HealthCheck);
            if step.state == StepState::Pending {
                // A health_check step looks for itself; any other step first deals with
                // targets known to be unhealthy.
                let unhealthy = if checks {
                    vec![]
                } else {
                    unhealthy_targets(state, d, step)
                };
                if unhealthy.is_empty() {
                    return vec![Event::StepStarted {
                        deployment: id,
                        step: step_no,
                    }];
                }
                return match d.spec.unhealthy_targets {
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
                };
            }
            let Some(progress) = state.progress.get(&(id, step_no)) else {
                return vec![];
            };
            if checks && progress.failed > 0 && d.spec.unhealthy_targets == UnhealthyTargets::Skip {
                // The step found these unhealthy: leave them out instead of failing.
                let found: Vec<Event> = step
                    .tasks
                    .iter()
                    .filter_map(|t| state.tasks.get(t))
                    .filter(|t| matches!(t.state, TaskState::Failed | TaskState::TimedOut))
                    .filter_map(|t| {
                        let target = t.target.clone()?;
                        (!d.skipped_targets.contains_key(&target)).then(|| Event::TargetSkipped {
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
            if checks && progress.failed > 0 {
                // Let the step's other checks end, to name every unhealthy target.
                if progress.active > 0 {
                    return vec![];
                }
                let unhealthy: Vec<String> = step
                    .tasks
                    .iter()
                    .filter_map(|t| state.tasks.get(t))
                    .filter(|t| matches!(t.state, TaskState::Failed | TaskState::TimedOut))
                    .map(|t| {
                        let name = t.target.as_ref().map_or("-", |n| n.as_str());
                        let why = t.reason.as_deref().unwrap_or("its check failed");
                        format!("\"{name}\" ({why})")
                    })
                    .collect();
                return step_failed(
                    id,
                    step_no,
                    format!(
                        "step \"{}\" found unhealthy targets: {} (unhealthy_targets: fail)",
                        step.name,
                        unhealthy.join(", ")
                    ),
                );
            }
            if progress.failed > 0 {
                let bad = step
                    .tasks
                    .iter()
                    .filter_map(|t| state.tasks.get(t))
                    .find(|t| t.state.is_terminal() && t.state != TaskState::Succeeded);
                return step_failed(
                    id,
                    step_no,
                    bad.map_or_else(
                        || format!("step \"{}\" failed", step.name),
                        |t| failure_reason(&step.name, t),
                    ),
                );
            }
            if progress.succeeded + progress.skipped == step.tasks.len() {
                return vec![Event::StepFinished {
                    deployment: id,
                    step: step_no,
                    state: if progress.succeeded == 0 && !step.tasks.is_empty() {
                        StepState::Skipped
                    } else {
                        StepState::Succeeded
                    },
                }];
            }
            let limit = spec
                .and_then(|s| s.max_parallel)
                .map_or(usize::MAX, |m| m as usize);
            step.tasks[progress.next.min(step.tasks.len())..]
                .iter()
                .filter_map(|t| state.tasks.get(t))
                .filter(|t| t.state == TaskState::Pending)
                .take(limit.saturating_sub(progress.active))
                .map(|t| Event::TaskPlanned {
                    deployment: id,
                    task: t.id,
                    attempt: t.attempt + 1,
                    pool: t.pool.clone(),
                    rule: t.pool_rule,
                })
                .collect()
        }
        DeploymentState::Cancelling => {
            // Finished once no task of the running step is still running on a worker.
            let busy = d.steps.iter().enumerate().any(|(index, s)| {
                s.state == StepState::Running
                    && state
                        .progress
                        .get(&(id, u32::try_from(index).unwrap_or(u32::MAX)))
                        .is_some_and(|p| p.active > 0)
            });
            if busy {
                vec![]
            } else {
                vec![Event::DeploymentFinished {
                    deployment: id,
                    state: DeploymentState::Cancelled,
                    reason: d.reason.clone(),
                }]
            }
        }
        DeploymentState::Succeeded | DeploymentState::Failed | DeploymentState::Cancelled => vec![],
    }
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
