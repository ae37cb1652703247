//! The projections: what the log says about pools, targets, deployments, tasks and workers.
//!
//! [`State::apply`] is infallible and deterministic: the same events in the same order give
//! the same documents byte for byte, which is what makes replay verifiable.

use serde::{Deserialize, Serialize};
use shoal_shared::events::{CheckTrigger, Envelope, Event};
use shoal_shared::health::HEALTH_HISTORY;
use shoal_shared::{
    Action, CheckId, DeploymentId, DeploymentSpec, DeploymentState, EnvironmentName, HealthCheck,
    HealthState, Outcome, OutputLine, PoolName, PoolRule, RegionName, StepState, Target,
    TargetName, TaskId, TaskState, Timestamp, WorkerName,
};
use std::collections::{BTreeMap, BTreeSet};

/// A registered pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolDoc {
    pub name: PoolName,
    pub region: Option<RegionName>,
    pub description: Option<String>,
    pub registered_at: Timestamp,
}

/// A registered target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetDoc {
    #[serde(flatten)]
    pub target: Target,
    pub registered_at: Timestamp,
    pub updated_at: Timestamp,
    /// The last health check's result; `None`: never checked (`unknown`).
    #[serde(default)]
    pub health: Option<HealthRecord>,
    /// The last [`HEALTH_HISTORY`] results, oldest first.
    #[serde(default)]
    pub health_history: Vec<HealthRecord>,
    /// A check planned and not yet answered.
    #[serde(default)]
    pub pending_check: Option<PendingCheck>,
}

/// One result of a health check of a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRecord {
    pub check: CheckId,
    pub state: HealthState,
    pub reason: Option<String>,
    pub checked_at: Timestamp,
    /// The worker that ran it (none when no worker did: `unavailable`).
    pub worker: Option<WorkerName>,
    pub pool: PoolName,
    pub rule: Option<PoolRule>,
    pub duration_ms: Option<u64>,
    /// The `health_check` step task that ran it, if any.
    pub task: Option<TaskId>,
}

/// A health check on its way to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCheck {
    pub check: CheckId,
    pub pool: PoolName,
    pub rule: PoolRule,
    pub probe: HealthCheck,
    pub trigger: CheckTrigger,
    pub planned_at: Timestamp,
    pub deadline_at: Timestamp,
}

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
}

/// One run of a task: an attempt as delivered to one worker. An attempt delivered again
/// (its worker died) has several runs; every earlier one is `lost`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptDoc {
    pub attempt: u32,
    /// The broker's delivery count of the attempt (0 until a worker starts it).
    #[serde(default)]
    pub delivery: u32,
    pub worker: Option<WorkerName>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub state: TaskState,
    pub exit_code: Option<i32>,
}

/// One task: a step on one target (or on none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDoc {
    pub id: TaskId,
    pub deployment: DeploymentId,
    pub step: u32,
    pub step_name: String,
    pub target: Option<TargetName>,
    pub endpoint: Option<String>,
    pub pool: PoolName,
    pub pool_rule: PoolRule,
    pub state: TaskState,
    pub attempt: u32,
    /// Delivery of the current attempt that runs (or ran) it.
    #[serde(default)]
    pub delivery: u32,
    pub worker: Option<WorkerName>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub planned_at: Option<Timestamp>,
    pub dispatched_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub output_lines: u64,
    pub attempts: Vec<AttemptDoc>,
    /// When the next attempt is planned (state `retry_scheduled`).
    #[serde(default)]
    pub retry_at: Option<Timestamp>,
    /// Where the broker stored the current attempt's message.
    #[serde(default)]
    pub stream_seq: Option<u64>,
}

/// A worker that has joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerDoc {
    pub name: WorkerName,
    pub pool: PoolName,
    pub region: Option<RegionName>,
    pub slots: u32,
    pub version: String,
    pub joined_at: Timestamp,
    pub left_at: Option<Timestamp>,
    pub left_reason: Option<String>,
    /// Asked to take no new tasks until resumed (maintenance); survives restarts.
    #[serde(default)]
    pub draining: bool,
}

