//! Deployments and their steps: the deployment document, how deployment, step and
//! target-skip events change it (and its tasks, when it is cancelled or ends), and the
//! commands that create a deployment (parse, then route every task), cancel it, and give
//! up on what no worker confirmed stopped.

use super::decide::{CANCEL_GRACE_SECS, NewEvent, Rejection};
use super::state::{Changes, DocKey, State, StepProgress};
use super::task::TaskDoc;
use serde::{Deserialize, Serialize};
use shoal_shared::events::{Event, PlannedStep, PlannedTask};
use shoal_shared::package::Sha256;
use shoal_shared::step::{Registry, ValidDeployment, ValidStep, runs_on};
use shoal_shared::{
    DeploymentId, DeploymentSpec, DeploymentState, EnvironmentName, PackageId, PoolName,
    ResolvedPackage, StepState, Target, TargetName, TaskId, TaskState, Timestamp, resolve_pool,
};
use std::collections::{BTreeMap, BTreeSet};

/// A deployment and its steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentDoc {
    pub id: DeploymentId,
    pub project: String,
    pub environment: EnvironmentName,
    pub state: DeploymentState,
    pub reason: Option<String>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub steps: Vec<StepDoc>,
    pub spec: DeploymentSpec,
    /// Targets left out because they were unhealthy, with why.
    #[serde(default)]
    pub skipped_targets: BTreeMap<TargetName, String>,
}

/// One step of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepDoc {
    pub name: String,
    pub state: StepState,
    pub tasks: Vec<TaskId>,
    /// The package version a `deploy_package` step deploys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<ResolvedPackage>,
}

impl State {
    /// How deployment, step and target-skip events change the state.
    pub(super) fn apply_deployment(&mut self, at: Timestamp, event: &Event, changes: &mut Changes) {
        match event {
            Event::DeploymentCreated {
                deployment,
                spec,
                steps,
            } => self.deployment_created(*deployment, spec, steps, at, changes),
            Event::DeploymentStarted { deployment } => {
                if let Some(d) = self.deployments.get_mut(deployment) {
                    d.state = DeploymentState::Running;
                    d.started_at = Some(at);
                    changes.docs.insert(DocKey::Deployment(*deployment));
                }
            }
            Event::StepStarted { deployment, step } => {
                self.set_step_state(*deployment, *step, StepState::Running, changes);
            }
            Event::StepFinished {
                deployment,
                step,
                state,
            } => self.set_step_state(*deployment, *step, *state, changes),
            Event::TargetSkipped {
                deployment,
                target,
                reason,
            } => self.target_skipped(*deployment, target, reason, changes),
            Event::DeploymentCancelRequested { deployment, reason } => {
                if let Some(d) = self.deployments.get_mut(deployment) {
                    d.state = DeploymentState::Cancelling;
                    d.reason = Some(reason.clone());
                    changes.docs.insert(DocKey::Deployment(*deployment));
                }
                self.stop_queued(*deployment, at, "cancelled before it started", changes);
                self.recount_deployment(*deployment);
            }
            Event::DeploymentFinished {
                deployment,
                state,
                reason,
            } => self.deployment_finished(*deployment, *state, reason.as_ref(), at, changes),
            _ => {}
        }
    }

