//! Tasks: a step on one target, with the history of its attempts and runs. The task and
//! attempt documents, how task events change them (planned, dispatched, started, output,
//! finished, cancelled), and the commands about one task: the broker's confirmation of a
//! dispatch and the end of a retry's backoff.

use super::decide::NewEvent;
use super::state::{Changes, DocKey, Row, State};
use serde::{Deserialize, Serialize};
use shoal_shared::events::{Event, PlannedTask};
use shoal_shared::{
    DeploymentId, DeploymentState, Outcome, PoolName, PoolRule, TargetName, TaskId, TaskState,
    Timestamp, WorkerName,
};

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

impl AttemptDoc {
    /// A run not yet started by any worker.
    fn new(attempt: u32, delivery: u32, state: TaskState) -> AttemptDoc {
        AttemptDoc {
            attempt,
            delivery,
            worker: None,
            started_at: None,
            finished_at: None,
            state,
            exit_code: None,
        }
    }
}

/// How one run of an attempt ended, as its worker reported it.
struct RunEnd<'a> {
    attempt: u32,
    delivery: u32,
    worker: &'a WorkerName,
    state: TaskState,
    exit_code: Option<i32>,
    at: Timestamp,
}

impl RunEnd<'_> {
    fn write(&self, run: &mut AttemptDoc) {
        run.delivery = self.delivery;
        run.state = self.state;
        run.worker = Some(self.worker.clone());
        run.finished_at = Some(self.at);
        run.exit_code = self.exit_code;
    }
}

impl TaskDoc {
    /// A task of a deployment just created, waiting for its step.
    pub(super) fn pending(
        deployment: DeploymentId,
        step: u32,
        step_name: &str,
        planned: &PlannedTask,
    ) -> TaskDoc {
        TaskDoc {
            id: planned.task,
            deployment,
            step,
            step_name: step_name.to_owned(),
            target: planned.target.clone(),
            endpoint: planned.endpoint.clone(),
            pool: planned.pool.clone(),
            pool_rule: planned.rule,
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
        }
    }

    /// `TaskPlanned`: a fresh attempt, on its way to the outbox.
    fn planned(&mut self, attempt: u32, pool: &PoolName, rule: PoolRule, at: Timestamp) {
        self.state = TaskState::Planned;
        self.attempt = attempt;
        self.pool = pool.clone();
        self.pool_rule = rule;
        self.planned_at = Some(at);
        self.delivery = 0;
        self.worker = None;
        self.reason = None;
        self.exit_code = None;
        self.started_at = None;
        self.finished_at = None;
        self.output_lines = 0;
        self.retry_at = None;
        self.stream_seq = None;
        self.attempts
            .push(AttemptDoc::new(attempt, 0, TaskState::Planned));
    }

    /// `TaskDispatched`: the broker stored the current attempt. False for another attempt.
    fn dispatched(&mut self, attempt: u32, stream_seq: Option<u64>, at: Timestamp) -> bool {
        if self.attempt != attempt {
            return false;
        }
        self.stream_seq = stream_seq;
        if self.state == TaskState::Planned {
            self.state = TaskState::Dispatched;
            if let Some(a) = self.attempts.last_mut() {
                a.state = TaskState::Dispatched;
            }
        }
        self.dispatched_at = Some(at);
        true
    }

    /// `TaskStarted`: a worker started a run. False when the report changes nothing (an
    /// older delivery of the current attempt).
    fn started(&mut self, attempt: u32, delivery: u32, worker: &WorkerName, at: Timestamp) -> bool {
        if self.attempt == attempt && in_flight(self.state) && delivery >= self.delivery {
            self.run_started(attempt, delivery, worker, at);
            true
        } else if (self.attempt == attempt && !in_flight(self.state)) || attempt < self.attempt {
            // A run the task no longer needs (a broker that crashed before it stored an
            // ack delivers the message again; a worker that missed a cancellation; a
            // repeat of an attempt already given up for a retry): kept in the history;
            // the planner tells its worker to stop.
            self.attempts.push(AttemptDoc {
                worker: Some(worker.clone()),
                started_at: Some(at),
                ..AttemptDoc::new(attempt, delivery, TaskState::Running)
            });
            true
        } else {
            false
        }
    }