/// A projection document's key; after a batch, each changed key is written from [`State`]
/// (or removed when the state no longer holds it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DocKey {
    Pool(PoolName),
    Target(TargetName),
    Deployment(DeploymentId),
    Task(TaskId),
    Worker(WorkerName),
    Outbox(TaskId, u32),
}

/// Projection rows that are written once and never held in memory (task output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// Key: task id, attempt, delivery, line number (big-endian); value: the encoded
    /// [`OutputLine`].
    Output {
        task: TaskId,
        attempt: u32,
        delivery: u32,
        line_no: u64,
        line: OutputLine,
    },
}

/// What applying events changed.
#[derive(Debug, Default)]
pub struct Changes {
    pub docs: BTreeSet<DocKey>,
    pub rows: Vec<Row>,
}

/// Every projection of the log, in memory. Owned by the log writer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    pub pools: BTreeMap<PoolName, PoolDoc>,
    pub targets: BTreeMap<TargetName, TargetDoc>,
    pub deployments: BTreeMap<DeploymentId, DeploymentDoc>,
    pub tasks: BTreeMap<TaskId, TaskDoc>,
    pub workers: BTreeMap<WorkerName, WorkerDoc>,
    /// Task attempts planned but not yet confirmed by the broker.
    pub outbox: BTreeSet<(TaskId, u32)>,
    /// Deployments not yet finished, for quick lookups after restart.
    pub active: BTreeSet<DeploymentId>,
    /// Task counts per step of active deployments, so advancing a step never scans its
    /// tasks. Derived (not stored): rebuilt from the tasks by [`State::recount`].
    pub progress: BTreeMap<(DeploymentId, u32), StepProgress>,
}

/// How many tasks of a step are in which state, and where planning continues.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StepProgress {
    pub pending: usize,
    /// Planned, dispatched or running.
    pub active: usize,
    pub succeeded: usize,
    /// Failed, timed out or cancelled.
    pub failed: usize,
    /// Left out (their target was skipped as unhealthy).
    pub skipped: usize,
    /// Index in the step's task list before which no task is pending (tasks are planned in
    /// list order).
    pub next: usize,
}

impl StepProgress {
    fn bucket(&mut self, state: TaskState) -> Option<&mut usize> {
        match state {
            TaskState::Pending => Some(&mut self.pending),
            TaskState::Planned
            | TaskState::Dispatched
            | TaskState::Running
            | TaskState::RetryScheduled => Some(&mut self.active),
            TaskState::Succeeded => Some(&mut self.succeeded),
            TaskState::Failed | TaskState::TimedOut | TaskState::Cancelled => {
                Some(&mut self.failed)
            }
            TaskState::Skipped => Some(&mut self.skipped),
            TaskState::Lost => None,
        }
    }
}

impl State {
    /// Applies one record of the log.
    pub fn apply(&mut self, env: &Envelope, event: &Event, changes: &mut Changes) {
        let watched = task_of(event).and_then(|id| {
            self.tasks
                .get(&id)
                .map(|t| (id, t.deployment, t.step, t.state))
        });
        self.apply_event(env, event, changes);
        if let Some((id, deployment, step, before)) = watched
            && let Some(after) = self.tasks.get(&id).map(|t| t.state)
            && after != before
        {
            self.moved(deployment, step, before, after);
        }
    }

    /// Keeps a step's counts in step with one task's change of state.
    fn moved(&mut self, deployment: DeploymentId, step: u32, before: TaskState, after: TaskState) {
        let Some(p) = self.progress.get_mut(&(deployment, step)) else {
            return;
        };
        if let Some(n) = p.bucket(before) {
            *n = n.saturating_sub(1);
        }
        if let Some(n) = p.bucket(after) {
            *n += 1;
        }
        if before == TaskState::Pending
            && let Some(s) = self
                .deployments
                .get(&deployment)
                .and_then(|d| d.steps.get(step as usize))
        {
            while p.next < s.tasks.len()
                && self
                    .tasks
                    .get(&s.tasks[p.next])
                    .is_some_and(|t| t.state != TaskState::Pending)
            {
                p.next += 1;
            }
        }
    }