    /// `DeploymentCreated`: the deployment, queued, with every task pending.
    fn deployment_created(
        &mut self,
        id: DeploymentId,
        spec: &DeploymentSpec,
        steps: &[PlannedStep],
        at: Timestamp,
        changes: &mut Changes,
    ) {
        let mut step_docs = Vec::with_capacity(steps.len());
        for (index, (planned, step_spec)) in steps.iter().zip(&spec.steps).enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            for t in &planned.tasks {
                let doc = TaskDoc::pending(id, index, &step_spec.name, t);
                self.tasks.insert(t.task, doc);
                changes.docs.insert(DocKey::Task(t.task));
            }
            step_docs.push(StepDoc {
                name: step_spec.name.clone(),
                state: StepState::Pending,
                tasks: planned.tasks.iter().map(|t| t.task).collect(),
                package: planned.package.clone(),
            });
        }
        let doc = DeploymentDoc {
            id,
            project: spec.project.clone(),
            environment: spec.environment.clone(),
            state: DeploymentState::Queued,
            reason: None,
            created_at: at,
            started_at: None,
            finished_at: None,
            steps: step_docs,
            spec: spec.clone(),
            skipped_targets: BTreeMap::new(),
        };
        self.deployments.insert(id, doc);
        for (index, planned) in steps.iter().enumerate() {
            let p = StepProgress {
                pending: planned.tasks.len(),
                ..StepProgress::default()
            };
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            self.progress.insert((id, index), p);
        }
        self.active.insert(id);
        changes.docs.insert(DocKey::Deployment(id));
    }

    fn set_step_state(
        &mut self,
        id: DeploymentId,
        step: u32,
        state: StepState,
        changes: &mut Changes,
    ) {
        let step = self
            .deployments
            .get_mut(&id)
            .and_then(|d| d.steps.get_mut(step as usize));
        if let Some(s) = step {
            s.state = state;
            changes.docs.insert(DocKey::Deployment(id));
        }
    }

    /// `TargetSkipped`: the target is left out of the deployment: its tasks not yet run,
    /// and the failed check of the running step (a health_check step that found it
    /// unhealthy), are skipped.
    fn target_skipped(
        &mut self,
        id: DeploymentId,
        target: &TargetName,
        reason: &str,
        changes: &mut Changes,
    ) {
        if let Some(d) = self.deployments.get_mut(&id) {
            d.skipped_targets.insert(target.clone(), reason.to_owned());
            changes.docs.insert(DocKey::Deployment(id));
            let tasks = d.steps.iter().flat_map(|s| {
                let running = s.state == StepState::Running;
                s.tasks.iter().map(move |t| (t, running))
            });
            for (task, running) in tasks {
                let Some(t) = self.tasks.get_mut(task) else {
                    continue;
                };
                let failed = matches!(t.state, TaskState::Failed | TaskState::TimedOut);
                if t.target.as_ref() == Some(target)
                    && (t.state == TaskState::Pending || (running && failed))
                {
                    t.state = TaskState::Skipped;
                    t.reason = Some(format!("target skipped: {reason}"));
                    changes.docs.insert(DocKey::Task(*task));
                }
            }
        }
        self.recount_deployment(id);
    }

    /// `DeploymentFinished`: what never started never will: say so instead of leaving it
    /// pending. A failed deployment's queued tasks are cancelled.
    fn deployment_finished(
        &mut self,
        id: DeploymentId,
        state: DeploymentState,
        reason: Option<&String>,
        at: Timestamp,
        changes: &mut Changes,
    ) {
        if let Some(d) = self.deployments.get_mut(&id) {
            d.state = state;
            d.reason = reason.cloned();
            d.finished_at = Some(at);
            changes.docs.insert(DocKey::Deployment(id));
            for step in &mut d.steps {
                if step.state == StepState::Running && state == DeploymentState::Cancelled {
                    step.state = StepState::Cancelled;
                }
                if step.state == StepState::Pending {
                    step.state = StepState::Skipped;
                }
                for task in &step.tasks {
                    if let Some(t) = self.tasks.get_mut(task)
                        && t.state == TaskState::Pending
                    {
                        t.state = TaskState::Skipped;
                        changes.docs.insert(DocKey::Task(*task));
                    }
                }
            }
        }
        if state == DeploymentState::Failed {
            let why = "not started: the deployment failed first";
            self.stop_queued(id, at, why, changes);
        }
        self.active.remove(&id);
        self.progress.retain(|(d, _), _| *d != id);
    }

    /// Cancels the tasks of a deployment that have not started (queued, or waiting for a
    /// retry) and skips those whose step has not started; running ones are left to stop.
    fn stop_queued(&mut self, id: DeploymentId, at: Timestamp, why: &str, changes: &mut Changes) {
        let Some(d) = self.deployments.get(&id) else {
            return;
        };
        for task in d.steps.iter().flat_map(|s| &s.tasks) {
            if let Some(t) = self.tasks.get_mut(task)
                && t.stop_queued(why, at)
            {
                changes.docs.insert(DocKey::Task(*task));
            }
        }
    }
}

/// A deployment is checked against the registered environments, pools and targets.
impl Registry for State {
    fn has_environment(&self, environment: &EnvironmentName) -> bool {
        self.targets
            .values()
            .any(|t| t.target.environment == *environment)
    }
    fn environments(&self) -> Vec<EnvironmentName> {
        State::environments(self).into_iter().cloned().collect()
    }
    fn has_pool(&self, pool: &PoolName) -> bool {
        self.pools.contains_key(pool)
    }
    fn pools(&self) -> Vec<PoolName> {
        self.pools.keys().cloned().collect()
    }
    fn targets_in(&self, environment: &EnvironmentName) -> Vec<&Target> {
        self.targets
            .values()
            .map(|t| &t.target)
            .filter(|t| t.environment == *environment)
            .collect()
    }
    fn package_versions(&self, id: &PackageId) -> Vec<(semver::Version, Sha256)> {
        State::package_versions(self, id)
            .map(|d| (d.manifest.version.clone(), d.manifest.sha256))
            .collect()
    }
    fn package_ids(&self) -> Vec<PackageId> {
        let ids: BTreeSet<&PackageId> = (self.packages.iter())
            .filter(|(_, d)| d.removed_at.is_none())
            .map(|((id, _), _)| id)
            .collect();
        ids.into_iter().cloned().collect()
    }
}