    /// The current attempt runs: a new run when the delivery is new (or the same delivery
    /// comes from another worker).
    fn run_started(&mut self, attempt: u32, delivery: u32, worker: &WorkerName, at: Timestamp) {
        // The same delivery count from another worker while the run goes on: the broker
        // lost its count (it was killed) and delivered the message again.
        let repeat = delivery == self.delivery
            && self.state == TaskState::Running
            && self.worker.as_ref() != Some(worker);
        if delivery > self.delivery || repeat {
            // A new run of the attempt: any earlier run still marked running was lost with
            // its worker.
            self.lose_running_runs(attempt);
            let fresh = self
                .attempts
                .last()
                .is_some_and(|r| r.attempt == attempt && r.delivery == 0);
            if !fresh {
                self.attempts
                    .push(AttemptDoc::new(attempt, delivery, TaskState::Running));
            }
            self.output_lines = 0;
        }
        self.delivery = delivery;
        self.state = TaskState::Running;
        self.worker = Some(worker.clone());
        self.started_at = Some(at);
        if let Some(run) = self.attempts.last_mut() {
            run.delivery = delivery;
            run.state = TaskState::Running;
            run.worker = Some(worker.clone());
            run.started_at = Some(at);
        }
    }

    fn lose_running_runs(&mut self, attempt: u32) {
        for run in self.attempts.iter_mut().filter(|r| r.attempt == attempt) {
            if run.state == TaskState::Running {
                run.state = TaskState::Lost;
            }
        }
    }

    /// `TaskFinished`: the run's end goes into the history; the first outcome of the
    /// current attempt, from whichever run, is the task's (or a retry at `retry_at`).
    /// False when nothing changed.
    fn finished(
        &mut self,
        end: &RunEnd,
        reason: Option<&String>,
        retry_at: Option<Timestamp>,
    ) -> bool {
        let current = self.attempt == end.attempt;
        let mut changed = self.end_run(end);
        if current && in_flight(self.state) {
            self.state = end.state;
            self.delivery = end.delivery;
            self.worker = Some(end.worker.clone());
            self.exit_code = end.exit_code;
            self.reason = reason.cloned();
            self.finished_at = Some(end.at);
            if let Some(at) = retry_at {
                self.state = TaskState::RetryScheduled;
                self.retry_at = Some(at);
            }
            changed = true;
        }
        changed
    }

    /// Records a run's end in the history, even after the task has its outcome (a run
    /// thought lost may still finish). False when the run is unknown and not current.
    fn end_run(&mut self, end: &RunEnd) -> bool {
        let (attempt, delivery) = (end.attempt, end.delivery);
        let open = self
            .attempts
            .iter_mut()
            .rev()
            .find(|r| r.attempt == attempt && r.delivery == delivery && !r.state.is_terminal());
        if let Some(run) = open {
            end.write(run);
            return true;
        }
        let known = self
            .attempts
            .iter()
            .any(|r| r.attempt == attempt && r.delivery == delivery);
        if self.attempt != attempt || known {
            return false;
        }
        // Ended without a start report (not run: cancelled before it started, or given
        // up after too many lost runs): earlier runs still open are lost.
        self.lose_running_runs(attempt);
        let fresh = self
            .attempts
            .last()
            .is_some_and(|r| r.attempt == attempt && r.delivery == 0 && !r.state.is_terminal());
        if !fresh {
            self.attempts
                .push(AttemptDoc::new(attempt, delivery, end.state));
        }
        if let Some(run) = self.attempts.last_mut() {
            end.write(run);
        }
        true
    }

    /// `TaskCancelled`: no worker confirmed the current attempt stopped; its runs are lost.
    fn cancelled(&mut self, attempt: u32, reason: &str, at: Timestamp) -> bool {
        if self.attempt != attempt || self.state.is_terminal() {
            return false;
        }
        self.state = TaskState::Cancelled;
        self.reason = Some(reason.to_owned());
        self.finished_at = Some(at);
        for r in self.attempts.iter_mut().filter(|r| r.attempt == attempt) {
            if !r.state.is_terminal() && r.state != TaskState::Lost {
                r.state = TaskState::Lost;
            }
        }
        true
    }

    /// Its deployment is cancelled or failed: a task whose step has not started is
    /// skipped, a queued one (or one waiting for a retry) cancelled with `why`; a running
    /// one is left to stop. False when it is left as it is.
    pub(super) fn stop_queued(&mut self, why: &str, at: Timestamp) -> bool {
        match self.state {
            TaskState::Pending => self.state = TaskState::Skipped,
            TaskState::Planned | TaskState::Dispatched | TaskState::RetryScheduled => {
                if self.state != TaskState::RetryScheduled {
                    self.reason = Some(why.to_owned());
                }
                self.state = TaskState::Cancelled;
                self.finished_at = Some(at);
                self.retry_at = None;
                if let Some(r) = self.attempts.last_mut()
                    && r.attempt == self.attempt
                    && !r.state.is_terminal()
                {
                    r.state = TaskState::Cancelled;
                }
            }
            _ => return false,
        }
        true
    }
}