    /// Forgets a deployment and its tasks (the log writer keeps only unfinished deployments
    /// in memory; their documents stay on disk).
    pub fn evict(&mut self, id: &DeploymentId) {
        if let Some(d) = self.deployments.remove(id) {
            for t in d.steps.iter().flat_map(|s| &s.tasks) {
                self.tasks.remove(t);
            }
        }
        self.active.remove(id);
        self.progress.retain(|(d, _), _| d != id);
    }

    /// Rebuilds the step counts of active deployments from their tasks (after loading).
    pub fn recount(&mut self) {
        self.progress.clear();
        for id in self.active.clone() {
            self.recount_deployment(id);
        }
    }

    /// Rebuilds the step counts of one active deployment (after a change to many of its
    /// tasks at once).
    fn recount_deployment(&mut self, id: DeploymentId) {
        self.progress.retain(|(d, _), _| *d != id);
        if !self.active.contains(&id) {
            return;
        }
        if let Some(d) = self.deployments.get(&id) {
            for (index, step) in d.steps.iter().enumerate() {
                let mut p = StepProgress::default();
                for t in step.tasks.iter().filter_map(|t| self.tasks.get(t)) {
                    if let Some(n) = p.bucket(t.state) {
                        *n += 1;
                    }
                }
                p.next = step
                    .tasks
                    .iter()
                    .position(|t| {
                        self.tasks
                            .get(t)
                            .is_some_and(|t| t.state == TaskState::Pending)
                    })
                    .unwrap_or(step.tasks.len());
                self.progress
                    .insert((id, u32::try_from(index).unwrap_or(u32::MAX)), p);
            }
        }
    }

