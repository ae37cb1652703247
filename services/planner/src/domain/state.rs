//! The projections: what the log says about pools, targets, deployments, tasks and workers.
//!
//! [`State::apply`] is infallible and deterministic: the same events in the same order give
//! the same documents byte for byte, which is what makes replay verifiable. It only
//! dispatches: each aggregate's module (`pool`, `target`, `deployment`, `task`, `worker`,
//! `token`, `package`)
//! holds its documents and how its events change them. This module keeps what spans them:
//! the document keys, the changes of a batch, and the step counts.

use shoal_shared::events::{Envelope, Event};
use shoal_shared::{
    Action, DeploymentId, EnvironmentName, OutputLine, PoolName, StepSpec, TargetName, TaskId,
    TaskState, Timestamp, TokenName, WorkerName,
};
use std::collections::{BTreeMap, BTreeSet};

pub use super::deployment::{DeploymentDoc, StepDoc};
pub use super::idempotency::IdempotencyDoc;
pub use super::package::{PackageDoc, PackageKey};
pub use super::pool::PoolDoc;
pub use super::session::SessionDoc;
pub use super::target::{HealthRecord, PendingCheck, TargetDoc};
pub use super::task::{AttemptDoc, TaskDoc};
pub use super::token::TokenDoc;
pub use super::webhook::WebhookDoc;
pub use super::worker::WorkerDoc;

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
    /// An API token, by the SHA-256 of its value (hex).
    Token(String),
    /// A version of a package in the feed.
    Package(shoal_shared::PackageId, semver::Version),
    /// An idempotency key (`<who>/<key>`).
    Idempotency(String),
    /// A dashboard session, by its id.
    Session(String),
    Webhook(TokenName),
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
    /// API tokens by the SHA-256 of their value (hex).
    pub tokens: BTreeMap<String, TokenDoc>,
    /// Dashboard sessions within their day (open or ended), by id.
    pub sessions: BTreeMap<String, SessionDoc>,
    /// The versions in the package feed.
    pub packages: BTreeMap<PackageKey, PackageDoc>,
    /// Idempotency keys of deployment requests, by `<who>/<key>`.
    pub idempotency: BTreeMap<String, IdempotencyDoc>,
    /// The same keys by when they were used, oldest first, to forget them after a day.
    /// Derived (not stored): rebuilt from the keys when the state is loaded.
    pub idempotency_expiry: BTreeSet<(Timestamp, String)>,
    /// Webhook subscriptions.
    pub webhooks: BTreeMap<TokenName, WebhookDoc>,
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
        let watched = super::task::task_of(event).and_then(|id| {
            self.tasks
                .get(&id)
                .map(|t| (id, t.deployment, t.step, t.state))
        });
        self.apply_event(env.time, event, changes);
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
    pub(super) fn recount_deployment(&mut self, id: DeploymentId) {
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

    /// Hands an event to the aggregate it changes. Listed event by event, so a new event
    /// must be given a home.
    fn apply_event(&mut self, at: Timestamp, event: &Event, changes: &mut Changes) {
        match event {
            Event::PoolRegistered { .. } | Event::PoolKeySet { .. } | Event::PoolRemoved { .. } => {
                self.apply_pool(at, event, changes)
            }
            Event::TargetRegistered { .. }
            | Event::TargetUpdated { .. }
            | Event::TargetRemoved { .. }
            | Event::HealthCheckPlanned { .. }
            | Event::TargetHealthChecked { .. }
            | Event::HealthCheckUnavailable { .. } => self.apply_target(at, event, changes),
            // The answer that changed the target's health was applied already.
            Event::TargetHealthChanged { .. } => {}
            Event::DeploymentCreated { .. }
            | Event::DeploymentStarted { .. }
            | Event::StepStarted { .. }
            | Event::StepFinished { .. }
            | Event::TargetSkipped { .. }
            | Event::DeploymentCancelRequested { .. }
            | Event::DeploymentFinished { .. } => self.apply_deployment(at, event, changes),
            Event::TaskPlanned { .. }
            | Event::TaskDispatched { .. }
            | Event::TaskStarted { .. }
            | Event::TaskOutput { .. }
            | Event::TaskFinished { .. }
            | Event::TaskCancelled { .. } => self.apply_task(at, event, changes),
            Event::WorkerJoined { .. }
            | Event::WorkerLeft { .. }
            | Event::WorkerDrainRequested { .. }
            | Event::WorkerResumed { .. }
            | Event::WorkerWentOffline { .. }
            | Event::WorkerCameOnline { .. } => self.apply_worker(event, changes),
            Event::TokenCreated { .. } | Event::TokenRevoked { .. } => {
                self.apply_token(at, event, changes)
            }
            Event::SessionStarted { .. } | Event::SessionEnded { .. } => {
                self.apply_session(at, event, changes)
            }
            Event::PackagePushed { .. }
            | Event::PackageRemoved { .. }
            | Event::PackageAcquired { .. } => self.apply_package(at, event, changes),
            Event::WebhookCreated { .. }
            | Event::WebhookDelivered { .. }
            | Event::WebhookAttemptFailed { .. }
            | Event::WebhookPaused { .. }
            | Event::WebhookResumed { .. }
            | Event::WebhookRemoved { .. } => self.apply_webhook(at, event, changes),
            Event::MessageRejected { .. }
            | Event::RejectionsCounted { .. }
            | Event::LogHeadSigned { .. }
            | Event::FeedConsumerSet { .. } => {}
            Event::IdempotencyKeyUsed { key, request, made } => {
                self.key_used(key, request, made, at, changes)
            }
        }
    }

    /// The known environments: those of registered targets.
    pub fn environments(&self) -> BTreeSet<&EnvironmentName> {
        self.targets
            .values()
            .map(|t| &t.target.environment)
            .collect()
    }

    /// The action and settings a task runs with, from its deployment's spec.
    pub fn task_action(&self, task: &TaskDoc) -> Option<(&Action, &StepSpec)> {
        let d = self.deployments.get(&task.deployment)?;
        let step = d.spec.steps.get(task.step as usize)?;
        Some((&step.action, step))
    }
}