impl State {
    /// How task events change the state (and the outbox, and the output rows).
    pub(super) fn apply_task(&mut self, at: Timestamp, event: &Event, changes: &mut Changes) {
        if let Event::TaskOutput { .. } = event {
            return self.apply_output(event, changes);
        }
        let Some(task) = task_of(event) else {
            return;
        };
        self.apply_outbox(task, event, changes);
        let retry_at = self.retry_at(at, event);
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        let changed = match event {
            Event::TaskPlanned {
                attempt,
                pool,
                rule,
                ..
            } => {
                t.planned(*attempt, pool, *rule, at);
                true
            }
            Event::TaskDispatched {
                attempt,
                stream_seq,
                ..
            } => t.dispatched(*attempt, *stream_seq, at),
            Event::TaskStarted {
                attempt,
                delivery,
                worker,
                at: started,
                ..
            } => t.started(*attempt, *delivery, worker, *started),
            Event::TaskFinished {
                attempt,
                delivery,
                worker,
                outcome,
                exit_code,
                reason,
                at: ended,
                ..
            } => {
                let end = RunEnd {
                    attempt: *attempt,
                    delivery: *delivery,
                    worker,
                    state: outcome.task_state(),
                    exit_code: *exit_code,
                    at: *ended,
                };
                t.finished(&end, reason.as_ref(), retry_at)
            }
            Event::TaskCancelled {
                attempt, reason, ..
            } => t.cancelled(*attempt, reason, at),
            _ => false,
        };
        if changed {
            changes.docs.insert(DocKey::Task(task));
        }
    }

    /// The outbox holds the attempts planned (of known tasks) until the broker stored them.
    fn apply_outbox(&mut self, task: TaskId, event: &Event, changes: &mut Changes) {
        let entry = match event {
            Event::TaskPlanned { attempt, .. } if self.tasks.contains_key(&task) => {
                self.outbox.insert((task, *attempt));
                (task, *attempt)
            }
            Event::TaskDispatched { attempt, .. } if self.outbox.remove(&(task, *attempt)) => {
                (task, *attempt)
            }
            _ => return,
        };
        changes.docs.insert(DocKey::Outbox(entry.0, entry.1));
    }

    /// `TaskOutput`: every line becomes a row; the current run's count of lines grows.
    fn apply_output(&mut self, event: &Event, changes: &mut Changes) {
        let Event::TaskOutput {
            task,
            attempt,
            delivery,
            first_line,
            lines,
            ..
        } = event
        else {
            return;
        };
        changes
            .rows
            .extend(lines.iter().enumerate().map(|(i, line)| Row::Output {
                task: *task,
                attempt: *attempt,
                delivery: *delivery,
                line_no: first_line.saturating_add(i as u64),
                line: line.clone(),
            }));
        if let Some(t) = self.tasks.get_mut(task) {
            let end = first_line.saturating_add(lines.len() as u64);
            if t.attempt == *attempt && t.delivery == *delivery && end > t.output_lines {
                t.output_lines = end;
                changes.docs.insert(DocKey::Task(*task));
            }
        }
    }

    /// When a `TaskFinished` makes its task wait for a retry: the event's time plus the
    /// step's backoff. `None` for any other event.
    fn retry_at(&self, at: Timestamp, event: &Event) -> Option<Timestamp> {
        let Event::TaskFinished {
            task,
            attempt,
            outcome,
            ..
        } = event
        else {
            return None;
        };
        self.retry_delay(task, *attempt, *outcome)
            .map(|ms| at.plus_millis(ms))
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
}

/// `MarkDispatched`: the broker stored a planned attempt; nothing when it is no longer in
/// the outbox (confirmed already).
pub(super) fn mark_dispatched(
    state: &State,
    deployment: DeploymentId,
    task: TaskId,
    attempt: u32,
    stream_seq: Option<u64>,
) -> Vec<NewEvent> {
    if !state.outbox.contains(&(task, attempt)) {
        return vec![];
    }
    vec![NewEvent::new(Event::TaskDispatched {
        deployment,
        task,
        attempt,
        stream_seq,
    })]
}

/// `RetryDue`: plans the next attempt of a task still waiting for this retry.
pub(super) fn retry_due(state: &State, task: TaskId, attempt: u32) -> Vec<NewEvent> {
    match state.tasks.get(&task) {
        Some(t) if t.state == TaskState::RetryScheduled && t.attempt == attempt => {
            vec![NewEvent::new(Event::TaskPlanned {
                deployment: t.deployment,
                task,
                attempt: attempt + 1,
                pool: t.pool.clone(),
                rule: t.pool_rule,
            })]
        }
        _ => vec![],
    }
}

/// The task whose state an event can change, if any (output changes no state).
pub(super) fn task_of(event: &Event) -> Option<TaskId> {
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
pub(super) fn in_flight(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Planned | TaskState::Dispatched | TaskState::Running
    )
}