    fn apply_event(&mut self, env: &Envelope, event: &Event, changes: &mut Changes) {
        let at = env.time;
        match event {
            Event::PoolRegistered {
                pool,
                region,
                description,
            } => {
                self.pools.insert(
                    pool.clone(),
                    PoolDoc {
                        name: pool.clone(),
                        region: region.clone(),
                        description: description.clone(),
                        registered_at: at,
                    },
                );
                changes.docs.insert(DocKey::Pool(pool.clone()));
            }
            Event::TargetRegistered { target } => {
                self.targets.insert(
                    target.name.clone(),
                    TargetDoc {
                        target: target.clone(),
                        registered_at: at,
                        updated_at: at,
                        health: None,
                        health_history: Vec::new(),
                        pending_check: None,
                    },
                );
                changes.docs.insert(DocKey::Target(target.name.clone()));
            }
            Event::TargetUpdated { target } => {
                if let Some(doc) = self.targets.get_mut(&target.name) {
                    doc.target = target.clone();
                    doc.updated_at = at;
                    changes.docs.insert(DocKey::Target(target.name.clone()));
                }
            }
            Event::HealthCheckPlanned {
                check,
                target,
                pool,
                rule,
                probe,
                trigger,
                deadline_at,
            } => {
                if let Some(doc) = self.targets.get_mut(target) {
                    doc.pending_check = Some(PendingCheck {
                        check: *check,
                        pool: pool.clone(),
                        rule: *rule,
                        probe: probe.clone(),
                        trigger: *trigger,
                        planned_at: at,
                        deadline_at: *deadline_at,
                    });
                    changes.docs.insert(DocKey::Target(target.clone()));
                }
            }
            Event::TargetHealthChecked {
                check,
                target,
                task,
                worker,
                pool,
                state,
                reason,
                duration_ms,
                at: checked_at,
            } => {
                let step_rule = task.and_then(|t| self.tasks.get(&t)).map(|t| t.pool_rule);
                if let Some(doc) = self.targets.get_mut(target) {
                    let pending = doc.pending_check.take_if(|p| p.check == *check);
                    // The answer to the check under way, or a deployment's own check, is the
                    // target's health; a late answer (to a check already called unavailable
                    // or replaced after a pool change) only joins the history.
                    let counts = pending.is_some() || task.is_some();
                    let record = HealthRecord {
                        check: *check,
                        state: *state,
                        reason: reason.clone(),
                        checked_at: *checked_at,
                        worker: Some(worker.clone()),
                        pool: pool.clone(),
                        rule: pending.map(|p| p.rule).or(step_rule),
                        duration_ms: Some(*duration_ms),
                        task: *task,
                    };
                    if counts {
                        doc.record_health(record);
                    } else {
                        doc.record_history(record);
                    }
                    changes.docs.insert(DocKey::Target(target.clone()));
                }
            }
            Event::HealthCheckUnavailable {
                check,
                target,
                pool,
                reason,
            } => {
                if let Some(doc) = self.targets.get_mut(target) {
                    let rule = doc
                        .pending_check
                        .take_if(|p| p.check == *check)
                        .map(|p| p.rule);
                    doc.record_health(HealthRecord {
                        check: *check,
                        state: HealthState::Unavailable,
                        reason: Some(reason.clone()),
                        checked_at: at,
                        worker: None,
                        pool: pool.clone(),
                        rule,
                        duration_ms: None,
                        task: None,
                    });
                    changes.docs.insert(DocKey::Target(target.clone()));
                }
            }
            Event::TargetSkipped {
                deployment,
                target,
                reason,
            } => {
                if let Some(d) = self.deployments.get_mut(deployment) {
                    d.skipped_targets.insert(target.clone(), reason.clone());
                    changes.docs.insert(DocKey::Deployment(*deployment));
                    // Its tasks not yet run, and the failed check of the running step (a
                    // health_check step that found it unhealthy).
                    for (id, running) in d.steps.iter().flat_map(|s| {
                        s.tasks
                            .iter()
                            .map(move |t| (t, s.state == StepState::Running))
                    }) {
                        if let Some(t) = self.tasks.get_mut(id)
                            && t.target.as_ref() == Some(target)
                            && (t.state == TaskState::Pending
                                || (running
                                    && matches!(t.state, TaskState::Failed | TaskState::TimedOut)))
                        {
                            t.state = TaskState::Skipped;
                            t.reason = Some(format!("target skipped: {reason}"));
                            changes.docs.insert(DocKey::Task(*id));
                        }
                    }
                }
                self.recount_deployment(*deployment);
            }
            Event::DeploymentCreated {
                deployment,
                spec,
                steps,
            } => {
                let mut step_docs = Vec::with_capacity(steps.len());
                for (index, (planned, step_spec)) in steps.iter().zip(&spec.steps).enumerate() {
                    let index = u32::try_from(index).unwrap_or(u32::MAX);
                    for t in &planned.tasks {
                        self.tasks.insert(
                            t.task,
                            TaskDoc {
                                id: t.task,
                                deployment: *deployment,
                                step: index,
                                step_name: step_spec.name.clone(),
                                target: t.target.clone(),
                                endpoint: t.endpoint.clone(),
                                pool: t.pool.clone(),
                                pool_rule: t.rule,
                                state: TaskState::Pending,
                                attempt: 0,
                                delivery: 0,
                                worker: None,
                                exit_code: None,
                                reason: None,
                                planned_at: None,
                                dispatched_at: None,
                                started_at: None,
                                finished_at: None,
                                output_lines: 0,
                                attempts: Vec::new(),
                                retry_at: None,
                                stream_seq: None,
                            },
                        );
                        changes.docs.insert(DocKey::Task(t.task));
                    }
                    step_docs.push(StepDoc {
                        name: step_spec.name.clone(),
                        state: StepState::Pending,
                        tasks: planned.tasks.iter().map(|t| t.task).collect(),
                    });
                }
                self.deployments.insert(
                    *deployment,
                    DeploymentDoc {
                        id: *deployment,
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
                    },
                );
                for (index, planned) in steps.iter().enumerate() {
                    let p = StepProgress {
                        pending: planned.tasks.len(),
                        ..StepProgress::default()
                    };
                    self.progress
                        .insert((*deployment, u32::try_from(index).unwrap_or(u32::MAX)), p);
                }
                self.active.insert(*deployment);
                changes.docs.insert(DocKey::Deployment(*deployment));
            }
            Event::DeploymentStarted { deployment } => {
                if let Some(d) = self.deployments.get_mut(deployment) {
                    d.state = DeploymentState::Running;
                    d.started_at = Some(at);
                    changes.docs.insert(DocKey::Deployment(*deployment));
                }
            }
            Event::StepStarted { deployment, step } => {
                if let Some(s) = self.step_mut(*deployment, *step) {
                    s.state = StepState::Running;
                    changes.docs.insert(DocKey::Deployment(*deployment));
                }
            }
            Event::TaskPlanned {
                task,
                attempt,
                pool,
                rule,
                ..
            } => {
                if let Some(t) = self.tasks.get_mut(task) {
                    t.state = TaskState::Planned;
                    t.attempt = *attempt;
                    t.pool = pool.clone();
                    t.pool_rule = *rule;
                    t.planned_at = Some(at);
                    t.delivery = 0;
                    t.worker = None;
                    t.reason = None;
                    t.exit_code = None;
                    t.started_at = None;
                    t.finished_at = None;
                    t.output_lines = 0;
                    t.retry_at = None;
                    t.stream_seq = None;
                    t.attempts.push(AttemptDoc {
                        attempt: *attempt,
                        delivery: 0,
                        worker: None,
                        started_at: None,
                        finished_at: None,
                        state: TaskState::Planned,
                        exit_code: None,
                    });
                    changes.docs.insert(DocKey::Task(*task));
                    self.outbox.insert((*task, *attempt));
                    changes.docs.insert(DocKey::Outbox(*task, *attempt));
                }
            }
            Event::TaskDispatched {
                task,
                attempt,
                stream_seq,
                ..
            } => {
                if self.outbox.remove(&(*task, *attempt)) {
                    changes.docs.insert(DocKey::Outbox(*task, *attempt));
                }
                if let Some(t) = self.tasks.get_mut(task)
                    && t.attempt == *attempt
                {
                    t.stream_seq = *stream_seq;
                    if t.state == TaskState::Planned {
                        t.state = TaskState::Dispatched;
                        if let Some(a) = t.attempts.last_mut() {
                            a.state = TaskState::Dispatched;
                        }
                    }
                    t.dispatched_at = Some(at);
                    changes.docs.insert(DocKey::Task(*task));
                }
            }
            Event::TaskStarted {
                task,
                attempt,
                delivery,
                worker,
                at: started,
                ..
            } => {
                let Some(t) = self.tasks.get_mut(task) else {
                    return;
                };
                if t.attempt == *attempt && in_flight(t.state) && *delivery >= t.delivery {
                    // The same delivery count from another worker while the run goes on: the
                    // broker lost its count (it was killed) and delivered the message again.
                    let repeat = *delivery == t.delivery
                        && t.state == TaskState::Running
                        && t.worker.as_ref() != Some(worker);
                    if *delivery > t.delivery || repeat {
                        // A new run of the attempt: any earlier run still marked running was
                        // lost with its worker.
                        for run in t.attempts.iter_mut().filter(|r| r.attempt == *attempt) {
                            if run.state == TaskState::Running {
                                run.state = TaskState::Lost;
                            }
                        }
                        let fresh = t
                            .attempts
                            .last()
                            .is_some_and(|r| r.attempt == *attempt && r.delivery == 0);
                        if !fresh {
                            t.attempts.push(AttemptDoc {
                                attempt: *attempt,
                                delivery: *delivery,
                                worker: None,
                                started_at: None,
                                finished_at: None,
                                state: TaskState::Running,
                                exit_code: None,
                            });
                        }
                        t.output_lines = 0;
                    }
                    t.delivery = *delivery;
                    t.state = TaskState::Running;
                    t.worker = Some(worker.clone());
                    t.started_at = Some(*started);
                    if let Some(run) = t.attempts.last_mut() {
                        run.delivery = *delivery;
                        run.state = TaskState::Running;
                        run.worker = Some(worker.clone());
                        run.started_at = Some(*started);
                    }
                    changes.docs.insert(DocKey::Task(*task));
                } else if (t.attempt == *attempt && !in_flight(t.state)) || *attempt < t.attempt {
                    // A run the task no longer needs (a broker that crashed before it stored an
                    // ack delivers the message again; a worker that missed a cancellation; a
                    // repeat of an attempt already given up for a retry): kept in the history;
                    // the planner tells its worker to stop.
                    t.attempts.push(AttemptDoc {
                        attempt: *attempt,
                        delivery: *delivery,
                        worker: Some(worker.clone()),
                        started_at: Some(*started),
                        finished_at: None,
                        state: TaskState::Running,
                        exit_code: None,
                    });
                    changes.docs.insert(DocKey::Task(*task));
                }
            }
            Event::TaskOutput {
                task,
                attempt,
                delivery,
                first_line,
                lines,
                ..
            } => {
                for (i, line) in lines.iter().enumerate() {
                    changes.rows.push(Row::Output {
                        task: *task,
                        attempt: *attempt,
                        delivery: *delivery,
                        line_no: first_line.saturating_add(i as u64),
                        line: line.clone(),
                    });
                }
                if let Some(t) = self.tasks.get_mut(task) {
                    let end = first_line.saturating_add(lines.len() as u64);
                    if t.attempt == *attempt && t.delivery == *delivery && end > t.output_lines {
                        t.output_lines = end;
                        changes.docs.insert(DocKey::Task(*task));
                    }
                }
            }
            Event::TaskFinished {
                task,
                attempt,
                delivery,
                worker,
                outcome,
                exit_code,
                reason,
                at: ended,
                ..
            } => {
                let retry_in = self.retry_delay(task, *attempt, *outcome);
                if let Some(t) = self.tasks.get_mut(task) {
                    let current = t.attempt == *attempt;
                    let state = outcome.task_state();
                    // Every run's own end goes into the history, even after the task has its
                    // outcome (a run thought lost may still finish).
                    let run = t.attempts.iter_mut().rev().find(|r| {
                        r.attempt == *attempt && r.delivery == *delivery && !r.state.is_terminal()
                    });
                    let mut changed = false;
                    if let Some(run) = run {
                        run.state = state;
                        run.worker = Some(worker.clone());
                        run.finished_at = Some(*ended);
                        run.exit_code = *exit_code;
                        changed = true;
                    } else if current
                        && !t
                            .attempts
                            .iter()
                            .any(|r| r.attempt == *attempt && r.delivery == *delivery)
                    {
                        // Ended without a start report (not run: cancelled before it started, or
                        // given up after too many lost runs): earlier runs still open are lost.
                        for r in t.attempts.iter_mut().filter(|r| r.attempt == *attempt) {
                            if r.state == TaskState::Running {
                                r.state = TaskState::Lost;
                            }
                        }
                        let fresh = t.attempts.last_mut().filter(|r| {
                            r.attempt == *attempt && r.delivery == 0 && !r.state.is_terminal()
                        });
                        let run = match fresh {
                            Some(r) => r,
                            None => {
                                t.attempts.push(AttemptDoc {
                                    attempt: *attempt,
                                    delivery: *delivery,
                                    worker: None,
                                    started_at: None,
                                    finished_at: None,
                                    state,
                                    exit_code: None,
                                });
                                let last = t.attempts.len() - 1;
                                &mut t.attempts[last]
                            }
                        };
                        run.delivery = *delivery;
                        run.state = state;
                        run.worker = Some(worker.clone());
                        run.finished_at = Some(*ended);
                        run.exit_code = *exit_code;
                        changed = true;
                    }
                    // The first outcome of the current attempt counts, from whichever run.
                    if current && in_flight(t.state) {
                        t.state = state;
                        t.delivery = *delivery;
                        t.worker = Some(worker.clone());
                        t.exit_code = *exit_code;
                        t.reason = reason.clone();
                        t.finished_at = Some(*ended);
                        if let Some(ms) = retry_in {
                            t.state = TaskState::RetryScheduled;
                            t.retry_at = Some(at.plus_millis(ms));
                        }
                        changed = true;
                    }
                    if changed {
                        changes.docs.insert(DocKey::Task(*task));
                    }
                }
            }
            Event::TaskCancelled {
                task,
                attempt,
                reason,
                ..
            } => {
                if let Some(t) = self.tasks.get_mut(task)
                    && t.attempt == *attempt
                    && !t.state.is_terminal()
                {
                    t.state = TaskState::Cancelled;
                    t.reason = Some(reason.clone());
                    t.finished_at = Some(at);
                    for r in t.attempts.iter_mut().filter(|r| r.attempt == *attempt) {
                        if !r.state.is_terminal() && r.state != TaskState::Lost {
                            r.state = TaskState::Lost;
                        }
                    }
                    changes.docs.insert(DocKey::Task(*task));
                }
            }
            Event::DeploymentCancelRequested { deployment, reason } => {
                if let Some(d) = self.deployments.get_mut(deployment) {
                    d.state = DeploymentState::Cancelling;
                    d.reason = Some(reason.clone());
                    changes.docs.insert(DocKey::Deployment(*deployment));
                }
                self.stop_queued(*deployment, at, "cancelled before it started", changes);
                self.recount_deployment(*deployment);
            }
            Event::StepFinished {
                deployment,
                step,
                state,
            } => {
                if let Some(s) = self.step_mut(*deployment, *step) {
                    s.state = *state;
                    changes.docs.insert(DocKey::Deployment(*deployment));
                }
            }
            Event::DeploymentFinished {
                deployment,
                state,
                reason,
            } => {
                if let Some(d) = self.deployments.get_mut(deployment) {
                    d.state = *state;
                    d.reason = reason.clone();
                    d.finished_at = Some(at);
                    changes.docs.insert(DocKey::Deployment(*deployment));
                    // What never started never will: say so instead of leaving it pending.
                    for step in &mut d.steps {
                        if step.state == StepState::Running && *state == DeploymentState::Cancelled
                        {
                            step.state = StepState::Cancelled;
                        }
                        if step.state == StepState::Pending {
                            step.state = StepState::Skipped;
                        }
                        for id in &step.tasks {
                            if let Some(t) = self.tasks.get_mut(id)
                                && t.state == TaskState::Pending
                            {
                                t.state = TaskState::Skipped;
                                changes.docs.insert(DocKey::Task(*id));
                            }
                        }
                    }
                }
                if *state == DeploymentState::Failed {
                    self.stop_queued(
                        *deployment,
                        at,
                        "not started: the deployment failed first",
                        changes,
                    );
                }
                self.active.remove(deployment);
                self.progress.retain(|(d, _), _| d != deployment);
            }
            Event::WorkerJoined {
                worker,
                pool,
                region,
                slots,
                version,
                at: joined,
            } => {
                self.workers.insert(
                    worker.clone(),
                    WorkerDoc {
                        name: worker.clone(),
                        pool: pool.clone(),
                        region: region.clone(),
                        slots: *slots,
                        version: version.clone(),
                        joined_at: *joined,
                        left_at: None,
                        left_reason: None,
                        draining: self.workers.get(worker).is_some_and(|w| w.draining),
                    },
                );
                changes.docs.insert(DocKey::Worker(worker.clone()));
            }
            Event::WorkerLeft {
                worker,
                reason,
                at: left,
                ..
            } => {
                if let Some(w) = self.workers.get_mut(worker) {
                    w.left_at = Some(*left);
                    w.left_reason = Some(reason.clone());
                    changes.docs.insert(DocKey::Worker(worker.clone()));
                }
            }
            Event::WorkerDrainRequested { worker, .. } | Event::WorkerResumed { worker, .. } => {
                if let Some(w) = self.workers.get_mut(worker) {
                    w.draining = matches!(event, Event::WorkerDrainRequested { .. });
                    changes.docs.insert(DocKey::Worker(worker.clone()));
                }
            }
            Event::MessageRejected { .. } => {}
        }
    }