/// `CreateDeployment`: parses the deployment and decides, for every step and target,
/// which pool runs it.
pub(super) fn create(
    state: &State,
    default_pool: &PoolName,
    id: DeploymentId,
    spec: &DeploymentSpec,
) -> Result<Vec<NewEvent>, Rejection> {
    if state.deployments.contains_key(&id) {
        return Err(Rejection::Conflict(format!(
            "deployment {id} already exists"
        )));
    }
    let valid =
        ValidDeployment::parse(spec, state).map_err(|e| Rejection::Invalid(e.to_string()))?;
    let targets = state.targets_in(valid.environment());
    let steps = valid
        .steps()
        .iter()
        .map(|step| PlannedStep {
            tasks: plan(&targets, default_pool, step),
            package: step.package().cloned(),
        })
        .collect::<Vec<_>>();
    check_pool_keys(state, valid.steps(), &steps)?;
    Ok(vec![NewEvent::new(Event::DeploymentCreated {
        deployment: id,
        spec: valid.into(),
        steps,
    })])
}

/// Sensitive values are sealed for a task's pool when it is dispatched: a step that has
/// them may only run in pools with a registered key.
fn check_pool_keys(
    state: &State,
    steps: &[ValidStep],
    planned: &[PlannedStep],
) -> Result<(), Rejection> {
    for (i, (step, planned)) in steps.iter().zip(planned).enumerate() {
        if step.sensitive_variables().is_empty() {
            continue;
        }
        let keyless = planned.tasks.iter().map(|t| &t.pool).find(|p| {
            state
                .pools
                .get(*p)
                .is_none_or(|doc| doc.sealing_key.is_none())
        });
        if let Some(pool) = keyless {
            return Err(Rejection::Invalid(format!(
                "steps[{i}].sensitive_variables: pool \"{pool}\" has no key to seal them for its workers; make one with `shoal-planner pool-keygen --pool {pool} --out DIR`, give its secret key to the pool's workers (--pool-key), and register its public key with `shoal pool set-key {pool} DIR/{pool}.xpub`"
            )));
        }
    }
    Ok(())
}

/// A step's tasks: one per target of the environment with any of its roles (in name
/// order), or a single one without a target; each with its pool and the rule that chose it.
fn plan(targets: &[&Target], default_pool: &PoolName, step: &ValidStep) -> Vec<PlannedTask> {
    if step.roles().is_empty() {
        let (pool, rule) = resolve_pool(step.pool(), None, default_pool);
        return vec![PlannedTask {
            task: TaskId::new(),
            target: None,
            endpoint: None,
            pool,
            rule,
        }];
    }
    targets
        .iter()
        .filter(|t| runs_on(step.roles(), t))
        .map(|t| {
            let (pool, rule) = resolve_pool(step.pool(), t.default_pool.as_ref(), default_pool);
            PlannedTask {
                task: TaskId::new(),
                target: Some(t.name.clone()),
                endpoint: t.endpoint.clone(),
                pool,
                rule,
            }
        })
        .collect()
}

/// `CancelDeployment`: queued tasks never start, running ones are told to stop; nothing
/// when it is already being cancelled, refused once it has ended.
pub(super) fn cancel(
    state: &State,
    id: DeploymentId,
    reason: Option<&String>,
) -> Result<Vec<NewEvent>, Rejection> {
    let Some(d) = state.deployments.get(&id) else {
        return Err(Rejection::NotFound(format!("unknown deployment {id}")));
    };
    match d.state {
        DeploymentState::Cancelling => Ok(vec![]),
        s if s.is_terminal() => Err(Rejection::Conflict(format!(
            "deployment {id} has already ended ({}); only a queued or running deployment can be cancelled",
            format!("{s:?}").to_lowercase()
        ))),
        _ => Ok(vec![NewEvent::new(Event::DeploymentCancelRequested {
            deployment: id,
            reason: reason
                .filter(|r| !r.trim().is_empty())
                .cloned()
                .unwrap_or_else(|| "cancelled on request".to_owned()),
        })]),
    }
}

/// `CancelGraceExpired`: every task of a cancelled deployment still running after
/// [`CANCEL_GRACE_SECS`] is given up on.
pub(super) fn grace_expired(state: &State, id: DeploymentId) -> Vec<NewEvent> {
    let Some(d) = state
        .deployments
        .get(&id)
        .filter(|d| d.state == DeploymentState::Cancelling)
    else {
        return vec![];
    };
    d.steps
        .iter()
        .flat_map(|s| &s.tasks)
        .filter_map(|t| state.tasks.get(t))
        .filter(|t| t.state == TaskState::Running)
        .map(|t| {
            let on = t
                .worker
                .as_ref()
                .map_or_else(String::new, |w| format!(" on worker \"{w}\""));
            NewEvent::new(Event::TaskCancelled {
                deployment: id,
                task: t.id,
                attempt: t.attempt,
                reason: format!(
                    "no worker confirmed within {CANCEL_GRACE_SECS} s that it stopped; its last run{on} may still be going"
                ),
            })
        })
        .collect()
}