    /// How long until the next attempt, when this outcome of the task's current attempt is
    /// to be retried: a failure or timeout, retries left, and the deployment still running.
    fn retry_delay(&self, task: &TaskId, attempt: u32, outcome: Outcome) -> Option<u64> {
        if !matches!(outcome, Outcome::Failed | Outcome::TimedOut) {
            return None;
        }
        let t = self.tasks.get(task)?;
        let d = self.deployments.get(&t.deployment)?;
        let step = d.spec.steps.get(t.step as usize)?;
        (d.state == DeploymentState::Running
            && t.attempt == attempt
            && in_flight(t.state)
            && attempt <= step.retries)
            .then(|| step.retry_delay_ms(attempt + 1))
    }

    /// Cancels the tasks of a deployment that have not started (queued, or waiting for a
    /// retry) and skips those whose step has not started; running ones are left to stop.
    fn stop_queued(
        &mut self,
        deployment: DeploymentId,
        at: Timestamp,
        why: &str,
        changes: &mut Changes,
    ) {
        let Some(d) = self.deployments.get(&deployment) else {
            return;
        };
        for id in d.steps.iter().flat_map(|s| &s.tasks) {
            let Some(t) = self.tasks.get_mut(id) else {
                continue;
            };
            match t.state {
                TaskState::Pending => t.state = TaskState::Skipped,
                TaskState::Planned | TaskState::Dispatched | TaskState::RetryScheduled => {
                    if t.state != TaskState::RetryScheduled {
                        t.reason = Some(why.to_owned());
                    }
                    t.state = TaskState::Cancelled;
                    t.finished_at = Some(at);
                    t.retry_at = None;
                    if let Some(r) = t.attempts.last_mut()
                        && r.attempt == t.attempt
                        && !r.state.is_terminal()
                    {
                        r.state = TaskState::Cancelled;
                    }
                }
                _ => continue,
            }
            changes.docs.insert(DocKey::Task(*id));
        }
    }

    fn step_mut(&mut self, deployment: DeploymentId, step: u32) -> Option<&mut StepDoc> {
        self.deployments
            .get_mut(&deployment)?
            .steps
            .get_mut(step as usize)
    }

    /// The known environments: those of registered targets.
    pub fn environments(&self) -> BTreeSet<&EnvironmentName> {
        self.targets
            .values()
            .map(|t| &t.target.environment)
            .collect()
    }

    /// The action and settings a task runs with, from its deployment's spec.
    pub fn task_action(&self, task: &TaskDoc) -> Option<(&Action, &shoal_shared::StepSpec)> {
        let d = self.deployments.get(&task.deployment)?;
        let step = d.spec.steps.get(task.step as usize)?;
        Some((&step.action, step))
    }
}

impl TargetDoc {
    /// Makes a result the target's health and keeps it in the bounded history.
    fn record_health(&mut self, record: HealthRecord) {
        self.health = Some(record.clone());
        self.record_history(record);
    }

    /// Keeps a result in the bounded history only.
    fn record_history(&mut self, record: HealthRecord) {
        self.health_history.push(record);
        let excess = self.health_history.len().saturating_sub(HEALTH_HISTORY);
        self.health_history.drain(..excess);
    }

    /// The target's health state (`unknown` when never checked).
    pub fn health_state(&self) -> HealthState {
        self.health
            .as_ref()
            .map_or(HealthState::Unknown, |h| h.state)
    }
}

/// The task an event changes the state of, if any.
fn task_of(event: &Event) -> Option<TaskId> {
    match event {
        Event::TaskPlanned { task, .. }
        | Event::TaskDispatched { task, .. }
        | Event::TaskStarted { task, .. }
        | Event::TaskFinished { task, .. }
        | Event::TaskCancelled { task, .. } => Some(*task),
        _ => None,
    }
}

/// Whether a task's current attempt is on its way or running (its first outcome counts).
fn in_flight(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Planned | TaskState::Dispatched | TaskState::Running
    )
}
